"""Contrastive and embedding objectives: the shared InfoNCE (one device = eight), RetroMAE v2
(DupMAE), Starbucks 2D Matryoshka MLM, ContraBERT's code augmentations and loss."""
from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import contrabert as contrabert_cfg
from configs import retromae as retromae_cfg
from configs import starbucks as starbucks_cfg
from models.attention import attention_mask
from models.future_tokens import MultiTokenConfig, MultiTokenLM
from models.transformer import TextTransformer, TransformerConfig
from objectives import contrabert, retromae, starbucks
from objectives.base import DataInfo
from objectives.contrastive import info_nce
from objectives.mlm import MlmMasking
from pretrain import main as main_lib
from pretrain.data import code_augment as aug
from pretrain.registry import MODELS, OBJECTIVES
from pretrain.train import read_metrics
from helpers import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, VOCAB, MASK, CLS = 24, 40, 1, 127  # [CLS] is the last row of the padded table (128)
SPECIALS = (0, 1, 2)


def _np_xent(logits, targets):
  top = logits.max(-1, keepdims=True)
  logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def np_info_nce(a, b, t):
  a = np.asarray(a, np.float64) / np.linalg.norm(a, axis=-1, keepdims=True)
  b = np.asarray(b, np.float64) / np.linalg.norm(b, axis=-1, keepdims=True)
  sim = a @ b.T / t
  labels = np.arange(len(a))
  return 0.5 * (_np_xent(sim, labels).mean() + _np_xent(sim.T, labels).mean())


# --- InfoNCE -----------------------------------------------------------------------------


def test_info_nce_matches_numpy_with_a_traced_temperature():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  b[:3] = a[:3] + 0.1 * b[:3]
  for t in (1.0, 0.07):
    loss, acc = info_nce(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t)
    np.testing.assert_allclose(loss, np_info_nce(a, b, t), rtol=1e-5)
    sim = (a / np.linalg.norm(a, axis=1)[:, None]) @ (b / np.linalg.norm(b, axis=1)[:, None]).T
    assert acc == (sim.argmax(1) == np.arange(6)).mean()
  # CLIP's learnable log-scale: the temperature may be a traced value with a gradient.
  grad = jax.jit(jax.grad(lambda s: info_nce(jnp.asarray(a), jnp.asarray(b),
                                              jnp.exp(-s))[0]))(0.0)
  assert np.isfinite(grad) and grad != 0


EIGHT_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from objectives.contrastive import info_nce
assert jax.device_count() == 8
rng = np.random.default_rng(1)
a, b = (jnp.asarray(rng.normal(size=(16, 8)), jnp.float32) for _ in range(2))
loss = jax.jit(lambda a, b: info_nce(a, b, 0.1))
one = loss(jax.device_put(a, jax.devices()[0]), jax.device_put(b, jax.devices()[0]))
rows = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), P("batch"))
sa, sb = jax.device_put(a, rows), jax.device_put(b, rows)
assert len(sa.addressable_shards) == 8 and sa.addressable_shards[0].data.shape == (2, 8)
eight = loss(sa, sb)
np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=1e-6)
# Per-shard InfoNCE (each device's 2 rows only) differs: the negatives really are global.
local = np.mean([info_nce(a[i:i + 2], b[i:i + 2], 0.1)[0] for i in range(0, 16, 2)])
assert abs(local - float(one[0])) > 1e-3
print("ok")
"""


def test_info_nce_over_eight_sharded_devices_equals_one_device():
  """Rows sharded over 8 fake CPU devices: jit sees the global batch, so the (B, B)
  similarity matrix and the loss are the single-device ones."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# --- RetroMAE v2 / DupMAE ----------------------------------------------------------------


def _clean_row(rng, segments=((1, 10), (2, 9))) -> dict:
  """Two packed segments and padding: tokens, segment_ids, positions, word_start."""
  segs = np.concatenate([np.full(n, s) for s, n in segments]
                        + [np.zeros(SEQ - sum(n for _, n in segments))]).astype(np.int32)
  positions = np.concatenate([np.arange(n) for _, n in segments]
                             + [np.zeros(SEQ - sum(n for _, n in segments))]).astype(np.int32)
  tokens = np.where(segs > 0, rng.integers(3, VOCAB, SEQ), 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segs, "positions": positions,
          "word_start": np.ones(SEQ, bool)}


