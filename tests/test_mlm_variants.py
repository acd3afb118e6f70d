"""BIOptimus masking curriculum, DrBERT, UniXcoder modes and ERNIE 3.0 branches: host
transforms by their invariants and statistics, losses against NumPy (float64), masks and
packing isolation, the DrBERT encoder export, paper sizes by parameter count, and each tiny
recipe end to end through `pretrain.main`."""
from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from models.attention import attention_mask
from models.drbert import DrBert, DrBertConfig, encoder_params
from models.multi_branch import MultiBranchConfig, MultiBranchTransformer
from models.transformer import TextTransformer, TransformerConfig, stack_flops_per_token
from objectives import drbert, ernie3, mlm, unixcoder
from objectives.base import DataInfo
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data.packing import pack_documents
from pretrain.data.pipeline import make_iterator
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.key_data(jax.random.key(0))
VOCAB, MASK_ID, EOS = 50, 3, 49  # tokenizer ids 0..49; specials 0..4 and eos 49
SPECIAL = (0, 1, 2, 3, 4, EOS)
SEQ = 64
INFO = DataInfo(seq_len=SEQ, vocab_size=VOCAB, mask_id=MASK_ID, special_ids=SPECIAL)


def _rows(num: int, seed: int = 0, doc_lengths=(5, 60), piece_p: float = 0.3) -> list[dict]:
  """Packed rows of random documents (ids 5..48) whose words are 1-3 pieces long."""
  rng = np.random.default_rng(seed)
  docs = [rng.integers(5, EOS, rng.integers(*doc_lengths)).astype(np.int32)
          for _ in range(num * SEQ // 10)]
  starts = [rng.random(len(d)) > piece_p for d in docs]
  packed = pack_documents(docs, starts, SEQ, EOS)
  return [{k: v[i] for k, v in packed.items()} for i in range(num)]


def _objective_config(**objective) -> ml_collections.ConfigDict:
  objective = {**dict(mask_rate=0.15, replace_mask=0.8, replace_random=0.1,
                      whole_word=False), **objective}
  return ml_collections.ConfigDict({"objective": objective, "train": {"global_batch": 4},
                                    "model": {"extra_ids": 3}})


def _np_logits(table, bias, hidden):
  return (np.asarray(hidden, np.float64) @ np.asarray(table, np.float64).T
          + np.asarray(bias, np.float64))


def _np_mean(values, weights):
  weights = np.asarray(weights, np.float64)
  return (values * weights).sum() / max(weights.sum(), 1.0)


def _stack(outs):
  return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def _param_count(recipe, variant):
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", f"{recipe}.py:{variant}"))
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  return cfg, {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}


# --- BIOptimus: masking strategies and the curriculum ------------------------------------


def test_span_lengths_follow_spanbert():
  """Geometric(0.2) truncated to 1..10: SpanBERT's mean span length of 3.8 words."""
  draws = mlm.span_lengths(np.random.default_rng(0), 200_000)
  p = mlm.SPAN_P
  pmf = np.array([p * (1 - p) ** (k - 1) for k in range(1, 11)]) / (1 - (1 - p) ** 10)
  want_mean = sum(k * q for k, q in zip(range(1, 11), pmf))
  assert abs(want_mean - 3.8) < 0.05 and draws.min() == 1 and draws.max() == 10
  np.testing.assert_allclose(np.bincount(draws, minlength=11)[1:] / len(draws), pmf, atol=3e-3)


def _masking(strategy, rate=0.15):
  return mlm.MlmMasking(mask_rate=rate, replace_mask=0.8, replace_random=0.1,
                        strategy=strategy, mask_id=MASK_ID, vocab_size=VOCAB,
                        special_ids=SPECIAL, seq_len=SEQ)


def _runs_in_words(chosen: np.ndarray, words: np.ndarray) -> list[int]:
  """Lengths in words of the maximal runs of consecutive chosen positions."""
  edges = np.diff(np.concatenate([[0], chosen.astype(int), [0]]))
  return [len(np.unique(words[a:b])) for a, b in zip(np.flatnonzero(edges == 1),
                                                     np.flatnonzero(edges == -1))]


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_span_masking_takes_runs_of_whole_words(strategy):
  """Span masking: only candidates, whole words, the rate met, and runs of several words
  (mean > 2.5, where whole-word masking's runs average under 1.5 words)."""
  masking, rows = _masking(strategy, 0.3), _rows(60, seed=1)
  runs, chosen_total, candidates = [], 0, 0
  for i, row in enumerate(rows):
    out = masking.random_map(row, np.random.default_rng(i))
    n = int(out["masked_weights"].sum())
    chosen = np.zeros(SEQ, bool)
    chosen[out["masked_positions"][:n]] = True
    candidate = (row["segment_ids"] > 0) & ~np.isin(row["tokens"], SPECIAL)
    words = mlm.word_ids(row["word_start"], row["segment_ids"])
    assert candidate[chosen].all()
    per_word = np.bincount(words, weights=chosen)
    size = np.bincount(words, weights=candidate)
    assert not ((per_word > 0) & (per_word < size)).any()  # whole words only
    runs += _runs_in_words(chosen, words)
    chosen_total, candidates = chosen_total + n, candidates + candidate.sum()
  assert abs(chosen_total / candidates - 0.3) < 0.03
  mean_run = np.mean(runs)
  assert (mean_run > 2.5) if strategy == "span" else (mean_run < 1.5), mean_run


def test_masking_phases_and_the_phase_at_a_step():
  """The base phase from step 0; a curriculum entry replaces it from its start step on (one
  at step 0 replaces the base); slots fit the highest rate of any phase."""
  config = _objective_config(curriculum=((10, "whole_word", 0.2), (20, "span", 0.4)))
  assert mlm.masking_phases(config.objective) == [
      (0, "token", 0.15), (10, "whole_word", 0.2), (20, "span", 0.4)]
  assert mlm.max_slots(config, SEQ) == mlm.num_predictions(SEQ, 0.4)
  transform = mlm.MaskedLM().host_transform(config, INFO)
  assert [transform.phase(s) for s in (0, 9, 10, 19, 20, 10**6)] == [0, 0, 1, 1, 2, 2]
  assert [m.strategy for m in transform.maskings] == ["token", "whole_word", "span"]
  assert {m.slots for m in transform.maskings} == {mlm.num_predictions(SEQ, 0.4)}
  at_zero = _objective_config(curriculum=((0, "span", 0.3),))
  assert mlm.masking_phases(at_zero.objective) == [(0, "span", 0.3)]
  assert isinstance(mlm.MaskedLM().host_transform(at_zero, INFO), mlm.MlmMasking)


@pytest.mark.parametrize("phase,message", [
    ((5, "spans", 0.2), "objective.curriculum[0]=(5, 'spans', 0.2)"),
    ((5, "span", 1.5), "rate in (0, 1)"),
    ((-1, "span", 0.2), "start_step >= 0"),
    ((5, "span"), "objective.curriculum[0]=(5, 'span')"),
])
def test_bad_curriculum_is_a_value_error_naming_the_key(phase, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    mlm.MaskedLM().validate(_objective_config(curriculum=(phase,)))


def test_curriculum_follows_the_step_and_a_resume_masks_the_same():
  """Through the real pipeline (global batch 4): batches 0-2 mask at 10%, from step 3 on at
  50%; an iterator restored at global batch 3 yields exactly the batches 3-5 of the run."""
  config = _objective_config(mask_rate=0.1, curriculum=((3, "token", 0.5),))
  transform = mlm.MaskedLM().host_transform(config, INFO)
  source = _rows(10, seed=2)

  def iterator():
    return make_iterator(source, transform, seed=0, global_batch=4, process_index=0,
                         process_count=1, num_threads=1)

  run = iterator()
  batches = [next(run) for _ in range(6)]
  rates = [b["masked_weights"].sum() / (b["segment_ids"] > 0).sum() for b in batches]
  assert all(r < 0.13 for r in rates[:3]) and all(r > 0.4 for r in rates[3:]), rates
  assert "example_index" not in batches[0]
  resumed = iterator()
  resumed.set_state(run.get_state() | {"global_batches": 3})
  for want in batches[3:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


# --- DrBERT ------------------------------------------------------------------------------

DR_CFG = DrBertConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                      max_len=SEQ, init_std=0.5, mlm_decoder_layers=2)


@pytest.fixture(scope="module")
def drbert_model():
  model, params = build(DrBert, DR_CFG)
  params["encoder"]["logits_bias"] = jnp.asarray(
      np.random.default_rng(1).normal(size=64), jnp.float32)
  masking = _masking("token")
  batch = _stack([masking.random_map(r, np.random.default_rng(i))
                  for i, r in enumerate(_rows(2, seed=3))])
  return model, params, batch


def test_drbert_loss_matches_numpy(drbert_model):
  """Loss = mean NumPy cross-entropy of the tied logits of the *decoder* states at the
  masked positions (so the decoder is on the path)."""
  model, params, batch = drbert_model
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  net = model.bind(params)
  refined = np.asarray(net(batch["inputs"], mask=mask, positions=batch["positions"]))
  encoded = np.asarray(net.encoder(batch["inputs"], mask=mask, positions=batch["positions"]))
  assert not np.allclose(refined, encoded)
  picked = np.take_along_axis(refined, batch["masked_positions"][..., None], 1)
  logits = _np_logits(params["encoder"]["embed"]["table"], params["encoder"]["logits_bias"],
                      picked)
  want = _np_mean(np_cross_entropy(logits, batch["masked_ids"]), batch["masked_weights"])
  loss, _ = jax.jit(functools.partial(drbert.DrBertMLM().loss_fn, model=model,
                                      config=ml_collections.ConfigDict()))(params, batch, RNG)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_drbert_export_is_a_plain_bert_encoder(drbert_model):
  """The exported tree has no decoder params, is exactly a TextTransformer's tree, and a
  TextTransformer holding it gives the DrBERT encoder's hidden states."""
  model, params, batch = drbert_model
  exported = encoder_params(params)
  paths = ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(exported)[0]]
  assert not [p for p in paths if "decoder" in p]
  plain_def, plain_params = build(TextTransformer, DR_CFG.encoder)
  assert jax.tree.structure(plain_params) == jax.tree.structure(exported)
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  want = model.bind(params).encoder(batch["inputs"], mask=mask, positions=batch["positions"])
  got = plain_def.bind(exported)(batch["inputs"], mask=mask, positions=batch["positions"])
  np.testing.assert_array_equal(got, want)
  total = sum(x.size for x in jax.tree.leaves(params))
  decoder = sum(x.size for x in jax.tree.leaves(params["mlm_decoder"]))
  assert sum(x.size for x in jax.tree.leaves(exported)) == total - decoder


def test_drbert_flops_add_the_decoder_blocks():
  config = _objective_config()
  mlm_flops = mlm.MaskedLM().forward_flops_per_example(config, INFO, DR_CFG)
  got = drbert.DrBertMLM().forward_flops_per_example(config, INFO, DR_CFG)
  assert got == mlm_flops + SEQ * stack_flops_per_token(DR_CFG.block, 2, SEQ)


# --- UniXcoder ---------------------------------------------------------------------------


def test_insert_mode_token_by_hand():
  """A mode token before each segment (position 0, the segment's id, a word start); the
  rest shifts right by one and the row drops its last tokens; padding stays padding."""
  example = {"tokens": np.array([5, 6, 7, 8, 9, 10, 0, 0]),
             "segment_ids": np.array([1, 1, 1, 2, 2, 2, 0, 0]),
             "positions": np.array([0, 1, 2, 0, 1, 2, 0, 0]),
             "word_start": np.array([1, 0, 1, 1, 1, 0, 0, 0], bool)}
  row = unixcoder.insert_mode_token(example, 99)
  np.testing.assert_array_equal(row["tokens"], [99, 5, 6, 7, 99, 8, 9, 10])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3, 0, 1, 2, 3])
  np.testing.assert_array_equal(row["word_start"], [1, 1, 0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(row["is_mode"], [1, 0, 0, 0, 1, 0, 0, 0])


UNIX = unixcoder.UniXcoder()
UNIX_CONFIG = _objective_config(mode_probs=(0.5, 0.3, 0.2), contrastive_weight=0.0,
                                contrastive_temperature=0.05)


def test_unixcoder_modes_by_their_invariants():
  """Per mode: the mode id at every segment start; [ENC] all-prefix with MLM slots never on
  a mode token; [DEC] no prefix, no MLM slots, inputs clean; [E2D] a leading prefix per
  segment of the mode token and >= 1 more token, the rest not. Mode frequencies follow
  mode_probs; static shapes; the same rng gives the same output."""
  transform = UNIX.host_transform(UNIX_CONFIG, INFO)
  rows, counts = _rows(8, seed=4), np.zeros(3)
  slots = mlm.num_predictions(SEQ, 0.15)
  for seed in range(600):
    row = rows[seed % len(rows)]
    out = transform.random_map(row, np.random.default_rng(seed))
    mode, segs = int(out["mode"]), out["segment_ids"]
    counts[mode] += 1
    assert out["masked_positions"].shape == (slots,) and out["tokens"].shape == (SEQ,)
    starts = unixcoder.segment_starts(segs)
    assert (out["tokens"][starts] == VOCAB + mode).all()
    assert (np.isin(out["tokens"], VOCAB + np.arange(3)).sum() == len(starts))
    chosen = out["masked_positions"][out["masked_weights"] > 0]
    if mode == unixcoder.ENC:
      np.testing.assert_array_equal(out["is_prefix"], segs > 0)
      assert len(chosen) and (out["tokens"][chosen] < VOCAB).all()
    else:
      assert not len(chosen)
      np.testing.assert_array_equal(out["inputs"], out["tokens"])
    if mode == unixcoder.DEC:
      assert not out["is_prefix"].any()
    if mode == unixcoder.E2D:
      for start, end in zip(starts, np.append(starts[1:], SEQ)):
        flags = out["is_prefix"][start:end]
        p = flags.sum()
        assert flags[:p].all() and not flags[p:].any() and (p >= 2 or end - start < 2)
  np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.06)
  a = transform.random_map(rows[0], np.random.default_rng(7))
  b = transform.random_map(rows[0], np.random.default_rng(7))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


LM_CFG = TransformerConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                           max_len=SEQ, init_std=0.5)


