"""Image-text pretraining: the emoji image-caption data (pretrain/data/image_text.py), CLIP
(global-batch InfoNCE with a learnable temperature: NumPy loss and gradient, eight devices =
one), ALIP (consistency-gated loss against NumPy) and M3AE (masked pixels + masked tokens
against NumPy); tiny recipes train through `pretrain.main`; paper configs have the paper's
size."""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import alip as alip_cfg
from configs import clip as clip_cfg
from configs import m3ae as m3ae_cfg
from models.clip import CLIP, LOGIT_SCALE_MAX
from models.m3ae import M3AE
from objectives import alip, mae
from objectives.base import DataInfo
from pretrain import main as main_lib
from pretrain.data import image_text
from pretrain.registry import MODELS, OBJECTIVES
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, TEXT_LEN = 24, 16


@pytest.fixture(scope="module")
def emoji():
  """(train source, validation source, tokenizer) at the tiny recipe's sizes."""
  data = clip_cfg.get_config("tiny").data
  return image_text.build_sources(data, SIZE)


@pytest.fixture(scope="module")
def tiny_clip(emoji):
  """(ModelDef, params, config) of the tiny recipe's CLIP."""
  config = clip_cfg.get_config("tiny")
  info = DataInfo(vocab_size=emoji[2].vocab_size, image_shape=(SIZE, SIZE, 3))
  model_def, params = build(CLIP, MODELS.get("clip").model_config(config.model, info))
  return model_def, params, config


def _batch(source, idx) -> dict:
  return {k: jnp.asarray(np.stack([source[i][k] for i in idx])) for k in source[0]}


# --- data ----------------------------------------------------------------------------------


def test_emoji_pairs_are_real_images_with_consistent_captions(emoji):
  train, val, tok = emoji
  images, captions, alt_captions, labels, keys = image_text.read_emoji(
      image_text.pipeline.cache_dir(clip_cfg.get_config("tiny").data), SIZE)
  assert len(images) == len(train) + len(val) > 1800 and images.dtype == np.uint8
  assert images.shape[1:] == (SIZE, SIZE, 3)
  # Real pictures: colourful, not blank, every one different from a white square.
  assert (images.reshape(len(images), -1).std(1) > 10).mean() > 0.99
  assert len({im.tobytes() for im in images}) > 0.95 * len(images)
  grinning = keys.index("1F600")
  assert captions[grinning] == "grinning face"
  assert alt_captions[grinning] == "smileys & emotion, face smiling: grinning"
  assert image_text.CATEGORIES[labels[grinning]] == "Smileys & Emotion"
  r, g, b = images[grinning].reshape(-1, 3).T.astype(int)
  assert ((r > 200) & (g > 150) & (b < 120)).mean() > 0.2  # a yellow face
  # Each alt caption starts with its label's category; tokens decode back to the caption.
  assert all(alt.startswith(image_text.CATEGORIES[y].lower())
             for alt, y in zip(alt_captions, labels))
  example = train[0]
  assert set(example) == {"image", "tokens", "alt_tokens", "label"}
  assert example["tokens"].shape == (TEXT_LEN,) and example["tokens"].dtype == np.int32
  assert example["tokens"][0] == tok.cls_id
  eos = (example["tokens"] != 0).sum() - 1
  assert example["tokens"][eos] == tok.sep_id and (example["tokens"][eos + 1:] == 0).all()
  decoded = [tok.decode(train.tokens[i], skip_special=True).replace(" ", "")
             for i in range(len(train))]
  train_captions = [c for c, keep in zip(captions, image_text.split_mask(keys, "train"))
                    if keep]
  matches = [d == c.replace(" ", "") for d, c in zip(decoded, train_captions)]
  assert np.mean(matches) > 0.9  # the rest were cut at text_len