def _duplex(mask_rate=0.3, decoder_mask_rate=0.5) -> retromae.DuplexMasking:
  masking = MlmMasking(mask_rate=mask_rate, replace_mask=0.8, replace_random=0.1,
                       mask_id=MASK, vocab_size=VOCAB, special_ids=(*SPECIALS, CLS),
                       seq_len=SEQ)
  return retromae.DuplexMasking(masking=masking, decoder_mask_rate=decoder_mask_rate,
                                cls_id=CLS)


def test_cls_id_is_the_free_padding_row():
  assert retromae.cls_id_for(VOCAB) == CLS and retromae.cls_id_for(30522) == 30591


def test_duplex_masking_invariants():
  row = _clean_row(np.random.default_rng(0))
  transform = _duplex()
  out = transform.random_map(row, np.random.default_rng(3))
  again = transform.random_map(row, np.random.default_rng(3))
  assert all(np.array_equal(out[k], again[k]) for k in out)  # deterministic in the rng
  other = transform.random_map(row, np.random.default_rng(4))
  assert not np.array_equal(out["decoder_inputs"], other["decoder_inputs"])
  # [CLS] starts each segment (position 0, the segment's id); the row keeps its length.
  starts = np.flatnonzero(out["is_cls"])
  assert list(starts) == [0, 11] and (out["tokens"][starts] == CLS).all()
  assert list(out["segment_ids"][starts]) == [1, 2] and (out["positions"][starts] == 0).all()
  assert all(v.shape[0] == SEQ for k, v in out.items() if not k.startswith("masked"))
  assert out["masked_positions"].shape == (8,)  # ceil(24 * 0.3)
  # The decoder's copy: half of the ordinary tokens [MASK]ed, never [CLS] nor padding.
  ordinary = (out["segment_ids"] > 0) & ~out["is_cls"]
  masked = out["decoder_weights"] > 0
  assert masked.sum() == round(ordinary.sum() * 0.5) and not (masked & ~ordinary).any()
  assert (out["decoder_inputs"][masked] == MASK).all()
  assert np.array_equal(out["decoder_inputs"][~masked], out["tokens"][~masked])
  # The encoder's MLM never picks [CLS].
  picked = out["masked_positions"][out["masked_weights"] > 0]
  assert not out["is_cls"][picked].any()


def test_bag_of_words_loss_matches_numpy():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(2, 5, 7))
  tokens = np.array([[3, 3, 4, 0, 6], [1, 2, 2, 5, 0]])
  ordinary = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 0]], bool)
  loss, pooled = retromae.bag_of_words_loss(jnp.asarray(scores, jnp.float32),
                                            jnp.asarray(tokens), jnp.asarray(ordinary))
  expected = []
  for b in range(2):
    pool = scores[b][ordinary[b]].max(0)
    logp = pool - np.log(np.exp(pool).sum())
    expected.append(-np.mean([logp[t] for t in sorted(set(tokens[b][ordinary[b]]))]))
    np.testing.assert_allclose(pooled[b], pool, rtol=1e-6)
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


@pytest.fixture(scope="module")
def retro_model():
  cfg = MultiTokenConfig(vocab_size=128, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                         max_len=SEQ, norm="post", embed_norm=True, num_future=1)
  return build(MultiTokenLM, cfg)


def _retro_batch(seed: int, **overrides) -> dict:
  row = _clean_row(np.random.default_rng(seed))
  row.update(overrides)
  out = _duplex().random_map(row, np.random.default_rng(seed))
  return {k: jnp.asarray(v)[None] for k, v in out.items()}


def test_retromae_segments_stay_apart(retro_model):
  """Changing the second document changes nothing of the first's encoder or decoder."""
  model, params = retro_model
  batch = _retro_batch(0)
  tokens = np.array(batch["inputs"][0])
  second = np.array(batch["segment_ids"][0]) == 2
  changed = dict(batch, inputs=jnp.asarray(np.where(second, 5, tokens))[None],
                 decoder_inputs=jnp.where(jnp.asarray(second), 6, batch["decoder_inputs"]))
  first = np.array(batch["segment_ids"][0]) == 1
  states = jax.jit(lambda b: retromae.duplex_states(model.bind(params), b))
  for a, b in zip(states(batch), states(changed)):
    np.testing.assert_allclose(a[0][first], b[0][first], rtol=1e-6)
    assert not np.allclose(a[0][second], b[0][second])