@pytest.fixture(scope="module")
def unix_model():
  """A tiny transformer over 53 ids (50 + 3 mode tokens) and one row in each mode."""
  model, params = build(TextTransformer, LM_CFG)
  params["logits_bias"] = jnp.asarray(np.random.default_rng(1).normal(size=64), jnp.float32)
  transform = UNIX.host_transform(UNIX_CONFIG, INFO)
  outs, seed, rows = {}, 0, _rows(3, seed=5)
  while len(outs) < 3:
    out = transform.random_map(rows[len(outs)], np.random.default_rng(seed))
    outs.setdefault(int(out["mode"]), out)
    seed += 1
  batch = _stack([outs[m] for m in range(3)])
  hidden = jax.jit(lambda p, tokens: model.bind(p)(
      tokens, positions=batch["positions"], mask=attention_mask(
          "segment_prefix", segment_ids=batch["segment_ids"], is_prefix=batch["is_prefix"])))
  return model, params, batch, hidden


def test_unixcoder_loss_matches_numpy(unix_model):
  """Loss = [ENC] MLM cross-entropy at its slots + [DEC] next-token cross-entropy + [E2D]
  cross-entropy of the tokens past each prefix, each a mean over its own predictions."""
  model, params, batch, hidden = unix_model
  h = np.asarray(hidden(params, batch["inputs"]), np.float64)
  logits = _np_logits(params["embed"]["table"], params["logits_bias"], h)
  picked = np.take_along_axis(logits[0], batch["masked_positions"][0][:, None], 0)
  enc = _np_mean(np_cross_entropy(picked, batch["masked_ids"][0]), batch["masked_weights"][0])
  tokens, segs, prefix = batch["tokens"], batch["segment_ids"], batch["is_prefix"]
  lm = {}
  for row in (1, 2):
    t = np.arange(SEQ - 1)
    keep = (segs[row, t] > 0) & (segs[row, t + 1] == segs[row, t]) & ~prefix[row, t + 1]
    lm[row] = np_cross_entropy(logits[row, t], tokens[row, t + 1])[keep].mean()
  loss, metrics = jax.jit(functools.partial(UNIX.loss_fn, model=model, config=UNIX_CONFIG))(
      params, batch, RNG)
  np.testing.assert_allclose([metrics["enc_loss"], metrics["dec_loss"], metrics["e2d_loss"]],
                             [enc, lm[1], lm[2]], rtol=1e-5)
  np.testing.assert_allclose(loss, enc + lm[1] + lm[2], rtol=1e-5)


