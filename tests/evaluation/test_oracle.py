"""The oracle: the refiner's machinery with a perfect (or degraded) signal, on real photos.

What it shows is what the machinery can reach, so these tests fail when the machinery caps the
result: a first pass that cannot grow the mask, a region of interest that cuts the object off,
an early stop that ends a run that could still change.
"""
import numpy as np
import pytest

from g4seg_core.evaluation.coarse import dilate, erode, polygon_outlines
from g4seg_core.evaluation.data import open_dataset
from g4seg_core.evaluation.metrics import boundary_iou, iou
from g4seg_core.evaluation.oracle import OracleRefiner, parse_oracle
from g4seg_core.errors import SettingError
from g4seg_core.method.config import RefinerConfig
from g4seg_core.prompts import Prompt


@pytest.fixture(scope="module")
def photos(weizmann_dir):
    data = open_dataset(f"weizmann:{weizmann_dir}:test")
    return [data.load(i) for i in (0, 7, 23)]


@pytest.mark.parametrize("noise", [None, 0.1])
def test_an_outline_drawn_too_tight_grows_and_one_too_loose_shrinks(photos, noise):
    oracle = OracleRefiner(noise=noise)
    for sample in photos:
        truth = sample.objects[0].mask
        for coarse, grows in ((erode(truth, 6), True), (dilate(truth, 8), False)):
            result = oracle.refine_with_truth(sample.image, Prompt(mask=coarse), "horse", truth)
            assert (result.mask.sum() > coarse.sum()) == grows
            assert iou(result.mask, truth) >= iou(coarse, truth) + 0.05, sample.id
            assert boundary_iou(result.mask, truth) >= boundary_iou(coarse, truth) + 0.15, sample.id


def test_the_first_pass_can_grow_the_mask(photos):
    sample = photos[0]
    truth = sample.objects[0].mask
    tight = erode(truth, 4)
    trace = OracleRefiner(RefinerConfig(iterations=1)).refine_trace(sample.image, Prompt(mask=tight), "horse", truth=truth)
    assert (trace.mask & ~tight).sum() > 0.3 * (truth & ~tight).sum()


def test_a_small_object_at_an_image_corner_is_recovered_whole():
    rng = np.random.default_rng(0)
    image = (rng.random((240, 320, 3)) * 40 + 60).astype(np.uint8)
    truth = np.zeros((240, 320), bool)
    yy, xx = np.mgrid[:240, :320]
    truth[(yy - 233) ** 2 + (xx - 313) ** 2 <= 10**2] = True  # a disc cut by the bottom-right corner
    image[truth] = (200, 60, 40)
    coarse = erode(truth, 2)
    trace = OracleRefiner().refine_trace(image, Prompt(mask=coarse), "ball", truth=truth)
    roi = trace.roi
    assert roi.side < 160  # a crop, so the small object gets latent pixels
    assert roi.x0 + roi.side >= 320 and roi.y0 + roi.side >= 240  # its whole box is inside
    assert iou(trace.mask, truth) >= 0.9


def test_nothing_to_change_stops_after_one_pass(photos):
    sample = photos[1]
    truth = sample.objects[0].mask
    trace = OracleRefiner(RefinerConfig(iterations=6)).refine_trace(sample.image, Prompt(mask=truth), "horse", truth=truth)
    assert trace.passes == 1 and trace.iterations == 1
    assert iou(trace.mask, truth) >= 0.97


def test_the_oracle_needs_the_truth_and_says_what_it_is(photos):
    oracle = parse_oracle("g4seg-oracle:0.1")
    assert oracle.noise == 0.1 and "not a method" in oracle.version
    with pytest.raises(TypeError, match="needs the ground truth"):
        oracle.refine(photos[0].image, Prompt(mask=photos[0].objects[0].mask), "horse")
    for bad in ("g4seg-oracle:lots", "g4seg-oracle:2", "g4seg-oracle:0.1:wide", "g4seg-oracle:0.1:-1",
                "g4seg-oracle:0.1:1:2"):
        with pytest.raises(SettingError):
            parse_oracle(bad)
    sharp = parse_oracle("g4seg-oracle:0.1:0.25")
    assert (sharp.noise, sharp.blur, sharp.name) == (0.1, 0.25, "g4seg-oracle:0.1:0.25")
    assert parse_oracle("g4seg-oracle:0.1:1").name == "g4seg-oracle:0.1"  # one latent cell: the default


def test_a_sharper_signal_gives_sharper_boundaries(photos):
    """BLUR is the signal's blur in latent cells: the machinery's boundaries follow it."""
    scores = {}
    for blur in (0.0, 2.0):
        oracle = parse_oracle(f"g4seg-oracle:0.1:{blur:g}")
        scores[blur] = np.mean([
            boundary_iou(oracle.refine_with_truth(s.image, Prompt(polygons=polygon_outlines(s.objects[0].mask, 8)),
                                                  "horse", s.objects[0].mask).mask, s.objects[0].mask)
            for s in photos])
    assert scores[0.0] >= scores[2.0] + 0.05, scores
