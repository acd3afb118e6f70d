"""Encoder-decoder + T5 span corruption, and prefix LM on a non-causal decoder: host
transforms by their invariants, masks by hand, losses against NumPy, packing isolation,
paper sizes by parameter count, and both tiny recipes end to end through `pretrain.main`."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.base import KEY_DOCS, flatten_keys
from models.attention import attention_mask
from models.encoder_decoder import (EncoderDecoder, EncoderDecoderConfig,
                                    encoder_decoder_flops)
from models.transformer import TextTransformer, TransformerConfig
from objectives import prefix_lm
from objectives import span_corruption as sc
from objectives.base import DataInfo
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data.packing import pack_documents
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.key_data(jax.random.key(0))
VOCAB, EXTRA = 50, 10  # tokenizer ids 0..49, sentinels 50..59 (sentinel 0 = 59)
SEQ = 64
TRANSFORM = sc.SpanCorruption(seq_len=SEQ, noise_density=0.15, mean_span_length=3.0,
                              vocab_size=VOCAB, extra_ids=EXTRA)
ED_CFG = EncoderDecoderConfig(vocab_size=64, num_layers=1, dec_layers=1, d_model=16,
                              num_heads=2, d_ff=32, max_len=SEQ, init_std=0.5)
LM_CFG = TransformerConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                           max_len=SEQ, init_std=0.5)


def _rows(num: int, seed: int = 0, doc_lengths=(5, 60)) -> list[dict]:
  """Packed rows of random documents (ids 1..VOCAB-2, eos VOCAB-1), as the pipeline makes."""
  rng = np.random.default_rng(seed)
  docs = [rng.integers(1, VOCAB - 1, rng.integers(*doc_lengths)).astype(np.int32)
          for _ in range(num * SEQ // 10)]
  packed = pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, VOCAB - 1)
  return [{k: v[i] for k, v in packed.items()} for i in range(num)]


def _corrupt(row, seed):
  return TRANSFORM.random_map(row, np.random.default_rng(seed))


def _np_logits(params, hidden):
  table = np.asarray(params["embed"]["table"], np.float64)
  return np.asarray(hidden, np.float64) @ table.T + np.asarray(params["logits_bias"])


# --- span corruption: shapes and the host transform --------------------------------------


def test_corrupted_lengths_follow_the_t5_arithmetic():
  """K = round(L * 0.15) noise tokens in M = round(K / 3) spans: encoder L - K + M (kept
  tokens + one sentinel per span), targets K + M (a sentinel before each span)."""
  assert sc.corrupted_lengths(64, 0.15, 3.0) == (10, 3, 57, 13)
  assert sc.corrupted_lengths(512, 0.15, 3.0) == (77, 26, 461, 103)
  assert sc.corrupted_lengths(10, 0.15, 3.0) == (2, 1, 9, 3)  # at least one span


def _split_spans(tokens, segs):
  """{segment: [(sentinel, [tokens...]), ...]} of a target row."""
  spans = {}
  for tok, seg in zip(tokens, segs):
    if seg == 0:
      continue
    if tok >= VOCAB:
      spans.setdefault(seg, []).append((tok, []))
    else:
      spans[seg][-1][1].append(tok)
  return spans


def _reconstruct(out):
  """Each segment's input with every sentinel replaced by its span from the targets."""
  spans = _split_spans(out["targets"], out["target_segment_ids"])
  rows = {}
  for tok, seg in zip(out["inputs"], out["input_segment_ids"]):
    if tok < VOCAB:
      rows.setdefault(seg, []).append(tok)
      continue
    sentinel, span = spans[seg].pop(0)
    assert sentinel == tok  # the k-th sentinel of the inputs is the k-th of the targets
    rows.setdefault(seg, []).extend(span)
  assert all(not rest for rest in spans.values())  # every target span was used
  return rows


