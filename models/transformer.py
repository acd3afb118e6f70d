"""Transformer stack (shared by text and vision models) and the text transformer.

One `TextTransformer` covers BERT (post-LN, learned positions, embedding norm, MLM head
transform) and GPT-2 (pre-LN, learned positions, causal mask): the objective picks the mask.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import (ACTIVATIONS, NORMS, Dense, Embed, LearnedPositions, Mlp,
                           MultiHeadAttention, RelativePositionBias, const_param, gelu,
                           sinusoidal_positions)
from models.partitioning import constrain
from models.precision import MATMUL_NAME

ACT = ("batch", "length", "act_embed")
DTYPES = ("float32", "bfloat16")
LAYERS = "layers"  # Logical name of a scanned stack's leading param axis.
# What a rematerialized block keeps for the backward pass; "none" (no remat) keeps all.
# "full" recomputes the block; "dots" keeps matmul outputs and recomputes the rest.
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.save_from_both_policies(
                      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                      jax.checkpoint_policies.save_only_these_names(MATMUL_NAME))}
REMAT = ("none", *REMAT_POLICIES)


def check_choice(field: str, value, valid) -> None:
  """ValueError naming the field and its valid values."""
  if value not in valid:
    raise ValueError(f"{field}={value!r} is not one of {list(valid)}")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What one transformer block needs; text and vision configs derive it."""
  d_model: int
  num_heads: int
  d_ff: int
  norm: str = "pre"  # "pre" (GPT-2, ViT) or "post" (BERT's post-LN)
  norm_type: str = "layernorm"  # or "rmsnorm"
  activation: str = "gelu"  # tanh GELU; or "gelu_exact" (erf), "swiglu"
  dtype: str = "float32"  # compute dtype; params stay float32
  ln_eps: float = 1e-5
  init_std: float = 0.02
  rotary: bool = False
  fused_qkv: bool = False
  scan_layers: bool = False  # one scanned block with stacked params instead of a list
  remat: str = "none"  # see REMAT_POLICIES
  relative_buckets: int = 0  # > 0: T5 relative position bias, one table per stack
  relative_max_distance: int = 128
  use_bias: bool = True  # biases in attention and MLP projections (T5 has none)

  @classmethod
  def of(cls, cfg, **overrides) -> "BlockConfig":
    """The block a model config describes: each BlockConfig field `cfg` also has, then
    `overrides` (ViT, point, audio and video configs share these field names)."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
              if hasattr(cfg, f.name)}
    return cls(**{**shared, **overrides})

  def validate(self) -> None:
    check_choice("norm", self.norm, ("pre", "post"))
    check_choice("remat", self.remat, REMAT)
    check_choice("norm_type", self.norm_type, tuple(NORMS))
    check_choice("activation", self.activation, ACTIVATIONS)
    check_choice("dtype", self.dtype, DTYPES)
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if self.rotary and (self.d_model // self.num_heads) % 2:
      raise ValueError(f"rotary needs an even head dim, got d_model/num_heads="
                       f"{self.d_model // self.num_heads}")


def make_norm(cfg: BlockConfig, dim: int | None = None):
  return NORMS[cfg.norm_type](dim or cfg.d_model, eps=cfg.ln_eps, dtype=cfg.dtype)


class Block(nnx.Module):
  """Attention + MLP with residuals; pre-LN normalises branch inputs, post-LN the sums."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    self.attn_norm = make_norm(cfg)
    self.attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, dtype=cfg.dtype,
                                   init_std=cfg.init_std, rngs=rngs,
                                   fused_qkv=cfg.fused_qkv, rotary=cfg.rotary,
                                   use_bias=cfg.use_bias)
    self.mlp_norm = make_norm(cfg)
    self.mlp = Mlp(cfg.d_model, cfg.d_ff, cfg.activation, dtype=cfg.dtype,
                   init_std=cfg.init_std, rngs=rngs, use_bias=cfg.use_bias)
    self.post_norm = cfg.norm == "post"

  def __call__(self, x: jax.Array, *, mask, positions, bias=None) -> jax.Array:
    x = constrain(x, ACT)  # (B, L, D)
    if self.post_norm:
      x = self.attn_norm(x + self.attn(x, mask=mask, positions=positions, bias=bias))
      x = self.mlp_norm(x + self.mlp(x))
    else:
      x = x + self.attn(self.attn_norm(x), mask=mask, positions=positions, bias=bias)
      x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ACT)

  def attention_qkv(self, x: jax.Array, *, positions):
    """The q, k, v (B, L, H, Dh) this block's self-attention computes from its input x."""
    return self.attn.project(constrain(x, ACT) if self.post_norm else self.attn_norm(x),
                             positions)


