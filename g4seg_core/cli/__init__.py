"""The `g4seg` command: one subcommand per module, found through the `g4seg.commands` entry points.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Commands are registered in pyproject.toml, the core's and the Label Studio backend's alike, so
the core never names a backend module; a command is imported only when it runs, which keeps
`g4seg --help` fast (no torch).
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import entry_points

from g4seg_core.errors import UserError

DESCRIPTION = "Training-free mask refinement with Stable Diffusion (G4Seg), for Label Studio and CVAT."
# Order of the listing; commands not named here follow in name order.
ORDER = ("refine", "segment", "bench", "serve", "preannotate", "sweep", "dead-letters", "make-tiny-model")


def commands() -> dict:
    """name -> entry point of every installed `g4seg` command."""
    found = {ep.name: ep for ep in entry_points(group="g4seg.commands")}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Coordinates may be negative (a box that starts left of the image: --box -50,10,200,300).
        # argparse takes a value only for a plain negative number; widen that to coordinate lists.
        # No option of g4seg starts with "-" and a digit, so nothing is lost.
        self._negative_number_matcher = re.compile(r"^-[\d.][\d.,;+\- ]*$")

    def error(self, message):  # one line, not the usage block
        self.exit(2, f"g4seg: error: {message}\n")


def build_parser(selected: str) -> argparse.ArgumentParser:
    parser = _Parser(prog="g4seg", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    try:
        module = commands()[selected].load()
    except ModuleNotFoundError as exc:  # e.g. `serve` in an install without the backend (the CVAT image)
        raise UserError(f"the {selected!r} command is not installed here ({exc.name} is missing)") from None
    p = sub.add_parser(selected, help=module.HELP, description=module.HELP)
    module.add_arguments(p)
    p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = commands()
    if not available:
        print("g4seg: error: no commands are registered; install the project (pip install -e .)", file=sys.stderr)
        return 2
    if not argv or argv[0].startswith("-"):
        # Top-level help: list commands without importing them.
        parser = _Parser(prog="g4seg", description=DESCRIPTION)
        parser.add_argument("command", choices=list(available), help="run `g4seg COMMAND --help` for its options")
        parser.parse_args(argv)
        return 0
    if argv[0] not in available:
        print(f"g4seg: error: unknown command {argv[0]!r} (choose from {', '.join(available)})", file=sys.stderr)
        return 2
    try:
        args = build_parser(argv[0]).parse_args(argv)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("g4seg: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:  # the user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"g4seg: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
