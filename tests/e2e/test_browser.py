"""The annotator's screen: Label Studio 1.23.2 in a real Chromium, with the backend connected.

Every flow docs/annotators.md promises, done as an annotator does it (mouse and keyboard on
Label Studio's own page), with the shipped label_config.xml and the classic engine: a smart box
suggests a mask of the image's size inside the box; accepting it saves it and nothing refines it
again; a polygon saved comes back refined, one prediction, after a reload; a smart box around a
saved polygon refines that polygon; a negative click alone says why in the screen; a task opened
before it had anything to refine is still refined by Retrieve Predictions.

On failure each test leaves a screenshot and the page's HTML in <pytest tmp>/browser-failures/.
G4SEG_UPDATE_SCREENSHOTS=1 also writes the pictures docs/annotators.md shows into docs/img/.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

sys.path.insert(0, str(Path(__file__).parent))

from browser import Browser  # noqa: E402
from labelstudio import PASSWORD, REPO_ROOT, USERNAME  # noqa: E402

pytestmark = pytest.mark.e2e

H, W = 96, 128  # the test images (labelstudio.write_test_images)
DOC_IMAGES = REPO_ROOT / "docs" / "img"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(tmp_path_factory.mktemp("chromium"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def project(label_studio, start_backend, shipped_config_xml, test_images):
    """The shipped label config, eight images, the backend (classic engine) connected with basic auth."""
    backend = start_backend({"G4SEG_ENGINE": "classic"})
    images = test_images(8, seed=31)
    project = label_studio.create_project(shipped_config_xml, title="browser")
    tasks = label_studio.import_images(project, [path for path, _ in images])
    ml = label_studio.register_ml_backend(project, backend.url, basic_auth=backend.auth)
    return SimpleNamespace(id=project, tasks=tasks, masks=[mask for _, mask in images], ml=ml, backend=backend,
                           ls=label_studio, version=backend.get("/health").json()["model_version"], images=images)


@pytest.fixture
def screen(browser, label_studio, request, tmp_path_factory):
    screen = browser.screen(label_studio, USERNAME, PASSWORD)
    failed = request.session.testsfailed
    yield screen
    if request.session.testsfailed > failed:  # this test failed: keep what the screen showed
        folder = tmp_path_factory.getbasetemp() / "browser-failures"
        folder.mkdir(exist_ok=True)
        try:
            screen.page.screenshot(path=str(folder / f"{request.node.name}.png"))
            (folder / f"{request.node.name}.html").write_text(screen.page.content())
            print(f"\nscreenshot of the failure: {folder / request.node.name}.png")
        except Exception as exc:  # a crashed page: say so, the test's own failure is what matters
            print(f"\nno screenshot of the failure: {exc}")


def doc_picture(screen, name: str, element: str | None = None) -> None:
    """A picture for docs/annotators.md, when asked for (G4SEG_UPDATE_SCREENSHOTS=1)."""
    if os.environ.get("G4SEG_UPDATE_SCREENSHOTS") == "1":
        screen.screenshot(DOC_IMAGES / f"{name}.png", element=element or ".lsf-editor", width=760)


# ---------------------------------------------------------------- helpers


def bounds(mask: np.ndarray, grow: float = 0.0) -> tuple[float, float, float, float]:
    """The object's box as fractions of the image (x0, y0, x1, y1), grown by `grow` of its size."""
    rows, cols = np.nonzero(mask)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    dx, dy = grow * (x1 - x0), grow * (y1 - y0)
    return (max(0.0, (x0 - dx) / W), max(0.0, (y0 - dy) / H), min(1.0, (x1 + dx) / W), min(1.0, (y1 + dy) / H))


def octagon(mask: np.ndarray, grow: float = 0.12) -> list[tuple[float, float]]:
    """A rough outline a few clicks long, a little outside the object."""
    x0, y0, x1, y1 = bounds(mask, grow)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]


def brush_items(result: list[dict]) -> list[dict]:
    return [item for item in result if item["type"] in ("brush", "labels") and "rle" in item["value"]]


def decoded(item: dict) -> np.ndarray:
    return decode_rle(item["value"]["rle"]).reshape(item["original_height"], item["original_width"], 4)[:, :, 3] > 0


