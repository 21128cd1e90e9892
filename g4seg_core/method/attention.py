"""Attention processors in the diffusers style: mask injection and attention capture.

`G4SegAttnProcessor` is swapped into every attention layer of the UNet. A layer does extra work
only while an `AttentionControl` asks it to, and only at the resolutions asked for; otherwise it
runs exactly the stock scaled-dot-product path, so an uncontrolled call equals a stock UNet call.

Injection adds a bias to the pre-softmax logits (the method page, step 4):
  cross-attention: +alpha*s*(2*m_i - 1) on the class's key tokens;
  self-attention:  +alpha*s*(2*(m_i*m_j + (1-m_i)*(1-m_j)) - 1).
Both biases are low-rank, so they are folded into extra query/key channels and the layer still
runs one fused scaled-dot-product attention (no HW x HW logits held in memory). `s` is the
exact per-head logit range (max - min over every query and key) of the layer on the reference
pass: recorded once per region (`AttentionControl.record_ranges`) and reused by every
mask-conditioned pass, so each iteration pays nothing for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


@dataclass
class MaskInjection:
    """Masks to inject: `mask` is (B, h, w) in [0,1] at latent size; `token_mask` is (B, L) for the class tokens."""

    mask: torch.Tensor
    token_mask: torch.Tensor
    alpha: float = 1.0
    cross: bool = True
    self_attn: bool = True
    resolutions: tuple[int, ...] | None = None  # side lengths (min of h, w) to inject at; None: all
    # Per layer name: (B, heads, 1, 1) logit ranges of the reference pass; a layer without one
    # computes the exact range of its own logits.
    ranges: dict | None = None
    _projected: dict = field(default_factory=dict, repr=False)

    def active(self, is_cross: bool, side: int) -> bool:
        if self.alpha == 0 or (is_cross and not self.cross) or (not is_cross and not self.self_attn):
            return False
        return self.resolutions is None or side in self.resolutions

    def projected(self, hw: tuple[int, int]) -> torch.Tensor:
        """The mask area-averaged to a layer's (h, w), flattened to (B, h*w)."""
        if hw not in self._projected:
            m = F.interpolate(self.mask[:, None].float(), size=hw, mode="area")
            self._projected[hw] = m.flatten(1)
        return self._projected[hw]


@dataclass
class AttentionCapture:
    """Sums attention probabilities over heads and layers, per resolution side.

    cross[side]: (B, h*w, L) summed probabilities; self_[side]: (B, h*w, h*w); counts: layers summed.
    """

    cross_resolutions: tuple[int, ...] = ()
    self_resolutions: tuple[int, ...] = ()
    cross: dict = field(default_factory=dict)
    self_: dict = field(default_factory=dict)
    cross_counts: dict = field(default_factory=dict)
    self_counts: dict = field(default_factory=dict)

    def active(self, is_cross: bool, side: int) -> bool:
        return side in (self.cross_resolutions if is_cross else self.self_resolutions)

    def add(self, is_cross: bool, side: int, probs: torch.Tensor) -> None:
        store, counts = (self.cross, self.cross_counts) if is_cross else (self.self_, self.self_counts)
        mean_heads = probs.float().mean(dim=1)  # (B, Nq, Nk)
        store[side] = store[side] + mean_heads if side in store else mean_heads
        counts[side] = counts.get(side, 0) + 1

    def mean_cross(self, side: int) -> torch.Tensor:
        return self.cross[side] / self.cross_counts[side]

    def mean_self(self, side: int) -> torch.Tensor:
        return self.self_[side] / self.self_counts[side]


class AttentionControl:
    """What the processors should do during the next UNet call. One per loaded model, not global."""

    def __init__(self):
        self.latent_hw: tuple[int, int] | None = None
        self.injection: MaskInjection | None = None
        self.capture: AttentionCapture | None = None
        self.record_ranges: dict | None = None  # when set, each layer stores its exact logit range here

    def layer_hw(self, tokens: int) -> tuple[int, int]:
        h, w = self.latent_hw
        factor = math.sqrt(h * w / tokens)
        return max(1, round(h / factor)), max(1, round(w / factor))


