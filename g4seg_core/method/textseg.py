"""Text-only segmentation on Stable Diffusion's attention: iSeg and DiffSegmenter (the method page, part 2).

Both give coarse masks from class names alone, for pre-annotating whole projects. Per image:
one UNet call at t=100 on the noised latent with one prompt naming all its classes ("a photograph
of a cat and a dog"), capturing the cross-attention of the class tokens at the method's
resolutions and the self-attention at the finest latent resolution.

- DiffSegmenter: per class, the cross-attention averaged over layers and heads at each resolution,
  upsampled to the latent grid, min-max normalised and weighted ({8: 0.3, 16: 0.5, 32: 0.1,
  64: 0.1}); completed once by the averaged self-attention; background where no class passes a
  threshold.
- iSeg: the class tokens' embeddings multiplied by gamma before the UNet (category-enhanced
  cross-attention); weights {16: 0.7, 32: 0.3}; the self-attention sharpened by one
  entropy-reducing step `S <- S + lambda*(1 + log S)`, clipped at 0, rows renormalised; then
  `A <- S A` N times, renormalised each time; background score `(1 - max_c A_c)^2`.

Resolutions are named as for a 512 input (latent 64): {8, 16, 32, 64} mean the latent side /8,
/4, /2 and /1, so other working sizes and the tiny test model (latent 16) use the same layers.
A named resolution the UNet does not have is left out and the weights renormalised.

When the prompt for all classes would pass the text encoder's 77 tokens, the classes are split
over several prompts that go through the UNet together as one batch: still one UNet call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from g4seg_core.engines.base import Engine, RefineResult, check_image
from g4seg_core.errors import SettingError, UserError
from g4seg_core.method.attention import AttentionCapture
from g4seg_core.method.config import parse_text_value
from g4seg_core.method.model import SDModel
from g4seg_core.method.roi import crop, paste, whole_image_roi

# The named resolutions are attention sides for a 512 input, whose latent side is this.
_REFERENCE_LATENT_SIDE = 64


# ---- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextSegConfig:
    """Settings both text-only segmenters share."""

    method: ClassVar[str] = "textseg"

    prompt_template: str = "a photograph of {}"  # {} receives the joined class phrases
    class_phrase: str = "a {}"  # one class inside the prompt
    class_separator: str = " and "
    working_size: int | None = None  # pixels; None: the model's native size (512 for SD 2.1-base)
    timestep: int = 100
    seed: int = 0
    # (named resolution, weight) pairs for the class tokens' cross-attention
    cross_weights: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        checks = [
            (1 <= self.timestep <= 999, f"timestep must be in 1..999, got {self.timestep}"),
            (self.working_size is None or self.working_size >= 64, f"working_size must be >= 64, got {self.working_size}"),
            ("{}" in self.prompt_template, "prompt_template must contain {} for the class names"),
            ("{}" in self.class_phrase, "class_phrase must contain {} for the class name"),
            (len(self.cross_weights) > 0, "cross_weights must name at least one resolution"),
            (all(r in (8, 16, 32, 64) for r, _ in self.cross_weights),
             f"cross_weights resolutions must be among 8, 16, 32, 64, got {[r for r, _ in self.cross_weights]}"),
            (all(w >= 0 for _, w in self.cross_weights) and sum(w for _, w in self.cross_weights) > 0,
             "cross_weights must be >= 0 and not all 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingError(message)

    @classmethod
    def from_strings(cls, values: dict[str, str]):
        """Build from text settings (`--setting KEY=VALUE`, environment), typed by the field defaults."""
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, raw in values.items():
            if key not in known:
                raise SettingError(f"unknown {cls.method} setting {key!r} (known: {', '.join(sorted(known))})")
            kwargs[key] = _parse_setting(key, raw.strip(), getattr(cls, key))
        return cls(**kwargs)

    def short(self) -> str:
        """A compact, stable description for model_version strings."""
        d = asdict(self)
        keys = [k for k in self._version_keys if k in d]
        parts = [f"{k}={d[k]}" for k in keys]
        # No commas: Label Studio's Data Manager splits model versions on them.
        parts.append("w=" + "/".join(f"{r}:{w:g}" for r, w in self.cross_weights))
        return "-".join(parts)

    _version_keys: ClassVar[tuple[str, ...]] = ("timestep", "working_size")


@dataclass(frozen=True)
class ISegConfig(TextSegConfig):
    method: ClassVar[str] = "iseg"

    cross_weights: tuple[tuple[int, float], ...] = ((16, 0.7), (32, 0.3))
    gamma: float = 1.6  # class token embeddings are multiplied by this (category-enhanced cross-attention)
    entropy_lambda: float = 0.01  # step of the entropy-reducing update of the self-attention
    iterations: int = 10  # propagation steps A <- S A

    def __post_init__(self):
        super().__post_init__()
        if self.gamma <= 0:
            raise SettingError(f"gamma must be > 0, got {self.gamma}")
        if self.entropy_lambda < 0:
            raise SettingError(f"entropy_lambda must be >= 0, got {self.entropy_lambda}")
        if self.iterations < 0:
            raise SettingError(f"iterations must be >= 0, got {self.iterations}")

    _version_keys: ClassVar[tuple[str, ...]] = ("gamma", "entropy_lambda", "iterations", "timestep", "working_size")


@dataclass(frozen=True)
class DiffSegmenterConfig(TextSegConfig):
    method: ClassVar[str] = "diffsegmenter"

    cross_weights: tuple[tuple[int, float], ...] = ((8, 0.3), (16, 0.5), (32, 0.1), (64, 0.1))
    background_threshold: float = 0.5  # a pixel whose best class scores below this is background

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.background_threshold < 1:
            raise SettingError(f"background_threshold must be in (0, 1), got {self.background_threshold}")

    _version_keys: ClassVar[tuple[str, ...]] = ("background_threshold", "timestep", "working_size")


METHODS: dict[str, type[TextSegConfig]] = {"iseg": ISegConfig, "diffsegmenter": DiffSegmenterConfig}


def config_for(method: str, settings: dict[str, str] | None = None) -> TextSegConfig:
    """The config of a method by name, with text settings applied."""
    key = method.lower()
    if key not in METHODS:
        raise SettingError(f"unknown text-only method {method!r} (choose from {', '.join(METHODS)})")
    return METHODS[key].from_strings(settings or {})


def _parse_setting(key: str, raw: str, default):
    try:
        if key == "cross_weights":  # "16:0.7,32:0.3"
            pairs = [p.split(":") for p in raw.split(",") if p.strip()]
            return tuple((int(r), float(w)) for r, w in pairs)
        return parse_text_value(raw, default, optional=key == "working_size")
    except (SettingError, ValueError):
        raise SettingError(f"setting {key}={raw!r} is not valid") from None


# ---- results and pure functions ----------------------------------------------------------------
@dataclass
class TextSegmentation:
    """Per-class probability maps at image size and a label map without overlaps.

    label_map: HxW int32, 0 = background, i + 1 = labels[i].
    background: HxW float32 background score the label map was decided against (None once refined).
    """

    labels: list[str]
    probabilities: dict[str, np.ndarray]  # label -> HxW float32 in [0, 1]
    label_map: np.ndarray
    background: np.ndarray | None = None
    refined: bool = False

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return {label: self.label_map == i + 1 for i, label in enumerate(self.labels)}

    def soft_prior(self, label: str, temperature: float = 0.1) -> np.ndarray:
        """The class as a soft prior for a refiner: above 0.5 exactly where the label map chose it,
        and how far above or below says how clearly it beat its best competitor (the background
        or another class), so the refiner knows where the map was unsure."""
        mask = self.label_map == self.labels.index(label) + 1
        if self.background is None:  # refined already: only the decision is left
            return mask.astype(np.float32)
        competitors = [self.probabilities[other] for other in self.labels if other != label]
        best_other = np.maximum.reduce(competitors + [np.broadcast_to(self.background, mask.shape)])
        soft = 1.0 / (1.0 + np.exp(-(self.probabilities[label] - best_other) / temperature))
        return np.where(mask, np.maximum(soft, np.nextafter(np.float32(0.5), np.float32(1))),
                        np.minimum(soft, 0.5)).astype(np.float32)

    def score(self, label: str) -> float:
        """Mean class probability over the class's mask (0 when the class has no pixels)."""
        mask = self.label_map == self.labels.index(label) + 1
        return float(self.probabilities[label][mask].mean()) if mask.any() else 0.0


