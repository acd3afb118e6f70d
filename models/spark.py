"""SparK (Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and
Hierarchical Masked Modeling"), the masked-image-modelling method for CNNs that Wolf et al.
2023 ("Self-supervised pre-training with contrastive and masked autoencoder methods for
dealing with small datasets in deep learning for medical imaging") compare against
contrastive pretraining.

A CNN cannot drop masked patches the way a ViT does, and zeroed patches alone would let
every convolution smear visible content into them (and shift normalisation statistics),
so SparK treats the visible patches as a sparse point set and convolves it with
submanifold sparse convolutions. That is emulated densely here, as SparK's own code does:
the input's masked patches are zeroed and the mask (nearest-upsampled to each scale) is
applied again after every convolution, normalisation and pooling, so masked positions stay
exactly zero at every scale; batch-norm statistics are taken over visible positions only.
The mask unit is the network's total stride, so at the coarsest scale each patch is one
position.

A light UNet-style decoder then densifies the hierarchy: at each scale the masked
positions of the encoder's feature map are filled with a learned mask embedding, a
normalisation and a projection map it to the decoder's width, and it is added to the
upsampled decoder state coming from the coarser scale; a 1x1 convolution predicts pixels.

The encoder is a ResNet with configurable stem and stages (basic or bottleneck blocks, as
torchvision's ResNet v1.5: the stride sits in the 3x3 convolution).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import const_param, normal_param
from models.partitioning import with_axes
from models.transformer import DTYPES, check_choice

CONV_AXES = (None, None, "embed", "mlp")  # (kh, kw, in, out) kernels, like a Dense's
# The stem reads and the head writes a few image channels: no sharding on those axes.
STEM_AXES, HEAD_AXES = (None, None, "patch", "mlp"), (None, None, "embed", "patch")
DECODER_INIT_STD = 0.02  # SparK initialises its decoder's convolutions N(0, 0.02)


@dataclasses.dataclass(frozen=True)
class SparKConfig:
  """Sparse ResNet encoder + light decoder. Stage i has `stage_blocks[i]` blocks of inner
  width `stage_widths[i]` (x4 out with bottlenecks), stride 1 for the first stage and 2
  for the others."""
  image_size: tuple[int, int]
  channels: int = 3
  stem_width: int = 64
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True  # 3x3 stride-2 max pooling after the stem (ResNet)
  stage_blocks: tuple[int, ...] = (3, 4, 6, 3)  # ResNet-50
  stage_widths: tuple[int, ...] = (64, 128, 256, 512)
  bottleneck: bool = True
  dec_width: int = 512  # decoder width at the coarsest scale, halved at every upsampling
  bn_eps: float = 1e-5
  dtype: str = "float32"

  @property
  def expansion(self) -> int:
    return 4 if self.bottleneck else 1

  @property
  def stage_strides(self) -> tuple[int, ...]:
    """Each stage's output stride relative to the input."""
    first = self.stem_stride * (2 if self.stem_pool else 1)
    return tuple(first * 2 ** i for i in range(len(self.stage_blocks)))

  @property
  def downsample(self) -> int:
    """The total stride: the side of a mask patch."""
    return self.stage_strides[-1]

  @property
  def grid(self) -> tuple[int, int]:
    return tuple(s // self.downsample for s in self.image_size)

  @property
  def dec_widths(self) -> tuple[int, ...]:
    """Decoder widths from the coarsest scale to full resolution."""
    return tuple(self.dec_width // 2 ** i for i in range(int(math.log2(self.downsample)) + 1))

  def validate(self) -> None:
    check_choice("dtype", self.dtype, DTYPES)
    r = self.downsample
    if r & (r - 1):
      raise ValueError(f"total stride {r} (stem_stride x pool x 2^(stages-1)) must be a "
                       "power of 2 for the decoder's 2x upsamplings")
    if any(s % r or s < r for s in self.image_size):
      raise ValueError(f"image_size {self.image_size} must be a positive multiple of the "
                       f"total stride {r}")
    if len(self.stage_blocks) != len(self.stage_widths) or min(self.stage_blocks) < 1:
      raise ValueError(f"stage_blocks {self.stage_blocks} and stage_widths "
                       f"{self.stage_widths}: one entry >= 1 per stage")
    if self.dec_widths[-1] < 1:
      raise ValueError(f"dec_width={self.dec_width} halves to 0 over {r}x upsampling")


def active_at(active: jax.Array, x: jax.Array) -> jax.Array:
  """active (B, gh, gw) bool mask grid -> (B, H, W, 1) float32 at x's resolution
  (nearest: each grid cell covers a square of x)."""
  (fh, fw) = (x.shape[1] // active.shape[1], x.shape[2] // active.shape[2])
  up = jnp.repeat(jnp.repeat(active, fh, axis=1), fw, axis=2)
  return up[..., None].astype(jnp.float32)


def conv_kernel(rngs: nnx.Rngs, shape: tuple[int, ...], init_std: float | None,
                axes=CONV_AXES):
  """A (kh, kw, in, out) kernel: He-normal fan-out (torchvision's ResNet) if init_std is
  None, else N(0, init_std) (SparK's decoder: 0.02)."""
  init = (nnx.initializers.variance_scaling(2.0, "fan_out", "normal") if init_std is None
          else nnx.initializers.normal(init_std))
  return nnx.Param(with_axes(init, axes)(rngs.params(), shape, jnp.float32))


class Conv(nnx.Module):
  """2D convolution, NHWC, symmetric padding kernel // 2 (PyTorch's); no bias unless asked
  (a norm follows)."""

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, bias: bool = False,
               dtype, rngs: nnx.Rngs, init_std: float | None = None, axes=CONV_AXES):
    self.kernel = conv_kernel(rngs, (kernel, kernel, cin, cout), init_std, axes)
    self.bias = const_param(cout, axes[3:], 0.0) if bias else None
    self.stride, self.pad, self.dtype = stride, kernel // 2, jnp.dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride,) * 2,
        ((self.pad, self.pad),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32)
    return (y if self.bias is None else y + self.bias[...]).astype(self.dtype)


class UpConv(nnx.Module):
  """2x transposed convolution (kernel 4, stride 2: SparK's decoder upsampling)."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.kernel = conv_kernel(rngs, (4, 4, cin, cout), DECODER_INIT_STD)
    self.bias = const_param(cout, ("mlp",), 0.0)
    self.dtype = jnp.dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_transpose(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                               (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               preferred_element_type=jnp.float32)
    return (y + self.bias[...]).astype(self.dtype)


class SparseBatchNorm(nnx.Module):
  """Batch norm whose per-channel statistics are taken over the visible positions of the
  whole batch only, output re-masked (SparK's SparseBatchNorm2d). Always batch statistics:
  the trainer carries params only, so no running averages (see the recipe)."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.scale = const_param(dim, ("norm",), 1.0)
    self.bias = const_param(dim, ("norm",), 0.0)
    self.eps, self.dtype = eps, jnp.dtype(dtype)

  def __call__(self, x: jax.Array, active: jax.Array) -> jax.Array:
    """x (B, H, W, C), active (B, H, W, 1) float 0/1."""
    x = x.astype(jnp.float32)
    count = jnp.maximum(active.sum((0, 1, 2)), 1.0)
    mean = (x * active).sum((0, 1, 2)) / count
    var = (jnp.square(x - mean) * active).sum((0, 1, 2)) / count
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return (y * active).astype(self.dtype)


class ConvNorm(nnx.Module):
  """Sparse conv -> sparse batch norm (-> ReLU): masked positions zero on the way out."""

  def __init__(self, cin: int, cout: int, kernel: int, cfg: SparKConfig, *, stride: int = 1,
               relu: bool = True, rngs: nnx.Rngs, axes=CONV_AXES):
    self.conv = Conv(cin, cout, kernel, stride=stride, dtype=cfg.dtype, rngs=rngs, axes=axes)
    self.norm = SparseBatchNorm(cout, eps=cfg.bn_eps, dtype=cfg.dtype)
    self.relu = relu

  def __call__(self, x: jax.Array, active: jax.Array) -> jax.Array:
    y = self.conv(x)
    mask = active_at(active, y)  # at the conv's output scale (strided convs halve it)
    y = self.norm(y * mask, mask)
    return jax.nn.relu(y) if self.relu else y


class ResidualBlock(nnx.Module):
  """Basic (3x3, 3x3) or bottleneck (1x1, 3x3 strided, 1x1 x4) residual block; a 1x1
  strided projection shortcut when the shape changes."""

  def __init__(self, cin: int, width: int, stride: int, cfg: SparKConfig, *, rngs: nnx.Rngs):
    cout = width * cfg.expansion
    if cfg.bottleneck:
      self.layers = nnx.List([ConvNorm(cin, width, 1, cfg, rngs=rngs),
                              ConvNorm(width, width, 3, cfg, stride=stride, rngs=rngs),
                              ConvNorm(width, cout, 1, cfg, relu=False, rngs=rngs)])
    else:
      self.layers = nnx.List([ConvNorm(cin, width, 3, cfg, stride=stride, rngs=rngs),
                              ConvNorm(width, cout, 3, cfg, relu=False, rngs=rngs)])
    self.shortcut = (ConvNorm(cin, cout, 1, cfg, stride=stride, relu=False, rngs=rngs)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x: jax.Array, active: jax.Array) -> jax.Array:
    y = x
    for layer in self.layers:
      y = layer(y, active)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x, active)))


