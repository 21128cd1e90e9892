"""Build an engine by name: `g4seg`, the classic peers, or `auto` (G4Seg when its weights load)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from g4seg_core.engines.base import Engine
from g4seg_core.errors import SettingError, WeightsNotFoundError

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("g4seg", "classic", "auto", "identity", "densecrf", "grabcut", "pamr")


@dataclass
class EngineStatus:
    """What was asked for, what runs, and why (shown by the backend's /health)."""

    requested: str
    engine: Engine
    warning: str | None = None


def create_engine(
    name: str = "auto",
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    settings: dict | None = None,
) -> EngineStatus:
    """`settings` are RefinerConfig fields for g4seg (ignored by classic engines)."""
    name = name.lower()
    if name not in ENGINE_CHOICES:
        raise SettingError(f"unknown engine {name!r} (choose from {', '.join(ENGINE_CHOICES)})")
    if name in ("g4seg", "auto"):
        try:
            return EngineStatus(name, _g4seg(model, device, dtype, settings))
        except WeightsNotFoundError as exc:
            if name == "g4seg":
                raise
            from g4seg_core.engines.classic import CLASSIC_ENGINE

            warning = (
                f"G4Seg weights could not be loaded, so the classic engine ({CLASSIC_ENGINE}) answers instead. "
                f"{exc}"
            )
            log.warning("!" * 20 + " %s", warning)
            return EngineStatus(name, _classic(CLASSIC_ENGINE), warning)
    if name == "classic":
        from g4seg_core.engines.classic import CLASSIC_ENGINE

        return EngineStatus(name, _classic(CLASSIC_ENGINE))
    return EngineStatus(name, _classic(name))


def _g4seg(model, device, dtype, settings) -> Engine:
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.refiner import G4SegRefiner

    config = RefinerConfig(**(settings or {}))
    return G4SegRefiner.from_pretrained(model, device=device, dtype=dtype, config=config)


def _classic(name: str) -> Engine:
    from g4seg_core.engines.classic import PEERS

    return PEERS[name]()
