"""The local symmetric Hausdorff distance, vectorised, against its definition computed the slow way."""
import numpy as np
import pytest
import torch

from g4seg_core.method.discrepancy import discrepancy_side, local_hausdorff, resolve_space


def slow_local_hausdorff(a: np.ndarray, b: np.ndarray, radius: int) -> np.ndarray:
    """The definition, pixel by pixel (edges replicated)."""
    c, h, w = a.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            best_ab = best_ba = np.inf
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    qy, qx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                    best_ab = min(best_ab, float(((a[:, y, x] - b[:, qy, qx]) ** 2).sum()))
                    best_ba = min(best_ba, float(((b[:, y, x] - a[:, qy, qx]) ** 2).sum()))
            out[y, x] = np.sqrt(max(best_ab, best_ba))
    return out


@pytest.mark.parametrize("channels, radius", [(3, 0), (3, 1), (4, 2), (16, 2)])  # 16: the dot-product branch
def test_matches_the_definition(channels, radius):
    rng = np.random.default_rng(channels + radius)
    a = rng.normal(size=(2, channels, 9, 11)).astype(np.float32)
    b = rng.normal(size=(2, channels, 9, 11)).astype(np.float32)
    fast = local_hausdorff(torch.from_numpy(a), torch.from_numpy(b), radius).numpy()
    for i in range(2):
        np.testing.assert_allclose(fast[i], slow_local_hausdorff(a[i], b[i], radius), rtol=1e-4, atol=1e-4)
    single = local_hausdorff(torch.from_numpy(a[0]), torch.from_numpy(b[0]), radius)
    np.testing.assert_allclose(single.numpy(), fast[0], atol=1e-6)


def test_a_small_shift_costs_nothing_and_a_change_does():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(3, 20, 20)).astype(np.float32))
    shifted = torch.roll(a, 1, dims=2)
    assert local_hausdorff(a, shifted, 1)[:, 2:-2].max() < 1e-5
    changed = a.clone()
    changed[:, 8:12, 8:12] += 5
    d = local_hausdorff(a, changed, 1)
    assert d[9:11, 9:11].min() > 1 and d[:5, :5].max() < 1e-5


def test_the_discrepancy_has_at_least_the_latent_resolution():
    assert discrepancy_side("latent", 512, 8, 128) == 64
    assert discrepancy_side("rgb", 512, 8, 128) == 128
    assert discrepancy_side("rgb", 512, 8, 32) == 64  # never coarser than the latent grid
    assert resolve_space("auto", fast_decoder=True) == "rgb" and resolve_space("auto", fast_decoder=False) == "latent"


@pytest.mark.parametrize("budget", [1, 500, 1 << 30])  # one window row per chunk, a few, all at once
def test_the_chunking_of_the_window_changes_nothing(budget):
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.normal(size=(3, 4, 12, 10)).astype(np.float32))
    b = torch.from_numpy(rng.normal(size=(3, 4, 12, 10)).astype(np.float32))
    expected = np.stack([slow_local_hausdorff(a[i].numpy(), b[i].numpy(), 3) for i in range(3)])
    np.testing.assert_allclose(local_hausdorff(a, b, 3, budget=budget).numpy(), expected, rtol=1e-4, atol=1e-4)
