"""The CVAT interactor (cvat/main.py), called the way nuclio calls it, through nuclio-sdk's test platform.

A real (synthetic, photo-like) image goes in as base64 the way CVAT sends it; the answer must be
CVAT's full-size 0/1 mask, the clicks and the box must hold, and bad requests must get a 400
with a one-line reason while the function keeps serving.
"""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nuclio_sdk
import nuclio_sdk.test
import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
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

    def __init__(self, module, engine: str):
        self.module = module
        self.engine = engine  # G4SEG_ENGINE; "g4seg" runs the tiny random-weight model here
        self.platform = nuclio_sdk.test.Platform()

    def call(self, body, content_type: str = "application/json") -> tuple[int, dict]:
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")
        response = self.platform.call_handler(self.module.handler, event)
        assert response.content_type == "application/json"
        return response.status_code, json.loads(response.body)

    @property
    def judges_quality(self) -> bool:
        """Whether the masks mean something (the tiny G4Seg model's weights are random)."""
        return self.engine != "g4seg"


@contextlib.contextmanager
def deployed(engine: str, model_dir: Path | None = None):
    """The handler module loaded with function.yaml-like settings for `engine`."""
    env = {"G4SEG_ENGINE": engine, "G4SEG_DEVICE": "cpu", "G4SEG_DTYPE": "float32", "G4SEG_CVAT_LABEL": "object"}
    if model_dir is not None:
        env["G4SEG_MODEL"] = str(model_dir)
    name = f"g4seg_cvat_main_{engine}_{len(sys.modules)}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            yield Interactor(load_handler_module(name), engine)
        finally:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module", params=["classic", "g4seg"])
def interactor(request):
    """Both engines, for the requests that reach the model."""
    model_dir = request.getfixturevalue("tiny_model_dir") if request.param == "g4seg" else None
    with deployed(request.param, model_dir) as deployed_interactor:
        yield deployed_interactor


@pytest.fixture(scope="module")
def classic():
    """The classic engine (fast), for the request handling that does not depend on the engine."""
    with deployed("classic") as deployed_interactor:
        yield deployed_interactor


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
    if interactor.judges_quality:
        assert iou(mask, truth) > 0.8


def test_negative_click_inside_the_box_is_carved_out(interactor, photo):
    image, truth = photo
    click = (CX + 10, CY - 5)  # on the object
    status, answer = interactor.call(request_body(image, neg=[click], box=BOX))
    assert status == 200, answer
    mask = as_mask(answer)
    assert not mask[disc(*click, 3.0)].any(), "the negative click's neighbourhood must be outside the mask"
    assert not mask[outside_box(BOX)].any()
    if interactor.judges_quality:
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
    if interactor.judges_quality:
        assert (mask & ~truth).sum() < 0.1 * mask.sum(), "the mask stays on the clicked object"


def test_clicks_alone_find_the_object(classic, photo):
    image, truth = photo
    _, answer = classic.call(request_body(image, pos=[(CX - 15, CY), (CX + 15, CY + 5)]))
    assert iou(as_mask(answer), truth) > 0.7


# -- bad requests ---------------------------------------------------------------------------

def _bad(interactor, body, *words, content_type="application/json"):
    status, answer = interactor.call(body, content_type=content_type)
    assert status == 400, answer
    reason = answer["error"]
    assert "\n" not in reason
    for word in words:
        assert word in reason.lower(), reason
    return reason


def test_a_second_click_on_the_same_frame_reuses_the_engines_work(tiny_model_dir, photo):
    # CVAT sends the frame with every click: the handler names it by a digest of those bytes, so
    # the second click pays only its mask-conditioned passes (no VAE encoding, no reference pass).
    from g4seg_core.method.model import counting

    photo, _ = photo
    with deployed("g4seg", tiny_model_dir) as g4seg:
        box = [[30, 20], [110, 80]]
        assert g4seg.call(request_body(photo, box=box))[0] == 200
        model = g4seg.platform._get_handler_context(g4seg.module.handler).user_data.engine.model
        with counting(model) as second:
            assert g4seg.call(request_body(photo, pos=[(70, 50)], box=box))[0] == 200
        with counting(model) as other_frame:
            assert g4seg.call(request_body(np.ascontiguousarray(photo[::-1]), box=box))[0] == 200
    assert second["vae_encode"] == 0 and 1 <= second["unet"] and other_frame["vae_encode"] == 1


def test_no_points_and_no_box(classic, photo):
    image, _ = photo
    _bad(classic, request_body(image), "positive click", "box")
    _bad(classic, request_body(image, box=[]), "positive click", "box")  # CVAT's "no box"
    _bad(classic, request_body(image, neg=[(10, 10)]), "positive click", "box")


def test_points_outside_the_image(classic, photo):
    image, _ = photo
    _bad(classic, request_body(image, pos=[(WIDTH + 40, 10)]), "outside", f"{WIDTH}x{HEIGHT}")
    _bad(classic, request_body(image, neg=[(10, -5)], box=BOX), "outside")
    _bad(classic, request_body(image, box=[[WIDTH + 10, 5], [WIDTH + 50, 40]]), "outside")


def test_undecodable_image(classic):
    body = {"image": base64.b64encode(b"this is not an image").decode(), "pos_points": [[5, 5]], "neg_points": []}
    _bad(classic, body, "cannot decode image")
    _bad(classic, {"image": "%%% not base64 %%%", "pos_points": [[5, 5]]}, "base64")
    _bad(classic, {"pos_points": [[5, 5]]}, "no image")
    tiny = png_base64(np.full((4, 4, 3), 128, np.uint8))
    _bad(classic, {"image": tiny, "pos_points": [[1, 1]]}, "too small")