def test_heldout_emoji_are_disjoint_and_the_split_is_deterministic(emoji):
  train, val, _ = emoji
  keys = [f"{c:X}" for c in range(0x1F600, 0x1F650)] * 3
  mask = image_text.split_mask(keys, "validation")
  assert np.array_equal(mask, image_text.split_mask(keys, "validation"))
  assert np.array_equal(mask[::-1], image_text.split_mask(keys[::-1], "validation"))
  assert not (mask & image_text.split_mask(keys, "train")).any()
  assert 0.02 < len(val) / (len(train) + len(val)) < 0.08
  # By emoji: the real code point sequences of the two splits never meet.
  real = image_text.read_emoji(
      image_text.pipeline.cache_dir(clip_cfg.get_config("tiny").data), SIZE)[-1]
  held = image_text.split_mask(real, "validation")
  assert held.sum() == len(val) and (~held).sum() == len(train)
  assert not {k for k, h in zip(real, held) if h} & {k for k, h in zip(real, held) if not h}
  assert all(np.array_equal(train[7][k], train[7][k]) for k in train[7])


# --- CLIP ----------------------------------------------------------------------------------


def np_clip_loss(image_emb, text_emb, logit_scale):
  """Symmetric InfoNCE in float64 at scale exp(min(logit_scale, log 100))."""
  a = np.asarray(image_emb, np.float64)
  b = np.asarray(text_emb, np.float64)
  a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
  logits = math.exp(min(logit_scale, LOGIT_SCALE_MAX)) * a @ b.T
  labels = np.arange(len(a))
  return 0.5 * (np_cross_entropy(logits, labels).mean()
                + np_cross_entropy(logits.T, labels).mean())


def test_clip_loss_and_temperature_gradient_match_numpy(emoji, tiny_clip):
  model_def, params, config = tiny_clip
  batch = _batch(emoji[0], [3, 50, 400, 900, 1300, 1700])
  objective = OBJECTIVES.get("clip")

  @jax.jit
  def run(scale):
    """(loss, metrics, d loss / d logit_scale, image and text embeddings) at `scale`."""
    def loss(s):
      return objective.loss_fn({**params, "logit_scale": s}, batch, None, model=model_def,
                               config=config)
    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(scale)
    net = model_def.bind(params)
    return (value, metrics, grad, net.embed_images(batch["image"].astype(jnp.float32) / 255),
            net.embed_texts(batch["tokens"]))

  for scale in (0.0, math.log(1 / 0.07), 5.0):  # 5 > log 100: clipped, no gradient
    loss, metrics, grad, image_emb, text_emb = run(jnp.float32(scale))
    np.testing.assert_allclose(loss, np_clip_loss(image_emb, text_emb, scale), rtol=1e-5)
    np.testing.assert_allclose(metrics["logit_scale"], math.exp(min(scale, LOGIT_SCALE_MAX)),
                               rtol=1e-5)
    eps = 1e-4
    numeric = (np_clip_loss(image_emb, text_emb, scale + eps)
               - np_clip_loss(image_emb, text_emb, scale - eps)) / (2 * eps)
    if scale > LOGIT_SCALE_MAX:
      assert grad == 0
    else:
      np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=1e-6)
      assert grad != 0