def test_retromae_loss_by_hand_and_the_decoder_trains_the_encoder(retro_model):
  model, params = retro_model
  batch = _retro_batch(1)
  config = retromae_cfg.get_config("tiny")
  objective = OBJECTIVES.get("retromae")
  loss_fn = functools.partial(objective.loss_fn, model=model, config=config)
  # One compile: the loss and the decoder loss's gradient (checked at the end).
  (dec_loss, (loss, m)), grads = jax.jit(jax.value_and_grad(
      lambda p: (lambda out: (out[1]["decoder_loss"], out))(loss_fn(p, batch, None)),
      has_aux=True))(params)
  np.testing.assert_allclose(loss, m["mlm_loss"] + m["decoder_loss"] + m["bow_loss"],
                             rtol=1e-6)
  net = model.bind(params)
  _, decoded = retromae.duplex_states(net, batch)
  w = np.array(batch["decoder_weights"][0])
  logits = np.asarray(net.logits(decoded)[0], np.float64)
  expected = (_np_xent(logits, np.array(batch["tokens"][0])) * w).sum() / w.sum()
  np.testing.assert_allclose(dec_loss, expected, rtol=1e-5)

  # The encoder's blocks reach the decoder only through the [CLS] states it is given:
  # the decoder loss must train them.
  stack = jax.tree.leaves(grads["stack"])
  assert sum(float(np.abs(g).sum()) for g in stack) > 0


def test_retromae_features_are_the_unified_embedding(retro_model):
  model, params = retro_model
  row = _clean_row(np.random.default_rng(2), segments=((1, 12),))
  batch = {k: jnp.asarray(row[k])[None] for k in ("tokens", "segment_ids", "positions")}
  feats = OBJECTIVES.get("retromae").features(params, batch, model=model,
                                             config=retromae_cfg.get_config("tiny"))
  assert feats.shape == (1, 16 + 128)
  np.testing.assert_allclose(np.linalg.norm(feats[0, :16]), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(feats[0, 16:]), 1, rtol=1e-5)
  assert (feats[0, 16:] >= 0).all()


# --- Starbucks ---------------------------------------------------------------------------


def test_truncate_zeroes_the_tail():
  x = jnp.arange(12.0).reshape(2, 6)
  np.testing.assert_array_equal(starbucks.truncate(x, 4),
                                np.where(np.arange(6) < 4, np.arange(12.0).reshape(2, 6), 0))


@pytest.fixture(scope="module")
def mlm_model():
  cfg = TransformerConfig(vocab_size=128, num_layers=2, d_model=16, num_heads=2, d_ff=32,
                          max_len=SEQ, norm="post", embed_norm=True, head_transform=True)
  return build(TextTransformer, cfg)


def _mlm_batch(seed: int) -> dict:
  masking = MlmMasking(mask_rate=0.3, replace_mask=0.8, replace_random=0.1, mask_id=MASK,
                       vocab_size=VOCAB, special_ids=SPECIALS, seq_len=SEQ)
  out = masking.random_map(_clean_row(np.random.default_rng(seed)), np.random.default_rng(seed))
  return {k: jnp.asarray(v)[None] for k, v in out.items()}


def test_starbucks_loss_is_the_mean_over_slices_computed_by_hand(mlm_model):
  model, params = mlm_model
  batch = _mlm_batch(0)
  pairs = ((1, 4), (2, 16))
  config = ml_collections.ConfigDict({"objective": {"layer_dims": pairs}})
  loss, m = OBJECTIVES.get("starbucks").loss_fn(params, batch, None, model=model,
                                                config=config)
  net = model.bind(params)
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  x = net.embed_tokens(batch["inputs"], batch["positions"])
  w = np.array(batch["masked_weights"][0])
  by_hand = []
  for block, (layers, dim) in zip(net.stack.blocks, pairs):
    x = block(x, mask=mask, positions=batch["positions"])
    picked = np.array(x[0])[np.array(batch["masked_positions"][0])]
    picked[:, dim:] = 0
    logits = np.asarray(net.logits(jnp.asarray(picked)), np.float64)
    by_hand.append((_np_xent(logits, np.array(batch["masked_ids"][0])) * w).sum() / w.sum())
    np.testing.assert_allclose(m[f"loss_L{layers}_d{dim}"], by_hand[-1], rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(by_hand), rtol=1e-5)
  # The full slice alone is plain MLM.
  full = ml_collections.ConfigDict({"objective": {"layer_dims": ((2, 16),)}})
  mlm_loss, _ = OBJECTIVES.get("mlm").loss_fn(params, batch, None, model=model, config=full)
  np.testing.assert_allclose(OBJECTIVES.get("starbucks").loss_fn(
      params, batch, None, model=model, config=full)[0], mlm_loss, rtol=1e-6)