def test_unixcoder_masks_per_mode_and_packed_segments_isolated(unix_model):
  """Changing a row's second segment leaves its first segment's states alone in every mode;
  a later token changes earlier states under [ENC] but never under [DEC]."""
  _, params, batch, hidden = unix_model
  base = np.asarray(hidden(params, batch["inputs"]))
  segs = batch["segment_ids"]
  for row in range(3):
    assert segs[row].max() >= 2, "the fixture rows must hold two segments"
    tokens = batch["inputs"].copy()
    second = segs[row] == 2
    tokens[row, second] = 7
    changed = np.asarray(hidden(params, tokens))
    first = segs[row] == 1
    np.testing.assert_allclose(changed[row, first], base[row, first], atol=1e-6)
  for row, sees_later in ((unixcoder.ENC, True), (unixcoder.DEC, False)):
    tokens = batch["inputs"].copy()
    tokens[row, 5] = 8 if tokens[row, 5] != 8 else 9
    changed = np.asarray(hidden(params, tokens))
    assert np.allclose(changed[row, :5], base[row, :5], atol=1e-6) != sees_later



def test_unixcoder_contrastive_views_and_loss_match_numpy(unix_model):
  """With contrastive_weight, every row also comes as two independently masked [ENC] copies
  (only MLM positions differ from the [ENC] row, never padding or mode tokens), and the loss
  gains the weighted symmetric InfoNCE of their mean-pooled bidirectional encodings."""
  model, params, _, _ = unix_model
  config = _objective_config(mode_probs=(0.5, 0.3, 0.2), contrastive_weight=0.5,
                             contrastive_temperature=0.1)
  transform = UNIX.host_transform(config, INFO)
  rows = _rows(4, seed=6)
  outs = [transform.random_map(row, np.random.default_rng(i)) for i, row in enumerate(rows)]
  for row, out in zip(rows, outs):
    enc = unixcoder.insert_mode_token(row, VOCAB + unixcoder.ENC)
    assert out["views"].shape == (2, SEQ) and out["views"].dtype == np.int32
    np.testing.assert_array_equal(out["view_segment_ids"], enc["segment_ids"])
    np.testing.assert_array_equal(out["view_positions"], enc["positions"])
    changed = out["views"] != enc["tokens"]
    assert changed.any(1).all() and not np.array_equal(*out["views"])
    assert not changed[:, (enc["segment_ids"] == 0) | enc["is_mode"]].any()
  batch = _stack(outs)
  loss, metrics = jax.jit(functools.partial(UNIX.loss_fn, model=model, config=config))(
      params, batch, RNG)
  segs = batch["view_segment_ids"]
  encode = jax.jit(lambda p, tokens: model.bind(p)(
      tokens, positions=batch["view_positions"],
      mask=attention_mask("bidirectional", segment_ids=segs)))
  real = (segs > 0)[..., None]
  pooled = []
  for v in range(2):
    h = np.asarray(encode(params, batch["views"][:, v]), np.float64)
    mean = (h * real).sum(1) / real.sum(1)
    pooled.append(mean / np.linalg.norm(mean, axis=-1, keepdims=True))
  sim = pooled[0] @ pooled[1].T / 0.1
  pairs = np.arange(len(rows))
  want = 0.5 * (np_cross_entropy(sim, pairs).mean() + np_cross_entropy(sim.T, pairs).mean())
  np.testing.assert_allclose(metrics["contrastive_loss"], want, rtol=1e-5)
  modes = metrics["enc_loss"] + metrics["dec_loss"] + metrics["e2d_loss"]
  np.testing.assert_allclose(loss, modes + 0.5 * want, rtol=1e-5)

