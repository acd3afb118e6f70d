"""Tests for the vision objectives: MAE reconstruction pictures, CropMAE, CAE.

Losses against float64 NumPy on tiny cases, host-transform invariants, paper param counts
(abstract builds), and one short run per objective through `pretrain.main`.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from models.vit import MAE, ViTConfig
from models.vit_variants import CAEConfig, ContextAutoencoder, SiameseMAE
from objectives import cae, cropmae, mae
from configs.cae import get_config as get_cae_config
from configs.cropmae import get_config as get_cropmae_config
from objectives.base import DataInfo
from pretrain import main as main_lib
from pretrain.data import corpora
from pretrain.registry import MODELS
from pretrain.steps import RECONSTRUCTION_EXAMPLES
from pretrain.train import read_metrics
from helpers import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ViTConfig(image_size=(8, 8), patch_size=(4, 4), channels=1, d_model=16, num_layers=1,
                 num_heads=2, d_ff=32, dec_d_model=8, dec_layers=1, dec_heads=2, dec_d_ff=16)


def _objective_config(**objective) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"objective": objective})


def _np_unpatchify(patches, grid, patch, channels):
  """(B, N, P) row-major patches -> (B, H, W, C), by hand."""
  b = patches.shape[0]
  x = np.asarray(patches).reshape(b, grid[0], grid[1], patch[0], patch[1], channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, grid[0] * patch[0], grid[1] * patch[1],
                                               channels)


def _panel(grid_image, row, col, h, w):
  """The (h, w, C) picture at (row, col) of an `image_grid` with 1-pixel borders."""
  top, left = 1 + row * (h + 1), 1 + col * (w + 1)
  return grid_image[top:top + h, left:left + w]


def _to_uint8(x):
  return np.round(np.clip(np.asarray(x, np.float64), 0, 1) * 255).astype(np.uint8)


def _run_main(tmp, recipe, *args):
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp}",
                        "--config.train.log_every=2", "--config.optim.warmup_steps=2",
                        "--config.train.peak_flops_per_device=1e11", *args]) == 0
  return read_metrics(str(tmp))


# --- reconstruction pictures -------------------------------------------------------------


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_reconstructions_show_the_prediction_unpatchified(norm_pix_loss):
  model, params = build(MAE, TINY)
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  rng = jax.random.key_data(jax.random.key(5))
  config = _objective_config(mask_ratio=0.5, norm_pix_loss=norm_pix_loss)
  draw = jax.jit(functools.partial(mae.MaskedAutoencoder().reconstructions, model=model,
                                   config=config))
  grid = np.asarray(draw(params, {"image": jnp.asarray(images)}, rng)["reconstructions"])
  assert grid.dtype == np.uint8 and grid.shape == (3 * 9 + 1, 3 * 9 + 1, 1)
  # Independent: the model's own encode/decode on the same mask, unpatchified by hand.
  patches = images.reshape(3, 2, 4, 2, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(3, 4, 16)
  keep_idx, hidden = mae.random_keep(jax.random.wrap_key_data(rng), 3, 4, 0.5)
  pred = np.asarray(jax.jit(lambda p: model.bind(p).decode(
      model.bind(p).encode(jnp.asarray(patches), keep_idx), keep_idx, 4))(params), np.float64)
  if norm_pix_loss:
    p = patches.astype(np.float64)
    pred = pred * np.sqrt(p.var(-1, keepdims=True) + 1e-6) + p.mean(-1, keepdims=True)
  hidden = np.asarray(hidden)
  masked = np.where(hidden[..., None] > 0, 0.5, patches)
  for i in range(3):
    np.testing.assert_array_equal(_panel(grid, i, 0, 8, 8), _to_uint8(images[i]))
    np.testing.assert_array_equal(_panel(grid, i, 1, 8, 8),
                                  _to_uint8(_np_unpatchify(masked, (2, 2), (4, 4), 1)[i]))
    got = _panel(grid, i, 2, 8, 8).astype(int)
    want = _to_uint8(_np_unpatchify(pred, (2, 2), (4, 4), 1)[i]).astype(int)
    assert np.abs(got - want).max() <= 1  # float32 vs float64 rounding at .5 boundaries
  assert np.all(grid[0, :] == 255) and np.all(grid[:, 0] == 255)  # white borders


def test_mae_run_writes_reconstruction_pngs_of_fixed_validation_images(tmp_path):
  records = _run_main(tmp_path, "mae.py:tiny", "--config.train.steps=4",
                      "--config.train.eval_every=2", "--config.train.eval_steps=1",
                      "--config.train.checkpoint_every=4")
  assert any("eval_loss" in r for r in records)
  directory = tmp_path / "reconstructions"
  assert sorted(os.listdir(directory)) == ["step_2.png", "step_4.png"]
  assert os.listdir(tmp_path / "tensorboard")
  k = RECONSTRUCTION_EXAMPLES
  grid = np.asarray(Image.open(directory / "step_4.png"))[..., None]
  assert grid.shape == (k * 29 + 1, 3 * 29 + 1, 1)
  first, _ = corpora.fashion_mnist("test")
  for i in range(k):  # The first validation images, unshuffled, every time.
    np.testing.assert_array_equal(_panel(grid, i, 0, 28, 28)[..., 0], first[i])
  # The reconstructed panel moved with training (it is the model's prediction: the unit
  # test above checks that exactly).
  before = np.asarray(Image.open(directory / "step_2.png"))[..., None]
  assert not np.array_equal(_panel(grid, 0, 2, 28, 28), _panel(before, 0, 2, 28, 28))


# --- CropMAE -----------------------------------------------------------------------------


def _np_patchify(images, p):
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def _np_masked_mse(pred, target, hidden):
  per_patch = ((np.asarray(pred, np.float64) - target) ** 2).mean(-1)
  return (per_patch * hidden).sum() / hidden.sum()


@pytest.mark.parametrize("box", [(0, 0, 28, 28), (3, 5, 10, 17), (20, 0, 8, 28), (1, 2, 1, 1)])
def test_crop_resize_matches_pil_bilinear(box):
  image = np.random.default_rng(1).uniform(size=(28, 28, 1)).astype(np.float32)
  got = cropmae.crop_resize(image, box, (28, 28))
  top, left, h, w = box
  pil = Image.fromarray(image[..., 0], mode="F").resize(
      (28, 28), Image.BILINEAR, box=(left, top, left + w, top + h))
  np.testing.assert_allclose(got[..., 0], np.asarray(pil), atol=1e-5)
  if box == (0, 0, 28, 28):
    np.testing.assert_array_equal(got, image)  # the identity box is exact


def test_random_resized_boxes_stay_inside_with_the_asked_area_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = cropmae.random_resized_box(rng, 28, 28, (0.3, 0.6), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 28 and 0 <= left and left + w <= 28
    # Rounded sides: the area and ratio hold up to half a pixel per side.
    assert 0.3 * 784 - 29 <= h * w <= 0.6 * 784 + 29
    assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.15
  # No draw fits (area > the image): the whole image, clipped to the ratio range.
  assert cropmae.random_resized_box(rng, 20, 28, (2.0, 3.0), (1.0, 1.0)) == (0, 4, 20, 20)


def test_global_to_local_crops_are_static_deterministic_and_nested():
  crops = cropmae.GlobalToLocalCrops(global_scale=(0.1, 1.0), local_scale=(0.3, 0.6),
                                     aspect_ratio=(3 / 4, 4 / 3))
  image = np.random.default_rng(2).uniform(size=(28, 28, 1)).astype(np.float32)
  example = {"image": image, "label": np.int32(3)}
  out = crops.random_map(dict(example), np.random.default_rng(7))
  again = crops.random_map(dict(example), np.random.default_rng(7))
  other = crops.random_map(dict(example), np.random.default_rng(8))
  for key in (cropmae.VISIBLE, cropmae.MASKED):
    assert out[key].shape == (28, 28, 1) and out[key].dtype == np.float32
    assert 0 <= out[key].min() and out[key].max() <= 1  # bilinear: convex combinations
    np.testing.assert_array_equal(out[key], again[key])
    assert not np.array_equal(out[key], other[key])
  np.testing.assert_array_equal(out["image"], image)
  assert out["label"] == 3
  # The local view is a crop of the global view: replaying the rng's boxes rebuilds it.
  rng = np.random.default_rng(7)
  glob_box = cropmae.random_resized_box(rng, 28, 28, (0.1, 1.0), (3 / 4, 4 / 3))
  local_box = cropmae.random_resized_box(rng, 28, 28, (0.3, 0.6), (3 / 4, 4 / 3))
  glob = cropmae.crop_resize(image, glob_box, (28, 28))
  np.testing.assert_array_equal(out[cropmae.MASKED], cropmae.crop_resize(glob, local_box,
                                                                         (28, 28)))


@pytest.fixture(scope="module")
def siamese():
  cfg = TINY.__class__(**{**TINY.__dict__, "image_size": (8, 12)})
  return (*build(SiameseMAE, cfg), cfg)


def test_cropmae_loss_matches_numpy(siamese, norm_pix_loss=True):
  """loss = NumPy masked MSE of the local view's patches given the global view; at most one
  of the 6 patches visible (98.5%) but never none."""
  model, params, cfg = siamese
  rng = np.random.default_rng(3)
  glob, local = (rng.uniform(size=(2, 8, 12, 1)).astype(np.float32) for _ in range(2))
  batch = {cropmae.VISIBLE: jnp.asarray(glob), cropmae.MASKED: jnp.asarray(local)}
  key = jax.random.key_data(jax.random.key(4))
  config = _objective_config(mask_ratio=0.985, norm_pix_loss=norm_pix_loss)
  loss, _ = jax.jit(functools.partial(cropmae.CroppedMAE().loss_fn, model=model,
                                      config=config))(params, batch, key)
  keep_idx, hidden = mae.random_keep(jax.random.wrap_key_data(key), 2, 6, 0.985, 1)
  hidden = np.asarray(hidden)
  assert keep_idx.shape == (2, 1) and hidden.sum() == 2 * 5
  patches = _np_patchify(local, 4)

  @jax.jit
  def predict(p):
    net = model.bind(p)
    every = jnp.broadcast_to(jnp.arange(6), (2, 6))
    context = net.encode(jnp.asarray(_np_patchify(glob, 4)), every)
    return net.decode(net.encode(jnp.asarray(patches), keep_idx), keep_idx, 6, context=context)

  pred = predict(params)
  target = patches.astype(np.float64)
  if norm_pix_loss:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(
        target.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(loss, _np_masked_mse(pred, target, hidden), rtol=1e-5)
  # The decoder reads the global view: the loss has a gradient with respect to it.
  def of_visible(view):
    return cropmae.CroppedMAE().loss_fn(params, {**batch, cropmae.VISIBLE: view}, key,
                                        model=model, config=config)[0]
  assert np.abs(np.asarray(jax.jit(jax.grad(of_visible))(batch[cropmae.VISIBLE]))).max() > 0


def test_cropmae_paper_encoder_is_vit_s_with_the_paper_decoder():
  """DeiT (Touvron et al. 2021) Table 1: ViT-S 22M params (the encoder, no head); the
  decoder is the script's 4 blocks of 256 wide."""
  config = get_cropmae_config("S/16")
  builder = MODELS.get("siamese_mae")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  encoder = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert abs(encoder / 22e6 - 1) < 0.02, encoder
  assert (cfg.d_model, cfg.num_layers, cfg.dec_d_model, cfg.dec_layers) == (384, 12, 256, 4)
  assert len(abstract.decoder.blocks) == 4 and config.objective.mask_ratio == 0.985


