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
from flax import nnx

from models.predformer import PredFormer, PredFormerConfig, apply_stage
from models.transformer import TextTransformer, TransformerConfig
from objectives.next_block import FrameTokens
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data import visual_tokens
from pretrain.data.modalities import MODALITIES
from pretrain.registry import MODELS, OBJECTIVES
from pretrain.train import read_metrics
from helpers import np_cross_entropy, random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(image_size=(8, 8), patch_size=(4, 4), d_model=16, num_heads=2, d_ff=32,
             channels=1)


def _load(recipe: str, variant: str):
  return config_lib.load_config_file(os.path.join(ROOT, f"configs/{recipe}.py:{variant}"))


def _predformer(layout: str, pattern: str, num_layers: int):
  cfg = PredFormerConfig(layout=layout, pattern=pattern, num_layers=num_layers, **SMALL)
  return (cfg, *random_model(PredFormer, cfg, std=0.2))


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
  """x (B, T, N, D) -> (B, T, N, D) per kind, one jitted function: the model's own temporal
  and spatial stages (one gated block each) and a full-attention model's stage."""
  _, model_def, params = predformer_ts
  _, full_def, full_params = _predformer("full", "", 1)

  @jax.jit
  def run(x):
    net, full = model_def.bind(params), full_def.bind(full_params)
    return {"temporal": apply_stage(net.stages[0], "temporal", x),
            "spatial": apply_stage(net.stages[1], "spatial", x),
            "full": apply_stage(full.stages[0], "full", x)}

  return run