@pytest.mark.parametrize("seed", range(20))
def test_span_corruption_counts_and_reconstruction(seed):
  """Exactly K noise tokens in M spans; both outputs fill their static shapes; putting the
  target spans back at their sentinels restores each document piece of the clean row;
  sentinels count up from the top id in each segment; positions restart per segment."""
  row = _rows(1, seed)[0]
  out = _corrupt(row, seed)
  assert [len(out[k]) for k in ("inputs", "targets")] == [57, 13]
  assert (out["input_segment_ids"] > 0).all() and (out["target_segment_ids"] > 0).all()
  is_sentinel = out["targets"] >= VOCAB
  assert is_sentinel.sum() == 3 and (~is_sentinel).sum() == 10
  assert (out["inputs"] >= VOCAB).sum() == 3
  rows = _reconstruct(out)
  for seg in np.unique(row["segment_ids"]):
    np.testing.assert_array_equal(rows[seg], row["tokens"][row["segment_ids"] == seg])
  for seg, spans in _split_spans(out["targets"], out["target_segment_ids"]).items():
    assert [s for s, _ in spans] == list(range(VOCAB + EXTRA - 1, VOCAB + EXTRA - 1 - len(spans), -1))
  for key in ("input", "target"):
    segs, pos = out[f"{key}_segment_ids"], out[f"{key}_positions"]
    for seg in np.unique(segs):
      np.testing.assert_array_equal(pos[segs == seg], np.arange((segs == seg).sum()))


def test_span_corruption_noise_rate_and_span_lengths_over_many_rows():
  """Over many rows every span stays inside one document, the noise fraction is
  round(64 * 0.15) / 64 and the mean span length is K / M = 10 / 3."""
  lengths = []
  for i, row in enumerate(_rows(200, seed=1)):
    spans = _split_spans(*(_corrupt(row, i)[k] for k in ("targets", "target_segment_ids")))
    lengths += [len(span) for seg_spans in spans.values() for _, span in seg_spans]
  assert len(lengths) == 200 * 3 and sum(lengths) == 200 * 10
  assert min(lengths) >= 1 and max(lengths) > 3


def test_span_corruption_is_deterministic_in_the_rng():
  row = _rows(1)[0]
  a, b, c = _corrupt(row, 5), _corrupt(row, 5), _corrupt(row, 6)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_span_corruption_rows_of_tiny_documents_keep_static_shapes():
  """When spans cannot all fit between document boundaries, the left-out spans' tokens stay
  in the input and the row's last kept tokens are discarded: shapes stay static, the
  targets are padded, and what remains reconstructs to the clean row minus those tokens."""
  segs = np.repeat(np.arange(1, 33), 2).astype(np.int32)  # 32 documents of 2 tokens
  row = {"tokens": np.arange(1, 65, dtype=np.int32) % (VOCAB - 1) + 1, "segment_ids": segs}
  for seed in range(10):
    out = _corrupt(row, seed)
    assert [len(out[k]) for k in ("inputs", "targets")] == [57, 13]
    assert (out["input_segment_ids"] > 0).all()
    # 10 noise tokens in 3 spans always has a span of >= 4, which no 2-token document holds.
    assert (out["target_segment_ids"] == 0).any()
    rows = _reconstruct(out)
    remaining = iter(row["tokens"])
    assert all(any(t == r for r in remaining)
               for s in sorted(rows) for t in rows[s])  # an ordered subsequence


def test_shift_right_restarts_each_segment():
  targets = jnp.array([[59, 7, 8, 58, 9, 59, 4, 0]])
  segs = jnp.array([[1, 1, 1, 1, 1, 3, 3, 0]])
  want = [[0, 59, 7, 8, 58, 0, 59, 0]]
  np.testing.assert_array_equal(sc.shift_right(targets, segs, 0), want)


