"""The interface every refiner shares: G4Seg and the classic peers (DenseCRF, GrabCut, PAMR, identity).

An engine turns (image, coarse prompt, label) into a probability map and a mask at the image's
size. The backend, the CVAT handler and the benchmark only talk to this interface.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from g4seg_core.errors import ImageError
from g4seg_core.prompts import PriorConfig, Prompt, prompt_constraints, rasterize_prompt


@dataclass
class RefineResult:
    probability: np.ndarray  # HxW float32 in [0, 1]
    mask: np.ndarray  # HxW bool

    @property
    def score(self) -> float:
        """Mean confidence of the decision over the mask's pixels (1.0 for a certain mask)."""
        if not self.mask.any():
            return 0.0
        return float(np.mean(np.abs(self.probability[self.mask] - 0.5) * 2.0))


def as_probability(image: np.ndarray, prompt: Prompt | np.ndarray, prior: PriorConfig | None = None) -> np.ndarray:
    """A prompt, or an already rasterised prior, as a float32 HxW map at the image's size."""
    height, width = image.shape[:2]
    if isinstance(prompt, Prompt):
        return rasterize_prompt(prompt, height, width, prior)
    return rasterize_prompt(Prompt(mask=np.asarray(prompt)), height, width, prior)


def apply_constraints(probability: np.ndarray, prompt: Prompt | np.ndarray) -> None:
    """In place: what the annotator fixed wins (click discs in or out, nothing outside a box)."""
    if isinstance(prompt, Prompt):
        force_fg, force_bg = prompt_constraints(prompt, *probability.shape)
        probability[force_fg] = 1.0
        probability[force_bg] = 0.0


def resolve_overlaps(probabilities: dict[str, np.ndarray], threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Non-overlapping masks: a pixel goes to the most probable class if that class passes threshold."""
    if not probabilities:
        return {}
    labels = list(probabilities)
    stack = np.stack([probabilities[k] for k in labels])
    winner = np.argmax(stack, axis=0)
    best = np.take_along_axis(stack, winner[None], axis=0)[0]
    return {k: (winner == i) & (best > threshold) for i, k in enumerate(labels)}


def check_image(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 HxWx3 image, or a clear error."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageError(f"image is too small ({image.shape[1]}x{image.shape[0]}); at least 8x8 is needed")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


class Engine:
    """Base class: subclasses implement `refine_probability`; the rest is shared."""

    name: str = "engine"
    threshold: float = 0.5  # probability above which a pixel is in the mask

    @property
    def version(self) -> str:
        """Names the engine, the model and the settings (Label Studio's model_version)."""
        return self.name

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        """Name the image the next refinements are on, so an engine that caches per-image work
        (G4Seg) reuses it; `key` identifies the image (a task and URL, a path). Others ignore it."""

    def refine_probability(self, image: np.ndarray, prior: np.ndarray, label: str) -> np.ndarray:
        raise NotImplementedError

    def refine(self, image: np.ndarray, prompt: Prompt | np.ndarray, label: str) -> RefineResult:
        image = check_image(image)
        prior = as_probability(image, prompt)
        prob = np.clip(self.refine_probability(image, prior, label), 0.0, 1.0).astype(np.float32)
        apply_constraints(prob, prompt)
        return RefineResult(probability=prob, mask=prob > self.threshold)

    def refine_classes(self, image: np.ndarray, prompts: dict[str, Prompt | np.ndarray]) -> dict[str, RefineResult]:
        """Refine each class on one image; the masks never overlap."""
        results = {label: self.refine(image, prompt, label) for label, prompt in prompts.items()}
        masks = resolve_overlaps({k: r.probability for k, r in results.items()}, self.threshold)
        return {k: RefineResult(probability=r.probability, mask=masks[k]) for k, r in results.items()}
