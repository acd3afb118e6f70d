"""ViTs with pretext heads on every patch token: SiT/GMML and MP3 position prediction.

`SiT` (Atito et al. 2021, "SiT: Self-supervised vIsion Transformer"; "GMML is All you
Need", 2022): the encoder sees the whole corrupted image and a light per-token head maps
every patch token back to its pixels. GMML's head (the released code's `RECHead`) is
`rec_layers` Linear+GELU layers of width D and a transposed convolution with kernel =
stride = the patch, which is a per-token Dense to the patch's pixels; SiT's original head
is that last layer alone (rec_layers = 0). SiT also prepends two learned tokens, a rotation
token read by a 4-way classifier and a contrastive token read by a linear projection; they
replace ViT's cls token.

`PositionPredictor` (Zhai et al. 2022, "Position Prediction as an Effective Pretraining
Strategy", MP3): a ViT without position embeddings classifies every patch token over the N
grid positions. Without positions the stack is permutation-equivariant, so the only way to
a position is through content. The objective may restrict the keys and values to a random
context subset of the patches (an attention mask), as MP3 does; every patch stays a query.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, gelu, normal_param
from models.transformer import stack_flops_per_token
from models.vit import ViT, ViTConfig, patchify, vit_encoder_flops_per_image

ROTATIONS = 4  # SiT: 0, 90, 180, 270 degrees
NUM_TASK_TOKENS = 2  # SiT's rotation and contrastive tokens


@dataclasses.dataclass(frozen=True)
class SiTConfig:
  vit: ViTConfig  # use_cls_token is ignored: the task tokens take the prefix
  rec_layers: int = 3  # GMML's RECHead: 3 x (Linear D->D, GELU); SiT: 0
  contrastive_dim: int = 512  # SiT's contrastive head: Linear(D, 512)

  def validate(self) -> None:
    if self.rec_layers < 0 or self.contrastive_dim < 1:
      raise ValueError(f"model.rec_layers={self.rec_layers} must be >= 0 and "
                       f"model.contrastive_dim={self.contrastive_dim} >= 1")


class SiT(nnx.Module):
  """ViT over all (corrupted) patches with a rotation token, a contrastive token and a
  per-patch pixel head."""

  def __init__(self, cfg: SiTConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    vit = dataclasses.replace(cfg.vit, use_cls_token=False)
    d, std, dtype = vit.d_model, vit.init_std, vit.dtype
    self.encoder = ViT(vit, rngs=rngs)
    self.task_tokens = normal_param(rngs, (1, NUM_TASK_TOKENS, d), (None, None, "embed"), std)
    self.rec_mlp = nnx.List([Dense(d, d, ("embed", "mlp"), dtype=dtype, init_std=std,
                                   rngs=rngs) for _ in range(cfg.rec_layers)])
    self.rec_out = Dense(d, vit.patch_dim, ("embed", "patch"), dtype=dtype, init_std=std,
                         rngs=rngs, out_dtype=jnp.float32)
    self.rotation_head = Dense(d, ROTATIONS, ("embed", None), dtype=dtype, init_std=std,
                               rngs=rngs, out_dtype=jnp.float32)
    self.contrastive_head = Dense(d, cfg.contrastive_dim, ("embed", "mlp"), dtype=dtype,
                                  init_std=std, rngs=rngs, out_dtype=jnp.float32)

  def tokens(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) -> (B, 2 + N, D): rotation token, contrastive token, patches."""
    vit = self.encoder.cfg
    patches = patchify(images, vit.patch_size)
    idx = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    x = self.encoder.embed(patches, idx)
    task = jnp.broadcast_to(self.task_tokens[...].astype(x.dtype),
                            (x.shape[0], NUM_TASK_TOKENS, x.shape[2]))
    return self.encoder.stack(jnp.concatenate([task, x], axis=1), mask=None)

  def __call__(self, images: jax.Array):
    """images (B, H, W, C) -> (rotation logits (B, 4), contrastive embedding (B, E),
    predicted patches (B, N, P)), all float32."""
    x = self.tokens(images)
    h = x[:, NUM_TASK_TOKENS:]
    for layer in self.rec_mlp:
      h = gelu(layer(h), "gelu_exact")  # torch's nn.GELU is the erf form
    return self.rotation_head(x[:, 0]), self.contrastive_head(x[:, 1]), self.rec_out(h)


def sit_flops_per_image(cfg: SiTConfig) -> float:
  """Forward matmul FLOPs: patch embedding, the stack over 2 + N tokens, the pixel head on
  every patch and the two task heads."""
  vit = cfg.vit
  n, d = vit.num_patches, vit.d_model
  tokens = n + NUM_TASK_TOKENS
  stack = tokens * stack_flops_per_token(vit.encoder_block, vit.num_layers, tokens)
  heads = n * 2 * d * (cfg.rec_layers * d + vit.patch_dim) + 2 * d * (ROTATIONS
                                                                      + cfg.contrastive_dim)
  return n * 2 * vit.patch_dim * d + stack + heads


class PositionPredictor(nnx.Module):
  """ViT without position embeddings + a linear classifier of each patch token over the
  grid's N positions."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    if cfg.pos_emb != "none":
      raise ValueError(f"model.pos_emb={cfg.pos_emb!r}: position prediction needs a ViT "
                       "without position embeddings (pos_emb=none)")
    self.cfg = cfg
    self.encoder = ViT(cfg, rngs=rngs)
    self.head = Dense(cfg.d_model, cfg.num_patches, ("embed", None), dtype=cfg.dtype,
                      init_std=cfg.init_std, rngs=rngs, out_dtype=jnp.float32)

  def encode(self, patches: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """patches (B, N, P), context bool (B, N) = patches usable as keys/values (None = all)
    -> patch tokens (B, N, D). Prefix tokens (cls) are always context."""
    prefix = self.cfg.num_prefix
    mask = None
    if context is not None:
      keys = jnp.concatenate([jnp.ones((context.shape[0], prefix), bool), context], axis=1)
      mask = keys[:, None, None, :]  # (B, 1, 1, prefix + N): every query, context keys
    # The index only feeds position embeddings, which this ViT does not have.
    x = self.encoder.embed(patches, jnp.zeros(patches.shape[:2], jnp.int32))
    return self.encoder.encode(x, mask)[:, prefix:]

  def __call__(self, patches: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """-> position logits (B, N, N) float32: token i's scores over the grid positions."""
    return self.head(self.encode(patches, context))


def position_prediction_flops_per_image(cfg: ViTConfig) -> float:
  """Forward matmul FLOPs as run: the full stack (context masking is a mask, the masked
  keys are still computed) and the N-way head on every patch."""
  n = cfg.num_patches
  return vit_encoder_flops_per_image(cfg, n) + n * 2 * cfg.d_model * n