def label_map(probabilities: np.ndarray, background: np.ndarray | float) -> np.ndarray:
    """(C, H, W) class scores and a background score (HxW or a constant) -> HxW int32 labels.

    0 is background, c + 1 is class c; each pixel takes the highest score, background winning ties,
    so labels never overlap.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must be (C, H, W), got shape {probabilities.shape}")
    bg = np.broadcast_to(np.asarray(background, dtype=np.float32), probabilities.shape[1:])
    return np.argmax(np.concatenate([bg[None], probabilities]), axis=0).astype(np.int32)


def minmax_normalize(maps: torch.Tensor, dim: int) -> torch.Tensor:
    """Each slice along `dim` rescaled to [0, 1]; a constant slice becomes 0."""
    low = maps.amin(dim=dim, keepdim=True)
    high = maps.amax(dim=dim, keepdim=True)
    span = high - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps))


def entropy_reduced(self_attention: torch.Tensor, step: float) -> torch.Tensor:
    """One entropy-reducing step on a row-stochastic (N, N) self-attention, rows renormalised.

    `S <- S + lambda*(1 + log S)` is a gradient step down the entropy. It is applied to each row
    scaled to a maximum of 1, so it drops keys far below the row's peak (under ~3% for lambda
    0.01) instead of every key of a 4096-wide row whose entries are all tiny; the peak survives,
    so no row becomes empty.
    """
    if step == 0:
        return self_attention
    s = self_attention / self_attention.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(self_attention.dtype).tiny)
    sharpened = torch.where(s > 0, s + step * (1 + torch.log(s.clamp_min(1e-30))), torch.zeros_like(s)).clamp_min(0)
    return sharpened / sharpened.sum(dim=-1, keepdim=True)


def attention_side(named: int, latent_side: int) -> int | None:
    """The attention side that a resolution named for a 512 input means at this latent side."""
    side, rest = divmod(latent_side * named, _REFERENCE_LATENT_SIDE)
    return side if side >= 1 and rest == 0 else None


# ---- the segmenter -----------------------------------------------------------------------------
@dataclass
class _Prompts:
    texts: list[str]
    rows: list[int]  # per label: which prompt (batch row) names it
    positions: list[list[int]]  # per label: its token positions in that prompt


class TextSegmenter:
    """A loaded model and a text-only method: `segment(image, labels)` -> TextSegmentation."""

    def __init__(self, model: SDModel, config: TextSegConfig | None = None):
        self.model = model
        self.config = config or ISegConfig()
        if not isinstance(self.config, (ISegConfig, DiffSegmenterConfig)):
            raise TypeError("config must be an ISegConfig or a DiffSegmenterConfig")
        self.working_size = model.working_size(self.config.working_size)
        self._prompt_cache: dict[tuple[str, ...], _Prompts] = {}

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
                        config: TextSegConfig | None = None) -> "TextSegmenter":
        return cls(SDModel.from_pretrained(model, device=device, dtype=dtype), config)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def version(self) -> str:
        """Names the method, the model and the settings (for Label Studio's model_version)."""
        tiny = "-TINY-RANDOM" if self.model.is_tiny else ""
        settings = replace(self.config, working_size=self.working_size).short()
        return f"{self.method}:{self.model.name}{tiny}:{str(self.model.dtype).replace('torch.', '')}:{settings}"

    # ---- prompts ----------------------------------------------------------------------------
    def prompts(self, labels: list[str]) -> _Prompts:
        """Prompts naming all labels (as few as fit the text encoder) and each label's token positions."""
        key = tuple(labels)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) > 256:
                self._prompt_cache.clear()
            self._prompt_cache[key] = self._build_prompts(labels)
        return self._prompt_cache[key]

    def _build_prompts(self, labels: list[str]) -> _Prompts:
        cfg, tok = self.config, self.model.tokenizer
        words = [_class_words(label) for label in labels]

        def text(group: list[int], upto: int | None = None) -> str:
            phrases = [cfg.class_phrase.format(words[i]) for i in group[: None if upto is None else upto + 1]]
            joined = cfg.class_separator.join(phrases)
            if upto is not None:  # a prefix ending with class `upto`: the template's tail is cut off
                return cfg.prompt_template.split("{}")[0] + joined
            return cfg.prompt_template.format(joined)

        def fits(group: list[int]) -> bool:
            return len(tok(text(group), verbose=False).input_ids) <= tok.model_max_length

        groups: list[list[int]] = []
        for i in range(len(labels)):
            if groups and fits(groups[-1] + [i]):
                groups[-1].append(i)
                continue
            if not fits([i]):
                raise UserError(f"the class name {labels[i]!r} is too long for the text encoder's "
                                 f"{tok.model_max_length} tokens")
            groups.append([i])
        rows, positions = [0] * len(labels), [[] for _ in labels]
        for row, group in enumerate(groups):
            for k, i in enumerate(group):
                # CLIP tokenises word by word, so a prefix ending with this class tokenises as the
                # prompt's own prefix, and the class is the last occurrence of its words in it.
                positions[i] = self.model.token_positions(text(group, upto=k), words[i])
                rows[i] = row
        return _Prompts([text(g) for g in groups], rows, positions)

    # ---- the method -------------------------------------------------------------------------
    def segment(self, image: np.ndarray, labels: list[str]) -> TextSegmentation:
        return self.segment_many([image], labels)[0]

    def segment_many(self, images: list[np.ndarray], labels: list[str]) -> list[TextSegmentation]:
        """Several images with the same classes in one UNet call (a batch of images x prompts)."""
        images = [check_image(image) for image in images]
        labels = _check_labels(labels)
        cfg, model, size = self.config, self.model, self.working_size
        rois = [whole_image_roi(*image.shape[:2]) for image in images]  # each whole image, padded to a square
        pixels = np.stack([crop(image, roi, size, cv2.INTER_AREA if roi.side > size else cv2.INTER_CUBIC)
                           for image, roi in zip(images, rois)])
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        z0 = model.encode_image(tensor)
        # The same noise for every image: an image's result does not depend on its batch.
        z_t = model.add_noise(z0, model.noise(z0.shape[1:], cfg.seed)[None], cfg.timestep)
        latent = z_t.shape[-1]

        prompts = self.prompts(labels)
        text = model.encode_text(prompts.texts)
        gamma = getattr(cfg, "gamma", 1.0)
        if gamma != 1.0:
            text = text.clone()
            for row, pos in zip(prompts.rows, prompts.positions):
                text[row, pos] = text[row, pos] * gamma

        weights = {}
        for named, weight in cfg.cross_weights:
            side = attention_side(named, latent)
            if side is not None and weight > 0:
                weights[side] = weights.get(side, 0.0) + weight
        capture = AttentionCapture(cross_resolutions=tuple(weights), self_resolutions=(latent,))
        rows = len(prompts.texts)
        # Batch order: image-major, each image with every prompt row.
        model.predict_x0(z_t.repeat_interleave(rows, dim=0), cfg.timestep, text.repeat(len(images), 1, 1),
                         capture=capture)
        return [self._result(capture, weights, prompts, latent, labels, image, roi, n * rows, rows)
                for n, (image, roi) in enumerate(zip(images, rois))]

    def _result(self, capture, weights, prompts, latent, labels, image, roi, first: int, rows: int) -> TextSegmentation:
        cfg = self.config
        height, width = image.shape[:2]
        cross = self._class_cross_attention(capture, weights, prompts, latent, first)  # (C, N)
        # Text reaches the self-attention only indirectly: the rows of a batch agree closely.
        self_attention = capture.mean_self(latent)[first : first + rows].mean(0)  # (N, N), rows sum to 1
        if isinstance(cfg, ISegConfig):
            scores = self._iseg(cross, self_attention, cfg)
        else:
            scores = minmax_normalize(cross @ self_attention.T, dim=1)  # M_c = norm(S . vec(A_c))

        grid = scores.reshape(len(labels), latent, latent).cpu().numpy()
        probabilities = {label: np.clip(paste(grid[i], roi, height, width), 0, 1) for i, label in enumerate(labels)}
        stack = np.stack([probabilities[label] for label in labels])
        if isinstance(cfg, ISegConfig):
            background = ((1.0 - stack.max(axis=0)) ** 2).astype(np.float32)
        else:
            background = np.full((height, width), cfg.background_threshold, np.float32)
        return TextSegmentation(labels, probabilities, label_map(stack, background), background)

    def _class_cross_attention(self, capture: AttentionCapture, weights: dict[int, float], prompts: _Prompts,
                               latent: int, first: int = 0) -> torch.Tensor:
        """(C, latent*latent): each class's weighted, normalised cross-attention on the latent grid."""
        present = {side: w for side, w in weights.items() if side in capture.cross}
        if not present:
            raise SettingError(f"the UNet has no cross-attention at sides {sorted(weights)} for latent side {latent}; "
                             f"choose cross_weights among resolutions this model has")
        total = sum(present.values())
        combined = None
        for side, weight in present.items():
            attn = capture.mean_cross(side)  # (B, side*side, 77)
            per_class = torch.stack([attn[first + r, :, pos].mean(dim=-1) for r, pos in zip(prompts.rows, prompts.positions)])
            grid = per_class.reshape(-1, 1, side, side)
            if side != latent:
                grid = F.interpolate(grid, size=(latent, latent), mode="bilinear", align_corners=False)
            maps = minmax_normalize(grid.flatten(1), dim=1) * (weight / total)
            combined = maps if combined is None else combined + maps
        return combined

    @staticmethod
    def _iseg(cross: torch.Tensor, self_attention: torch.Tensor, cfg: ISegConfig) -> torch.Tensor:
        s = entropy_reduced(self_attention, cfg.entropy_lambda)
        maps = minmax_normalize(cross, dim=1)  # (C, N)
        for _ in range(cfg.iterations):
            maps = minmax_normalize(maps @ s.T, dim=1)  # A <- S A, per class
        return maps