def test_clip_text_tower_is_causal_and_pools_the_end_token(tiny_clip):
  model_def, params, _ = tiny_clip

  @jax.jit
  def run(p, tokens):
    net = model_def.bind(p)
    return net.text(tokens), net.text_features(tokens)

  hidden, pooled = run(params, jnp.asarray([[2, 7, 9, 3, 0, 0], [2, 7, 9, 11, 12, 3]]))
  # Causal: the shared prefix [2, 7, 9] has the same states in both captions.
  np.testing.assert_allclose(hidden[0, :3], hidden[1, :3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled[0], hidden[0, 3], rtol=1e-6)
  np.testing.assert_allclose(pooled[1], hidden[1, 5], rtol=1e-6)


EIGHT_DEVICES = """
import functools, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import sys; sys.path.insert(0, "tests")
from configs.clip import get_config
from helpers import build
from models.clip import CLIP
from objectives.base import DataInfo
from pretrain.registry import MODELS, OBJECTIVES
assert jax.device_count() == 8
config = get_config("tiny")
cfg = MODELS.get("clip").model_config(config.model, DataInfo(vocab_size=40,
                                                              image_shape=(24, 24, 3)))
model_def, params = build(CLIP, cfg)
rng = np.random.default_rng(0)
tokens = np.zeros((16, 16), np.int32)
for i in range(16):
  n = rng.integers(1, 10)
  tokens[i, :n + 2] = [2, *rng.integers(5, 40, n), 3]
batch = {"image": rng.integers(0, 256, (16, 24, 24, 3)).astype(np.uint8), "tokens": tokens}
loss_fn = functools.partial(OBJECTIVES.get("clip").loss_fn, model=model_def, config=config)
step = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, None)[0]))
one = step(params, jax.device_put(batch, jax.devices()[0]))
rows = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), P("batch"))
sharded = jax.device_put(batch, rows)
assert sharded["image"].addressable_shards[0].data.shape == (2, 24, 24, 3)
eight = step(params, sharded)
np.testing.assert_allclose(eight[0], one[0], rtol=1e-5)
for a, b in zip(jax.tree.leaves(eight[1]), jax.tree.leaves(one[1])):
  np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
assert abs(float(one[1]["logit_scale"])) > 1e-6
# Each device's 2 pairs alone give another loss: the negatives span the global batch.
local = np.mean([step(params, {k: v[i:i + 2] for k, v in batch.items()})[0]
                 for i in range(0, 16, 2)])
assert abs(local - float(one[0])) > 1e-2
print("ok")
"""


def test_clip_loss_and_gradient_over_eight_devices_equal_one_device():
  """The batch sharded over 8 fake CPU devices: the similarity matrix spans the global batch,
  so the loss and every gradient (the temperature's included) are the one-device ones."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# --- ALIP ----------------------------------------------------------------------------------


def np_alip(v, t, c, temperature, state):
  """ALIP's gates and loss in float64, from the formulas in objectives/alip.py."""
  v, t, c = (np.asarray(x, np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
             for x in (v, t, c))
  labels = np.arange(len(v))

  def pair(a, b):
    logits = a @ b.T / temperature
    return 0.5 * (np_cross_entropy(logits, labels) + np_cross_entropy(logits.T, labels))

  sims = {"text_caption": (t * c).sum(1), "text_image": (t * v).sum(1),
          "caption_image": (c * v).sum(1)}
  means = {k: 0.99 * state[k] + 0.01 * sims[k].mean() for k in sims}
  gate = {k: np.exp(sims[k] - means[k]) ** 2 for k in sims}
  w = np.minimum(gate["text_caption"], 1)
  noisy = gate["text_caption"] < 1
  p_text = np.where(noisy, gate["text_image"], 1)
  p_caption = np.where(noisy, gate["caption_image"], 1)
  loss = (pair(v, t) * w * p_text).mean() + (pair(v, c) * w * p_caption).mean()
  return loss, means, w


def test_alip_gated_loss_matches_numpy():
  rng = np.random.default_rng(0)
  v, t = rng.normal(size=(2, 8, 6))
  c = t + rng.normal(size=(8, 6)) * np.linspace(0, 2, 8)[:, None]  # later texts disagree
  state = {"text_caption": 0.9, "text_image": 0.1, "caption_image": -0.2}
  loss, metrics = jax.jit(alip.alip_loss)(
      *(jnp.asarray(x, jnp.float32) for x in (v, t, c)), 0.3,
      {k: jnp.float32(s) for k, s in state.items()})
  expected, means, w = np_alip(v, t, c, 0.3, state)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  for k in state:
    np.testing.assert_allclose(metrics["next_objective_state"][k], means[k], rtol=1e-5)
  np.testing.assert_allclose(metrics["sample_gate"], w.mean(), rtol=1e-5)
  assert 0 < w.min() < 1 and w.max() == 1  # some samples are down-weighted, none up


# --- end to end and paper sizes ------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["clip", "alip"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  """20 steps of 32 pairs: the loss falls, and held-out pairs match better than chance."""
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={tmp_path}",
                        "--config.train.steps=20", "--config.train.log_every=2",
                        "--config.train.eval_every=20", "--config.train.eval_steps=1",
                        "--config.train.checkpoint_every=20",
                        "--config.train.peak_flops_per_device=1e11"]) == 0
  records = read_metrics(str(tmp_path))
  # ALIP's gated loss moves with its gates: its ungated InfoNCE of the raw text must fall.
  key = "loss" if recipe == "clip" else "infonce_text"
  curve = [r[key] for r in records if "loss" in r]
  assert np.mean(curve[-3:]) < np.mean(curve[:3]), curve
  assert all(r["mfu"] > 0 and "logit_scale" in r for r in records if "loss" in r)
  # Held-out emoji: better than chance (log 32) at matching unseen images and captions.
  held_out = [r[f"eval_{key}"] for r in records if f"eval_{key}" in r]
  assert held_out and held_out[-1] < math.log(32) - 0.1, held_out


