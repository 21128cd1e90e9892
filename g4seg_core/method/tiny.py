"""A tiny random-weight Stable Diffusion of the same architecture family, for tests and demos.

Same component classes as SD 2.1 (UNet with cross- and self-attention at several resolutions and
linear projections, an 8x VAE, a CLIP text encoder and tokenizer, a DDPM schedule), saved in the
diffusers layout with safetensors, so it loads through exactly the path real weights take.
Its outputs are meaningless; a marker file and a README say so.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from g4seg_core.errors import SettingError

TINY_README = """# g4seg tiny model: random weights, meaningless outputs

Written by `g4seg make-tiny-model` (seed {seed}). It has the architecture family of Stable
Diffusion 2.1 at a toy size and **random weights**: it exercises the loading path, the attention
processors and the refiner's mechanics in tests and demos. Masks it produces mean nothing.
Native working size: 128 pixels (16x16 latents).
"""


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP-style byte-level BPE vocabulary with no merges: every word becomes its characters."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def make_tiny_model(out_dir: str | Path, seed: int = 0, style: str = "sd2") -> Path:
    """Write the tiny model to `out_dir` (created; must be empty or absent). Returns the folder.

    `style`: "sd2" (linear projections, head count per block, like SD 2.x) or "sd15"
    (convolutional projections, fixed head size, like SD 1.x).
    """
    if style not in ("sd2", "sd15"):
        raise SettingError(f"style must be sd2 or sd15, got {style!r}")
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4, 4) if style == "sd2" else 2,
        cross_attention_dim=32,
        use_linear_projection=style == "sd2",
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    vocab = _byte_level_vocab()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed + 3)
    # A fast decoder (TAESD's architecture, tiny) in taesd/, where `decoder=auto` finds one.
    fast_decoder = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                   num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    # Write next to the target and rename, so a failure leaves no half-written model behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        fast_decoder.save_pretrained(staging / "taesd", safe_serialization=True)
        (staging / "README.md").write_text(TINY_README.format(seed=seed))
        (staging / "g4seg_tiny.json").write_text(json.dumps({"random_weights": True, "seed": seed, "style": style}))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
