"""`g4seg make-tiny-model DIR`: write the tiny random-weight model for tests and demos."""
from __future__ import annotations

from g4seg_core.errors import UserError

HELP = "write a tiny random-weight Stable Diffusion (same architecture family) for tests and demos; its masks mean nothing"


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="output folder (created; must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument("--style", choices=("sd2", "sd15"), default="sd2",
                        help="architecture style: SD 2.x (linear projections) or SD 1.x (default sd2)")


def run(args) -> int:
    from g4seg_core.method.tiny import make_tiny_model

    try:
        out = make_tiny_model(args.dir, seed=args.seed, style=args.style)
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote the tiny model (random weights, meaningless outputs) to {out}")
    return 0
