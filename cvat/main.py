"""CVAT interactor (nuclio handler): positive/negative clicks and an optional box in, a full-size 0/1 mask out.

CVAT posts `{"image": <base64>, "pos_points": [[x, y], ...], "neg_points": [...],
"obj_bbox": [[x0, y0], [x1, y1]] or null}` in image pixels and reads `{"mask": [[0/1, ...], ...]}`
(H rows of W values). The box bounds the object, positive clicks say "this is it", negative
clicks carve pixels out; the core turns that into a coarse prior, refines it and keeps the
clicks and the box as hard constraints. The model loads once, in `init_context`.

Settings come from the environment (function.yaml / `nuctl deploy --env`): G4SEG_ENGINE,
G4SEG_MODEL, G4SEG_DEVICE, G4SEG_DTYPE, G4SEG_CVAT_LABEL.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from g4seg_core.engines.base import check_image
from g4seg_core.engines.factory import create_engine
from g4seg_core.errors import UserError
from g4seg_core.images import LABELING_FORMATS, decode_image
from g4seg_core.prompts import Prompt, edge_notes


class RequestError(UserError):
    """A request that cannot be served as sent (missing or malformed field)."""


@dataclass(frozen=True)
class InteractorConfig:
    engine: str = "auto"
    model: str | None = None  # local diffusers folder or hub id; None: the core's default
    device: str = "auto"
    dtype: str = "auto"
    # CVAT interactors carry no class name; the text prompt needs one, so a generic noun.
    label: str = "object"

    # setting -> environment variable
    ENV = {
        "engine": "G4SEG_ENGINE",
        "model": "G4SEG_MODEL",
        "device": "G4SEG_DEVICE",
        "dtype": "G4SEG_DTYPE",
        "label": "G4SEG_CVAT_LABEL",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "InteractorConfig":
        values = {key: environ[var].strip() for key, var in cls.ENV.items() if environ.get(var, "").strip()}
        return cls(**values)


@dataclass
class InteractorRequest:
    image: np.ndarray  # RGB uint8 HxWx3
    prompt: Prompt
    # The image's name for the engine's per-image caches: CVAT sends the frame's file with every
    # click and no other name, so a digest of those (compressed) bytes, a fraction of decoding them.
    key: str = ""


def _points(value: Any, field: str) -> list[tuple[float, float]]:
    if value is None:
        return []
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError(f"{field} must be a list of [x, y] pairs") from None
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise RequestError(f"{field} must be a list of [x, y] pairs")
    return [(float(x), float(y)) for x, y in arr]


def _box(value: Any) -> tuple[float, float, float, float] | None:
    """`[[x0, y0], [x1, y1]]` as CVAT sends it (a flat `[x0, y0, x1, y1]` is read too); null or [] is no box."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError("obj_bbox must be [[x0, y0], [x1, y1]]") from None
    if arr.size == 0:
        return None
    if arr.size != 4 or arr.ndim not in (1, 2):
        raise RequestError("obj_bbox must be [[x0, y0], [x1, y1]]")
    x0, y0, x1, y1 = (float(v) for v in arr.reshape(-1))
    return (x0, y0, x1, y1)


def _body(body: Any) -> dict:
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object with image, pos_points, neg_points, obj_bbox")
    return body


def parse_request(body: Any) -> InteractorRequest:
    """A CVAT interactor request as an image and a prompt, or a UserError saying what is wrong."""
    data = _body(body)
    encoded = data.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise RequestError("request has no image (expected base64 in the `image` field)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image is not valid base64") from None
    image = check_image(decode_image(raw, formats=LABELING_FORMATS))  # no decoder a browser would not run
    positive = _points(data.get("pos_points"), "pos_points")
    negative = _points(data.get("neg_points"), "neg_points")
    box = _box(data.get("obj_bbox"))
    if not positive and box is None:
        raise RequestError("nothing to segment: give at least one positive click or a box")
    return InteractorRequest(image, Prompt(box=box, positive_points=positive, negative_points=negative),
                             key="cvat:" + hashlib.blake2b(raw, digest_size=16).hexdigest())


def _json_response(context, payload: dict, status_code: int = 200):
    return context.Response(
        body=json.dumps(payload), headers={}, content_type="application/json", status_code=status_code
    )


def init_context(context) -> None:
    config = InteractorConfig.from_env()
    context.logger.info_with("g4seg: loading the engine", engine=config.engine, model=config.model or "default")
    status = create_engine(config.engine, model=config.model, device=config.device, dtype=config.dtype)
    if status.warning:
        context.logger.warn(status.warning)
    context.user_data.engine = status.engine
    context.user_data.label = config.label
    context.logger.info_with("g4seg: interactor ready", engine=status.engine.version, label=config.label)


def handler(context, event):
    try:
        request = parse_request(event.body)
        for note in edge_notes(request.prompt, *request.image.shape[:2]):
            context.logger.info(f"g4seg: {note}")
        context.user_data.engine.set_image(request.image, request.key)  # the next click on this frame is warm
        result = context.user_data.engine.refine(request.image, request.prompt, context.user_data.label)
    except UserError as exc:  # the request's fault; anything else is a bug and fails loudly
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        context.logger.warn_with("g4seg: bad request", reason=reason)
        return _json_response(context, {"error": reason}, status_code=400)
    return _json_response(context, {"mask": result.mask.astype(np.uint8).tolist()})
