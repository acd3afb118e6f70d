"""Tiny Time Mixers: the statsmodels series reader, windows and RevIN-style scaling, patching,
the forecast loss against NumPy, the paper size's param count, and the tiny recipe trained
through `pretrain.main` beating the naive last-value forecast on held-out windows."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.tsmixer import TTMConfig, TinyTimeMixer, patchify_series
from objectives.base import ModelDef
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data import pipeline, series
from pretrain.model_builders import TTMBuilder
from pretrain.registry import OBJECTIVES
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(variant: str):
  return config_lib.load_config_file(os.path.join(ROOT, f"configs/ttm.py:{variant}"))


@pytest.fixture(scope="module")
def statsmodels_series():
  return series.read_statsmodels_series(pipeline.cache_dir(_load("tiny").data))


# --- data --------------------------------------------------------------------------------


def test_reader_gives_the_known_values_of_each_series(statsmodels_series):
  s = statsmodels_series
  assert s["sunspots"][0] == "yearly" and len(s["sunspots"][1]) == 309  # 1700-2008
  np.testing.assert_array_equal(s["sunspots"][1][:3], [5, 11, 16])
  np.testing.assert_array_equal(s["sunspots"][1][-2:], [7.5, 2.9])
  np.testing.assert_array_equal(s["nile"][1][:3], [1120, 1160, 963])
  assert s["co2"][0] == "weekly" and len(s["co2"][1]) == 2284
  # 1958-05-10 is missing: the mean of the weeks either side (316.9 and 317.5).
  np.testing.assert_allclose(s["co2"][1][5:8], [316.9, 317.2, 317.5])
  np.testing.assert_array_equal(s["elnino"][1][:2], [23.11, 24.2])  # Jan, Feb 1950
  assert len(s["elnino"][1]) == 61 * 12 and s["elnino"][0] == "monthly"
  np.testing.assert_array_equal(s["macrodata/realgdp"][1][:2], [2710.349, 2778.801])
  assert s["macrodata/realgdp"][0] == "quarterly" and len(s) == 17
  assert all(np.isfinite(v).all() for _, v in s.values())


def test_windows_split_by_time_by_hand():
  # 20 values, 20% held out: values 16..19. Train windows (4 + 2) end by 16; validation
  # windows forecast inside 16..19, their context reaching back into the training part.
  np.testing.assert_array_equal(series.window_starts(20, 4, 2, "train"), np.arange(11))
  np.testing.assert_array_equal(series.window_starts(20, 4, 2, "validation"), [12, 13, 14])
  with pytest.raises(ValueError, match="unknown series split 'test'"):
    series.window_starts(20, 4, 2, "test")


def test_windows_are_standardised_by_their_context_only():
  values = np.array([1., 2., 3., 4., 10., 6., 0., 0., 0., 0.])
  source = series.SeriesWindows({"toy": ("monthly", values)}, context_len=4, horizon=2,
                                split="train")
  assert len(source) == 3  # cut at 8: starts 0, 1, 2
  first = source[0]
  std = np.sqrt(1.25 + series.SCALE_EPS)  # context 1..4: mean 2.5, variance 1.25
  np.testing.assert_allclose(first["context"], (values[:4] - 2.5) / std, rtol=1e-6)
  np.testing.assert_allclose(first["target"], (values[4:6] - 2.5) / std, rtol=1e-6)
  assert first["context"].dtype == np.float32 and first["target"].shape == (2,)
  assert first["resolution"] == series.RESOLUTIONS.index("monthly")
  third = source[2]  # context 3, 4, 10, 6: the target's own values do not set the scale
  ctx = values[2:6]
  np.testing.assert_allclose(third["target"], (values[6:8] - ctx.mean()) / np.sqrt(
      ctx.var() + series.SCALE_EPS), rtol=1e-6)


def test_downsampling_averages_only_the_training_part_by_hand():
  np.testing.assert_array_equal(series.downsample(np.arange(1.0, 8.0), 3), [2, 5])
  monthly = np.arange(30.0)  # 20% held out: months 24..29 never reach the coarser series
  parts = series.downsampled_training_parts({"m": ("monthly", monthly)})
  assert sorted(parts) == ["m@quarterly", "m@yearly"]
  np.testing.assert_array_equal(parts["m@quarterly"][1], [1, 4, 7, 10, 13, 16, 19, 22])
  np.testing.assert_array_equal(parts["m@yearly"][1], [5.5, 17.5])
  assert parts["m@yearly"][0] == "yearly"
  with_parts = series.SeriesWindows({"m": ("monthly", monthly)}, 4, 2, "train", parts)
  assert len(with_parts) == 19 + 3  # 19 monthly windows before the cut + 3 quarterly
  with pytest.raises(ValueError, match="training windows, not 'validation'"):
    series.SeriesWindows({"m": ("monthly", monthly)}, 4, 2, "validation", parts)


def test_every_split_yields_windows_of_the_configured_shape():
  data = _load("tiny").data
  for split in ("train", "validation"):
    source = pipeline.build_series_dataset(data, split)
    ex = source[len(source) - 1]
    assert ex["context"].shape == (data.context_len,) and ex["target"].shape == (data.horizon,)
    np.testing.assert_allclose(ex["context"].mean(), 0, atol=1e-5)


# --- model -------------------------------------------------------------------------------


def test_patching_by_hand():
  x = jnp.arange(10.0)[None]
  np.testing.assert_array_equal(patchify_series(x, 4, 3)[0],
                                [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
  # 11 values do not tile into patches of 4: the oldest value is dropped, the last kept.
  np.testing.assert_array_equal(patchify_series(jnp.arange(11.0)[None], 4, 4)[0],
                                [[3, 4, 5, 6], [7, 8, 9, 10]])


@pytest.fixture(scope="module")
def tiny_model():
  """(structure, params, jitted forward) of a small TTM with a resolution prefix."""
  cfg = TTMConfig(context_len=16, horizon=4, patch_len=4, patch_stride=4, d_model=8,
                  num_layers=1, expansion=2, adaptive_levels=2, decoder_d_model=4,
                  decoder_layers=1, num_resolutions=4)
  with nnx.use_eager_sharding(False):
    graphdef, abstract = nnx.split(
        nnx.eval_shape(lambda: TinyTimeMixer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  # Random params drawn in NumPy: an eager init compiles one kernel per param shape.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32),
                        nnx.to_pure_dict(abstract))
  model_def = ModelDef(graphdef)
  forward = jax.jit(lambda p, context, resolution: model_def.bind(p)(context, resolution))
  return model_def, params, lambda context, resolution: forward(params, context, resolution)


def test_forecast_depends_on_the_resolution_prefix_and_its_own_window_only(tiny_model):
  _, _, forward = tiny_model
  context = jax.random.normal(jax.random.key(1), (3, 16))
  out = forward(context, jnp.array([0, 1, 2]))
  assert out.shape == (3, 4) and out.dtype == jnp.float32
  assert not np.allclose(out[0], forward(context, jnp.array([3, 1, 2]))[0])
  others = np.array([0, 2])
  changed = forward(context.at[1].set(0.0), jnp.array([0, 1, 2]))
  np.testing.assert_allclose(changed[others], out[others], rtol=1e-6)


def test_forecast_loss_is_mse_like_numpy(tiny_model):
  model_def, params, forward = tiny_model
  rng = np.random.default_rng(0)
  batch = {"context": rng.normal(size=(5, 16)).astype(np.float32),
           "target": rng.normal(size=(5, 4)).astype(np.float32),
           "resolution": np.array([0, 1, 2, 3, 0], np.int32)}
  loss_fn = jax.jit(lambda p, b: OBJECTIVES.get("forecast").loss_fn(
      p, b, None, model=model_def, config=_load("tiny")))
  loss, metrics = loss_fn(params, batch)
  pred = np.asarray(forward(batch["context"], batch["resolution"]), np.float64)
  target = batch["target"].astype(np.float64)
  np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-5)
  naive = batch["context"][:, -1:].astype(np.float64)
  np.testing.assert_allclose(metrics["naive_mse"], np.mean((naive - target) ** 2), rtol=1e-6)


def test_paper_size_builds_abstractly_with_the_released_param_count():
  config = _load("512-96")
  builder = TTMBuilder()
  cfg = builder.model_config(config.model, series.data_info(config.data))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  # granite-timeseries-ttm-r1 512-96: 805,280 params (configs/ttm.py).
  assert cfg.num_patches == 8 and abs(count / 805_280 - 1) < 0.02, count


# --- recipe ------------------------------------------------------------------------------


@pytest.mark.parametrize("args,expected", [
    (["--config.data.horizon=0"], "data.horizon=0: must be > 0"),
    (["--config.model.decoder_num_layers=0"], "model.decoder_num_layers=0: must be > 0"),
    (["--config.model.patch_len=64"], "model.patch_len=64 exceeds data.context_len=32"),
    (["--config.data.source=shakespeare"], "data.source='shakespeare' cannot feed objective "
     "'forecast' (series); valid: statsmodels_series"),
    (["--config.model.adaptive_levels=6"], "model.adaptive_levels=6: needs >= 0 levels and "
     "model.d_model=16 divisible by 2^(levels-1)=32"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/ttm.py:tiny", f"--workdir={tmp_path}/r",
                        *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


def test_tiny_recipe_beats_the_naive_forecast_through_main(tmp_path):
  args = ["--config.train.steps=25", "--config.train.log_every=5",
          "--config.train.eval_every=25", "--config.train.checkpoint_every=25"]
  assert main_lib.main([f"--config={ROOT}/configs/ttm.py:tiny", f"--workdir={tmp_path}",
                        *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert curve[-1] < curve[0] - 0.5, curve
  final = next(r for r in records if "eval_loss" in r)
  # Over 1024 held-out windows, the model forecasts better than repeating the last value.
  assert final["eval_loss"] < 0.95 * final["eval_naive_mse"], final
  assert all(r["mfu"] > 0 for r in records if "loss" in r)