def test_cropmae_tiny_trains_through_main_and_draws_both_views(tmp_path):
  records = _run_main(tmp_path, "cropmae.py:tiny", "--config.train.steps=12",
                      "--config.train.eval_every=12", "--config.train.eval_steps=1",
                      "--config.train.checkpoint_every=12")
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < 0.7 * np.mean(curve[:2]), curve
  assert all(r["mfu"] > 0 for r in records if "loss" in r)
  grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_12.png"))
  assert grid.shape == (RECONSTRUCTION_EXAMPLES * 29 + 1, 4 * 29 + 1)


# --- CAE ---------------------------------------------------------------------------------

CAE_TINY = CAEConfig(**{**TINY.__dict__, "dec_d_model": 16, "reg_layers": 2})


def test_keep_and_hide_partitions_the_patches():
  keep_idx, hidden_idx, mask = cae.keep_and_hide(jax.random.key(0), 3, 10, 0.6)
  keep_idx, hidden_idx, mask = map(np.asarray, (keep_idx, hidden_idx, mask))
  assert keep_idx.shape == (3, 4) and hidden_idx.shape == (3, 6)
  for k, h, m in zip(keep_idx, hidden_idx, mask):
    assert sorted([*k, *h]) == list(range(10))
    assert set(np.flatnonzero(m)) == set(h)


