"""The classic peers: the Engine interface, and that each one snaps a coarse mask to the object."""
import numpy as np
import pytest

from g4seg_core.engines.base import Engine
from g4seg_core.engines.classic import (
    CLASSIC_ENGINE,
    PEERS,
    ColourCutEngine,
    DenseCRFEngine,
    GrabCutEngine,
    PAMREngine,
)
from g4seg_core.engines.factory import create_engine
from g4seg_core.evaluation import coarse, metrics
from g4seg_core.prompts import Prompt

IMAGE_READERS = ("colourcut", "densecrf", "grabcut", "pamr")


def disc_scene(height=120, width=160, radius=30, centre=(60, 80), seed=0):
    """A dark noisy disc on a bright noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    image = np.where(mask[..., None], [60, 40, 150], [200, 190, 90]).astype(np.float64)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def test_peers_table_and_classic_choice():
    assert set(PEERS) == {"identity", "colourcut", "densecrf", "grabcut", "pamr"}
    for key, cls in PEERS.items():
        engine = cls()
        assert isinstance(engine, Engine)
        assert engine.name == key and engine.version.startswith(key)
    assert CLASSIC_ENGINE in PEERS and CLASSIC_ENGINE != "identity"
    status = create_engine("classic")
    assert isinstance(status.engine, PEERS[CLASSIC_ENGINE])


def test_version_names_the_settings():
    assert DenseCRFEngine(iterations=2).version != DenseCRFEngine().version
    assert "iterations=2" in DenseCRFEngine(iterations=2).version
    assert "core=0.3" in GrabCutEngine(core=0.3).version
    assert "temperature=0.2" in PAMREngine(temperature=0.2).version
    assert "smoothness=5.0" in ColourCutEngine(smoothness=5.0).version


def test_identity_returns_the_coarse_mask():
    image, mask = disc_scene()
    rough = coarse.dilate(mask, 5)
    result = create_engine("identity").engine.refine(image, Prompt(mask=rough), "disc")
    np.testing.assert_array_equal(result.mask, rough)


@pytest.mark.parametrize("name", IMAGE_READERS)
@pytest.mark.parametrize("kind", ["dilate:6", "erode:6", "polygon:6"])
def test_peer_snaps_a_coarse_mask_to_the_object(name, kind):
    image, mask = disc_scene()
    prompt = coarse.make_prompt(coarse.parse_coarse(kind)[0], mask, np.random.default_rng(0))
    before = metrics.iou(create_engine("identity").engine.refine(image, prompt, "disc").mask, mask)
    result = create_engine(name).engine.refine(image, prompt, "disc")
    assert result.probability.shape == mask.shape and result.probability.dtype == np.float32
    assert 0.0 <= result.probability.min() and result.probability.max() <= 1.0
    after = metrics.iou(result.mask, mask)
    assert after > before and after > 0.9, (name, kind, before, after)


@pytest.mark.parametrize("name", ["colourcut", "densecrf", "grabcut"])
def test_peer_finds_the_object_in_its_box(name):
    image, mask = disc_scene()
    prompt = coarse.make_prompt(coarse.parse_coarse("box")[0], mask, np.random.default_rng(0))
    result = create_engine(name).engine.refine(image, prompt, "disc")
    assert metrics.iou(result.mask, mask) > 0.85


@pytest.mark.parametrize("name", IMAGE_READERS)
def test_peer_is_deterministic_and_stays_near_the_prior(name):
    # A small object in a large image: the crop keeps the work local, nothing appears far away.
    image, mask = disc_scene(height=600, width=900, radius=25, centre=(450, 700))
    engine = create_engine(name).engine
    a = engine.refine(image, Prompt(mask=coarse.dilate(mask, 4)), "disc")
    b = engine.refine(image, Prompt(mask=coarse.dilate(mask, 4)), "disc")
    np.testing.assert_array_equal(a.probability, b.probability)
    far = ~coarse.dilate(mask, 40)
    assert not a.mask[far].any()
    assert metrics.iou(a.mask, mask) > 0.85


@pytest.mark.parametrize("name", IMAGE_READERS)
def test_peer_downscales_a_large_crop(name):
    # The object spans more than max_side pixels: the work happens at max_side, the answer at full size.
    image, mask = disc_scene(height=300, width=400, radius=120, centre=(150, 200))
    engine = PEERS[name](max_side=96)
    result = engine.refine(image, Prompt(mask=coarse.dilate(mask, 8)), "disc")
    assert result.mask.shape == mask.shape
    assert metrics.iou(result.mask, mask) > 0.9


@pytest.mark.parametrize("name", IMAGE_READERS)
def test_peer_accepts_a_prior_covering_the_whole_image(name):
    image, _ = disc_scene(height=40, width=40, radius=10, centre=(20, 20))
    result = create_engine(name).engine.refine(image, Prompt(mask=np.ones((40, 40), bool)), "disc")
    assert result.probability.shape == (40, 40)


def test_colourcut_falls_back_to_the_outline_where_colours_cannot_tell():
    # The object has the background's colour: nothing in the image says where it ends, so the
    # annotator's outline must come back (an engine that shrinks or wanders would go below identity).
    rng = np.random.default_rng(3)
    image = np.clip(np.array([60, 110, 190]) + rng.normal(0, 10, (90, 120, 3)), 0, 255).astype(np.uint8)
    outline = np.zeros((90, 120), bool)
    outline[25:65, 30:90] = True
    result = create_engine("colourcut").engine.refine(image, Prompt(mask=outline), "thing")
    assert metrics.iou(result.mask, outline) >= 0.95


@pytest.mark.parametrize("name", IMAGE_READERS)
def test_peer_accepts_a_read_only_photo(name):
    # np.asarray of a decoded photo is read-only; the dense CRF's Cython code refused it.
    image, mask = disc_scene(height=60, width=80, radius=15, centre=(30, 40))
    image.setflags(write=False)
    result = create_engine(name).engine.refine(image, Prompt(mask=coarse.dilate(mask, 25)), "disc")
    assert result.mask.shape == mask.shape
