"""Pre-annotation throughput: text-only masks, then G4Seg refinement, on the full-size architecture.

Two measurements, on Stable Diffusion 2.1-base built from its configs with random weights (a
random weight costs what a trained one does):

- compute (the default): per image, what `g4seg preannotate` computes: the text-only segmentation
  (one UNet call for all classes) and the refinement of each class found; download and upload left
  out. Writes benchmarks/results/preannotate_throughput_<cpu|cuda>.json.
- `--executors in-process,ray:1,ray:2`: the whole pipeline (list, download, predict, upload) against
  a real Label Studio 1.23.2 (tests/e2e/labelstudio.py starts one), once per executor on a fresh
  project of the same images, in one run so that the ratios compare like with like: wall time from
  the start (workers started, models loaded) to the last upload, and each worker's compute rate.
  The random-weight model is written once as a diffusers folder (every Ray actor loads it, as it
  would a real one). Writes benchmarks/results/preannotate_executors_<cpu|cuda>.json.

Either mode rewrites the `preannotate_throughput` block of docs/performance.md from every results
file present (a GPU run adds to the CPU figures).

    python benchmarks/preannotate_throughput.py                 # 512 and 256, 2 images each, iSeg
    python benchmarks/preannotate_throughput.py --sizes 512 --images 3 --method diffsegmenter
    python benchmarks/preannotate_throughput.py --executors in-process,ray:1,ray:2 --sizes 256 --images 16
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


def results_path(device_kind: str, what: str = "throughput") -> Path:
    return ROOT / "benchmarks" / "results" / f"preannotate_{what}_{device_kind}.json"


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
    sections.append("### The whole pipeline: in-process and on Ray")
    for kind in ("cpu", "cuda"):
        path = results_path(kind, "executors")
        if path.exists():
            data = json.loads(path.read_text())
            sections.append(_executors_section(data["rows"], data["meta"]))
    if not results_path("cuda", "executors").exists():
        sections.append("N GPUs: not measured. No GPU was lent to the session that wrote this block; on a machine "
                        "with N GPUs run `python benchmarks/preannotate_throughput.py --executors "
                        "in-process,ray:1,ray:N --sizes 512 --images 64` (add `--refine` for refinement) to add "
                        "its figures here.")
    return "\n\n".join(sections)


def _executors_section(rows: list[dict], meta: dict) -> str:
    base = rows[0]
    lines = [
        f"**{meta['machine']}**, {meta['dtype']}: measured by `python benchmarks/preannotate_throughput.py "
        f"--executors {meta['executors']} --sizes {meta['working_size']} --images {meta['images']}"
        f"{' --refine' if meta['refine'] else ''}` on {meta['date']}; full-size SD 2.1-base architecture with random "
        f"weights loaded from a diffusers folder by each worker; {meta['method']} "
        f"{'with refinement' if meta['refine'] else 'text-only'} at working size {meta['working_size']}, "
        f"{meta['classes']} classes, {meta['image_size']} PNGs served by a real Label Studio {meta['label_studio']} on "
        f"this machine; batches of {meta['batch_size']} images (model call and upload). Wall time runs from the "
        "start (Ray started, the model loaded in every worker) to the last upload; compute is the time inside "
        f"the model. 1-minute load average {meta['load_average'][0]} at the start and {meta['load_average'][1]} "
        "at the end.",
        "",
        "| executor | workers x threads | images | wall s | first upload at s | images/hour (wall) | vs in-process "
        "| compute s (all workers) | images/hour per worker computing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['executor']} | {r['workers']} x {r['threads']} | {r['images']} | {r['wall_s']:.1f} | "
                     f"{r['first_upload_s']:.1f} | {r['images_per_hour']:.0f} | "
                     f"{r['images_per_hour'] / base['images_per_hour']:.2f} | {r['compute_s']:.1f} | "
                     f"{r['images_per_hour_per_worker']:.0f} |")
    lines.append("")
    for r in rows[1:]:
        together = 3600 * r["images"] / (r["compute_s"] / r["workers_that_computed"]) if r["compute_s"] else 0.0
        lines.append(f"- {r['executor']}: its first upload came {r['first_upload_s'] - base['first_upload_s']:.0f} s "
                     f"later than in-process; its {r['workers_that_computed']} worker(s) then computed "
                     f"{together:.0f} images/hour together, {together / base['images_per_hour_per_worker']:.2f} "
                     "times the in-process worker.")
    lines += [
        "",
        "On a CPU the cores are the limit: actors share them, so they add nothing to what one process with all "
        "the threads computes, and Ray adds its start (the local Ray, a worker that loads the model to name its "
        "version, then every actor loading its own copy) before the first image. Ray pays off where each actor "
        "gets its own GPU: the actors then add up, and the start is paid once per run.",
    ]
    return "\n".join(lines)


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


# ---------------------------------------------------------------- the pipeline per executor


def write_random_model(config_dir: Path, dtype: str, cache: Path) -> Path:
    """The full-size architecture with random weights as a diffusers folder (safetensors), written once."""
    import shutil

    folder = cache / f"sd21-base-random-{dtype}"
    if (folder / "complete").exists():
        return folder
    started = time.perf_counter()
    model = build_random_sd(config_dir, device="cpu", dtype=getattr(torch, dtype), fast_decoder=False)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in ("unet", "vae", "text_encoder"):
        getattr(model, name).save_pretrained(partial / name, safe_serialization=True)
    model.tokenizer.save_pretrained(partial / "tokenizer")
    shutil.copytree(config_dir / "scheduler", partial / "scheduler")
    shutil.copy(config_dir / "model_index.json", partial / "model_index.json")
    (partial / "complete").write_text("written by benchmarks/preannotate_throughput.py\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"wrote the random-weight model to {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


class _FirstResult:
    """An executor, noting when its first batch of results came back."""

    def __init__(self, executor, started: float):
        self.executor, self.started, self.first = executor, started, None
        self.description = executor.description

    def model_version(self, plan):
        return self.executor.model_version(plan)

    def run(self, plan, rows):
        for batch in self.executor.run(plan, rows):
            if self.first is None:
                self.first = time.perf_counter() - self.started
            yield batch

    def close(self):
        self.executor.close()


def measure_executors(args) -> int:
    import gc
    import json
    import platform
    import tempfile

    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from labelstudio import LABEL_STUDIO_VERSION, LabelStudio  # noqa: E402

    from backend.ls_format import parse_label_config
    from backend.preannotation import InProcess, Plan, load_preannotator, ls_client, preannotate_project
    from backend.preannotation_ray import OnRay
    from backend.settings import Settings

    specs = [e.strip() for e in args.executors.split(",") if e.strip()]
    for spec in specs:
        if spec != "in-process" and not (spec.startswith("ray:") and spec[4:].isdigit() and int(spec[4:]) >= 1):
            raise SystemExit(f"--executors: {spec!r} is not in-process or ray:N")
    (size,) = [int(s) for s in args.sizes.split(",") if s.strip()][:1] or [256]
    dev = resolve_device(args.device)
    dtype = str(resolve_dtype(args.dtype, dev)).replace("torch.", "")
    load_before = os.getloadavg()[0]
    folder = write_random_model(args.config_dir, dtype, Path(args.cache))
    work = Path(tempfile.mkdtemp(prefix="g4b", dir="/tmp"))  # short: Ray's socket paths stay < 108 bytes
    os.environ.setdefault("RAY_TMPDIR", str(work))
    from PIL import Image

    paths = []
    for i in range(args.images):
        paths.append(work / f"photo-{i}.png")
        Image.fromarray(test_image(i)).save(paths[-1])
    label_config = (ROOT / "label_config.xml").read_text()
    ls = LabelStudio.start(work / "label-studio")
    rows = []
    try:
        client = ls_client(ls.url, ls.token)
        for spec in specs:
            project = ls.create_project(label_config, title=f"bench {spec}")
            ls.import_images(project, paths)
            output = parse_label_config(label_config).brushes[0]
            refiner_config = RefinerConfig(working_size=size, **({"iterations": args.refine_iterations}
                                                                 if args.refine_iterations else {})) if args.refine else None
            plan = Plan(url=ls.url, api_key=ls.token, project=project, output=output, labels=tuple(output.labels),
                        fetch_settings=Settings(label_studio_url=ls.url, label_studio_api_key=ls.token,
                                                image_cache_size=0),
                        text_config=replace(config_for(args.method), working_size=size),
                        refiner_config=refiner_config, model=str(folder), device=args.device, dtype=dtype,
                        batch_size=args.batch_size, upload_batch=args.batch_size)
            print(f"{spec}: {args.images} images at {size}", flush=True)
            started = time.perf_counter()
            if spec == "in-process":
                executor = InProcess(load_preannotator(plan))
                threads = torch.get_num_threads()
            else:
                executor = OnRay("auto", actors=int(spec[4:]))
                plan = executor.connect(plan)
                threads = plan.threads or 1
            timed = _FirstResult(executor, started)
            try:
                plan = replace(plan, model_version=timed.model_version(plan))
                summary = preannotate_project(client, plan, timed, progress=False)
            finally:
                timed.close()
            wall = time.perf_counter() - started
            for line in summary.lines():
                print("  " + line, flush=True)
            if summary.done != args.images:
                raise SystemExit(f"{spec}: {summary.done} of {args.images} images done: not a measurement")
            compute = sum(w.seconds for w in summary.workers.values())
            workers = len(summary.workers)
            rows.append({
                "executor": "in-process" if spec == "in-process" else f"Ray, {spec[4:]} actor{'s' * (spec != 'ray:1')}",
                "workers": int(spec[4:]) if spec != "in-process" else 1, "workers_that_computed": workers,
                "threads": threads, "images": summary.done, "wall_s": round(wall, 2),
                "first_upload_s": round(timed.first or wall, 2),
                "images_per_hour": round(3600 * summary.done / wall, 1), "compute_s": round(compute, 2),
                "images_per_hour_per_worker": round(3600 * summary.done / compute, 1) if compute else 0.0,
                "model_version": plan.model_version,
            })
            del executor, timed
            gc.collect()
    finally:
        ls.stop()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{machine()} ({cpu})" if dev.type == "cpu" else machine(),
        "dtype": dtype, "method": args.method, "refine": args.refine, "working_size": size, "images": args.images,
        "classes": len(parse_label_config(label_config).brushes[0].labels), "image_size": "640x480",
        "batch_size": args.batch_size, "executors": ",".join(specs), "label_studio": LABEL_STUDIO_VERSION,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(rows, indent=1))
    if args.no_doc:
        print(_executors_section(rows, meta))
        return 0
    write_json({"meta": meta, "rows": rows}, results_path("cuda" if dev.type == "cuda" else "cpu", "executors"))
    text = report()
    print(text)
    replace_block("preannotate_throughput", text)
    return 0


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
    parser.add_argument("--executors", help="measure the whole pipeline per executor instead: e.g. "
                                            "in-process,ray:1,ray:2 (the first is the baseline of the ratios)")
    parser.add_argument("--batch-size", type=int, default=4, help="--executors: images per model call and upload")
    parser.add_argument("--refine", action="store_true", help="--executors: with G4Seg refinement")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "g4seg" / "bench"),
                        help="--executors: where the random-weight model folder is written once")
    args = parser.parse_args(argv)
    if args.executors:
        return measure_executors(args)

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
