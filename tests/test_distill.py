"""Teachers and distillation for images. DINO: multi-crop and resize invariants, position
interpolation for smaller crops, the centred/sharpened cross-entropy and center update vs
NumPy, the EMA teacher and the persisted center after real train steps, the ViT-B/14 size
by parameter count, the tiny recipe through `pretrain.main`. MR-MAE and self-distillation
on MAE: the loss vs an independent computation, ViT-B/16 sizes, a frozen MAE teacher run
then the students through `pretrain.main`."""
from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import objectives  # noqa: F401  (registers objectives)
from models.vit import PatchPositions, ViT, ViTConfig, patchify
from objectives import dino
from objectives.base import DataInfo, ModelDef, Teacher
from objectives.mae import random_keep
from pretrain import config as config_lib, main as main_lib, sharding, train
from pretrain import steps as run_steps
from pretrain import teacher as teacher_lib
from pretrain.registry import MODELS, OBJECTIVES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(variant: str):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", f"dino.py:{variant}"))


# --- host side: resize and crops ---------------------------------------------------------


@pytest.mark.parametrize("src,dst", [((7, 9), (3, 4)), ((5, 4), (12, 10)), ((6, 6), (6, 6))])
def test_resize_bilinear_matches_jax_linear_resize(src, dst):
  image = np.random.default_rng(0).normal(size=src + (2,)).astype(np.float32)
  want = jax.image.resize(image, dst + (2,), "linear", antialias=False)
  np.testing.assert_allclose(dino.resize_bilinear(image, dst), want, atol=1e-5)
  if src == dst:
    np.testing.assert_array_equal(dino.resize_bilinear(image, dst), image)


def test_crop_boxes_stay_inside_and_cover_the_asked_area():
  rng = np.random.default_rng(0)
  for scale in ((0.05, 0.4), (0.4, 1.0)):
    for _ in range(200):
      top, left, h, w = dino.crop_box(rng, 28, 28, scale)
      assert 0 <= top and top + h <= 28 and 0 <= left and left + w <= 28
      # Rounding each side to whole pixels moves the area by less than a side's length.
      assert scale[0] * 784 - (h + w) <= h * w <= scale[1] * 784 + (h + w)
  assert dino.crop_box(rng, 2, 2, (1.0, 1.0), ratio=(4.0, 5.0)) == (0, 0, 2, 2)  # Fallback.


def _multicrop(config):
  return OBJECTIVES.get("dino").host_transform(config, DataInfo(image_shape=(28, 28, 1)))


def test_multicrop_views_are_static_deterministic_and_made_of_the_image():
  config = _load("tiny")
  transform = _multicrop(config)
  image = np.random.default_rng(1).uniform(size=(28, 28, 1)).astype(np.float32)
  example = {"image": image, "label": np.int64(3), "example_index": np.int64(5)}
  out = transform.random_map(dict(example), np.random.default_rng(7))
  o = config.objective
  assert set(out) == {"global", "local", "teacher_temp"}
  assert out["global"].shape == (2, o.global_crop_size, o.global_crop_size, 1)
  assert out["local"].shape == (o.local_crops, o.local_crop_size, o.local_crop_size, 1)
  assert out["global"].dtype == out["local"].dtype == np.float32
  again = transform.random_map(dict(example), np.random.default_rng(7))
  other = transform.random_map(dict(example), np.random.default_rng(8))
  for key in ("global", "local"):
    np.testing.assert_array_equal(out[key], again[key])
    assert not np.array_equal(out[key], other[key])
    # Linear interpolation: convex combinations of the image's pixels.
    assert image.min() - 1e-6 <= out[key].min() and out[key].max() <= image.max() + 1e-6
  flat = transform.random_map({**example, "image": np.full((28, 28, 1), 0.25, np.float32)},
                              np.random.default_rng(0))
  np.testing.assert_allclose(flat["global"], 0.25, rtol=1e-6)


