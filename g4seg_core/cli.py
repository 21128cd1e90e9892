"""The `g4seg` command: one subcommand per module, imported only when it runs.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Lazy imports keep `g4seg --help` fast (no torch) and keep the core free of the backend: the
`serve` and `preannotate` commands live in `backend/` and are named here only by module path.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module path
COMMANDS = {
    "refine": "g4seg_core.commands.refine",
    "make-tiny-model": "g4seg_core.commands.make_tiny_model",
    "segment": "g4seg_core.commands.segment",
    "bench": "g4seg_core.commands.bench",
    "serve": "backend.serve",
    "preannotate": "backend.preannotate",
}


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"g4seg: error: {message}\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="g4seg", description="Training-free mask refinement with Stable Diffusion (G4Seg).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_path in COMMANDS.items():
        if selected is not None and name != selected:
            sub.add_parser(name, help="")
            continue
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    if selected is None and argv and not argv[0].startswith("-"):
        print(f"g4seg: error: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if selected is None:
        # Top-level help: list commands without importing them.
        parser = _Parser(prog="g4seg", description="Training-free mask refinement with Stable Diffusion (G4Seg).")
        parser.add_argument("command", choices=list(COMMANDS), help="run `g4seg COMMAND --help` for its options")
        parser.parse_args(argv)
        return 0
    args = build_parser(selected).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("g4seg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors are one line; see `user_errors`
        if isinstance(exc, user_errors()):
            print(f"g4seg: error: {exc}", file=sys.stderr)
            return 2
        raise


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug: shown as one line."""
    from .images import ImageError
    from .loading import WeightsNotFoundError
    from .prompts import PromptError

    return (CommandError, ImageError, PromptError, WeightsNotFoundError, FileNotFoundError, ValueError)


if __name__ == "__main__":
    # Run through the package module so exception classes are the ones commands raise.
    from g4seg_core.cli import main as package_main

    sys.exit(package_main())