# --- ERNIE 3.0 ---------------------------------------------------------------------------

MB_CFG = MultiBranchConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                           max_len=SEQ, init_std=0.5, branch_layers=1, branch_d_model=8,
                           branch_heads=2, branch_d_ff=16)
ERNIE = ernie3.Ernie3()


@pytest.fixture(scope="module")
def ernie_model():
  model, params = build(MultiBranchTransformer, MB_CFG)
  params["backbone"]["logits_bias"] = jnp.asarray(
      np.random.default_rng(1).normal(size=64), jnp.float32)
  transform = ERNIE.host_transform(_objective_config(), INFO)
  batch = _stack([transform.random_map(r, np.random.default_rng(i))
                  for i, r in enumerate(_rows(2, seed=6))])

  @functools.partial(jax.jit, static_argnames=("branch", "kind"))
  def states(p, tokens, branch, kind):
    return model.bind(p)(tokens, branch=branch, positions=batch["positions"],
                         mask=attention_mask(kind, segment_ids=batch["segment_ids"]))

  return model, params, batch, states


def test_ernie3_host_transform_adds_the_clean_row():
  """The MLM outputs plus the clean tokens; a curriculum's index request passes through."""
  row = _rows(1, seed=7)[0]
  out = ERNIE.host_transform(_objective_config(), INFO).random_map(
      row, np.random.default_rng(0))
  np.testing.assert_array_equal(out["tokens"], row["tokens"])
  chosen = out["masked_positions"][out["masked_weights"] > 0]
  untouched = np.setdiff1d(np.arange(SEQ), chosen)
  np.testing.assert_array_equal(out["inputs"][untouched], row["tokens"][untouched])
  curriculum = ERNIE.host_transform(_objective_config(curriculum=((5, "span", 0.3),)), INFO)
  assert curriculum.wants_example_index