@pytest.mark.parametrize("config_module", [clip_cfg, alip_cfg])
def test_paper_config_is_clip_vit_b32_with_151m_params(config_module):
  """CLIP ViT-B/32 (Radford et al. 2021, Table 20 sizes; the released
  openai/clip-vit-base-patch32 has 151,277,313 params); ALIP trains the same ViT-B/32."""
  config = config_module.get_config("B/32")
  builder = MODELS.get("clip")
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size,
                                                    image_shape=(224, 224, 3)))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert abs(total / 151_277_313 - 1) < 0.02, total
  assert (cfg.vision.num_patches, cfg.text.d_model, cfg.embed_dim) == (49, 512, 512)


def test_bad_caption_length_is_a_config_error():
  config = clip_cfg.get_config("tiny")
  config.data.text_len = 40
  with pytest.raises(ValueError, match="data.text_len=40"):
    OBJECTIVES.get("clip").validate(config)
  assert isinstance(config.data, ml_collections.ConfigDict)


# --- M3AE ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_m3ae(emoji):
  """(ModelDef, params, config, DataInfo) of the tiny M3AE recipe."""
  config = m3ae_cfg.get_config("tiny")
  tok = emoji[2]
  info = DataInfo(seq_len=TEXT_LEN, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                  special_ids=tuple(int(i) for i in tok.special_ids),
                  image_shape=(SIZE, SIZE, 3))
  model_def, params = build(M3AE, MODELS.get("m3ae").model_config(config.model, info))
  return model_def, params, config, info


def test_m3ae_caption_masking_invariants(emoji, tiny_m3ae):
  *_, config, info = tiny_m3ae
  transform = OBJECTIVES.get("m3ae").host_transform(config, info)
  example = emoji[0][11]
  out = transform.random_map(example, np.random.default_rng(0))
  again = transform.random_map(example, np.random.default_rng(0))
  assert all(np.array_equal(out[k], again[k]) for k in out)  # deterministic in the rng
  assert np.array_equal(out["image"], example["image"])
  slots = out["masked_weights"] > 0
  positions, ids = out["masked_positions"][slots], out["masked_ids"][slots]
  assert slots.sum() >= 1 and np.array_equal(ids, example["tokens"][positions])
  assert not np.isin(ids, info.special_ids).any()  # [CLS], [SEP], padding never masked
  unmasked = np.setdiff1d(np.arange(TEXT_LEN), positions)
  assert np.array_equal(out["inputs"][unmasked], example["tokens"][unmasked])
  # Over many captions about 15% of the real tokens are chosen.
  chosen = real = 0
  for i in range(200):
    ex = emoji[0][i]
    o = transform.random_map(ex, np.random.default_rng(i))
    chosen += (o["masked_weights"] > 0).sum()
    real += (~np.isin(ex["tokens"], info.special_ids)).sum()
  assert 0.1 < chosen / real < 0.3


