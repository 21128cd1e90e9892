"""The attention processors: stock behaviour when idle, injection where asked, capture of maps."""
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from g4seg_core.method.attention import AttentionCapture, MaskInjection


@pytest.fixture(scope="module")
def inputs(tiny_model):
    z = tiny_model.noise((1, 4, 16, 16), seed=0)
    text = tiny_model.encode_text(["a photograph of a cat"])
    tokens = torch.zeros(1, 77)
    tokens[0, tiny_model.token_positions("a photograph of a cat", "cat")] = 1
    return z, text, tokens


def test_idle_processors_match_the_stock_unet(tiny_model, inputs):
    z, text, _ = inputs
    ours = tiny_model.predict_x0(z, 100, text)
    processors = tiny_model.unet.attn_processors
    tiny_model.unet.set_attn_processor(AttnProcessor2_0())
    try:
        stock = tiny_model.predict_x0(z, 100, text)
    finally:
        tiny_model.unet.set_attn_processor(processors)
    assert torch.allclose(ours, stock, atol=1e-5)


def test_injection_only_at_the_resolutions_asked(tiny_model, inputs):
    z, text, tokens = inputs
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1
    base = tiny_model.predict_x0(z, 100, text)
    nowhere = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, alpha=1.0, resolutions=(99,)))
    assert torch.equal(nowhere, base)
    cross_only = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, alpha=1.0, self_attn=False))
    self_only = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, alpha=1.0, cross=False))
    assert not torch.allclose(cross_only, base) and not torch.allclose(self_only, base)
    assert not torch.allclose(cross_only, self_only)


def test_logit_range_is_exact_over_every_query_and_key_whatever_the_chunk():
    from g4seg_core.method.attention import logit_range

    q, k = torch.randn(2, 3, 1000, 16), torch.randn(2, 3, 77, 16)
    q[1, 2, 997] *= 40  # an extreme query far from any sampling stride
    exact = q @ k.transpose(-1, -2) * 0.25
    expected = exact.amax((-1, -2)) - exact.amin((-1, -2))
    for chunk in (1, 64, 1000, 4096):
        assert torch.allclose(logit_range(q, k, 0.25, chunk)[..., 0, 0], expected)


def test_the_reference_pass_records_each_layers_range_and_injection_reuses_it(tiny_model, inputs):
    z, text, tokens = inputs
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1
    ranges = {}
    tiny_model.control.record_ranges = ranges
    try:
        reference = tiny_model.predict_x0(z, 100, text)
    finally:
        tiny_model.control.record_ranges = None
    assert set(ranges) == set(tiny_model.unet.attn_processors)
    assert all(r.shape[0] == 1 and r.shape[2:] == (1, 1) and (r > 0).all() for r in ranges.values())
    assert torch.equal(reference, tiny_model.predict_x0(z, 100, text))  # recording changes nothing
    recorded = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens, ranges=ranges))
    own = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens))
    doubled = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(
        mask, tokens, ranges={name: 2 * r for name, r in ranges.items()}))
    assert not torch.allclose(recorded, doubled)  # the recorded ranges are what the bias uses
    assert not torch.equal(recorded, reference) and not torch.equal(own, reference)


def test_cross_injection_matches_the_bias_of_the_method_page(tiny_model, inputs):
    """The folded-channel implementation equals softmax(logits + alpha*s*(2m-1) on class tokens)."""
    from g4seg_core.method.attention import logit_range

    _, text, tokens = inputs
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1  # left half
    layer = tiny_model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    hidden = torch.randn(1, 256, layer.to_q.in_features)
    tiny_model.control.latent_hw = (16, 16)
    tiny_model.control.injection = MaskInjection(mask, tokens, alpha=1.0, self_attn=False)
    try:
        out_injected = layer.processor(layer, hidden, encoder_hidden_states=text)
    finally:
        tiny_model.control.injection = tiny_model.control.latent_hw = None
    q, k = _qk(layer, hidden, text)
    v = layer.to_v(text).view(1, -1, layer.heads, q.shape[-1]).transpose(1, 2)
    s = logit_range(q, k, layer.scale)
    m = mask[:, ::8, ::8].reshape(1, 1, 256, 1)
    logits = q @ k.transpose(-1, -2) * layer.scale
    biased = logits + s * (2 * m - 1) * tokens[:, None, None, :]
    expected = layer.to_out[0]((biased.softmax(-1) @ v).transpose(1, 2).reshape(1, 256, -1))
    assert torch.allclose(out_injected, expected, atol=1e-4)
    # Inside the mask the class gets more attention than without injection, outside less.
    gain = (biased.softmax(-1) - logits.softmax(-1))[..., tokens[0].bool()].sum(-1).mean(1)[0].reshape(16, 16)
    assert gain[:, :8].min() > 0 > gain[:, 8:].max()


