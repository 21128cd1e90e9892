"""g4seg core: training-free mask refinement (G4Seg) and text-only segmentation on Stable Diffusion.

The house:
- `prompts`, `images`, `errors`, `cache`: the shared vocabulary (rough shapes, image I/O, the
  user-error type, the one LRU cache).
- `engines`: the `Engine` interface every refiner implements, the classic engines, and
  `create_engine` (G4Seg when its weights load, else a loud fallback).
- `method`: G4Seg itself on Stable Diffusion (loading, attention processors, the refiner, the
  text-only segmenters).
- `evaluation`: the benchmark harness (datasets, coarse inputs, metrics, `g4seg bench`).
- `cli`: the `g4seg` command.

Importing this package is cheap; torch and diffusers load with the modules that need them.
"""
from g4seg_core.engines.base import Engine, RefineResult, resolve_overlaps
from g4seg_core.errors import PromptError, UserError
from g4seg_core.prompts import PriorConfig, Prompt, rasterize_prompt

__all__ = ["Engine", "RefineResult", "resolve_overlaps", "Prompt", "PriorConfig", "PromptError", "UserError",
           "rasterize_prompt"]
__version__ = "0.1.0"