@pytest.fixture(scope="module")
def cae_model():
  return build(ContextAutoencoder, CAE_TINY)


def test_cae_loss_matches_numpy(cae_model, norm_pix_loss=True):
  """loss = mean pixel MSE over hidden patches + 2 x mean latent MSE against the encoder's
  own latents of the hidden patches."""
  model, params = cae_model
  images = np.random.default_rng(4).uniform(size=(2, 8, 8, 1)).astype(np.float32)
  key = jax.random.key_data(jax.random.key(6))
  config = _objective_config(mask_ratio=0.5, norm_pix_loss=norm_pix_loss, align_weight=2.0)
  loss, metrics = jax.jit(functools.partial(cae.ContextAutoencoder().loss_fn, model=model,
                                            config=config))(params, {"image": images}, key)
  keep_idx, hidden_idx, _ = cae.keep_and_hide(jax.random.wrap_key_data(key), 2, 4, 0.5)
  patches = _np_patchify(images, 4)

  @jax.jit
  def parts(p):
    net = model.bind(p)
    predicted = net.regress(net.encode(jnp.asarray(patches), keep_idx), hidden_idx)
    target = net.encode(jnp.asarray(patches), hidden_idx)[:, 1:]
    return predicted, target, net.decode(predicted, hidden_idx)

  predicted, target, pixels = (np.asarray(x, np.float64) for x in parts(params))
  hidden = np.take_along_axis(patches.astype(np.float64), np.asarray(hidden_idx)[..., None],
                              axis=1)
  if norm_pix_loss:
    hidden = (hidden - hidden.mean(-1, keepdims=True)) / np.sqrt(
        hidden.var(-1, keepdims=True) + 1e-6)
  recon, align = ((pixels - hidden) ** 2).mean(), ((predicted - target) ** 2).mean()
  np.testing.assert_allclose(metrics["reconstruction_loss"], recon, rtol=1e-5)
  np.testing.assert_allclose(metrics["alignment_loss"], align, rtol=1e-5)
  np.testing.assert_allclose(loss, recon + 2 * align, rtol=1e-5)


