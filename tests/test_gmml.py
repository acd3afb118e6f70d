"""Tests for GMML / SiT (group-corrupted image reconstruction with rotation and contrastive
heads) and MP3 position prediction.

Losses against float64 NumPy on tiny cases, host-transform invariants, the masked context
and the missing position embeddings, paper param counts (abstract builds), and one short
run per objective through `pretrain.main`.
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

from configs.gmml import get_config as get_gmml_config
from configs.position_prediction import get_config as get_pp_config
from models.vit import ViTConfig
from models.vit_pretext import PositionPredictor, SiT, SiTConfig
from objectives import gmml, position_prediction
from objectives.base import DataInfo
from pretrain import checkpoint
from pretrain import main as main_lib
from pretrain import model_builders  # noqa: F401  (registers sit, position_predictor)
from pretrain.data import pipeline
from pretrain.registry import MODELS
from pretrain.steps import RECONSTRUCTION_EXAMPLES
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = ViTConfig(image_size=(8, 8), patch_size=(2, 2), channels=1, d_model=16, num_layers=1,
                num_heads=2, d_ff=32, pos_emb="learned")
SIT = SiTConfig(vit=VIT, rec_layers=1, contrastive_dim=8)
GRID, PATCH = (4, 4), (2, 2)


def _objective_config(**objective) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"objective": objective})


def _np_patchify(images, p):
  """(B, H, W, C) -> (B, N, p * p * C) row-major patches, by hand."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def _run_main(tmp, recipe, *args):
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp}",
                        "--config.train.steps=20", "--config.train.log_every=2",
                        "--config.optim.warmup_steps=2", "--config.train.checkpoint_every=20",
                        "--config.train.peak_flops_per_device=1e11", *args]) == 0
  return read_metrics(str(tmp))


# --- GMML host corruption ----------------------------------------------------------------


def _components(mask: np.ndarray) -> int:
  """4-connected components of a boolean grid."""
  seen, count = np.zeros_like(mask), 0
  for start in zip(*np.nonzero(mask)):
    if seen[start]:
      continue
    count += 1
    stack = [start]
    while stack:
      r, c = stack.pop()
      if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]) or seen[r, c] or not mask[r, c]:
        continue
      seen[r, c] = True
      stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
  return count


def test_group_mask_is_a_union_of_blocks_covering_the_fraction():
  grid, ratio, probs = (7, 7), (0.3, 0.5), (0.2, 0.3, 0.5)
  max_side = int(0.3 * 7)  # 2
  rng = np.random.default_rng(0)
  kinds_seen, covered = [], []
  for _ in range(300):
    kinds, boxes = gmml.group_mask(rng, grid, ratio, 0.3, probs)
    painted = np.zeros(grid, np.int32)
    for top, left, h, w, kind in boxes:
      assert 1 <= h <= max_side and 1 <= w <= max_side
      assert top + h <= grid[0] and left + w <= grid[1]
      painted[top:top + h, left:left + w] = kind
      kinds_seen.append(kind)
    np.testing.assert_array_equal(kinds, painted)  # exactly the blocks, later on top
    n = np.count_nonzero(kinds)
    # At least ceil(0.3 * 49) = 15; the last block overshoots the drawn target by < 4.
    assert 15 <= n < np.ceil(0.5 * 49) + max_side ** 2
    # Connected groups, not scattered patches: no more pieces than blocks, and fewer
    # pieces than corrupted patches on average.
    assert _components(kinds > 0) <= len(boxes)
    covered.append(n / 49)
  assert 0.35 < np.mean(covered) < 0.5
  freq = np.bincount(kinds_seen, minlength=4)[1:] / len(kinds_seen)
  np.testing.assert_allclose(freq, probs, atol=0.04)


@pytest.fixture(scope="module")
def corruption():
  return gmml.GroupCorruption(patch=PATCH, ratio=(0.3, 0.6), max_block=0.5,
                              probs=(1 / 3, 1 / 3, 1 / 3), views=2, rotate=True)