# --- encoder-decoder model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def seq2seq():
  """Tiny EncoderDecoder with a random logits bias, a corrupted batch of two packed rows,
  and a jitted decoder-hidden function and span-corruption loss."""
  model, params = build(EncoderDecoder, ED_CFG)
  params["logits_bias"] = jnp.asarray(np.random.default_rng(1).normal(size=64), jnp.float32)
  outs = [_corrupt(row, i) for i, row in enumerate(_rows(2, seed=3))]
  batch = {k: np.stack([o[k] for o in outs]) for k in outs[0]}

  @jax.jit
  def hidden(p, b):
    dec = sc.shift_right(b["targets"], b["target_segment_ids"], 0)
    return model.bind(p)(b["inputs"], dec, enc_segment_ids=b["input_segment_ids"],
                         dec_segment_ids=b["target_segment_ids"],
                         enc_positions=b["input_positions"],
                         dec_positions=b["target_positions"])

  config = ml_collections.ConfigDict()
  loss = jax.jit(functools.partial(sc.SpanCorruptionLM().loss_fn, model=model, config=config))
  return {"params": params, "batch": batch, "hidden": hidden, "loss": loss}


def test_span_corruption_loss_matches_numpy(seq2seq):
  """loss = mean NumPy cross-entropy of the tied logits of the decoder states over the
  target tokens (padding weight 0); accuracy likewise."""
  params, batch = seq2seq["params"], dict(seq2seq["batch"])
  batch["target_segment_ids"] = batch["target_segment_ids"].copy()
  batch["target_segment_ids"][1, -4:] = 0  # some padding, which must not count
  logits = _np_logits(params, seq2seq["hidden"](params, batch))
  targets, weights = batch["targets"], batch["target_segment_ids"] > 0
  want = np_cross_entropy(logits, targets)[weights].mean()
  want_acc = (logits.argmax(-1) == targets)[weights].mean()
  loss, metrics = seq2seq["loss"](params, batch, RNG)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)


def test_decoder_sees_only_its_own_segment_and_the_past(seq2seq):
  """A decoder segment's states change with its own encoder segment, not with another
  segment's encoder or decoder tokens, and never with later decoder tokens."""
  params, batch = seq2seq["params"], seq2seq["batch"]
  base = np.asarray(seq2seq["hidden"](params, batch))
  dec_segs, enc_segs = batch["target_segment_ids"], batch["input_segment_ids"]
  seg = dec_segs[0, 0]

  def changed(**where):
    b = dict(batch)
    for key, mask in where.items():
      b[key] = np.where(mask, (batch[key] + 1) % VOCAB + 1, batch[key])
    return np.asarray(seq2seq["hidden"](params, b))

  mine = dec_segs == seg
  others = changed(inputs=enc_segs != seg, targets=dec_segs != seg)
  np.testing.assert_allclose(others[mine], base[mine], rtol=1e-6, atol=1e-6)
  assert not np.allclose(changed(inputs=enc_segs == seg)[mine], base[mine])
  later = changed(targets=np.arange(dec_segs.shape[1]) >= 4)  # the shift makes 4 feed 5
  np.testing.assert_allclose(later[:, :5], base[:, :5], rtol=1e-6, atol=1e-6)
  assert not np.allclose(later[:, 5:], base[:, 5:])


def test_encoder_decoder_flops_hand_count():
  """Encoder 1 layer x 10 tokens, decoder 1 layer x 4 tokens, D=16, F=32, V=64."""
  enc = 10 * (8 * 256 + 4 * 10 * 16 + 4 * 16 * 32)
  dec = 4 * (8 * 256 + 4 * 2 * 16 + 4 * 16 * 32)
  cross = 10 * 4 * 256 + 4 * (4 * 256 + 4 * 10 * 16)
  logits = 4 * 2 * 16 * 64
  got = encoder_decoder_flops(ED_CFG, enc_len=10, dec_len=4, enc_attended=10, dec_attended=2)
  assert got == enc + dec + cross + logits


# --- prefix LM ---------------------------------------------------------------------------