def test_ernie3_loss_matches_numpy(ernie_model):
  """Loss = MLM cross-entropy of the AE branch (bidirectional) at the masked slots + next-
  token cross-entropy of the AR branch (causal, clean row), both read out through the
  backbone's tied embedding after the branch's up-projection."""
  model, params, batch, states = ernie_model
  table, bias = params["backbone"]["embed"]["table"], params["backbone"]["logits_bias"]
  ae = np.asarray(states(params, batch["inputs"], "ae", "bidirectional"))
  picked = np.take_along_axis(ae, batch["masked_positions"][..., None], 1)
  mlm_want = _np_mean(np_cross_entropy(_np_logits(table, bias, picked), batch["masked_ids"]),
                      batch["masked_weights"])
  ar = _np_logits(table, bias, states(params, batch["tokens"], "ar", "causal"))
  tokens, segs = batch["tokens"], batch["segment_ids"]
  keep = (segs[:, :-1] > 0) & (segs[:, 1:] == segs[:, :-1])
  lm_want = np_cross_entropy(ar[:, :-1], tokens[:, 1:])[keep].mean()
  loss, metrics = jax.jit(functools.partial(ERNIE.loss_fn, model=model,
                                            config=ml_collections.ConfigDict()))(
      params, batch, RNG)
  np.testing.assert_allclose([metrics["mlm_loss"], metrics["lm_loss"]], [mlm_want, lm_want],
                             rtol=1e-5)
  np.testing.assert_allclose(loss, mlm_want + lm_want, rtol=1e-5)


