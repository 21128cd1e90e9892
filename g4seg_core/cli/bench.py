"""`g4seg bench`: compare refiners on coarse inputs made from exact masks."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from g4seg_core.errors import UserError

HELP = "benchmark refiners (G4Seg and classic peers) on coarse masks made from a dataset's exact masks"

BENCH_METHODS = ("identity", "g4seg", "g4seg-oracle", "classic", "densecrf", "grabcut", "pamr")


def add_arguments(parser) -> None:
    from g4seg_core.evaluation.coarse import DEFAULT_COARSE
    from g4seg_core.evaluation.data import DATA_SPEC_HELP

    parser.add_argument("--data", required=True, metavar="SPEC", help=f"dataset: {DATA_SPEC_HELP}")
    parser.add_argument(
        "--coarse", default=DEFAULT_COARSE, metavar="KINDS",
        help="comma-separated coarse inputs: polygon:V (at most V vertices) or polygon:Tpx (tolerance T "
             "pixels), dilate:R, erode:R, jitter:A (pixels), lowres:F, box[:MARGIN], points:K[:NEG], "
             "scribble[:K], pred:DIR (a base method's class-index PNGs named like the image ids) "
             f"(default {DEFAULT_COARSE})")
    parser.add_argument("--methods", default="identity,g4seg,densecrf,grabcut,pamr", metavar="NAMES",
                        help=f"comma-separated, from {', '.join(BENCH_METHODS)}; g4seg-oracle[:NOISE] is a ceiling, "
                             "not a method: the refiner's machinery fed the ground truth (default identity,g4seg,densecrf,grabcut,pamr)")
    parser.add_argument("--model", default=None,
                        help="G4Seg weights: a hub id or a local folder (default: $G4SEG_MODEL, else the hub id)")
    parser.add_argument("--device", default="auto", help="torch device for g4seg: auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="g4seg dtype: auto, float32, float16, bfloat16")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N images only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random coarse inputs (default 0)")
    parser.add_argument("--examples", type=int, default=3, metavar="K",
                        help="images shown in examples.png (default 3; 0 for none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for results.json, report.md and examples.png")


def _methods(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("no method given (e.g. --methods identity,densecrf)")
    # g4seg-oracle[:NOISE]: the refiner's machinery with a discrepancy taken from the ground truth.
    unknown = [m for m in names if m.split(":")[0] not in BENCH_METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} (choose from {', '.join(BENCH_METHODS)})")
    if len(set(names)) != len(names):
        raise UserError(f"method listed twice in {text!r}")
    return names


def run(args) -> int:
    from g4seg_core.engines.factory import create_engine
    from g4seg_core.evaluation.bench import (
        run_benchmark,
        write_examples,
        write_report,
        write_results,
    )
    from g4seg_core.evaluation.coarse import parse_coarse
    from g4seg_core.evaluation.data import open_dataset

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.examples < 0:
        raise UserError("--examples must be 0 or more")
    methods = _methods(args.methods)
    specs = parse_coarse(args.coarse)
    for spec in specs:
        if spec.kind == "pred" and not Path(spec.source).is_dir():
            raise UserError(f"coarse pred: folder not found: {spec.source}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    dataset = open_dataset(args.data)
    model = args.model or os.environ.get("G4SEG_MODEL") or None
    engines = {}
    for name in methods:
        status = create_engine(name, model=model, device=args.device, dtype=args.dtype)
        engines[name] = status.engine
    result = run_benchmark(dataset, specs, engines, limit=args.limit, seed=args.seed,
                           examples=args.examples, progress=not args.no_progress)
    images = result.rows[0].images if result.rows else 0
    out.mkdir(parents=True, exist_ok=True)
    write_results(result.rows, out / "results.json")
    command = "g4seg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "g4seg bench"
    write_report(result.rows, out / "report.md", data=args.data, images=images, engines=engines,
                 command=command, seed=args.seed)
    if result.examples:
        write_examples(result.examples, methods, len(dataset.class_names), out / "examples.png")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}" + (f", {out / 'examples.png'}" if result.examples else ""))
    return 0
