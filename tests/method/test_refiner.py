"""The refiner's mechanism on the tiny tiny_model: what alpha, the confusion area, seeds and caches promise."""
import numpy as np
import pytest

from g4seg_core.errors import SettingError
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.model import counting
from g4seg_core.method.refiner import G4SegRefiner
from g4seg_core.prompts import Prompt


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    img = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
    img[25:75, 35:95] += 150  # a bright object on a dark background
    return img


@pytest.fixture(scope="module")
def coarse():
    m = np.zeros((96, 128), bool)
    m[30:70, 40:90] = True
    return m


def test_alpha_zero_leaves_the_coarse_mask_unchanged(tiny_model, image, coarse):
    # The edge-aware final step is a separate step (it snaps boundaries to image edges): off here.
    refiner = G4SegRefiner(tiny_model, RefinerConfig(alpha=0.0, iterations=3, edge_aware=False))
    trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    assert (trace.mask == coarse).all()
    # The generations are identical, every target agrees with the mask: nothing can change, stop.
    assert trace.iterations == 1 and trace.passes == 1


def test_alpha_zero_generations_are_identical(tiny_model, image, coarse):
    # The injected pass with alpha 0 is bit-identical to the reference pass.
    import torch

    refiner = G4SegRefiner(tiny_model, RefinerConfig(alpha=0.0, discrepancy_space="latent"))
    refiner.refine(image, Prompt(mask=coarse), "cat")
    (ref,) = refiner._references._items.values()
    signal = refiner.make_signal(image, [refiner.item(coarse.astype(np.float32), "cat")])
    masks = torch.ones(1, 128, 128, dtype=torch.bool)
    assert torch.equal(signal(masks, torch.tensor([True])), torch.zeros(1, 16, 16))
    refiner.config = RefinerConfig(alpha=1.0, discrepancy_space="latent")
    assert signal(masks, torch.tensor([True])).max() > 0


@pytest.mark.parametrize("space", ["rgb", "latent", "features"])
def test_update_touches_only_the_confusion_area(tiny_model, image, coarse, space):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(alpha=2.0, iterations=2, discrepancy_space=space, early_stop=False))
    trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    changed = trace.probability != coarse.astype(np.float32)
    assert changed.any(), "alpha > 0 should move some probabilities"
    assert not (changed & ~trace.confusion).any()
    assert trace.confusion.sum() < coarse.size / 2  # a band around the boundary, not the image


def test_same_seed_same_output_and_seed_matters(tiny_model, image, coarse):
    a = G4SegRefiner(tiny_model, RefinerConfig(seed=3)).refine(image, Prompt(mask=coarse), "cat")
    b = G4SegRefiner(tiny_model, RefinerConfig(seed=3)).refine(image, Prompt(mask=coarse), "cat")
    c = G4SegRefiner(tiny_model, RefinerConfig(seed=4)).refine(image, Prompt(mask=coarse), "cat")
    assert np.array_equal(a.probability, b.probability)
    assert not np.array_equal(a.probability, c.probability)


def test_second_refine_on_the_same_image_reuses_the_cache(tiny_model, image, coarse):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=2, early_stop=False))
    refiner.set_image(image, "image-1")
    with counting(tiny_model) as cold:
        trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    assert cold["vae_encode"] == 1 and cold["unet"] == 1 + trace.passes and cold["text"] == 1 and trace.passes >= 1
    nudged = coarse.copy()
    nudged[30:70, 88:92] = True  # a small edit: same region of interest
    with counting(tiny_model) as warm:
        trace = refiner.refine_trace(image, Prompt(mask=nudged), "cat")
    assert warm["vae_encode"] == 0 and warm["text"] == 0
    assert warm["unet"] == trace.passes  # only the mask-conditioned passes
    with counting(tiny_model) as other_class:
        trace = refiner.refine_trace(image, Prompt(mask=coarse), "dog")
    assert other_class["vae_encode"] == 0 and other_class["unet"] == 1 + trace.passes  # new reference pass


def test_the_named_image_is_what_the_cache_trusts(tiny_model, image, coarse):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=1))
    refiner.set_image(image, "photo.jpg")
    refiner.refine(image, Prompt(mask=coarse), "cat")
    copy = image.copy()  # the same pixels in another array, not named: a new image, encoded again
    with counting(tiny_model) as calls:
        refiner.refine(copy, Prompt(mask=coarse), "cat")
    assert calls["vae_encode"] == 1
    refiner.set_image(image, "photo.jpg")  # named again: the cache under that name is used
    with counting(tiny_model) as calls:
        trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    assert calls["vae_encode"] == 0 and calls["unet"] == trace.passes  # no reference pass either
    refiner.set_image(image, "another-task.jpg")  # another name: encoded and referenced again
    with counting(tiny_model) as calls:
        trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    assert calls["vae_encode"] == 1 and calls["unet"] == 1 + trace.passes