def test_teacher_temperature_warms_up_by_global_step():
  config = _load("tiny")
  o, batch = config.objective, config.train.global_batch
  transform = _multicrop(config)
  image = np.zeros((28, 28, 1), np.float32)
  temps = [float(transform.random_map({"image": image, "example_index": np.int64(i)},
                                      np.random.default_rng(0))["teacher_temp"])
           for i in (0, batch - 1, batch * o.teacher_temp_warmup_steps // 2, 10 ** 6)]
  middle = (o.warmup_teacher_temp + o.teacher_temp) / 2
  np.testing.assert_allclose(temps, [o.warmup_teacher_temp, o.warmup_teacher_temp, middle,
                                     o.teacher_temp], rtol=1e-6)


# --- the ViT on smaller crops ------------------------------------------------------------


def _vit(pos_emb: str) -> ViTConfig:
  return ViTConfig(image_size=(28, 28), patch_size=(4, 4), d_model=16, num_layers=1,
                   num_heads=2, d_ff=32, channels=1, pos_emb=pos_emb)


@pytest.mark.parametrize("pos_emb", ["sincos", "learned"])
def test_positions_are_bilinearly_interpolated_to_a_smaller_grid(pos_emb):
  cfg = _vit(pos_emb)
  with nnx.use_eager_sharding(False):
    pos = PatchPositions(cfg, cfg.d_model, rngs=nnx.Rngs(0))
    vit = ViT(cfg, rngs=nnx.Rngs(0))
  full = np.asarray(pos.table())
  np.testing.assert_array_equal(pos.table((7, 7)), full)
  want = dino.resize_bilinear(full.reshape(7, 7, -1), (3, 3)).reshape(9, -1)
  np.testing.assert_allclose(pos.table((3, 3)), want, atol=1e-5)
  # The ViT takes 12x12 crops (a 3x3 grid) with those positions.
  graphdef, state = nnx.split(vit)
  tokens = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.ones((2, 12, 12, 1)))
  assert tokens.shape == (2, 1 + 9, cfg.d_model) and np.isfinite(np.asarray(tokens)).all()


# --- the loss and the center vs NumPy ----------------------------------------------------


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_dino_loss_matches_numpy():
  rng = np.random.default_rng(0)
  b, views, k = 3, 5, 7
  student = rng.normal(size=(b, views, k))
  teacher = rng.normal(size=(b, 2, k))
  center = rng.normal(size=(k,)) * 0.3
  temps = np.array([0.04, 0.05, 0.06])
  total, terms = 0.0, 0
  for i in range(2):
    for v in range(views):
      if v == i:
        continue
      q = np.exp(_np_log_softmax((teacher[:, i] - center) / temps[:, None]))
      total += -(q * _np_log_softmax(student[:, v] / 0.1)).sum(-1).mean()
      terms += 1
  p = np.exp(_np_log_softmax((teacher - center) / temps[:, None, None]))
  entropy = -(p * np.log(p)).sum(-1).mean()
  loss, got_entropy = dino.dino_loss(jnp.asarray(student, jnp.float32),
                                     jnp.asarray(teacher, jnp.float32),
                                     jnp.asarray(center, jnp.float32), 0.1,
                                     jnp.asarray(temps, jnp.float32))
  np.testing.assert_allclose(loss, total / terms, rtol=1e-5)
  np.testing.assert_allclose(got_entropy, entropy, rtol=1e-5)


def test_center_update_matches_numpy():
  rng = np.random.default_rng(1)
  teacher, center = rng.normal(size=(4, 2, 6)), rng.normal(size=(6,))
  want = 0.9 * center + 0.1 * teacher.sum((0, 1)) / 8
  got = dino.next_center(jnp.asarray(center), jnp.asarray(teacher), 0.9)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# --- the train state: EMA teacher and persisted center -----------------------------------


@pytest.fixture(scope="module")
def tiny_run():
  config = _load("tiny")
  config.model.update(num_layers=1, d_model=16, num_heads=2, d_ff=32)
  config.model.update(head_hidden_dim=16, head_bottleneck_dim=8, head_out_dim=32)
  config.train.global_batch = 4
  return train.setup(config)


def test_ema_teacher_and_center_follow_their_formulas_over_steps(tiny_run):
  run, steps = tiny_run, 3
  config = run.config
  with sharding.activation_context(run.mesh, run.rules):
    _, shardings = train.sharded_abstract_state(run)
    state = jax.jit(train.init_state_fn(run), out_shardings=shardings)(train.init_rng(config))
    step_fn = run_steps.make_train_step(run, shardings)
    transform = run.objective.host_transform(config, run.info)
    teacher_views = jax.jit(lambda p, x: dino._views(run.model_def.bind(p), x))
    host = jax.device_get(state)
    teacher = jax.tree.map(lambda x: np.asarray(x, np.float64), host["teacher"])
    center = np.zeros(run.model_cfg.out_dim)
    assert np.array_equal(host["objective"]["center"], center)
    for n in range(steps):
      examples = [transform.random_map({**run.train_source[i], "example_index": np.int64(
          n * 4 + j)}, np.random.default_rng(n * 4 + j)) for j, i in enumerate(range(4))]
      batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
      target = np.asarray(teacher_views(host["teacher"], batch["global"]), np.float64)
      state, _ = step_fn(state, batch)
      host = jax.device_get(state)
      m = float(teacher_lib.ema_momentum(config.teacher, jnp.int32(n), config.train.steps))
      teacher = jax.tree.map(lambda t, p: m * t + (1 - m) * p, teacher, host["params"])
      m_c = config.objective.center_momentum
      center = m_c * center + (1 - m_c) * target.mean((0, 1))
  assert int(host["step"]) == steps and int(host["nonfinite_steps"]) == 0
  jax.tree.map(lambda want, got: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6),
               teacher, host["teacher"])
  np.testing.assert_allclose(host["objective"]["center"], center, rtol=1e-4, atol=1e-6)
  assert np.abs(center).max() > 0