@pytest.mark.parametrize("layer_dims", [((3, 32),), ((1, 200),), ((2, 64), (1, 128)), ()])
def test_starbucks_rejects_bad_layer_dims(layer_dims):
  config = starbucks_cfg.get_config("tiny")
  config.objective.layer_dims = layer_dims
  with pytest.raises(ValueError, match="objective.layer_dims"):
    OBJECTIVES.get("starbucks").validate(config)


# --- ContraBERT augmentations ------------------------------------------------------------

SAMPLES = {
    "mean_var": ("def mean_var(xs, ddof=0):\n"
                 "    '''Mean and variance.'''\n"
                 "    n = len(xs)\n"
                 "    total = 0.0\n"
                 "    count = 0\n"
                 "    for x in xs:\n"
                 "        total += x\n"
                 "    m = total / n\n"
                 "    sq = sum(((x - m) ** 2 for x in xs))\n"
                 "    return (m, sq / (n - ddof))\n",
                 [([1.0, 2.0, 4.0],), ([3.0, 3.0], 1)]),
    "closure": ("def closure(a, b):\n"
                "    scale = 2\n"
                "    offset = b\n"
                "    def inner(t):\n"
                "        return t * scale + offset\n"
                "    try:\n"
                "        r = [inner(v) for v in range(a)]\n"
                "    except ValueError as err:\n"
                "        r = str(err)\n"
                "    return r\n",
                [(3, 1), (0, 5)]),
    "words": ("def words(text, sep=' '):\n"
              "    out = {}\n"
              "    k = 1\n"
              "    j = 0\n"
              "    for w in text.split(sep):\n"
              "        out[w] = out.get(w, 0) + k\n"
              "    return sorted(out.items())\n",
              [("a b a",), ("x,y", ",")]),
}


def _structure(tree: ast.AST) -> list[str]:
  """Node types in walk order: what renaming must not change."""
  return [type(n).__name__ for n in ast.walk(tree)]


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("operator", sorted(aug.OPERATORS))
def test_augmentations_parse_and_preserve_behaviour(name, operator):
  source, inputs = SAMPLES[name]
  reference = {}
  exec(source, reference)
  changed = 0
  for seed in range(4):
    out = aug.OPERATORS[operator](source, np.random.default_rng(seed))
    if out is None:
      continue
    tree = ast.parse(out)  # parses
    changed += ast.dump(tree) != ast.dump(ast.parse(source))
    env = {}
    exec(out, env)
    for args in inputs:
      assert env[name](*args) == reference[name](*args), (operator, out)
  assert changed > 0 or operator == "reorder_statements" and name == "closure"


def test_rename_is_a_consistent_bijection_that_keeps_the_structure():
  source, _ = SAMPLES["closure"]
  out = aug.rename_variables(source, np.random.default_rng(0))
  before, after = ast.parse(source), ast.parse(out)
  assert _structure(before) == _structure(after)
  mapping = {}
  for a, b in zip(ast.walk(before), ast.walk(after)):
    for field in ("id", "arg", "name"):
      old, new = getattr(a, field, None), getattr(b, field, None)
      if isinstance(old, str):
        assert mapping.setdefault(old, new) == new
  renamed = {k: v for k, v in mapping.items() if k != v}
  # inner (a def), t (inner's) and v (the comprehension's) are not the function's own.
  assert set(renamed) == {"a", "b", "scale", "offset", "r", "err"}
  assert len(set(renamed.values())) == len(renamed)
  assert mapping["inner"] == "inner" and mapping["range"] == "range"


def test_reorder_only_swaps_independent_effect_free_assignments():
  rng = np.random.default_rng(0)
  assert aug.reorder_statements("def f(a):\n    b = a\n    c = b\n    return c\n", rng) is None
  assert aug.reorder_statements("def f():\n    a = g()\n    b = h()\n", rng) is None
  out = aug.reorder_statements("def f(x, y):\n    a = x + 1\n    b = y * 2\n    return a - b\n",
                               rng)
  assert out.split("\n")[1:3] == ["    b = y * 2", "    a = x + 1"]


def test_dead_code_is_unreachable_and_after_the_docstring():
  source, _ = SAMPLES["mean_var"]
  for seed in range(5):
    tree = ast.parse(aug.insert_dead_code(source, np.random.default_rng(seed)))
    body = tree.body[0].body
    assert isinstance(body[0], ast.Expr)  # the docstring stays first
    dead = [s for s in body if isinstance(s, ast.If) and isinstance(s.test, ast.Constant)]
    assert len(dead) == 1 and dead[0].test.value is False


def test_function_pairs_from_stdlib_source_all_parse():
  import json.decoder
  with open(json.decoder.__file__) as f:
    pairs = contrabert.function_pairs([f.read()])
  assert len(pairs) >= 5
  for original, variant in pairs:
    ast.parse(variant)
    assert original != variant


