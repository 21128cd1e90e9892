"""Pre-annotation throughput: text-only masks, then G4Seg refinement, on the full-size architecture.

Builds Stable Diffusion 2.1-base from its configs with random weights (a random weight costs what
a trained one does), then times, per image, what `g4seg preannotate` computes: the text-only
segmentation (one UNet call for all classes) and the refinement of each class found. Image download
and upload are left out (they depend on the network, not on this code). Writes
benchmarks/results/preannotate_throughput_<cpu|cuda>.json and, from all such files, the
`preannotate_throughput` block of docs/performance.md (a GPU run adds to the CPU figures).

    python benchmarks/preannotate_throughput.py                 # 512 and 256, 2 images each, iSeg
    python benchmarks/preannotate_throughput.py --sizes 512 --images 3 --method diffsegmenter
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import (  # noqa: E402
    DEFAULT_CONFIG_DIR,
    ROOT,
    machine,
    replace_block,
    write_json,
)
from benchmarks.random_sd import build_random_sd  # noqa: E402
from g4seg_core.method.config import RefinerConfig  # noqa: E402
from g4seg_core.method.loading import resolve_device, resolve_dtype  # noqa: E402
from g4seg_core.method.model import SDModel, counting  # noqa: E402
from g4seg_core.method.refiner import G4SegRefiner  # noqa: E402
from g4seg_core.method.textseg import TextSegmenter, config_for, refine_segmentation  # noqa: E402

LABELS = ["cat", "dog"]


def build_random_model(config_dir: Path, device: str, dtype: str) -> SDModel:
    """SD 2.1-base's architecture from its configs, random weights (nothing downloaded)."""
    dev = resolve_device(device)
    return build_random_sd(config_dir, device=str(dev), dtype=resolve_dtype(dtype, dev))