class SparseResNet(nnx.Module):
  """ResNet whose every layer keeps masked positions at zero; returns every stage's output
  (finest first), the hierarchy the decoder reads."""

  def __init__(self, cfg: SparKConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.stem = ConvNorm(cfg.channels, cfg.stem_width, cfg.stem_kernel, cfg,
                         stride=cfg.stem_stride, rngs=rngs, axes=STEM_AXES)
    blocks, cin = [], cfg.stem_width
    for i, (n, width) in enumerate(zip(cfg.stage_blocks, cfg.stage_widths)):
      stage = []
      for j in range(n):
        stage.append(ResidualBlock(cin, width, 2 if i and not j else 1, cfg, rngs=rngs))
        cin = width * cfg.expansion
      blocks.append(nnx.List(stage))
    self.stages = nnx.List(blocks)

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(w * self.cfg.expansion for w in self.cfg.stage_widths)

  def __call__(self, images: jax.Array, active: jax.Array) -> list[jax.Array]:
    """images (B, H, W, C), active (B, gh, gw) bool (True = visible) -> stage outputs
    (B, H / s, W / s, C_s) for s in cfg.stage_strides."""
    x = self.stem(images * active_at(active, images), active)
    if self.cfg.stem_pool:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                ((0, 0), (1, 1), (1, 1), (0, 0)))
      x = x * active_at(active, x)
    features = []
    for stage in self.stages:
      for block in stage:
        x = block(x, active)
      features.append(x)
    return features


