"""PredFormer (Tang et al. 2024, "PredFormer: Transformers Are Effective Spatial-Temporal
Predictive Learners"; arXiv 2410.04733): future-frame prediction with gated transformers,
no recurrence and no convolution.

The T input frames are cut into patches and embedded (a linear patch embedding plus a
fixed sin-cos table over the T x N (frame, patch) tokens, as in the released code); a stack
of Gated Transformer Blocks (GTB) mixes the tokens; a LayerNorm + linear head turns token
(t, n) back into patch n of future frame T + t. A GTB is a pre-LN transformer block whose
feed-forward is a gated linear unit, SiLU(x W_g) * (x W_x) W_o (SwiGLU, Shazeer 2020): our
`Block` with `activation="swiglu"`. The paper's contribution is where the tokens attend:

  full         one stage of joint attention over all T x N tokens of a clip;
  factorized   one stage of temporal-only blocks (each patch position attends to itself
               across frames), then one stage of spatial-only blocks (each frame attends
               within itself), or the reverse (`pattern` "TS" = FacTS, "ST" = FacST);
  interleaved  `pattern` (e.g. "TSST", the paper's best on Moving MNIST) repeated, each
               letter one block: S spatial, T temporal (Binary TS/ST, Triplet TST/STS,
               Quadruplet TSST/STTS).

Spatial and temporal attention are reshapes, not masks: a spatial stage folds time into
the batch ((B T, N, D)), a temporal stage folds space ((B N, T, D)), so their cost is
T N (N + T) per layer instead of (T N)^2, and a token cannot see outside its frame (or its
patch position) by construction. Every stage is a `TransformerStack` ending in its own
LayerNorm, as every `GatedTransformer` of the released code does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, LayerNorm, sinusoidal_positions
from models.partitioning import constrain
from models.transformer import (ACT, DTYPES, REMAT, BlockConfig, TransformerStack,
                                check_choice, stack_flops_per_token)
from models.vit import PatchGeometry, _grid, patchify, unpatchify

LAYOUTS = ("full", "factorized", "interleaved")
KINDS = {"S": "spatial", "T": "temporal"}  # pattern letters -> attention kinds


@dataclasses.dataclass(frozen=True)
class PredFormerConfig(PatchGeometry):
  image_size: tuple[int, ...]  # (H, W) of a frame
  patch_size: tuple[int, ...]
  d_model: int
  num_layers: int  # gated transformer blocks in all (the paper: 24 on Moving MNIST)
  num_heads: int
  d_ff: int
  channels: int = 1
  layout: str = "interleaved"
  pattern: str = "TSST"
  dtype: str = "float32"
  ln_eps: float = 1e-5  # PyTorch nn.LayerNorm, the released code's
  init_std: float = 0.02
  scan_layers: bool = False
  remat: str = "none"

  @property
  def block(self) -> BlockConfig:
    return BlockConfig.of(self, norm="pre", activation="swiglu")

  @property
  def stages(self) -> tuple[tuple[str, int], ...]:
    """(attention kind, blocks) of each stage in order: kind full, spatial or temporal."""
    if self.layout == "full":
      return (("full", self.num_layers),)
    per_letter = self.num_layers // len(self.pattern)
    if self.layout == "factorized":
      return tuple((KINDS[c], per_letter) for c in self.pattern)
    return tuple((KINDS[c], 1) for c in self.pattern * per_letter)

  def validate(self) -> None:
    check_choice("model.st_attention", self.layout, LAYOUTS)
    check_choice("model.dtype", self.dtype, DTYPES)
    check_choice("model.remat", self.remat, REMAT)
    _grid(tuple(self.image_size), tuple(self.patch_size))  # raises unless frames divide
    if self.layout == "factorized":
      check_choice("model.st_pattern", self.pattern, ("TS", "ST"))
    if self.layout == "interleaved" and (not self.pattern or set(self.pattern) - set(KINDS)):
      raise ValueError(f"model.st_pattern={self.pattern!r}: interleaved needs a non-empty "
                       "string of S (spatial) and T (temporal) blocks, e.g. TSST")
    if self.layout != "full" and self.num_layers % len(self.pattern):
      raise ValueError(f"model.num_layers={self.num_layers} is not divisible by "
                       f"len(model.st_pattern={self.pattern!r}) = {len(self.pattern)}")
    self.block.validate()


def apply_stage(stack: TransformerStack, kind: str, x: jax.Array) -> jax.Array:
  """Runs `stack` over x (B, T, N, D) attending as `kind` says: full (all T N tokens of a
  clip), spatial (the N tokens of each frame) or temporal (the T tokens of each patch
  position); -> (B, T, N, D)."""
  b, t, n, d = x.shape
  if kind == "full":
    return stack(x.reshape(b, t * n, d), mask=None).reshape(b, t, n, d)
  if kind == "spatial":
    return stack(x.reshape(b * t, n, d), mask=None).reshape(b, t, n, d)
  per_patch = x.transpose(0, 2, 1, 3).reshape(b * n, t, d)
  return stack(per_patch, mask=None).reshape(b, n, t, d).transpose(0, 2, 1, 3)


class PredFormer(nnx.Module):
  """frames (B, T, H, W, C) in [0, 1] -> the T frames after them (B, T, H, W, C) float32."""

  def __init__(self, cfg: PredFormerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.patch_embed = Dense(cfg.patch_dim, cfg.d_model, ("patch", "embed"), dtype=cfg.dtype,
                             init_std=cfg.init_std, rngs=rngs)
    self.stages = nnx.List([TransformerStack(cfg.block, depth, rngs=rngs)
                            for _, depth in cfg.stages])
    self.head_norm = LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=cfg.dtype)
    self.head = Dense(cfg.d_model, cfg.patch_dim, ("embed", "patch"), dtype=cfg.dtype,
                      init_std=cfg.init_std, rngs=rngs, out_dtype=jnp.float32)

  def embed(self, frames: jax.Array) -> jax.Array:
    """frames (B, T, H, W, C) -> tokens (B, T, N, D): patches embedded plus the fixed
    sin-cos position of each token's index t N + n."""
    b, t = frames.shape[:2]
    patches = patchify(frames, (1, *self.cfg.patch_size))  # (B, T N, P), frame-major
    positions = sinusoidal_positions(jnp.arange(patches.shape[1]), self.cfg.d_model)
    x = self.patch_embed(patches) + positions.astype(self.cfg.dtype)
    return constrain(x, ACT).reshape(b, t, self.cfg.num_patches, self.cfg.d_model)

  def __call__(self, frames: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = self.embed(frames)
    for stack, (kind, _) in zip(self.stages, cfg.stages):
      x = apply_stage(stack, kind, x)
    b, t = frames.shape[:2]
    out = self.head(self.head_norm(x)).reshape(b, t * cfg.num_patches, cfg.patch_dim)
    return unpatchify(out, (1, *cfg.patch_size), (t, *cfg.image_size), cfg.channels)


def predformer_flops_per_clip(cfg: PredFormerConfig, frames: int) -> float:
  """Forward matmul FLOPs for `frames` input frames: patch embedding and head (2 P D each
  per token), and each stage's blocks with its tokens attending T N (full), N (spatial) or
  T (temporal) keys."""
  tokens = frames * cfg.num_patches
  attended = {"full": tokens, "spatial": cfg.num_patches, "temporal": frames}
  stacks = sum(stack_flops_per_token(cfg.block, depth, attended[kind])
               for kind, depth in cfg.stages)
  return tokens * (stacks + 2 * 2 * cfg.patch_dim * cfg.d_model)
