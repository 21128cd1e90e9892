"""The benchmark: every method refines the same coarse inputs; metrics per object and per dataset.

For each image and each coarse kind, the coarse input of every object is made once (seeded by
image, object and kind), then every method refines it. Per object: IoU, Boundary IoU, mBA,
boundary F against the exact mask (means over objects). Per dataset: mIoU over a confusion
matrix of label maps, where each method's per-object probabilities are merged per class and
overlaps resolved as the labeling backend does. Timing covers the refine calls only.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from g4seg_core.engines.base import Engine, resolve_overlaps
from g4seg_core.errors import DataError
from g4seg_core.evaluation import metrics
from g4seg_core.evaluation.coarse import CoarseSpec, make_prompt
from g4seg_core.evaluation.data import Dataset, Sample
from g4seg_core.images import save_png_atomic, write_text_atomic
from g4seg_core.prompts import Prompt, PromptError, rasterize_prompt


@dataclass
class BenchRow:
    method: str
    coarse: str
    iou: float
    biou: float
    mba: float
    bf: float
    miou: float
    seconds_per_image: float
    n: int  # objects scored
    images: int
    version: str


@dataclass
class _Tally:
    scores: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("iou", "biou", "mba", "bf")})
    confusion: np.ndarray | None = None
    seconds: float = 0.0
    images: int = 0


@dataclass
class _Unit:
    """One thing to refine: its label, class, exact mask (may be empty for a `pred` false
    positive), and the coarse prompt (None when the coarse source has no pixel of it)."""

    label: str
    class_index: int
    gt: np.ndarray
    prompt: Prompt | None


@dataclass
class Example:
    """What examples.png shows for one image and coarse kind."""

    sample_id: str
    coarse: str
    image: np.ndarray
    gt: np.ndarray  # label map
    coarse_map: np.ndarray  # label map of the coarse priors (> 0.5)
    results: dict[str, np.ndarray]  # method -> label map


@dataclass
class BenchResult:
    rows: list[BenchRow]
    examples: list[Example]


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _units(dataset: Dataset, sample: Sample, spec: CoarseSpec, image_index: int, spec_index: int, seed: int) -> list[_Unit]:
    if spec.kind == "pred":
        pred = dataset.load_prediction(Path(spec.source), sample)
        classes = sorted({o.class_index for o in sample.objects} | {int(c) for c in np.unique(pred) if c > 0})
        names = dataset.class_names
        return [_Unit(names[c], c, sample.semantic == c, Prompt(mask=pred == c) if (pred == c).any() else None)
                for c in classes]
    units = []
    for j, obj in enumerate(sample.objects):
        rng = np.random.default_rng([seed, image_index, j, spec_index])
        units.append(_Unit(obj.label, obj.class_index, obj.mask, make_prompt(spec, obj.mask, rng)))
    return units


def _label_map(probabilities: list[tuple[int, np.ndarray]], shape) -> np.ndarray:
    """Merge per-object probabilities into a label map: max per class, then the most probable
    class above 0.5 (the backend's rule), else background."""
    per_class: dict[int, np.ndarray] = {}
    for c, p in probabilities:
        per_class[c] = p if c not in per_class else np.maximum(per_class[c], p)
    out = np.zeros(shape, np.int32)
    for c, m in resolve_overlaps({str(c): p for c, p in per_class.items()}).items():
        out[m] = int(c)
    return out


def run_benchmark(dataset: Dataset, specs: list[CoarseSpec], engines: dict[str, Engine], *, limit: int | None = None,
                  seed: int = 0, examples: int = 3, progress: bool = True) -> BenchResult:
    count = len(dataset) if limit is None else min(len(dataset), limit)
    if count < 1:
        raise DataError("the dataset has no image to benchmark")
    num_classes = len(dataset.class_names)
    tallies = {(m, s.name): _Tally(confusion=np.zeros((num_classes, num_classes), np.int64))
               for s in specs for m in engines}
    shown: list[Example] = []
    bar = tqdm(total=count * len(specs) * len(engines), desc="bench", unit="run", disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    try:
        for i in range(count):
            sample = dataset.load(i)
            shape = sample.semantic.shape
            ignore = sample.ignore
            for si, spec in enumerate(specs):
                units = _units(dataset, sample, spec, i, si, seed)
                priors = []
                for u in units:
                    try:
                        priors.append(None if u.prompt is None else rasterize_prompt(u.prompt, *shape))
                    except PromptError:  # e.g. lowres erased a small object: nothing to refine
                        priors.append(None)
                example = None
                if i < examples:
                    coarse_map = _label_map([(u.class_index, p) for u, p in zip(units, priors) if p is not None], shape)
                    example = Example(sample.id, spec.name, sample.image, np.where(ignore, 0, sample.semantic),
                                      coarse_map, {})
                    shown.append(example)
                for method, engine in engines.items():
                    bar.set_postfix_str(f"{sample.id} {spec.name} {method}", refresh=False)
                    tally = tallies[(method, spec.name)]
                    probs = []
                    start = time.perf_counter()
                    for u, prior in zip(units, priors):
                        if prior is None:
                            probs.append(np.zeros(shape, np.float32))
                        elif getattr(engine, "needs_truth", False):  # the oracle: a ceiling, not a method
                            probs.append(engine.refine_with_truth(sample.image, u.prompt, u.label, u.gt).probability)
                        else:
                            probs.append(engine.refine(sample.image, u.prompt, u.label).probability)
                    tally.seconds += time.perf_counter() - start
                    tally.images += 1
                    for u, p in zip(units, probs):
                        if u.gt.any():
                            for k, v in metrics.object_scores(p > 0.5, u.gt, ignore).items():
                                tally.scores[k].append(v)
                    label_map = _label_map([(u.class_index, p) for u, p in zip(units, probs)], shape)
                    tally.confusion += metrics.confusion_matrix(label_map, sample.semantic, num_classes)
                    if example is not None:
                        example.results[method] = label_map
                    bar.update(1)
    finally:
        bar.close()
    rows = []
    for spec in specs:
        for method, engine in engines.items():
            t = tallies[(method, spec.name)]
            rows.append(BenchRow(
                method=method, coarse=spec.name,
                iou=_nanmean(t.scores["iou"]), biou=_nanmean(t.scores["biou"]),
                mba=_nanmean(t.scores["mba"]), bf=_nanmean(t.scores["bf"]),
                miou=metrics.mean_iou(t.confusion), seconds_per_image=t.seconds / max(1, t.images),
                n=len(t.scores["iou"]), images=t.images, version=engine.version,
            ))
    return BenchResult(rows, shown)


# ---- outputs ------------------------------------------------------------------------------------

def _json_value(v):
    return None if isinstance(v, float) and not np.isfinite(v) else v


def write_results(rows: list[BenchRow], path: Path) -> None:
    """results.json: a list of rows; undefined means (nan) are written as null."""
    data = [{k: _json_value(v) for k, v in asdict(r).items()} for r in rows]
    write_text_atomic(json.dumps(data, indent=2) + "\n", Path(path))


def _pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def results_table(rows: list[dict] | list[BenchRow]) -> str:
    """The Markdown table of rows (from `run_benchmark` or read back from results.json)."""
    rows = [asdict(r) if isinstance(r, BenchRow) else r for r in rows]
    lines = [
        "| coarse | method | IoU | Boundary IoU | mBA | boundary F | mIoU | s / image | objects |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['coarse']} | {r['method']} | {_pct(r['iou'])} | {_pct(r['biou'])} | {_pct(r['mba'])} | "
            f"{_pct(r['bf'])} | {_pct(r['miou'])} | {r['seconds_per_image']:.3f} | {r['n']} |"
        )
    return "\n".join(lines)


def method_summary(rows: list[dict] | list[BenchRow]) -> dict[str, float]:
    """Mean IoU of each method over the coarse kinds (how the classic engine is chosen)."""
    rows = [asdict(r) if isinstance(r, BenchRow) else r for r in rows]
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r["iou"] if r["iou"] is not None else float("nan"))
    return {m: _nanmean(v) for m, v in out.items()}


def write_report(rows: list[BenchRow], path: Path, *, data: str, images: int, engines: dict[str, Engine],
                 command: str, seed: int) -> None:
    summary = method_summary(rows)
    lines = [
        "# g4seg bench report",
        "",
        f"- command: `{command}`",
        f"- data: `{data}`, {images} image(s); coarse inputs seeded with {seed}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU core(s), Python {platform.python_version()}",
        "",
        "Scores are percentages. IoU, Boundary IoU (2% of the diagonal), mBA (CascadePSP, 5 radii) and "
        "boundary F (DAVIS, 0.8% of the diagonal) are means over objects; mIoU is over the dataset's "
        "confusion matrix (classes present, background included). Seconds per image cover the refine "
        "calls for all objects of an image; a method that caches per image pays its setup in the first "
        "coarse kind.",
        "",
        results_table(rows),
        "",
        "Mean IoU over the coarse kinds: " + ", ".join(f"{m} {_pct(v)}" for m, v in summary.items()),
        "",
        "Engine versions:",
        "",
    ]
    lines += [f"- {m}: `{e.version}`" for m, e in engines.items()]
    write_text_atomic("\n".join(lines) + "\n", Path(path))


# ---- examples.png -------------------------------------------------------------------------------

def class_colours(n: int) -> np.ndarray:
    """The PASCAL VOC colour map (bits of the class index spread over R, G, B)."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for bit in range(8):
            r |= ((v >> 0) & 1) << (7 - bit)
            g |= ((v >> 1) & 1) << (7 - bit)
            b |= ((v >> 2) & 1) << (7 - bit)
            v >>= 3
        out[c] = (r, g, b)
    return out


def _overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    fg = labels > 0
    out[fg] = 0.45 * out[fg] + 0.55 * colours[np.minimum(labels[fg], len(colours) - 1)]
    out = out.astype(np.uint8)
    for c in np.unique(labels[fg]):
        contours, _ = cv2.findContours((labels == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def _text(canvas: np.ndarray, text: str, org) -> None:
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def examples_grid(examples: list[Example], methods: list[str], num_classes: int, cell: int = 160) -> np.ndarray:
    """One row per (image, coarse kind): image, ground truth, coarse input, each method's result.

    Each tile is the image scaled so its long side is `cell` pixels, padded to `cell` wide."""
    colours = class_colours(max(num_classes, 2))
    titles = ["image", "ground truth", "coarse"] + methods
    header = 18
    rows = []
    for ex in examples:
        h, w = ex.image.shape[:2]
        scale = cell / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small_img = cv2.resize(ex.image, size, interpolation=cv2.INTER_AREA)
        rows_idx = np.minimum(((np.arange(size[1]) + 0.5) / scale).astype(int), h - 1)
        cols_idx = np.minimum(((np.arange(size[0]) + 0.5) / scale).astype(int), w - 1)

        def tile(labels=None):
            out = np.zeros((size[1] + 1, cell, 3), np.uint8)  # one dark line between rows
            if labels is None:
                out[: size[1], : size[0]] = small_img
            else:
                small_lab = np.asarray(labels, np.int64)[np.ix_(rows_idx, cols_idx)]  # nearest neighbour
                out[: size[1], : size[0]] = _overlay(small_img, small_lab, colours)
            return out

        tiles = [tile(), tile(ex.gt), tile(ex.coarse_map)] + [tile(ex.results[m]) for m in methods]
        row = np.concatenate(tiles, axis=1)
        _text(row, f"{ex.sample_id} / {ex.coarse}", (4, 12))
        rows.append(row)
    head = np.full((header, cell * len(titles), 3), 32, np.uint8)
    for k, t in enumerate(titles):
        _text(head, t, (k * cell + 4, header - 5))
    return np.concatenate([head] + rows, axis=0)


def write_examples(examples: list[Example], methods: list[str], num_classes: int, path: Path) -> None:
    save_png_atomic(examples_grid(examples, methods, num_classes), path)
