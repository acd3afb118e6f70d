"""SSAST (Gong et al. 2022, "SSAST: Self-Supervised Audio Spectrogram Transformer").

Masked spectrogram patch modeling (MSPM): a log-mel clip (frames, mel_bins) is cut into
patches (`model.patch_size`: 16x16 patch-based, or 2 frames x 128 bins frame-based), a
random `objective.mask_patches` of them per clip (with `objective.cluster_masking`, in
square clusters of neighbouring patches, SSAST's choice for patch-based models; frame-based
ones mask frames uniformly) have their embedding replaced by a learned mask embedding
(`models.audio.SSAST`), and the encoder's output at each masked position feeds two heads:

  discriminative: InfoNCE over the clip's masked patches. The head's prediction at masked
    position i scores every masked patch j of the same clip by the dot product
    <pred_i, patch_j>; the true patch i must win the softmax over j (the paper's Eq. 1,
    unnormalised dot products, no temperature). `objectives.contrastive.info_nce` is the
    symmetric, cosine, batch-wide form; here the candidates are per clip and one-sided,
    so the loss is `base.cross_entropy` over each clip's (M, M) score matrix.
  generative: MSE between the other head's prediction and the masked patch.

loss = objective.discriminative_weight * InfoNCE + objective.generative_weight * MSE
(SSAST: 1 and 10). Masks are fresh per step, drawn on device from the step rng like MAE's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.audio import ssast_flops_per_example
from models.vit import patchify, unpatchify
from objectives import base
from pretrain.data import audio
from objectives.mae import HIDDEN_GREY, image_grid


CLUSTER_SIDES = (3, 5)  # SSAST's code: square clusters of 3x3 to 5x5 patches


def _top(priority: jax.Array, count: int):
  """(idx (B, count) of the highest priorities, mask (B, N) with 1 there)."""
  idx = jnp.argsort(-priority, axis=1)[:, :count]
  mask = jnp.zeros(priority.shape).at[jnp.arange(priority.shape[0])[:, None], idx].set(1.0)
  return idx, mask


def random_masked(rng: jax.Array, batch: int, num_patches: int, count: int):
  """(masked_idx (B, count) int, mask (B, N) float, 1 = masked): a uniform random subset
  of `count` patches per example."""
  return _top(jax.random.uniform(rng, (batch, num_patches)), count)


def cluster_masked(rng: jax.Array, batch: int, grid: tuple[int, int], count: int):
  """SSAST's cluster masking for patch-based models: squares of side s x s neighbouring
  patches (s uniform in CLUSTER_SIDES per clip, clipped at the grid's edges) at random
  corners are masked one after another until `count` patches are; of the square that
  crosses `count`, a random part. Same outputs as `random_masked`.

  Vectorised: `count` squares are drawn (more than ever needed); a patch's priority is
  minus the first square covering it, plus noise in [0, 1) that orders patches within a
  square (uncovered patches come last), and the top `count` priorities are masked."""
  rows, cols = grid
  k_side, k_row, k_col, k_noise = jax.random.split(rng, 4)
  side = jax.random.randint(k_side, (batch, 1, 1), CLUSTER_SIDES[0], CLUSTER_SIDES[1] + 1)
  top = jax.random.randint(k_row, (batch, count, 1), 0, rows)
  left = jax.random.randint(k_col, (batch, count, 1), 0, cols)
  r, c = jnp.divmod(jnp.arange(rows * cols), cols)  # (N,) grid coordinates
  covers = (r >= top) & (r < top + side) & (c >= left) & (c < left + side)  # (B, S, N)
  first = jnp.where(covers.any(1), jnp.argmax(covers, axis=1), count)  # (B, N)
  return _top(jax.random.uniform(k_noise, first.shape) - first, count)


def mspm_losses(pred_disc: jax.Array, pred_gen: jax.Array, target: jax.Array):
  """(InfoNCE, its accuracy, MSE) of predictions (B, M, P) at the masked patches against
  the masked patches themselves (B, M, P)."""
  target = target.astype(jnp.float32)
  scores = jnp.einsum("bip,bjp->bij", pred_disc.astype(jnp.float32), target)  # (B, M, M)
  labels = jnp.broadcast_to(jnp.arange(scores.shape[1]), scores.shape[:2])
  nce = base.cross_entropy(scores, labels).mean()
  accuracy = (jnp.argmax(scores, -1) == labels).astype(jnp.float32).mean()
  mse = jnp.mean(jnp.square(pred_gen.astype(jnp.float32) - target))
  return nce, accuracy, mse


def spectrogram_columns(columns: list[jax.Array], reference: jax.Array) -> jax.Array:
  """Spectrograms (B, frames, mel_bins) -> one uint8 grid, each as an image with time to
  the right and low frequencies at the bottom, scaled by `reference`'s per-clip range."""
  lo = reference.min(axis=(1, 2), keepdims=True)
  span = jnp.maximum(reference.max(axis=(1, 2), keepdims=True) - lo, 1e-6)
  return image_grid([jnp.flip((c - lo) / span, 2).transpose(0, 2, 1)[..., None]
                     for c in columns])


def num_patches(config) -> int:
  frames, bins = config.data.clip_frames, config.data.mel_bins
  pt, pf = config.model.patch_size
  return (frames // pt) * (bins // pf)


@base.register("ssast")
class SSAST(base.Objective):
  models = ("ssast",)
  modality = "audio"
  unit = "clips"

  def validate(self, config):
    audio.validate(config.data)
    frames, bins = config.data.clip_frames, config.data.mel_bins
    patch = tuple(config.model.patch_size)
    if len(patch) != 2 or min(patch) < 1 or frames % patch[0] or bins % patch[1]:
      raise ValueError(f"model.patch_size={patch}: must be 2 positive sizes (frames, mel "
                       f"bins) dividing data.clip_frames={frames} and data.mel_bins={bins}")
    n, m = num_patches(config), config.objective.mask_patches
    if not 2 <= m < n:
      raise ValueError(f"objective.mask_patches={m}: must be in [2, {n}) (the clip has {n} "
                       "patches; InfoNCE needs 2 masked ones)")
    for key in ("discriminative_weight", "generative_weight"):
      if config.objective[key] < 0:
        raise ValueError(f"objective.{key}={config.objective[key]}: must be >= 0")

  def _forward(self, net, spectrogram, rng, config):
    """(patches (B, N, P), mask (B, N), masked_idx (B, M), discriminative and generative
    predictions at the masked patches (B, M, P))."""
    patches = patchify(spectrogram[..., None], net.cfg.patch_size)
    b, n, _ = patches.shape
    key, count = jax.random.wrap_key_data(rng), config.objective.mask_patches
    masked_idx, mask = (cluster_masked(key, b, net.cfg.grid, count)
                        if config.objective.cluster_masking else random_masked(key, b, n, count))
    hidden = jnp.take_along_axis(net(patches, mask), masked_idx[..., None], axis=1)
    return patches, mask, masked_idx, net.discriminative(hidden), net.generative(hidden)

  def loss_fn(self, params, batch, rng, *, model, config):
    patches, _, masked_idx, disc, gen = self._forward(model.bind(params),
                                                      batch["spectrogram"], rng, config)
    target = jnp.take_along_axis(patches, masked_idx[..., None], axis=1)
    nce, accuracy, mse = mspm_losses(disc, gen, target)
    obj = config.objective
    loss = obj.discriminative_weight * nce + obj.generative_weight * mse
    return loss, {"infonce": nce, "infonce_accuracy": accuracy, "mse": mse}

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per clip: the spectrogram, it masked (grey), the generative head's patches at the
    masked positions over the visible ones."""
    net = model.bind(params)
    spec = batch["spectrogram"]
    patches, mask, masked_idx, _, gen = self._forward(net, spec, rng, config)
    rows = jnp.arange(spec.shape[0])[:, None]
    filled = patches.at[rows, masked_idx].set(gen.astype(patches.dtype))
    lo, hi = spec.min(axis=(1, 2))[:, None, None], spec.max(axis=(1, 2))[:, None, None]
    grey = lo + HIDDEN_GREY * (hi - lo)
    hidden = jnp.where(mask[..., None] > 0, grey, patches)
    image = lambda p: unpatchify(p, net.cfg.patch_size, spec.shape[1:], 1)[..., 0]
    return {"reconstructions": spectrogram_columns([spec, image(hidden), image(filled)], spec)}

  def features(self, params, batch, *, model, config):
    """The encoder on the whole clip (nothing masked), mean-pooled over patch tokens."""
    net = model.bind(params)
    patches = patchify(batch["spectrogram"][..., None], net.cfg.patch_size)
    tokens = net(patches, jnp.zeros(patches.shape[:2]))
    return base.mean_pool(tokens, jnp.ones(tokens.shape[:2], bool))

  def units_per_example(self, config, info):
    return 1

  def forward_flops_per_example(self, config, info, model_cfg):
    return ssast_flops_per_example(model_cfg)