def _changed(stage_outputs, kind: str, index) -> np.ndarray:
  """(B, T, N) bool: which tokens' outputs of the `kind` stage move when the input token at
  `index` moves by a random vector (not a constant shift: LayerNorms would erase that)."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 16))  # (B, T, N, D)
  moved = x.at[index].add(jax.random.normal(jax.random.key(9), (16,)))
  a, b = stage_outputs(x)[kind], stage_outputs(moved)[kind]
  return np.abs(np.asarray(a) - np.asarray(b)).max(-1) > 1e-5


def test_a_spatial_block_sees_only_its_own_frame(stage_outputs):
  changed = _changed(stage_outputs, "spatial", (slice(None), 1, 2))  # a token of frame 1
  assert changed[:, 1].all()  # every token of frame 1 attends to it
  assert not changed[:, [0, 2]].any()  # no token of another frame does


def test_a_temporal_block_sees_only_its_own_patch_position(stage_outputs):
  changed = _changed(stage_outputs, "temporal", (slice(None), 0, 2))  # patch 2 of frame 0
  assert changed[:, :, 2].all()  # patch 2 in every frame attends to it
  assert not changed[:, :, [0, 1, 3]].any()


def test_a_full_block_sees_every_token_of_its_clip_only(stage_outputs):
  changed = _changed(stage_outputs, "full", (0, 0, 0))
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


# --- frame_prediction: the loss ------------------------------------------------------------


def _frame_config(input_frames: int, num_frames: int):
  return ml_collections.ConfigDict({"objective": {"input_frames": input_frames},
                                    "data": {"num_frames": num_frames, "frame_size": 8},
                                    "model": {"patch_size": (4, 4)}})


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
  assert pred.shape == (2, 3, 8, 8, 1) and pred.dtype == jnp.float32  # as many as it saw
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


# --- paper size and the tiny recipe ----------------------------------------------------


@pytest.mark.parametrize("variant", ["mmnist", "mmnist_full", "mmnist_factorized"])
def test_paper_sizes_build_abstractly_with_the_paper_param_count(variant):
  config = _load("predformer", variant)
  builder = MODELS.get("predformer")
  cfg = builder.model_config(config.model, MODALITIES.get("video").abstract_info(config))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  # PredFormer's Moving MNIST results table: 25.3M params (24 gated blocks of width 256).
  assert cfg.num_patches == 64 and sum(d for _, d in cfg.stages) == 24
  assert abs(count / 25.3e6 - 1) < 0.02, count


def _train(tmp_path, recipe: str, variant: str, steps: int) -> list[dict]:
  args = [f"--config.train.steps={steps}", "--config.train.log_every=1",
          f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={steps}",
          "--config.train.eval_steps=1",
          # A nominal peak: measuring this CPU's matmul peak for MFU costs ~2 s per run.
          "--config.train.peak_flops_per_device=1e11",
          "--config.optim.warmup_steps=2"]
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:{variant}",
                        f"--workdir={tmp_path}", *args]) == 0
  return read_metrics(str(tmp_path))


def test_tiny_predformer_recipe_trains_through_main(tmp_path):
  records = _train(tmp_path, "predformer", "tiny", 20)
  curve = [r["loss"] for r in records if "loss" in r]
  start = np.mean(curve[:2])
  assert np.mean(curve[-5:]) < 0.75 * start, curve
  final = next(r for r in records if "eval_loss" in r)
  assert final["eval_loss"] < 0.75 * start and final["eval_copy_last_mse"] > 0, final
  assert os.path.exists(tmp_path / "reconstructions" / "step_20.png")


@pytest.mark.parametrize("spec,args,expected", [
    ("predformer.py:tiny", ["--config.objective.input_frames=2"],
     "objective.input_frames=2: must leave data.num_frames=8"),
    ("predformer.py:tiny", ["--config.model.st_attention=factorized",
                            "--config.model.st_pattern=TST"], "model.st_pattern='TST'"),
    ("predformer.py:tiny", ["--config.model.st_pattern=TSX"], "model.st_pattern='TSX'"),
    ("predformer.py:tiny", ["--config.model.patch_size=(3, 3)"],
     "model.patch_size=(3, 3) does not divide data.frame_size=16"),
    ("predformer.py:tiny", ["--config.data.source=fashion_mnist"],
     "data.source='fashion_mnist' cannot feed objective 'frame_prediction' (video)"),
    ("next_block.py:tiny_video", ["--config.model.patch_size=(3, 3)"],
     "model.patch_size=(3, 3): the codebook's patches must be square and divide"),
    ("next_block.py:tiny_video", ["--config.model.max_len=64"], "model.max_len=64 < "),
    ("next_block.py:tiny_video", ["--config.model.codebook_size=1"],
     "model.codebook_size=1: must be >= 2"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, spec, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{spec}", f"--workdir={tmp_path}/r", *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


# --- next-block prediction on video ----------------------------------------------------


def test_kmeans_finds_separated_clusters_and_quantises_to_the_nearest():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 9.0]])
  points = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres])
  codebook = visual_tokens.kmeans(points, 3, iters=10, seed=0)
  found = sorted(map(tuple, np.round(codebook).astype(int)))
  assert found == [(0, 0), (0, 9), (5, 5)]
  brute = np.square(points[:, None] - codebook[None]).sum(-1).argmin(1)
  np.testing.assert_array_equal(visual_tokens.nearest_code(points, codebook), brute)
  # Fewer distinct points than centroids: still k finite centroids, every point exact.
  same = visual_tokens.kmeans(np.zeros((10, 2)), 4, iters=2, seed=0)
  assert same.shape == (4, 2) and np.isfinite(same).all()


def test_frame_tokens_are_frame_major_patches_of_the_nearest_centroid():
  video = np.zeros((2, 8, 8, 1), np.uint8)
  video[1, 4:, :4] = 255  # frame 1: its bottom-left 4x4 patch (row-major index 2) white
  codebook = np.stack([np.zeros(16), np.ones(16)]).astype(np.float32)
  row = FrameTokens(codebook, 4).random_map({"video": video, "label": np.int32(0)}, None)
  np.testing.assert_array_equal(row["tokens"], [0, 0, 0, 0, 0, 0, 1, 0])
  np.testing.assert_array_equal(row["positions"], np.arange(8))
  assert row["segment_ids"].tolist() == [1] * 8 and row["tokens"].dtype == np.int32


@pytest.fixture(scope="module")
def video_nbp():
  """(config, structure, params) of a small transformer over 3 frames x 4 patch tokens."""
  config = ml_collections.ConfigDict({
      "data": {"frame_size": 8, "num_frames": 3},
      "model": {"patch_size": (4, 4), "codebook_size": 10, "max_len": 12}})
  cfg = TransformerConfig(vocab_size=128, num_layers=2, d_model=16, num_heads=2, d_ff=32,
                          max_len=12)
  return (config, *random_model(TextTransformer, cfg, std=0.2))


def _video_batch(seed: int = 0):
  tokens = np.random.default_rng(seed).integers(0, 10, (2, 12)).astype(np.int32)
  return {"tokens": tokens, "segment_ids": np.ones((2, 12), np.int32),
          "positions": np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))}


def test_video_blocks_see_their_frame_and_earlier_frames_never_later_ones(video_nbp):
  config, model_def, params = video_nbp
  objective = OBJECTIVES.get("next_block_video")
  assert objective.block_size(config) == 4
  hidden = jax.jit(lambda b: model_def.bind(params)(
      b["tokens"], positions=b["positions"], mask=objective.mask(b, config)))
  batch = _video_batch()
  base_out = np.asarray(hidden(batch))
  for frame in range(3):
    moved = dict(batch, tokens=batch["tokens"].copy())
    moved["tokens"][:, 4 * frame + 3] = (moved["tokens"][:, 4 * frame + 3] + 1) % 10
    changed = np.abs(np.asarray(hidden(moved)) - base_out).max(-1) > 1e-6  # (B, 12)
    # Every token of this frame and of later frames sees the moved (last) token of the
    # frame; no token of an earlier frame does.
    assert changed[:, 4 * frame:].all() and not changed[:, :4 * frame].any(), frame


def test_video_next_block_loss_matches_numpy(video_nbp):
  config, model_def, params = video_nbp
  objective = OBJECTIVES.get("next_block_video")
  batch = _video_batch(1)

  @jax.jit
  def run(p, b):
    net = model_def.bind(p)
    logits = net.logits(net(b["tokens"], positions=b["positions"],
                            mask=objective.mask(b, config)))
    return objective.loss_fn(p, b, None, model=model_def, config=config), logits

  (loss, metrics), logits = run(params, batch)
  # Token i of frames 0 and 1 predicts token i of the next frame; frame 2 has no target.
  ce = np_cross_entropy(np.asarray(logits)[:, :8], batch["tokens"][:, 4:])
  np.testing.assert_allclose(loss, ce.mean(), rtol=1e-5)
  hits = np.asarray(logits)[:, :8].argmax(-1) == batch["tokens"][:, 4:]
  np.testing.assert_allclose(metrics["accuracy"], hits.mean(), rtol=1e-6)
  copies = batch["tokens"][:, :8] == batch["tokens"][:, 4:]
  np.testing.assert_allclose(metrics["copy_accuracy"], copies.mean(), rtol=1e-6)


def test_tiny_video_recipe_trains_through_main(tmp_path):
  records = _train(tmp_path, "next_block", "tiny_video", 20)
  curve = [r["loss"] for r in records if "loss" in r]
  assert curve[-1] < curve[0] - 1.0, curve
  assert next(r for r in records if "eval_loss" in r)["eval_loss"] < curve[0]
  assert os.path.exists(tmp_path / "reconstructions" / "step_20.png")
