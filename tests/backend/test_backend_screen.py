"""What the annotator's screen sends and gets back (Label Studio 1.23.2, seen in a real browser):
both label config styles, regions the backend made itself, a box around a saved shape, no empty
prediction on task open, polygon output and the score. The engine is the real `identity` peer, so
masks are known exactly; the browser tests (tests/e2e/test_browser.py) run the same flows in
Chromium against a real Label Studio.
"""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image
from prometheus_sample import metric
from test_backend_app import SQUARE, H, W, files, iou, square_mask  # noqa: F401 (files: a fixture)

from backend.app import create_app
from backend.ls_format import (
    FormatError,
    mask_results,
    parse_label_config,
    parse_region,
    renumber_regions,
    rough_items,
    shape_items,
)
from backend.settings import Settings
from g4seg_core.engines.factory import create_engine
from g4seg_core.prompts import mask_polygons, rasterize_polygon

LABELS = '<Label value="Cat"/><Label value="Dog"/>'
# The shipped style: one row of labels shared by every tool.
SHARED = f"""<View>
  <Image name="photo" value="$picture"/>
  <Labels name="label" toName="photo">{LABELS}</Labels>
  <Brush name="mask" toName="photo"/>
  <Polygon name="outline" toName="photo"/>
  <Rectangle name="box" toName="photo" smart="true"/>
  <KeyPoint name="click" toName="photo" smart="true" smartOnly="true"/>
</View>"""
# The other style: one *Labels tag per tool.
ROWS = f"""<View>
  <Image name="photo" value="$picture"/>
  <BrushLabels name="mask" toName="photo">{LABELS}</BrushLabels>
  <PolygonLabels name="outline" toName="photo">{LABELS}</PolygonLabels>
  <RectangleLabels name="box" toName="photo" smart="true">{LABELS}</RectangleLabels>
</View>"""


def rle(mask):
    return mask2rle(np.where(mask, 255, 0).astype(np.uint8))




def shared_items(kind, value, label="Cat", region_id="Ru1LCWCZBH", **extra):
    """A region as Label Studio 1.23.2's screen saves it with a shared Labels tag (captured in
    Chromium): the tool's item and a "labels" item, one id, geometry in both."""
    tool = {"brush": "mask", "polygon": "outline", "rectangle": "box", "keypoint": "click"}[kind]
    common = {"original_width": W, "original_height": H, "image_rotation": 0, "id": region_id,
              "to_name": "photo", "origin": "manual", **extra}
    return [{**common, "value": dict(value), "from_name": tool, "type": kind},
            {**common, "value": {**value, "labels": [label]}, "from_name": "label", "type": "labels"}]


def rows_polygon(points=SQUARE, label="Cat", **extra):
    return {"type": "polygonlabels", "from_name": "outline", "to_name": "photo", "original_width": W,
            "original_height": H, "value": {"points": points, "closed": True, "polygonlabels": [label]}, **extra}


def decoded(item):
    return decode_rle(item["value"]["rle"]).reshape(item["original_height"], item["original_width"], 4)[:, :, 3] > 0


# ---------------------------------------------------------------- the label config, both styles


def test_a_shared_labels_row_labels_the_bare_brush_and_polygon_tags():
    config = parse_label_config(SHARED)
    (brush,), (polygon,) = config.brushes, config.polygons
    assert (brush.from_name, brush.labels, brush.labels_name, brush.tag) == ("mask", ("Cat", "Dog"), "label", "Brush")
    assert (polygon.from_name, polygon.tool, polygon.tag) == ("outline", "polygon", "Polygon")
    with pytest.raises(FormatError, match="not a label of the Labels tag 'label'"):
        brush.check_label("Horse")


def test_one_labels_tag_per_tool_still_reads_as_before():
    config = parse_label_config(ROWS)
    (brush,), (polygon,) = config.brushes, config.polygons
    assert (brush.from_name, brush.labels_name, brush.tag) == ("mask", None, "BrushLabels")
    assert (polygon.from_name, polygon.tag) == ("outline", "PolygonLabels")
    assert config.output_tool("brush") == "brush" and config.output_tool("polygon") == "polygon"
    only_polygons = parse_label_config(ROWS.replace(f'<BrushLabels name="mask" toName="photo">{LABELS}</BrushLabels>', ""))
    assert only_polygons.output_tool("brush") == "polygon"  # a project that has only polygons gets polygons