def refine_segmentation(engine: Engine, image: np.ndarray, segmentation: TextSegmentation) -> TextSegmentation:
    """Each class present refined by `engine` (e.g. G4Seg) from its soft map, not just its mask;
    the refined masks never overlap."""
    image = check_image(image)
    present = {label: segmentation.soft_prior(label) for label, mask in segmentation.masks.items() if mask.any()}
    refined: dict[str, RefineResult] = engine.refine_classes(image, present) if present else {}
    probabilities = dict(segmentation.probabilities)
    labels_out = np.zeros(segmentation.label_map.shape, np.int32)
    for i, label in enumerate(segmentation.labels):
        if label in refined:
            probabilities[label] = refined[label].probability
            labels_out[refined[label].mask] = i + 1
    return TextSegmentation(list(segmentation.labels), probabilities, labels_out, None, refined=True)


def _class_words(label: str) -> str:
    """The label as words for the prompt ("traffic_light" -> "traffic light")."""
    return " ".join(label.replace("_", " ").split())


def _check_labels(labels) -> list[str]:
    labels = [str(label) for label in labels]
    if not labels:
        raise UserError("give at least one class name")
    blank = [label for label in labels if not _class_words(label)]
    if blank:
        raise UserError("class names must not be blank")
    if len(set(labels)) != len(labels):
        raise UserError(f"class names must be unique, got {labels}")
    return labels
