"""Vision Transformer and MAE over patches of any dimensionality.

Patches are generic over the number of spatial axes: (H, W) images now, (T, H, W) video
tubes and (freq, time) spectrograms with the same code.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import Dense, LearnedPositions, normal_param, sinusoidal_positions
from models.partitioning import constrain
from models.transformer import (ACT, DTYPES, BlockConfig, TransformerStack, check_choice,
                                make_norm, stack_flops_per_token)


def _grid(spatial: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
  if len(spatial) != len(patch) or any(s % p for s, p in zip(spatial, patch)):
    raise ValueError(f"spatial shape {spatial} is not divisible into patches {patch}")
  return tuple(s // p for s, p in zip(spatial, patch))


def patchify(x: jax.Array, patch: tuple[int, ...]) -> jax.Array:
  """x (B, *spatial, C) -> (B, N, prod(patch) * C), patches in row-major grid order,
  each flattened as (*patch, C) like MAE's 'nhwpqc'."""
  b, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
  grid, n = _grid(spatial, patch), len(patch)
  x = x.reshape((b,) + sum(((g, p) for g, p in zip(grid, patch)), ()) + (c,))
  perm = (0,) + tuple(range(1, 2 * n, 2)) + tuple(range(2, 2 * n + 1, 2)) + (2 * n + 1,)
  return x.transpose(perm).reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(patches: jax.Array, patch: tuple[int, ...], spatial_shape: tuple[int, ...],
               channels: int) -> jax.Array:
  """Inverse of `patchify`: (B, N, prod(patch) * C) -> (B, *spatial_shape, C)."""
  grid, n = _grid(tuple(spatial_shape), patch), len(patch)
  if patches.shape[1:] != (math.prod(grid), math.prod(patch) * channels):
    raise ValueError(f"patches {patches.shape} do not fit grid {grid} x patch {patch} "
                     f"x {channels} channels")
  x = patches.reshape((patches.shape[0],) + grid + tuple(patch) + (channels,))
  perm = (0,) + sum(((1 + i, 1 + n + i) for i in range(n)), ()) + (2 * n + 1,)
  return x.transpose(perm).reshape((patches.shape[0],) + tuple(spatial_shape) + (channels,))


