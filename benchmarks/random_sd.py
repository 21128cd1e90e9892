"""The full-size Stable Diffusion architecture with random weights, for speed and memory benchmarks.

A random weight costs exactly what a trained one does. Built from a diffusers folder's configs and
tokenizer (default: ../shared/models/sd21-base, SD 2.1-base) without any weights file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from benchmarks._report import DEFAULT_CONFIG_DIR


def build_random_sd(config_dir: Path = DEFAULT_CONFIG_DIR, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    seed: int = 0, fast_decoder: bool = True):
    """`fast_decoder`: add TAESD's architecture (diffusers AutoencoderTiny defaults) with random weights."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from g4seg_core.method.model import SDModel

    config_dir = Path(config_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(config_dir / "tokenizer")
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(config_dir / "scheduler"))
    tiny = AutoencoderTiny().to(device=device, dtype=dtype) if fast_decoder else None
    unet, vae, text_encoder = (m.to(device=device, dtype=dtype) for m in (unet, vae, text_encoder))
    return SDModel(unet, vae, text_encoder, tokenizer, scheduler.alphas_cumprod, scheduler.config.prediction_type,
                   name=f"{config_dir.name}-random-weights", fast_decoder=tiny)
