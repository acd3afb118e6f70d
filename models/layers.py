"""Building blocks: dense, norms, MLP, multi-head attention, position encodings.

Params are float32 with logical axis names; `dtype` is the compute dtype that params and
inputs are cast to in matmuls (accumulated in float32). Norm statistics, softmax and
position tables stay float32.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import dot_product_attention
from models.partitioning import constrain, with_axes
from models.precision import mixed_einsum

Shape = int | Sequence[int]


def _shape(s: Shape) -> tuple[int, ...]:
  return (s,) if isinstance(s, int) else tuple(s)


def normal_param(rngs: nnx.Rngs, shape: Shape, axes: Sequence[str | None], std: float):
  """A float32 N(0, std) parameter carrying logical axis names."""
  init = with_axes(nnx.initializers.normal(std), axes)
  return nnx.Param(init(rngs.params(), _shape(shape), jnp.float32))


def const_param(shape: Shape, axes: Sequence[str | None], value: float):
  """A float32 constant-filled parameter (norm scales, biases) with logical axis names."""
  init = with_axes(nnx.initializers.constant(value), axes)
  return nnx.Param(init(jax.random.key(0), _shape(shape), jnp.float32))


class Dense(nnx.Module):
  """Linear map over the trailing `in_shape` axes; kernel is in_shape + out_shape.

  Head-shaped kernels ((embed, heads, kv), (heads, kv, embed)) keep heads as their own axis
  so tensor parallelism can split them.
  """

  def __init__(self, in_shape: Shape, out_shape: Shape, axes: Sequence[str | None], *,
               dtype, init_std: float, rngs: nnx.Rngs, out_dtype=None, use_bias: bool = True):
    in_shape, out_shape = _shape(in_shape), _shape(out_shape)
    if len(axes) != len(in_shape) + len(out_shape):
      raise ValueError(f"axes {axes} do not match kernel shape {in_shape + out_shape}")
    self.kernel = normal_param(rngs, in_shape + out_shape, axes, init_std)
    self.bias = const_param(out_shape, axes[len(in_shape):], 0.0) if use_bias else None
    self.num_in = len(in_shape)
    self.dtype = jnp.dtype(dtype)
    self.out_dtype = jnp.dtype(out_dtype or dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    y = mixed_einsum(_contraction(x.ndim, self.num_in, kernel.ndim - self.num_in),
                     x.astype(self.dtype), kernel.astype(self.dtype))
    return (y if self.bias is None else y + self.bias[...]).astype(self.out_dtype)


def _contraction(x_ndim: int, num_in: int, num_out: int) -> str:
  """einsum spec contracting x's trailing num_in axes with a kernel's leading ones."""
  letters = "abcdefghijklmnopqrstuvwxyz"
  batch, ins = letters[:x_ndim - num_in], letters[x_ndim - num_in:x_ndim]
  outs = letters[x_ndim:x_ndim + num_out]
  return f"{batch}{ins},{ins}{outs}->{batch}{outs}"


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with float32 statistics."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.scale = const_param(dim, ("norm",), 1.0)
    self.bias = const_param(dim, ("norm",), 0.0)
    self.eps, self.dtype = eps, jnp.dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm (no centering, no bias) over the last axis with float32 statistics."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.scale = const_param(dim, ("norm",), 1.0)
    self.eps, self.dtype = eps, jnp.dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


# Mlp: tanh GELU, erf GELU, ReLU (T5 v1.0), gated SiLU, gated tanh GELU (T5 v1.1).
ACTIVATIONS = ("gelu", "gelu_exact", "relu", "swiglu", "geglu")
GATED = {"swiglu": jax.nn.silu, "geglu": lambda x: jax.nn.gelu(x, approximate=True)}


def gelu(x: jax.Array, activation: str) -> jax.Array:
  """GELU in the form `activation` names: erf for "gelu_exact" (HF's "gelu"), otherwise the
  tanh approximation (GPT-2's "gelu_new"; also the MLM head transform of a SwiGLU model)."""
  return jax.nn.gelu(x, approximate=activation != "gelu_exact")


class Mlp(nnx.Module):
  """Position-wise feed-forward: GELU (`gelu`: tanh approximation, `gelu_exact`: erf),
  ReLU, or gated (Shazeer 2020): SwiGLU, GEGLU."""

  def __init__(self, d_model: int, d_ff: int, activation: str, *, dtype, init_std: float,
               rngs: nnx.Rngs, use_bias: bool = True):
    dense = lambda i, o, axes: Dense(i, o, axes, dtype=dtype, init_std=init_std, rngs=rngs,
                                     use_bias=use_bias)
    self.wi = dense(d_model, d_ff, ("embed", "mlp"))
    self.gate = dense(d_model, d_ff, ("embed", "mlp")) if activation in GATED else None
    self.wo = dense(d_ff, d_model, ("mlp", "embed"))
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gate is not None:
      h = GATED[self.activation](self.gate(x)) * self.wi(x)
    elif self.activation == "relu":
      h = jax.nn.relu(self.wi(x))
    else:
      h = gelu(self.wi(x), self.activation)
    h = constrain(h, ("batch", "length", "act_mlp"))  # (B, L, F)
    return self.wo(h)


def sinusoidal_positions(positions: jax.Array, dim: int) -> jax.Array:
  """Fixed sin-cos table (..., dim) = [sin(p w), cos(p w)], w_i = 10000^(-i/(dim/2)).

  The concatenated layout of tensor2tensor and MAE; positions are explicit so packed
  segments restart at 0.
  """
  if dim % 2:
    raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
  omega = 1.0 / 10000 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
  angles = positions.astype(jnp.float32)[..., None] * omega  # (..., dim/2)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary embedding (Su et al. 2021), rotate-half layout; x (B, L, H, D), positions (B, L).

  Rotating q and k by their own positions makes q.k depend only on the offset; explicit
  positions keep that true inside packed segments.
  """
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f"rotary needs an even head dim, got {d}")
  inv_freq = 1.0 / base ** (jnp.arange(d // 2, dtype=jnp.float32) / (d // 2))
  angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # (B, L, 1, D/2)
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, L, H, D/2)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class LearnedPositions(nnx.Module):
  """Learned position table (num, dim) indexed by explicit positions."""

  def __init__(self, num: int, dim: int, *, init_std: float, rngs: nnx.Rngs):
    self.table = normal_param(rngs, (num, dim), (None, "embed"), init_std)

  def __call__(self, positions: jax.Array) -> jax.Array:
    return jnp.take(self.table[...], positions, axis=0)  # (..., dim) float32


class Embed(nnx.Module):
  """Token embedding table (vocab, embed); `attend` reuses it as a tied output layer."""

  def __init__(self, vocab: int, dim: int, *, init_std: float, rngs: nnx.Rngs):
    self.table = normal_param(rngs, (vocab, dim), ("vocab", "embed"), init_std)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.table[...], tokens, axis=0)  # (B, L, D) float32

  def attend(self, x: jax.Array, dtype) -> jax.Array:
    """x (..., D) -> (..., vocab) float32 = x @ table.T in the compute dtype."""
    dtype = jnp.dtype(dtype)
    return mixed_einsum("...d,vd->...v", x.astype(dtype), self.table[...].astype(dtype))


_HEADS = ("batch", "length", "act_heads", "act_kv")


class MultiHeadAttention(nnx.Module):
  """Self-attention with head-shaped projections; rotary applied to q, k when set."""

  def __init__(self, d_model: int, num_heads: int, *, dtype, init_std: float,
               rngs: nnx.Rngs, fused_qkv: bool = False, rotary: bool = False,
               use_bias: bool = True):
    head_dim = d_model // num_heads
    dense = lambda i, o, axes: Dense(i, o, axes, dtype=dtype, init_std=init_std, rngs=rngs,
                                     use_bias=use_bias)
    if fused_qkv:
      self.qkv = dense(d_model, (3, num_heads, head_dim), ("embed", None, "heads", "kv"))
    else:
      self.query, self.key, self.value = (
          dense(d_model, (num_heads, head_dim), ("embed", "heads", "kv")) for _ in range(3))
    self.out = dense((num_heads, head_dim), d_model, ("heads", "kv", "embed"))
    self.fused_qkv, self.rotary = fused_qkv, rotary

  def __call__(self, x: jax.Array, *, mask: jax.Array | None,
               positions: jax.Array | None, bias: jax.Array | None = None) -> jax.Array:
    """bias: added to the attention logits (B|1, H, L, L), e.g. T5's relative positions."""
    q, k, v = self.project(x, positions)
    out = constrain(dot_product_attention(q, k, v, mask, bias), _HEADS)  # (B, L, H, D)
    return self.out(out)  # (B, L, D)

  def project(self, x: jax.Array, positions: jax.Array | None):
    """x (B, L, D) -> q, k, v (B, L, H, Dh), rotary applied (what MiniLM distils)."""
    if self.fused_qkv:
      qkv = self.qkv(x)  # (B, L, 3, H, D)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      q, k, v = self.query(x), self.key(x), self.value(x)  # (B, L, H, D)
    if self.rotary:
      q, k = apply_rotary(q, positions), apply_rotary(k, positions)
    return tuple(constrain(t, _HEADS) for t in (q, k, v))


def relative_position_buckets(relative: jax.Array, *, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> jax.Array:
  """T5's bucket of each relative position (key position - query position; Raffel et al.
  2020 §2.1): half the buckets exact for small distances, the rest log-spaced up to
  `max_distance` (farther shares the last bucket); bidirectional splits the buckets between
  keys before and after the query, unidirectional (a decoder) sees only keys before."""
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(relative > 0, num_buckets, 0)
    distance = jnp.abs(relative)
  else:
    offset, distance = 0, jnp.maximum(-relative, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1) / exact) / jnp.log(max_distance / exact)
  far = jnp.minimum(exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32),
                    num_buckets - 1)
  return offset + jnp.where(distance < exact, distance, far)


class RelativePositionBias(nnx.Module):
  """A learned scalar per (bucket, head) added to attention logits (T5): one table per
  stack, shared by its layers."""

  def __init__(self, num_buckets: int, max_distance: int, num_heads: int, *,
               bidirectional: bool, init_std: float, rngs: nnx.Rngs):
    self.table = normal_param(rngs, (num_buckets, num_heads), (None, "heads"), init_std)
    self.num_buckets, self.max_distance = num_buckets, max_distance
    self.bidirectional = bidirectional

  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """positions (B, Lq), (B, Lk) (restarting per packed segment) -> bias (B, H, Lq, Lk)."""
    relative = k_positions[:, None, :] - q_positions[:, :, None]  # (B, Lq, Lk)
    buckets = relative_position_buckets(relative, bidirectional=self.bidirectional,
                                        num_buckets=self.num_buckets,
                                        max_distance=self.max_distance)
    return jnp.moveaxis(self.table[...][buckets], -1, 1).astype(jnp.float32)

