"""Finding Stable Diffusion weights: a local diffusers folder or a hub id, safetensors only.

A local folder never touches the network. A hub id is looked up in the hub cache first
(`local_files_only`), and downloaded (safetensors and configs only) only when it is not cached
and the hub is not switched off (`HF_HUB_OFFLINE=1`).
"""
from __future__ import annotations

import os
from pathlib import Path

from g4seg_core.errors import SettingError, WeightsNotFoundError, one_line

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
COMPONENTS = ("unet", "vae", "text_encoder")
# Only what loading needs: configs, tokenizer files and safetensors weights (never pickles).
ALLOW_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "*/config.json",
    "unet/*.safetensors",
    "vae/*.safetensors",
    "text_encoder/*.safetensors",
    "g4seg_tiny.json",
]


# The fast decoder for the RGB discrepancy: TAESD (AutoencoderTiny) for SD 1.x/2.x latents.
DEFAULT_DECODER = "madebyollin/taesd"
DECODER_PATTERNS = ["config.json", "*.safetensors"]


def default_model() -> str:
    return os.environ.get("G4SEG_MODEL") or DEFAULT_MODEL


def resolve_device(device: str = "auto"):
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise SettingError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N)")
    return torch.device(device)


DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (x86 AVX512-BF16 or AMX; Arm BF16).
    Without it PyTorch converts to float32 around every operation, and bfloat16 runs about half
    as fast as float32 (measured: docs/performance.md)."""
    import platform

    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        if any(probe is not None and probe() for probe in probes):
            return True
    except RuntimeError:
        pass
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            return " bf16" in Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return False


def resolve_dtype(dtype: str, device):
    """`auto`: fp16 on CUDA; on CPU the G4SEG_CPU_DTYPE setting, else bfloat16 where the CPU
    computes it in hardware and float32 where it does not."""
    import torch

    dtype = (dtype or "auto").lower()
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        dtype = os.environ.get("G4SEG_CPU_DTYPE", "").strip().lower() or (
            "bfloat16" if cpu_computes_bfloat16() else "float32")
    if dtype not in DTYPE_NAMES:
        raise SettingError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16, float16)")
    resolved = getattr(torch, DTYPE_NAMES[dtype])
    if resolved == torch.float16 and device.type == "cpu":
        raise SettingError("float16 is not supported on the CPU; use bfloat16 or float32")
    return resolved


def _check_safetensors(folder: Path) -> None:
    for component in COMPONENTS:
        sub = folder / component
        if not sub.is_dir():
            raise WeightsNotFoundError(f"{folder} is not a diffusers model folder: it has no {component}/ subfolder")
        if not any(sub.glob("*.safetensors")):
            pickles = sorted(p.name for p in sub.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth"))
            hint = f" (found {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)" if pickles else ""
            raise WeightsNotFoundError(f"no .safetensors weights in {sub}{hint}")


def locate_weights(model: str | None = None) -> Path:
    """The local folder holding `model`'s weights, downloading from the hub only if allowed and needed."""
    model = model or default_model()
    return _locate(model, ALLOW_PATTERNS, _check_safetensors, "Stable Diffusion weights", "--model or G4SEG_MODEL")


def locate_decoder(decoder: str) -> Path:
    """The folder of a fast decoder (diffusers AutoencoderTiny: config.json and safetensors), found
    like the main weights: a local folder, else the hub cache, else the hub when allowed."""
    return _locate(decoder, DECODER_PATTERNS, _check_decoder, "fast decoder", "--decoder or G4SEG_DECODER")


def _check_decoder(folder: Path) -> None:
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise WeightsNotFoundError(f"{folder} is not an AutoencoderTiny folder (config.json and .safetensors weights)")


def _locate(name: str, patterns: list[str], check, what: str, option: str) -> Path:
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise WeightsNotFoundError(f"{what} folder {path} does not exist; point {option} at a diffusers folder or a hub id")
        check(path)
        return path

    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
        check(folder)
        return folder
    except Exception as cached_error:  # not cached (or incomplete): try the hub if allowed
        if HF_HUB_OFFLINE:
            raise WeightsNotFoundError(_not_found(what, name, HF_HUB_CACHE, option,
                                                  f"not in the cache ({one_line(cached_error)}) and HF_HUB_OFFLINE=1")) from None
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:
        raise WeightsNotFoundError(_not_found(what, name, HF_HUB_CACHE, option, f"download failed: {one_line(exc)}")) from None
    check(folder)
    return folder


def _not_found(what: str, model: str, cache: str, option: str, why: str) -> str:
    return (
        f"{what} {model!r} not found: looked for a local folder of that name and in the hub cache "
        f"{cache}; {why}. Point {option} at a local diffusers folder (safetensors), or fill the cache "
        f"once where the hub is reachable (hf download {model})."
    )


def check_prompt_length(folder: Path, prompts: dict[str, str]) -> None:
    """Each label's prompt fits the text encoder (CLIP: 77 tokens), checked with the model's own
    tokenizer before the model loads; `prompts` maps a label to its full prompt."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    for label, prompt in prompts.items():
        count = len(tokenizer(prompt, verbose=False).input_ids)
        if count > tokenizer.model_max_length:
            shown = label if len(label) <= 40 else label[:40] + "..."
            raise SettingError(f"the class name {shown!r} is too long: its prompt is {count} tokens, the text "
                               f"encoder takes {tokenizer.model_max_length}")
