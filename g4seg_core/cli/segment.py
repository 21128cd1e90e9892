"""`g4seg segment IMAGE --labels cat,dog [--method iseg|diffsegmenter] [--refine] --out DIR`."""
from __future__ import annotations

import re

from g4seg_core.cli.common import add_engine_arguments, parse_labels, parse_settings
from g4seg_core.errors import UserError

HELP = "segment an image from class names alone (iSeg or DiffSegmenter), optionally refined by G4Seg; one mask per class and a colour overlay"

OVERLAY_NAME = "overlay.png"
LABELS_PNG = "labels.png"
LABELS_JSON = "labels.json"


def add_arguments(parser) -> None:
    parser.add_argument("image", help="the image (any format Pillow reads)")
    parser.add_argument("--labels", required=True, help="comma-separated class names, e.g. cat,dog")
    parser.add_argument("--method", default="iseg", choices=("iseg", "diffsegmenter"), help="text-only method (default iseg)")
    parser.add_argument("--refine", action="store_true",
                        help="refine each class mask with --engine (G4Seg on the same loaded model by default)")
    parser.add_argument("--out", required=True,
                        help="output folder: <label>.png per class (0/255), overlay.png (colours and outlines), "
                             "labels.png (0 background, i = the i-th label) and labels.json (file names, pixel "
                             "counts, colours, the model version); all are written or none")
    add_engine_arguments(parser)
    settings = parser.add_argument_group("method settings (defaults: docs/preannotation.md)")
    settings.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                          help="a text-only setting, e.g. gamma=1.6, iterations=10, background_threshold=0.5, "
                               "working_size=512, cross_weights=16:0.7,32:0.3 (repeatable)")
    settings.add_argument("--refine-setting", action="append", default=[], metavar="KEY=VALUE",
                          help="a G4Seg refiner setting with --refine, e.g. iterations=3, alpha=1.0 (repeatable)")


def mask_filename(label: str, taken: set[str]) -> str:
    """A safe, unique file name for a class mask ("traffic light" -> traffic_light.png)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "class"
    name, n = f"{stem}.png", 2
    while name.lower() in taken:
        name, n = f"{stem}-{n}.png", n + 1
    taken.add(name.lower())
    return name


def palette(count: int):
    """`count` distinct RGB colours (evenly spaced hues)."""
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(count, 1), 0.85, 1.0)) for i in range(count)]


def overlay(image, label_map, colours, opacity: float = 0.5):
    """The image with each class painted in its colour (background left as is) and class outlines."""
    import cv2
    import numpy as np

    out = image.astype(np.float32).copy()
    for i, colour in enumerate(colours):
        mask = label_map == i + 1
        if not mask.any():
            continue
        out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(colour, np.float32)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(float(c) for c in colour), 1)
    return out.clip(0, 255).astype(np.uint8)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

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
    from g4seg_core.method.textseg import config_for

    # Everything the user typed is checked before the model loads.
    labels = parse_labels(args.labels)
    config = config_for(args.method, parse_settings(args.setting, "--setting"))
    refine_settings = parse_settings(args.refine_setting, "--refine-setting")
    if refine_settings and not args.refine:
        raise UserError("--refine-setting needs --refine")
    if args.engine != "auto" and not args.refine:
        raise UserError("--engine chooses the refinement: it needs --refine")
    refiner_config = RefinerConfig.from_strings(refine_settings) if args.refine else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out must be a folder, {out} is a file")
    check_writable(out / OVERLAY_NAME, "--out")
    image = check_image(load_image(args.image))
    # The text-only methods need the Stable Diffusion model whatever refines their masks.
    plan = plan_engine("g4seg", args.model, args.device, args.dtype, decoder=args.decoder)
    plan.check_labels(labels, config.prompt_template.format(config.class_phrase))
    refine_plan = plan_engine(args.engine, args.model, args.device, args.dtype, decoder=args.decoder) if args.refine else None
    if refine_settings and refine_plan.weights is None:
        raise UserError(f"--refine-setting sets G4Seg's refiner; --engine {args.engine} runs {refine_plan.name}")

    from g4seg_core.method.model import SDModel
    from g4seg_core.method.textseg import TextSegmenter, refine_segmentation

    model = SDModel.from_pretrained(args.model, device=args.device, dtype=args.dtype, decoder=args.decoder)
    segmenter = TextSegmenter(model, config)
    result = segmenter.segment(image, labels)
    version = segmenter.version
    if refine_plan is not None:
        if refine_plan.weights is not None:
            from g4seg_core.method.refiner import G4SegRefiner

            refiner = G4SegRefiner(model, refiner_config)  # the same loaded model: memory is not doubled
        else:
            refiner = refine_plan.load().engine
        result = refine_segmentation(refiner, image, result)
        version += f" + {refiner.version}"

    taken: set[str] = {OVERLAY_NAME, LABELS_PNG, LABELS_JSON}
    files = {label: mask_filename(label, taken) for label in result.masks}
    colours = palette(len(labels))
    summary = {"version": version, "labels": labels, "masks": files,
               "pixels": {label: int(mask.sum()) for label, mask in result.masks.items()},
               "colours": {label: list(c) for label, c in zip(labels, colours)}}
    # The label map as an 8/16-bit PNG: 0 background, i + 1 = the i-th class of labels.json.
    label_png = result.label_map.astype(np.uint8 if len(labels) < 256 else np.uint16)
    names = [files[label] for label in result.masks] + [OVERLAY_NAME, LABELS_PNG, LABELS_JSON]
    with atomic_outputs([out / name for name in names]) as temps:
        for temp, mask in zip(temps, result.masks.values()):
            write_png(mask_png(mask), temp)
        write_png(overlay(image, result.label_map, colours), temps[-3])
        write_png(label_png, temps[-2])
        Path(temps[-1]).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    total = image.shape[0] * image.shape[1]
    for label in labels:
        print(f"{out / files[label]}: {label}, {summary['pixels'][label]} of {total} pixels")
    print(f"{out / OVERLAY_NAME}: overlay ({version})")
    return 0
