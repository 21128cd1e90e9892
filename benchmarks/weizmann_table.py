"""The real-photo tables of docs/benchmarks.md: every classic engine and the oracle ceiling on the
Weizmann Horse photos, one coarse kind per `g4seg bench` run, then merged.

    python benchmarks/weizmann_table.py --split test                 # every kind not yet run, then merge
    python benchmarks/weizmann_table.py --split test --kinds box     # one kind (a chunk of a few minutes)
    python benchmarks/weizmann_table.py --split test --merge-only    # the table from the chunks run so far
    python benchmarks/weizmann_table.py --speed                      # seconds per 512-pixel photo
    python benchmarks/weizmann_table.py --ceiling                    # where the oracle ceiling caps
    python benchmarks/weizmann_table.py --combine                    # all 328 photos, from dev + test

Each kind runs as its own `g4seg bench --data weizmann:DIR:SPLIT --coarse KIND` into
OUT/chunks/KIND/, so a long run can be split into short ones (the machines this project is
measured on are shared) and resumed; when every kind has run, the chunks are merged into
OUT/results.json, OUT/report.md and OUT/examples.png, and the `weizmann-SPLIT` block of
docs/benchmarks.md is replaced. Tune on `dev`, report `test` (the split is fixed by the data
loader: every fourth photo is dev).

`--ceiling` runs the oracle on the dev photos' polygons with the signal exact, blurred by one
latent cell, and blurred plus noise, with and without the edge-aware final step, then on all
328 photos' polygons with the noise and a blur of 0, 1/4, 1/2 and 1 latent cell (how sharp a
signal the machinery needs), and replaces the `weizmann-ceiling` block: what caps the machinery.

`--combine` writes the table of all 328 photos from the dev and test runs (object means weighted
by their counts; mIoU needs the confusion matrices, so it is left out) into the `weizmann-all`
block.

`--speed` times the classic engines on photos scaled to 512 pixels on their long side (the
Weizmann photos are stored smaller), from one rough polygon each, against GrabCut in the same run,
and replaces the `weizmann-speed` block.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import ROOT, machine, replace_block, write_json  # noqa: E402

DATA_DIR = Path(os.environ.get("G4SEG_WEIZMANN_DIR") or ROOT.parent / "shared" / "data" / "weizmann_horse")
KINDS = "polygon:8,polygon:16,dilate:10,erode:5,jitter:4,lowres:16,box,points:3,scribble"
METHODS = "identity,colourcut,grabcut,densecrf,pamr,g4seg-oracle:0.1"
ORACLES = ("g4seg-oracle",)


def _machine() -> str:
    """`machine()` (which names the CPU) with the memory, read from /proc where there is one."""
    text = machine()
    try:
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        text += f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return text


def _chunk_dir(out: Path, kind: str) -> Path:
    return out / "chunks" / kind.replace(":", "-")


def run_kind(kind: str, split: str, methods: str, out: Path, examples: int) -> None:
    from g4seg_core.cli import main as g4seg

    argv = ["bench", "--data", f"weizmann:{DATA_DIR}:{split}", "--coarse", kind, "--methods", methods,
            "--examples", str(examples), "--no-progress", "--out", str(_chunk_dir(out, kind))]
    status = g4seg(argv)
    if status:
        raise SystemExit(status)


def merge(kinds: list[str], out: Path, split: str, methods: str, partial: bool = False) -> list[dict] | None:
    """The chunks' rows in kind order, their examples stacked; None while a kind is missing
    (with `partial`, the kinds run so far)."""
    import cv2

    from g4seg_core.evaluation.bench import results_table
    from g4seg_core.images import save_png_atomic, write_text_atomic

    rows, grids, done = [], [], []
    for kind in kinds:
        chunk = _chunk_dir(out, kind)
        if not (chunk / "results.json").is_file():
            print(f"not run yet: {kind}")
            if partial:
                continue
            return None
        done.append(kind)
        rows += json.loads((chunk / "results.json").read_text())
        if (chunk / "examples.png").is_file():
            grid = cv2.imread(str(chunk / "examples.png"))
            grids.append(grid if not grids else grid[18:])  # one header (18 px) on top
    write_json(rows, out / "results.json")
    if grids:
        save_png_atomic(np.ascontiguousarray(np.concatenate(grids)[..., ::-1]), out / "examples.png")
    if not rows:
        return None
    meta = json.loads((_chunk_dir(out, done[0]) / "meta.json").read_text())
    write_text_atomic("\n".join([
        "# g4seg bench report: Weizmann Horse, real photos", "",
        f"- made by: `python benchmarks/weizmann_table.py --split {split}`, one `g4seg bench` per coarse kind:",
        f"  `{meta['command']}` with KIND each of {', '.join(kinds)}",
        f"- machine: {meta['machine']}", "",
        results_table(rows), "",
        _summary(rows), "",
    ] + ([f"Not run yet: {', '.join(k for k in kinds if k not in done)}.", ""] if len(done) < len(kinds) else [])),
        out / "report.md")
    return rows, done


def _summary(rows: list[dict]) -> str:
    from g4seg_core.evaluation.bench import method_summary

    iou = method_summary(rows)
    biou: dict[str, list[float]] = {}
    for r in rows:
        biou.setdefault(r["method"], []).append(r["biou"])
    return ("Means over the coarse kinds (IoU / Boundary IoU): "
            + ", ".join(f"{m} {100 * iou[m]:.1f} / {100 * float(np.mean(biou[m])):.1f}" for m in iou) + ".")


def docs_block(rows: list[dict], split: str, kinds: list[str], methods: str, meta: dict) -> str:
    from g4seg_core.evaluation.bench import results_table

    photos = rows[0]["images"]
    return "\n".join([
        f"Measured {meta['date']} on {meta['machine']}, by `python benchmarks/weizmann_table.py --split {split}`:",
        f"one `{meta['command']}` per KIND in {', '.join(kinds)}.",
        f"{photos} real photos ({split} split: " + ("every fourth photo, the one the engines were tuned on" if split == "dev"
                                                 else "the photos never used for tuning") + "), one horse each.",
        "`g4seg-oracle` rows are **a ceiling, not a method**: G4Seg's machinery fed a discrepancy taken from the "
        "ground truth (`:0.1`: blurred by one latent cell, noise of standard deviation 0.1 added).",
        "",
        results_table(rows),
        "",
        _summary(rows),
    ])


CEILING_METHODS = "identity,g4seg-oracle,g4seg-oracle:0,g4seg-oracle:0.1"
# The same noise, the blur in latent cells from none to the default one.
SHARPNESS_METHODS = "g4seg-oracle:0.1:0,g4seg-oracle:0.1:0.25,g4seg-oracle:0.1:0.5,g4seg-oracle:0.1"


def ceiling(out: Path) -> str:
    from g4seg_core.cli import main as g4seg
    from g4seg_core.evaluation.bench import results_table

    parts = []
    runs = (
        ("edge-aware", "dev", CEILING_METHODS, [], "Final step on"),
        ("no-edge-step", "dev", CEILING_METHODS, ["--setting", "edge_aware=false"],
         "Final step off (`--setting edge_aware=false`)"),
        ("sharpness", "all", SHARPNESS_METHODS, [],
         "How sharp the signal must be (all 328 photos; noise 0.1, blur 0, 1/4, 1/2 and 1 latent cell)"),
    )
    for name, split, methods, extra, title in runs:
        argv = ["bench", "--data", f"weizmann:{DATA_DIR}:{split}", "--coarse", "polygon:8,polygon:16", "--methods",
                methods, *extra, "--examples", "0", "--no-progress", "--out", str(out / name)]
        status = g4seg(argv)
        if status:
            raise SystemExit(status)
        rows = json.loads((out / name / "results.json").read_text())
        shown = " ".join(argv).replace(str(DATA_DIR), "DIR").replace(str(out / name), "OUT")
        parts += [f"{title}: `g4seg {shown}`", "", results_table(rows), ""]
    return "\n".join([
        f"Measured {datetime.date.today().isoformat()} on {_machine()}, by `python benchmarks/weizmann_table.py "
        "--ceiling` (polygons): `g4seg-oracle` exact, `:0` blurred by one latent cell, `:0.1` "
        "blurred and noised, `:0.1:BLUR` noised and blurred by BLUR latent cells.", ""] + parts).strip()


def combine(parts: list[Path]) -> list[dict]:
    """Rows of several runs of the same methods and kinds as one: means weighted by object counts."""
    runs = [json.loads((part / "results.json").read_text()) for part in parts]
    rows = []
    for group in zip(*runs):
        if len({(r["method"], r["coarse"]) for r in group}) != 1:
            raise SystemExit("the runs to combine differ in methods or kinds")
        n = sum(r["n"] for r in group)
        row = dict(group[0], n=n, images=sum(r["images"] for r in group), miou=None)
        for key in ("iou", "biou", "mba", "bf"):
            row[key] = sum(r[key] * r["n"] for r in group) / n
        row["seconds_per_image"] = sum(r["seconds_per_image"] * r["images"] for r in group) / row["images"]
        rows.append(row)
    return rows


def speed(photos: int) -> str:
    """Seconds per photo at 512 px for the classic engines (one rough polygon each), this run."""
    import cv2

    from g4seg_core.engines.classic import PEERS
    from g4seg_core.evaluation.coarse import polygon_outlines
    from g4seg_core.evaluation.data import open_dataset
    from g4seg_core.prompts import Prompt

    data = open_dataset(f"weizmann:{DATA_DIR}:test")
    names = ("colourcut", "grabcut", "densecrf", "pamr")
    times = {n: [] for n in names}
    for i in range(min(photos, len(data))):
        sample = data.load(i)
        h, w = sample.image.shape[:2]
        scale = 512 / max(h, w)
        size = (round(w * scale), round(h * scale))
        image = cv2.resize(sample.image, size, interpolation=cv2.INTER_CUBIC)
        truth = cv2.resize(sample.objects[0].mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        prompt = Prompt(polygons=polygon_outlines(truth, 8))
        for name in names:
            engine = PEERS[name]()
            start = time.perf_counter()
            engine.refine(image, prompt, "horse")
            times[name].append(time.perf_counter() - start)
    import torch

    line = ", ".join(f"{n} {np.median(t):.2f} s (max {np.max(t):.2f})" for n, t in times.items())
    ratio = np.median(times["colourcut"]) / np.median(times["grabcut"])
    return (f"Measured {datetime.date.today().isoformat()} on {_machine()} ({torch.get_num_threads()} torch threads, "
            f"1-minute load average {os.getloadavg()[0]:.2f}), by `python benchmarks/weizmann_table.py --speed`: "
            f"median seconds per photo scaled to 512 px on its long side, one rough 8-vertex polygon each, "
            f"{len(times['grabcut'])} test photos: {line}; colourcut / grabcut = {ratio:.2f}; colourcut took over "
            f"1 s on {sum(t > 1.0 for t in times['colourcut'])} of them.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=("dev", "test", "all"))
    parser.add_argument("--kinds", default=KINDS, help=f"coarse kinds to run now (default: all of {KINDS})")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--redo", action="store_true", help="run kinds again even when their chunk exists")
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--partial", action="store_true", help="merge the kinds run so far, say which are missing")
    parser.add_argument("--speed", action="store_true", help="only the 512-pixel timing")
    parser.add_argument("--speed-photos", type=int, default=12)
    parser.add_argument("--ceiling", action="store_true", help="only the oracle's caps on the polygons")
    parser.add_argument("--combine", action="store_true", help="all photos: the dev and test runs combined")
    parser.add_argument("--out", default=None, help="default benchmarks/results/weizmann-SPLIT")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.speed:
        text = speed(args.speed_photos)
        print(text)
        if not args.no_docs:
            replace_block("weizmann-speed", text, doc=ROOT / "docs" / "benchmarks.md")
        return 0
    if args.combine:
        results = ROOT / "benchmarks" / "results"
        rows = combine([results / "weizmann-dev", results / "weizmann-test"])
        out = results / "weizmann-all"
        write_json(rows, out / "results.json")
        from g4seg_core.evaluation.bench import results_table

        text = "\n".join([
            f"All {rows[0]['images']} photos (dev and test runs combined by `python benchmarks/weizmann_table.py "
            "--combine`; object means weighted by count, mIoU left out):", "", results_table(rows), "", _summary(rows)])
        print(text)
        if not args.no_docs:
            replace_block("weizmann-all", text, doc=ROOT / "docs" / "benchmarks.md")
        return 0
    if args.ceiling:
        text = ceiling(Path(args.out or ROOT / "benchmarks" / "results" / "weizmann-ceiling"))
        print(text)
        if not args.no_docs:
            replace_block("weizmann-ceiling", text, doc=ROOT / "docs" / "benchmarks.md")
        return 0
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"weizmann-{args.split}")
    all_kinds = KINDS.split(",")
    if not args.merge_only:
        for kind in args.kinds.split(","):
            chunk = _chunk_dir(out, kind)
            if (chunk / "results.json").is_file() and not args.redo:
                continue
            run_kind(kind, args.split, args.methods, out, examples=2)
            shown = (f"g4seg bench --data weizmann:DIR:{args.split} --coarse KIND --methods {args.methods} "
                     "--examples 2 --out OUT")
            write_json({"command": shown, "machine": _machine(),
                        "date": datetime.date.today().isoformat()}, chunk / "meta.json")
    merged = merge(all_kinds, out, args.split, args.methods, partial=args.partial)
    if merged is None:
        return 0
    rows, done = merged
    meta = json.loads((_chunk_dir(out, done[0]) / "meta.json").read_text())
    block = docs_block(rows, args.split, done, args.methods, meta)
    missing = [k for k in all_kinds if k not in done]
    if missing:
        block += f"\n\nNot run yet on this split: {', '.join(missing)}."
    if not args.no_docs:
        replace_block(f"weizmann-{args.split}", block, doc=ROOT / "docs" / "benchmarks.md")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