def test_single_row_is_cls_code_sep_padded():
  row = contrabert.single_row(np.array([7, 8, 9]), np.array([1, 0, 1], bool), cls_id=2,
                              sep_id=3, seq_len=8)
  assert list(row["tokens"]) == [2, 7, 8, 9, 3, 0, 0, 0]
  assert list(row["segment_ids"]) == [1] * 5 + [0] * 3
  assert list(row["positions"]) == [0, 1, 2, 3, 4, 0, 0, 0]
  cut = contrabert.single_row(np.arange(10, 20), np.ones(10, bool), cls_id=2, sep_id=3,
                              seq_len=8)
  assert list(cut["tokens"]) == [2, 10, 11, 12, 13, 14, 15, 3]


def test_contrabert_contrastive_term_matches_numpy(mlm_model):
  model, params = mlm_model
  batch = {k: jnp.concatenate([_mlm_batch(s)[k] for s in range(4)]) for k in _mlm_batch(0)}
  rows = [_clean_row(np.random.default_rng(10 + s), segments=((1, 9 + s),)) for s in range(4)]
  for k in ("tokens", "segment_ids", "positions"):
    batch[contrabert.VIEW + k] = jnp.asarray(np.stack([r[k] for r in rows]))
  config = contrabert_cfg.get_config("tiny")
  loss, m = jax.jit(functools.partial(OBJECTIVES.get("contrabert").loss_fn, model=model,
                                      config=config))(params, batch, None)
  encode = jax.jit(lambda tokens, segs, positions: model.bind(params)(
      tokens, positions=positions, mask=attention_mask("bidirectional", segment_ids=segs)))

  def pooled(tokens, segs, positions):
    h = np.asarray(encode(tokens, segs, positions), np.float64)
    valid = np.asarray(segs) > 0
    return np.stack([h[b][valid[b]].mean(0) for b in range(len(h))])

  a = pooled(batch["inputs"], batch["segment_ids"], batch["positions"])
  b = pooled(*(batch[contrabert.VIEW + k] for k in ("tokens", "segment_ids", "positions")))
  np.testing.assert_allclose(m["contrastive_loss"], np_info_nce(a, b, 0.07), rtol=1e-4)
  np.testing.assert_allclose(loss, m["mlm_loss"] + m["contrastive_loss"], rtol=1e-6)


# --- recipes -----------------------------------------------------------------------------


def _param_count(config) -> tuple[int, object]:
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))), abstract


def test_paper_sizes_build_abstractly_with_the_paper_param_counts():
  # BERT-base 110M (Devlin et al. 2018 §3); RoBERTa-base / CodeBERT 125M (Feng et al. 2020
  # §3.3, the model ContraBERT continues).
  count, _ = _param_count(starbucks_cfg.get_config("base"))
  assert abs(count / 110e6 - 1) < 0.02, count
  count, _ = _param_count(contrabert_cfg.get_config("base"))
  assert abs(count / 125e6 - 1) < 0.02, count
  # RetroMAE: the BERT-base encoder, plus one block of decoder dropped after pretraining.
  count, model = _param_count(retromae_cfg.get_config("base"))
  head = sum(x.size for x in jax.tree.leaves(nnx.state(model.heads, nnx.Param)))
  block = sum(x.size for x in jax.tree.leaves(nnx.state(model.stack.blocks[0], nnx.Param)))
  assert head == block
  assert abs((count - head) / 110e6 - 1) < 0.02, count


@pytest.mark.parametrize("recipe", ["retromae", "starbucks", "contrabert"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  args = ["--config.train.steps=12", "--config.train.log_every=4",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=12",
          "--config.optim.warmup_steps=3"]
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={tmp_path}",
                        *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert curve[-1] < curve[0] - 0.3, curve
  assert all(r["mfu"] > 0 for r in records if "loss" in r)


@pytest.mark.parametrize("recipe,args,expected", [
    ("retromae", ["--config.objective.decoder_mask_rate=1.2"],
     "objective.decoder_mask_rate=1.2: must be in (0, 1)"),
    ("retromae", ["--config.data.vocab_size=2048"], "data.vocab_size=2048: retromae keeps"),
    ("starbucks", ["--config.model.scan_layers=true"], "model.scan_layers must be false"),
    ("contrabert", ["--config.objective.contrastive_temperature=0"],
     "objective.contrastive_temperature=0.0: must be > 0"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, recipe, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={tmp_path}",
                        *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err
