"""A ViT with DINO's projection head (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers", §3.1 and Appendix "Projection head").

The head maps the backbone's [CLS] output through a 3-layer MLP (hidden width, GELU) to a
bottleneck, l2-normalises it and applies a weight-normalised linear layer to `out_dim`
prototypes with the weight norm held at 1 (DINO's `norm_last_layer=True`): every
prototype's weight vector is unit length, so the logits are cosines. The teacher is the
same module (an EMA of the student's params, pretrain/teacher.py).

iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer") adds a
learned [MASK] embedding (`mask_token`) that replaces the patch embedding of masked patches
(keeping their positions, as in BEiT), and sends the patch tokens through the same head as
the [CLS] token (iBOT's shared head).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, gelu, normal_param
from models.partitioning import constrain
from models.transformer import ACT
from models.vit import ViT, ViTConfig, patchify


@dataclasses.dataclass(frozen=True)
class DinoConfig:
  vit: ViTConfig
  head_hidden_dim: int = 2048  # DINO: 2048
  head_bottleneck_dim: int = 256  # DINO: 256
  out_dim: int = 65536  # DINO: 65536 prototypes
  mask_token: bool = False  # iBOT: a learned [MASK] patch embedding

  def validate(self) -> None:
    self.vit.validate()
    for field in ("head_hidden_dim", "head_bottleneck_dim", "out_dim"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field}={getattr(self, field)}: must be >= 1")


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis`, like torch's F.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class DinoHead(nnx.Module):
  """MLP (d -> hidden -> hidden -> bottleneck), l2 norm, unit-norm prototypes -> logits."""

  def __init__(self, cfg: DinoConfig, *, rngs: nnx.Rngs):
    d, h, k = cfg.vit.d_model, cfg.head_hidden_dim, cfg.head_bottleneck_dim
    kw = dict(dtype=cfg.vit.dtype, init_std=cfg.vit.init_std, rngs=rngs)
    self.layers = nnx.List([Dense(d, h, ("embed", "mlp"), **kw),
                            Dense(h, h, ("mlp", "embed"), **kw),
                            Dense(h, k, ("embed", None), **kw)])
    # The weight-norm direction v; its norm g is fixed at 1, so only v is a param.
    self.prototypes = normal_param(rngs, (k, cfg.out_dim), (None, "vocab"), cfg.vit.init_std)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., d) -> logits (..., out_dim) float32."""
    for i, layer in enumerate(self.layers):
      x = layer(x) if i == 0 else layer(gelu(x, "gelu_exact"))
    x = l2_normalize(x.astype(jnp.float32))
    return x @ l2_normalize(self.prototypes[...], axis=0)


class DinoViT(nnx.Module):
  """Backbone `encoder` (a ViT, named as in `MAE` so MAE runs load into it) + `head`."""

  def __init__(self, cfg: DinoConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = ViT(cfg.vit, rngs=rngs)
    self.head = DinoHead(cfg, rngs=rngs)
    self.mask_token = (normal_param(rngs, (cfg.vit.d_model,), ("embed",), cfg.vit.init_std)
                       if cfg.mask_token else None)

  def features(self, images: jax.Array) -> jax.Array:
    """images (B, *spatial, C) of any patch-divisible size -> (B, D): the [CLS] output
    (mean of the patch tokens without a cls token)."""
    tokens = self.encoder(images)
    return tokens[:, 0] if self.cfg.vit.use_cls_token else tokens.mean(1)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images -> prototype logits (B, out_dim) float32."""
    return self.head(self.features(images))

  def token_logits(self, images: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """images (B, *spatial, C), mask (B, N) bool (True = the patch enters as the [MASK]
    embedding) or None -> logits of every token (B, 1 + N, out_dim): [CLS] first, then
    the patches (iBOT)."""
    if not self.cfg.vit.use_cls_token:
      raise ValueError("token_logits needs the ViT's cls token")
    enc, patch = self.encoder, tuple(self.cfg.vit.patch_size)
    patches = patchify(images, patch)
    x = enc.patch_embed(patches)
    if mask is not None:
      if self.mask_token is None:
        raise ValueError("masked inputs need model.mask_token=True")
      x = jnp.where(mask[..., None], self.mask_token[...].astype(x.dtype), x)
    idx = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    grid = tuple(side // p for side, p in zip(images.shape[1:-1], patch))
    x = constrain(x + enc.pos(idx, grid).astype(x.dtype), ACT)
    return self.head(enc.encode(x))


def head_flops(cfg: DinoConfig) -> float:
  """Forward matmul FLOPs of the projection head for one image."""
  d, h, k = cfg.vit.d_model, cfg.head_hidden_dim, cfg.head_bottleneck_dim
  return 2 * (d * h + h * h + h * k + k * cfg.out_dim)
