"""PredFormer and next-block prediction on video: the attention layouts see what they claim,
the losses against NumPy, the paper sizes' param counts, and the tiny recipes trained
through `pretrain.main`."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from models.predformer import PredFormer, PredFormerConfig, apply_stage
from pretrain.registry import OBJECTIVES
from tests.helpers import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(image_size=(8, 8), patch_size=(4, 4), d_model=16, num_heads=2, d_ff=32,
             channels=1)


def _predformer(layout: str, pattern: str, num_layers: int):
  cfg = PredFormerConfig(layout=layout, pattern=pattern, num_layers=num_layers, **SMALL)
  model_def, params = build(PredFormer, cfg)
  return cfg, model_def, params


# --- PredFormer: the three layouts -------------------------------------------------------


def test_layouts_stack_the_stages_they_name():
  stages = lambda layout, pattern, n: PredFormerConfig(
      layout=layout, pattern=pattern, num_layers=n, **SMALL).stages
  assert stages("full", "TSST", 4) == (("full", 4),)
  assert stages("factorized", "TS", 4) == (("temporal", 2), ("spatial", 2))
  assert stages("factorized", "ST", 6) == (("spatial", 3), ("temporal", 3))
  assert [k[0][0].upper() for k in stages("interleaved", "TSST", 8)] == list("TSSTTSST")
  assert stages("interleaved", "TSST", 8)[1] == ("spatial", 1)
  bad = lambda layout, pattern, n: PredFormerConfig(
      layout=layout, pattern=pattern, num_layers=n, **SMALL).validate()
  with pytest.raises(ValueError, match="model.st_pattern='TST'"):
    bad("factorized", "TST", 6)
  with pytest.raises(ValueError, match="not divisible by len"):
    bad("interleaved", "TSST", 6)
  with pytest.raises(ValueError, match="model.st_attention='joint'"):
    bad("joint", "TS", 2)


@pytest.fixture(scope="module")
def predformer_ts():
  """(config, structure, params) of an interleaved model: a temporal, then a spatial block."""
  return _predformer("interleaved", "TS", 2)


@pytest.fixture(scope="module")
def stage_outputs(predformer_ts):
  """kind -> a jitted stage (one gated block) of a built model, applied to x (B, T, N, D)."""
  _, model_def, params = predformer_ts
  _, full_def, full_params = _predformer("full", "", 1)

  def stage(defn, p, index, kind):
    return jax.jit(lambda x: apply_stage(defn.bind(p).stages[index], kind, x))

  return {"temporal": stage(model_def, params, 0, "temporal"),
          "spatial": stage(model_def, params, 1, "spatial"),
          "full": stage(full_def, full_params, 0, "full")}


def _tokens(seed: int = 0):
  return jax.random.normal(jax.random.key(seed), (2, 3, 4, 16))  # (B, T, N, D)


def _nudge(x, index):
  """x with the token at `index` moved by a random vector (not a constant shift: the
  blocks' LayerNorms would erase that)."""
  return x.at[index].add(jax.random.normal(jax.random.key(9), x.shape[-1:]))


def _changed(a, b) -> np.ndarray:
  """(B, T, N) bool: which tokens' outputs differ."""
  return np.abs(np.asarray(a) - np.asarray(b)).max(-1) > 1e-5


def test_a_spatial_block_sees_only_its_own_frame(stage_outputs):
  x = _tokens()
  moved = stage_outputs["spatial"](_nudge(x, (slice(None), 1, 2)))  # one token of frame 1
  changed = _changed(stage_outputs["spatial"](x), moved)
  assert changed[:, 1].all()  # every token of frame 1 attends to it
  assert not changed[:, [0, 2]].any()  # no token of another frame does


def test_a_temporal_block_sees_only_its_own_patch_position(stage_outputs):
  x = _tokens()
  moved = stage_outputs["temporal"](_nudge(x, (slice(None), 0, 2)))  # patch 2 of frame 0
  changed = _changed(stage_outputs["temporal"](x), moved)
  assert changed[:, :, 2].all()  # patch 2 in every frame attends to it
  assert not changed[:, :, [0, 1, 3]].any()


def test_a_full_block_sees_every_token_of_its_clip_only(stage_outputs):
  x = _tokens()
  moved = stage_outputs["full"](_nudge(x, (0, 0, 0)))
  changed = _changed(stage_outputs["full"](x), moved)
  assert changed[0].all() and not changed[1].any()  # the other clip is untouched


@pytest.mark.parametrize("pattern", ["S", "T"])
def test_a_whole_model_of_one_kind_keeps_frames_or_patch_positions_apart(pattern):
  """Through embedding, stages, head and unpatchify: with spatial blocks only, predicted
  frame t depends on input frame t alone; with temporal blocks only, a predicted patch
  depends on its own patch position alone."""
  _, model_def, params = _predformer("interleaved", pattern, 2)
  forward = jax.jit(lambda v: model_def.bind(params)(v))
  video = jax.random.uniform(jax.random.key(1), (1, 3, 8, 8, 1))
  base = forward(video)
  moved = forward(video.at[0, 1, 0:4, 0:4].add(0.5))  # patch 0 of frame 1
  diff = np.abs(np.asarray(moved - base))[0, ..., 0]  # (T, H, W)
  if pattern == "S":
    assert diff[1].max() > 1e-5 and diff[[0, 2]].max() < 1e-6
  else:
    assert diff[:, 0:4, 0:4].max((1, 2)).min() > 1e-5  # patch 0 of every frame
    assert max(diff[:, 4:].max(), diff[:, :4, 4:].max()) < 1e-6


def test_prediction_has_the_clip_shape_in_float32():
  _, model_def, params = _predformer("full", "", 1)
  out = jax.jit(lambda v: model_def.bind(params)(v))(jnp.zeros((2, 3, 8, 8, 1)))
  assert out.shape == (2, 3, 8, 8, 1) and out.dtype == jnp.float32


# --- frame_prediction: the loss ------------------------------------------------------------


def _frame_config(input_frames: int, num_frames: int):
  return ml_collections.ConfigDict({"objective": {"input_frames": input_frames},
                                    "data": {"num_frames": num_frames}})


def test_frame_prediction_loss_is_the_future_frames_mse_like_numpy(predformer_ts):
  _, model_def, params = predformer_ts
  objective = OBJECTIVES.get("frame_prediction")
  config = _frame_config(3, 5)  # 3 frames in, the next 2 scored
  video = np.random.default_rng(0).integers(0, 256, (2, 5, 8, 8, 1), dtype=np.uint8)

  @jax.jit
  def run(p, v):
    kw = dict(model=model_def, config=config)
    return (objective.loss_fn(p, {"video": v}, None, **kw),
            model_def.bind(p)(v[:, :3].astype(jnp.float32) / 255),
            objective.reconstructions(p, {"video": v}, None, **kw)["reconstructions"])

  (loss, metrics), pred, pictures = run(params, video)
  frames = video.astype(np.float64) / 255
  pred = np.asarray(pred, np.float64)[:, :2]  # the first 2 predicted frames are scored
  np.testing.assert_allclose(loss, np.mean((pred - frames[:, 3:]) ** 2), rtol=1e-5)
  copy_last = np.mean((frames[:, 2:3] - frames[:, 3:]) ** 2)
  np.testing.assert_allclose(metrics["copy_last_mse"], copy_last, rtol=1e-5)
  # 2 clips x 3 strips (input, true future, predicted) of 3 frames of 8x8, 1-pixel borders.
  assert pictures.shape == (2 * 3 * 9 + 1, 3 * 9 + 1, 1) and pictures.dtype == jnp.uint8


@pytest.mark.parametrize("input_frames,message", [(5, "must leave data.num_frames=5"),
                                                  (1, "objective.input_frames=1")])
def test_frame_prediction_rejects_splits_the_model_cannot_predict(input_frames, message):
  with pytest.raises(ValueError, match=message):
    OBJECTIVES.get("frame_prediction").validate(_frame_config(input_frames, 5))