def relative_bias(cfg: BlockConfig, bidirectional: bool, rngs: nnx.Rngs):
  """The stack's relative position bias table, or None without `relative_buckets`."""
  if not cfg.relative_buckets:
    return None
  return RelativePositionBias(cfg.relative_buckets, cfg.relative_max_distance, cfg.num_heads,
                              bidirectional=bidirectional, init_std=cfg.init_std, rngs=rngs)


class TransformerStack(nnx.Module):
  """`num_layers` blocks over embeddings; pre-LN ends with a final norm.

  Unscanned, `blocks` is a list (params blocks/<i>/...). With `scan_layers` it is one
  Block whose params carry a leading `layers` axis, applied by `nnx.scan`: the step
  compiles one block body instead of `num_layers` copies.
  """

  def __init__(self, cfg: BlockConfig, num_layers: int, *, rngs: nnx.Rngs,
               bidirectional: bool = True):
    cfg.validate()
    self.rel_bias = relative_bias(cfg, bidirectional, rngs)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
      def stacked(rngs):
        return Block(cfg, rngs=rngs)

      self.blocks = stacked(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = make_norm(cfg) if cfg.norm == "pre" else None
    self.scan_layers, self.remat = cfg.scan_layers, cfg.remat

  def __call__(self, x: jax.Array, *, mask: jax.Array | None,
               positions: jax.Array | None = None) -> jax.Array:
    """x (B, L, D), mask bool (B, 1, L, L) or None, positions (B, L) for rotary and the
    relative position bias."""
    bias = None if self.rel_bias is None else self.rel_bias(positions, positions)

    def apply(x, block):
      return block(x, mask=mask, positions=positions, bias=bias)

    if self.remat != "none":
      # prevent_cse keeps XLA from merging the recomputation back into the forward pass;
      # a scan body cannot be merged, so there the guard would only cost speed.
      apply = nnx.remat(apply, policy=REMAT_POLICIES[self.remat],
                        prevent_cse=not self.scan_layers)
    if self.scan_layers:
      x = nnx.scan(apply, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                   transform_metadata={nnx.PARTITION_NAME: LAYERS})(x, self.blocks)
    else:
      for block in self.blocks:
        x = apply(x, block)
    return x if self.final_norm is None else constrain(self.final_norm(x), ACT)

  def last_attention_qkv(self, x: jax.Array, *, mask: jax.Array | None,
                         positions: jax.Array | None = None):
    """q, k, v (B, L, H, Dh) of the last block's self-attention (MiniLM distils its
    relations); the blocks before it run as in `__call__`, the last block's output is never
    computed. Unscanned stacks only: a scanned stack carries no per-layer outputs."""
    if self.scan_layers:
      raise ValueError("last_attention_qkv needs model.scan_layers=false")
    *first, last = self.blocks
    bias = None if self.rel_bias is None else self.rel_bias(positions, positions)
    for block in first:
      x = block(x, mask=mask, positions=positions, bias=bias)
    return last.attention_qkv(x, positions=positions)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """A text transformer; sizes by name come from `models.variants`."""
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  max_len: int = 512
  pos_emb: str = "learned"  # "learned" | "sinusoidal" | "rotary" | "relative" (T5) | "none"
  norm: str = "pre"  # "post" = BERT
  norm_type: str = "layernorm"
  activation: str = "gelu"
  dtype: str = "float32"
  tie_embeddings: bool = True
  head_transform: bool = False  # BERT MLM head: dense + gelu + LayerNorm before the decoder
  embed_norm: bool = False  # BERT: LayerNorm on tokens + positions before the stack
  ln_eps: float = 1e-5  # BERT: 1e-12
  init_std: float = 0.02
  fused_qkv: bool = False
  scan_layers: bool = False
  remat: str = "none"
  relative_buckets: int = 32  # T5's relative position bias (pos_emb="relative")
  relative_max_distance: int = 128
  use_bias: bool = True  # projection biases and the output bias (T5: none)

  @property
  def block(self) -> BlockConfig:
    return BlockConfig(
        d_model=self.d_model, num_heads=self.num_heads, d_ff=self.d_ff, norm=self.norm,
        norm_type=self.norm_type, activation=self.activation, dtype=self.dtype,
        ln_eps=self.ln_eps, init_std=self.init_std, rotary=self.pos_emb == "rotary",
        fused_qkv=self.fused_qkv, scan_layers=self.scan_layers, remat=self.remat,
        relative_buckets=self.relative_buckets if self.pos_emb == "relative" else 0,
        relative_max_distance=self.relative_max_distance, use_bias=self.use_bias)

  def validate(self) -> None:
    check_choice("pos_emb", self.pos_emb, ("learned", "sinusoidal", "rotary", "relative",
                                           "none"))
    for field in ("vocab_size", "num_layers", "d_model", "num_heads", "d_ff", "max_len"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field}={getattr(self, field)} must be positive")
    if self.pos_emb == "sinusoidal" and self.d_model % 2:
      raise ValueError(f"pos_emb='sinusoidal' needs an even d_model, got {self.d_model}")
    self.block.validate()


class TextTransformer(nnx.Module):
  """Tokens -> hidden states; `logits` is separate so MLM projects only masked positions."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, init_std=cfg.init_std, rngs=rngs)
    self.pos_embed = (LearnedPositions(cfg.max_len, cfg.d_model, init_std=cfg.init_std,
                                       rngs=rngs) if cfg.pos_emb == "learned" else None)
    self.embed_norm = make_norm(cfg.block) if cfg.embed_norm else None
    self.stack = TransformerStack(cfg.block, cfg.num_layers, rngs=rngs)
    if cfg.head_transform:
      self.head_dense = Dense(cfg.d_model, cfg.d_model, ("embed", "mlp"), dtype=cfg.dtype,
                              init_std=cfg.init_std, rngs=rngs)
      self.head_norm = make_norm(cfg.block)
    self.unembed = None if cfg.tie_embeddings else Embed(
        cfg.vocab_size, cfg.d_model, init_std=cfg.init_std, rngs=rngs)
    self.logits_bias = const_param(cfg.vocab_size, ("vocab",), 0.0) if cfg.use_bias else None

  def __call__(self, tokens: jax.Array, *, mask: jax.Array | None,
               positions: jax.Array | None = None) -> jax.Array:
    """tokens (B, L) int, mask bool (B, 1, L, L) from `attention_mask`, positions (B, L)
    (restarting per packed segment; default 0..L-1) -> hidden (B, L, D)."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return self.stack(self.embed_tokens(tokens, positions), mask=mask, positions=positions)

  def last_attention_qkv(self, tokens: jax.Array, *, mask: jax.Array | None,
                         positions: jax.Array | None = None):
    """Like `__call__`, but -> q, k, v (B, L, H, Dh) of the last block's self-attention."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return self.stack.last_attention_qkv(self.embed_tokens(tokens, positions), mask=mask,
                                         positions=positions)

  def layer_states(self, tokens: jax.Array, *, mask: jax.Array | None, positions: jax.Array,
                   layers) -> dict[int, jax.Array]:
    """{n: hidden (B, L, D) after block n} for each n in `layers` (0 = the embeddings), in
    one pass that stops after the last wanted block; pre-LN stacks apply their final norm to
    each read-out after a block, as to the last. Unscanned stacks only: a scanned stack
    carries no per-layer outputs."""
    if self.stack.scan_layers:
      raise ValueError("layer_states reads intermediate layers: model.scan_layers must be false")
    wanted, stack = set(layers), self.stack
    x = self.embed_tokens(tokens, positions)
    bias = None if stack.rel_bias is None else stack.rel_bias(positions, positions)
    out = {0: x} if 0 in wanted else {}
    for n, block in enumerate(stack.blocks, start=1):
      if n > max(wanted):
        break
      x = block(x, mask=mask, positions=positions, bias=bias)
      if n in wanted:
        out[n] = x if stack.final_norm is None else stack.final_norm(x)
    return out

  def embed_tokens(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """tokens, positions (B, L) -> (B, L, D) in the compute dtype: token + absolute
    position embeddings, normalised when `embed_norm`."""
    x = self.embed(tokens)  # (B, L, D) float32
    if self.pos_embed is not None:
      x = x + self.pos_embed(positions)
    elif self.cfg.pos_emb == "sinusoidal":
      x = x + sinusoidal_positions(positions, self.cfg.d_model)
    if self.embed_norm is not None:
      x = self.embed_norm(x)
    return constrain(x.astype(self.cfg.dtype), ACT)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden (..., D) -> logits (..., vocab) float32."""
    if self.cfg.head_transform:
      hidden = self.head_norm(gelu(self.head_dense(hidden), self.cfg.activation))
    table = self.embed if self.unembed is None else self.unembed
    logits = table.attend(hidden, self.cfg.dtype)
    if self.logits_bias is not None:
      logits = logits + self.logits_bias[...]
    if logits.ndim == 3:
      logits = constrain(logits, ("batch", "length", "act_vocab"))
    return logits


def stack_flops_per_token(cfg: BlockConfig, num_layers: int, attended_len: float) -> float:
  """Forward matmul FLOPs (2 per multiply-add) of `num_layers` blocks, per token.

  Per layer, with D = d_model, F = d_ff, A = average number of attended keys:
    q, k, v, out projections   4 * 2 * D * D
    scores q.k and probs @ v   2 * 2 * A * D
    MLP                        2 * 2 * D * F   (SwiGLU: 3 * 2 * D * F)
  Norms, softmax, biases, activations and embedding lookups are not matmuls: left out.
  """
  mlp_mats = 3 if cfg.activation == "swiglu" else 2
  d = cfg.d_model
  per_layer = 8 * d * d + 4 * attended_len * d + 2 * mlp_mats * d * cfg.d_ff
  return float(num_layers * per_layer)


def logits_flops_per_token(cfg: TransformerConfig) -> float:
  """Forward FLOPs of `logits` per predicted token: 2 * D * V (+ 2 * D * D head transform).

  MLM counts it only at masked positions, an LM at every position."""
  head = 2 * cfg.d_model * cfg.d_model if cfg.head_transform else 0
  return float(2 * cfg.d_model * cfg.vocab_size + head)


def transformer_flops_per_token(cfg: TransformerConfig, attended_len: float, *,
                                with_logits: bool) -> float:
  """Forward FLOPs per token of the stack (+ logits at every token if asked).

  attended_len: average keys per query, e.g. L for bidirectional, (L + 1) / 2 for causal,
  or the mean segment length under packing. Training is about 3x this (forward + backward).
  """
  flops = stack_flops_per_token(cfg.block, cfg.num_layers, attended_len)
  return flops + (logits_flops_per_token(cfg) if with_logits else 0.0)
