"""Tests for the vision objectives: MAE reconstruction pictures, CropMAE, CAE.

Losses against float64 NumPy on tiny cases, host-transform invariants, paper param counts
(abstract builds), and one short run per objective through `pretrain.main`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from models.vit import MAE, ViTConfig
from objectives import mae
from configs.mae import get_config as get_mae_config
from objectives.base import DataInfo, ModelDef
from pretrain import checkpoint
from pretrain import main as main_lib
from pretrain.data import corpora
from pretrain.registry import MODELS
from pretrain.train import RECONSTRUCTION_EXAMPLES, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ViTConfig(image_size=(8, 8), patch_size=(4, 4), channels=1, d_model=16, num_layers=1,
                 num_heads=2, d_ff=32, dec_d_model=8, dec_layers=1, dec_heads=2, dec_d_ff=16)


def _build(cls, cfg, seed=0):
  """(ModelDef, params as a pure nested dict), the way the trainer holds a model."""
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(cls(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
  return ModelDef(graphdef), nnx.to_pure_dict(state)


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
                        "--config.train.log_every=2", "--config.optim.warmup_steps=2", *args]) == 0
  return read_metrics(str(tmp))


# --- reconstruction pictures -------------------------------------------------------------


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_reconstructions_show_the_prediction_unpatchified(norm_pix_loss):
  model, params = _build(MAE, TINY)
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  rng = jax.random.key_data(jax.random.key(5))
  config = _objective_config(mask_ratio=0.5, norm_pix_loss=norm_pix_loss)
  pictures = mae.MaskedAutoencoder().reconstructions(params, {"image": jnp.asarray(images)},
                                                     rng, model=model, config=config)
  grid = np.asarray(pictures["reconstructions"])
  assert grid.dtype == np.uint8 and grid.shape == (3 * 9 + 1, 3 * 9 + 1, 1)
  # Independent: the model's own encode/decode on the same mask, unpatchified by hand.
  patches = images.reshape(3, 2, 4, 2, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(3, 4, 16)
  keep_idx, hidden = mae.random_keep(jax.random.wrap_key_data(rng), 3, 4, 0.5)
  net = model.bind(params)
  pred = np.asarray(net.decode(net.encode(jnp.asarray(patches), keep_idx), keep_idx, 4),
                    np.float64)
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
  records = _run_main(tmp_path, "mae.py:tiny", "--config.train.steps=6",
                      "--config.train.eval_every=3", "--config.train.eval_steps=1",
                      "--config.train.checkpoint_every=6")
  assert any("eval_loss" in r for r in records)
  directory = tmp_path / "reconstructions"
  assert sorted(os.listdir(directory)) == ["step_3.png", "step_6.png"]
  assert os.listdir(tmp_path / "tensorboard")
  k = RECONSTRUCTION_EXAMPLES
  grid = np.asarray(Image.open(directory / "step_6.png"))[..., None]
  assert grid.shape == (k * 29 + 1, 3 * 29 + 1, 1)
  first, _ = corpora.fashion_mnist("test")
  for i in range(k):  # The first validation images, unshuffled, every time.
    np.testing.assert_array_equal(_panel(grid, i, 0, 28, 28)[..., 0], first[i])
  # The reconstructed panel of step 6 is the prediction of the params saved at step 6.
  config = get_mae_config("tiny")
  builder = MODELS.get("mae")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(28, 28, 1)))
  model, fresh = _build(lambda c, rngs: builder.build(c, rngs), cfg)
  params, _ = checkpoint.load_params(str(tmp_path), 6, "", fresh)
  images = jnp.asarray(first[:k, :, :, None], jnp.float32) / 255.0
  rng = jax.random.key_data(jax.random.key(config.seed + 1))
  want = mae.MaskedAutoencoder().reconstructions(params, {"image": images}, rng,
                                                 model=model, config=config)
  diff = np.asarray(want["reconstructions"]).astype(int) - grid.astype(int)
  assert np.abs(diff).max() <= 1
