"""TokenUnify (k-means visual tokens, a per-example mixture of three token tasks) and
I2P-MAE (point tokens from images, 2D-guided masking, Chamfer reconstruction)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.i2p_mae import get_config as get_i2p_config
from configs.token_unify import get_config as get_token_unify_config
from models.future_tokens import MultiTokenConfig, MultiTokenLM
from objectives import i2p_mae, token_unify
from objectives.base import DataInfo
from pretrain import main as main_lib
from pretrain.data import points, visual_tokens
from pretrain.data.corpora import fashion_mnist
from pretrain.registry import MODELS, OBJECTIVES
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def images():
  """60 Fashion-MNIST training images as float (N, 28, 28, 1) in [0, 1]."""
  return fashion_mnist("train")[0][:60, :, :, None].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def codebook(images):
  vectors = visual_tokens.patch_vectors(images, (4, 4)).reshape(-1, 16)
  return visual_tokens.kmeans(vectors, 16, iters=5, seed=0)


# --- the visual tokenizer ------------------------------------------------------------------


def test_codebook_beats_one_code_and_is_deterministic(images, codebook):
  vectors = visual_tokens.patch_vectors(images, (4, 4)).reshape(-1, 16)
  one_code = vectors.mean(0, keepdims=True)  # the best single code: the mean
  assert (visual_tokens.reconstruction_error(vectors, codebook)
          < 0.5 * visual_tokens.reconstruction_error(vectors, one_code))
  np.testing.assert_array_equal(visual_tokens.kmeans(vectors, 16, iters=5, seed=0), codebook)
  brute = np.argmin(((vectors[:, None] - codebook[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(visual_tokens.nearest_code(vectors, codebook), brute)


def test_fitted_codebook_is_cached_per_setting(tmp_path):
  data = ml_collections.ConfigDict(dict(source="fashion_mnist", path="", tfds_name="",
                                        cache_dir=str(tmp_path)))
  fit = lambda iters: visual_tokens.fit_codebook(data, patch=(7, 7), num_codes=4,
                                                 iters=iters, num_images=20, seed=0)
  first = fit(2)
  assert len(os.listdir(tmp_path / "visual_tokens")) == 1
  np.testing.assert_array_equal(fit(2), first)  # read back from the cache
  fit(3)
  assert len(os.listdir(tmp_path / "visual_tokens")) == 2  # another setting, another file


# --- TokenUnify ----------------------------------------------------------------------------


def _tasks(codebook, mix=(1.0, 1.0, 1.0)):
  return token_unify.TokenUnifyTasks(codebook=codebook, patch=(4, 4), task_mix=mix,
                                     mask_rate=0.5, seq_len=49)


def test_task_transform_shapes_masks_and_determinism(images, codebook):
  transform, seen = _tasks(codebook), set()
  for i, image in enumerate(images[:30]):
    out = transform.random_map({"image": image}, np.random.default_rng(i))
    again = transform.random_map({"image": image}, np.random.default_rng(i))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    assert out["tokens"].shape == out["inputs"].shape == (49,)
    assert out["masked_positions"].shape == (25,) and 0 <= out["tokens"].min()
    assert out["tokens"].max() < 16 and (out["segment_ids"] == 1).all()
    task, weights = int(out["task"]), out["masked_weights"]
    seen.add(task)
    hidden = out["inputs"] == token_unify.mask_id(16)
    if task == token_unify.RANDOM:
      chosen = out["masked_positions"][weights > 0]
      assert weights.sum() == round(49 * 0.5) == hidden.sum() and hidden[chosen].all()
      np.testing.assert_array_equal(out["masked_ids"][weights > 0], out["tokens"][chosen])
    else:
      assert weights.sum() == 0 and not hidden.any()
      np.testing.assert_array_equal(out["inputs"], out["tokens"])
  assert seen == {0, 1, 2}


def test_tasks_follow_the_mix(images, codebook):
  transform = _tasks(codebook, mix=(1.0, 0.0, 3.0))
  tasks = [int(transform.random_map({"image": images[0]}, np.random.default_rng(i))["task"])
           for i in range(400)]
  counts = np.bincount(tasks, minlength=3)
  assert counts[1] == 0 and abs(counts[2] / 400 - 0.75) < 0.07, counts


def test_task_attention_mask_is_per_example():
  task = jnp.array([token_unify.RANDOM, token_unify.NEXT, token_unify.NEXT_ALL])
  mask = np.asarray(token_unify.task_attention_mask(task, jnp.ones((3, 5), jnp.int32)))
  assert mask[0, 0].all()
  for b in (1, 2):
    np.testing.assert_array_equal(mask[b, 0], np.tril(np.ones((5, 5), bool)))


def test_token_unify_loss_matches_numpy(images, codebook):
  cfg = MultiTokenConfig(vocab_size=128, max_len=64, d_model=32, num_layers=1, num_heads=2,
                         d_ff=64, num_future=3, pos_emb="learned")
  model, params = build(MultiTokenLM, cfg)
  transform = _tasks(codebook)
  rows = {}
  for i in range(60):  # one example of each task
    out = transform.random_map({"image": images[i % 10]}, np.random.default_rng(i))
    rows.setdefault(int(out["task"]), out)
  batch = {k: jnp.stack([rows[t][k] for t in range(3)]) for k in rows[0]}
  config = ml_collections.ConfigDict(dict(objective=dict(future_decay=0.5)))
  loss, metrics = jax.jit(lambda p, b: OBJECTIVES.get("token_unify").loss_fn(
      p, b, None, model=model, config=config))(params, batch)
  length = 49
  positions = jnp.arange(length)[None]

  @jax.jit
  def forward(params, inputs, mask):
    net = model.bind(params)
    trunk = net(inputs[None], positions=positions, mask=mask[None, None])
    return net.logits(trunk)[0], net.logits(net.future_hidden(trunk, mask=mask[None, None],
                                                              positions=positions))[:, 0]

  def run(b, causal):  # one example alone, its mask written out by hand
    mask = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
    trunk_logits, head_logits = forward(params, batch["inputs"][b], jnp.asarray(mask))
    return np.asarray(trunk_logits, np.float64), np.asarray(head_logits, np.float64)

  tokens = np.asarray(batch["tokens"])
  logits, _ = run(0, causal=False)
  w = np.asarray(batch["masked_weights"][0]) > 0
  pos = np.asarray(batch["masked_positions"][0])[w]
  expected = [np_cross_entropy(logits[pos], tokens[0, pos]).mean()]
  _, heads = run(1, causal=True)
  expected.append(np_cross_entropy(heads[0, :-1], tokens[1, 1:]).mean())
  _, heads = run(2, causal=True)
  per_head = [np_cross_entropy(heads[k - 1, :-k], tokens[2, k:]).mean() for k in (1, 2, 3)]
  expected.append(np.dot([1, 0.5, 0.25], per_head) / 1.75)
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-4)
  for t, name in enumerate(token_unify.TASKS):
    np.testing.assert_allclose(float(metrics[f"{name}_loss"]), expected[t], rtol=1e-4)


@pytest.mark.parametrize("recipe,arg,expected", [
    ("token_unify", "objective.task_mix=(1.0,-1.0,1.0)",
     "objective.task_mix=(1.0, -1.0, 1.0): must be 3 weights >= 0"),
    ("token_unify", "model.codebook_size=1", "model.codebook_size=1: must be >= 2"),
    ("i2p_mae", "objective.num_groups=1", "objective.num_groups=1: must be in [2,"),
    ("i2p_mae", "model.group_size=999", "model.group_size=999: must be in [1,"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, recipe, arg, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={tmp_path}",
                        f"--config.{arg}"])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


def test_token_unify_base_param_count_is_our_transformer():
  """The paper's counts are for Mamba; `base` is ours: embeddings, 12 + 4 pre-LN blocks
  of width 768, the final norms and the logits bias, counted by hand."""
  config = get_token_unify_config("base")
  builder = MODELS.get("token_unify")
  cfg = builder.model_config(config.model, DataInfo())
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  d, f, vocab = 768, 3072, 1152  # 1024 codes + [MASK], padded to a multiple of 128
  block = 4 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)
  expected = vocab * d + 64 * d + 16 * block + 2 * d * (1 + 4) + vocab
  assert cfg.vocab_size == vocab and count == expected  # 114.3M


# --- points --------------------------------------------------------------------------------


def test_image_to_points_reads_the_height_map(images):
  rng = np.random.default_rng(0)
  cloud = points.image_to_points(images[0], 500, rng)
  assert cloud.shape == (500, 3) and cloud.dtype == np.float32
  assert np.abs(cloud[:, :2]).max() <= 1
  rows, cols = points.point_pixels(cloud, (28, 28))
  np.testing.assert_allclose(cloud[:, 2], images[0][rows, cols, 0])
  assert (cloud[:, 2] > points.FOREGROUND).all()


def test_farthest_point_sampling_matches_its_definition():
  cloud = np.random.default_rng(1).normal(size=(200, 3))
  chosen = points.farthest_point_sample(cloud, 12, start=5)
  assert chosen[0] == 5 and len(set(chosen.tolist())) == 12
  for i in range(1, 12):
    dist = [min(np.linalg.norm(p - cloud[c]) for c in chosen[:i]) for p in cloud]
    assert chosen[i] == int(np.argmax(dist))


def test_knn_groups_are_the_nearest_points():
  cloud = np.random.default_rng(2).normal(size=(100, 3))
  groups = points.knn(cloud, cloud[:4], 7)
  for q in range(4):
    dist = np.linalg.norm(cloud - cloud[q], axis=1)
    assert groups[q, 0] == q
    assert set(groups[q].tolist()) == set(np.argsort(dist)[:7].tolist())


def test_chamfer_matches_a_double_loop():
  rng = np.random.default_rng(3)
  pred, target = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 6, 3))
  expected = []
  for b in range(2):
    d = np.array([[np.sum((p - t) ** 2) for t in target[b]] for p in pred[b]])
    expected.append(d.min(1).mean() + d.min(0).mean())
  np.testing.assert_allclose(np.asarray(i2p_mae.chamfer_l2(jnp.asarray(pred),
                                                           jnp.asarray(target))),
                             expected, rtol=1e-5)


def _point_tokens(saliency_masking=True):
  return i2p_mae.PointTokens(num_points=256, num_groups=16, group_size=16, mask_ratio=0.75,
                             saliency_masking=saliency_masking)


def test_point_tokens_invariants(images):
  transform = _point_tokens()
  for i, image in enumerate(images[:5]):
    out = transform.random_map({"image": image}, np.random.default_rng(i))
    again = transform.random_map({"image": image}, np.random.default_rng(i))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    assert out["centers"].shape == (16, 3) and out["neighborhoods"].shape == (16, 16, 3)
    assert out["visible_idx"].shape == (4,) and out["masked_idx"].shape == (12,)
    np.testing.assert_array_equal(np.sort(np.concatenate([out["visible_idx"],
                                                          out["masked_idx"]])), np.arange(16))
    absolute = out["neighborhoods"] + out["centers"][:, None]
    groups = points.knn(out["points"], out["centers"], 16)
    np.testing.assert_allclose(absolute, out["points"][groups], atol=1e-6)
    np.testing.assert_allclose(out["neighborhoods"][:, 0], 0, atol=1e-6)  # center first


def test_saliency_guides_which_groups_stay_visible(images):
  """Visible groups are more salient than the cloud's average under 2D guidance, and not
  under uniform masking."""
  def visible_share(guided):
    transform, shares = _point_tokens(guided), []
    for i, image in enumerate(images[:40]):
      out = transform.random_map({"image": image}, np.random.default_rng(i))
      rows, cols = points.point_pixels(out["neighborhoods"] + out["centers"][:, None],
                                       (28, 28))
      saliency = points.saliency_map(image)[rows, cols].mean(-1)
      shares.append(saliency[out["visible_idx"]].mean() / saliency.mean())
    return np.mean(shares)

  assert visible_share(True) > 1.15 and abs(visible_share(False) - 1) < 0.15


def test_i2p_point_mae_encoder_matches_point_mae_count():
  """Point-MAE (Pang et al. 2022) reports 22.1M params; ours is its encoder side."""
  config = get_i2p_config("point_mae")
  builder = MODELS.get("point_mae")
  cfg = builder.model_config(config.model, DataInfo())
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  encoder = sum(x.size for part in ("embed", "pos", "encoder")
                for x in jax.tree.leaves(state[part]))
  assert abs(encoder / 22.1e6 - 1) < 0.02, encoder


# --- end to end ----------------------------------------------------------------------------


def _train(tmp_path, recipe, eval_every):
  args = ["--config.train.steps=20", "--config.train.log_every=2",
          f"--config.train.eval_every={eval_every}", "--config.train.checkpoint_every=20",
          "--config.optim.warmup_steps=3",
          "--config.train.peak_flops_per_device=1e11"]  # skip measuring the CPU's peak
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}:tiny", f"--workdir={tmp_path}",
                        *args]) == 0
  records = read_metrics(str(tmp_path))
  return [r["loss"] for r in records if "loss" in r], records


def test_token_unify_tiny_trains_through_main(tmp_path):
  curve, records = _train(tmp_path, "token_unify.py", eval_every=0)
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert all(r["next_all_fraction"] > 0 and "random_loss" in r for r in records if "loss" in r)


def test_i2p_mae_tiny_trains_through_main_and_draws(tmp_path):
  curve, _ = _train(tmp_path, "i2p_mae.py", eval_every=20)
  assert np.mean(curve[-2:]) < 0.75 * np.mean(curve[:2]), curve
  assert os.listdir(tmp_path / "reconstructions") == ["step_20.png"]


def test_token_unify_features_and_pictures_tokenize_on_device_like_the_host(images):
  config = get_token_unify_config("tiny")
  objective, info = OBJECTIVES.get("token_unify"), DataInfo(image_shape=(28, 28, 1))
  transform = objective.host_transform(config, info)
  rows = [transform.random_map({"image": im}, np.random.default_rng(i))
          for i, im in enumerate(images[:4])]
  batch = {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}
  device = token_unify.device_tokens(batch["image"], objective.codebook(config), (4, 4))
  np.testing.assert_array_equal(np.asarray(device), np.asarray(batch["tokens"]))
  model, params = build(MultiTokenLM, MODELS.get("token_unify").model_config(config.model, info))

  @jax.jit
  def draw(params, batch, rng):
    return (objective.features(params, {"image": batch["image"]}, model=model, config=config),
            objective.reconstructions(params, batch, rng, model=model, config=config))

  features, pictures = draw(params, batch, jax.random.key_data(jax.random.key(0)))
  grid = np.asarray(pictures["reconstructions"])
  assert features.shape == (4, 64)
  assert grid.shape == (4 * 29 + 1, 4 * 29 + 1, 1) and grid.dtype == np.uint8