def test_shared_label_pairs_become_one_shape_each():
    stroke = square_mask()
    result = (shared_items("brush", {"format": "rle", "rle": rle(stroke)}, region_id="b1")
              + shared_items("polygon", {"points": SQUARE, "closed": True}, label="Dog", region_id="p1")
              + shared_items("keypoint", {"x": 80.0, "y": 80.0, "width": 0.5}, region_id="k1", is_positive=False))
    items = shape_items(result)
    assert [(i["type"], i["id"]) for i in items] == [("brush", "b1"), ("polygon", "p1"), ("keypoint", "k1")]
    brush, polygon, click = (parse_region(i, H, W, 10**8) for i in items)
    assert brush.label == "Cat" and np.array_equal(brush.mask, stroke)
    assert polygon.label == "Dog" and polygon.polygon[0] == (32.0, 24.0)
    assert click.kind == "keypoint" and not click.positive


def test_a_bare_tool_region_without_a_label_says_so():
    (item,) = shape_items([{"id": "x", "type": "polygon", "from_name": "outline", "to_name": "photo",
                            "value": {"points": SQUARE, "closed": True}}])
    with pytest.raises(FormatError, match="no label"):
        parse_region(item, H, W, 10**8)


def test_regions_the_backend_made_are_never_refined_again():
    ours = shared_items("brush", {"format": "rle", "rle": rle(square_mask())}, region_id="g4seg-r0123456789")
    accepted_then_touched_up = rows_polygon(id="g4seg-a7-abc-0", origin="manual")
    rough = rows_polygon(id="AbCdEf1234", origin="manual")
    assert rough_items(ours + [accepted_then_touched_up, rough]) == [rough]


# ---------------------------------------------------------------- results in the project's style


def test_masks_come_back_as_the_screen_saves_them_in_either_style():
    mask = square_mask()
    (single,) = mask_results(mask, "Dog", parse_label_config(ROWS).brushes[0], 0.5)
    assert single["type"] == "brushlabels" and single["value"]["brushlabels"] == ["Dog"]
    tool, labels = mask_results(mask, "Dog", parse_label_config(SHARED).brushes[0], 0.5)
    assert tool["id"] == labels["id"] and tool["id"].startswith("g4seg-")
    assert (tool["type"], tool["from_name"], labels["type"], labels["from_name"]) == ("brush", "mask", "labels", "label")
    assert labels["value"]["labels"] == ["Dog"] and "labels" not in tool["value"]
    assert np.array_equal(decoded(tool), mask) and np.array_equal(decoded(labels), mask)
    # The backend reads back what it wrote.
    (again,) = shape_items([tool, labels])
    assert np.array_equal(parse_region(again, H, W, 10**8).mask, mask)


def test_renumbering_keeps_the_two_items_of_a_region_together():
    result = mask_results(square_mask(), "Cat", parse_label_config(SHARED).brushes[0], 0.5) * 1
    result += mask_results(~square_mask(), "Dog", parse_label_config(SHARED).brushes[0], 0.5)
    ids = [item["id"] for item in renumber_regions(result, lambda n: f"g4seg-a1-d-{n}")]
    assert ids == ["g4seg-a1-d-0", "g4seg-a1-d-0", "g4seg-a1-d-1", "g4seg-a1-d-1"]


def ring_and_dot():
    """A part with two holes, a part inside one hole, and a separate small part."""
    mask = np.zeros((H, W), bool)
    mask[10:80, 10:90] = True
    mask[20:60, 25:50] = False
    mask[30:45, 60:80] = False
    mask[30:45, 32:42] = True  # an island in the first hole
    mask[85:92, 100:110] = True
    return mask


def test_polygons_keep_holes_and_every_part():
    mask = ring_and_dot()
    polygons = mask_polygons(mask)
    assert len(polygons) == 3
    filled = np.zeros_like(mask)
    for points in polygons:
        filled |= rasterize_polygon(points, H, W)
    assert iou(filled, mask) > 0.97
    assert not filled[50, 30] and not filled[40, 70]  # both holes stay open
    assert filled[37, 36] and filled[88, 105]  # the island and the small part are there


def test_polygon_output_in_percent_in_either_style():
    mask = ring_and_dot()
    rows = mask_results(mask, "Cat", parse_label_config(ROWS).polygons[0], 0.5)
    assert len(rows) == 3 and all(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["Cat"] for r in rows)
    filled = np.zeros_like(mask)
    for item in rows:
        points = item["value"]["points"]
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)
        filled |= rasterize_polygon([(x * W / 100, y * H / 100) for x, y in points], H, W)
    assert iou(filled, mask) > 0.97
    shared = mask_results(mask, "Cat", parse_label_config(SHARED).polygons[0], 0.5)
    assert [i["type"] for i in shared] == ["polygon", "labels"] * 3


