"""Evaluation data: PASCAL VOC, COCO, a plain folder of image/mask pairs, and seeded synthetic scenes.

Every dataset yields `Sample`s: an RGB image, the objects to refine (one mask per class for
semantic data, one per instance for COCO) and a semantic label map (class index per pixel,
255 = ignore) for mIoU. Open one from a spec string with `open_dataset`:

  synthetic:N[:SEED[:SIZE]]    N generated scenes (SIZE = image height, width = 1.25 x SIZE)
  voc:DIR[:SPLIT]               VOC2012 layout: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/SPLIT.txt
  coco:ANNOTATIONS.json:IMAGES  COCO instances JSON and its image folder
  folder:DIR[:LABEL]            DIR/images/NAME.{jpg,png,...} paired with DIR/masks/NAME.png (non-zero = object)
  weizmann:DIR[:SPLIT]          the Weizmann Horse photos (DIR/rgb, DIR/figure_ground); SPLIT dev, test or all
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from g4seg_core.errors import DataError
from g4seg_core.evaluation.metrics import IGNORE_LABEL
from g4seg_core.images import load_image, load_mask

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SYNTHETIC_CLASSES = ("background", "ellipse", "rectangle", "star", "blob")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class ObjectMask:
    label: str  # class name, used as the text prompt
    class_index: int  # index into the dataset's class_names
    mask: np.ndarray  # bool HxW


@dataclass
class Sample:
    id: str
    image: np.ndarray  # RGB uint8 HxWx3
    objects: list[ObjectMask]
    semantic: np.ndarray  # int32 HxW class indices, IGNORE_LABEL where not evaluated

    @property
    def ignore(self) -> np.ndarray:
        return self.semantic == IGNORE_LABEL


def read_label_png(path: Path) -> np.ndarray:
    """A class-index PNG (palette or greyscale) as int32 HxW."""
    if not path.is_file():
        raise DataError(f"label map not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{path}: expected a palette or greyscale class-index PNG, got mode {img.mode}")
            return np.asarray(img).astype(np.int32)
    except OSError as exc:
        raise DataError(f"cannot read label map {path}: {exc}") from None


def _semantic_objects(semantic: np.ndarray, class_names) -> list[ObjectMask]:
    present = [int(c) for c in np.unique(semantic) if 0 < c < len(class_names)]
    return [ObjectMask(class_names[c], c, semantic == c) for c in present]


class Dataset:
    """Base class: `ids`, `class_names`, `load(i)`; `instances` says whether objects are instances."""

    name = "dataset"
    instances = False
    class_names: tuple[str, ...] = ()
    ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def load_prediction(self, folder: Path, sample: Sample) -> np.ndarray:
        """A base method's label map for `sample`, read from folder/ID.png (class indices)."""
        if self.instances:
            raise DataError("coarse pred: needs semantic ground truth (voc, folder or synthetic), not instances")
        pred = read_label_png(Path(folder) / f"{sample.id}.png")
        if pred.shape != sample.semantic.shape:
            raise DataError(f"prediction for {sample.id} is {pred.shape[1]}x{pred.shape[0]}, "
                            f"the image is {sample.semantic.shape[1]}x{sample.semantic.shape[0]}")
        pred = np.where(pred == IGNORE_LABEL, 0, pred)
        if pred.max() >= len(self.class_names):
            raise DataError(f"prediction for {sample.id} has class {pred.max()}, beyond the dataset's "
                            f"{len(self.class_names)} classes")
        return pred


# ---- synthetic scenes ---------------------------------------------------------------------------

def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Random values on a cells x cells grid, upsampled bicubically: a smooth field in ~[-1, 1]."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1, channels)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return field.reshape(h, w, channels)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray | None = None) -> np.ndarray:
    """A base colour with a low-frequency colour drift, oriented stripes and grain (float RGB)."""
    if base is None:
        base = rng.uniform(40, 215, 3)
    drift = _smooth_field(rng, h, w, int(rng.integers(2, 5)), 3) * rng.uniform(10, 30)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(4, 16)
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)[..., None]
    stripes = stripes * rng.uniform(5, 25) * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    grain = rng.normal(0, rng.uniform(3, 10), (h, w, 1)).astype(np.float32)
    return np.asarray(base, np.float32) + drift + stripes + grain


