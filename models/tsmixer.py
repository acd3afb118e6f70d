"""TSMixer backbone and Tiny Time Mixers (Ekambaram et al. 2024, "Tiny Time Mixers (TTMs):
Fast Pre-trained Models for Enhanced Zero/Few-Shot Forecasting of Multivariate Time Series").

A univariate window is cut into patches; MLPs then mix alternately across patches (time)
and across each patch's hidden features (TSMixer, Ekambaram et al. 2023), each behind a
LayerNorm and a residual, optionally followed by a softmax "gated attention" that
reweights the mixed axis. No attention, no position table: order lives in the patch-mixing
weights, which is what keeps TTM under 1M parameters.

TTM's additions kept here:
- adaptive patching: level i of the encoder reshapes (N patches, D features) into
  (N * 2^i, D / 2^i), so early levels see finer, shorter patches and the last the patches
  as cut (levels run finest first, like TTM's `reversed(range(levels))`);
- resolution prefix: a learned embedding of the series' sampling resolution is prepended
  as one extra patch, so one model can tell yearly from weekly data;
- a small decoder (a narrower TSMixer) after a linear adapter, and a linear head from the
  flattened decoder patches to the `horizon` forecast values.

Inputs arrive standardised per window (pretrain/data/series.py), so the model regresses
standardised values directly; TTM's channel mixing, exogenous infusion and dropout are not
built (see configs/ttm.py NOT_IMPLEMENTED).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, Embed, LayerNorm, gelu
from models.partitioning import constrain
from models.transformer import DTYPES, check_choice

ACT = ("batch", "length", "act_embed")
# TTMConfig field -> the config key that sets it (for error messages).
_CONFIG_KEYS = {"context_len": "data.context_len", "horizon": "data.horizon",
                "patch_len": "model.patch_len", "patch_stride": "model.patch_stride",
                "d_model": "model.d_model", "num_layers": "model.num_layers",
                "expansion": "model.expansion_factor", "decoder_d_model": "model.decoder_d_model",
                "decoder_layers": "model.decoder_num_layers"}


def dense(in_shape, out_dim: int, axes, cfg: TTMConfig, rngs: nnx.Rngs, **kw) -> Dense:
  """A Dense with PyTorch's default variance, 1 / (3 fan_in) (TTM's `init_linear=pytorch`):
  a tiny mixer needs its signal to reach the head at init, which 0.02 does not give."""
  fan_in = math.prod(in_shape) if isinstance(in_shape, tuple) else in_shape
  return Dense(in_shape, out_dim, axes, dtype=cfg.dtype, init_std=(3 * fan_in) ** -0.5,
               rngs=rngs, **kw)


@dataclasses.dataclass(frozen=True)
class TTMConfig:
  context_len: int
  horizon: int
  patch_len: int
  patch_stride: int
  d_model: int
  num_layers: int
  expansion: int
  adaptive_levels: int  # 0: one block at full size; L: L blocks, block i at 2^i finer
  decoder_d_model: int
  decoder_layers: int
  num_resolutions: int = 0  # > 0: prepend a resolution-prefix patch from this vocabulary
  gated_attn: bool = True
  ln_eps: float = 1e-5
  dtype: str = "float32"

  @property
  def num_patches(self) -> int:
    """Patches the encoder mixes, with the resolution prefix when there is one."""
    cut = (self.context_len - self.patch_len) // self.patch_stride + 1
    return cut + (self.num_resolutions > 0)

  def validate(self) -> None:
    check_choice("model.dtype", self.dtype, DTYPES)
    for field, key in _CONFIG_KEYS.items():
      if getattr(self, field) <= 0:
        raise ValueError(f"{key}={getattr(self, field)}: must be > 0")
    if self.patch_len > self.context_len:
      raise ValueError(f"model.patch_len={self.patch_len} exceeds data.context_len="
                       f"{self.context_len}")
    finest = 2 ** max(self.adaptive_levels - 1, 0)
    if self.adaptive_levels < 0 or self.d_model % finest:
      raise ValueError(f"model.adaptive_levels={self.adaptive_levels}: needs >= 0 levels and "
                       f"model.d_model={self.d_model} divisible by 2^(levels-1)={finest}")


def patchify_series(x: jax.Array, patch_len: int, stride: int) -> jax.Array:
  """(B, L) -> (B, N, patch_len), N = (L - patch_len) // stride + 1. When the strides do not
  tile L exactly, the oldest values are dropped (the most recent patch ends at L)."""
  n = (x.shape[-1] - patch_len) // stride + 1
  start = x.shape[-1] - (n - 1) * stride - patch_len
  index = start + jnp.arange(n)[:, None] * stride + jnp.arange(patch_len)
  return x[..., index]


class MixerMlp(nnx.Module):
  """Mixes the last axis: dim -> dim * expansion -> dim (exact GELU), then (`gated_attn`) the
  gated attention x * softmax(W x) over the same axis."""

  def __init__(self, dim: int, axis: str, cfg: TTMConfig, *, rngs: nnx.Rngs):
    hidden = dim * cfg.expansion
    self.wi = dense(dim, hidden, (axis, "mlp"), cfg, rngs)
    self.wo = dense(hidden, dim, ("mlp", axis), cfg, rngs)
    self.gate = dense(dim, dim, (axis, None), cfg, rngs) if cfg.gated_attn else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.wo(gelu(self.wi(x), "gelu_exact"))
    if self.gate is not None:
      x = x * jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1).astype(x.dtype)
    return x


class MixerLayer(nnx.Module):
  """TSMixer layer on (B, N, D): patch mixing (across N) then feature mixing (across D),
  each pre-normed over D with a residual."""

  def __init__(self, num_patches: int, dim: int, cfg: TTMConfig, *, rngs: nnx.Rngs):
    self.patch_norm = LayerNorm(dim, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.patch_mix = MixerMlp(num_patches, "patch", cfg, rngs=rngs)
    self.feature_norm = LayerNorm(dim, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.feature_mix = MixerMlp(dim, "embed", cfg, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    mixed = self.patch_mix(jnp.swapaxes(self.patch_norm(x), 1, 2))  # (B, D, N)
    x = x + jnp.swapaxes(mixed, 1, 2)
    return x + self.feature_mix(self.feature_norm(x))


class MixerBlock(nnx.Module):
  """`num_layers` MixerLayers at (N * factor, D / factor): one adaptive-patching level."""

  def __init__(self, num_patches: int, dim: int, num_layers: int, factor: int,
               cfg: TTMConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([MixerLayer(num_patches * factor, dim // factor, cfg, rngs=rngs)
                            for _ in range(num_layers)])
    self.factor = factor

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    x = x.reshape(b, n * self.factor, d // self.factor)
    for layer in self.layers:
      x = layer(x)
    return x.reshape(b, n, d)


class TinyTimeMixer(nnx.Module):
  """context (B, context_len), resolution (B,) int -> forecast (B, horizon) float32."""

  def __init__(self, cfg: TTMConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    n, d = cfg.num_patches, cfg.d_model
    self.patch_embed = dense(cfg.patch_len, d, (None, "embed"), cfg, rngs)
    self.resolution_embed = (Embed(cfg.num_resolutions, d, init_std=1.0, rngs=rngs)
                             if cfg.num_resolutions else None)
    self.encoder = nnx.List([
        MixerBlock(n, d, cfg.num_layers, 2 ** level, cfg, rngs=rngs)
        for level in reversed(range(max(cfg.adaptive_levels, 1)))])
    self.adapter = dense(d, cfg.decoder_d_model, ("embed", None), cfg, rngs)
    self.decoder = MixerBlock(n, cfg.decoder_d_model, cfg.decoder_layers, 1, cfg, rngs=rngs)
    self.head = dense((n, cfg.decoder_d_model), cfg.horizon, ("patch", None, None), cfg, rngs,
                      out_dtype="float32")
    self.cfg = cfg

  def encode(self, context: jax.Array, resolution: jax.Array) -> jax.Array:
    """(B, N, d_model) patch features after the encoder (prefix patch first, if any)."""
    cfg = self.cfg
    x = self.patch_embed(patchify_series(context, cfg.patch_len, cfg.patch_stride))
    if self.resolution_embed is not None:
      prefix = self.resolution_embed(resolution)[:, None].astype(x.dtype)  # (B, 1, D)
      x = jnp.concatenate([prefix, x], axis=1)
    x = constrain(x, ACT)
    for block in self.encoder:
      x = block(x)
    return x

  def __call__(self, context: jax.Array, resolution: jax.Array) -> jax.Array:
    hidden = self.decoder(self.adapter(self.encode(context, resolution)))
    return self.head(hidden)


def ttm_flops_per_example(cfg: TTMConfig) -> float:
  """Forward matmul FLOPs of one window (2 per multiply-add)."""
  n, d, e = cfg.num_patches, cfg.d_model, cfg.expansion
  gate = 1 if cfg.gated_attn else 0

  def layer(n_, d_):  # patch mixing over d_ columns, feature mixing over n_ rows
    return d_ * n_ * n_ * (2 * e + gate) + n_ * d_ * d_ * (2 * e + gate)

  encoder = sum(cfg.num_layers * layer(n * 2 ** i, d // 2 ** i)
                for i in range(max(cfg.adaptive_levels, 1)))
  decoder = cfg.decoder_layers * layer(n, cfg.decoder_d_model)
  linear = n * cfg.patch_len * d + n * d * cfg.decoder_d_model + n * cfg.decoder_d_model * (
      cfg.horizon)
  return 2.0 * (encoder + decoder + linear)
