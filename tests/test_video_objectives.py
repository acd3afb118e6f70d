"""VideoMAE V2 (tube + dual masking) and ViTok (ViT auto-encoder): masking invariants,
losses against float64 NumPy on tiny cases, paper param counts (abstract builds), one short
run per recipe through `pretrain.main`."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.videomae import get_config as videomae_config
from configs.vitok import get_config as vitok_config
from models.video_vit import VideoMAE, ViTok, ViTokConfig
from models.vit import ViTConfig
from objectives import videomae, vitok
from objectives.base import DataInfo
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Videos of 4 frames of 8 x 8 pixels, 2 channels, in 2 x 4 x 4 tubes: a (2, 2, 2) grid.
TINY = ViTConfig(image_size=(4, 8, 8), patch_size=(2, 4, 4), channels=2, d_model=12,
                 num_layers=1, num_heads=2, d_ff=24, dec_d_model=12, dec_layers=1,
                 dec_heads=2, dec_d_ff=24, use_cls_token=False)


def _np_patchify(x, patch):
  """(B, T, H, W, C) -> (B, N, t*p*p*C) tubes in (slice, row, col) order, by hand."""
  b, t, h, w, c = x.shape
  pt, ph, pw = patch
  x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * c)


# --- tube and dual masking ------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _masks(seed, batch, grid, mask_ratio, kind):
  """What the objective draws from step rng key(seed) at decoder_mask_ratio 0.5: keep_idx,
  hidden, the decoder's K targets, and the running cell's offsets."""
  keep_rng, target_rng = jax.random.split(jax.random.key(seed))
  keep_idx, hidden = videomae.tube_keep(keep_rng, batch, grid, mask_ratio)
  _, k = videomae.sizes(grid, mask_ratio, 0.5)
  targets = videomae.decoder_targets(target_rng, hidden, grid, 0.5, kind)[:, :k]
  offset = jax.random.randint(jax.random.split(target_rng)[1], (batch,), 0, 4)
  return keep_idx, hidden, targets, offset


def test_tube_mask_hides_the_same_positions_in_every_time_slice():
  grid, spatial = (4, 4, 4), 16
  keep_idx, hidden, _, _ = map(np.asarray, _masks(0, 3, grid, 0.75, "running_cell"))
  assert keep_idx.shape == (3, 4 * 4)  # 16 - int(0.75 * 16) = 4 kept per slice
  per_slice = hidden.reshape(3, 4, spatial)
  assert (per_slice == per_slice[:, :1]).all()  # one spatial mask for all slices
  assert (per_slice.sum(-1) == 12).all()
  for k, h in zip(keep_idx, hidden):
    assert sorted(k) == list(np.flatnonzero(h == 0))
  assert len({tuple(np.flatnonzero(h[:spatial])) for h in hidden}) > 1  # random per video


def test_running_cell_shows_half_of_each_cell_shifting_in_time():
  shown = np.asarray(videomae.running_cell(np.array([0, 3]), (4, 2, 2), 0.5))
  cells = shown.reshape(2, 4, 4)  # (videos, slices, the 4 positions of the one 2x2 cell)
  assert (cells.sum(-1) == 2).all()
  np.testing.assert_array_equal(cells[0, 1], np.roll(cells[0, 0], -1))  # shifted by one
  assert (cells.sum(1) == 2).all()  # over 4 slices every position is shown twice


@pytest.mark.parametrize("kind", videomae.DECODER_MASKINGS)
def test_decoder_targets_are_hidden_tubes_of_the_configured_number(kind):
  # 2 time slices: the running cell does not show exactly K hidden tubes; still K targets.
  grid = (2, 4, 6)
  _, hidden, targets, _ = map(np.asarray, _masks(1, 3, grid, 0.75, kind))
  visible, k = videomae.sizes(grid, 0.75, 0.5)
  assert k == (np.prod(grid) - visible) // 2 and targets.shape == (3, k)
  for t, h in zip(targets, hidden):
    assert len(set(t)) == k and h[t].all()  # k distinct, all hidden from the encoder


def test_running_cell_targets_are_exactly_the_cells_hidden_tubes_in_the_paper_setting():
  # A multiple of 4 time slices at 50%: the cell shows exactly K hidden tubes.
  grid = (4, 4, 4)
  _, hidden, targets, offset = map(np.asarray, _masks(2, 3, grid, 0.75, "running_cell"))
  shown = videomae.running_cell(offset, grid, 0.5) & (hidden > 0)
  assert (shown.sum(1) == targets.shape[1]).all()
  for t, s in zip(targets, shown):
    assert sorted(t) == list(np.flatnonzero(s))


def test_bad_decoder_settings_name_the_key():
  cfg = videomae_config("tiny")
  cfg.objective.decoder_mask_ratio = 0.3
  with pytest.raises(ValueError, match=r"objective.decoder_mask_ratio=0.3.*0, 0.25, 0.5"):
    videomae.VideoMAEV2().validate(cfg)
  cfg.objective.decoder_masking = "tube"
  with pytest.raises(ValueError, match="objective.decoder_masking='tube'; valid"):
    videomae.VideoMAEV2().validate(cfg)


# --- VideoMAE loss and pictures -------------------------------------------------------------


@pytest.fixture(scope="module")
def videomae_model():
  return build(VideoMAE, TINY)


def _decode(net, patches, keep_idx, target_idx):
  return net.decode_subset(net.encode(patches, keep_idx), keep_idx, target_idx)


def _videomae_config(norm_pix_loss=True, masking="random"):
  return ml_collections.ConfigDict({"objective": dict(
      mask_ratio=0.5, decoder_mask_ratio=0.5, decoder_masking=masking,
      norm_pix_loss=norm_pix_loss)})


def test_videomae_loss_matches_numpy_and_the_decoder_reads_only_its_inputs(videomae_model):
  model, params = videomae_model
  video = np.random.default_rng(0).integers(0, 256, (3, 4, 8, 8, 2), dtype=np.uint8)
  rng = jax.random.key_data(jax.random.key(3))
  config = _videomae_config()
  loss, _ = jax.jit(functools.partial(videomae.VideoMAEV2().loss_fn, model=model,
                                      config=config))(params, {"video": video}, rng)
  # Independent: same masks, the model's own prediction, the target by hand in float64.
  keep_idx, hidden, targets, _ = map(np.asarray, _masks(3, 3, (2, 2, 2), 0.5, "random"))
  patches = _np_patchify(video.astype(np.float64) / 255, (2, 4, 4))  # (3, 8, 64)
  decode = jax.jit(lambda p, x: _decode(model.bind(p), x, keep_idx, targets))
  pred = np.asarray(decode(params, patches.astype(np.float32)), np.float64)
  target = np.take_along_axis(patches, targets[..., None], 1)
  per_channel = target.reshape(3, 2, 32, 2)
  mean, var = per_channel.mean(2, keepdims=True), per_channel.var(2, keepdims=True)
  target = ((per_channel - mean) / np.sqrt(var + 1e-6)).reshape(3, 2, 64)
  assert pred.shape == (3, 2, 64)  # 4 hidden tubes, the decoder rebuilds 2
  np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-5)
  # The other hidden tubes reach neither encoder nor decoder: blanking one changes nothing.
  other = [np.setdiff1d(np.flatnonzero(h), t)[0] for h, t in zip(hidden, targets)]
  blanked = patches.copy()
  blanked[np.arange(3), other] = 0.0
  np.testing.assert_allclose(decode(params, blanked.astype(np.float32)), pred, rtol=1e-5)


def test_videomae_reconstructions_keep_the_visible_tubes(videomae_model):
  model, params = videomae_model
  video = np.random.default_rng(1).integers(0, 256, (2, 4, 8, 8, 2), dtype=np.uint8)
  draw = jax.jit(functools.partial(videomae.VideoMAEV2().reconstructions, model=model,
                                   config=_videomae_config(masking="running_cell")))
  grid = np.asarray(draw(params, {"video": video}, jax.random.key_data(jax.random.key(5)))
                    ["reconstructions"])
  # 3 videos (original, masked, rebuilt) x 4 frames per row, 1-pixel borders.
  assert grid.dtype == np.uint8 and grid.shape == (2 * 9 + 1, 12 * 9 + 1, 2)
  panel = lambda k: grid[1:9, 1 + 9 * k:9 * (k + 1)]  # example 0, k-th picture
  np.testing.assert_array_equal(panel(0), video[0, 0])
  masked = np.stack([panel(k) for k in range(4, 8)])
  rebuilt = np.stack([panel(k) for k in range(8, 12)])
  visible = masked != 128  # HIDDEN_GREY is 128 after rounding; a visible pixel rarely is
  assert visible.any() and (~visible).any()
  np.testing.assert_array_equal(rebuilt[visible], masked[visible])


# --- ViTok ------------------------------------------------------------------------------------


VITOK_TINY = ViTokConfig(**{**TINY.__dict__, "latent_channels": 3})


def test_vitok_code_is_tokens_by_channels_and_the_l1_loss_matches_numpy():
  model, params = build(ViTok, VITOK_TINY)
  video = np.random.default_rng(2).integers(0, 256, (2, 4, 8, 8, 2), dtype=np.uint8)
  patches = _np_patchify(video.astype(np.float64) / 255, (2, 4, 4))
  code, pred = jax.jit(lambda p, x: (model.bind(p).encode(x),
                                     model.bind(p).decode(model.bind(p).encode(x))))(
      params, jnp.asarray(patches, jnp.float32))
  assert code.shape == (2, 8, 3) and VITOK_TINY.latent_floats == 24
  pred = np.asarray(pred, np.float64)
  config = ml_collections.ConfigDict({"objective": {"recon_loss": "l1"}})
  loss, _ = jax.jit(functools.partial(vitok.ViTokVideo().loss_fn, model=model,
                                      config=config))(params, {"video": video}, None)
  np.testing.assert_allclose(loss, np.abs(pred - patches).mean(), rtol=1e-5)
  l2 = vitok.reconstruction_loss(jnp.asarray(pred), jnp.asarray(patches), "l2")
  np.testing.assert_allclose(l2, np.square(pred - patches).mean(), rtol=1e-5)
  config.objective.recon_loss = "l3"
  with pytest.raises(ValueError, match="objective.recon_loss='l3'; valid: l1, l2"):
    vitok.ViTokVideo().validate(config)


# --- paper sizes ------------------------------------------------------------------------------


def _abstract_params(config, info: DataInfo):
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, info)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = lambda m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  return count(model), count(model.encoder)


@pytest.mark.parametrize("variant,paper", [("B", 87e6), ("g", 1011e6)])
def test_videomae_paper_encoders_have_the_paper_param_count(variant, paper):
  # VideoMAE V2 (its model table): ViT-B 87M, ViT-g 1011M backbone params.
  config = videomae_config(variant)
  config_lib.validate(config, num_devices=1)
  _, encoder = _abstract_params(config, DataInfo(video_shape=(16, 224, 224, 3)))
  assert abs(encoder / paper - 1) < 0.02, encoder


@pytest.mark.parametrize("variant,shape", [("S-B/16", dict(image_shape=(256, 256, 3))),
                                           ("S-B/4x8", dict(video_shape=(16, 128, 128, 3)))])
def test_vitok_paper_size_has_the_paper_param_count(variant, shape):
  # ViTok's reconstruction tables: S-B/16 129.0M params (256p images), S-B/4x8 129M (video).
  config = vitok_config(variant)
  config_lib.validate(config, num_devices=1)
  total, _ = _abstract_params(config, DataInfo(**shape))
  assert abs(total / 129.0e6 - 1) < 0.02, total


# --- end to end -------------------------------------------------------------------------------


def _run_main(tmp, recipe):
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp}",
                        "--config.train.steps=20", "--config.train.log_every=2",
                        "--config.optim.warmup_steps=2", "--config.train.eval_every=0",
                        "--config.train.checkpoint_every=20",
                        "--config.train.peak_flops_per_device=1e11"]) == 0
  curve = [r["loss"] for r in read_metrics(str(tmp)) if "loss" in r]
  assert np.mean(curve[-3:]) < 0.7 * np.mean(curve[:2]), curve


def test_videomae_tiny_trains_on_real_clips_through_main(tmp_path):
  _run_main(tmp_path, "videomae.py:tiny")


def test_vitok_tiny_trains_on_images_through_main(tmp_path):
  # vitok_video differs only in reading batch["video"]: its loss is checked above.
  _run_main(tmp_path, "vitok.py:tiny")