def test_group_corruption_is_deterministic_static_and_touches_only_its_blocks(corruption):
  image = np.random.default_rng(1).uniform(size=(8, 8, 1)).astype(np.float32)
  out = corruption.random_map({"image": image}, np.random.default_rng(5))
  again = corruption.random_map({"image": image}, np.random.default_rng(5))
  other = corruption.random_map({"image": image}, np.random.default_rng(6))
  for key in (gmml.CLEAN, gmml.CORRUPTED, gmml.KIND, gmml.ROTATION):
    np.testing.assert_array_equal(out[key], again[key])
  assert any(not np.array_equal(out[k], other[k]) for k in (gmml.CORRUPTED, gmml.KIND))
  assert out[gmml.CLEAN].shape == out[gmml.CORRUPTED].shape == (2, 8, 8, 1)
  assert out[gmml.KIND].shape == (2, 16) and out[gmml.ROTATION].shape == (2,)
  assert out[gmml.ROTATION].dtype == np.int32 and out[gmml.CORRUPTED].dtype == np.float32
  for view in range(2):
    clean = out[gmml.CLEAN][view]
    np.testing.assert_array_equal(clean, np.rot90(image, out[gmml.ROTATION][view]))
    patches = _np_patchify(out[gmml.CORRUPTED][view][None], 2)[0]
    clean_patches = _np_patchify(clean[None], 2)[0]
    for kind, got, want in zip(out[gmml.KIND][view], patches, clean_patches):
      if kind in (0, gmml.REPLACE):  # replacement happens on device
        np.testing.assert_array_equal(got, want)
      elif kind == gmml.ZERO:
        assert not got.any()
      else:
        assert not np.allclose(got, want)


def test_noise_has_the_image_statistics():
  noise_only = gmml.GroupCorruption(patch=(4, 4), ratio=(1.0, 1.0), max_block=1.0,
                                    probs=(0, 1, 0), views=1, rotate=False)
  image = np.random.default_rng(2).uniform(0.2, 0.6, size=(64, 64, 2)).astype(np.float32)
  image[..., 1] *= 0.5
  out = noise_only.random_map({"image": image}, np.random.default_rng(0))
  assert (out[gmml.KIND] == gmml.NOISE).all()
  noise = out[gmml.CORRUPTED][0]
  np.testing.assert_allclose(noise.mean((0, 1)), image.mean((0, 1)), atol=0.01)
  np.testing.assert_allclose(noise.std((0, 1)), image.std((0, 1)), rtol=0.05)


# --- GMML / SiT loss ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sit():
  return build(SiT, SIT)


@pytest.fixture(scope="module")
def sit_batch(corruption):
  rng = np.random.default_rng(3)
  examples = [corruption.random_map({"image": rng.uniform(size=(8, 8, 1)).astype(np.float32)},
                                    np.random.default_rng(10 + i)) for i in range(4)]
  return {k: np.stack([e[k] for e in examples])
          for k in (gmml.CLEAN, gmml.CORRUPTED, gmml.KIND, gmml.ROTATION)}


def _np_info_nce(a, b, temperature):
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  sim = a @ b.T / temperature
  labels = np.arange(len(a))
  return 0.5 * (np_cross_entropy(sim, labels).mean() + np_cross_entropy(sim.T, labels).mean())


@pytest.mark.parametrize("rotation_weight,contrastive_weight", [(0.5, 0.7), (0.0, 0.0)])
def test_gmml_loss_matches_numpy(sit, sit_batch, rotation_weight, contrastive_weight):
  """L1 over the corrupted patches (replacements filled from the previous image) +
  weighted rotation cross-entropy + weighted symmetric InfoNCE of the two views."""
  model, params = sit
  batch = dict(sit_batch)
  if not contrastive_weight:  # one view per image when the contrastive head is off
    batch = {k: v[:, :1] for k, v in batch.items()}
  config = _objective_config(sit_rotation_weight=rotation_weight,
                             sit_contrastive_weight=contrastive_weight,
                             sit_contrastive_temperature=0.3)
  loss, metrics = jax.jit(functools.partial(gmml.GroupMaskedModel().loss_fn, model=model,
                                            config=config))(params, batch, None)
  b, v = batch[gmml.CLEAN].shape[:2]
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])
  kinds = flat(batch[gmml.KIND])
  donor = _np_patchify(flat(np.roll(batch[gmml.CLEAN], 1, axis=0)), 2)
  inputs = np.where(kinds[..., None] == gmml.REPLACE, donor,
                    _np_patchify(flat(batch[gmml.CORRUPTED]), 2))
  images = inputs.reshape(b * v, 4, 4, 2, 2, 1).transpose(0, 1, 3, 2, 4, 5).reshape(
      b * v, 8, 8, 1)
  rotation, embedding, pred = map(np.asarray, jax.jit(lambda p, x: model.bind(p)(x))(
      params, jnp.asarray(images)))
  target = _np_patchify(flat(batch[gmml.CLEAN]), 2).astype(np.float64)
  hidden = kinds > 0
  recon = np.abs(pred.astype(np.float64) - target).mean(-1)[hidden].mean()
  want = recon
  if rotation_weight:
    want += rotation_weight * np_cross_entropy(rotation, flat(batch[gmml.ROTATION])).mean()
  if contrastive_weight:
    pairs = embedding.astype(np.float64).reshape(b, v, -1)
    want += contrastive_weight * _np_info_nce(pairs[:, 0], pairs[:, 1], 0.3)
  np.testing.assert_allclose(metrics["reconstruction_loss"], recon, rtol=1e-5)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert ("rotation_loss" in metrics) == bool(rotation_weight)
  assert ("contrastive_loss" in metrics) == bool(contrastive_weight)