def the_mask(result: list[dict], label: str = "Cat") -> np.ndarray:
    """The one refined mask of a result in the shared-labels style (a Brush item and its Labels item)."""
    tool, labels = brush_items(result)
    assert tool["id"] == labels["id"] and tool["id"].startswith("g4seg-"), result
    assert (tool["from_name"], labels["from_name"], labels["value"]["labels"]) == ("mask", "label", [label])
    mask = decoded(tool)
    assert mask.shape == (H, W) and np.array_equal(mask, decoded(labels))
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")


# ---------------------------------------------------------------- the screen


def test_one_row_of_labels_for_every_tool_and_opening_a_task_stores_nothing(screen, project):
    task = project.tasks[0]
    screen.open_task(project.id, task)
    screen.auto_annotation(True)
    assert screen.page.locator(".lsf-labels").count() == 1  # one row of labels, not one per tool
    tools = screen.tool_names()
    assert {"brush-tool", "polygon-tool", "eraser"} <= set(tools)
    assert {"smart:rectangle-tool", "smart:key-point-tool"} <= set(tools)  # under Auto-Detect
    assert "rectangle-tool" not in tools and "smart:brush-tool" not in tools  # smart-only box; no smart brush
    screen.pick_label("Cat")
    screen.pick_smart_tool("rectangle-tool")
    assert screen.label_selected("Cat")  # picking a smart tool keeps the label
    doc_picture(screen, "annotators-screen")
    # Label Studio asked the backend when the task opened; nothing to refine, so nothing was stored
    # (an empty prediction would make "Retrieve Predictions" skip the task later).
    assert project.backend.metric("g4seg_requests_total", route="/predict", status="200") >= 1
    assert project.ls.predictions(task) == []


def test_a_smart_box_suggests_a_mask_inside_it_and_an_accepted_one_is_not_refined_again(screen, project):
    task, truth = project.tasks[1], project.masks[1]
    screen.open_task(project.id, task)
    screen.auto_annotation(True)
    screen.auto_accept(False)
    screen.pick_label("Cat")
    screen.pick_smart_tool("rectangle-tool")
    x0, y0, x1, y1 = bounds(truth, grow=0.15)
    answer = screen.interactive(lambda: screen.drag((x0, y0), (x1, y1)))
    assert answer["data"]["model_version"] == project.version
    mask = the_mask(answer["data"]["result"])
    inside = np.zeros((H, W), bool)
    inside[int(y0 * H):int(np.ceil(y1 * H)) + 1, int(x0 * W):int(np.ceil(x1 * W)) + 1] = True
    assert not (mask & ~inside).any() and iou(mask, truth) > 0.8
    assert 0.0 < answer["data"]["score"] <= 1.0
    assert screen.suggestions_pending()  # the tick and cross below the image
    doc_picture(screen, "annotators-smart-box")

    screen.accept_suggestions()
    screen.submit()
    (annotation,) = project.ls.call("GET", f"/api/tasks/{task}/annotations/")
    saved = annotation["result"]
    assert {item["type"] for item in saved} == {"brush", "labels"}  # the box itself is gone
    assert all(item["id"].startswith("g4seg-") and item["origin"] == "manual" for item in saved)
    # Saved with origin "manual", recognised by its id: the webhook and the task reopening refine nothing.
    refinements = project.backend.metric("g4seg_refine_seconds_count")
    screen.reload()
    time.sleep(2)  # the webhook is sent right after the save
    assert project.backend.metric("g4seg_refine_seconds_count") == refinements
    assert project.ls.predictions(task) == []


def test_a_polygon_saved_comes_back_refined_once_after_a_reload(screen, project):
    task, truth = project.tasks[2], project.masks[2]
    screen.open_task(project.id, task)
    screen.pick_label("Cat")
    screen.pick_tool("polygon-tool")
    screen.polygon(octagon(truth))
    screen.submit()
    # Saving sends the webhook; reopening the task asks too: one prediction either way.
    (prediction,) = wait_until(lambda: project.ls.predictions(task), 120, "no prediction appeared")
    time.sleep(2)
    assert len(project.ls.predictions(task)) == 1
    assert prediction["model_version"] == project.version and 0.0 < prediction["score"] <= 1.0
    assert iou(the_mask(prediction["result"]), truth) > 0.8

    screen.reload()
    (tab,) = [t for t in screen.tabs() if "%" in t]  # the prediction's tab: model and score
    assert f"{100 * prediction['score']:.2f}%" in tab
    screen.open_tab("%")
    screen.page.mouse.move(5, 5)  # the tab's tooltip away
    doc_picture(screen, "annotators-prediction")
    # To keep it: the tab's menu, "Duplicate Annotation": an annotation of one's own, ready to edit and submit.
    screen.page.locator(".lsf-annotation-button", has_text="%").first.locator(".lsf-annotation-button__trigger").click()
    screen.page.get_by_text("Duplicate Annotation", exact=True).click()
    screen.submit()
    copies = [a for a in project.ls.call("GET", f"/api/tasks/{task}/annotations/") if brush_items(a["result"])]
    (copy,) = copies
    assert iou(the_mask(copy["result"]), truth) > 0.8