def _near_colour(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A colour 30 to 90 RGB units away from `colour`: distinct, but not by much."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    return np.clip(colour + direction * rng.uniform(30, 90), 20, 235)


def _shape_mask(kind: str, rng: np.random.Generator, h: int, w: int, scale: float = 1.0) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    size = min(h, w)
    cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    radius = rng.uniform(0.12, 0.28) * size * scale
    if kind == "ellipse":
        axes = (max(1, int(radius)), max(1, int(radius * rng.uniform(0.4, 0.9))))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        return canvas.astype(bool)
    if kind == "rectangle":
        rect = ((cx, cy), (2 * radius, 2 * radius * rng.uniform(0.35, 0.9)), float(rng.uniform(0, 90)))
        cv2.fillPoly(canvas, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
        return canvas.astype(bool)
    theta = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    if kind == "star":
        r = radius * (1 + 0.4 * np.cos(int(rng.integers(4, 8)) * theta + rng.uniform(0, 2 * np.pi)))
    else:  # blob
        r = radius * np.ones_like(theta)
        for k in (2, 3, 4):
            r += radius * rng.uniform(0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def synthetic_scene(rng: np.random.Generator, height: int = 256, width: int = 320,
                    min_area: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Textured objects of distinct classes on a cluttered textured background, with the exact
    label map.

    The background gets 3 to 6 smaller distractor shapes (background class) in colours near the
    background's; then 2 or 3 objects are painted in turn (later ones occlude earlier ones) in
    colours also near it, so colour alone does not separate them. The label map holds each
    pixel's visible class; scenes where an object ends up under `min_area` of the image are
    redrawn. Finally uneven lighting, a slight blur and sensor noise, as a camera would add.
    """
    kinds = SYNTHETIC_CLASSES[1:]
    for _ in range(100):
        background = rng.uniform(50, 205, 3)
        image = _texture(rng, height, width, background)
        for _ in range(int(rng.integers(3, 7))):
            m = _shape_mask(kinds[int(rng.integers(len(kinds)))], rng, height, width, scale=0.5)
            image[m] = _texture(rng, height, width, _near_colour(rng, background))[m]
        semantic = np.zeros((height, width), np.int32)
        count = int(rng.integers(2, 4))
        classes = rng.choice(np.arange(1, len(SYNTHETIC_CLASSES)), size=count, replace=False)
        for c in classes:
            m = _shape_mask(SYNTHETIC_CLASSES[c], rng, height, width)
            image[m] = _texture(rng, height, width, _near_colour(rng, background))[m]
            semantic[m] = c
        areas = [np.count_nonzero(semantic == c) for c in classes]
        if min(areas) >= min_area * height * width:
            break
    lighting = 1.0 + 0.25 * _smooth_field(rng, height, width, 2, 1)
    image = cv2.GaussianBlur(image * lighting, (0, 0), 0.7)
    image += rng.normal(0, 3.0, image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), semantic


class SyntheticDataset(Dataset):
    name = "synthetic"
    class_names = SYNTHETIC_CLASSES

    def __init__(self, count: int, seed: int = 0, size: int = 256):
        if count < 1:
            raise DataError("synthetic: the number of scenes must be at least 1")
        if size < 32:
            raise DataError("synthetic: the image size must be at least 32 pixels")
        self.seed, self.size = seed, size
        self.ids = [f"synthetic-{seed}-{i:05d}" for i in range(count)]

    def load(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        image, semantic = synthetic_scene(rng, self.size, int(round(self.size * 1.25)))
        return Sample(self.ids[index], image, _semantic_objects(semantic, self.class_names), semantic)


# ---- PASCAL VOC ---------------------------------------------------------------------------------

class VOCDataset(Dataset):
    name = "voc"
    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "val"):
        root = Path(root)
        candidates = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
        found = next((c for c in candidates if (c / "SegmentationClass").is_dir() and (c / "JPEGImages").is_dir()), None)
        if found is None:
            raise DataError(f"voc: no JPEGImages/ and SegmentationClass/ under {root} (nor its VOC2012/, VOCdevkit/VOC2012/)")
        self.root = found
        split_file = found / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"voc: split list not found: {split_file}")
        self.ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise DataError(f"voc: the split list {split_file} is empty")

    def load(self, index: int) -> Sample:
        sid = self.ids[index]
        image = load_image(self.root / "JPEGImages" / f"{sid}.jpg")
        semantic = read_label_png(self.root / "SegmentationClass" / f"{sid}.png")
        if semantic.shape != image.shape[:2]:
            raise DataError(f"voc: label map of {sid} does not match its image size")
        return Sample(sid, image, _semantic_objects(semantic, self.class_names), semantic)


# ---- COCO ---------------------------------------------------------------------------------------

class COCODataset(Dataset):
    """COCO instances: one object per non-crowd annotation; crowd regions are ignored."""

    name = "coco"
    instances = True

    def __init__(self, annotations: str | Path, images: str | Path, min_area: float = 1.0):
        from pycocotools.coco import COCO

        annotations, self.images = Path(annotations), Path(images)
        if not annotations.is_file():
            raise DataError(f"coco: annotation file not found: {annotations}")
        if not self.images.is_dir():
            raise DataError(f"coco: image folder not found: {self.images}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotations))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"coco: {annotations} is not a COCO annotation file ({exc})") from None
        cat_ids = sorted(self.coco.getCatIds())
        self.category_index = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self.class_names = ("background",) + tuple(self.coco.loadCats(cid)[0]["name"] for cid in cat_ids)
        self.min_area = min_area
        image_ids = []
        for img_id in sorted(self.coco.getImgIds()):
            anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False))
            if any(a.get("area", 0) >= min_area for a in anns):
                image_ids.append(img_id)
        if not image_ids:
            raise DataError(f"coco: no image in {annotations} has an instance annotation")
        self.image_ids = image_ids
        self.ids = [str(i) for i in image_ids]

    def load(self, index: int) -> Sample:
        img_id = self.image_ids[index]
        info = self.coco.loadImgs(img_id)[0]
        image = load_image(self.images / info["file_name"])
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise DataError(f"coco: {info['file_name']} is {w}x{h}, the annotations say {info['width']}x{info['height']}")
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id))
        semantic = np.zeros((h, w), np.int32)
        crowd = np.zeros((h, w), bool)
        objects = []
        # Larger instances first, so smaller ones stay visible in the semantic map.
        for ann in sorted(anns, key=lambda a: -a.get("area", 0)):
            mask = self.coco.annToMask(ann).astype(bool)
            if ann.get("iscrowd", 0):
                crowd |= mask
                continue
            if ann.get("area", 0) < self.min_area or not mask.any():
                continue
            c = self.category_index[ann["category_id"]]
            semantic[mask] = c
            objects.append(ObjectMask(self.class_names[c], c, mask))
        semantic[crowd & (semantic == 0)] = IGNORE_LABEL
        return Sample(str(img_id), image, objects, semantic)


# ---- folder of pairs ----------------------------------------------------------------------------

class FolderDataset(Dataset):
    """DIR/images/NAME.<image suffix> paired with DIR/masks/NAME.png by NAME; non-zero mask pixels
    are the object. Images without a mask are skipped (and counted in a warning)."""

    name = "folder"

    def __init__(self, root: str | Path, label: str = "object"):
        root = Path(root)
        images, masks = root / "images", root / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise DataError(f"folder: expected {images}/ and {masks}/")
        self.label = label
        self.class_names = ("background", label)
        pairs, unmatched = {}, 0
        for path in sorted(images.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            mask = masks / f"{path.stem}.png"
            if mask.is_file():
                pairs[path.stem] = (path, mask)
            else:
                unmatched += 1
        if not pairs:
            raise DataError(f"folder: no image in {images} has a mask of the same name in {masks}")
        if unmatched:
            log.warning("folder: %d image(s) in %s have no mask in %s and are skipped", unmatched, images, masks)
        self.pairs = pairs
        self.ids = list(pairs)

    def load(self, index: int) -> Sample:
        sid = self.ids[index]
        image_path, mask_path = self.pairs[sid]
        image = load_image(image_path)
        mask = load_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(f"folder: mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]}, "
                            f"its image is {image.shape[1]}x{image.shape[0]}")
        semantic = mask.astype(np.int32)
        return Sample(sid, image, _semantic_objects(semantic, self.class_names), semantic)

    def load_prediction(self, folder: Path, sample: Sample) -> np.ndarray:
        pred = super().load_prediction(folder, sample)
        return (pred > 0).astype(np.int32)  # a binary mask: any non-zero value is the object


# ---- Weizmann Horse (real photos) --------------------------------------------------------------

WEIZMANN_SPLITS = ("dev", "test", "all")


class WeizmannDataset(Dataset):
    """The Weizmann Horse database: real photos (DIR/rgb/NAME.jpg) with hand-made masks
    (DIR/figure_ground/NAME.jpg, grey JPEG, > 127 = horse).

    The masks are stored at the size of the database's downscaled images, not the photos', with
    the same aspect within 1%: each photo is resized to its mask's size (area when shrinking,
    cubic when enlarging), so scores are at the resolution the truth was drawn at.

    Splits, fixed by file order so anyone gets the same: `dev` is every fourth photo (tune on it),
    `test` the other three quarters (report on it), `all` both."""

    name = "weizmann"
    class_names = ("background", "horse")

    def __init__(self, root: str | Path, split: str = "all"):
        root = Path(root)
        self.rgb, self.masks = root / "rgb", root / "figure_ground"
        if not self.rgb.is_dir() or not self.masks.is_dir():
            raise DataError(f"weizmann: expected {self.rgb}/ and {self.masks}/")
        if split not in WEIZMANN_SPLITS:
            raise DataError(f"weizmann: split must be one of {', '.join(WEIZMANN_SPLITS)}, got {split!r}")
        names = sorted(p.stem for p in self.rgb.glob("*.jpg") if (self.masks / p.name).is_file())
        if not names:
            raise DataError(f"weizmann: no photo in {self.rgb} has a mask of the same name in {self.masks}")
        if split != "all":
            names = [n for i, n in enumerate(names) if (i % 4 == 0) == (split == "dev")]
        self.split = split
        self.ids = names

    def load(self, index: int) -> Sample:
        sid = self.ids[index]
        image = load_image(self.rgb / f"{sid}.jpg")
        try:
            with Image.open(self.masks / f"{sid}.jpg") as img:
                mask = np.asarray(img.convert("L")) > 127
        except OSError as exc:
            raise DataError(f"weizmann: cannot read the mask of {sid}: {exc}") from None
        height, width = mask.shape
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] * image.shape[1] > height * width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        semantic = mask.astype(np.int32)
        return Sample(sid, image, _semantic_objects(semantic, self.class_names), semantic)


# ---- spec ---------------------------------------------------------------------------------------

DATA_SPEC_HELP = (
    "synthetic:N[:SEED[:SIZE]] (generated scenes) | voc:DIR[:SPLIT] (default split val) | "
    "coco:ANNOTATIONS.json:IMAGES_DIR | folder:DIR[:LABEL] (DIR/images/NAME.jpg|png|... paired with "
    "DIR/masks/NAME.png by file name; non-zero mask pixels are the object) | weizmann:DIR[:SPLIT] (the "
    "Weizmann Horse photos; SPLIT dev = every fourth photo, test = the rest, all (default))"
)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{what}: {text!r} is not a whole number") from None


def open_dataset(spec: str) -> Dataset:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    parts = rest.split(":") if rest else []
    if kind == "synthetic":
        if not 1 <= len(parts) <= 3:
            raise DataError("synthetic data spec is synthetic:N[:SEED[:SIZE]]")
        count = _int(parts[0], "synthetic N")
        seed = _int(parts[1], "synthetic SEED") if len(parts) > 1 else 0
        size = _int(parts[2], "synthetic SIZE") if len(parts) > 2 else 256
        return SyntheticDataset(count, seed, size)
    if kind == "voc":
        if not 1 <= len(parts) <= 2 or not parts[0]:
            raise DataError("voc data spec is voc:DIR[:SPLIT]")
        return VOCDataset(parts[0], parts[1] if len(parts) > 1 else "val")
    if kind == "coco":
        if len(parts) != 2 or not all(parts):
            raise DataError("coco data spec is coco:ANNOTATIONS.json:IMAGES_DIR")
        return COCODataset(parts[0], parts[1])
    if kind == "folder":
        if not 1 <= len(parts) <= 2 or not parts[0]:
            raise DataError("folder data spec is folder:DIR[:LABEL]")
        return FolderDataset(parts[0], parts[1] if len(parts) > 1 and parts[1] else "object")
    if kind == "weizmann":
        if not 1 <= len(parts) <= 2 or not parts[0]:
            raise DataError("weizmann data spec is weizmann:DIR[:SPLIT]")
        return WeizmannDataset(parts[0], parts[1] if len(parts) > 1 and parts[1] else "all")
    raise DataError(f"unknown data kind {kind!r}; use {DATA_SPEC_HELP}")


