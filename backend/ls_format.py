"""Label Studio JSON <-> masks and prompts: label configs, result regions, brush RLE.

Pure functions, no I/O. Coordinates in Label Studio results are percent of the image's width
and height; everything here converts them to pixels of the image actually downloaded.
Brush RLE is Label Studio's own format (not COCO): label_studio_sdk.converter.brush reads and
writes it.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field

import cv2
import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.label_interface import LabelInterface

from g4seg_core.cache import LRUCache
from g4seg_core.errors import UserError, one_line
from g4seg_core.prompts import (
    PriorConfig,
    Prompt,
    box_mask,
    mask_polygons,
    polygon_area,
    rasterize_polygon,
)

# Result types that carry a rough shape, and what each is: a "*Labels" tag's own type, or a bare
# tool tag's (<Brush>, <Polygon>, ...) whose labels come from a <Labels> tag shared by all tools.
# Label Studio saves a region of a bare tool as two items with one id: the tool's
# {"type": "polygon", "from_name": <tool>} and {"type": "labels", "from_name": <Labels>}, the
# latter with the geometry and the labels (see `shape_items`).
SHAPE_TYPES = {
    "brushlabels": "brush",
    "polygonlabels": "polygon",
    "rectanglelabels": "rectangle",
    "keypointlabels": "keypoint",
    "brush": "brush",
    "polygon": "polygon",
    "rectangle": "rectangle",
    "keypoint": "keypoint",
}
LABELS_TYPE = "labels"
TOOL_TAGS = {"brush": ("BrushLabels", "Brush"), "polygon": ("PolygonLabels", "Polygon")}
# Every region this backend makes has an id that starts so; Label Studio keeps the id when the
# annotator accepts a suggestion or a prediction (and then marks it origin "manual"), which is how
# the backend tells its own masks from rough shapes and never refines them again.
OWN_ID_PREFIX = "g4seg-"
# Regions written back for an annotation: g4seg-a<annotation>-<digest>-<n>.
WRITEBACK_ID_PREFIX = OWN_ID_PREFIX + "a"


class FormatError(UserError):
    """Label Studio JSON the backend cannot use; the message says which part and why."""


class RleTooLarge(FormatError):
    """A brush RLE with more runs than the backend decodes (answered 413)."""


# More runs than any brush stroke has (a full 40 MP literal stroke needs about 2,500): a bound on
# the one per-record loop of the decoder, so a hostile RLE costs at most about a second.
MAX_RLE_RUNS = 1_000_000


# ---------------------------------------------------------------- label config


@dataclass(frozen=True)
class BrushOutput:
    """A tag the refined masks go to (a BrushLabels tag, or a Brush tag labelled by a shared
    Labels tag), and the image it labels. `tool` "polygon": a PolygonLabels or Polygon tag, for
    masks given as polygons."""

    from_name: str
    to_name: str
    labels: tuple[str, ...]
    data_key: str  # task["data"][data_key] holds the image URL
    labels_name: str | None = None  # the shared Labels tag, when the tool tag is a bare one
    tool: str = "brush"  # brush | polygon

    @property
    def tag(self) -> str:
        return TOOL_TAGS[self.tool][self.labels_name is not None]

    def check_label(self, label: str) -> str:
        if label not in self.labels:
            owner = f"Labels tag {self.labels_name!r}" if self.labels_name else f"{self.tag} tag {self.from_name!r}"
            raise FormatError(f"label {label!r} is not a label of the {owner} ({', '.join(self.labels) or 'none'})")
        return label


@dataclass(frozen=True)
class LabelConfig:
    brushes: tuple[BrushOutput, ...]
    polygons: tuple[BrushOutput, ...] = ()

    def output_for(self, to_name: str | None = None, label: str | None = None, tool: str = "brush") -> BrushOutput:
        """The brush (or polygon) tag for an image (and, when several fit, the one that has the label)."""
        outputs = self.brushes if tool == "brush" else self.polygons
        candidates = [b for b in outputs if to_name is None or b.to_name == to_name]
        if not candidates:
            where = f" on the image {to_name!r}" if to_name else ""
            raise FormatError(f"the label config has no {TOOL_TAGS[tool][0]} or {TOOL_TAGS[tool][1]} tag{where}")
        for brush in candidates:
            if label is not None and label in brush.labels:
                return brush
        return candidates[0]

    def output_tool(self, preferred: str) -> str:
        """The kind of tag masks go to: `preferred` when the config has one, else the one it has."""
        if preferred == "polygon" and self.polygons:
            return "polygon"
        return "brush" if self.brushes else "polygon"


# Parsed label configs by the digest of their text, bounded in count and in the configs' bytes:
# keeping the text itself as the key held 64 configs of any size (8 MB ones: half a gigabyte).
_CONFIGS = LRUCache(64, max_weight=16 * 1024 * 1024)


def parse_label_config(xml: str) -> LabelConfig:
    """The project's brush and polygon tags and their images, read from whatever config it has:
    one *Labels tag per tool (BrushLabels, PolygonLabels, ...), or bare tool tags (Brush,
    Polygon, ...) sharing one Labels tag."""
    if not isinstance(xml, str) or not xml.strip():
        raise FormatError("the request carries no label config")
    key = hashlib.sha256(xml.encode("utf-8", "surrogatepass")).digest()
    config = _CONFIGS.get(key)
    if config is None:
        config = _parse_label_config(xml)
        # weight: the text's size, an upper bound of what its parsed tags and labels hold
        _CONFIGS.put(key, config, weight=len(xml))
    return config


def _parse_label_config(xml: str) -> LabelConfig:
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises its own XML/validation error types
        raise FormatError(f"the label config cannot be parsed: {one_line(exc)}") from None
    shared = {}  # image name -> the Labels tag on it (the first one, as Label Studio's screen shows)
    for control in interface.controls:
        if control.tag == "Labels":
            for obj in control.objects:
                shared.setdefault(obj.name, control)
    outputs = {"brush": [], "polygon": []}
    for control in interface.controls:
        tool = next((t for t, tags in TOOL_TAGS.items() if control.tag in tags), None)
        if tool is None:
            continue
        for obj in control.objects:
            value = str(obj.value or "")
            if obj.tag != "Image" or not value.startswith("$") or len(value) < 2:
                continue
            if control.tag == TOOL_TAGS[tool][0]:
                outputs[tool].append(BrushOutput(control.name, obj.name, tuple(control.labels), value[1:], tool=tool))
            elif obj.name in shared:
                labels = shared[obj.name]
                outputs[tool].append(BrushOutput(control.name, obj.name, tuple(labels.labels), value[1:],
                                                 labels_name=labels.name, tool=tool))
    if not outputs["brush"] and not outputs["polygon"]:
        raise FormatError(
            "the label config has no brush or polygon tag on an Image with labels (BrushLabels, or Brush with "
            "a Labels tag): the refined masks need one (see label_config.xml)"
        )
    return LabelConfig(tuple(outputs["brush"]), tuple(outputs["polygon"]))


# ---------------------------------------------------------------- regions


@dataclass
class Region:
    """One rough shape from a Label Studio result list, in pixels of the image."""

    kind: str  # brush | polygon | rectangle | keypoint
    label: str
    to_name: str
    mask: np.ndarray | None = None  # brush: bool HxW
    polygon: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    point: tuple[float, float] | None = None
    positive: bool = True

    def contains(self, x: float, y: float) -> bool:
        if self.kind == "brush":
            row, col = int(y), int(x)
            h, w = self.mask.shape
            return 0 <= row < h and 0 <= col < w and bool(self.mask[row, col])
        if self.kind == "polygon":
            contour = np.asarray(self.polygon, np.float32).reshape(-1, 1, 2)
            return cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0
        if self.kind == "rectangle":
            x0, y0, x1, y1 = self.box
            return x0 <= x <= x1 and y0 <= y <= y1
        return False

    def area(self) -> float:
        if self.kind == "brush":
            return float(self.mask.sum())
        if self.kind == "polygon":
            return polygon_area(self.polygon)
        if self.kind == "rectangle":
            x0, y0, x1, y1 = self.box
            return (x1 - x0) * (y1 - y0)
        return 0.0


def is_shape(item) -> bool:
    return isinstance(item, dict) and str(item.get("type", "")).lower() in SHAPE_TYPES


def shape_items(result) -> list[dict]:
    """The shape regions of a result list, one item each, whichever style the config has.

    A bare tool's region comes as two items with one id (the tool's, and a "labels" item with
    the geometry and the labels): they become one item of the tool's type whose value has both.
    A "labels" item alone counts by its geometry (rle, points, width and height, or x and y).
    """
    if not isinstance(result, list):
        raise FormatError("an annotation's result must be a list")
    labelled = {}
    for item in result:
        if isinstance(item, dict) and item.get("type") == LABELS_TYPE and isinstance(item.get("value"), dict):
            labelled.setdefault(item.get("id"), item)
    out, used = [], set()
    for item in result:
        if not is_shape(item):
            continue
        partner = labelled.get(item.get("id")) if item.get("id") is not None else None
        if partner is not None and isinstance(item.get("value"), dict):
            used.add(item.get("id"))
            item = {**item, "value": {**item["value"], **partner["value"]}}
        out.append(item)
    for key, item in labelled.items():
        kind = _kind_of_value(item["value"])
        if key not in used and kind is not None:
            out.append({**item, "type": kind})
    return out


def _kind_of_value(value: dict) -> str | None:
    if "rle" in value:
        return "brush"
    if "points" in value:
        return "polygon"
    if "width" in value and "height" in value:
        return "rectangle"
    if "x" in value and "y" in value:
        return "keypoint"
    return None


def is_own(item: dict) -> bool:
    """A region this backend made (a suggestion or prediction, accepted and perhaps touched up since)."""
    return str(item.get("id", "")).startswith(OWN_ID_PREFIX)


def rough_items(result) -> list[dict]:
    """The rough shapes of an annotation's result: shape regions that are not a model's output."""
    # origin "prediction": another model's region kept as it was; refining model output gains nothing.
    # Our own masks are never refined again, edited or not: the annotator's touch-ups must stay.
    return [item for item in shape_items(result) if item.get("origin") != "prediction" and not is_own(item)]


def parse_region(item: dict, height: int, width: int, max_pixels: int) -> Region:
    """A shape result item as a Region in pixels of a `width`x`height` image."""
    where = f"region {item.get('id', '?')!r}" if isinstance(item, dict) else "region"
    if not isinstance(item, dict):
        raise FormatError("a result region must be a JSON object")
    kind_key = str(item.get("type", "")).lower()
    kind = SHAPE_TYPES.get(kind_key)
    if kind is None:
        raise FormatError(f"{where} has type {item.get('type')!r}; expected one of {', '.join(SHAPE_TYPES)}")
    value = item.get("value")
    if not isinstance(value, dict):
        raise FormatError(f"{where} has no value object")
    labels = value.get(kind_key) or value.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        raise FormatError(f"{where} has no label: pick a label, then draw ({kind_key} or labels must be a "
                          "non-empty list of names)")
    to_name = item.get("to_name")
    if not isinstance(to_name, str) or not to_name:
        raise FormatError(f"{where} has no to_name")
    region = Region(kind=kind, label=labels[0], to_name=to_name)
    try:
        if kind == "brush":
            region.mask = _brush_mask(item, value, height, width, max_pixels, where)
            if not region.mask.any():
                raise FormatError(f"{where}: the brush stroke is empty")
        elif kind == "polygon":
            points = value.get("points")
            if not isinstance(points, list):
                raise FormatError(f"{where} has no points list")
            region.polygon = [(_pct(p[0], width), _pct(p[1], height)) for p in _pairs(points, where)]
            if len(region.polygon) < 3:
                raise FormatError(f"{where}: a polygon needs at least 3 points, got {len(region.polygon)}")
            if polygon_area(region.polygon) < 1.0:
                raise FormatError(f"{where}: the polygon is degenerate (its area is under one pixel)")
        elif kind == "rectangle":
            region.box = _rectangle(value, height, width, where)
        else:
            region.point = (_pct(value.get("x"), width), _pct(value.get("y"), height))
            region.positive = item.get("is_positive", True) is not False
    except (TypeError, KeyError, IndexError):
        raise FormatError(f"{where} has malformed {kind} coordinates") from None
    return region


def _pct(value, size: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(value)
    return float(value) * size / 100.0


def _pairs(points, where):
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) < 2:
            raise FormatError(f"{where}: each polygon point must be [x, y]")
        yield p


def _rectangle(value: dict, height: int, width: int, where: str):
    x, y = _pct(value.get("x"), width), _pct(value.get("y"), height)
    w, h = _pct(value.get("width"), width), _pct(value.get("height"), height)
    if abs(w) < 1 or abs(h) < 1:  # a negative size is a rectangle drawn the other way: the corners order it
        raise FormatError(f"{where}: the rectangle is empty (under one pixel wide or high)")
    rotation = value.get("rotation") or 0.0
    if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) or not math.isfinite(rotation):
        raise FormatError(f"{where}: the rectangle's rotation must be a finite number of degrees")
    angle = math.radians(float(rotation) % 360.0)
    # Label Studio rotates a rectangle about its top-left corner; the prior is the rotated box's bounds.
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    xs = [x + dx * math.cos(angle) - dy * math.sin(angle) for dx, dy in corners]
    ys = [y + dx * math.sin(angle) + dy * math.cos(angle) for dx, dy in corners]
    return (min(xs), min(ys), max(xs), max(ys))


def _brush_mask(item: dict, value: dict, height: int, width: int, max_pixels: int, where: str) -> np.ndarray:
    if value.get("format", "rle") != "rle":
        raise FormatError(f"{where}: brush format {value.get('format')!r} is not supported (only rle)")
    rle_height = item.get("original_height", height)
    rle_width = item.get("original_width", width)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (rle_height, rle_width)):
        raise FormatError(f"{where}: original_width and original_height must be positive integers")
    if rle_height * rle_width > max_pixels:
        raise RleTooLarge(f"{where}: the brush mask is {rle_width}x{rle_height}, over the pixel limit of {max_pixels}")
    mask = decode_brush_rle(value.get("rle"), rle_height, rle_width, where)
    if mask.shape != (height, width):  # drawn on the image at another size: scale it onto this one
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def decode_brush_rle(rle, height: int, width: int, where: str = "brush", max_runs: int | None = None) -> np.ndarray:
    """Label Studio brush RLE as a bool HxW mask (the alpha channel of its RGBA raster).

    The format (thi-ng rle-pack, as label_studio_sdk.converter.brush reads it) is a bit stream:
    32 bits value count, 5 bits word size - 1, four 4-bit run-length sizes - 1, then records of
    1 bit kind, 2 bits size index, the count - 1, and one word (a run) or count words (literals).
    The SDK's decoder is pure Python per bit and per value (a minute and gigabytes for a 22 MB
    stroke); here one loop reads only record headers, and the values are read with numpy, only
    for the alpha channel. The declared size is checked before anything is allocated.
    """
    max_runs = MAX_RLE_RUNS if max_runs is None else max_runs
    if not isinstance(rle, list) or len(rle) < 4:
        raise FormatError(f"{where}: rle must be a list of byte values")
    if not all(type(v) is int for v in rle[:64]):
        raise FormatError(f"{where}: rle must hold integers 0..255")
    data = np.asarray(rle)
    if data.dtype.kind not in "iu" or data.ndim != 1 or int(data.min()) < 0 or int(data.max()) > 255:
        raise FormatError(f"{where}: rle must hold integers 0..255")
    buf = data.astype(np.uint8).tobytes()
    num = int.from_bytes(buf[:4], "big")
    if num != height * width * 4:
        raise FormatError(
            f"{where}: the rle holds {num // 4} pixels but the region says {width}x{height} ({height * width})"
        )
    if len(buf) < 7:
        raise FormatError(f"{where}: the rle is corrupt (shorter than its 7-byte header)")
    nbits = len(buf) * 8
    buf += bytes(8)  # header reads near the end look at whole bytes
    head = int.from_bytes(buf[4:7], "big")  # bits 32..55: word size, then four run-length sizes
    word = ((head >> 19) & 31) + 1
    sizes = [((head >> (15 - 4 * k)) & 15) + 1 for k in range(4)]
    word_mask = (1 << word) - 1
    frombytes = int.from_bytes
    kinds, starts, counts, places = [], [], [], []  # per record: run?, first value, count, value or first bit
    pos, i = 53, 0
    while i < num:  # the records chain through their headers: the one loop, once per record
        if len(kinds) == max_runs:
            raise RleTooLarge(f"{where}: the rle has more than {max_runs} runs (G4SEG limit)")
        if pos + 3 > nbits:
            raise FormatError(f"{where}: the rle is corrupt (it ends after {i} of its {num} values)")
        window = frombytes(buf[pos >> 3:(pos >> 3) + 4], "big") << (pos & 7)  # 32 bits from pos, left-aligned
        size = sizes[(window >> 29) & 3]
        count = ((window >> (29 - size)) & ((1 << size) - 1)) + 1
        pos += 3 + size
        kinds.append((window >> 31) & 1)
        starts.append(i)
        if kinds[-1]:
            places.append((frombytes(buf[pos >> 3:(pos >> 3) + 5], "big") >> (40 - (pos & 7) - word)) & word_mask)
            count = min(count, num - i)  # the encoder's last run may say more than is left
            pos += word
        else:
            if i + count > num:
                raise FormatError(f"{where}: the rle is corrupt (it holds more values than the {num} it declares)")
            places.append(pos)
            pos += count * word
        counts.append(count)
        i += count
    if pos > nbits:
        raise FormatError(f"{where}: the rle is corrupt (it ends before its {num} values)")
    return _alpha_mask(np.asarray(kinds, bool), np.asarray(starts, np.int64), np.asarray(counts, np.int64),
                       np.asarray(places, np.int64), buf, word, height, width)


def _alpha_mask(run, start, count, place, buf: bytes, word: int, height: int, width: int) -> np.ndarray:
    """Value 4p+3 (pixel p's alpha) of the decoded records, as a bool HxW mask."""
    pixels = height * width
    first = -(-(start - 3) // 4)  # the first alpha index p with 4p+3 >= start
    stop = -(-(start + count - 3) // 4)  # one past the last with 4p+3 < start+count
    edges = np.zeros(pixels + 1, np.int32)
    on = run & (place != 0) & (stop > first)
    np.add.at(edges, first[on], 1)
    np.add.at(edges, stop[on], -1)
    mask = np.cumsum(edges[:-1], dtype=np.int32) > 0
    literal = ~run & (stop > first)
    if literal.any():
        n = stop[literal] - first[literal]
        offset = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        alpha = np.repeat(first[literal], n) + offset
        bit = np.repeat(place[literal] - start[literal] * word, n) + (alpha * 4 + 3) * word
        ones = np.concatenate(([0], np.cumsum(np.unpackbits(np.frombuffer(buf, np.uint8)), dtype=np.int64)))
        mask[alpha] = ones[bit + word] > ones[bit]  # any bit of the word set: a non-zero alpha
    return mask.reshape(height, width)


# ---------------------------------------------------------------- prompts


def prompt_from_regions(regions: list[Region], height: int, width: int, prior: PriorConfig | None = None) -> Prompt:
    """One Prompt from all the rough shapes of one label."""
    masks = [r.mask for r in regions if r.kind == "brush"]
    polygons = [r.polygon for r in regions if r.kind == "polygon"]
    boxes = [r.box for r in regions if r.kind == "rectangle"]
    prompt = Prompt(
        mask=np.logical_or.reduce(masks) if masks else None,
        polygons=polygons,
        positive_points=[r.point for r in regions if r.kind == "keypoint" and r.positive],
        negative_points=[r.point for r in regions if r.kind == "keypoint" and not r.positive],
    )
    if len(boxes) == 1:
        prompt.box = boxes[0]
    elif boxes:  # several boxes of one label: their union, as a Prompt holds one box
        inside = np.logical_or.reduce([box_mask(b, height, width) for b in boxes])
        if prompt.mask is not None or polygons:
            hard = prompt.mask.copy() if prompt.mask is not None else np.zeros((height, width), bool)
            for poly in polygons:
                hard |= rasterize_polygon(poly, height, width)
            prompt.mask, prompt.polygons = hard & inside, []
        else:
            prompt.mask = inside.astype(np.float32) * (prior or PriorConfig()).box_prob
    return prompt


def group_by_label(regions: list[Region]) -> dict[str, list[Region]]:
    groups: dict[str, list[Region]] = {}
    for region in regions:
        groups.setdefault(region.label, []).append(region)
    return groups


def enclosing_region(candidates: list[Region], x: float, y: float, label: str | None = None) -> Region | None:
    """The smallest hard shape (brush, polygon, rectangle) holding the point, same label first."""
    holding = [r for r in candidates if r.kind != "keypoint" and r.contains(x, y)]
    if not holding:
        return None
    same = [r for r in holding if r.label == label]
    return min(same or holding, key=Region.area)


def enclosed_region(candidates: list[Region], boxes: list[Region], label: str | None = None,
                    share: float = 0.8) -> Region | None:
    """The largest hard shape (brush, polygon) lying mostly (`share` of it) inside one of the boxes,
    same label first: what an annotator means by drawing a box around a shape already there."""
    def inside(region: Region) -> bool:
        if region.kind not in ("brush", "polygon"):
            return False
        if region.kind == "brush":
            rows, cols = np.nonzero(region.mask)
            xs, ys = cols + 0.5, rows + 0.5
        else:
            xs, ys = np.asarray(region.polygon, np.float64).T
        for box in boxes:
            x0, y0, x1, y1 = box.box
            held = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            if held.size and held.mean() >= share:
                return True
        return False

    holding = [r for r in candidates if inside(r)]
    if not holding:
        return None
    same = [r for r in holding if r.label == label]
    return max(same or holding, key=Region.area)


# ---------------------------------------------------------------- results


def own_region_id() -> str:
    return f"{OWN_ID_PREFIX}r{uuid.uuid4().hex[:10]}"


def brush_result(mask: np.ndarray, label: str, output: BrushOutput, score: float, region_id: str | None = None) -> dict:
    """A refined mask as a Label Studio brush result at the image's size (BrushLabels style)."""
    height, width = mask.shape
    return {
        "id": region_id or own_region_id(),
        "from_name": output.from_name,
        "to_name": output.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(np.where(mask, 255, 0).astype(np.uint8)),
                  "brushlabels": [label]},
        "score": round(float(score), 4),
        "readonly": False,
    }


def mask_results(mask: np.ndarray, label: str, output: BrushOutput, score: float, tolerance: float = 1.0) -> list[dict]:
    """A refined mask as the result items Label Studio's screen would save for the output tag.

    Brush: one region. Polygon: one region per connected part (holes cut in, see
    `g4seg_core.prompts.mask_polygons`), in percent of the image. A bare tool tag labelled by a
    shared Labels tag gets each region as its two items, as the screen saves it.
    """
    height, width = mask.shape
    if output.tool == "brush":
        regions = [brush_result(mask, label, output, score)]
    else:
        regions = []
        for points in mask_polygons(mask, tolerance):
            regions.append({
                "id": own_region_id(), "from_name": output.from_name, "to_name": output.to_name,
                "type": "polygonlabels", "original_width": int(width), "original_height": int(height),
                "image_rotation": 0,
                "value": {"points": [[round(100.0 * x / width, 4), round(100.0 * y / height, 4)] for x, y in points],
                          "closed": True, "polygonlabels": [label]},
                "score": round(float(score), 4), "readonly": False,
            })
    if output.labels_name is None:
        return regions
    out = []
    for region in regions:
        key = f"{output.tool}labels"
        geometry = {k: v for k, v in region["value"].items() if k != key}
        out.append({**region, "type": output.tool, "value": geometry})
        out.append({**region, "from_name": output.labels_name, "type": LABELS_TYPE,
                    "value": {**geometry, "labels": region["value"][key]}})
    return out


def note_results(items: list[dict], reason: str) -> list[dict]:
    """The annotator's first drawn region again, under a new id, with `reason` as its meta text: how
    an interactive call says why it could not refine (Label Studio's screen shows it as a suggestion
    at the shape, and the reason in the Info panel once the region is selected)."""
    shapes = shape_items(items)
    if not shapes:
        return []
    first = shapes[0].get("id")
    note_id = f"{OWN_ID_PREFIX}n{uuid.uuid4().hex[:10]}"
    keep = ("from_name", "to_name", "type", "value", "original_width", "original_height", "image_rotation",
            "is_positive")
    picked = [i for i in items if isinstance(i, dict) and first is not None and i.get("id") == first] or shapes[:1]
    return [{**{k: item[k] for k in keep if k in item}, "id": note_id, "score": 0.0,
             "meta": {"text": [f"g4seg: {reason}"]}} for item in picked]


def renumber_regions(result: list[dict], make_id) -> list[dict]:
    """`result` with each region's id replaced by make_id(n), n counting regions: the two items of
    one region (a bare tool's and its "labels" item) keep sharing one id."""
    numbers: dict = {}
    return [dict(item, id=make_id(numbers.setdefault(item.get("id"), len(numbers)))) for item in result]


def items_digest(items: list[dict]) -> str:
    """A stable fingerprint of rough shapes (what they are, not their region ids or timestamps)."""
    essence = [
        {k: item.get(k) for k in ("type", "from_name", "to_name", "value", "is_positive",
                                  "original_width", "original_height")}
        for item in items
    ]
    return hashlib.sha256(json.dumps(essence, sort_keys=True, default=str).encode()).hexdigest()


def writeback_region_id(annotation_id: int, digest: str, index: int) -> str:
    return f"{WRITEBACK_ID_PREFIX}{annotation_id}-{digest[:12]}-{index}"


def writeback_marker(annotation_id: int, digest: str | None = None) -> str:
    """The region-id prefix of what was written back for this annotation (and these shapes)."""
    return f"{WRITEBACK_ID_PREFIX}{annotation_id}-" + (f"{digest[:12]}-" if digest else "")


