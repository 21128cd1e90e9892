"""Every setting of the refiner in one dataclass; documented in docs/method.md."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from g4seg_core.errors import SettingError

DISCREPANCY_SPACES = ("auto", "rgb", "latent", "features")


@dataclass(frozen=True)
class RefinerConfig:
    # Prompt and generation
    prompt_template: str = "a photograph of a {}"
    working_size: int | None = None  # pixels; None: the model's native size (512 for SD 2.1-base)
    timestep: int = 100
    seed: int = 0

    # Mask injection into attention logits
    alpha: float = 1.0
    inject_cross: bool = True
    inject_self: bool = True
    injection_resolutions: tuple[int, ...] | None = None  # attention side lengths; None: all

    # Discrepancy (local symmetric Hausdorff distance)
    # auto: rgb when the model has a fast decoder (TAESD), else latent (the cheapest); rgb without a
    # fast decoder decodes with the full VAE (2-4 UNet calls' worth on a CPU).
    discrepancy_space: str = "auto"  # auto | rgb | latent | features
    hausdorff_window: int = 5  # window side, in latent pixels
    # RGB space: the full-resolution decode is area-reduced to this side for the comparison, never
    # below the latent side (one value per latent pixel at least: coarser cells blur every boundary).
    discrepancy_max_size: int = 128
    robust_percentile: float = 95.0

    # Confusion area and update
    confusion_delta: float = 0.3
    boundary_band: float = 0.03  # fraction of the working image's diagonal
    # A hard prior (0/1) enters soft: a sigmoid of the signed distance to its boundary, this
    # fraction of the boundary band wide, so that pixels just outside can cross the threshold on
    # the first pass (with a 0/1 prior and beta 0.5 an outside pixel could only reach 0.5).
    prior_softness: float = 0.25
    beta: float = 0.5
    iterations: int = 3
    early_stop: bool = True  # stop once nothing can change: the mask held and every target agrees with it
    threshold: float = 0.5

    # Edge-aware final step: at image resolution, a graph cut with the refined probability as the
    # prior, colour models of the region and contrast-sensitive edges (g4seg_core/colourcut.py),
    # so boundaries follow the image's edges rather than the signal's cells.
    edge_aware: bool = True
    edge_smoothness: float = 10.0  # weight of the edge term (0: colour and probability alone)
    edge_colour_weight: float = 1.0  # weight of the colour models against the refined probability

    # Region of interest
    roi: bool = True
    roi_margin: float = 0.25
    roi_grid: int = 32  # snap crops to this grid (image pixels) so small edits reuse the cache

    # Per-image caches (least recently used)
    cache_images: int = 4
    cache_references: int = 16
    cache_texts: int = 64

    def __post_init__(self):
        checks = [
            (1 <= self.timestep <= 999, f"timestep must be in 1..999, got {self.timestep}"),
            (self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}"),
            (0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}"),
            (self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}"),
            (self.discrepancy_space in DISCREPANCY_SPACES,
             f"discrepancy_space must be one of {', '.join(DISCREPANCY_SPACES)}, got {self.discrepancy_space!r}"),
            (self.hausdorff_window >= 1 and self.hausdorff_window % 2 == 1,
             f"hausdorff_window must be an odd number >= 1, got {self.hausdorff_window}"),
            (0 < self.robust_percentile <= 100, f"robust_percentile must be in (0, 100], got {self.robust_percentile}"),
            (0 <= self.confusion_delta <= 0.5, f"confusion_delta must be in [0, 0.5], got {self.confusion_delta}"),
            (0 <= self.boundary_band < 1, f"boundary_band must be in [0, 1), got {self.boundary_band}"),
            (0 < self.threshold < 1, f"threshold must be in (0, 1), got {self.threshold}"),
            (self.roi_margin >= 0, f"roi_margin must be >= 0, got {self.roi_margin}"),
            (self.roi_grid >= 1, f"roi_grid must be >= 1, got {self.roi_grid}"),
            (self.discrepancy_max_size >= 8, f"discrepancy_max_size must be >= 8, got {self.discrepancy_max_size}"),
            (self.prior_softness >= 0, f"prior_softness must be >= 0, got {self.prior_softness}"),
            (self.edge_smoothness >= 0, f"edge_smoothness must be >= 0, got {self.edge_smoothness}"),
            (self.edge_colour_weight >= 0, f"edge_colour_weight must be >= 0, got {self.edge_colour_weight}"),
            (self.working_size is None or self.working_size >= 64,
             f"working_size must be >= 64, got {self.working_size}"),
            ("{}" in self.prompt_template, "prompt_template must contain {} for the class name"),
            (min(self.cache_images, self.cache_references, self.cache_texts) >= 1, "cache sizes must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingError(message)

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> "RefinerConfig":
        """Build from text settings (environment variables, form fields), typed by the field defaults."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, raw in values.items():
            if key not in known:
                raise SettingError(f"unknown refiner setting {key!r}")
            kwargs[key] = _parse(key, raw, getattr(cls, key) if hasattr(cls, key) else None)
        return cls(**kwargs)

    def short(self) -> str:
        """A compact, stable description for model_version strings."""
        d = asdict(self)
        keys = ("alpha", "beta", "iterations", "timestep", "discrepancy_space", "working_size", "roi")
        return "-".join(f"{k}={d[k]}" for k in keys)


def _parse(key: str, raw: str, default):
    raw = raw.strip()
    try:
        if key == "injection_resolutions":
            return None if raw.lower() in ("", "none", "all") else tuple(int(v) for v in raw.split(","))
        return parse_text_value(raw, default, optional=key == "working_size")
    except (SettingError, ValueError):
        raise SettingError(f"setting {key}={raw!r} is not a valid {type(default).__name__}") from None


def parse_text_value(raw: str, default, optional: bool = False):
    """A setting given as text, typed like its default (bool, int, float or str).

    `optional`: "", "none" and "auto" mean None. Raises SettingError when the text does not fit.
    """
    raw = raw.strip()
    if optional and raw.lower() in ("", "none", "auto"):
        return None
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingError(f"{raw!r} is not true or false")
    try:
        if isinstance(default, int) or (optional and default is None):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise SettingError(f"{raw!r} is not a {'whole number' if isinstance(default, int) or default is None else 'number'}") from None
    return raw
