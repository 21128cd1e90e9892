"""`g4seg refine IMAGE (--mask | --polygon | --box | --points | --scribble) --label NAME --out OUT.png`."""
from __future__ import annotations

from pathlib import Path

from g4seg_core.cli.common import add_engine_arguments, note
from g4seg_core.errors import UserError

HELP = "refine a rough mask, polygon, box, points or scribble on one image into a mask (0/255 PNG at the image's size)"


def add_arguments(parser) -> None:
    parser.add_argument("image", help="the image (any format Pillow reads)")
    prior = parser.add_argument_group("the rough shape (one or more; points may add to a box or polygon)")
    prior.add_argument("--mask", help="a mask PNG of the image's size (non-zero = object)")
    prior.add_argument("--polygon", action="append", default=[], metavar='"x,y x,y ..."', help="polygon vertices in pixels (repeatable)")
    prior.add_argument("--box", metavar="x0,y0,x1,y1", help="bounding box in pixels (corners in any order)")
    prior.add_argument("--points", metavar='"x,y,+ x,y,-"', help="clicks in pixels, + inside the object, - outside")
    prior.add_argument("--scribble", action="append", default=[], metavar='"x,y x,y ..."', help="a stroke across the object (repeatable)")
    parser.add_argument("--label", required=True, help="class name, used in the prompt (e.g. cat)")
    parser.add_argument("--out", required=True, help="output mask PNG (0/255); with --prob-out, both are written or neither")
    parser.add_argument("--prob-out", help="also write the foreground probability map as a .npy (float32, HxW)")
    add_engine_arguments(parser)
    method = parser.add_argument_group("method settings (defaults: docs/method.md)")
    method.add_argument("--alpha", type=float, help="mask injection weight")
    method.add_argument("--beta", type=float, help="mixing coefficient of the probability update")
    method.add_argument("--iterations", type=int, help="mask-conditioned passes (stops early when the mask settles)")
    method.add_argument("--timestep", type=int, help="diffusion timestep of the one-step generation (50..400 sensible)")
    method.add_argument("--seed", type=int, help="noise seed")
    method.add_argument("--working-size", type=int, help="working resolution in pixels (default: the model's native size)")
    method.add_argument("--space", choices=("auto", "rgb", "latent", "features"),
                        help="discrepancy space (default auto: rgb with a fast decoder, else latent)")
    method.add_argument("--no-roi", action="store_true", help="refine the whole image instead of a crop around the shape")


def parse_pairs(text: str, what: str) -> list[tuple[float, float]]:

    points = []
    for item in text.replace(";", " ").split():
        parts = item.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            points.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise UserError(f"{what}: {item!r} is not x,y") from None
    return points


def parse_box(text: str) -> tuple[float, float, float, float]:

    try:
        values = tuple(float(v) for v in text.split(","))
        if len(values) != 4:
            raise ValueError
    except ValueError:
        raise UserError(f"--box: {text!r} is not x0,y0,x1,y1") from None
    return values


def parse_points(text: str):

    positive, negative = [], []
    for item in text.replace(";", " ").split():
        parts = item.split(",")
        try:
            if len(parts) != 3 or parts[2] not in ("+", "-", "1", "0"):
                raise ValueError
            xy = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise UserError(f"--points: {item!r} is not x,y,+ or x,y,-") from None
        (positive if parts[2] in ("+", "1") else negative).append(xy)
    return positive, negative


def build_prompt(args, height: int, width: int):
    from g4seg_core.images import load_mask
    from g4seg_core.prompts import Prompt, edge_notes, rasterize_prompt

    prompt = Prompt(
        mask=load_mask(args.mask) if args.mask else None,
        polygons=[parse_pairs(p, "--polygon") for p in args.polygon],
        box=parse_box(args.box) if args.box else None,
        scribbles=[parse_pairs(s, "--scribble") for s in args.scribble],
    )
    if args.points:
        prompt.positive_points, prompt.negative_points = parse_points(args.points)
    if prompt.is_empty():
        raise UserError("give a rough shape: --mask, --polygon, --box, --points with a + point, or --scribble")
    rasterize_prompt(prompt, height, width)  # validate now, before loading the model
    for text in edge_notes(prompt, height, width):
        note(text)
    return prompt


def refiner_settings(args) -> dict:
    names = {"alpha": "alpha", "beta": "beta", "iterations": "iterations", "timestep": "timestep", "seed": "seed",
             "working_size": "working_size", "space": "discrepancy_space"}
    settings = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    if args.no_roi:
        settings["roi"] = False
    return settings


def run(args) -> int:
    from g4seg_core.engines.base import check_image
    from g4seg_core.engines.factory import plan_engine
    from g4seg_core.images import (
        atomic_outputs,
        check_writable,
        load_image,
        mask_png,
        write_png,
    )
    from g4seg_core.method.config import RefinerConfig

    # Everything the user typed is checked before the model loads.
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png file, got {out}")
    outputs = [check_writable(out, "--out")]
    if args.prob_out:
        if not args.prob_out.endswith(".npy"):
            raise UserError(f"--prob-out must be a .npy file, got {args.prob_out}")
        if Path(args.prob_out).resolve() == out.resolve():
            raise UserError("--prob-out and --out name the same file")
        outputs.append(check_writable(args.prob_out, "--prob-out"))
    image = check_image(load_image(args.image))
    prompt = build_prompt(args, *image.shape[:2])
    settings = refiner_settings(args)
    config = RefinerConfig(**settings)
    plan = plan_engine(args.engine, args.model, args.device, args.dtype, fallback=args.model is None,
                       decoder=args.decoder)
    plan.check_labels([args.label], config.prompt_template)
    if settings and plan.weights is None:
        note(f"the method settings ({', '.join(settings)}) are G4Seg's; the {plan.name} engine ignores them")

    engine = plan.load(settings).engine
    engine.set_image(image, str(Path(args.image).resolve()))  # named by its path, never hashed
    result = engine.refine(image, prompt, args.label)
    with atomic_outputs(outputs) as temps:
        write_png(mask_png(result.mask), temps[0])
        if args.prob_out:
            import numpy as np

            np.save(temps[1], result.probability)
    print(f"{out}: {int(result.mask.sum())} of {result.mask.size} pixels ({engine.version})")
    return 0
