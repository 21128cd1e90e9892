"""g4seg core: training-free mask refinement (G4Seg) and text-only segmentation on Stable Diffusion.

Importing this package is cheap; the model code (torch, diffusers) loads with the modules that need it.
"""
from .engine import Engine, RefineResult, resolve_overlaps
from .prompts import PriorConfig, Prompt, PromptError, rasterize_prompt

__all__ = ["Engine", "RefineResult", "resolve_overlaps", "Prompt", "PriorConfig", "PromptError", "rasterize_prompt"]
__version__ = "0.1.0"
