"""MultiMAE (Bachmann et al. 2022, "MultiMAE: Multi-modal Multi-task Masked Autoencoders").

Several spatially aligned modalities of one image (in the paper RGB, depth and semantic
segmentation) are cut into patches on the same grid; each has its own patch projection
(a categorical map first embeds each pixel's class, as the paper's segmentation adapter
does) plus the shared sin-cos positions. Each projection's bias is that modality's
embedding (the paper adds no other, for that reason). One ViT encoder reads the
concatenated visible tokens of all modalities (a fixed total, split between the
modalities by the caller's Dirichlet draw), so it has to predict across modalities. Each
modality has its own light decoder (the paper's output adapter): the encoder tokens are
projected to its width and given their positions and learned modality embeddings; its
queries are the modality's own projected visible latents at their patches and mask tokens
elsewhere, plus positions and the modality's embedding. The queries cross-attend to the
visible tokens and the global (cls) token (no residual around that attention, as in the
released adapter), then go through an MLP and a couple of self-attention blocks, and a
linear head predicts the modality's pixels (or per-pixel class logits) of every patch.

The image modality is the ViT's own patch embedding, so `MultiMAE.encoder` is a plain ViT
that also runs on images alone (how the paper fine-tunes with RGB only).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.encoder_decoder import CrossAttention
from models.layers import Dense, Mlp, normal_param
from models.partitioning import constrain
from models.transformer import ACT, BlockConfig, TransformerStack, make_norm, stack_flops_per_token
from models.vit import PatchPositions, ViT, ViTConfig, patchify, vit_encoder_flops_per_image


@dataclasses.dataclass(frozen=True)
class Modality:
  """One input/output modality: `channels` per pixel, or `channels` classes if
  `categorical` (an int map then, predicted with per-pixel logits)."""
  name: str
  channels: int
  categorical: bool = False


@dataclasses.dataclass(frozen=True)
class MultiMAEConfig(ViTConfig):
  """ViT + the extra modalities (the first modality is always the image, `channels`
  wide); dec_* size each modality's decoder, dec_layers its self-attention blocks."""
  extra_modalities: tuple[Modality, ...] = ()
  class_embed_dim: int = 64  # MultiMAE's segmentation adapter: 64-d class embeddings

  @property
  def modalities(self) -> tuple[Modality, ...]:
    return (Modality("image", self.channels),) + tuple(self.extra_modalities)

  def validate(self) -> None:
    super().validate()
    names = [m.name for m in self.modalities]
    if len(set(names)) != len(names):
      raise ValueError(f"modality names {names} repeat")
    if any(m.channels < 1 or (m.categorical and m.channels < 2) for m in self.modalities):
      raise ValueError(f"modalities {self.modalities}: need >= 1 channel, >= 2 classes")
    if self.class_embed_dim < 1:
      raise ValueError(f"class_embed_dim={self.class_embed_dim}: must be >= 1")


class InputAdapter(nnx.Module):
  """A non-image modality's patch projection; categorical maps embed each pixel's class
  first (B, *S) int -> (B, *S, class_embed_dim), then patchify and project."""

  def __init__(self, cfg: MultiMAEConfig, modality: Modality, *, rngs: nnx.Rngs):
    self.patch = tuple(cfg.patch_size)
    self.classes = (normal_param(rngs, (modality.channels, cfg.class_embed_dim),
                                 (None, "embed"), cfg.init_std)
                    if modality.categorical else None)
    width = cfg.class_embed_dim if modality.categorical else modality.channels
    self.proj = Dense(math.prod(self.patch) * width, cfg.d_model, ("patch", "embed"),
                      dtype=cfg.dtype, init_std=cfg.init_std, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.classes is not None:
      x = jnp.take(self.classes[...], x, axis=0)
    return self.proj(patchify(x, self.patch))  # (B, N, D)


class CrossAttentionAdapter(nnx.Module):
  """MultiMAE's output-adapter core: x = CrossAttn(norm(queries), norm(context)), then
  x + MLP(norm(x)). The queries already carry the modality's visible latents."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    self.query_norm, self.context_norm, self.mlp_norm = (make_norm(cfg) for _ in range(3))
    self.attn = CrossAttention(cfg.d_model, cfg.num_heads, dtype=cfg.dtype,
                               init_std=cfg.init_std, rngs=rngs)
    self.mlp = Mlp(cfg.d_model, cfg.d_ff, cfg.activation, dtype=cfg.dtype,
                   init_std=cfg.init_std, rngs=rngs)

  def __call__(self, queries: jax.Array, context: jax.Array) -> jax.Array:
    x = self.attn(self.query_norm(queries), self.context_norm(context), mask=None)
    return constrain(x + self.mlp(self.mlp_norm(x)), ACT)


class ModalityDecoder(nnx.Module):
  """One modality's decoder: context projection, queries, cross-attention adapter,
  `dec_layers` self-attention blocks, linear head to the modality's patch outputs."""

  def __init__(self, cfg: MultiMAEConfig, index: int, *, rngs: nnx.Rngs):
    dec, std = cfg.decoder_block, cfg.init_std
    modality = cfg.modalities[index]
    self.index, self.num_patches = index, cfg.num_patches
    self.context_proj = Dense(cfg.d_model, dec.d_model, ("embed", "mlp"), dtype=cfg.dtype,
                              init_std=std, rngs=rngs)
    self.mask_token = normal_param(rngs, (1, 1, dec.d_model), (None, None, "embed"), std)
    # Which modality a context token or query comes from (added with its position).
    self.modality_embed = normal_param(rngs, (len(cfg.modalities), dec.d_model),
                                       (None, "embed"), std)
    self.pos = PatchPositions(cfg, dec.d_model, rngs=rngs)
    self.adapter = CrossAttentionAdapter(dec, rngs=rngs)
    self.blocks = TransformerStack(dec, cfg.dec_layers, rngs=rngs)
    self.head = Dense(dec.d_model, math.prod(cfg.patch_size) * modality.channels,
                      ("embed", "patch"), dtype=cfg.dtype, init_std=std, rngs=rngs,
                      out_dtype=jnp.float32)

  def __call__(self, latent: jax.Array, keep_idx: jax.Array, num_prefix: int) -> jax.Array:
    """latent (B, prefix + T, D) of the visible tokens at keep_idx (B, T) into the
    concatenation of all modalities' patches -> (B, N, patch outputs) float32."""
    n = self.num_patches
    x = self.context_proj(latent)  # (B, prefix + T, Dd)
    prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
    which, patch = keep_idx // n, keep_idx % n
    b, d = x.shape[0], x.shape[2]
    queries = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, n, d))
    # This modality's visible latents go to their patches; the others' are dropped
    # (index n is out of range).
    target = jnp.where(which == self.index, patch, n)
    queries = queries.at[jnp.arange(b)[:, None], target].set(visible, mode="drop")
    every = jnp.broadcast_to(jnp.arange(n), (b, n))
    queries = queries + (self.pos(every) + self.modality_embed[self.index]).astype(x.dtype)
    visible = visible + (self.pos(patch) + jnp.take(self.modality_embed[...], which, axis=0)
                         ).astype(x.dtype)
    context = jnp.concatenate([prefix, visible], axis=1)  # the global token: no embedding
    y = self.adapter(constrain(queries, ACT), constrain(context, ACT))
    return self.head(self.blocks(y, mask=None))