def test_attention_mask_segment_prefix_by_hand():
  """Causal plus the flagged prefix keys, per packed segment; padding sees nothing."""
  got = attention_mask("segment_prefix", segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 0]]),
                       is_prefix=jnp.array([[1, 1, 0, 1, 0, 0, 0]], bool))
  want = np.array([[1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0, 0],
                   [0, 0, 0, 1, 0, 0, 0],
                   [0, 0, 0, 1, 1, 0, 0],
                   [0, 0, 0, 1, 1, 1, 0],
                   [0, 0, 0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(got[0, 0], want)
  with pytest.raises(ValueError, match="is_prefix"):
    attention_mask("segment_prefix", length=4)


def test_segment_prefix_draws_a_leading_split_per_segment():
  """Each segment of n >= 2 tokens gets a prefix of 1..n-1 leading tokens, every length
  turns up, a one-token segment is all prefix, padding none; deterministic in the rng."""
  segs = np.array([1] * 5 + [2] + [3] * 3 + [0] * 2, np.int32)
  seen = set()
  for seed in range(100):
    flags = prefix_lm.segment_prefix(segs, np.random.default_rng(seed))
    p1, p3 = flags[:5].sum(), flags[6:9].sum()
    assert flags[:p1].all() and flags[6:6 + p3].all() and flags[5] and not flags[9:].any()
    assert 1 <= p1 <= 4 and 1 <= p3 <= 2 and flags.sum() == p1 + 1 + p3
    seen.add(p1)
  assert seen == {1, 2, 3, 4}
  np.testing.assert_array_equal(prefix_lm.segment_prefix(segs, np.random.default_rng(3)),
                                prefix_lm.segment_prefix(segs, np.random.default_rng(3)))


SEGS = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1] * 8], np.int32)
POS = np.array([[0, 1, 2, 3, 0, 1, 2, 0], list(range(8))], np.int32)
PREFIX = np.array([[1, 1, 0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], bool)
TOKENS = np.array([[5, 6, 7, 8, 9, 10, 11, 0], [12, 13, 14, 15, 16, 17, 18, 19]], np.int32)
# Predictions: the token after each position, only where that token is past the prefix.
WANT_WEIGHTS = np.array([[0, 1, 1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0]], np.float32)


def test_prefix_lm_targets_by_hand():
  targets, weights = prefix_lm.prefix_lm_targets(jnp.asarray(TOKENS), jnp.asarray(SEGS),
                                                 jnp.asarray(PREFIX))
  np.testing.assert_array_equal(weights, WANT_WEIGHTS)
  np.testing.assert_array_equal(np.asarray(targets)[:, :-1], TOKENS[:, 1:])


@pytest.fixture(scope="module")
def prefix_model():
  model, params = build(TextTransformer, LM_CFG)
  params["logits_bias"] = jnp.asarray(np.random.default_rng(1).normal(size=64), jnp.float32)
  hidden = jax.jit(lambda p, tokens, prefix: model.bind(p)(
      tokens, positions=POS, mask=attention_mask("segment_prefix", segment_ids=SEGS,
                                                 is_prefix=prefix)))
  loss = jax.jit(functools.partial(prefix_lm.PrefixLM().loss_fn, model=model,
                                   config=ml_collections.ConfigDict()))
  return params, hidden, loss


def _prefix_batch(tokens):
  return {"tokens": tokens, "segment_ids": SEGS, "positions": POS, "is_prefix": PREFIX}


def test_prefix_lm_loss_matches_numpy(prefix_model):
  params, hidden, loss_fn = prefix_model
  logits = _np_logits(params, hidden(params, TOKENS, PREFIX))
  targets = np.concatenate([TOKENS[:, 1:], np.zeros((2, 1), np.int32)], 1)
  w = WANT_WEIGHTS.astype(bool)
  loss, metrics = loss_fn(params, _prefix_batch(TOKENS), RNG)
  np.testing.assert_allclose(loss, np_cross_entropy(logits, targets)[w].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == targets)[w].mean(),
                             rtol=1e-6)