def logit_range(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int = 1024) -> torch.Tensor:
    """Per (batch, head) max - min of the logits q.k*scale over every query and key: (B, H, 1, 1).
    Queries go in chunks so that no more than chunk x keys logits are held at once."""
    top = bottom = None
    for start in range(0, q.shape[2], chunk):
        logits = torch.matmul(q[:, :, start : start + chunk].float(), k.float().transpose(-1, -2)) * scale
        hi, lo = logits.amax(dim=(-1, -2)), logits.amin(dim=(-1, -2))
        top = hi if top is None else torch.maximum(top, hi)
        bottom = lo if bottom is None else torch.minimum(bottom, lo)
    return (top - bottom)[..., None, None]


class G4SegAttnProcessor:
    """Scaled-dot-product attention with optional mask injection and capture (see module docstring)."""

    def __init__(self, control: AttentionControl, name: str = ""):
        self.control = control
        self.name = name  # the layer's name: the key of its recorded logit range

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        is_cross = encoder_hidden_states is not None
        if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None or attention_mask is not None:
            raise NotImplementedError("G4SegAttnProcessor supports Stable Diffusion 1.x/2.x attention layers only")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        control = self.control
        injection = capture = None
        if control.latent_hw is not None:
            hw = control.layer_hw(tokens)
            side = min(hw)
            if control.injection is not None and control.injection.active(is_cross, side):
                injection = control.injection
            if control.capture is not None and control.capture.active(is_cross, side):
                capture = control.capture

        if capture is not None:
            # Explicit probabilities are needed to record them; capture never injects.
            probs = torch.softmax(torch.matmul(query, key.transpose(-1, -2)).float() * attn.scale, dim=-1)
            capture.add(is_cross, side, probs)
            out = torch.matmul(probs.to(value.dtype), value)
        elif injection is not None:
            recorded = injection.ranges.get(self.name) if injection.ranges else None
            s = (recorded if recorded is not None else logit_range(query, key, attn.scale)) * injection.alpha  # (B, H, 1, 1)
            m = injection.projected(hw).to(query.dtype)[:, None, :, None]  # (B, 1, N, 1)
            q_scaled = query * attn.scale
            if is_cross:
                tok = injection.token_mask.to(query.dtype)[:, None, :, None].expand(-1, attn.heads, -1, -1)
                q_extra = (s * (2 * m - 1)).to(query.dtype).expand(-1, attn.heads, -1, -1)
                k_extra = tok
            else:
                # 2*alpha*s*(m_i m_j + (1-m_i)(1-m_j)); the constant -alpha*s cancels in the softmax.
                mq = torch.cat([m, 1 - m], dim=-1).expand(-1, attn.heads, -1, -1)
                q_extra, k_extra = (2 * s).to(query.dtype) * mq, mq
            q_aug, k_aug, v_pad = fused_heads([q_scaled, q_extra], [key, k_extra], [value])
            out = F.scaled_dot_product_attention(q_aug, k_aug, v_pad, dropout_p=0.0, scale=1.0)[..., :head_dim]
        else:
            if control.record_ranges is not None:
                control.record_ranges[self.name] = logit_range(query, key, attn.scale)
            out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def fused_heads(*parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """q, k and v, each given as (B, H, N, d_i) pieces joined along the head size, zero-padded to
    one head size that is a multiple of 8, laid out (B, N, H, D) in memory like the stock path.

    Zeros change neither the logits nor the output. The fused kernels ask for this: CPU flash
    and CUDA flash need q, k and v of one head size (<= 256); CUDA memory-efficient attention a
    head size that is a multiple of 8 in half precision; cuDNN attention (first choice on sm90
    and newer with a recent cuDNN) a multiple of 8 and the (B, N, H, D) layout. Otherwise SDPA
    falls back to a slower kernel (the math path is ~4x slower on the CPU).
    """
    width = -(-max(sum(p.shape[-1] for p in group) for group in parts) // 8) * 8
    out = []
    for group in parts:
        b, h, n, _ = group[0].shape
        buffer = group[0].new_zeros(b, n, h, width).transpose(1, 2)  # (B, H, N, D) view of (B, N, H, D)
        start = 0
        for piece in group:
            buffer[..., start : start + piece.shape[-1]] = piece
            start += piece.shape[-1]
        out.append(buffer)
    return out


def install_processors(unet, control: AttentionControl) -> None:
    """Swap a G4SegAttnProcessor into every attention layer of `unet`, each knowing its layer's name."""
    unet.set_attn_processor({name: G4SegAttnProcessor(control, name) for name in unet.attn_processors})