# --- paper size, bad settings, end to end ------------------------------------------------


def test_b14_backbone_has_dinov2_vit_b14_param_count():
  """DINOv2 (Oquab et al. 2023) README model table: ViT-B/14 has 86M params; RAD-DINO uses
  it. The count is the backbone's (the projection head is dropped after pretraining)."""
  config = _load("B/14")
  builder = MODELS.get("dino")
  cfg = builder.model_config(config.model, DataInfo())
  assert cfg.vit.patch_size == (14, 14) and cfg.vit.grid == (16, 16)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert abs(count / 86e6 - 1) < 0.02, count
  head = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.head, nnx.Param)))
  assert head == 768 * 2048 + 2048 * 2048 + 2048 * 256 + 2 * 2048 + 256 + 256 * 65536, head


@pytest.mark.parametrize("args,expected", [
    (["--config.objective.local_crop_size=10"], "objective.local_crop_size=10 is not a multiple"),
    (["--config.objective.center_momentum=1.0"], "objective.center_momentum=1.0: must be in"),
    (["--config.objective.local_crop_scale=(0.5, 0.2)"], "objective.local_crop_scale="),
])
def test_bad_dino_settings_are_one_line_errors(tmp_path, capsys, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/dino.py:tiny", f"--workdir={tmp_path}/r",
                        *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


def test_dino_tiny_trains_through_main(tmp_path):
  """DINO's loss is H(teacher) + KL(teacher || student); over a short run H(teacher) swings
  as centring and sharpening fight the teacher's early collapse onto one prototype (it
  falls, then rises towards log(out_dim) as the temperature warms up), so the raw loss is
  no honest progress signal here. The student's own part, the KL (loss - teacher_entropy,
  >= 0), is: it must fall several-fold as the student learns to predict the teacher's
  global-view output from the other views."""
  assert main_lib.main([f"--config={ROOT}/configs/dino.py:tiny", f"--workdir={tmp_path}",
                        "--config.train.steps=16", "--config.train.log_every=2",
                        "--config.train.eval_every=0"]) == 0
  records = [r for r in train.read_metrics(str(tmp_path)) if "loss" in r]
  kl = [r["loss"] - r["teacher_entropy"] for r in records]
  assert min(kl) > -1e-4 and np.mean(kl[-3:]) < 0.3 * kl[0], kl
  assert all(0 < r["teacher_entropy"] < math.log(256) for r in records), records


# --- MR-MAE and self-distillation on MAE -------------------------------------------------


def _recipe(name: str):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", name))


def _pure_params(module):
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


@pytest.mark.parametrize("name", ["mr_mae", "self_distill_mae"])
def test_mae_distill_loss_is_mae_plus_weighted_token_mse(name):
  config = _recipe("mr_mae.py:tiny")
  config.objective.name, config.objective.mimic_weight = name, 0.5
  config.model.update(num_layers=1, d_model=16, num_heads=2, d_ff=32)
  builder = MODELS.get("mae")
  cfg = builder.model_config(config.model, DataInfo(image_shape=(28, 28, 1)))
  with nnx.use_eager_sharding(False):
    student, teacher = builder.build(cfg, nnx.Rngs(0)), builder.build(cfg, nnx.Rngs(1))
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32)
  rng = jax.random.key_data(jax.random.key(3))
  model, teacher_def = ModelDef(nnx.graphdef(student)), ModelDef(nnx.graphdef(teacher))
  params, teacher_params = _pure_params(student), _pure_params(teacher)
  batch = {"image": images}

  @jax.jit
  def compute(params, teacher_params):
    loss, metrics = OBJECTIVES.get(name).loss_fn(
        params, batch, rng, model=model, config=config,
        teacher=Teacher(teacher_def, teacher_params))
    pixel, _ = OBJECTIVES.get("mae").loss_fn(params, batch, rng, model=model, config=config)
    s, t = model.bind(params), teacher_def.bind(teacher_params)
    patches = patchify(images, cfg.patch_size)
    keep_idx, _ = random_keep(jax.random.wrap_key_data(rng), 2, 49,
                              config.objective.mask_ratio)
    return (loss, metrics["mimic_loss"], pixel, keep_idx, s.encode(patches, keep_idx),
            t.encoder(images), t.encode(patches, keep_idx))

  loss, mimic, pixel, keep_idx, got, full, visible = jax.device_get(
      compute(params, teacher_params))
  got = np.asarray(got[:, 1:], np.float64)
  if name == "mr_mae":  # The teacher's tokens of the whole image, normalised per token.
    want = np.take_along_axis(np.asarray(full[:, 1:], np.float64), keep_idx[..., None], axis=1)
    want = (want - want.mean(-1, keepdims=True)) / np.sqrt(want.var(-1, keepdims=True) + 1e-6)
  else:  # The teacher's hidden states on the same visible patches.
    want = np.asarray(visible[:, 1:], np.float64)
  mse = np.mean((got - want) ** 2)
  np.testing.assert_allclose(mimic, mse, rtol=1e-4)
  np.testing.assert_allclose(loss, float(pixel) + 0.5 * mse, rtol=1e-4)


