"""Label Studio JSON <-> masks and prompts (backend/ls_format.py): pure functions, no server."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from backend.ls_format import (
    FormatError,
    brush_result,
    decode_brush_rle,
    enclosing_region,
    items_digest,
    parse_label_config,
    parse_region,
    prompt_from_regions,
    rough_items,
)
from g4seg_core.prompts import rasterize_prompt

H, W = 48, 64
CONFIG = """<View>
  <Image name="photo" value="$picture"/>
  <BrushLabels name="refined" toName="photo"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <PolygonLabels name="rough" toName="photo"><Label value="Cat"/><Label value="Dog"/></PolygonLabels>
</View>"""


def polygon_item(points, label="Cat", **extra):
    return {"type": "polygonlabels", "from_name": "rough", "to_name": "photo",
            "value": {"points": points, "polygonlabels": [label]}, **extra}


def brush_item(mask, label="Cat", **extra):
    h, w = mask.shape
    return {"type": "brushlabels", "from_name": "refined", "to_name": "photo", "original_width": w,
            "original_height": h, "value": {"format": "rle", "rle": mask2rle(np.where(mask, 255, 0).astype(np.uint8)),
                                            "brushlabels": [label]}, **extra}


def test_label_config_names_come_from_the_project():
    config = parse_label_config(CONFIG)
    (brush,) = config.brushes
    assert (brush.from_name, brush.to_name, brush.labels, brush.data_key) == ("refined", "photo", ("Cat", "Dog"), "picture")
    with pytest.raises(FormatError, match="not a label"):
        brush.check_label("Horse")


@pytest.mark.parametrize("xml, reason", [
    ("", "no label config"),
    ("<View><Image name='i' value='$i'/>", "cannot be parsed"),
    ("<View><Image name='i' value='$i'/><RectangleLabels name='p' toName='i'><Label value='A'/></RectangleLabels></View>",
     "no brush or polygon tag"),
    ("<View><Image name='i' value='$i'/><Brush name='b' toName='i'/></View>", "no brush or polygon tag"),
])
def test_label_config_without_a_brush_tag_is_refused_with_a_reason(xml, reason):
    with pytest.raises(FormatError, match=reason):
        parse_label_config(xml)


def test_brush_result_round_trips_through_label_studio_rle():
    mask = np.zeros((H, W), bool)
    mask[10:30, 5:40] = True
    result = brush_result(mask, "Dog", parse_label_config(CONFIG).brushes[0], 0.87)
    assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["Dog"]
    assert (result["original_width"], result["original_height"]) == (W, H)
    assert result["from_name"] == "refined" and result["to_name"] == "photo" and result["score"] == 0.87
    decoded = decode_rle(result["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0
    assert np.array_equal(decoded, mask)
    assert np.array_equal(decode_brush_rle(result["value"]["rle"], H, W), mask)


def test_polygon_percentages_become_pixels_of_the_actual_image():
    region = parse_region(polygon_item([[25, 25], [75, 25], [75, 75], [25, 75]]), H, W, 10**8)
    assert region.polygon == [(16.0, 12.0), (48.0, 12.0), (48.0, 36.0), (16.0, 36.0)]
    prob = rasterize_prompt(prompt_from_regions([region], H, W), H, W)
    rows, cols = np.nonzero(prob)
    assert (rows.min(), cols.min()) == (12, 16) and 35 <= rows.max() <= 36 and 47 <= cols.max() <= 48


def test_a_brush_drawn_at_another_size_is_scaled_onto_the_image():
    small = np.zeros((24, 32), bool)
    small[6:18, 8:24] = True
    region = parse_region(brush_item(small), H, W, 10**8)
    assert region.mask.shape == (H, W)
    assert region.mask[12:36, 16:48].all() and region.mask.sum() == 24 * 32


def test_rotated_rectangle_prior_is_the_rotated_boxes_bounds():
    item = {"type": "rectanglelabels", "to_name": "photo",
            "value": {"x": 50, "y": 25, "width": 25, "height": 25, "rotation": 90, "rectanglelabels": ["Cat"]}}
    region = parse_region(item, H, W, 10**8)
    # 16x12 px box rotated 90 degrees clockwise about its top-left corner (32, 12).
    assert region.box == pytest.approx((32 - 12, 12, 32, 12 + 16))


def test_keypoint_is_a_positive_or_negative_click():
    item = {"type": "keypointlabels", "to_name": "photo", "is_positive": False,
            "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["Cat"]}}
    region = parse_region(item, H, W, 10**8)
    assert region.point == (32.0, 24.0) and region.positive is False


@pytest.mark.parametrize("item, reason", [
    (polygon_item([[10, 10], [50, 50]]), "at least 3 points"),
    (polygon_item([[10, 10], [20, 20], [30, 30]]), "degenerate"),
    (polygon_item([[10, "x"], [20, 20], [30, 10]]), "malformed"),
    (polygon_item([[10, 10], [20, 20], [30, 10]], label=None) | {"value": {"points": [[1, 1]]}}, "no label"),
    ({"type": "rectanglelabels", "to_name": "photo", "value": {"x": 10, "y": 10, "width": 0, "height": 5,
                                                               "rectanglelabels": ["Cat"]}}, "empty"),
    ({"type": "brushlabels", "to_name": "photo", "original_width": W, "original_height": H,
      "value": {"format": "rle", "rle": [0, 0, 0, 4, 1, 2], "brushlabels": ["Cat"]}}, "pixels"),
    ({"type": "brushlabels", "to_name": "photo", "original_width": W, "original_height": H,
      "value": {"format": "rle", "rle": [0, 0, 48, 0, 300, 1], "brushlabels": ["Cat"]}}, "0..255"),
    ({"type": "brushlabels", "to_name": "photo", "original_width": 10**5, "original_height": 10**5,
      "value": {"format": "rle", "rle": [0, 0, 48, 0, 1, 1], "brushlabels": ["Cat"]}}, "over the pixel limit"),
    (brush_item(np.zeros((H, W), bool)), "empty"),
    ({"type": "polygonlabels", "value": {"points": [], "polygonlabels": ["Cat"]}}, "to_name"),
])
def test_malformed_regions_are_refused_with_a_reason(item, reason):
    with pytest.raises(FormatError, match=reason):
        parse_region(item, H, W, 10**6)


def test_a_corrupt_rle_body_is_refused_not_crashed_on():
    mask = np.zeros((H, W), bool)
    mask[5:20, 5:20] = True
    rle = brush_item(mask)["value"]["rle"]
    with pytest.raises(FormatError, match="corrupt"):
        decode_brush_rle(rle[: len(rle) // 2], H, W)


def test_several_boxes_of_one_label_bound_its_polygon():
    regions = [parse_region(polygon_item([[0, 0], [100, 0], [100, 100], [0, 100]]), H, W, 10**8)]
    for x in (0, 75):
        regions.append(parse_region({"type": "rectanglelabels", "to_name": "photo", "value": {
            "x": x, "y": 0, "width": 25, "height": 100, "rectanglelabels": ["Cat"]}}, H, W, 10**8))
    prob = rasterize_prompt(prompt_from_regions(regions, H, W), H, W)
    assert prob[:, :16].all() and prob[:, 48:].all() and not prob[:, 16:48].any()


def test_enclosing_region_prefers_the_same_label_then_the_smallest():
    big = parse_region(polygon_item([[0, 0], [100, 0], [100, 100], [0, 100]], "Dog"), H, W, 10**8)
    small = parse_region(polygon_item([[40, 40], [60, 40], [60, 60], [40, 60]], "Dog"), H, W, 10**8)
    cat = parse_region(polygon_item([[0, 0], [100, 0], [100, 100], [0, 100]], "Cat"), H, W, 10**8)
    assert enclosing_region([big, small, cat], 32, 24, "Dog") is small
    assert enclosing_region([big, small, cat], 32, 24, "Cat") is cat
    assert enclosing_region([big, small, cat], 5, 5, "Horse") in (big, cat)
    assert enclosing_region([small], 5, 5, "Dog") is None


def test_rough_items_skip_unchanged_model_regions_and_non_shapes():
    keep = polygon_item([[0, 0], [50, 0], [50, 50]])
    edited = polygon_item([[0, 0], [50, 0], [50, 50]], origin="prediction-changed")
    model = polygon_item([[0, 0], [50, 0], [50, 50]], origin="prediction")
    choice = {"type": "choices", "value": {"choices": ["x"]}}
    assert rough_items([keep, edited, model, choice]) == [keep, edited]
    with pytest.raises(FormatError):
        rough_items("not a list")


def test_shapes_digest_ignores_region_ids_but_not_geometry():
    a = polygon_item([[0, 0], [50, 0], [50, 50]], id="one")
    b = polygon_item([[0, 0], [50, 0], [50, 50]], id="two")
    c = polygon_item([[0, 0], [50, 0], [50, 60]], id="one")
    assert items_digest([a]) == items_digest([b]) != items_digest([c])