def test_ernie3_backbone_runs_causally_for_ar_and_bidirectionally_for_ae(ernie_model):
  """A later token changes earlier AE states, never earlier AR states (backbone and branch
  both under the mask); another packed segment changes neither."""
  _, params, batch, states = ernie_model
  tokens = batch["tokens"].copy()
  tokens[:, 6] = np.where(tokens[:, 6] == 8, 9, 8)
  for branch, kind, sees_later in (("ae", "bidirectional", True), ("ar", "causal", False)):
    base = np.asarray(states(params, batch["tokens"], branch, kind))
    changed = np.asarray(states(params, tokens, branch, kind))
    assert np.allclose(changed[:, :6], base[:, :6], atol=1e-6) != sees_later
    other = batch["tokens"].copy()
    second = batch["segment_ids"] == 2
    other[second] = 7
    changed = np.asarray(states(params, other, branch, kind))
    first = batch["segment_ids"] == 1
    np.testing.assert_allclose(changed[first], base[first], atol=1e-6)


def _layer(d, f):
  """Params of one post-LN block: q/k/v/o and MLP kernels + biases, two LayerNorms."""
  return 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d


def test_ernie3_10b_param_count_by_hand_and_within_2_percent():
  """Hand count (configs/ernie3.py docstring) = the built model's; 10B per the abstract."""
  cfg, counts = _param_count("ernie3", "10b")
  vocab, d, b = 40_064, 4096, 768
  backbone = 48 * _layer(d, 4 * d) + vocab * d + 512 * d + 2 * d + vocab
  branch = 12 * _layer(b, 4 * b) + (d * b + b) + (b * d + d)
  assert cfg.vocab_size == vocab
  assert counts == {"backbone": backbone, "ae": branch, "ar": branch}
  assert abs(sum(counts.values()) / 10e9 - 1) < 0.02, counts