def test_cae_alignment_target_is_stop_gradient(cae_model):
  """The alignment term's gradient is that of MSE(prediction, fixed target): no gradient
  reaches the encoder through the hidden patches' latents."""
  model, params = cae_model
  images = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 8, 8, 1)), jnp.float32)
  key = jax.random.key_data(jax.random.key(7))
  obj = cae.ContextAutoencoder()

  config = _objective_config(mask_ratio=0.5, norm_pix_loss=False, align_weight=2.0)

  def alignment(p):
    return obj.loss_fn(p, {"image": images}, key, model=model, config=config)[1][
        "alignment_loss"]

  keep_idx, hidden_idx, _ = cae.keep_and_hide(jax.random.wrap_key_data(key), 2, 4, 0.5)
  patches = jnp.asarray(_np_patchify(np.asarray(images), 4))
  fixed = np.asarray(jax.jit(lambda p: model.bind(p).encode(patches, hidden_idx))(params))[:, 1:]

  def by_hand(p):
    net = model.bind(p)
    return jnp.mean((net.regress(net.encode(patches, keep_idx), hidden_idx) - fixed) ** 2)

  want = jax.jit(jax.grad(by_hand))(params)
  got = jax.jit(jax.grad(alignment))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=2e-6)


def test_cae_paper_encoder_is_vit_b():
  """Dosovitskiy et al. 2020 Table 1: ViT-Base 86M params (the encoder, sin-cos positions,
  no head); the regressor and decoder are 4 ViT-B blocks each (script)."""
  config = get_cae_config("B/16")
  builder = MODELS.get("cae")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  encoder = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert abs(encoder / 86e6 - 1) < 0.02, encoder
  assert len(abstract.regressor) == 4 and len(abstract.decoder.blocks) == 4
  assert cfg.dec_d_model == cfg.d_model == 768
  with pytest.raises(ValueError, match="dec_d_model=512 must equal d_model=768"):
    CAEConfig(**{**cfg.__dict__, "dec_d_model": 512}).validate()


def test_cae_tiny_trains_through_main(tmp_path):
  """12 CPU steps: the pixel loss falls. The alignment loss starts near 0 (an untrained
  encoder maps every patch alike) and rises as the encoder's latents spread; it has to stay
  finite and reported."""
  records = _run_main(tmp_path, "cae.py:tiny", "--config.train.steps=12",
                      "--config.train.eval_every=12", "--config.train.eval_steps=1",
                      "--config.train.checkpoint_every=12")
  logged = [r for r in records if "loss" in r]
  recon = [r["reconstruction_loss"] for r in logged]
  assert np.mean(recon[-2:]) < 0.7 * np.mean(recon[:2]), recon
  assert all(np.isfinite(r["alignment_loss"]) and r["mfu"] > 0 for r in logged)
  assert os.path.exists(tmp_path / "reconstructions" / "step_12.png")