@pytest.mark.parametrize("recipe", ["mr_mae.py:B/16", "self_distill.py:B/16_student"])
def test_mae_distill_paper_sizes_have_the_vit_b16_param_count(recipe):
  """ViT-B: 86M params (Dosovitskiy et al. 2020 Table 1), the encoder both papers train."""
  config = _recipe(recipe)
  builder = MODELS.get("mae")
  cfg = builder.model_config(config.model, DataInfo())
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert cfg.patch_size == (16, 16) and abs(count / 86e6 - 1) < 0.02, count


@pytest.mark.parametrize("teacher,expected", [
    (dict(d_model=32), "model.d_model=64 but the teacher's is 32"),
    (dict(patch_size=(7, 7)), "model.patch_size=(4, 4) but the teacher's is (7, 7)"),
])
def test_mae_distill_refuses_a_teacher_it_cannot_match(teacher, expected):
  config = _recipe("mr_mae.py:tiny")
  config.teacher.model = ml_collections.ConfigDict(teacher)
  with pytest.raises(config_lib.ConfigError, match=re.escape(expected)):
    config_lib.validate(config, 1)


def _mae_run(workdir, recipe: str, steps: int, *args) -> list[dict]:
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={workdir}",
                        f"--config.train.steps={steps}", "--config.train.log_every=2",
                        "--config.train.eval_every=0", "--config.train.global_batch=16",
                        "--config.optim.warmup_steps=2",
                        *args]) == 0
  return [r for r in train.read_metrics(str(workdir)) if "loss" in r]