def test_a_smart_box_around_a_saved_polygon_refines_that_polygon(screen, project):
    task, truth = project.tasks[3], project.masks[3]
    screen.open_task(project.id, task)
    screen.auto_annotation(True)
    screen.pick_label("Cat")
    screen.pick_tool("polygon-tool")
    screen.polygon(octagon(truth, grow=0.08))
    screen.submit()
    used = project.backend.metric("g4seg_interactive_total", kind="saved_shapes")
    screen.pick_label("Cat")  # saving clears the label
    screen.pick_smart_tool("rectangle-tool")
    x0, y0, x1, y1 = bounds(truth, grow=0.3)  # corners outside the polygon: a click on it would select it
    answer = screen.interactive(lambda: screen.drag((x0, y0), (x1, y1)))
    assert iou(the_mask(answer["data"]["result"]), truth) > 0.8
    assert project.backend.metric("g4seg_interactive_total", kind="saved_shapes") == used + 1


def test_a_negative_click_alone_says_why_in_the_screen(screen, project):
    task = project.tasks[4]
    screen.open_task(project.id, task)
    screen.auto_annotation(True)
    screen.auto_accept(False)
    screen.pick_label("Cat")
    screen.pick_smart_tool("key-point-tool")
    answer = screen.interactive(lambda: screen.click((0.08, 0.1), alt=True))
    (note_tool, note_label) = answer["data"]["result"]
    assert note_tool["id"].startswith("g4seg-n") and "nothing to refine" in note_tool["meta"]["text"][0]
    assert screen.suggestions_pending()
    screen.accept_suggestions()
    screen.pick_tool("move-tool")
    screen.click((0.08, 0.1))
    assert "nothing to refine" in screen.page.locator(".lsf-detailed-region__meta-text").first.inner_text()
    doc_picture(screen, "annotators-note")


def test_retrieve_predictions_refines_a_task_that_was_opened_before(screen, project, shipped_config_xml):
    ls, truth = project.ls, project.masks[5]
    other = ls.create_project(shipped_config_xml, title="browser retrieve")
    (task,) = ls.import_images(other, [project.images[5][0]])
    ls.register_ml_backend(other, project.backend.url, basic_auth=project.backend.auth, title="retrieve")
    ls.delete_webhooks(other)  # rough shapes saved below reach the backend only through Retrieve Predictions
    screen.open_task(other, task)
    assert ls.predictions(task) == []  # opened with nothing to refine: nothing stored

    # Rough shapes arrive later (an import, a script, an annotator while the backend was down).
    x0, y0, x1, y1 = bounds(truth, grow=0.1)
    points = [[100 * x, 100 * y] for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    common = {"id": "rough1", "to_name": "image", "original_width": W, "original_height": H, "image_rotation": 0}
    ls.create_annotation(task, [
        {**common, "from_name": "outline", "type": "polygon", "value": {"points": points, "closed": True}},
        {**common, "from_name": "label", "type": "labels", "value": {"points": points, "closed": True,
                                                                     "labels": ["Cat"]}}])
    screen.data_manager(other)
    screen.page.locator("input[type=checkbox]").first.check()  # the header box: all (one) tasks
    screen.page.get_by_role("button", name="Tasks Actions").click()
    screen.page.get_by_text("Retrieve Predictions", exact=True).click()
    with screen.page.expect_response(lambda r: "/api/dm/actions?" in r.url and r.request.method == "POST",
                                     timeout=120_000) as info:
        screen.page.locator(".lsf-modal button, [class*=modal] button").filter(has_text="OK").first.click()
    assert info.value.status == 200
    (prediction,) = ls.predictions(task)
    assert prediction["model_version"] == project.version
    assert iou(the_mask(prediction["result"]), truth) > 0.8