class DecoderBlock(nnx.Module):
  """SparK's UNet block: 2x transposed conv, then 2 x (3x3 conv, batch norm, ReLU6)."""

  def __init__(self, cin: int, cout: int, cfg: SparKConfig, *, rngs: nnx.Rngs):
    self.up = UpConv(cin, cin, dtype=cfg.dtype, rngs=rngs)
    self.convs = nnx.List([Conv(cin, c, 3, dtype=cfg.dtype, rngs=rngs,
                                init_std=DECODER_INIT_STD) for c in (cin, cout)])
    self.norms = nnx.List([SparseBatchNorm(c, eps=cfg.bn_eps, dtype=cfg.dtype)
                           for c in (cin, cout)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.up(x)
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x)
      x = jax.nn.relu6(norm(x, jnp.ones(x.shape[:3] + (1,), jnp.float32)))
    return x


class SparK(nnx.Module):
  """Sparse ResNet encoder + densifying light decoder. Masking is the caller's (`active`)."""

  def __init__(self, cfg: SparKConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.encoder = SparseResNet(cfg, rngs=rngs)
    widths = cfg.dec_widths
    # Encoder features coarsest first, each met by the decoder at its own scale.
    enc = self.encoder.widths[::-1]
    self.mask_tokens = nnx.List([normal_param(rngs, (c,), ("embed",), 0.02) for c in enc])
    self.densify_norms = nnx.List([SparseBatchNorm(c, eps=cfg.bn_eps, dtype=cfg.dtype)
                                   for c in enc])
    self.densify_projs = nnx.List([Conv(c, widths[i], 1 if i == 0 else 3, bias=True,
                                        dtype=cfg.dtype, rngs=rngs, init_std=DECODER_INIT_STD)
                                   for i, c in enumerate(enc)])
    self.blocks = nnx.List([DecoderBlock(widths[i], widths[i + 1], cfg, rngs=rngs)
                            for i in range(len(widths) - 1)])
    self.head = Conv(widths[-1], cfg.channels, 1, bias=True, dtype=cfg.dtype, rngs=rngs,
                     init_std=DECODER_INIT_STD, axes=HEAD_AXES)

  def __call__(self, images: jax.Array, active: jax.Array) -> jax.Array:
    """images (B, H, W, C), active (B, gh, gw) bool -> predicted images (B, H, W, C) f32."""
    features = self.encoder(images, active)[::-1]  # coarsest first
    x = 0.0
    for i in range(len(self.blocks) + 1):
      if i < len(features):
        f = features[i]
        visible = active_at(active, f)
        f = jnp.where(visible > 0, f, self.mask_tokens[i][...].astype(f.dtype))
        f = self.densify_norms[i](f, jnp.ones_like(visible))
        x = x + self.densify_projs[i](f)
      if i < len(self.blocks):
        x = self.blocks[i](x)
    return self.head(x).astype(jnp.float32)


def _conv_flops(side_h: int, side_w: int, k: int, cin: int, cout: int) -> float:
  return 2 * side_h * side_w * k * k * cin * cout


def resnet_flops_per_image(cfg: SparKConfig) -> float:
  """Forward matmul FLOPs of the encoder (every position is computed, masked or not):
  2 x outputs x k^2 x c_in for every convolution."""
  h, w = cfg.image_size
  conv = _conv_flops
  s = cfg.stem_stride
  total = conv(h // s, w // s, cfg.stem_kernel, cfg.channels, cfg.stem_width)
  cin = cfg.stem_width
  for i, (n, width) in enumerate(zip(cfg.stage_blocks, cfg.stage_widths)):
    oh, ow = h // cfg.stage_strides[i], w // cfg.stage_strides[i]
    cout = width * cfg.expansion
    for j in range(n):
      if cfg.bottleneck:
        total += conv(oh, ow, 1, cin, width) * (4 if i and not j else 1)  # at the input side
        total += conv(oh, ow, 3, width, width) + conv(oh, ow, 1, width, cout)
      else:
        total += conv(oh, ow, 3, cin, width) + conv(oh, ow, 3, width, cout)
      if j == 0 and (i or cin != cout):
        total += conv(oh, ow, 1, cin, cout)
      cin = cout
  return total


def spark_flops_per_image(cfg: SparKConfig) -> float:
  """Forward matmul FLOPs of the dense emulation: the encoder's and the decoder's."""
  h, w = cfg.image_size
  conv = _conv_flops
  total = resnet_flops_per_image(cfg)
  widths = cfg.dec_widths
  enc = [wd * cfg.expansion for wd in cfg.stage_widths][::-1]
  for i, c in enumerate(enc):
    side_h, side_w = h * 2 ** i // cfg.downsample, w * 2 ** i // cfg.downsample
    total += conv(side_h, side_w, 1 if i == 0 else 3, c, widths[i])
  for i in range(len(widths) - 1):
    side_h, side_w = h * 2 ** (i + 1) // cfg.downsample, w * 2 ** (i + 1) // cfg.downsample
    total += conv(side_h // 2, side_w // 2, 4, widths[i], widths[i])  # transposed: per input
    total += conv(side_h, side_w, 3, widths[i], widths[i])
    total += conv(side_h, side_w, 3, widths[i], widths[i + 1])
  return total + conv(h, w, 1, widths[-1], cfg.channels)
