"""`g4seg refine` and `g4seg make-tiny-model` as a user runs them: outputs, and one-line errors."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def g4seg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "g4seg_core.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(d / "img.jpg")
    mask = np.zeros((90, 120), np.uint8)
    mask[20:60, 30:80] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[:40]).save(d / "small.png")
    (d / "broken.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(d / "tiny.png")
    return d


@pytest.fixture(scope="module")
def weizmann_sample(tmp_path_factory, weizmann_dir):
    """A real photo (resized to its hand-made mask) written as a JPEG, and the mask."""
    from g4seg_core.evaluation.data import open_dataset

    sample = open_dataset(f"weizmann:{weizmann_dir}:test").load(0)
    path = tmp_path_factory.mktemp("photo") / f"{sample.id}.png"
    Image.fromarray(sample.image).save(path)
    return path, sample.objects[0].mask


def test_refine_writes_a_mask_of_the_image_size_and_probabilities(tiny_model_dir, files, tmp_path):
    out, prob = tmp_path / "out" / "m.png", tmp_path / "p.npy"
    r = g4seg("refine", files / "img.jpg", "--mask", files / "mask.png", "--label", "cat", "--model", tiny_model_dir,
              "--iterations", "2", "--out", out, "--prob-out", prob)
    assert r.returncode == 0, r.stderr
    written = np.asarray(Image.open(out))
    assert written.shape == (90, 120) and set(np.unique(written)) <= {0, 255}
    p = np.load(prob)
    assert p.shape == (90, 120) and p.dtype == np.float32
    assert ((p > 0.5) == (written == 255)).all()


@pytest.mark.parametrize("prior", [
    ["--polygon", "30,20 80,20 80,60 30,60"],
    ["--box", "30,20,80,60"],
    ["--points", "55,40,+ 5,5,-"],
    ["--scribble", "35,40 75,40"],
])
def test_refine_accepts_every_kind_of_rough_shape(tiny_model_dir, files, tmp_path, prior):
    out = tmp_path / "m.png"
    r = g4seg("refine", files / "img.jpg", *prior, "--label", "cat", "--model", tiny_model_dir,
              "--iterations", "1", "--space", "latent", "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out)).shape == (90, 120)


@pytest.mark.parametrize("args, message", [
    (["{d}/missing.png", "--box", "1,1,50,50"], "image not found"),
    (["{d}/broken.png", "--box", "1,1,50,50"], "cannot decode image"),
    (["{d}/img.jpg", "--mask", "{d}/small.png"], "mask is 120x40 but the image is 120x90"),
    (["{d}/img.jpg", "--polygon", "1,1 2,2 3,3"], "polygon is degenerate"),
    (["{d}/img.jpg", "--polygon", "1,1 2,2"], "at least 3 points"),
    (["{d}/img.jpg", "--polygon", "1,1 abc 3,3"], "is not x,y"),
    (["{d}/img.jpg", "--box", "1,2,3"], "is not x0,y0,x1,y1"),
    (["{d}/img.jpg", "--points", "5,5,-"], "give a rough shape"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--model", "{d}/no-model"], "does not exist"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--model", "{d}"], "is not a diffusers model folder"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--alpha", "-1"], "alpha must be >= 0"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--engine", "nope"], "invalid choice: 'nope'"),
    (["{d}/img.jpg", "--box", "200,1,250,50"], "box is empty or lies outside the 120x90 image"),
    (["{d}/img.jpg", "--polygon", "-90,-90 -10,-90 -10,-10"], "polygon lies outside the 120x90 image"),
    (["{d}/img.jpg", "--points", "130,40,+"], "positive point (130, 40) lies outside the 120x90 image"),
    (["{d}/tiny.png", "--box", "1,1,4,4"], "image is too small (5x5)"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--device", "cuda"], "CUDA is not available"),
    (["{d}/img.jpg", "--box", "1,1,50,50", "--dtype", "float16", "--device", "cpu"], "float16 is not supported on the CPU"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(files, tmp_path, args, message):
    out = tmp_path / "never.png"
    args = [a.format(d=files) for a in args]
    r = g4seg("refine", *args, "--label", "cat", "--out", out)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("outputs, message", [
    (["--out", "{f}/parent-is-a-file/m.png"], "cannot be written: {f}/parent-is-a-file is a file"),
    (["--out", "{t}/m.png", "--prob-out", "{f}/parent-is-a-file/p.npy"], "--prob-out {f}/parent-is-a-file/p.npy cannot be written"),
    (["--out", "{t}/m.png", "--prob-out", "{t}/m.png"], "must be a .npy file"),
    (["--out", "{t}"], "must be a .png file"),
    (["--out", "{t}/m.png", "--label", ""], "the class name must not be empty"),
    (["--out", "{t}/m.png", "--label", "cat " * 80], "is too long: its prompt is"),
])
def test_outputs_and_label_are_checked_before_the_model_loads(tiny_model_dir, files, tmp_path, outputs, message):
    """The tiny model says so when it loads: an error raised first is one line and nothing is written."""
    (files / "parent-is-a-file").write_text("a file")
    args = [a.format(f=files, t=tmp_path) for a in outputs]
    if "--label" not in args:
        args += ["--label", "cat"]
    r = g4seg("refine", files / "img.jpg", "--box", "30,20,80,60", "--model", tiny_model_dir, *args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert message.format(f=files, t=tmp_path) in lines[0]
    assert not list(tmp_path.iterdir())


def test_the_classic_engine_refines_a_real_photo_without_weights(weizmann_sample, tmp_path):
    """No Stable Diffusion weights here: `auto` falls back to the classic engine, said loudly. A
    rough 16-vertex outline of a real horse, with a loose box given corners reversed and reaching
    past the image, comes back closer to the hand-made mask than the outline itself."""
    from g4seg_core.evaluation.coarse import polygon_outlines
    from g4seg_core.evaluation.metrics import iou
    from g4seg_core.prompts import Prompt, rasterize_prompt

    image_path, truth = weizmann_sample
    (outline,) = polygon_outlines(truth, vertices=16)
    h, w = truth.shape
    drawn = iou(rasterize_prompt(Prompt(polygons=[outline]), h, w) > 0.5, truth)
    polygon = " ".join(f"{x:.1f},{y:.1f}" for x, y in outline)
    out = tmp_path / "horse.png"
    r = g4seg("refine", image_path, "--polygon", polygon, "--box", f"{w + 40},{h + 40},-40,-40", "--label", "horse",
              "--out", out)
    assert r.returncode == 0, r.stderr
    assert "classic engine" in r.stderr and "corners reversed" in r.stderr and "clipped to" in r.stderr
    refined = iou(np.asarray(Image.open(out)) > 0, truth)
    assert refined >= 0.78 and refined > drawn, (refined, drawn)


def test_classic_engine_named_explicitly_needs_no_model(files, tmp_path):
    out = tmp_path / "m.png"
    r = g4seg("refine", files / "img.jpg", "--box", "-20,20,80,60", "--engine", "grabcut", "--label", "cat",
              "--out", out, "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "note: box reaches past the 120x90 image" in r.stderr
    assert "the grabcut engine ignores them" in r.stderr
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (90, 120) and not mask[:, 80:].any() and not mask[:20].any()


def test_make_tiny_model_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = g4seg("make-tiny-model", tmp_path)
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_unknown_command_is_one_line():
    r = g4seg("frobnicate")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown command" in r.stderr