def test_self_injection_matches_the_bias_of_the_method_page(tiny_model, inputs):
    from g4seg_core.method.attention import logit_range

    _, _, tokens = inputs
    mask = torch.rand(1, 128, 128)  # soft masks use m_i*m_j + (1-m_i)*(1-m_j)
    layer = tiny_model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    hidden = torch.randn(1, 256, layer.to_q.in_features)
    tiny_model.control.latent_hw = (16, 16)
    tiny_model.control.injection = MaskInjection(mask, tokens, alpha=0.7, cross=False)
    try:
        out_injected = layer.processor(layer, hidden)
    finally:
        tiny_model.control.injection = tiny_model.control.latent_hw = None
    q, k = _qk(layer, hidden, hidden)
    v = layer.to_v(hidden).view(1, -1, layer.heads, q.shape[-1]).transpose(1, 2)
    s = 0.7 * logit_range(q, k, layer.scale)
    m = torch.nn.functional.interpolate(mask[:, None], size=(16, 16), mode="area").reshape(1, 1, 256, 1)
    same_side = m * m.transpose(-1, -2) + (1 - m) * (1 - m.transpose(-1, -2))
    biased = q @ k.transpose(-1, -2) * layer.scale + s * (2 * same_side - 1)
    expected = layer.to_out[0]((biased.softmax(-1) @ v).transpose(1, 2).reshape(1, 256, -1))
    assert torch.allclose(out_injected, expected, atol=1e-4)


def _qk(layer, hidden, text):
    heads = layer.heads
    q = layer.to_q(hidden).view(1, -1, heads, layer.to_q.out_features // heads).transpose(1, 2)
    k = layer.to_k(text).view(1, -1, heads, layer.to_k.out_features // heads).transpose(1, 2)
    return q, k


def test_capture_records_row_stochastic_maps(tiny_model, inputs):
    z, text, _ = inputs
    capture = AttentionCapture(cross_resolutions=(16, 8), self_resolutions=(16,))
    tiny_model.predict_x0(z, 100, text, capture=capture)
    assert capture.mean_cross(16).shape == (1, 256, 77)
    assert capture.mean_cross(8).shape == (1, 64, 77)
    self16 = capture.mean_self(16)
    assert self16.shape == (1, 256, 256)
    assert torch.allclose(self16.sum(-1), torch.ones(1, 256), atol=1e-4)
    assert capture.self_counts[16] == 3  # one transformer on the way down, two on the way up


def test_injected_passes_run_in_the_fused_kernel(tiny_model, inputs):
    # With only the fused (flash) kernel allowed, SDPA raises rather than fall back to the slow path.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    z, text, tokens = inputs
    mask = torch.zeros(1, 128, 128)
    mask[:, 32:96, 32:96] = 1
    allowed = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = tiny_model.predict_x0(z, 100, text, injection=MaskInjection(mask, tokens))
    assert torch.equal(fused, allowed)


def test_padded_heads_have_one_size_a_multiple_of_8_in_the_stock_layout():
    from g4seg_core.method.attention import fused_heads

    q, k, v = torch.randn(2, 5, 30, 64), torch.randn(2, 5, 30, 64), torch.randn(2, 5, 30, 64)
    extra_q, extra_k = torch.randn(2, 5, 30, 2), torch.randn(2, 5, 30, 2)
    qa, ka, va = fused_heads([q, extra_q], [k, extra_k], [v])
    assert qa.shape == ka.shape == va.shape == (2, 5, 30, 72)
    # (B, N, H, D) in memory, as cuDNN attention asks: stride(1) == D, stride(2) == H * D.
    assert all(t.stride() == (30 * 5 * 72, 72, 5 * 72, 1) for t in (qa, ka, va))
    assert torch.equal(qa[..., :64], q) and torch.equal(qa[..., 64:66], extra_q) and not qa[..., 66:].any()
    assert torch.equal(va[..., :64], v) and not va[..., 64:].any()
    # Zeros change nothing: the padded attention equals the unpadded one.
    plain = torch.softmax(torch.cat([q, extra_q], -1) @ torch.cat([k, extra_k], -1).transpose(-1, -2), -1) @ v
    padded = torch.nn.functional.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., :64]
    assert torch.allclose(padded, plain, atol=1e-5)