@pytest.mark.parametrize("recipe,variant,paper", [
    ("bioptimus", "base", 110e6),  # BERT-base (Devlin et al. 2018 §3): 110M
    ("drbert", "base", 110e6),     # the exported encoder is BERT-base
    ("unixcoder", "base", 125e6),  # Guo et al. 2022: 125M (RoBERTa-base shape)
])
def test_paper_sizes_build_abstractly_with_the_paper_param_count(recipe, variant, paper):
  _, counts = _param_count(recipe, variant)
  if recipe == "drbert":
    assert counts["mlm_decoder"] == 2 * _layer(768, 3072)  # pretraining only
    counts = {"encoder": counts["encoder"]}
  assert abs(sum(counts.values()) / paper - 1) < 0.02, counts


@pytest.mark.parametrize("recipe,args,expected", [
    ("unixcoder", ["--config.objective.mode_probs=(0.5,0.5,0.5)"], "objective.mode_probs="),
    ("unixcoder", ["--config.model.extra_ids=2"], "needs model.extra_ids >= 3"),
    ("drbert", ["--config.model.name=transformer"], "cannot run objective 'drbert'; valid: drbert"),
    ("ernie3", ["--config.model.name=transformer"], "cannot run objective 'ernie3'; valid: multi_branch"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, recipe, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny",
                        f"--workdir={tmp_path}/r", *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


# --- end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["bioptimus", "drbert", "unixcoder", "ernie3"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  args = ["--config.train.steps=30", "--config.train.log_every=5",
          "--config.train.checkpoint_every=30", "--config.train.eval_every=0"]
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny",
                        f"--workdir={tmp_path}", *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert all(r["mfu"] > 0 for r in records if "loss" in r)


@pytest.mark.parametrize("recipe", ["bioptimus", "unixcoder"])
def test_recipes_with_sequence_keys_resume_from_their_saved_config(tmp_path, recipe):
  """The curriculum / mode_probs read back from config.json equal the recipe's, so a rerun
  resumes instead of refusing the workdir."""
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", f"{recipe}.py:tiny"))
  (tmp_path / "checkpoints" / "30").mkdir(parents=True)
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  differing = config_lib.check_resumable(config, str(tmp_path))  # raises on objective.*
  assert not [k for k in differing if k.startswith("objective.")]
