"""`g4seg bench`: compare refiners on coarse inputs made from exact masks."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from g4seg_core.errors import UserError

HELP = "benchmark refiners (G4Seg and classic peers) on coarse masks made from a dataset's exact masks"

BENCH_METHODS = ("identity", "auto", "g4seg", "g4seg-oracle", "classic", "colourcut", "grabcut", "densecrf", "pamr")
DEFAULT_METHODS = "identity,auto,densecrf,grabcut,pamr"


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
    parser.add_argument("--methods", default=DEFAULT_METHODS, metavar="NAMES",
                        help=f"comma-separated, from {', '.join(BENCH_METHODS)}; auto is G4Seg when its weights are "
                             "found, else the classic engine (said loudly); g4seg-oracle[:NOISE[:BLUR]] is a ceiling, not a "
                             "method: the refiner's machinery fed the ground truth, blurred by BLUR latent cells "
                             "(default 1) and noised with NOISE "
                             f"(default {DEFAULT_METHODS})")
    parser.add_argument("--model", default=None,
                        help="G4Seg weights: a hub id or a local folder (default: $G4SEG_MODEL, else the hub id)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a refiner setting for g4seg and the oracle (docs/method.md), repeatable")
    parser.add_argument("--device", default="auto", help="torch device for g4seg: auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="g4seg dtype: auto, float32, float16, bfloat16")
    parser.add_argument("--decoder", default="auto", help="g4seg's fast RGB decoder: auto, none, a folder or hub id")
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
    # g4seg-oracle[:NOISE[:BLUR]]: the refiner's machinery with a discrepancy taken from the ground truth.
    unknown = [m for m in names if m.split(":")[0] not in BENCH_METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} (choose from {', '.join(BENCH_METHODS)})")
    if len(set(names)) != len(names):
        raise UserError(f"method listed twice in {text!r}")
    return names


def run(args) -> int:
    from g4seg_core.cli.common import parse_settings
    from g4seg_core.engines.factory import plan_engine
    from g4seg_core.evaluation.oracle import ORACLE, parse_oracle
    from g4seg_core.method.config import RefinerConfig
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
    settings = RefinerConfig.from_strings(parse_settings(args.setting, "--setting"))
    model = args.model or os.environ.get("G4SEG_MODEL") or None
    # Every engine resolved (weights found, device and extras present) before any loads.
    plans = {name: None if name.startswith(ORACLE) else plan_engine(name, model, args.device, args.dtype,
                                                                              decoder=args.decoder)
             for name in methods}
    engines = {}
    for name, plan in plans.items():
        engines[name] = parse_oracle(name, settings) if plan is None else plan.load(vars(settings)).engine
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
