"""What several commands share: the engine and model options, notes to the user, text lists."""
from __future__ import annotations

import sys

from g4seg_core.errors import UserError

ENGINE_HELP = (
    "auto (default): G4Seg when its weights are found, else the classic engine, said loudly; "
    "g4seg: G4Seg or an error; classic: the engine that needs no weights; or one classic engine "
    "by name: grabcut, pamr, densecrf, identity"
)


def add_engine_arguments(parser, engine: bool = True) -> None:
    """--engine (unless `engine` is False), --model, --device, --dtype."""
    from g4seg_core.engines.factory import ENGINE_CHOICES

    group = parser.add_argument_group("engine and model")
    if engine:
        group.add_argument("--engine", default="auto", type=str.lower, choices=ENGINE_CHOICES, metavar="ENGINE",
                           help=ENGINE_HELP)
    group.add_argument("--model", help="Stable Diffusion weights: a hub id or a local diffusers folder (default: "
                                       "$G4SEG_MODEL, else stabilityai/stable-diffusion-2-1-base); a model named "
                                       "here must be found")
    group.add_argument("--decoder", default="auto",
                       help="fast RGB decoder (diffusers AutoencoderTiny, e.g. madebyollin/taesd): a hub id or a "
                            "local folder; auto (default): $G4SEG_DECODER, else a taesd/ folder inside the model "
                            "folder, else TAESD in the hub cache, else none; none: decode with the full VAE")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    group.add_argument("--dtype", default="auto",
                       help="auto, float32, bfloat16, float16 (default auto: float16 on CUDA; on CPU bfloat16 where "
                            "the CPU computes it in hardware, else float32)")


def note(text: str) -> None:
    """Something the user should know that is not an error (a shape clipped, a setting ignored)."""
    print(f"g4seg: note: {text}", file=sys.stderr)


def parse_labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise UserError("--labels: give at least one class name, e.g. --labels cat,dog")
    if len(set(labels)) != len(labels):
        raise UserError(f"--labels: each class once, got {', '.join(labels)}")
    return labels


def parse_settings(items: list[str], option: str) -> dict[str, str]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option}: {item!r} is not KEY=VALUE")
        settings[key.strip()] = value
    return settings
