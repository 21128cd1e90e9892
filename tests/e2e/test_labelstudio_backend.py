"""End to end: a real Label Studio 1.23.2 and the backend as a real `g4seg serve` process.

For each engine (the classic one, and G4Seg with the tiny random-weight model): a project from
tests/e2e/rows_config.xml (one *Labels tag per tool; the browser tests cover the shipped
label_config.xml), images imported, the backend registered with basic auth; then every way a rough
shape reaches the backend must come back as a brush mask at the image's size that overlaps the
rough shape, and predictions must land on the tasks.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from g4seg_core.prompts import rasterize_polygon

pytestmark = pytest.mark.e2e

H, W = 96, 128


def engine_env(name: str, request) -> dict[str, str]:
    if name == "classic":
        return {"G4SEG_ENGINE": "classic"}
    model = request.getfixturevalue("tiny_model_dir")
    return {"G4SEG_ENGINE": "g4seg", "G4SEG_MODEL": str(model), "G4SEG_DEVICE": "cpu", "G4SEG_DTYPE": "float32",
            "G4SEG_WORKING_SIZE": "64", "G4SEG_ITERATIONS": "1"}


@pytest.fixture(scope="module", params=["classic", "tiny"])
def setup(request, label_studio, start_backend, label_config_xml, test_images):
    backend = start_backend(engine_env(request.param, request))
    images = test_images(5, seed=len(request.param))
    project = label_studio.create_project(label_config_xml, title=f"e2e interactive {request.param}")
    tasks = label_studio.import_images(project, [path for path, _ in images])
    ml = label_studio.register_ml_backend(project, backend.url, basic_auth=backend.auth)
    version = backend.get("/health").json()["model_version"]
    return SimpleNamespace(engine=request.param, backend=backend, project=project, ml=ml, version=version,
                           tasks=tasks, masks=[mask for _, mask in images], ls=label_studio, images=images)


def rough_box(mask: np.ndarray, grow: int = 4):
    """A loose axis-aligned outline around the object, in pixels (x0, y0, x1, y1)."""
    rows, cols = np.nonzero(mask)
    return (max(0, cols.min() - grow), max(0, rows.min() - grow), min(W, cols.max() + 1 + grow),
            min(H, rows.max() + 1 + grow))


def polygon_region(box, label="Cat"):
    x0, y0, x1, y1 = box
    points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    return {"from_name": "outline", "to_name": "image", "type": "polygonlabels", "original_width": W,
            "original_height": H, "image_rotation": 0,
            "value": {"points": [[100 * x / W, 100 * y / H] for x, y in points], "closed": True,
                      "polygonlabels": [label]}}


def polygon_mask(box):
    x0, y0, x1, y1 = box
    return rasterize_polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], H, W)


def brush_mask(result_item) -> np.ndarray:
    h, w = result_item["original_height"], result_item["original_width"]
    return decode_rle(result_item["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def single_brush(result: list[dict], label="Cat") -> np.ndarray:
    brushes = [r for r in result if r["type"] == "brushlabels"]
    assert len(brushes) == 1, result
    assert brushes[0]["from_name"] == "mask" and brushes[0]["value"]["brushlabels"] == [label]
    assert 0.0 <= brushes[0]["score"] <= 1.0
    mask = brush_mask(brushes[0])
    assert mask.shape == (H, W)
    return mask


def interactive(setup, task_index: int, context: list[dict]) -> np.ndarray:
    answer = setup.ls.interactive(setup.ml, setup.tasks[task_index], context)
    assert "errors" not in answer and "data" in answer, answer
    assert answer["data"]["model_version"] == setup.version
    return single_brush(answer["data"]["result"])


def test_interactive_brush_stroke(setup):
    prior = np.zeros((H, W), bool)
    x0, y0, x1, y1 = rough_box(setup.masks[0], grow=2)
    prior[y0:y1, x0:x1] = True
    stroke = {"from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": W,
              "original_height": H, "image_rotation": 0, "origin": "manual",
              "value": {"format": "rle", "rle": mask2rle(np.where(prior, 255, 0).astype(np.uint8)),
                        "brushlabels": ["Cat"]}}
    refined = interactive(setup, 0, [stroke])
    assert (refined & prior).any()


def test_interactive_polygon(setup):
    box = rough_box(setup.masks[0])
    refined = interactive(setup, 0, [polygon_region(box)])
    assert (refined & polygon_mask(box)).any()


def test_smart_rectangle(setup):
    x0, y0, x1, y1 = rough_box(setup.masks[1])
    rect = {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": W,
            "original_height": H, "image_rotation": 0, "origin": "manual",
            "value": {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W,
                      "height": 100 * (y1 - y0) / H, "rotation": 0, "rectanglelabels": ["Cat"]}}
    refined = interactive(setup, 1, [rect])
    inside = polygon_mask((x0, y0, x1, y1))
    assert (refined & inside).any() and not (refined & ~inside).any()


def test_smart_keypoint_inside_a_saved_polygon_refines_the_polygon(setup):
    box = rough_box(setup.masks[2])
    setup.ls.create_draft(setup.tasks[2], [polygon_region(box)])
    x0, y0, x1, y1 = box
    click_x, click_y = x0 + 3, (y0 + y1) / 2  # near the outline's left edge
    click = {"from_name": "click", "to_name": "image", "type": "keypointlabels", "original_width": W,
             "original_height": H, "image_rotation": 0, "origin": "manual", "is_positive": True,
             "value": {"x": 100 * click_x / W, "y": 100 * click_y / H, "width": 0.5, "keypointlabels": ["Cat"]}}
    refined = interactive(setup, 2, [click])
    # A click alone reaches about 0.12 of the diagonal; the saved polygon reaches much further.
    yy, xx = np.mgrid[0:H, 0:W]
    far = np.hypot(xx + 0.5 - click_x, yy + 0.5 - click_y) > 0.15 * np.hypot(H, W)
    assert (refined & polygon_mask(box) & far).any()


def test_saving_an_annotation_writes_a_prediction_back_once(setup):
    task, box = setup.tasks[3], rough_box(setup.masks[3])
    annotation = setup.ls.create_annotation(task, [polygon_region(box)])
    marker = f"g4seg-a{annotation['id']}-"
    mine = lambda p: any(r["id"].startswith(marker) for r in p["result"])  # noqa: E731
    (prediction,) = setup.ls.wait_for_predictions(task, timeout=180, where=mine)
    assert prediction["model_version"] == setup.version
    assert (single_brush(prediction["result"]) & polygon_mask(box)).any()

    # The same annotation again (saved unchanged): its job finds the prediction there, and writes nothing.
    before = setup.backend.metric("g4seg_writebacks_total", outcome="exists")
    setup.ls.update_annotation(annotation["id"], [polygon_region(box)])
    deadline = time.monotonic() + 30
    while setup.backend.metric("g4seg_writebacks_total", outcome="exists") == before:
        assert time.monotonic() < deadline, "the second webhook's job never ran"
        time.sleep(0.3)
    assert len(setup.ls.predictions(task)) == 1


def test_retrieve_predictions_fills_every_task(setup, label_config_xml, test_images):
    ls = setup.ls
    images = test_images(3, seed=10 + len(setup.engine))
    project = ls.create_project(label_config_xml, title=f"e2e retrieve {setup.engine}")
    # Local-files tasks this time (/data/local-files/?d=...): the backend downloads them from Label Studio.
    tasks = ls.import_local_files(project, [path for path, _ in images], folder=f"retrieve-{setup.engine}")
    boxes = [rough_box(mask) for _, mask in images]
    for task, box in zip(tasks, boxes):  # rough shapes saved before the backend is connected
        ls.create_annotation(task, [polygon_region(box)])
    ls.register_ml_backend(project, setup.backend.url, basic_auth=setup.backend.auth, title="retrieve")
    ls.retrieve_predictions(project, tasks)
    for task, box in zip(tasks, boxes):
        (prediction,) = ls.predictions(task)
        assert prediction["model_version"] == setup.version
        assert (single_brush(prediction["result"]) & polygon_mask(box)).any()
