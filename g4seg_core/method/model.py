"""A loaded Stable Diffusion model with the calls the method needs, each counted.

`SDModel` holds the UNet (with G4Seg attention processors swapped in), the VAE, the text encoder,
the tokenizer and the noise schedule. It knows nothing about masks or caches: the refiner and
the text-only segmenters build on it.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

from g4seg_core.errors import SettingError, UserError
from g4seg_core.method.attention import (
    AttentionCapture,
    AttentionControl,
    MaskInjection,
    install_processors,
)
from g4seg_core.method.loading import (
    DECODER_PATTERNS,
    DEFAULT_DECODER,
    default_model,
    locate_decoder,
    locate_weights,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)


class SDModel:
    def __init__(self, unet, vae, text_encoder, tokenizer, alphas_cumprod, prediction_type="epsilon", name="model",
                 is_tiny=False, fast_decoder=None):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        # Optional diffusers AutoencoderTiny (TAESD): decodes latents to RGB for a fraction of the VAE's
        # cost. Channels-last: its 64-channel convolutions at full resolution run ~20% faster so.
        self.fast_decoder = None if fast_decoder is None else fast_decoder.to(memory_format=torch.channels_last)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.prediction_type = prediction_type
        self.name = name
        self.is_tiny = is_tiny
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.control = AttentionControl()
        install_processors(unet, self.control)
        self.calls = Counter()  # unet, vae_encode, vae_decode, text: for tests and benchmarks
        self.compiled: str | None = None  # the torch.compile backend of the UNet, if compiled
        self._features = None
        self._want_features = False
        # Decoder features at latent resolution, for the "features" discrepancy space.
        unet.up_blocks[-1].register_forward_hook(self._keep_features)
        for module in (unet, vae, text_encoder, fast_decoder):
            if module is not None:
                module.eval().requires_grad_(False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
                        decoder: str | None = "auto", compile: str | None = None) -> "SDModel":
        """`decoder`: the fast RGB decoder (`resolve_decoder`): auto, none, a folder or a hub id.
        `compile`: `torch.compile` the UNet (`resolve_compile`; default $G4SEG_COMPILE, else off)."""
        backend = resolve_compile(compile)
        from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        model = model or default_model()
        folder = locate_weights(model)
        decoder_folder = resolve_decoder(decoder, folder)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        kwargs = dict(use_safetensors=True, local_files_only=True, torch_dtype=dt)
        fast_decoder = None
        if decoder_folder is not None:
            fast_decoder = AutoencoderTiny.from_pretrained(decoder_folder, **kwargs).to(dev)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs).to(dev)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs).to(dev)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True,
                                                     local_files_only=True, dtype=dt).to(dev)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        is_tiny = (folder / "g4seg_tiny.json").exists()
        if is_tiny:
            log.warning("%s is g4seg's tiny random-weight model: its masks are meaningless (tests and demos only)", folder)
        name = Path(model).name if Path(model).exists() else model
        loaded = cls(unet, vae, text_encoder, tokenizer, scheduler.alphas_cumprod,
                     scheduler.config.prediction_type, name=name, is_tiny=is_tiny, fast_decoder=fast_decoder)
        if backend is not None:
            loaded.compile_unet(backend)
        return loaded

    def compile_unet(self, backend: str = "inductor") -> None:
        """`torch.compile` the UNet in place (its attention processors included). The first call of
        each kind (reference pass, injected pass, batch size) compiles: minutes with inductor. Pays
        off on a GPU serving many clicks; on a CPU the compile rarely earns back its time."""
        self.unet.compile(backend=backend)
        self.compiled = backend

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def native_size(self) -> int:
        """The working resolution the model was trained at (512 for SD 2.1-base)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Working sizes must be multiples of this (VAE factor x UNet downsamplings)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def working_size(self, requested: int | None) -> int:
        """The working resolution to use: `requested`, or the native size; checked against the UNet."""
        size = requested or self.native_size
        if size % self.size_multiple:
            raise SettingError(f"working_size must be a multiple of {self.size_multiple} for this model, got {size}")
        return size

    # ---- calls ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        self.calls["text"] += 1
        return self.text_encoder(ids)[0].to(self.dtype)

    def token_positions(self, prompt: str, words: str) -> list[int]:
        """Positions of `words`' tokens in the tokenised `prompt` (CLIP tokenises word by word)."""
        prompt_ids = self.tokenizer(prompt, truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        word_ids = self.tokenizer(words, add_special_tokens=False).input_ids
        n = len(word_ids)
        for start in range(len(prompt_ids) - n, -1, -1):  # the last occurrence: the class ends the prompt
            if n and prompt_ids[start : start + n] == word_ids:
                return list(range(start, start + n))
        raise UserError(f"{words!r} is not found in the tokenised prompt {prompt!r} (truncated?)")

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (posterior mean, scaled)."""
        self.calls["vae_encode"] += 1
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return posterior.mean * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, fast: bool = True) -> torch.Tensor:
        """Latents -> (B, 3, H, W) in [-1, 1] (float32); by the fast decoder when there is one."""
        if fast and self.fast_decoder is not None:
            self.calls["fast_decode"] += 1  # TAESD takes the UNet's (scaled) latents as they are
            latents = latents.to(self.dtype).contiguous(memory_format=torch.channels_last)
            return self.fast_decoder.decode(latents).sample.float().clamp(-1, 1)
        self.calls["vae_decode"] += 1
        return self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample.float().clamp(-1, 1)

    def noise(self, shape, seed: int) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def add_noise(self, z0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alphas_cumprod[t].item()
        return (a**0.5) * z0.float() + ((1 - a) ** 0.5) * eps

    @torch.no_grad()
    def predict_x0(self, z_t: torch.Tensor, t: int, text: torch.Tensor, injection: MaskInjection | None = None,
                   capture: AttentionCapture | None = None, keep_features: bool = False) -> torch.Tensor:
        """One UNet call and its one-step estimate of the clean latent x0 (float32)."""
        self.control.latent_hw = tuple(z_t.shape[-2:])
        self.control.injection, self.control.capture = injection, capture
        self._want_features = keep_features
        try:
            timestep = torch.full((z_t.shape[0],), t, device=self.device, dtype=torch.long)
            out = self.unet(z_t.to(self.dtype), timestep, encoder_hidden_states=text).sample.float()
        finally:
            self.control.injection = self.control.capture = None
            self._want_features = False
        self.calls["unet"] += 1
        a = self.alphas_cumprod[t].item()
        if self.prediction_type == "v_prediction":
            return (a**0.5) * z_t.float() - ((1 - a) ** 0.5) * out
        return (z_t.float() - ((1 - a) ** 0.5) * out) / (a**0.5)

    def take_features(self) -> torch.Tensor:
        feats, self._features = self._features, None
        return feats

    def _keep_features(self, module, inputs, output):
        if self._want_features:
            self._features = output.float()

    def describe(self) -> dict:
        return {"model": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "tiny": self.is_tiny, "fast_decoder": self.fast_decoder is not None, "compiled": self.compiled}


def resolve_compile(choice: str | None) -> str | None:
    """The torch.compile backend for the UNet, or None (off, the default). `choice` (else
    $G4SEG_COMPILE): off/0/false/none/empty, on/1/true (inductor), or a torch.compile backend name."""
    if choice is None:
        choice = os.environ.get("G4SEG_COMPILE", "")
    choice = str(choice).strip().lower()
    if choice in ("", "0", "off", "false", "no", "none"):
        return None
    if choice in ("1", "on", "true", "yes"):
        return "inductor"
    import torch

    if choice not in torch._dynamo.list_backends(exclude_tags=()):
        raise SettingError(f"G4SEG_COMPILE={choice!r}: not a torch.compile backend (use on, off or one of "
                           f"{', '.join(torch._dynamo.list_backends())})")
    return choice


def resolve_decoder(decoder: str | None, model_folder: Path) -> Path | None:
    """The fast decoder's folder, or None. `auto`: $G4SEG_DECODER when set, else a `taesd/`
    folder inside the model folder, else TAESD in the hub cache (never downloaded for auto);
    `none`: no fast decoder; anything else is a folder or hub id that must be found."""
    choice = (decoder or "none").strip()
    if choice.lower() == "auto":
        choice = os.environ.get("G4SEG_DECODER", "").strip() or "auto"
    if choice.lower() == "none":
        return None
    if choice.lower() != "auto":
        return locate_decoder(choice)
    inside = model_folder / "taesd"
    if inside.is_dir():
        return locate_decoder(str(inside))
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(DEFAULT_DECODER, allow_patterns=DECODER_PATTERNS, local_files_only=True))
        return locate_decoder(str(cached))
    except Exception:
        log.info("no fast decoder found (%s is not cached): the RGB discrepancy would use the full VAE", DEFAULT_DECODER)
        return None


@contextmanager
def counting(model: SDModel):
    """Counts of model calls made inside the block."""
    before = Counter(model.calls)
    delta = Counter()
    try:
        yield delta
    finally:
        delta.update(model.calls)
        delta.subtract(before)