class MultiMAE(nnx.Module):
  """Shared ViT encoder over the visible tokens of all modalities + one decoder each.
  Masking randomness is the caller's (keep_idx into the concatenated patch tokens)."""

  def __init__(self, cfg: MultiMAEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = ViT(cfg, rngs=rngs)  # its patch embedding is the image's adapter
    self.adapters = nnx.List([InputAdapter(cfg, m, rngs=rngs)
                              for m in cfg.extra_modalities])
    self.decoders = nnx.List([ModalityDecoder(cfg, i, rngs=rngs)
                              for i in range(len(cfg.modalities))])

  def embed(self, index: int, x: jax.Array) -> jax.Array:
    """Modality `index`'s map x -> all its tokens (B, N, D): projection + positions."""
    cfg = self.cfg
    idx = jnp.broadcast_to(jnp.arange(cfg.num_patches), (x.shape[0], cfg.num_patches))
    if index == 0:
      return self.encoder.embed(patchify(x, cfg.patch_size), idx)
    return constrain(self.adapters[index - 1](x) + self.encoder.pos(idx).astype(cfg.dtype),
                     ACT)

  def tokens(self, inputs: dict[str, jax.Array]) -> jax.Array:
    """Every modality embedded: (B, M * N, D), modality-major (modality m's patch j is
    token m * N + j)."""
    return jnp.concatenate([self.embed(i, inputs[m.name])
                            for i, m in enumerate(self.cfg.modalities)], axis=1)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """The image alone, every patch visible -> (B, prefix + N, D)."""
    return self.encoder.encode(self.embed(0, images))

  def encode(self, inputs: dict[str, jax.Array], keep_idx: jax.Array) -> jax.Array:
    """inputs (name -> (B, *S, C) or categorical (B, *S) int), keep_idx (B, T) ->
    latent (B, prefix + T, D)."""
    visible = jnp.take_along_axis(self.tokens(inputs), keep_idx[..., None], axis=1)
    return self.encoder.encode(visible)

  def decode(self, latent: jax.Array, keep_idx: jax.Array) -> list[jax.Array]:
    """Per modality, predicted patch outputs (B, N, prod(patch) * channels) float32."""
    return [dec(latent, keep_idx, self.cfg.num_prefix) for dec in self.decoders]


def multimae_flops_per_image(cfg: MultiMAEConfig, num_visible: int) -> float:
  """Forward matmul FLOPs: every patch of every modality projected (categorical ones from
  their class embeddings), the encoder stack on the visible tokens + prefix, and per
  decoder the context projection, the cross-attention adapter (queries = all N patches),
  its self-attention blocks and head."""
  n, d, prefix = cfg.num_patches, cfg.d_model, cfg.num_prefix
  dec, ctx = cfg.decoder_block, num_visible + prefix
  dd, area = dec.d_model, math.prod(cfg.patch_size)
  width = lambda m: cfg.class_embed_dim if m.categorical else m.channels
  embed = sum(n * 2 * area * width(m) * d for m in cfg.modalities)
  # vit_encoder_flops_per_image counts the projection of the visible patches only.
  encoder = (vit_encoder_flops_per_image(cfg, num_visible) - num_visible * 2 * cfg.patch_dim * d
             + embed)
  adapter = n * 4 * dd * dd + ctx * 4 * dd * dd + n * 4 * ctx * dd + n * 4 * dd * dec.d_ff
  per_decoder = (ctx * 2 * d * dd + adapter
                 + n * stack_flops_per_token(dec, cfg.dec_layers, n))
  heads = sum(n * 2 * dd * area * m.channels for m in cfg.modalities)
  return encoder + len(cfg.modalities) * per_decoder + heads