@pytest.fixture(scope="module")
def mae_teacher(tmp_path_factory):
  """A tiny MAE run from the seed-0 init: self-distillation's stage 1 (further pre-training;
  the "initial model" is the seed-0 init, which the stage-2 student starts from again) and
  MR-MAE's frozen teacher."""
  workdir = tmp_path_factory.mktemp("mae") / "teacher"
  _mae_run(workdir, "self_distill.py:tiny_teacher", 8)
  return workdir


def _falls(curve: list[float], factor: float) -> bool:
  return np.mean(curve[-2:]) < factor * np.mean(curve[:2])


def test_mr_mae_tiny_mimics_a_frozen_mae_teacher_through_main(mae_teacher, tmp_path, capsys):
  records = _mae_run(tmp_path, "mr_mae.py:tiny", 12, f"--config.teacher.path={mae_teacher}")
  assert "teacher: " in capsys.readouterr().out
  mimic = [r["mimic_loss"] for r in records]
  pixel = [r["pixel_loss"] for r in records]
  np.testing.assert_allclose([r["loss"] for r in records], np.add(mimic, pixel), rtol=1e-5)
  assert _falls(mimic, 0.7) and _falls(pixel, 0.9), (mimic, pixel)


def test_self_distillation_student_restarts_from_the_teachers_initial_model(mae_teacher,
                                                                          tmp_path, capsys):
  records = _mae_run(tmp_path, "self_distill.py:tiny_student", 12,
                     f"--config.teacher.path={mae_teacher}")
  assert "teacher: " in capsys.readouterr().out
  distance = [r["mimic_loss"] for r in records]
  pixel = [r["pixel_loss"] for r in records]
  assert _falls(pixel, 0.9) and _falls(distance, 0.7), (pixel, distance)


# --- iBOT: dino with the masked patch-token loss -----------------------------------------


def test_block_masks_are_rectangles_up_to_the_target_ratio():
  rng = np.random.default_rng(0)
  counts = []
  for ratio in rng.uniform(0.1, 0.5, 100):
    mask = dino.block_mask(rng, (7, 7), ratio)
    target = round(ratio * 49)
    assert mask.shape == (7, 7) and mask.dtype == bool and mask.sum() <= target
    counts.append(mask.sum() / max(target, 1))
  assert np.mean(counts) > 0.9, np.mean(counts)  # Almost always the whole target.
  np.testing.assert_array_equal(dino.block_mask(np.random.default_rng(3), (14, 14), 0.3),
                                dino.block_mask(np.random.default_rng(3), (14, 14), 0.3))
  transform = _multicrop(_recipe("ibot.py:tiny"))
  out = transform.random_map({"image": np.zeros((28, 28, 1), np.float32),
                              "example_index": np.int64(0)}, np.random.default_rng(1))
  assert out["masks"].shape == (2, 49) and out["masks"].dtype == bool