def test_prefix_is_bidirectional_and_packed_segments_are_isolated(prefix_model):
  """Row 0: changing segment 2 leaves segment 1 unchanged; a later prefix token changes an
  earlier prefix state; a target token never changes an earlier state."""
  params, hidden, _ = prefix_model
  base = np.asarray(hidden(params, TOKENS, PREFIX))

  def run_with(index, row=0):
    tokens = TOKENS.copy()
    tokens[row, index] = 30
    return np.asarray(hidden(params, tokens, PREFIX))

  other = run_with([4, 5, 6])
  np.testing.assert_allclose(other[0, :4], base[0, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(other[0, 4:7], base[0, 4:7])
  assert not np.allclose(run_with(1)[0, 0], base[0, 0])  # prefix: 0 sees 1
  target = run_with(3, row=1)  # row 1's first non-prefix token
  np.testing.assert_allclose(target[1, :3], base[1, :3], rtol=1e-6, atol=1e-6)
  assert not np.allclose(target[1, 3:], base[1, 3:])


# --- recipes -----------------------------------------------------------------------------

RECIPES = [("t5", v) for v in ("tiny", "small", "base", "large")] + [
    ("prefix_lm", v) for v in ("tiny", "xl")]


def _load(recipe, variant):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", f"{recipe}.py:{variant}"))


@pytest.mark.parametrize("recipe,variant", RECIPES)
def test_recipes_validate_and_every_key_is_documented(recipe, variant):
  config = _load(recipe, variant)
  config_lib.validate(config, num_devices=1)
  assert not [k for k in flatten_keys(config) if k not in KEY_DOCS]


# Raffel et al. 2020 §3.1.1 / §3.7: ~60M, ~220M, ~770M. The count of large's stated shape
# (24+24 layers, d_model 1024, d_ff 4096, 16 x 64 heads, vocab 32,128 = 32,000 + 100 extra
# ids padded like T5's checkpoints) is 737.5M weights, 4% under its headline "~770M";
# large is compared with that count. Ours adds the norm scales and the relative bias tables.
def _t5_weights(layers, d, d_ff, vocab=32128):
  return vocab * d + layers * (4 * d * d + 2 * d * d_ff) + layers * (8 * d * d + 2 * d * d_ff)


@pytest.mark.parametrize("variant,paper", [("small", 60e6), ("base", 220e6),
                                           ("large", _t5_weights(24, 1024, 4096))])
def test_t5_paper_sizes_build_abstractly_with_the_paper_param_count(variant, paper):
  config = _load("t5", variant)
  builder = MODELS.get("encoder_decoder")
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert cfg.vocab_size == 32128
  assert abs(count / paper - 1) < 0.02, (variant, count)


@pytest.mark.parametrize("args,expected", [
    (["--config.objective.noise_density=0.6"], "objective.noise_density=0.6: must be in"),
    (["--config.model.extra_ids=2"], "needs 3 sentinels per row but model.extra_ids=2"),
    (["--config.model.scan_layers=true"], "does not support scan_layers"),
])
def test_bad_span_corruption_settings_are_one_line_errors(tmp_path, capsys, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/t5.py:tiny", f"--workdir={tmp_path}/r", *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


# --- end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["configs/t5.py:tiny", "configs/prefix_lm.py:tiny"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  path, variant = recipe.split(":")
  args = ["--config.train.steps=40", "--config.train.log_every=5",
          "--config.train.checkpoint_every=40"]
  assert main_lib.main([f"--config={os.path.join(ROOT, path)}:{variant}",
                        f"--workdir={tmp_path}", *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert all(r["mfu"] > 0 and "accuracy" in r for r in records if "loss" in r)
  assert any("eval_loss" in r for r in records)
