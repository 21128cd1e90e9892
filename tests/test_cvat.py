"""The CVAT interactor (cvat/main.py), called the way nuclio calls it, through nuclio-sdk's test platform.

A real (synthetic, photo-like) image goes in as base64 the way CVAT sends it; the answer must be
CVAT's full-size 0/1 mask, the clicks and the box must hold, and bad requests must get a 400
with a one-line reason while the function keeps serving.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import nuclio_sdk
import nuclio_sdk.test

ROOT = Path(__file__).resolve().parents[1]
CVAT_DIR = ROOT / "cvat"
HEIGHT, WIDTH = 120, 160
# The object: an ellipse, centre (CX, CY), half-axes (RX, RY), in pixels.
CX, CY, RX, RY = 80.0, 62.0, 42.0, 30.0
BOX = [[CX - RX - 8, CY - RY - 8], [CX + RX + 8, CY + RY + 8]]


def photo_like_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured reddish ellipse on a textured green-grey background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    truth = ((xx + 0.5 - CX) / RX) ** 2 + ((yy + 0.5 - CY) / RY) ** 2 <= 1.0
    grain = rng.normal(0.0, 1.0, (HEIGHT, WIDTH, 3)).astype(np.float32)
    background = np.stack(
        [
            70 + 25 * np.sin(xx / 6.0) + 10 * np.cos(yy / 9.0),
            110 + 20 * np.sin((xx + yy) / 11.0),
            80 + 15 * np.cos(xx / 5.0 - yy / 7.0),
        ],
        axis=-1,
    ) + 12 * grain
    blotches = np.sin(xx / 4.0) * np.cos(yy / 3.0)
    foreground = np.stack(
        [190 + 30 * blotches, 70 + 20 * blotches, 50 + 10 * np.sin(yy / 2.5)], axis=-1
    ) + 12 * grain
    image = np.where(truth[..., None], foreground, background)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def png_base64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_handler_module(name: str):
    """cvat/main.py as its own module: the test platform runs init_context from the handler's module."""
    spec = importlib.util.spec_from_file_location(name, CVAT_DIR / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Interactor:
    """One deployed function: a handler module, its environment and nuclio's test platform."""

    def __init__(self, module):
        self.module = module
        self.platform = nuclio_sdk.test.Platform()

    def call(self, body, content_type: str = "application/json") -> tuple[int, dict]:
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")
        response = self.platform.call_handler(self.module.handler, event)
        assert response.content_type == "application/json"
        return response.status_code, json.loads(response.body)

    @property
    def engine(self):
        return self.platform._get_handler_context(self.module.handler).user_data.engine


@pytest.fixture(scope="module")
def tiny_model(request, tmp_path_factory) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        from g4seg_core.tiny import make_tiny_model

        return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module", params=["classic", "g4seg"])
def interactor(request):
    env = {"G4SEG_ENGINE": request.param, "G4SEG_DEVICE": "cpu", "G4SEG_DTYPE": "float32", "G4SEG_CVAT_LABEL": "object"}
    if request.param == "g4seg":
        env["G4SEG_MODEL"] = str(request.getfixturevalue("tiny_model"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        module = load_handler_module(f"g4seg_cvat_main_{request.param}")
        yield Interactor(module)
    sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def photo():
    return photo_like_image()


def request_body(image: np.ndarray, pos=(), neg=(), box=None) -> dict:
    return {"image": png_base64(image), "pos_points": [list(p) for p in pos], "neg_points": [list(p) for p in neg],
            "obj_bbox": box}


def disc(x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius**2


def as_mask(answer: dict) -> np.ndarray:
    mask = np.asarray(answer["mask"])
    assert mask.shape == (HEIGHT, WIDTH), "CVAT wants H rows of W values, the image's size"
    assert set(np.unique(mask)) <= {0, 1}
    return mask.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def outside_box(box) -> np.ndarray:
    (x0, y0), (x1, y1) = box
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (xx + 0.5 < x0) | (xx + 0.5 > x1) | (yy + 0.5 < y0) | (yy + 0.5 > y1)


# -- good requests --------------------------------------------------------------------------

def test_box_alone_gives_a_full_size_mask_inside_the_box(interactor, photo):
    image, truth = photo
    status, answer = interactor.call(request_body(image, box=BOX))
    assert status == 200, answer
    mask = as_mask(answer)
    assert mask.any()
    assert not mask[outside_box(BOX)].any(), "the box bounds the object"
    if interactor.engine.name != "g4seg":  # the tiny G4Seg model has random weights: shape only
        assert iou(mask, truth) > 0.8


def test_negative_click_inside_the_box_is_carved_out(interactor, photo):
    image, truth = photo
    click = (CX + 10, CY - 5)  # on the object
    status, answer = interactor.call(request_body(image, neg=[click], box=BOX))
    assert status == 200, answer
    mask = as_mask(answer)
    assert not mask[disc(*click, 3.0)].any(), "the negative click's neighbourhood must be outside the mask"
    assert not mask[outside_box(BOX)].any()
    if interactor.engine.name != "g4seg":
        assert mask[truth & ~disc(*click, 15.0)].mean() > 0.8, "the rest of the object stays in"


def test_clicks_alone(interactor, photo):
    image, truth = photo
    positive = [(CX - 15, CY), (CX + 15, CY + 5)]
    negative = [(12.0, 10.0)]
    status, answer = interactor.call(request_body(image, pos=positive, neg=negative))
    assert status == 200, answer
    mask = as_mask(answer)
    for click in positive:
        assert mask[disc(*click, 2.0)].all(), "a positive click's neighbourhood is in the mask"
    assert not mask[disc(*negative[0], 2.0)].any()
    if interactor.engine.name != "g4seg":
        assert (mask & truth).sum() > 0.5 * truth.sum()
        assert (mask & ~truth).sum() < 0.2 * truth.sum()


def test_raw_json_bytes_and_flat_box_are_read(interactor, photo):
    # Called outside CVAT (curl, nuctl invoke) the body can arrive as bytes; some clients send the box flat.
    image, _ = photo
    (x0, y0), (x1, y1) = BOX
    body = json.dumps({"image": png_base64(image), "pos_points": [], "neg_points": [], "obj_bbox": [x0, y0, x1, y1]})
    status, answer = interactor.call(body.encode(), content_type="text/plain")
    assert status == 200, answer
    flat = as_mask(answer)
    _, nested = interactor.call(request_body(image, box=BOX))
    assert np.array_equal(flat, as_mask(nested))


# -- bad requests ---------------------------------------------------------------------------

def _bad(interactor, body, *words, content_type="application/json"):
    status, answer = interactor.call(body, content_type=content_type)
    assert status == 400, answer
    reason = answer["error"]
    assert "\n" not in reason
    for word in words:
        assert word in reason.lower(), reason
    return reason


def test_no_points_and_no_box(interactor, photo):
    image, _ = photo
    _bad(interactor, request_body(image), "positive click", "box")
    _bad(interactor, request_body(image, box=[]), "positive click", "box")  # CVAT's "no box"
    _bad(interactor, request_body(image, neg=[(10, 10)]), "positive click", "box")


def test_points_outside_the_image(interactor, photo):
    image, _ = photo
    _bad(interactor, request_body(image, pos=[(WIDTH + 40, 10)]), "outside", f"{WIDTH}x{HEIGHT}")
    _bad(interactor, request_body(image, neg=[(10, -5)], box=BOX), "outside")
    _bad(interactor, request_body(image, box=[[WIDTH + 10, 5], [WIDTH + 50, 40]]), "outside")


def test_undecodable_image(interactor):
    body = {"image": base64.b64encode(b"this is not an image").decode(), "pos_points": [[5, 5]], "neg_points": []}
    _bad(interactor, body, "cannot decode image")
    _bad(interactor, {"image": "%%% not base64 %%%", "pos_points": [[5, 5]]}, "base64")
    _bad(interactor, {"pos_points": [[5, 5]]}, "no image")
    tiny = png_base64(np.full((4, 4, 3), 128, np.uint8))
    _bad(interactor, {"image": tiny, "pos_points": [[1, 1]]}, "too small")


def test_malformed_requests(interactor, photo):
    image, _ = photo
    _bad(interactor, b"{not json", "not json", content_type="text/plain")
    _bad(interactor, [1, 2, 3], "json object")
    _bad(interactor, dict(request_body(image), pos_points=[[1]]), "pos_points")
    _bad(interactor, dict(request_body(image), neg_points="left", obj_bbox=BOX), "neg_points")
    _bad(interactor, dict(request_body(image), obj_bbox=[[1, 2, 3]]), "obj_bbox")


def test_keeps_serving_after_bad_requests(interactor, photo):
    image, _ = photo
    _bad(interactor, request_body(image), "box")
    status, answer = interactor.call(request_body(image, box=BOX))
    assert status == 200 and as_mask(answer).any()
