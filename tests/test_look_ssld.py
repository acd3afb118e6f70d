"""Supervised objectives on `vit_classifier` / `resnet_classifier`: classify (cross-entropy),
LOOK (leave-one-out kNN with a feature queue) and SSLD (a frozen classifier's predictions,
labels never read).
Each loss against float64 NumPy, the shared flip transform, bad settings, the paper sizes
by parameter count, the ResNet classifier against SparK's encoder, and the tiny recipes
through `pretrain.main`: classify, then SSLD distilling that run, and LOOK on a ResNet."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

import objectives  # noqa: F401  (registers objectives)
from models.classifier import (ClassifierConfig, ResNetClassifier, ResNetClassifierConfig,
                               ViTClassifier)
from models.spark import SparK, SparKConfig
from models.vit import ViTConfig
from objectives import base
from objectives.base import DataInfo, Teacher
from pretrain import config as config_lib, main as main_lib, train
from pretrain import teacher as teacher_lib
from pretrain.registry import MODELS, OBJECTIVES
from helpers import build, np_cross_entropy, random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = ViTConfig(image_size=(8, 8), patch_size=(4, 4), d_model=8, num_layers=1, num_heads=2,
                d_ff=16, channels=1)


def _recipe(name: str):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", name))


def _images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=(n, 8, 8, 1)).astype(np.float32)


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- the flip transform ------------------------------------------------------------------


@pytest.mark.parametrize("name,keeps_label", [("classify", True), ("look", True),
                                              ("ssld", False)])
def test_flip_is_deterministic_static_and_ssld_drops_the_labels(name, keeps_label):
  flip = OBJECTIVES.get(name).host_transform(_recipe(f"{name}.py:tiny"), DataInfo())
  image = _images(1)[0]
  outs = [flip.random_map({"image": image, "label": np.int32(3)}, np.random.default_rng(s))
          for s in range(64)]
  again = flip.random_map({"image": image, "label": np.int32(3)}, np.random.default_rng(5))
  np.testing.assert_array_equal(again["image"], outs[5]["image"])
  flipped = [bool(np.array_equal(o["image"], image[:, ::-1])) for o in outs]
  assert all(f or np.array_equal(o["image"], image) for f, o in zip(flipped, outs))
  assert 16 < sum(flipped) < 48
  assert all(o["image"].shape == image.shape and o["image"].dtype == np.float32 for o in outs)
  assert all(("label" in o) == keeps_label for o in outs)
  if keeps_label:
    assert all(o["label"] == 3 for o in outs)


# --- losses vs NumPy ---------------------------------------------------------------------


def test_classify_loss_is_numpy_cross_entropy():
  model, params = build(ViTClassifier, ClassifierConfig(VIT, num_classes=5))
  batch = {"image": _images(6), "label": np.array([0, 4, 2, 2, 1, 3], np.int32)}
  config = _recipe("classify.py:tiny")
  loss, metrics, logits = jax.jit(lambda p: (
      *OBJECTIVES.get("classify").loss_fn(p, batch, None, model=model, config=config),
      model.bind(p)(batch["image"])))(params)
  logits = np.asarray(logits, np.float64)
  np.testing.assert_allclose(loss, np_cross_entropy(logits, batch["label"]).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"],
                             np.mean(logits.argmax(-1) == batch["label"]), rtol=1e-6)


def np_look_loss(features, labels, memory, memory_labels, memory_ok, k, tau):
  """Leave-one-out kNN NLL by loops: image i votes with the k most similar entries of
  (the other images of the batch) + (the filled queue slots); images with no agreeing
  neighbour are left out of the mean."""
  losses = []
  for i in range(len(features)):
    others = [(features[i] @ features[j], labels[j]) for j in range(len(features)) if j != i]
    others += [(features[i] @ m, y) for m, y, ok in zip(memory, memory_labels, memory_ok) if ok]
    top = sorted(others, key=lambda pair: -pair[0])[:k]
    weights = np.array([np.exp(s / tau) for s, _ in top])
    same = np.array([y == labels[i] for _, y in top])
    if same.any():
      losses.append(-np.log(weights[same].sum() / weights.sum()))
  return np.mean(losses), 1 - len(losses) / len(features)


@pytest.mark.parametrize("k", [3, 10])
def test_look_loss_matches_numpy_and_never_votes_for_itself(k):
  config = _recipe("look.py:tiny")
  config.objective.update(knn_k=k, knn_temperature=0.2, queue_size=8)
  model, params = build(ViTClassifier, ClassifierConfig(VIT, num_classes=0))
  images = _images(6)
  # Image 5 is the only label 3 of the batch; the one queued label-3 entry, a copy of its
  # own feature (the nearest neighbour it could have), sits in an unfilled slot. So image 5
  # has no neighbour to agree with and drops out of the mean; with k = all 10 entries an
  # image may see, it is the only one that does.
  labels = np.array([0, 0, 1, 1, 2, 3], np.int32)
  own = _unit(jax.jit(lambda p: model.bind(p).features(images))(params))
  queue = _unit(np.random.default_rng(1).normal(size=(8, VIT.d_model)))
  queue[3] = own[5]
  queue_labels = np.array([0, 1, 2, 3, 2, 0, 1, 1], np.int32)
  filled = np.array([1, 1, 1, 0, 1, 1, 0, 0], bool)
  state = {"features": queue.astype(np.float32), "labels": queue_labels, "filled": filled}
  loss, metrics = jax.jit(lambda p: OBJECTIVES.get("look").loss_fn(
      p, {"image": images, "label": labels}, None, model=model, config=config,
      objective_state=state))(params)
  want, dropped = np_look_loss(own, labels, queue, queue_labels, filled, k, 0.2)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_allclose(metrics["no_neighbour_agrees"], dropped, rtol=1e-6)
  dropped = round(dropped * 6)
  assert dropped >= 1 and (k < 10 or dropped == 1)
  # The queue takes the batch's features newest first; the two oldest entries fall off.
  following = metrics[base.NEXT_STATE]
  np.testing.assert_allclose(following["features"], np.concatenate([own, queue[:2]]),
                             atol=1e-6)
  np.testing.assert_array_equal(following["labels"], np.concatenate([labels, queue_labels[:2]]))
  np.testing.assert_array_equal(following["filled"], [1, 1, 1, 1, 1, 1, 1, 1])


def test_ssld_loss_is_numpy_kl_to_the_teacher_and_ignores_labels():
  config = _recipe("ssld.py:tiny")
  config.objective.distill_temperature = 2.0
  model, params = build(ViTClassifier, ClassifierConfig(VIT, num_classes=5), seed=0)
  teacher_model, teacher_params = build(ViTClassifier, ClassifierConfig(VIT, num_classes=5),
                                        seed=1)
  # Heads 30x their init scale: distinct, far from uniform predictions.
  for p in (params, teacher_params):
    p["head"]["kernel"] = p["head"]["kernel"] * 30
  teacher = Teacher(teacher_model, teacher_params)
  images = _images(6)

  @jax.jit
  def loss(batch):
    return OBJECTIVES.get("ssld").loss_fn(params, batch, None, model=model, config=config,
                                          teacher=teacher)

  got, metrics = loss({"image": images})
  s, t = jax.jit(lambda: (model.bind(params)(images), teacher.bind()(images)))()
  s, t = np.asarray(s, np.float64) / 2, np.asarray(t, np.float64) / 2
  log_s = s - np.log(np.exp(s).sum(-1, keepdims=True))
  log_t = t - np.log(np.exp(t).sum(-1, keepdims=True))
  np.testing.assert_allclose(got, (np.exp(log_t) * (log_t - log_s)).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["teacher_agreement"],
                             np.mean(s.argmax(-1) == t.argmax(-1)), rtol=1e-6)
  for labels in (np.arange(6, dtype=np.int32), np.arange(6, dtype=np.int32)[::-1].copy()):
    assert float(loss({"image": images, "label": labels})[0]) == float(got)


# --- settings and sizes ------------------------------------------------------------------


@pytest.mark.parametrize("recipe,args,expected", [
    ("look.py:tiny", ["--config.objective.knn_k=96"],
     "objective.knn_k=96: more than the 95 other images"),
    ("look.py:tiny", ["--config.train.grad_accum=2"], "train.grad_accum=2: objective 'look'"),
    ("look.py:tiny", ["--config.objective.knn_temperature=0"], "objective.knn_temperature=0"),
    ("ssld.py:tiny", ["--config.model.num_classes=0", "--config.teacher.path=/tmp"],
     "model.num_classes=0: objective 'ssld' reads class logits"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, recipe, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp_path}/r", *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


def _abstract(model_cfg, name: str = "vit_classifier"):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: MODELS.get(name).build(model_cfg, nnx.Rngs(0)))


def _param_count(model_cfg, name: str = "vit_classifier") -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(_abstract(model_cfg, name), nnx.Param)))


@pytest.mark.parametrize("recipe", ["classify.py:B/16", "look.py:B/16", "ssld.py:B/16"])
def test_paper_sizes_have_the_vit_paper_param_counts(recipe):
  """Dosovitskiy et al. 2021 Table 1: ViT-Base 86M, ViT-Large 307M params (SSLD's CNNs are
  not built here; LOOK's ResNet-50 is look:R50, below)."""
  config = _recipe(recipe)
  cfg = MODELS.get("vit_classifier").model_config(config.model, DataInfo())
  assert cfg.vit.patch_size == (16, 16) and cfg.vit.image_size == (224, 224)
  assert abs(_param_count(cfg) / 86e6 - 1) < 0.02, _param_count(cfg)
  if teacher_lib.kind(config) != "none":
    teacher = teacher_lib.model_config(config, DataInfo())
    assert abs(_param_count(teacher) / 307e6 - 1) < 0.02, _param_count(teacher)


def test_look_and_classify_r50_are_torchvision_resnet50():
  """torchvision's resnet50: 25,557,032 params, of which its 2048 x 1000 fc (+ bias) is
  2,049,000; look:R50 has no head (23,508,032), classify:R50's 1000-class head brings it
  back."""
  builder = MODELS.get("resnet_classifier")
  look, classify = (builder.model_config(_recipe(f"{name}.py:R50").model,
                                         DataInfo(image_shape=(224, 224, 3)))
                    for name in ("look", "classify"))
  assert look.feature_dim == 2048 and look.num_classes == 0 and classify.num_classes == 1000
  backbone = _param_count(look, "resnet_classifier")
  assert abs(backbone / (25_557_032 - 2_049_000) - 1) < 0.02, backbone
  with_fc = _param_count(classify, "resnet_classifier")
  assert with_fc - backbone == 2_049_000 and abs(with_fc / 25_557_032 - 1) < 0.02, with_fc


def test_resnet_classifier_is_spark_encoder_with_nothing_masked():
  """The same weights in SparK: its encoder's last map with every patch visible, averaged
  over positions, is the feature; the same images with a patch masked in SparK give a
  different feature (so the mask is really all-visible, not ignored); logits = head."""
  resnet = SparKConfig(image_size=(8, 8), channels=1, stem_width=4, stem_kernel=3,
                       stem_pool=False, stage_blocks=(1, 1), stage_widths=(4, 8),
                       bottleneck=False, dec_width=8)
  model, params = random_model(ResNetClassifier, ResNetClassifierConfig(resnet, num_classes=3))
  spark, spark_params = random_model(SparK, resnet, seed=1)
  spark_params["encoder"] = params["encoder"]
  images = _images(5)
  visible = np.ones((5, *resnet.grid), bool)
  masked = visible.copy()
  masked[0, 0, 0] = False
  features, logits, want, other = jax.jit(lambda: (
      model.bind(params).features(images), model.bind(params)(images),
      *(spark.bind(spark_params).encoder(images, a)[-1].mean((1, 2))
        for a in (visible, masked))))()
  assert features.shape == (5, 8)
  np.testing.assert_allclose(features, want, rtol=1e-6)
  assert not np.allclose(features, other, atol=1e-4)
  head = params["head"]
  np.testing.assert_allclose(
      logits, np.asarray(features) @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
      rtol=1e-5, atol=1e-6)


# --- the tiny recipes through pretrain.main ----------------------------------------------


def _run(workdir, recipe: str, *args) -> list[dict]:
  """20 steps of a tiny recipe with a one-block ViT (the teacher and student alike)."""
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={workdir}",
                        "--config.train.steps=20", "--config.train.log_every=2",
                        "--config.train.eval_every=0", "--config.model.num_layers=1",
                        *args]) == 0
  return [r for r in train.read_metrics(str(workdir)) if "loss" in r]


def _falls(curve: list[float], factor: float) -> bool:
  return np.mean(curve[-3:]) < factor * np.mean(curve[:2])


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
  """classify.py:tiny for 20 steps: the supervised baseline, and SSLD's teacher."""
  workdir = tmp_path_factory.mktemp("classify")
  return workdir, _run(workdir, "classify.py:tiny")


def test_classify_tiny_trains_through_main(classify_run):
  loss = [r["loss"] for r in classify_run[1]]
  assert _falls(loss, 0.92), loss


def test_ssld_tiny_distils_the_classify_run_through_main(classify_run, tmp_path, capsys):
  records = _run(tmp_path, "ssld.py:tiny", f"--config.teacher.path={classify_run[0]}")
  assert "teacher: " in capsys.readouterr().out
  kl = [r["loss"] for r in records]
  assert min(kl) >= 0 and _falls(kl, 0.3), kl


def test_look_tiny_resnet_trains_through_main(tmp_path):
  loss = [r["loss"] for r in _run(tmp_path, "look.py:tiny_resnet")]
  assert _falls(loss, 0.85), loss
