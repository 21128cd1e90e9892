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
    return d


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
    (["{d}/img.jpg", "--box", "1,1,50,50", "--alpha", "-1"], "alpha must be >= 0"),
])
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(files, tmp_path, args, message):
    out = tmp_path / "never.png"
    args = [a.format(d=files) for a in args]
    r = g4seg("refine", *args, "--label", "cat", "--out", out)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_make_tiny_model_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = g4seg("make-tiny-model", tmp_path)
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_unknown_command_is_one_line():
    r = g4seg("frobnicate")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown command" in r.stderr