def test_a_mask_that_does_not_change_costs_no_second_unet_call(tiny_model, image, coarse):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(alpha=0.0, iterations=5, early_stop=False, edge_aware=False))
    trace = refiner.refine_trace(image, Prompt(mask=coarse), "cat")
    assert trace.iterations == 5 and trace.passes == 1  # the signal depends on the mask only


def test_cache_is_bounded(tiny_model, image, coarse):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=1, cache_images=2, cache_references=2))
    for shift in range(4):
        refiner.refine(np.roll(image, shift, axis=1), Prompt(mask=coarse), "cat")
    assert len(refiner._latents) == 2 and len(refiner._references) == 2


def test_multiclass_masks_do_not_overlap(tiny_model, image, coarse):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=1))
    other = np.zeros_like(coarse)
    other[50:90, 70:120] = True  # overlaps the first shape
    results = refiner.refine_classes(image, {"cat": Prompt(mask=coarse), "dog": Prompt(mask=other)})
    assert results["cat"].mask.any() and results["dog"].mask.any()
    assert not (results["cat"].mask & results["dog"].mask).any()


def three_shapes(coarse):
    return {"cat": coarse, "dog": np.roll(coarse, (15, 20), axis=(0, 1)), "bird": np.roll(coarse, -25, axis=1)}


def test_the_signal_of_a_batch_of_regions_equals_each_regions_own(tiny_model, image, coarse):
    # The default (RGB) space: the UNet, the fast decoder and the Hausdorff distance, batched.
    import torch

    refiner = G4SegRefiner(tiny_model, RefinerConfig(alpha=2.0))
    items = [refiner.item(m.astype(np.float32), k) for k, m in three_shapes(coarse).items()]
    assert len({it.roi for it in items}) == 3  # three different crops in one batch
    masks = torch.from_numpy(np.random.default_rng(0).random((3, 128, 128)) > 0.5)
    refiner.set_image(image, "batched")
    together = refiner.make_signal(image, items)(masks, torch.ones(3, dtype=torch.bool))
    for i, item in enumerate(items):
        refiner.set_image(image, f"alone-{i}")
        alone = refiner.make_signal(image, [item])(masks[i : i + 1], torch.ones(1, dtype=torch.bool))[0]
        assert alone.max() > 0 and (together[i] - alone).abs().max() <= 1e-3 * alone.max()


def test_classes_refined_as_one_batch_equal_them_refined_one_by_one(tiny_model, image, coarse):
    # The latent space: there the tiny random model's discrepancy is far from the threshold
    # everywhere, so the batch's last-digit differences cannot flip a pixel and fork the loop.
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=3, alpha=2.0, early_stop=False,
                                                     discrepancy_space="latent"))
    prompts = {k: Prompt(mask=m) for k, m in three_shapes(coarse).items()}
    refiner.set_image(image, "one-by-one")
    with counting(tiny_model) as single:
        alone = {k: refiner.refine(image, prompts[k], k) for k in prompts}
    refiner.set_image(image, "batched")
    with counting(tiny_model) as batched:
        together = refiner.refine_classes(image, prompts)
    assert single["unet"] == 3 * 4 and batched["unet"] == 4  # a reference pass and 3 passes: batched
    for k in prompts:
        np.testing.assert_allclose(together[k].probability, alone[k].probability, atol=1e-4)
        assert (alone[k].probability != coarse).any()  # something moved: the comparison means something


@pytest.mark.parametrize("roi", [True, False])
def test_output_has_the_image_size_for_every_prior_kind(tiny_model, image, roi):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=1, roi=roi))
    prompts = [
        Prompt(polygons=[[(40, 30), (90, 30), (90, 70), (40, 70)]]),
        Prompt(box=(35, 25, 95, 75)),
        Prompt(positive_points=[(60, 50)], negative_points=[(10, 10)]),
        Prompt(scribbles=[[(45, 50), (85, 50)]]),
    ]
    for prompt in prompts:
        result = refiner.refine(image, prompt, "cat")
        assert result.probability.shape == result.mask.shape == image.shape[:2]
        assert result.probability.dtype == np.float32
        assert result.mask.any()


def test_box_result_stays_in_the_box_and_clicks_are_respected(tiny_model, image):
    refiner = G4SegRefiner(tiny_model, RefinerConfig(iterations=2))
    result = refiner.refine(image, Prompt(box=(35, 25, 95, 75), negative_points=[(60, 50)]), "cat")
    assert not result.mask[:25].any() and not result.mask[:, 95:].any()
    assert not result.mask[50, 60]


def test_working_size_must_fit_the_model(tiny_model):
    with pytest.raises(SettingError, match="multiple of 32"):
        G4SegRefiner(tiny_model, RefinerConfig(working_size=100))


def test_version_names_engine_model_and_settings(tiny_model):
    version = G4SegRefiner(tiny_model, RefinerConfig(alpha=0.5)).version
    assert version.startswith("g4seg:") and "TINY-RANDOM" in version and "alpha=0.5" in version