def test_image(index: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A synthetic photo-sized image: a gradient with two shapes (content does not change the cost)."""
    import cv2

    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    cv2.circle(image, (int(rng.integers(150, 300)), int(rng.integers(150, 300))), 100, (220, 60, 40), -1)
    cv2.rectangle(image, (380, 120), (560, 380), (40, 200, 90), -1)
    noise = rng.integers(-12, 12, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def measure(model: SDModel, size: int, images: int, method: str, refine_settings: dict) -> dict:
    segmenter = TextSegmenter(model, replace(config_for(method), working_size=size))
    refiner = G4SegRefiner(model, RefinerConfig(working_size=size, **refine_settings))
    text_times, refine_times, unet_calls, vae_calls, refined_classes = [], [], [], [], []
    for i in range(images):
        image = test_image(i)
        refiner.clear_caches()  # each image is new to the refiner, as in a project
        with counting(model) as calls:
            started = time.perf_counter()
            segmentation = segmenter.segment(image, LABELS)
            text_done = time.perf_counter()
            refine_segmentation(refiner, image, segmentation)
            finished = time.perf_counter()
        text_times.append(text_done - started)
        refine_times.append(finished - text_done)
        unet_calls.append(calls["unet"])
        vae_calls.append(calls["vae_encode"] + calls["vae_decode"])
        refined_classes.append(sum(bool(m.any()) for m in segmentation.masks.values()))
        print(f"  {size}px image {i + 1}/{images}: text-only {text_times[-1]:.1f} s, refinement {refine_times[-1]:.1f} s "
              f"({refined_classes[-1]} classes, {calls['unet']} UNet calls)", flush=True)
    text_s = float(np.mean(text_times))
    total_s = float(np.mean(np.add(text_times, refine_times)))
    return {
        "working_size": size, "images": images, "classes": len(LABELS),
        "text_only_s_per_image": round(text_s, 2), "with_refine_s_per_image": round(total_s, 2),
        "text_only_images_per_hour": round(3600 / text_s, 1), "with_refine_images_per_hour": round(3600 / total_s, 1),
        "unet_calls_per_image": float(np.mean(unet_calls)), "vae_calls_per_image": float(np.mean(vae_calls)),
        "refined_classes_per_image": float(np.mean(refined_classes)),
        "text_only_version": segmenter.version, "refiner_version": refiner.version,
    }


def results_path(device_kind: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"preannotate_throughput_{device_kind}.json"


def report() -> str:
    """The docs block from every results file present (CPU and, once measured, GPU)."""
    import json

    sections = []
    for kind in ("cpu", "cuda"):
        path = results_path(kind)
        if path.exists():
            data = json.loads(path.read_text())
            sections.append(_section(data["rows"], data["meta"]))
    if not results_path("cuda").exists():
        sections.append("GPU: not measured yet. No GPU was lent to the session that wrote this block; run "
                        "`python benchmarks/preannotate_throughput.py` on a CUDA machine to add its figures here "
                        "(the CPU figures stay).")
    return "\n\n".join(sections)


def _section(rows: list[dict], meta: dict) -> str:
    lines = [
        f"**{meta['machine']}**, {meta['dtype']}: measured by `python benchmarks/preannotate_throughput.py` on "
        f"{meta['date']}; full-size SD 2.1-base architecture with random weights; {meta['method']}, "
        f"{meta['classes']} classes per image, {meta['image_size']} images, refinement with "
        f"{meta['refine_settings'] or 'its default settings'}. Compute only (image download and upload left "
        f"out); the mean over the images measured, after one warm-up image. {meta['threads']} torch threads; "
        f"1-minute load average {meta['load_average'][0]} at the start and {meta['load_average'][1]} at the end "
        "(other work on the machine slows these figures).",
        "",
        "| working size | images | text-only s/image | text-only images/hour | + refinement s/image "
        "| + refinement images/hour | UNet calls/image | classes refined/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['working_size']} | {r['images']} | {r['text_only_s_per_image']:.1f} | "
                     f"{r['text_only_images_per_hour']:.0f} | {r['with_refine_s_per_image']:.1f} | "
                     f"{r['with_refine_images_per_hour']:.0f} | {r['unet_calls_per_image']:.1f} | "
                     f"{r['refined_classes_per_image']:.1f} |")
    lines += [
        "",
        "Refinement dominates: each class found costs a VAE encoding of its crop, a reference UNet pass and up to "
        "`iterations` mask-conditioned passes (each with a VAE decoding for the RGB discrepancy), against one UNet "
        "pass for all classes in the text-only step. Random weights do not change the cost of a call, but they "
        "can change how many classes are found and when the refinement stops early; the call counts say what ran.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="diffusers folder with the configs")
    parser.add_argument("--sizes", default="512,256", help="working sizes to measure (default 512,256)")
    parser.add_argument("--images", type=int, default=2, help="images per working size (default 2)")
    parser.add_argument("--method", default="iseg", choices=("iseg", "diffsegmenter"))
    parser.add_argument("--refine-iterations", type=int, help="G4Seg iterations (default: the refiner's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: fp16 on CUDA, bfloat16 on the CPU")
    parser.add_argument("--no-doc", action="store_true", help="a trial run: print only, write no results nor docs")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    load_before = os.getloadavg()[0]
    refine_settings = {} if args.refine_iterations is None else {"iterations": args.refine_iterations}
    started = time.perf_counter()
    model = build_random_model(args.config_dir, args.device, args.dtype)
    print(f"built the model in {time.perf_counter() - started:.0f} s on {model.device} ({model.dtype})", flush=True)
    rows = []
    for size in sizes:
        segmenter = TextSegmenter(model, replace(config_for(args.method), working_size=size))
        segmenter.segment(test_image(99), LABELS)  # warm-up (first-call allocations), not counted
        rows.append(measure(model, size, args.images, args.method, refine_settings))
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "method": args.method,
        "classes": len(LABELS),
        "image_size": "640x480",
        "refine_settings": ", ".join(f"{k}={v}" for k, v in refine_settings.items()),
        # Other work on the machine slows the figures; the 1-minute load average says how busy it was.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
    }
    kind = "cuda" if model.device.type == "cuda" else "cpu"
    if args.no_doc:  # a trial run: print, keep the recorded results as they are
        print(_section(rows, meta))
        return 0
    write_json({"meta": meta, "rows": rows}, results_path(kind))
    text = report()
    print(text)
    replace_block("preannotate_throughput", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
