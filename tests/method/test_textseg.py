"""Text-only segmenters (iSeg, DiffSegmenter) on the tiny random-weight tiny_model: shapes, labels, determinism.

The tiny tiny_model's masks mean nothing; these tests check the mechanism a user relies on: maps at the
image's size, a label map without overlaps, one UNet call per image for all its classes, the same
answer twice, and the settings actually reaching the computation.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from g4seg_core.engines.base import Engine
from g4seg_core.errors import SettingError, UserError
from g4seg_core.method.model import counting
from g4seg_core.method.textseg import (
    DiffSegmenterConfig,
    ISegConfig,
    TextSegmentation,
    TextSegmenter,
    attention_side,
    config_for,
    entropy_reduced,
    label_map,
    refine_segmentation,
)

LABELS = ["cat", "dog", "traffic_light"]


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)  # not square: padded to the working square
    img[10:40, 20:50] = (200, 30, 30)
    return img


@pytest.fixture(params=["iseg", "diffsegmenter"])
def segmenter(request, tiny_model):
    return TextSegmenter(tiny_model, config_for(request.param))


def test_maps_have_the_image_size_and_labels_never_overlap(segmenter, image):
    result = segmenter.segment(image, LABELS)
    assert result.labels == LABELS
    assert set(result.probabilities) == set(LABELS)
    for prob in result.probabilities.values():
        assert prob.shape == (60, 90) and prob.dtype == np.float32
        assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert result.label_map.shape == (60, 90)
    assert set(np.unique(result.label_map)) <= {0, 1, 2, 3}
    masks = result.masks
    coverage = sum(m.astype(int) for m in masks.values())
    assert coverage.max() <= 1  # no pixel in two classes
    # The label map is exactly the argmax of [background, classes].
    stack = np.stack([result.probabilities[k] for k in LABELS])
    np.testing.assert_array_equal(result.label_map, label_map(stack, result.background))


def test_deterministic(segmenter, image):
    a = segmenter.segment(image, LABELS)
    b = segmenter.segment(image, LABELS)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    for k in LABELS:
        np.testing.assert_array_equal(a.probabilities[k], b.probabilities[k])


def test_one_unet_call_per_image_for_all_classes(tiny_model, image):
    segmenter = TextSegmenter(tiny_model, ISegConfig())
    with counting(tiny_model) as calls:
        segmenter.segment(image, LABELS)
    assert calls["unet"] == 1 and calls["vae_encode"] == 1 and calls["text"] == 1
    # Classes too many for one 77-token prompt (the tiny tokenizer spells out characters) still
    # take one UNet call: the prompts go through as one batch.
    many = [f"class{i}" for i in range(14)]
    prompts = segmenter.prompts(many)
    assert len(prompts.texts) > 1
    with counting(tiny_model) as calls:
        result = segmenter.segment(image, many)
    assert calls["unet"] == 1
    assert len(result.probabilities) == 14


def test_token_positions_name_each_class_in_its_prompt(tiny_model):
    segmenter = TextSegmenter(tiny_model, ISegConfig())
    labels = ["dog", "hot dog", "cat"]  # "dog" also ends "hot dog": each must get its own tokens
    prompts = segmenter.prompts(labels)
    tok = tiny_model.tokenizer
    for label, row, positions in zip(labels, prompts.rows, prompts.positions):
        ids = tok(prompts.texts[row]).input_ids
        assert tok.decode([ids[i] for i in positions]).replace(" ", "") == label.replace(" ", "")
    assert prompts.positions[0] != prompts.positions[1][-len(prompts.positions[0]):]


def test_gamma_changes_the_maps_and_only_through_the_class_tokens(tiny_model, image):
    base = TextSegmenter(tiny_model, ISegConfig(gamma=1.0)).segment(image, LABELS)
    enhanced = TextSegmenter(tiny_model, ISegConfig(gamma=1.6)).segment(image, LABELS)
    assert any(not np.allclose(base.probabilities[k], enhanced.probabilities[k]) for k in LABELS)


def test_iteration_count_and_entropy_step_reach_the_result(tiny_model, image):
    a = TextSegmenter(tiny_model, ISegConfig(iterations=0)).segment(image, LABELS)
    b = TextSegmenter(tiny_model, ISegConfig(iterations=10)).segment(image, LABELS)
    assert any(not np.allclose(a.probabilities[k], b.probabilities[k]) for k in LABELS)


def test_diffsegmenter_background_threshold(tiny_model, image):
    low = TextSegmenter(tiny_model, DiffSegmenterConfig(background_threshold=0.05)).segment(image, LABELS)
    high = TextSegmenter(tiny_model, DiffSegmenterConfig(background_threshold=0.95)).segment(image, LABELS)
    assert (low.label_map == 0).sum() < (high.label_map == 0).sum()
    best = np.stack([high.probabilities[k] for k in LABELS]).max(axis=0)
    assert ((high.label_map > 0) == (best > 0.95)).all()


def test_label_map_pure_function():
    probs = np.array([[[0.9, 0.2, 0.4]], [[0.1, 0.8, 0.4]]], np.float32)  # 2 classes, 1x3 image
    np.testing.assert_array_equal(label_map(probs, 0.5), [[1, 2, 0]])
    np.testing.assert_array_equal(label_map(probs, np.array([[0.95, 0.0, 0.3]])), [[0, 2, 1]])
    np.testing.assert_array_equal(label_map(probs, 0.9), [[0, 0, 0]])  # ties go to background
    with pytest.raises(ValueError):
        label_map(probs[0], 0.5)


def test_entropy_step_sharpens_rows_and_keeps_them_stochastic():
    torch.manual_seed(0)
    s = torch.softmax(torch.randn(64, 64) * 3, dim=-1)
    sharp = entropy_reduced(s, 0.01)
    assert torch.allclose(sharp.sum(-1), torch.ones(64))
    assert (sharp >= 0).all()

    def entropy(p):
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    assert (entropy(sharp) <= entropy(s) + 1e-6).all()
    assert (entropy(sharp) < entropy(s)).any()
    assert torch.equal(entropy_reduced(s, 0.0), s)
    # The strongest key of every row survives.
    assert torch.equal(sharp.argmax(-1), s.argmax(-1))


def test_resolutions_are_named_for_a_512_input():
    assert [attention_side(r, 64) for r in (8, 16, 32, 64)] == [8, 16, 32, 64]
    assert [attention_side(r, 16) for r in (8, 16, 32, 64)] == [2, 4, 8, 16]
    assert attention_side(8, 4) is None


def test_bad_input_is_a_clear_error(tiny_model, image):
    segmenter = TextSegmenter(tiny_model, ISegConfig())
    with pytest.raises(UserError, match="at least one"):
        segmenter.segment(image, [])
    with pytest.raises(UserError, match="unique"):
        segmenter.segment(image, ["cat", "cat"])
    with pytest.raises(UserError, match="too long"):
        segmenter.segment(image, ["x" * 100])
    with pytest.raises(SettingError, match="multiple of"):
        TextSegmenter(tiny_model, ISegConfig(working_size=100))
    with pytest.raises(SettingError, match="unknown text-only method"):
        config_for("sam")
    with pytest.raises(SettingError, match="unknown iseg setting"):
        config_for("iseg", {"alpha": "1"})
    assert config_for("iseg", {"gamma": "1.2", "cross_weights": "16:1"}) == ISegConfig(gamma=1.2, cross_weights=((16, 1.0),))


def test_version_names_method_model_and_settings(tiny_model):
    a = TextSegmenter(tiny_model, ISegConfig()).version
    b = TextSegmenter(tiny_model, ISegConfig(gamma=1.2)).version
    c = TextSegmenter(tiny_model, DiffSegmenterConfig()).version
    assert a.startswith("iseg:") and c.startswith("diffsegmenter:") and "TINY-RANDOM" in a
    assert len({a, b, c}) == 3


class _ShrinkEngine(Engine):
    """A stand-in refiner: erodes each prior by one pixel (probabilities 0/1)."""

    name = "shrink"

    def refine_probability(self, image, prior, label):
        import cv2

        return cv2.erode((prior > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)


def test_refinement_keeps_labels_apart_and_only_refines_present_classes(tiny_model, image):
    seg = TextSegmenter(tiny_model, ISegConfig()).segment(image, LABELS)
    refined = refine_segmentation(_ShrinkEngine(), image, seg)
    assert isinstance(refined, TextSegmentation) and refined.refined
    for i, k in enumerate(LABELS):
        before, after = seg.label_map == i + 1, refined.label_map == i + 1
        assert not (after & ~before).any()  # the stand-in only shrinks
        if before.sum() > 20:
            assert after.sum() < before.sum()
    assert sum(m.astype(int) for m in refined.masks.values()).max() <= 1


def test_refinement_with_g4seg_on_the_same_model(tiny_model, image):
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.refiner import G4SegRefiner

    seg = TextSegmenter(tiny_model, ISegConfig()).segment(image, ["cat", "dog"])
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=1, working_size=64, roi=False))
    refined = refine_segmentation(refiner, image, seg)
    assert refined.label_map.shape == image.shape[:2]
    assert sum(m.astype(int) for m in refined.masks.values()).max() <= 1
    assert refiner.model is tiny_model  # one loaded tiny_model serves both


def test_refiners_get_the_soft_maps_whose_decision_is_the_label_map(tiny_model, image):
    seg = TextSegmenter(tiny_model, ISegConfig()).segment(image, LABELS)
    seen = {}

    class Recording(Engine):
        def refine_probability(self, image, prior, label):
            seen[label] = prior.copy()
            return prior

    refined = refine_segmentation(Recording(), image, seg)
    present = [k for i, k in enumerate(LABELS) if (seg.label_map == i + 1).any()]
    assert set(seen) == set(present)
    for label in present:
        prior = seen[label]
        assert ((prior > 0.5) == (seg.label_map == LABELS.index(label) + 1)).all()
        assert ((prior > 0.01) & (prior < 0.99)).mean() > 0.05  # soft, not a 0/1 mask
    assert (refined.label_map == seg.label_map).all()  # the identity refinement keeps the decision


@pytest.mark.parametrize("labels", [LABELS, [f"class{i}" for i in range(14)]])  # one prompt row; several
def test_several_images_in_one_unet_call_give_each_images_own_result(tiny_model, image, labels):
    segmenter = TextSegmenter(tiny_model, ISegConfig())
    other = np.ascontiguousarray(np.flipud(image)[:80])  # another size too
    with counting(tiny_model) as calls:
        batch = segmenter.segment_many([image, other], labels)
    assert calls["unet"] == 1 and calls["vae_encode"] == 1 and calls["text"] == 1
    for one, many in zip((segmenter.segment(image, labels), segmenter.segment(other, labels)), batch):
        assert many.label_map.shape == one.label_map.shape
        for k in labels:
            np.testing.assert_allclose(many.probabilities[k], one.probabilities[k], atol=1e-4)