def sincos_grid_positions(grid: tuple[int, ...], dim: int) -> jax.Array:
  """Fixed per-axis sin-cos table (prod(grid), dim): dim/len(grid) channels per axis,
  last axis first (MAE's 2D layout: [w, h])."""
  if dim % (2 * len(grid)):
    raise ValueError(f"sincos positions need dim divisible by {2 * len(grid)}, got {dim}")
  coords = jnp.stack(jnp.meshgrid(*(jnp.arange(g) for g in grid), indexing="ij"), -1)
  coords = coords.reshape(-1, len(grid))  # (N, ndim), row-major like patchify
  parts = [sinusoidal_positions(coords[:, a], dim // len(grid))
           for a in reversed(range(len(grid)))]
  return jnp.concatenate(parts, axis=-1)  # (N, dim)


class PatchGeometry:
  """Patch-grid properties of a config with image_size, patch_size and channels fields."""

  @property
  def grid(self) -> tuple[int, ...]:
    return _grid(tuple(self.image_size), tuple(self.patch_size))

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  @property
  def patch_dim(self) -> int:
    return math.prod(self.patch_size) * self.channels


@dataclasses.dataclass(frozen=True)
class ViTConfig(PatchGeometry):
  """ViT encoder (+ MAE decoder fields); sizes by name come from `models.variants`."""
  image_size: tuple[int, ...]
  patch_size: tuple[int, ...]
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  channels: int = 3
  pos_emb: str = "sincos"  # fixed per-axis sin-cos (MAE), "learned" or "none" (MP3)
  use_cls_token: bool = True
  pre_norm: bool = False  # CLIP's LayerNorm on the embedded tokens before the stack
  norm: str = "pre"
  activation: str = "gelu"
  dtype: str = "float32"
  ln_eps: float = 1e-6  # ViT / MAE
  init_std: float = 0.02
  # MAE decoder (He et al. 2021 §A.1 default: 512 wide, 8 blocks, 16 heads).
  dec_d_model: int = 512
  dec_layers: int = 8
  dec_heads: int = 16
  dec_d_ff: int = 2048
  scan_layers: bool = False
  remat: str = "none"

  @property
  def num_prefix(self) -> int:
    return int(self.use_cls_token)

  @property
  def encoder_block(self) -> BlockConfig:
    return BlockConfig.of(self)

  @property
  def decoder_block(self) -> BlockConfig:
    return dataclasses.replace(self.encoder_block, d_model=self.dec_d_model,
                               num_heads=self.dec_heads, d_ff=self.dec_d_ff)

  def validate(self) -> None:
    check_choice("pos_emb", self.pos_emb, ("sincos", "learned", "none"))
    check_choice("dtype", self.dtype, DTYPES)
    grid = self.grid  # raises unless image_size divides into patch_size
    if self.pos_emb == "sincos":
      for field in ("d_model", "dec_d_model"):
        if getattr(self, field) % (2 * len(grid)):
          raise ValueError(f"pos_emb='sincos' needs {field} divisible by "
                           f"{2 * len(grid)}, got {getattr(self, field)}")
    self.encoder_block.validate()


class PatchPositions(nnx.Module):
  """Position embedding of grid patches: fixed sin-cos (no param) or learned. Another grid
  (DINO's smaller local crops) gets the table bilinearly resized to it, so a crop's corners
  keep the image corners' positions (DINO's `interpolate_pos_encoding`, bilinear here)."""

  def __init__(self, cfg: ViTConfig, dim: int, *, rngs: nnx.Rngs):
    self.grid, self.dim = cfg.grid, dim
    self.learned = (LearnedPositions(cfg.num_patches, dim, init_std=cfg.init_std, rngs=rngs)
                    if cfg.pos_emb == "learned" else None)

  def table(self, grid: tuple[int, ...] | None = None) -> jax.Array:
    """(prod(grid), dim) float32 positions of `grid` (default the config's): the config's
    table resized with half-pixel-centred linear interpolation, no antialiasing."""
    full = (self.learned.table[...] if self.learned is not None
            else sincos_grid_positions(self.grid, self.dim))
    grid = tuple(grid or self.grid)
    if grid == self.grid:
      return full
    resized = jax.image.resize(full.reshape(self.grid + (self.dim,)), grid + (self.dim,),
                               "linear", antialias=False)
    return resized.reshape(-1, self.dim)

  def __call__(self, patch_idx: jax.Array, grid: tuple[int, ...] | None = None) -> jax.Array:
    """patch_idx (B, n) int into `grid` (default the config's) -> (B, n, dim) float32."""
    return jnp.take(self.table(grid), patch_idx, axis=0)


class ViT(nnx.Module):
  """Patch embedding + positions + optional cls token + bidirectional stack."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.patch_embed = Dense(cfg.patch_dim, cfg.d_model, ("patch", "embed"), dtype=cfg.dtype,
                             init_std=cfg.init_std, rngs=rngs)
    self.pos = (PatchPositions(cfg, cfg.d_model, rngs=rngs) if cfg.pos_emb != "none"
                else None)
    self.cls_token = (normal_param(rngs, (1, 1, cfg.d_model), (None, None, "embed"),
                                   cfg.init_std) if cfg.use_cls_token else None)
    self.pre_norm = make_norm(cfg.encoder_block) if cfg.pre_norm else None
    self.stack = TransformerStack(cfg.encoder_block, cfg.num_layers, rngs=rngs)

  def embed(self, patches: jax.Array, patch_idx: jax.Array,
            grid: tuple[int, ...] | None = None) -> jax.Array:
    """patches (B, n, P) at indices patch_idx (B, n) of `grid` (default the config's) ->
    (B, n, D); without position embeddings (pos_emb="none") the patches alone."""
    x = self.patch_embed(patches)
    if self.pos is not None:
      x = x + self.pos(patch_idx, grid).astype(self.cfg.dtype)
    return constrain(x, ACT)

  def encode(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Embedded patches (B, n, D) -> tokens (B, prefix + n, D), cls first if used; `mask`
    bool (B, 1, 1 or prefix + n, prefix + n) limits what each token attends (None = all)."""
    if self.cls_token is not None:
      cls = self.cls_token[...].astype(x.dtype)
      cls = jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[2]))  # (B, 1, D)
      x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    return self.stack(x, mask=mask)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images (B, *spatial, C), any spatial shape that divides into patches (positions are
    interpolated to its grid) -> tokens (B, 1 + N, D) (no cls: (B, N, D))."""
    patch = tuple(self.cfg.patch_size)
    patches = patchify(images, patch)  # (B, N, P)
    idx = jnp.broadcast_to(jnp.arange(patches.shape[1]), patches.shape[:2])
    return self.encode(self.embed(patches, idx, _grid(images.shape[1:-1], patch)))


class MAE(nnx.Module):
  """Masked autoencoder (He et al. 2021): the encoder sees only visible patches, a light
  decoder reconstructs all. Masking randomness is the caller's (keep_idx)."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = ViT(cfg, rngs=rngs)
    dec, std = cfg.decoder_block, cfg.init_std
    self.dec_embed = Dense(cfg.d_model, dec.d_model, ("embed", "mlp"), dtype=cfg.dtype,
                           init_std=std, rngs=rngs)
    self.mask_token = normal_param(rngs, (1, 1, dec.d_model), (None, None, "embed"), std)
    self.dec_pos = PatchPositions(cfg, dec.d_model, rngs=rngs)
    self.decoder = self.build_decoder(dec, rngs)
    self.dec_pred = Dense(dec.d_model, cfg.patch_dim, ("embed", "patch"), dtype=cfg.dtype,
                          init_std=std, rngs=rngs, out_dtype=jnp.float32)

  def build_decoder(self, dec: BlockConfig, rngs: nnx.Rngs) -> nnx.Module:
    """MAE's decoder: self-attention blocks over all patches (variants swap it)."""
    return TransformerStack(dec, self.cfg.dec_layers, rngs=rngs)

  def encode(self, patches: jax.Array, keep_idx: jax.Array) -> jax.Array:
    """patches (B, N, P), keep_idx (B, Nk) int -> latent (B, 1 + Nk, D)."""
    visible = jnp.take_along_axis(patches, keep_idx[..., None], axis=1)  # (B, Nk, P)
    return self.encoder.encode(self.encoder.embed(visible, keep_idx))

  def decode(self, latent: jax.Array, keep_idx: jax.Array, num_patches: int) -> jax.Array:
    """latent (B, 1 + Nk, D) -> predicted patches (B, N, P) float32 for every patch."""
    x = self.decoder(self.decoder_inputs(latent, keep_idx, num_patches), mask=None)
    return self.dec_pred(x[:, self.cfg.num_prefix:])  # (B, N, P)

  def decoder_inputs(self, latent: jax.Array, keep_idx: jax.Array,
                     num_patches: int) -> jax.Array:
    """latent (B, 1 + Nk, D) -> (B, 1 + N, Dd): the embedded latents at their patches,
    the mask token at the others, plus decoder positions."""
    if num_patches != self.cfg.num_patches:
      raise ValueError(f"num_patches={num_patches} != the config's {self.cfg.num_patches}")
    x = self.dec_embed(latent)  # (B, 1 + Nk, Dd)
    prefix, visible = x[:, :self.cfg.num_prefix], x[:, self.cfg.num_prefix:]
    b, d = x.shape[0], x.shape[2]
    full = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, num_patches, d))
    full = full.at[jnp.arange(b)[:, None], keep_idx].set(visible)  # (B, N, Dd)
    idx = jnp.broadcast_to(jnp.arange(num_patches), (b, num_patches))
    full = full + self.dec_pos(idx).astype(x.dtype)
    return constrain(jnp.concatenate([prefix, full], axis=1), ACT)


