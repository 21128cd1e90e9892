"""Loading weights: safetensors only, offline from a folder, one clear message when nothing is found."""
import shutil
import socket

import pytest

from g4seg_core.errors import SettingError
from g4seg_core.method import loading
from g4seg_core.method.loading import (
    WeightsNotFoundError,
    locate_weights,
    resolve_device,
    resolve_dtype,
)
from g4seg_core.method.model import SDModel


def test_tiny_model_loads_through_the_real_path_without_network(tiny_model_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("loading a local folder must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    assert model.is_tiny and model.native_size == 128
    assert model.describe()["dtype"] == "float32"


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(copy / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsNotFoundError, match=r"no \.safetensors weights in .*unet.*pickled weights are never loaded"):
        locate_weights(str(copy))


def test_missing_folder_and_uncached_hub_id_say_where_they_looked(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        locate_weights(str(tmp_path / "nothing-here"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights("someone/not-a-cached-model")
    message = str(info.value)
    assert "someone/not-a-cached-model" in message and "hub cache" in message and "G4SEG_MODEL" in message
    assert "\n" not in message


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(WeightsNotFoundError, match="not a diffusers model folder: it has no unet/ subfolder"):
        locate_weights(str(tmp_path))


def test_device_and_dtype_resolution(monkeypatch):
    import torch

    cpu = resolve_device("auto")  # no GPU on these machines: CPU
    assert cpu.type in ("cpu", "cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setenv("G4SEG_CPU_DTYPE", "float32")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.delenv("G4SEG_CPU_DTYPE")
    # Unset: bfloat16 only where the CPU computes it in hardware (else it runs at half float32's speed).
    monkeypatch.setattr(loading, "cpu_computes_bfloat16", lambda: True)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_computes_bfloat16", lambda: False)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(SettingError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(SettingError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_sd15_style_models_load_and_refine(tmp_path):
    import numpy as np

    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.refiner import G4SegRefiner
    from g4seg_core.method.tiny import make_tiny_model
    from g4seg_core.prompts import Prompt

    folder = make_tiny_model(tmp_path / "sd15", style="sd15")
    model = SDModel.from_pretrained(str(folder), device="cpu", dtype="float32")
    assert not model.unet.config.use_linear_projection
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 80), bool)
    mask[16:48, 20:60] = True
    trace = G4SegRefiner(model, RefinerConfig(iterations=1, early_stop=False)).refine_trace(image, Prompt(mask=mask), "cat")
    assert trace.iterations == 1 and trace.mask.shape == (64, 80)
    assert (trace.probability != mask).any()  # the injected pass ran and moved something


def test_the_fast_decoder_loads_through_the_same_path_and_decodes_rgb(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from g4seg_core.method.loading import locate_decoder
    from g4seg_core.method.model import counting

    def no_network(*args, **kwargs):
        raise AssertionError("loading a local decoder must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("G4SEG_DECODER", raising=False)
    found = SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")  # auto: its taesd/
    assert found.fast_decoder is not None and found.describe()["fast_decoder"]
    latents = torch.randn(2, 4, 16, 16)
    with counting(found) as calls:
        rgb = found.decode_latents(latents)
    assert rgb.shape == (2, 3, 128, 128) and rgb.min() >= -1 and rgb.max() <= 1
    assert calls["fast_decode"] == 1 and calls["vae_decode"] == 0
    none = SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", decoder="none")
    assert none.fast_decoder is None
    # A decoder elsewhere, named by folder or by G4SEG_DECODER; pickles refused as for the model.
    shutil.copytree(tiny_model_dir / "taesd", tmp_path / "taesd-copy")
    monkeypatch.setenv("G4SEG_DECODER", str(tmp_path / "taesd-copy"))
    assert SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32").fast_decoder is not None
    (tmp_path / "taesd-copy" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "taesd-copy" / "model.bin")
    with pytest.raises(WeightsNotFoundError, match="not an AutoencoderTiny folder"):
        locate_decoder(str(tmp_path / "taesd-copy"))
    with pytest.raises(WeightsNotFoundError, match="fast decoder .* does not exist"):
        locate_decoder(str(tmp_path / "absent"))


def test_auto_space_is_rgb_with_a_fast_decoder_and_latent_without(tiny_model, tiny_model_dir):
    from g4seg_core.method.refiner import G4SegRefiner

    assert tiny_model.fast_decoder is not None and G4SegRefiner(tiny_model).space == "rgb"
    bare = SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32", decoder="none")
    assert G4SegRefiner(bare).space == "latent"


def test_compile_is_off_unless_asked_and_the_compiled_unet_injects_the_same(tiny_model, tiny_model_dir, monkeypatch):
    import torch

    from g4seg_core.method.attention import MaskInjection
    from g4seg_core.method.model import resolve_compile

    monkeypatch.delenv("G4SEG_COMPILE", raising=False)
    assert resolve_compile(None) is None and resolve_compile("off") is None and tiny_model.compiled is None
    assert resolve_compile("on") == "inductor" and resolve_compile("1") == "inductor"
    with pytest.raises(SettingError, match="not a torch.compile backend"):
        resolve_compile("fastest")
    # Dynamo traces the UNet through our attention processors (a mask-injected pass); the eager
    # backend keeps the test to seconds (inductor would compile C++ for minutes).
    monkeypatch.setenv("G4SEG_COMPILE", "eager")
    compiled = SDModel.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    assert compiled.compiled == "eager"
    z, text = tiny_model.noise((1, 4, 16, 16), seed=0), tiny_model.encode_text(["a photograph of a cat"])
    tokens = torch.zeros(1, 77)
    tokens[0, 5] = 1
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 40:100] = 1
    expected = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, alpha=2.0))
    got = compiled.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, alpha=2.0))
    assert not torch.allclose(expected, tiny_model.predict_x0(z, 100, text))  # the injection does something
    assert torch.allclose(got, expected, atol=1e-5)