def test_m3ae_loss_matches_numpy(emoji, tiny_m3ae):
  """loss = NumPy MSE over the removed patches + NumPy cross-entropy at the masked slots,
  with the objective's weights; text reads the last block, pixels the `image_layer`-th."""
  model_def, params, config, info = tiny_m3ae
  config = ml_collections.ConfigDict(config.to_dict())
  config.objective.image_loss_weight, config.objective.text_loss_weight = 0.7, 1.3
  objective = OBJECTIVES.get("m3ae")
  transform = objective.host_transform(config, info)
  rows = [transform.random_map(emoji[0][i], np.random.default_rng(i)) for i in (1, 90, 700)]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  key = jax.random.key_data(jax.random.key(3))
  loss, metrics = jax.jit(functools.partial(objective.loss_fn, model=model_def,
                                            config=config))(params, batch, key)
  image = np.asarray(batch["image"], np.float64) / 255
  patches = image.reshape(3, 4, 6, 4, 6, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, 16, 108)
  keep_idx, hidden = mae.random_keep(jax.random.wrap_key_data(key), 3, 16, 0.75)
  hidden = np.asarray(hidden)
  assert hidden.sum() == 3 * 12

  @jax.jit
  def predict(inputs):
    """(predicted patches, text states, text logits at the masked slots)."""
    net = model_def.bind(params)
    latent, text = net.encode_pair(jnp.asarray(patches, jnp.float32), keep_idx, inputs)
    picked = jnp.take_along_axis(text, batch["masked_positions"][..., None], 1)
    return net.decode(latent, keep_idx, 16), text, net.text_logits(picked)

  pred, text, logits = predict(batch["inputs"])
  mse = (((np.asarray(pred, np.float64) - patches) ** 2).mean(-1) * hidden).sum() / hidden.sum()
  weights = np.asarray(batch["masked_weights"])
  xent = (np_cross_entropy(logits, np.asarray(batch["masked_ids"])) * weights).sum() / weights.sum()
  np.testing.assert_allclose(metrics["image_loss"], mse, rtol=1e-4)
  np.testing.assert_allclose(metrics["text_loss"], xent, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.7 * mse + 1.3 * xent, rtol=1e-5)
  # Padding is never attended: trimming padding leaves the real tokens' states unchanged.
  inputs = np.asarray(batch["inputs"])
  keep = int((inputs != 0).sum(1).max())
  assert keep < TEXT_LEN
  _, trimmed = jax.jit(lambda x: model_def.bind(params).encode_pair(
      jnp.asarray(patches, jnp.float32), keep_idx, x))(batch["inputs"][:, :keep])
  real = inputs[:, :keep] != 0
  np.testing.assert_allclose(np.asarray(trimmed)[real], np.asarray(text)[:, :keep][real],
                             rtol=1e-5, atol=1e-6)


def test_m3ae_tiny_trains_through_main_and_draws_reconstructions(tmp_path):
  assert main_lib.main([f"--config={ROOT}/configs/m3ae.py:tiny", f"--workdir={tmp_path}",
                        "--config.train.steps=12", "--config.train.log_every=2",
                        "--config.train.eval_every=12", "--config.train.eval_steps=1",
                        "--config.train.checkpoint_every=12",
                        "--config.train.peak_flops_per_device=1e11"]) == 0
  records = read_metrics(str(tmp_path))
  for key in ("image_loss", "text_loss"):
    curve = [r[key] for r in records if "loss" in r]
    assert np.mean(curve[-2:]) < np.mean(curve[:2]), (key, curve)
  assert all(r["mfu"] > 0 for r in records if "loss" in r)
  grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_12.png"))
  assert grid.shape[1:] == (3 * (SIZE + 1) + 1, 3) and grid.std() > 10


def test_m3ae_paper_encoder_is_vit_b16():
  """The single stream's image path (patch embedding, class token, 12 blocks) is ViT-B/16:
  86M params (Dosovitskiy et al. 2021, Table 1); the paper reports no total for M3AE."""
  config = m3ae_cfg.get_config("B/16")
  builder = MODELS.get("m3ae")
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size,
                                                    image_shape=(288, 288, 3)))
  with nnx.use_eager_sharding(False):
    net = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))

  def count(*modules):
    return sum(x.size for m in modules for x in jax.tree.leaves(nnx.state(m, nnx.Param)))

  encoder = count(net.encoder, net.upper)
  assert abs(encoder / 86e6 - 1) < 0.02, encoder
  assert (cfg.num_patches, cfg.image_layer, cfg.dec_d_model, cfg.dec_layers) == (324, 9, 384, 4)
  assert len(net.encoder.stack.blocks) + len(net.upper.blocks) == 12
