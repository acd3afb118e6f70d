"""The one attention function and the masks it takes.

Every model calls `dot_product_attention` with a mask from `attention_mask`, so packing
(segment ids) is respected on every path and a fused TPU/GPU kernel can replace the einsum
in one place.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# A large finite negative: a fully masked (padding) row softmaxes to uniform, never NaN.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def _bidirectional(q_idx, k_idx, prefix_len, is_prefix):
  del prefix_len, is_prefix
  return jnp.ones((1, q_idx.shape[0], k_idx.shape[1]), bool)  # (1, Lq, Lk)


def _causal(q_idx, k_idx, prefix_len, is_prefix):
  del prefix_len, is_prefix
  return (k_idx <= q_idx)[None]  # (1, Lq, Lk)


def _prefix(q_idx, k_idx, prefix_len, is_prefix):
  del is_prefix
  if prefix_len is None:
    raise ValueError("attention_mask('prefix') needs prefix_len of shape (B,)")
  in_prefix = k_idx[None] < jnp.asarray(prefix_len)[:, None, None]  # (B, 1, Lk)
  return (k_idx <= q_idx)[None] | in_prefix  # (B, Lq, Lk)


def _segment_prefix(q_idx, k_idx, prefix_len, is_prefix):
  """Causal, plus every key flagged `is_prefix`: with segment ids, each packed segment
  gets its own bidirectional prefix (prefix LM on packed rows)."""
  del prefix_len
  if is_prefix is None:
    raise ValueError("attention_mask('segment_prefix') needs is_prefix of shape (B, L)")
  return (k_idx <= q_idx)[None] | jnp.asarray(is_prefix, bool)[:, None, :]  # (B, Lq, Lk)


def _block_causal(q_idx, k_idx, prefix_len, is_prefix):
  """Causal over blocks (semi-autoregressive, Ren et al. 2025): `attention_mask` passes
  each token's block id as its index, q_idx (B, Lq, 1) and k_idx (B, 1, Lk), so a block
  sees itself bidirectionally and every earlier block, never a later one."""
  del prefix_len, is_prefix
  return k_idx <= q_idx  # (B, Lq, Lk)


# kind -> f(q_idx (Lq, 1), k_idx (1, Lk), prefix_len (B,) | None, is_prefix (B, Lk) | None)
# -> bool (B|1, Lq, Lk).
# Positions are array indices: packed segments restart their positions but keep index order.
_KINDS: dict[str, Callable] = {
    "bidirectional": _bidirectional,
    "causal": _causal,
    "prefix": _prefix,
    "segment_prefix": _segment_prefix,
    "block_causal": _block_causal,
}


def attention_mask(
    kind: str,
    *,
    segment_ids: jax.Array | None = None,
    length: int | None = None,
    batch: int | None = None,
    prefix_len: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    is_prefix: jax.Array | None = None,
    block_ids: jax.Array | None = None,
) -> jax.Array:
  """Boolean mask (B, 1, Lq, Lk); True = may attend.

  segment_ids (B, L) int with 0 = padding: a query attends only to keys of its own nonzero
  segment, so packed sequences cannot see each other and padding keys are never attended.
  kv_segment_ids (B, Lk) gives the keys' segments when they differ from the queries'
  (cross-attention). is_prefix (B, Lk) bool marks the keys every query of their segment sees
  ("segment_prefix"). block_ids (B, L) int gives each token's block for "block_causal"
  (e.g. positions // block_size, restarting per segment, or a video frame index; ids must
  not decrease along a segment). Without segment ids, `length` (and optionally `batch`) give the shape.
  """
  if kind not in _KINDS:
    raise ValueError(f"unknown attention mask kind {kind!r}; valid: {sorted(_KINDS)}")
  kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
  if segment_ids is not None:
    lq, lk = segment_ids.shape[1], kv_segment_ids.shape[1]
  elif length is not None:
    lq = lk = length
  else:
    raise ValueError("attention_mask needs segment_ids or length")
  q_idx = jnp.arange(lq)[:, None]  # (Lq, 1)
  k_idx = jnp.arange(lk)[None, :]  # (1, Lk)
  if kind == "block_causal":
    if block_ids is None:
      raise ValueError("attention_mask('block_causal') needs block_ids of shape (B, L)")
    q_idx, k_idx = block_ids[:, :, None], block_ids[:, None, :]  # (B, Lq, 1), (B, 1, Lk)
  mask = _KINDS[kind](q_idx, k_idx, prefix_len, is_prefix)  # (B|1, Lq, Lk)
  if segment_ids is not None:
    same = segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # (B, Lq, Lk)
    mask = mask & same & (kv_segment_ids[:, None, :] != 0)
  if batch is not None:
    mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
  return mask[:, None]  # (B, 1, Lq, Lk)


def attention_logits(q: jax.Array, k: jax.Array, mask: jax.Array | None,
                     bias: jax.Array | None = None) -> jax.Array:
  """Scaled, masked dot products (B, H, Lq, Lk) in float32; q (B, Lq, H, D), k (B, Lk, H, D),
  plus `bias` (B|1, H, Lq, Lk) when given (T5's relative position bias).

  Masked entries hold a large finite negative, so a log-softmax over them stays finite
  (MiniLM's KL between attention distributions relies on that).
  """
  # Plain einsums (not models.precision.mixed_einsum): XLA:CPU cannot run the batched
  # bf16 x bf16 -> f32 dots of their transpose at real sizes ("Unsupported element type for
  # DotThunk"), so under bf16 these two (a small share of the FLOPs) run backward in f32.
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum(
      "bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32
  ) * scale  # (B, H, Lq, Lk)
  if bias is not None:
    logits = logits + bias
  return logits if mask is None else jnp.where(mask, logits, _MASK_VALUE)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
    bias: jax.Array | None = None
) -> jax.Array:
  """Softmax attention; q (B, Lq, H, D), k/v (B, Lk, H, D), mask bool (B, 1, Lq, Lk).

  Logits and softmax in float32 whatever the compute dtype; output in q's dtype.
  """
  probs = jax.nn.softmax(attention_logits(q, k, mask, bias), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)  # (B, Lq, H, D)