def test_polygons_of_real_hand_made_masks(weizmann_dir):
    paths = sorted((weizmann_dir / "figure_ground").glob("*.jpg"))[:8]
    assert paths
    for path in paths:
        mask = np.asarray(Image.open(path).convert("L")) > 127
        polygons = mask_polygons(mask)
        filled = np.zeros_like(mask)
        for points in polygons:
            filled |= rasterize_polygon(points, *mask.shape)
        assert iou(filled, mask) > 0.97, path.name
        assert sum(len(p) for p in polygons) < 0.5 * (mask ^ np.roll(mask, 1, 0)).sum()  # simplified


# ---------------------------------------------------------------- through the server


@pytest.fixture
def make_client(files):
    apps = []

    def make(**settings):
        app = create_app(Settings(local_files_root=files, **settings), engine_loader=lambda: create_engine("identity"),
                         load_in_background=False)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["g4seg"].writeback.stop()


def task(annotations=(), drafts=()):
    return {"id": 1, "data": {"picture": "/data/local-files/?d=cat.png"}, "annotations": list(annotations),
            "drafts": list(drafts)}


def predict(client, context=None, tasks=None, config=SHARED):
    body = {"tasks": tasks or [task()], "project": "1.1700000000", "label_config": config,
            "params": {"login": None, "password": None, "context": None if context is None else {"result": context}}}
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["results"]


def test_a_smart_box_in_the_shared_style_comes_back_as_a_labelled_brush(make_client):
    box = shared_items("rectangle", {"x": 20.0, "y": 20.0, "width": 35.0, "height": 35.0, "rotation": 0})
    (prediction,) = predict(make_client(), box)
    tool, labels = prediction["result"]
    assert (tool["type"], labels["type"], labels["value"]["labels"]) == ("brush", "labels", ["Cat"])
    assert decoded(tool).shape == (H, W) and decoded(tool).any()


@pytest.mark.parametrize("saved_in", ["annotations", "drafts"])
def test_a_smart_box_around_a_saved_rough_shape_refines_that_shape(make_client, saved_in):
    saved = {"id": 3, "result": shared_items("polygon", {"points": SQUARE, "closed": True}, region_id="poly"),
             "updated_at": "2026-01-01T00:00:00Z"}
    box = shared_items("rectangle", {"x": 20.0, "y": 20.0, "width": 35.0, "height": 35.0, "rotation": 0}, region_id="bx")
    (prediction,) = predict(make_client(), box, tasks=[task(**{saved_in: [saved]})])
    # The identity engine returns its prior: the polygon (hard), not the box's uncertain fill.
    assert iou(decoded(prediction["result"][0]), square_mask()) > 0.9


def test_a_smart_box_around_nothing_saved_is_the_box_alone(make_client):
    saved = {"id": 3, "result": shared_items("polygon", {"points": [[70, 70], [90, 70], [90, 90]], "closed": True})}
    box = shared_items("rectangle", {"x": 20.0, "y": 20.0, "width": 35.0, "height": 35.0, "rotation": 0}, region_id="bx")
    (prediction,) = predict(make_client(), box, tasks=[task(annotations=[saved])])
    mask = decoded(prediction["result"][0])
    assert mask.any() and not mask[int(0.7 * H):, int(0.7 * W):].any()


def test_opening_a_task_stores_nothing_when_there_is_nothing_to_refine(make_client):
    client = make_client()
    assert predict(client) == [[]]
    # An accepted suggestion (our id, saved by Label Studio 1.23 with origin "manual") is not refined again.
    accepted = shared_items("brush", {"format": "rle", "rle": rle(square_mask())}, region_id="g4seg-r0123456789")
    assert predict(client, tasks=[task(annotations=[{"id": 5, "result": accepted}])]) == [[]]
    assert metric(client, "g4seg_refinements_total") == 0


def test_polygon_output_when_asked_for(make_client):
    rough = shared_items("polygon", {"points": SQUARE, "closed": True})
    for client, config in [(make_client(output="polygon"), SHARED), (make_client(output="polygon"), ROWS),
                           (make_client(), ROWS.replace(f'<BrushLabels name="mask" toName="photo">{LABELS}</BrushLabels>', ""))]:
        context = rough if config == SHARED else [rows_polygon()]
        (prediction,) = predict(client, context, config=config)
        polygons = [i for i in prediction["result"] if i["type"] in ("polygon", "polygonlabels")]
        assert len(polygons) == 1 and polygons[0]["id"].startswith("g4seg-")
        points = [(x * W / 100, y * H / 100) for x, y in polygons[0]["value"]["points"]]
        assert iou(rasterize_polygon(points, H, W), square_mask()) > 0.9


def test_output_setting_is_checked():
    assert Settings.from_env({"G4SEG_OUTPUT": "Polygon"}).output == "polygon"
    with pytest.raises(Exception, match="G4SEG_OUTPUT"):
        Settings.from_env({"G4SEG_OUTPUT": "coco"})
