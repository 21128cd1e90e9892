"""`g4seg bench` end to end on the synthetic set: classic engines, a base method's masks, the tiny model."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from g4seg_core.cli import main
from g4seg_core.evaluation import coarse, metrics
from g4seg_core.evaluation.data import SyntheticDataset

METHODS = ["identity", "densecrf", "grabcut", "pamr", "classic"]
KINDS = "polygon:8,dilate:6,erode:3,jitter:3,lowres:8,box,points:2,scribble"
KIND_NAMES = ["polygon:8", "dilate:6", "erode:3", "jitter:3", "lowres:8", "box", "points:2", "scribble:4"]
SCORES = ("iou", "biou", "mba", "bf", "miou")


def bench(*args):
    return main(["bench", *args, "--no-progress"])


def row(rows, method, kind):
    return next(r for r in rows if r["method"] == method and r["coarse"] == kind)


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    status = bench("--data", "synthetic:3:0:64", "--coarse", KINDS, "--methods", ",".join(METHODS),
                   "--examples", "2", "--out", str(out))
    return status, out


def test_bench_writes_every_row_report_and_examples(classic_run):
    status, out = classic_run
    assert status == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["coarse"], r["method"]) for r in rows] == [(k, m) for k in KIND_NAMES for m in METHODS]
    objects = sum(len(SyntheticDataset(3, 0, 64).load(i).objects) for i in range(3))
    for r in rows:
        for key in SCORES:
            assert 0.0 <= r[key] <= 1.0, (r["method"], r["coarse"], key)
        assert r["n"] == objects and r["images"] == 3 and r["seconds_per_image"] >= 0
    report = (out / "report.md").read_text()
    for r in rows:
        assert f"| {r['coarse']} | {r['method']} | {100 * r['iou']:.1f} |" in report
    grid = np.asarray(Image.open(out / "examples.png"))
    # Columns: image, ground truth, coarse, 5 methods, 160 px each; rows: an 18 px header, then
    # 2 images x 8 kinds, each the 64x80 image scaled to 128x160 plus a 1 px separator.
    assert grid.shape == (18 + 129 * 2 * len(KIND_NAMES), 160 * (3 + len(METHODS)), 3)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


def test_identity_row_scores_the_coarse_input_itself(classic_run):
    # Recomputed independently: dilate every exact mask by 6 px and score it.
    _, out = classic_run
    rows = json.loads((out / "results.json").read_text())
    data = SyntheticDataset(3, 0, 64)
    ious, bfs = [], []
    for i in range(3):
        for o in data.load(i).objects:
            ious.append(metrics.iou(coarse.dilate(o.mask, 6), o.mask))
            bfs.append(metrics.boundary_f(coarse.dilate(o.mask, 6), o.mask))
    r = row(rows, "identity", "dilate:6")
    assert r["iou"] == pytest.approx(np.mean(ious)) and r["bf"] == pytest.approx(np.mean(bfs))


def test_classic_engine_improves_a_spilled_brush_mask(classic_run):
    _, out = classic_run
    rows = json.loads((out / "results.json").read_text())
    assert row(rows, "classic", "dilate:6")["iou"] > row(rows, "identity", "dilate:6")["iou"] + 0.1


def test_bench_on_a_base_methods_masks(tmp_path):
    # The base method is right about every object but also claims a class that is not there:
    # per-object IoU stays perfect, mIoU counts the false positive.
    data = SyntheticDataset(2, 5, 48)
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(2):
        s = data.load(i)
        pred = s.semantic.copy()
        if i == 0:
            absent = next(c for c in range(1, 5) if not (s.semantic == c).any())
            pred[:4, :4] = absent
        Image.fromarray(pred.astype(np.uint8), mode="L").save(preds / f"{s.id}.png")
    out = tmp_path / "out"
    assert bench("--data", "synthetic:2:5:48", "--coarse", f"pred:{preds}", "--methods", "identity",
                 "--examples", "0", "--out", str(out)) == 0
    (r,) = json.loads((out / "results.json").read_text())
    assert r["coarse"] == "pred" and r["iou"] == 1.0 and r["n"] == sum(len(data.load(i).objects) for i in range(2))
    assert r["miou"] < 1.0
    assert not (out / "examples.png").exists()


def test_limit_uses_the_first_images(tmp_path):
    assert bench("--data", "synthetic:5:0:40", "--coarse", "box", "--methods", "identity", "--limit", "2",
                 "--out", str(tmp_path)) == 0
    (r,) = json.loads((tmp_path / "results.json").read_text())
    assert r["images"] == 2


@pytest.mark.parametrize("args, message", [
    (["--methods", "identity,sam"], "unknown method 'sam'"),
    (["--coarse", "blur:3"], "unknown coarse kind"),
    (["--data", "imagenet:/x"], "unknown data kind"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--coarse", "pred:/nonexistent/preds"], "folder not found"),
])
def test_bench_user_errors_are_one_line(tmp_path, capsys, args, message):
    base = {"--data": "synthetic:1:0:40", "--coarse": "box", "--methods": "identity", "--out": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    status = bench(*[x for kv in base.items() for x in kv])
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_bench_runs_g4seg_on_the_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert bench("--data", "synthetic:1:0:48", "--coarse", "dilate:4", "--methods", "identity,g4seg",
                 "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--out", str(out)) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["identity", "g4seg"]
    g4 = rows[1]
    assert g4["version"].startswith("g4seg") and g4["n"] == len(SyntheticDataset(1, 0, 48).load(0).objects)
    assert all(math.isfinite(g4[k]) for k in SCORES) and g4["seconds_per_image"] > 0
    assert (out / "examples.png").is_file()


def test_bench_on_voc_ignores_the_255_band(tmp_path):
    # A person with VOC's 255 band around it; the base method also claims the band. The band is
    # not scored, so the base method's mask is perfect by IoU and mIoU.
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(voc / "JPEGImages" / "a.jpg")
    labels = np.zeros((40, 50), np.uint8)
    labels[9:31, 9:31] = 255
    labels[10:30, 10:30] = 15
    label_png = Image.fromarray(labels, mode="P")
    label_png.putpalette([v for c in range(256) for v in (c, c, c)])
    label_png.save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(np.where(labels > 0, 15, 0).astype(np.uint8), mode="L").save(preds / "a.png")
    out = tmp_path / "out"
    assert bench("--data", f"voc:{voc}", "--coarse", f"pred:{preds},dilate:3", "--methods", "identity",
                 "--out", str(out)) == 0
    pred_row, dilate_row = json.loads((out / "results.json").read_text())
    assert pred_row["iou"] == 1.0 and pred_row["miou"] == 1.0 and pred_row["n"] == 1
    # dilate:3 (a Euclidean disc) grows the 20 x 20 person to 26 x 26 less 5 pixels at each corner
    # (offsets (1..3, 1..3) beyond distance 3); the 84 band pixels inside it are not scored.
    assert dilate_row["iou"] == pytest.approx(400 / (26 * 26 - 4 * 5 - (22 * 22 - 20 * 20)))