def test_malformed_requests(classic, photo):
    image, _ = photo
    _bad(classic, b"{not json", "not json", content_type="text/plain")
    _bad(classic, [1, 2, 3], "json object")
    _bad(classic, dict(request_body(image), pos_points=[[1]]), "pos_points")
    _bad(classic, dict(request_body(image), neg_points="left", obj_bbox=BOX), "neg_points")
    _bad(classic, dict(request_body(image), obj_bbox=[[1, 2, 3]]), "obj_bbox")


def test_keeps_serving_after_bad_requests(classic, photo):
    image, _ = photo
    _bad(classic, request_body(image), "box")
    status, answer = classic.call(request_body(image, box=BOX))
    assert status == 200 and as_mask(answer).any()


# -- what gets deployed ---------------------------------------------------------------------

FUNCTION_CONFIGS = {"cpu": CVAT_DIR / "function.yaml", "gpu": CVAT_DIR / "function-gpu.yaml"}


def function_config(variant: str) -> dict:
    return yaml.safe_load(FUNCTION_CONFIGS[variant].read_text())


def env_of(config: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in config["spec"]["env"]}


def build_commands(config: dict) -> list[str]:
    directives = config["spec"]["build"]["directives"]
    return [d["value"] for stage in ("preCopy", "postCopy") for d in directives.get(stage, []) if d["kind"] == "RUN"]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_cvat_reads_an_interactor_that_takes_a_box_or_clicks(variant):
    annotations = function_config(variant)["metadata"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values()), "nuclio annotations are strings"
    # Read as CVAT's lambda manager reads them (int(), bool(), json.loads of the label spec).
    assert annotations["type"] == "interactor"
    assert int(annotations["version"]) == 2, "version 2 interactors answer a mask"
    assert int(annotations["min_pos_points"]) == 0, "a box alone must be enough"
    assert int(annotations["min_neg_points"]) == 0
    assert bool(annotations.get("startswith_box_optional", False)) is True
    assert bool(annotations.get("startswith_box", False)) is False, "the box is optional, not required"
    assert json.loads(annotations.get("spec") or "[]") == []
    assert "positive" in annotations["help_message"] and "box" in annotations["help_message"]


def test_cpu_and_gpu_variants():
    cpu, gpu = function_config("cpu"), function_config("gpu")
    assert cpu["metadata"]["name"] != gpu["metadata"]["name"], "both can be deployed side by side"
    module = load_handler_module("g4seg_cvat_main_config")
    try:
        settings = set(module.InteractorConfig.ENV.values())
    finally:
        sys.modules.pop(module.__name__, None)
    torch_pin = next(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    for config in (cpu, gpu):
        assert config["spec"]["handler"] == "main:handler"
        assert settings <= set(env_of(config)), "every setting the handler reads is in function.yaml"
        torch_installs = [c for c in build_commands(config) if "torch" in c]
        assert len(torch_installs) == 1 and torch_pin in torch_installs[0].split(), torch_installs
    assert env_of(cpu)["G4SEG_DEVICE"] == "cpu" and env_of(gpu)["G4SEG_DEVICE"] == "cuda"
    assert "download.pytorch.org/whl/cpu" in " ".join(build_commands(cpu)), "the CPU image gets the CPU wheel"
    assert "nvidia.com/gpu" not in json.dumps(cpu["spec"].get("resources", {}))
    assert gpu["spec"]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_staged_function_installs_and_serves(tmp_path, tiny_model_dir, photo):
    """Stage as deploy.sh does, install as function.yaml's build does, then serve one request."""
    stage = tmp_path / "opt-nuclio"
    subprocess.run(["bash", str(CVAT_DIR / "deploy.sh"), "--stage-only", str(stage), "cpu"], check=True)
    assert (stage / "main.py").is_file() and (stage / "function.yaml").is_file()
    assert not (stage / ".venv").exists() and not (stage / ".git").exists()
    install = [c for c in build_commands(function_config("cpu")) if "/opt/nuclio" in c]
    assert len(install) == 1
    args = shlex.split(install[0].replace("/opt/nuclio", str(stage)))
    assert args[:2] == ["pip", "install"]
    site = tmp_path / "site"
    # Dependencies come from this environment (no index here); the project itself from the staged copy.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), *args[2:]], check=True, cwd=tmp_path)
    image, _ = photo
    script = f"""
import json, sys
sys.path[:0] = [{str(stage)!r}, {str(site)!r}]
import nuclio_sdk, nuclio_sdk.test
import main, g4seg_core
assert g4seg_core.__file__.startswith({str(site)!r}), g4seg_core.__file__
event = nuclio_sdk.Event(body=json.loads(sys.stdin.read()), content_type="application/json")
response = nuclio_sdk.test.Platform().call_handler(main.handler, event)
mask = json.loads(response.body)["mask"]
print(response.status_code, len(mask), len(mask[0]))
"""
    env = dict(os.environ, G4SEG_ENGINE="g4seg", G4SEG_MODEL=str(tiny_model_dir), G4SEG_DEVICE="cpu",
               G4SEG_DTYPE="float32", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(request_body(image, box=BOX)),
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["200", str(HEIGHT), str(WIDTH)]
