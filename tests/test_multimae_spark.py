"""Tests for MultiMAE and SparK: losses against float64 NumPy on tiny cases, the derived
modalities and the Dirichlet token budget, SparK's sparsity (masked positions stay zero,
visible outputs ignore masked content), paper param counts (abstract builds), and one
short run per objective through `pretrain.main`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from configs.multimae import get_config as get_multimae_config
from configs.spark import get_config as get_spark_config
from models import spark as spark_lib
from models.multimae import MultiMAE, MultiMAEConfig
from models.spark import SparK, SparKConfig
from objectives import mae, multimae, spark
from objectives.base import DataInfo
from pretrain import main as main_lib
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import np_cross_entropy, random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(model=None, **objective) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"objective": objective, "model": model or {}})


def _np_patchify(x, p):
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def _np_norm(patches):
  return (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
      patches.var(-1, keepdims=True) + 1e-6)


def _np_masked_mse(pred, target, hidden):
  per_patch = ((np.asarray(pred, np.float64) - target) ** 2).mean(-1)
  return (per_patch * hidden).sum() / hidden.sum()


def _run_main(tmp, recipe, steps):
  """Training records of a short run (no evaluation: the pictures are unit-tested)."""
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp}",
                        "--config.train.log_every=2", "--config.optim.warmup_steps=2",
                        f"--config.train.steps={steps}", "--config.train.eval_every=0",
                        f"--config.train.checkpoint_every={steps}",
                        "--config.train.peak_flops_per_device=1e11"]) == 0
  return [r for r in read_metrics(str(tmp)) if "loss" in r]


def _panel(grid, row, col, h, w):
  """The (h, w, C) picture at (row, col) of an `image_grid` with 1-pixel borders."""
  top, left = 1 + row * (h + 1), 1 + col * (w + 1)
  return np.asarray(grid)[top:top + h, left:left + w]


def _to_uint8(x):
  return np.round(np.clip(np.asarray(x, np.float64), 0, 1) * 255).astype(np.uint8)


# --- MultiMAE: derived modalities and the token budget ------------------------------------


def test_derived_modalities_are_sobel_magnitude_and_luminance_classes():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(12, 10, 3)).astype(np.float32)
  transform = multimae.DerivedModalities(segment_classes=5)
  out = transform.random_map({"image": image, "label": np.int32(2)}, np.random.default_rng(1))
  again = transform.random_map({"image": image, "label": np.int32(2)}, np.random.default_rng(9))
  assert out[multimae.EDGES].shape == (12, 10, 1) and out[multimae.EDGES].dtype == np.float32
  assert out[multimae.SEGMENTS].shape == (12, 10) and out[multimae.SEGMENTS].dtype == np.int32
  for key in (multimae.EDGES, multimae.SEGMENTS):  # a function of the image alone
    np.testing.assert_array_equal(out[key], again[key])
  np.testing.assert_array_equal(out["image"], image)
  # Independent: torch's cross-correlation with the Sobel kernels, replicate padding.
  torch = pytest.importorskip("torch", reason="the independent Sobel uses torch (hf extra)")
  gray = torch.tensor(image.mean(-1), dtype=torch.float64)[None, None]
  padded = torch.nn.functional.pad(gray, (1, 1, 1, 1), mode="replicate")
  kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
  gx = torch.nn.functional.conv2d(padded, kx[None, None])
  gy = torch.nn.functional.conv2d(padded, kx.T[None, None])
  want = (torch.sqrt(gx ** 2 + gy ** 2) / (4 * np.sqrt(2)))[0, 0].numpy()
  np.testing.assert_allclose(out[multimae.EDGES][..., 0], want, atol=1e-6)
  lum = image.mean(-1).astype(np.float64)
  np.testing.assert_array_equal(out[multimae.SEGMENTS], np.digitize(lum, [0.2, 0.4, 0.6, 0.8]))
  # A flat image has no edges; a vertical black/white step has |Gx| = 4 on both of its
  # sides, and white pixels fall in the top class.
  flat = transform.random_map({"image": np.full((4, 4, 1), 0.3, np.float32)}, None)
  assert flat[multimae.EDGES].max() == 0 and np.all(flat[multimae.SEGMENTS] == 1)
  step = np.zeros((6, 6, 1), np.float32)
  step[:, 3:] = 1.0
  edges = transform.random_map({"image": step}, None)
  np.testing.assert_allclose(edges[multimae.EDGES][:, 2:4, 0], 4 / (4 * np.sqrt(2)), rtol=1e-6)
  assert edges[multimae.SEGMENTS][0, 5] == 4


def test_dirichlet_budget_sums_to_the_total_and_shows_exactly_the_counts():
  """Rows sum exactly to the budget; a modality's count is floor(24 share) or one more,
  share ~ Beta(alpha, 2 alpha) (the symmetric Dirichlet's marginal), so
  P(share < (k - 1) / 24) <= P(count < k) <= P(share < k / 24), for small, the paper's and
  large alpha (4000 draws: 0.025 is > 3 standard errors). Each modality then shows exactly
  its count of patches, and keep_idx lists the visible tokens."""

  @jax.jit
  def draw(rng, alpha):
    counts = multimae.dirichlet_counts(jax.random.fold_in(rng, 0), 4000, 3, 24, alpha)
    return (counts, *multimae.visible_tokens(jax.random.fold_in(rng, 1), counts, 24, 24))

  for alpha in (0.1, 1.0, 10.0):
    counts, keep_idx, hidden = map(np.asarray, draw(jax.random.key(0), alpha))
    assert counts.dtype == np.int32 and counts.min() >= 0
    np.testing.assert_array_equal(counts.sum(1), 24)
    cdf = scipy.stats.beta(alpha, 2 * alpha).cdf
    for m in range(3):
      for k in (6, 12, 18):
        seen = np.mean(counts[:, m] < k)
        assert cdf((k - 1) / 24) - 0.025 <= seen <= cdf(k / 24) + 0.025, (alpha, m, k, seen)
    assert keep_idx.shape == (4000, 24) and hidden.shape == (4000, 3, 24)
    np.testing.assert_array_equal((1 - hidden).sum(-1), counts)
    for row, h in zip(keep_idx[:50], hidden[:50].reshape(50, 72)):
      np.testing.assert_array_equal(np.flatnonzero(h == 0), row)  # distinct, ascending


# --- MultiMAE: model and loss -------------------------------------------------------------

# Encoder and decoders of one shape: fewer distinct param shapes to compile initializers for.
MM_TINY = MultiMAEConfig(
    image_size=(8, 8), patch_size=(4, 4), channels=2, d_model=8, num_layers=1, num_heads=2,
    d_ff=16, dec_d_model=8, dec_layers=1, dec_heads=2, dec_d_ff=16, class_embed_dim=2,
    extra_modalities=multimae.derived_modalities(3))


@pytest.fixture(scope="module")
def multimae_model():
  model, params = random_model(MultiMAE, MM_TINY)
  rng = np.random.default_rng(3)
  transform = multimae.DerivedModalities(3)
  images = rng.uniform(size=(3, 8, 8, 2)).astype(np.float32)
  examples = [transform.random_map({"image": im}, None) for im in images]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
  return model, params, batch


def test_multimae_loss_matches_numpy(multimae_model):
  """loss = sum_m w_m x (masked MSE for image (normalised) and edges, per-pixel CE for
  segments), each over its own hidden patches, the decoders given the shared encoding."""
  model, params, batch = multimae_model
  key = jax.random.key_data(jax.random.key(4))
  weights = (0.5, 2.0, 1.5)
  config = _config(num_visible=3, dirichlet_alpha=1.0, modality_weights=weights,
                   norm_pix_loss=True)

  @jax.jit
  def both(p):
    """The objective's loss; the same draw by hand and the model's predictions for it."""
    rng = jax.random.wrap_key_data(key)
    counts = multimae.dirichlet_counts(jax.random.fold_in(rng, 0), 3, 3, 3, 1.0)
    keep_idx, hidden = multimae.visible_tokens(jax.random.fold_in(rng, 1), counts, 4, 3)
    net = model.bind(p)
    objective = multimae.MultiModalMAE()
    loss = objective.loss_fn(p, batch, key, model=model, config=config)
    pictures = objective.reconstructions(p, batch, key, model=model, config=config)
    return loss, pictures, hidden, net.decode(net.encode(batch, keep_idx), keep_idx)

  (loss, metrics), pictures, hidden, preds = both(params)
  preds = [np.asarray(x, np.float64) for x in preds]
  hidden = np.asarray(hidden)
  image = _np_norm(_np_patchify(np.asarray(batch["image"], np.float64), 4))
  edges = _np_patchify(np.asarray(batch[multimae.EDGES], np.float64), 4)
  classes = _np_patchify(np.asarray(batch[multimae.SEGMENTS])[..., None], 4)  # (B, N, 16)
  ce = np_cross_entropy(preds[2].reshape(3, 4, 16, 3), classes).mean(-1)
  want = {"image_loss": _np_masked_mse(preds[0], image, hidden[:, 0]),
          "edges_loss": _np_masked_mse(preds[1], edges, hidden[:, 1]),
          "segments_loss": (ce * hidden[:, 2]).sum() / hidden[:, 2].sum()}
  for name, value in want.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5)
  np.testing.assert_allclose(loss, sum(w * v for w, v in zip(weights, want.values())),
                             rtol=1e-5)
  # Pictures per modality: original, masked, predicted; classes as grey levels c / (k - 1).
  assert sorted(pictures) == [f"reconstructions_{m}" for m in ("edges", "image", "segments")]
  segments = pictures["reconstructions_segments"]
  assert segments.shape == (3 * 9 + 1, 3 * 9 + 1, 1)
  guess = preds[2].reshape(3, 4, 16, 3).argmax(-1)  # (B, N, pixels of a 4x4 patch)
  for b in range(3):
    np.testing.assert_array_equal(_panel(pictures["reconstructions_image"], b, 0, 8, 8),
                                  _to_uint8(batch["image"][b]))
    np.testing.assert_array_equal(_panel(segments, b, 0, 8, 8)[..., 0],
                                  _to_uint8(np.asarray(batch[multimae.SEGMENTS][b]) / 2))
    for j in range(4):  # patch j of the predicted panel
      r, c = divmod(j, 2)
      np.testing.assert_array_equal(
          _panel(segments, b, 2, 8, 8)[4 * r:4 * r + 4, 4 * c:4 * c + 4, 0],
          _to_uint8(guess[b, j].reshape(4, 4) / 2))


def test_multimae_encoder_reads_only_the_visible_tokens(multimae_model):
  """Changing every hidden patch of every modality leaves the encoding unchanged; changing
  one visible patch changes it."""
  model, params, batch = multimae_model
  keep_idx = jnp.asarray([[0, 5, 10], [1, 2, 3], [4, 8, 11]])  # image 0-3, edges 4-7, ...
  encode = jax.jit(lambda p, b: model.bind(p).encode(b, keep_idx))
  base_latent = np.asarray(encode(params, batch))
  rng = np.random.default_rng(5)
  changed = {}
  for m, key in enumerate(("image", multimae.EDGES, multimae.SEGMENTS)):
    x = np.array(batch[key])
    noise = (rng.integers(0, 3, x.shape) if key == multimae.SEGMENTS
             else rng.uniform(size=x.shape)).astype(x.dtype)
    tokens = np.arange(m * 4, m * 4 + 4)
    for b in range(3):
      for t in tokens:
        if t not in np.asarray(keep_idx[b]):
          r, c = divmod(t - m * 4, 2)
          x[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = noise[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
    changed[key] = jnp.asarray(x)
  np.testing.assert_array_equal(np.asarray(encode(params, changed)), base_latent)
  visible = dict(changed, image=changed["image"].at[0, :4, :4].add(0.5))  # token 0 of row 0
  assert not np.allclose(np.asarray(encode(params, visible))[0], base_latent[0])


def test_multimae_paper_config_is_vit_b_with_three_light_decoders():
  """Dosovitskiy et al. 2020 Table 1: ViT-Base 86M params (the shared encoder with the
  image's patch projection, no head); MultiMAE's config: one decoder per modality, 256
  wide with 2 self-attention blocks after the cross-attention, 98 visible tokens."""
  config = get_multimae_config("B/16")
  builder = MODELS.get("multimae")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
  assert abs(count(abstract.encoder) / 86e6 - 1) < 0.02, count(abstract.encoder)
  assert [m.name for m in cfg.modalities] == ["image", multimae.EDGES, multimae.SEGMENTS]
  assert len(abstract.decoders) == 3 and cfg.num_patches == 196
  assert all(len(d.blocks.blocks) == 2 for d in abstract.decoders)
  assert (cfg.dec_d_model, cfg.dec_heads, config.objective.num_visible) == (256, 8, 98)
  print(f"MultiMAE B/16 params: encoder {count(abstract.encoder):,}, input adapters "
        f"{count(abstract.adapters):,}, decoders {count(abstract.decoders):,}")


def test_multimae_budget_is_validated():
  config = get_multimae_config("tiny")
  config.objective.num_visible = 50
  with pytest.raises(ValueError, match=r"objective.num_visible=50: must be in \[1, 49\]"):
    multimae.MultiModalMAE().validate(config)
  config.objective.num_visible, config.objective.modality_weights = 24, (1.0, 1.0)
  with pytest.raises(ValueError, match="objective.modality_weights=.*one weight >= 0"):
    multimae.MultiModalMAE().validate(config)


def test_multimae_tiny_trains_through_main(tmp_path):
  """16 CPU steps: the summed loss and each modality's own loss fall."""
  records = _run_main(tmp_path, "multimae.py:tiny", 16)
  for key, factor in (("loss", 0.9), ("image_loss", 0.9), ("edges_loss", 0.9),
                      ("segments_loss", 0.95)):
    curve = [r[key] for r in records]
    assert np.mean(curve[-2:]) < factor * np.mean(curve[:2]), (key, curve)
  assert all(r["mfu"] > 0 for r in records)


# --- SparK ---------------------------------------------------------------------------------

SPARK_TINY = SparKConfig(image_size=(16, 16), channels=1, stem_width=4, stem_kernel=3,
                         stem_stride=1, stem_pool=True, stage_blocks=(1, 2),
                         stage_widths=(2, 4), bottleneck=True, dec_width=8)


@pytest.fixture(scope="module")
def spark_model():
  return random_model(SparK, SPARK_TINY)


def test_sparse_batch_norm_uses_visible_positions_only():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  active = np.zeros((2, 2, 2), bool)
  active[0, 0, 1] = active[1, 1, 0] = active[1, 1, 1] = True
  mask = np.repeat(np.repeat(active, 2, 1), 2, 2)[..., None]
  with nnx.use_eager_sharding(False):
    norm = spark_lib.SparseBatchNorm(3, eps=1e-5, dtype="float32")
  got = np.asarray(norm(jnp.asarray(x), spark_lib.active_at(jnp.asarray(active), x)))
  seen = x.astype(np.float64)[np.broadcast_to(mask, x.shape)].reshape(-1, 3)
  want = (x - seen.mean(0)) / np.sqrt(seen.var(0) + 1e-5) * mask
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.all(got[~np.broadcast_to(mask, x.shape)] == 0)


def test_spark_masked_positions_stay_zero_in_every_encoder_feature_map(spark_model, monkeypatch):
  """Every conv + norm output and every stage output is exactly zero at the masked
  positions (at that map's scale), and nothing the encoder computes changes when the
  masked pixels do: the dense emulation behaves as a sparse convolution."""
  model, params = spark_model
  maps = []
  call = spark_lib.ConvNorm.__call__

  def recording(self, x, active):
    maps.append(call(self, x, active))
    return maps[-1]

  monkeypatch.setattr(spark_lib.ConvNorm, "__call__", recording)

  @jax.jit
  def encode(images, active):
    maps.clear()
    features = model.bind(params).encoder(images, active)
    return maps + features  # traced once: the recorded maps are outputs of the program

  rng = np.random.default_rng(7)
  images = rng.uniform(size=(3, 16, 16, 1)).astype(np.float32)
  active = rng.uniform(size=(3, 4, 4)) < 0.5
  active[:, 0, 0] = True
  outputs = [np.asarray(x) for x in encode(images, active)]
  assert len(outputs) == 1 + (3 + 1) + (3 + 1) + 3 + 2  # stem, bottlenecks, shortcuts, stages
  assert [x.shape[1] for x in outputs[-2:]] == [8, 4]  # pool: stride 2, stage 2: stride 4
  for x in outputs:
    hidden = ~np.repeat(np.repeat(active, x.shape[1] // 4, 1), x.shape[2] // 4, 2)
    assert np.all(x[hidden] == 0)
    assert np.abs(x[~hidden]).max() > 0
  noisy = np.where(np.repeat(np.repeat(active, 4, 1), 4, 2)[..., None], images,
                   rng.uniform(size=images.shape).astype(np.float32))
  for x, y in zip(outputs, encode(noisy, active)):
    np.testing.assert_array_equal(x, np.asarray(y))


def test_spark_loss_matches_numpy(spark_model):
  """loss = masked MSE of the 4x4 (total-stride) patches against per-patch normalised
  pixels; the pictures show the image, it masked, and the prediction de-normalised."""
  model, params = spark_model
  images = np.random.default_rng(8).uniform(size=(2, 16, 16, 1)).astype(np.float32)
  key = jax.random.key_data(jax.random.key(9))
  config = _config(mask_ratio=0.6, norm_pix_loss=True)

  @jax.jit
  def both(p):
    objective = spark.SparseMaskedModeling()
    loss, _ = objective.loss_fn(p, {"image": images}, key, model=model, config=config)
    pictures = objective.reconstructions(p, {"image": images}, key, model=model,
                                         config=config)
    _, hidden = mae.random_keep(jax.random.wrap_key_data(key), 2, 16, 0.6)
    active = (hidden == 0).reshape(2, 4, 4)
    return loss, pictures["reconstructions"], hidden, model.bind(p)(jnp.asarray(images), active)

  loss, grid, hidden, pred = both(params)
  hidden = np.asarray(hidden)
  assert hidden.sum() == 2 * (16 - int(16 * 0.4)) and pred.shape == images.shape
  for b in range(2):
    np.testing.assert_array_equal(_panel(grid, b, 0, 16, 16), _to_uint8(images[b]))
    masked = np.where(np.repeat(np.repeat(hidden[b].reshape(4, 4), 4, 0), 4, 1)[..., None],
                      0.5, images[b])
    np.testing.assert_array_equal(_panel(grid, b, 1, 16, 16), _to_uint8(masked))
  want = _np_masked_mse(_np_patchify(np.asarray(pred, np.float64), 4),
                        _np_norm(_np_patchify(images.astype(np.float64), 4)), hidden)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_spark_paper_backbone_is_resnet50():
  """torchvision's resnet50 has 25,557,032 params (the "25.6M" of its model card); without
  its 2048 x 1000 fc (+ bias, 2,049,000) the backbone SparK pretrains has 23,508,032. The
  mask patch is the total stride 32: a 7x7 grid at 224."""
  config = get_spark_config("resnet50")
  builder = MODELS.get("spark")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  backbone = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert abs(backbone / (25_557_032 - 2_049_000) - 1) < 0.02, backbone
  assert cfg.downsample == 32 and cfg.grid == (7, 7) and len(abstract.blocks) == 5
  assert cfg.dec_widths == (512, 256, 128, 64, 32, 16)


def test_spark_tiny_trains_through_main(tmp_path):
  records = _run_main(tmp_path, "spark.py:tiny", 16)
  curve = [r["loss"] for r in records]
  assert np.mean(curve[-2:]) < 0.7 * np.mean(curve[:2]), curve
  assert all(r["mfu"] > 0 for r in records)
