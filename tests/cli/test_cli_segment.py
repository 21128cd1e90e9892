"""`g4seg segment`: one mask per class and an overlay from class names, on the tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from g4seg_core.cli import main


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray(img).save(path, quality=95)
    return path


def _read(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_writes_one_mask_per_class_and_an_overlay(tiny_model_dir, image_path, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["segment", str(image_path), "--labels", "cat, traffic light", "--model", str(tiny_model_dir),
               "--dtype", "float32", "--out", str(out)])
    assert rc == 0
    info = json.loads((out / "labels.json").read_text())
    assert info["labels"] == ["cat", "traffic light"]
    assert info["masks"] == {"cat": "cat.png", "traffic light": "traffic_light.png"}
    masks = {label: _read(out / name) for label, name in info["masks"].items()}
    for mask in masks.values():
        assert mask.shape == (40, 72) and set(np.unique(mask)) <= {0, 255}
    assert not ((masks["cat"] > 0) & (masks["traffic light"] > 0)).any()
    labels = _read(out / "labels.png")
    np.testing.assert_array_equal(labels == 1, masks["cat"] > 0)
    np.testing.assert_array_equal(labels == 2, masks["traffic light"] > 0)
    assert info["pixels"]["cat"] == int((labels == 1).sum())
    overlay = _read(out / "overlay.png")
    assert overlay.shape == (40, 72, 3)
    original = _read(image_path)
    painted = labels > 0
    if painted.any():  # class pixels are tinted, background pixels untouched
        assert not np.array_equal(overlay[painted], original[painted])
    np.testing.assert_array_equal(overlay[~painted], original[~painted])  # outlines lie on class pixels
    assert "overlay" in capsys.readouterr().out


def test_diffsegmenter_with_refinement(tiny_model_dir, image_path, tmp_path):
    out = tmp_path / "out"
    rc = main(["segment", str(image_path), "--labels", "dog", "--method", "diffsegmenter", "--refine",
               "--refine-setting", "iterations=1", "--refine-setting", "working_size=64",
               "--setting", "background_threshold=0.4", "--model", str(tiny_model_dir), "--dtype", "float32",
               "--out", str(out)])
    assert rc == 0
    info = json.loads((out / "labels.json").read_text())
    assert info["version"].startswith("diffsegmenter:") and "g4seg:" in info["version"]
    assert "background_threshold=0.4" in info["version"]
    assert _read(out / "dog.png").shape == (40, 72)


@pytest.mark.parametrize("argv, message", [
    (["--labels", ","], "at least one class"),
    (["--labels", "cat,cat"], "each class once"),
    (["--labels", "cat", "--setting", "gama=2"], "unknown iseg setting"),
    (["--labels", "cat", "--setting", "gamma"], "not KEY=VALUE"),
    (["--labels", "cat", "--refine-setting", "alpha=2"], "needs --refine"),
    (["--labels", "cat", "--engine", "grabcut"], "--engine chooses the refinement: it needs --refine"),
    (["--labels", "cat", "--refine", "--engine", "grabcut", "--refine-setting", "alpha=2"], "runs grabcut"),
    (["--labels", "dog," + "very " * 80 + "big cat"], "is too long: its prompt is"),
    (["--labels", "cat", "--device", "cuda:3"], "CUDA is not available"),
])
def test_bad_arguments_are_one_line_errors(tiny_model_dir, image_path, tmp_path, capsys, argv, message):
    rc = main(["segment", str(image_path), *argv, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_image_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "none.png"), "--labels", "cat", "--model", str(tiny_model_dir),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "image not found" in capsys.readouterr().err


def test_out_that_cannot_be_written_fails_before_loading(tiny_model_dir, image_path, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    rc = main(["segment", str(image_path), "--labels", "cat", "--model", str(tiny_model_dir),
               "--out", str(tmp_path / "file" / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "is a file, not a folder" in err, err


def test_text_only_masks_refined_by_a_classic_engine(tiny_model_dir, image_path, tmp_path):
    out = tmp_path / "out"
    rc = main(["segment", str(image_path), "--labels", "cat,dog", "--refine", "--engine", "grabcut",
               "--setting", "working_size=64", "--model", str(tiny_model_dir), "--dtype", "float32",
               "--out", str(out)])
    assert rc == 0
    info = json.loads((out / "labels.json").read_text())
    assert info["version"].startswith("iseg:") and "+ grabcut(" in info["version"]
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(["cat.png", "dog.png", "labels.json", "labels.png", "overlay.png"])
