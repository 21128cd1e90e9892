"""The synthetic-set table of docs/benchmarks.md: every method on every coarse kind, on this machine.

    python benchmarks/synthetic_table.py                 # builds the tiny model in a temp folder
    python benchmarks/synthetic_table.py --model DIR     # any G4Seg weights instead (real ones mean something)

It runs `g4seg bench` on seeded synthetic scenes with the identity, G4Seg and classic engines,
writes benchmarks/results/synthetic/{results.json,report.md,examples.png}, and replaces the
`synthetic` block of docs/benchmarks.md. With the tiny random-weight model (the default here,
as no real weights can be downloaded on the project's machines) the g4seg row only shows that
the method runs end to end and what it costs at the tiny model's size; its scores are meaningless.
The default classic engine (`CLASSIC_ENGINE`) is chosen on real photos (benchmarks/weizmann_table.py), not here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import ROOT, machine, replace_block  # noqa: E402

DATA = "synthetic:16:0:256"
COARSE = "polygon:8,dilate:10,erode:5,jitter:4,lowres:16,box,points:3,scribble"
METHODS = "identity,g4seg,colourcut,grabcut,densecrf,pamr"
PEERS = ("colourcut", "grabcut", "densecrf", "pamr")


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="G4Seg weights (default: build the tiny random-weight model)")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--coarse", default=COARSE)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--dtype", default="float32",
                        help="g4seg dtype (default float32: on CPUs without bfloat16 units it is several times faster)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthetic"))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from g4seg_core.cli import main as g4seg
    from g4seg_core.evaluation.bench import method_summary, results_table

    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from g4seg_core.method.tiny import make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "tiny-sd"))
        argv = ["bench", "--data", args.data, "--coarse", args.coarse, "--methods", args.methods,
                "--model", model, "--device", "cpu", "--dtype", args.dtype, "--examples", "2", "--out", args.out]
        status = g4seg(argv)
        if status:
            return status
    load_after = os.getloadavg()[0]
    rows = json.loads((Path(args.out) / "results.json").read_text())
    summary = method_summary(rows)
    peers = {m: v for m, v in summary.items() if m in PEERS}
    best = max(peers, key=peers.get) if peers else None
    display = {model: "TINY" if args.model is None else model, args.out: _relative(args.out)}
    shown = " ".join(shlex.quote(display.get(a, a)) for a in argv)
    block = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}, by `python benchmarks/synthetic_table.py`",
        f"(`g4seg {shown}`" + (", where TINY is the tiny random-weight model it builds)." if args.model is None else ")."),
        "Synthetic scenes, not real photographs; "
        + ("the g4seg row uses the **tiny random-weight model, so its scores are meaningless** (it shows the "
           "method runs end to end and what it costs at the tiny model's size)." if args.model is None
           else f"G4Seg weights: `{model}`."),
        f"Times: {torch.get_num_threads()} torch threads; 1-minute load average {load_before:.2f} at the start "
        f"and {load_after:.2f} at the end (other work on the machine slows them).",
        "",
        results_table(rows),
        "",
        "Mean IoU over the coarse kinds: " + ", ".join(f"{m} {100 * v:.1f}" for m, v in summary.items()) + ".",
    ]
    if best:
        block.append(f"Best classic peer by mean IoU in this table: **{best}**.")
    if not args.no_docs:
        replace_block("synthetic", "\n".join(block), doc=ROOT / "docs" / "benchmarks.md")
    print("\n".join(block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