def test_ibot_patch_loss_matches_numpy():
  rng = np.random.default_rng(2)
  b, n, k = 3, 5, 6
  student, teacher = rng.normal(size=(b, 2, n, k)), rng.normal(size=(b, 2, n, k))
  center, temps = rng.normal(size=(k,)) * 0.3, np.array([0.04, 0.05, 0.07])
  masks = rng.uniform(size=(b, 2, n)) < 0.5
  masks[0, 1] = False  # A view without masked patches adds 0.
  losses, entropies = [], []
  for i in range(b):
    for v in range(2):
      q = np.exp(_np_log_softmax((teacher[i, v] - center) / temps[i]))  # (n, k)
      ce = -(q * _np_log_softmax(student[i, v] / 0.1)).sum(-1)
      ent = -(q * np.log(q)).sum(-1)
      m = masks[i, v]
      losses.append(ce[m].mean() if m.any() else 0.0)
      entropies.append(ent[m].mean() if m.any() else 0.0)
  loss, entropy = dino.ibot_patch_loss(*(jnp.asarray(x, jnp.float32) for x in (
      student, teacher, center)), jnp.asarray(masks), 0.1, jnp.asarray(temps, jnp.float32))
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(entropy, np.mean(entropies), rtol=1e-5)


def test_masked_patches_enter_as_the_mask_token():
  """The student's outputs do not depend on the pixels of its masked patches, and do
  on the others'."""
  config = _recipe("ibot.py:tiny")
  config.model.update(num_layers=1, d_model=16, num_heads=2, d_ff=32)
  config.model.update(head_hidden_dim=16, head_bottleneck_dim=8, head_out_dim=32)
  builder = MODELS.get("dino")
  with nnx.use_eager_sharding(False):
    net = builder.build(builder.model_config(config.model, DataInfo(image_shape=(28, 28, 1))),
                        nnx.Rngs(0))
  graphdef, state = nnx.split(net)
  run = jax.jit(lambda x, m: nnx.merge(graphdef, state).token_logits(x, m))
  images = np.random.default_rng(0).uniform(size=(1, 28, 28, 1)).astype(np.float32)
  mask = np.zeros((1, 49), bool)
  mask[0, :7] = True  # The top row of 4x4 patches.
  changed = images.copy()
  changed[:, :4] = 1.0 - changed[:, :4]
  np.testing.assert_allclose(run(images, mask), run(changed, mask), atol=1e-6)
  assert not np.allclose(run(images, ~mask), run(changed, ~mask), atol=1e-4)


def test_ibot_b16_backbone_has_the_vit_b16_param_count():
  """ViT-B/16: 86M params (Dosovitskiy et al. 2021 Table 1; iBOT Table 1 lists it as 85M)."""
  config = _recipe("ibot.py:B/16")
  builder = MODELS.get("dino")
  cfg = builder.model_config(config.model, DataInfo())
  assert cfg.vit.patch_size == (16, 16) and cfg.mask_token and cfg.out_dim == 8192
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
  assert abs(count / 86e6 - 1) < 0.02, count


def test_ibot_tiny_trains_through_main(tmp_path):
  """As for DINO, the raw loss carries the teacher's entropy (which rises as its temperature
  warms up); the student's parts, the [CLS] and patch KLs (loss minus entropy), must fall."""
  assert main_lib.main([f"--config={ROOT}/configs/ibot.py:tiny", f"--workdir={tmp_path}",
                        "--config.train.steps=12", "--config.train.log_every=2",
                        "--config.train.eval_every=0", "--config.train.global_batch=16"]) == 0
  records = [r for r in train.read_metrics(str(tmp_path)) if "loss" in r]
  np.testing.assert_allclose([r["loss"] for r in records],
                             [r["dino_loss"] + r["ibot_loss"] for r in records], rtol=1e-5)
  patch_kl = [r["ibot_loss"] - r["patch_teacher_entropy"] for r in records]
  assert min(patch_kl) > -1e-4 and np.mean(patch_kl[-2:]) < 0.4 * patch_kl[0], patch_kl