def vit_encoder_flops_per_image(cfg: ViTConfig, num_tokens: int) -> float:
  """Forward matmul FLOPs of the encoder for `num_tokens` patch tokens (+ cls if used):
  patch embedding 2 * P * D per patch, then the stack with every token attending all."""
  tokens = num_tokens + cfg.num_prefix
  embed = num_tokens * 2 * cfg.patch_dim * cfg.d_model
  return embed + tokens * stack_flops_per_token(cfg.encoder_block, cfg.num_layers, tokens)


def mae_flops_per_image(cfg: ViTConfig, mask_ratio: float) -> float:
  """Forward FLOPs of MAE: encoder on int(N * (1 - mask_ratio)) visible patches + cls,
  decoder (embed, stack, pixel head) on all N patches + cls."""
  n = cfg.num_patches
  visible = int(n * (1 - mask_ratio))
  dec, tokens = cfg.decoder_block, n + cfg.num_prefix
  dec_embed = (visible + cfg.num_prefix) * 2 * cfg.d_model * dec.d_model
  decoder = tokens * stack_flops_per_token(dec, cfg.dec_layers, tokens)
  pred = n * 2 * dec.d_model * cfg.patch_dim
  return vit_encoder_flops_per_image(cfg, visible) + dec_embed + decoder + pred