def test_gmml_pictures_show_clean_corrupted_and_rebuilt_first_views(sit, sit_batch):
  model, params = sit
  config = _objective_config(sit_rotation_weight=0.5, sit_contrastive_weight=0.5,
                             sit_contrastive_temperature=0.3)
  objective = gmml.GroupMaskedModel()
  draw = jax.jit(functools.partial(objective.reconstructions, model=model, config=config))
  grid = np.asarray(draw(params, sit_batch, None)["reconstructions"])
  assert grid.shape == (4 * 9 + 1, 3 * 9 + 1, 1) and grid.dtype == np.uint8
  clean = np.round(np.clip(sit_batch[gmml.CLEAN][2, 0], 0, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(grid[1 + 2 * 9:1 + 2 * 9 + 8, 1:9], clean)
  features = jax.jit(functools.partial(objective.features, model=model, config=config))(
      params, {"image": jnp.asarray(sit_batch[gmml.CLEAN][:, 0])})
  assert features.shape == (4, 16) and np.isfinite(features).all()


@pytest.mark.parametrize("key,value,match", [
    ("corrupt_ratio", (0.6, 0.4), "objective.corrupt_ratio"),
    ("corrupt_block", 0.0, "objective.corrupt_block"),
    ("corrupt_probs", (0.5, 0.5, 0.5), "objective.corrupt_probs"),
    ("sit_rotation_weight", -1.0, "objective.sit_rotation_weight"),
    ("sit_contrastive_temperature", 0.0, "objective.sit_contrastive_temperature")])
def test_gmml_bad_values_name_the_key(key, value, match):
  config = get_gmml_config("tiny")
  config.objective[key] = value
  with pytest.raises(ValueError, match=match):
    gmml.GroupMaskedModel().validate(config)


# --- Position prediction -----------------------------------------------------------------

PP_VIT = ViTConfig(**{**VIT.__dict__, "pos_emb": "none"})


@pytest.fixture(scope="module")
def predictor():
  return build(PositionPredictor, PP_VIT)


def test_context_mask_keeps_the_fraction():
  context = np.asarray(position_prediction.context_mask(jax.random.key(0), 3, 16, 0.75))
  assert context.shape == (3, 16) and (context.sum(1) == 4).all()
  assert position_prediction.context_mask(jax.random.key(0), 3, 16, 0.0) is None
  assert (np.asarray(position_prediction.context_mask(jax.random.key(0), 2, 16, 0.99))
          .sum(1) == 1).all()  # at least one key


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_position_loss_matches_numpy(predictor, ratio):
  """Cross-entropy of every patch token over the 16 positions against its own index."""
  model, params = predictor
  images = np.random.default_rng(4).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  key = jax.random.key_data(jax.random.key(7))
  config = _objective_config(context_mask_ratio=ratio)
  loss, metrics = jax.jit(functools.partial(position_prediction.PositionPrediction().loss_fn,
                                            model=model, config=config))(
      params, {"image": jnp.asarray(images)}, key)
  context = position_prediction.context_mask(jax.random.wrap_key_data(key), 3, 16, ratio)
  logits = np.asarray(jax.jit(lambda p, x, c: model.bind(p)(x, c))(
      params, jnp.asarray(_np_patchify(images, 2)), context))
  targets = np.broadcast_to(np.arange(16), (3, 16))
  np.testing.assert_allclose(loss, np_cross_entropy(logits, targets).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["position_accuracy"],
                             (logits.argmax(-1) == targets).mean(), atol=1e-6)


def test_masked_patches_are_queries_but_never_keys(predictor):
  """Changing a patch outside the context changes only its own logits; changing a context
  patch changes the others'."""
  model, params = predictor
  patches = np.random.default_rng(5).normal(size=(1, 16, 4)).astype(np.float32)
  context = np.ones((1, 16), bool)
  context[0, [3, 9]] = False
  logits = jax.jit(lambda p, x: model.bind(p)(x, jnp.asarray(context)))
  base_logits = np.asarray(logits(params, patches))
  for patch, is_context in ((3, False), (5, True)):
    changed = patches.copy()
    changed[0, patch] += 1.0
    diff = np.abs(np.asarray(logits(params, changed)) - base_logits).max(-1)[0]
    assert diff[patch] > 1e-4
    others = np.delete(diff, patch)
    assert (others > 1e-4).all() if is_context else (others < 1e-6).all()


def test_without_position_embeddings_the_predictor_is_permutation_equivariant(predictor):
  """Shuffling the patches shuffles the logits: nothing but content tells the positions."""
  model, params = predictor
  patches = np.random.default_rng(6).normal(size=(2, 16, 4)).astype(np.float32)
  perm = np.random.default_rng(7).permutation(16)
  logits = jax.jit(lambda p, x: model.bind(p)(x))
  np.testing.assert_allclose(np.asarray(logits(params, patches[:, perm])),
                             np.asarray(logits(params, patches))[:, perm], atol=1e-5)
  with pytest.raises(ValueError, match="pos_emb='learned'"):
    PositionPredictor(VIT, rngs=nnx.Rngs(0))


# --- Paper configs -----------------------------------------------------------------------


def _abstract(config):
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, DataInfo(image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    return cfg, nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))


def _count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_gmml_paper_encoder_is_vit_s():
  """GMML's ImageNet backbone is ViT-S/16 (the code's default vit_small): 22M params
  (DeiT-S, Touvron et al. 2021 Table 1; the encoder, no head); GMML's RECHead on top."""
  cfg, abstract = _abstract(get_gmml_config("S/16"))
  assert abs(_count(abstract.encoder) / 22e6 - 1) < 0.02, _count(abstract.encoder)
  assert (cfg.vit.d_model, cfg.vit.num_layers, cfg.vit.patch_size) == (384, 12, (16, 16))
  assert len(abstract.rec_mlp) == 3


def test_position_prediction_paper_encoder_is_vit_b_without_positions():
  """MP3's ImageNet-1K backbone, ViT-B/16: 86M params (ViT-Base, Dosovitskiy et al. 2020
  Table 1), no position table; the head classifies over the 196 positions."""
  cfg, abstract = _abstract(get_pp_config("B/16"))
  assert abs(_count(abstract.encoder) / 86e6 - 1) < 0.02, _count(abstract.encoder)
  assert abstract.encoder.pos is None and cfg.num_patches == 196
  assert abstract.head.kernel.shape == (768, 196)


# --- End to end --------------------------------------------------------------------------


def test_gmml_tiny_trains_through_main(tmp_path):
  """20 CPU steps with both SiT heads on. Single training batches are too noisy to show
  the L1 falling in 20 steps, so the trained params and a fresh init are compared on the
  same 64 held-out corrupted images: the total, the L1 and the contrastive loss must each
  be at least 2% lower after training (measured: 4%, 4% and 5%; an L1 this early only
  leaves the all-background guess)."""
  records = _run_main(tmp_path, "gmml.py:tiny", "--config.train.eval_every=20",
                      "--config.train.eval_steps=1")
  assert all(np.isfinite(r["loss"]) and r["mfu"] > 0 for r in records if "loss" in r)
  grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_20.png"))
  assert grid.shape == (RECONSTRUCTION_EXAMPLES * 29 + 1, 3 * 29 + 1)

  config = get_gmml_config("tiny")
  info = DataInfo(image_shape=(28, 28, 1))
  transform = gmml.GroupMaskedModel().host_transform(config, info)
  source = pipeline.build_image_dataset(config.data, "validation")
  examples = [transform.random_map(source[i], np.random.default_rng(i)) for i in range(64)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples]))
           for k in (gmml.CLEAN, gmml.CORRUPTED, gmml.KIND, gmml.ROTATION)}
  builder = MODELS.get("sit")
  model, init = build(builder.build, builder.model_config(config.model, info), seed=1)
  saved = checkpoint.read_params(str(tmp_path), 20)
  trained = jax.tree_util.tree_map_with_path(
      lambda path, _: saved["/".join(str(getattr(k, "key", k)) for k in path)], init)
  loss = jax.jit(functools.partial(gmml.GroupMaskedModel().loss_fn, model=model,
                                   config=config))
  (total_before, before), (total_after, after) = loss(init, batch, None), loss(trained, batch,
                                                                              None)
  summary = {k: (float(before[k]), float(after[k])) for k in before}
  assert total_after < 0.98 * total_before, summary
  for key in ("reconstruction_loss", "contrastive_loss"):
    assert after[key] < 0.98 * before[key], summary
  # Rotation stays near chance (ln 4) this early; its term is checked against NumPy above.
  assert after["rotation_loss"] < 1.5, summary


def test_position_prediction_tiny_trains_through_main(tmp_path):
  records = _run_main(tmp_path, "position_prediction.py:tiny", "--config.train.eval_every=0")
  logged = [r for r in records if "loss" in r]
  curve = [r["loss"] for r in logged]
  assert curve[0] < np.log(49) + 0.1  # starts at chance over 49 positions
  assert np.mean(curve[-2:]) < 0.95 * np.mean(curve[:2]), curve
  assert all(r["mfu"] > 0 and 0 <= r["position_accuracy"] <= 1 for r in logged)
