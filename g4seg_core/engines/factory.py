"""Build an engine by name: `g4seg`, the classic peers, or `auto` (G4Seg when its weights load)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from g4seg_core.engines.base import Engine
from g4seg_core.errors import SettingError, WeightsNotFoundError

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("g4seg", "classic", "auto", "identity", "colourcut", "grabcut", "densecrf", "pamr")


@dataclass
class EngineStatus:
    """What was asked for, what runs, and why (shown by the backend's /health)."""

    requested: str
    engine: Engine
    warning: str | None = None


@dataclass
class EnginePlan:
    """Which engine a request resolves to, found without loading any weights (so a command can
    check everything the user typed before the slow part): `weights` is the model folder when
    G4Seg will run, else None."""

    requested: str
    name: str  # "g4seg" or a classic engine's name
    model: str | None = None
    weights: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    warning: str | None = None
    decoder: str | None = "auto"

    def check_labels(self, labels: list[str], prompt_template: str | None = None) -> None:
        """Each label non-empty and, for G4Seg, short enough for the text encoder's prompt."""
        blank = [label for label in labels if not label.strip()]
        if blank or not labels:
            raise SettingError("the class name must not be empty (it names the object in the text prompt)")
        if self.weights is not None:
            from g4seg_core.method.config import RefinerConfig
            from g4seg_core.method.loading import check_prompt_length

            template = prompt_template or RefinerConfig.prompt_template
            check_prompt_length(self.weights, {label: template.format(label) for label in labels})

    def load(self, settings: dict | None = None) -> EngineStatus:
        """`settings` are RefinerConfig fields for g4seg (ignored by classic engines)."""
        if self.weights is not None:
            return EngineStatus(self.requested, _g4seg(str(self.weights), self.model, self.device, self.dtype, settings,
                                                       self.decoder))
        if self.warning:
            log.warning("!" * 20 + " %s", self.warning)
        return EngineStatus(self.requested, _classic(self.name), self.warning)


def plan_engine(name: str = "auto", model: str | None = None, device: str = "auto", dtype: str = "auto",
                fallback: bool = True, decoder: str | None = "auto") -> EnginePlan:
    """Resolve `name` without loading weights: `auto` is G4Seg when its weights are found, else
    (when `fallback`) the classic engine, with a warning that says why. Device and dtype are
    checked here too. `fallback=False` makes missing weights an error for `auto` as for `g4seg`
    (a command line that named its model wants that model)."""
    name = name.lower()
    if name not in ENGINE_CHOICES:
        raise SettingError(f"unknown engine {name!r} (choose from {', '.join(ENGINE_CHOICES)})")
    if name in ("g4seg", "auto"):
        from g4seg_core.method.loading import (
            locate_decoder,
            locate_weights,
            resolve_device,
            resolve_dtype,
        )

        dev = resolve_device(device)
        resolve_dtype(dtype, dev)
        try:
            weights = locate_weights(model)
            if decoder and decoder.lower() not in ("auto", "none"):
                locate_decoder(decoder)  # a decoder named must be found, before anything loads
            return EnginePlan(name, "g4seg", model, weights, device, dtype, decoder=decoder)
        except WeightsNotFoundError as exc:
            if name == "g4seg" or not fallback:
                raise
            from g4seg_core.engines.classic import CLASSIC_ENGINE

            warning = (
                f"G4Seg weights could not be loaded, so the classic engine ({CLASSIC_ENGINE}) answers instead. "
                f"{exc}"
            )
            return EnginePlan(name, CLASSIC_ENGINE, warning=warning)
    if name == "classic":
        from g4seg_core.engines.classic import CLASSIC_ENGINE

        return EnginePlan(name, CLASSIC_ENGINE)
    if name == "densecrf":
        import importlib.util

        if importlib.util.find_spec("pydensecrf") is None:
            raise SettingError("the densecrf engine needs the optional dense-CRF package: pip install 'g4seg[crf]' "
                               "(it builds from source: a C compiler is needed)")
    return EnginePlan(name, name)


def create_engine(
    name: str = "auto",
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    settings: dict | None = None,
) -> EngineStatus:
    """`settings` are RefinerConfig fields for g4seg (ignored by classic engines)."""
    return plan_engine(name, model, device, dtype).load(settings)


def _g4seg(folder: str, model: str | None, device, dtype, settings, decoder) -> Engine:
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.refiner import G4SegRefiner

    config = RefinerConfig(**(settings or {}))
    return G4SegRefiner.from_pretrained(model or folder, device=device, dtype=dtype, config=config, decoder=decoder)


def _classic(name: str) -> Engine:
    from g4seg_core.engines.classic import PEERS

    return PEERS[name]()
