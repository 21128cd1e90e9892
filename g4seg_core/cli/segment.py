"""`g4seg segment IMAGE --labels cat,dog [--method iseg|diffsegmenter] [--refine] --out DIR`."""
from __future__ import annotations

import re

from g4seg_core.errors import UserError

HELP = "segment an image from class names alone (iSeg or DiffSegmenter), optionally refined by G4Seg; one mask per class and a colour overlay"

OVERLAY_NAME = "overlay.png"


def add_arguments(parser) -> None:
    parser.add_argument("image", help="the image (any format Pillow reads)")
    parser.add_argument("--labels", required=True, help="comma-separated class names, e.g. cat,dog")
    parser.add_argument("--method", default="iseg", choices=("iseg", "diffsegmenter"), help="text-only method (default iseg)")
    parser.add_argument("--refine", action="store_true", help="refine each class mask with G4Seg (same loaded model)")
    parser.add_argument("--out", required=True, help="output folder: <label>.png per class (0/255), overlay.png, labels.png")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="hub id or local diffusers folder (default: $G4SEG_MODEL or stabilityai/stable-diffusion-2-1-base)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")
    settings = parser.add_argument_group("method settings (defaults: docs/preannotation.md)")
    settings.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                          help="a text-only setting, e.g. gamma=1.6, iterations=10, background_threshold=0.5, "
                               "working_size=512, cross_weights=16:0.7,32:0.3 (repeatable)")
    settings.add_argument("--refine-setting", action="append", default=[], metavar="KEY=VALUE",
                          help="a G4Seg refiner setting with --refine, e.g. iterations=3, alpha=1.0 (repeatable)")


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

    from g4seg_core.images import (
        load_image,
        save_mask,
        save_png_atomic,
        write_text_atomic,
    )
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.model import SDModel
    from g4seg_core.method.textseg import TextSegmenter, config_for, refine_segmentation

    labels = parse_labels(args.labels)
    config = config_for(args.method, parse_settings(args.setting, "--setting"))
    refine_settings = parse_settings(args.refine_setting, "--refine-setting")
    if refine_settings and not args.refine:
        raise UserError("--refine-setting needs --refine")
    refiner_config = RefinerConfig.from_strings(refine_settings) if args.refine else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out must be a folder, {out} is a file")
    image = load_image(args.image)

    model = SDModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    segmenter = TextSegmenter(model, config)
    result = segmenter.segment(image, labels)
    version = segmenter.version
    if args.refine:
        from g4seg_core.method.refiner import G4SegRefiner

        refiner = G4SegRefiner(model, refiner_config)  # the same loaded model: memory is not doubled
        result = refine_segmentation(refiner, image, result)
        version += f" + {refiner.version}"

    taken: set[str] = {OVERLAY_NAME, "labels.png", "labels.json"}
    files = {}
    for label, mask in result.masks.items():
        files[label] = mask_filename(label, taken)
        save_mask(mask, out / files[label])
    colours = palette(len(labels))
    save_png_atomic(overlay(image, result.label_map, colours), out / OVERLAY_NAME)
    # The label map as an 8/16-bit PNG: 0 background, i + 1 = the i-th class of labels.json.
    dtype = np.uint8 if len(labels) < 256 else np.uint16
    save_png_atomic(result.label_map.astype(dtype), out / "labels.png")
    summary = {"version": version, "labels": labels, "masks": files,
               "pixels": {label: int(mask.sum()) for label, mask in result.masks.items()},
               "colours": {label: list(c) for label, c in zip(labels, colours)}}
    write_text_atomic(json.dumps(summary, indent=2), out / "labels.json")
    total = image.shape[0] * image.shape[1]
    for label in labels:
        print(f"{out / files[label]}: {label}, {summary['pixels'][label]} of {total} pixels")
    print(f"{out / OVERLAY_NAME}: overlay ({version})")
    return 0
