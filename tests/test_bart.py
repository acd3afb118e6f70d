"""BART noising and E2S2: each noise function by its invariants, span lengths against
Poisson(3), packed segments kept apart, determinism in the rng, losses against NumPy
(float64), paper sizes by parameter count, both tiny recipes end to end through main."""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from objectives import bart, e2s2
from objectives.base import DataInfo, ModelDef
from objectives.span_corruption import shift_right
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data.packing import pack_documents
from pretrain.data.tokenizer import train_or_load_tokenizer
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.key_data(jax.random.key(0))
PAD, EOS, MASK, STOP, QUESTION = 0, 1, 2, 3, 4  # STOP/QUESTION end sentences
SPECIALS, ENDS, VOCAB, SEQ = (PAD, EOS, MASK), (STOP, QUESTION), 64, 64
NOISE = {"infill_rate": 0.0, "poisson_lambda": 3.0, "token_mask_rate": 0.0, "delete_rate": 0.0,
             "permute_rate": 0.0, "rotate_rate": 0.0}


def _noiser(**rates) -> bart.BartNoising:
  return bart.BartNoising(**{**NOISE, **rates}, mask_id=MASK, special_ids=SPECIALS,
                          sentence_end_ids=ENDS)


def _rows(num: int, seed: int = 0, doc_lengths=(5, 60)) -> list[dict]:
  """Packed rows of random documents of ordinary ids (5..VOCAB-1), ~1 in 8 a sentence end."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(num * SEQ // 10):
    doc = rng.integers(5, VOCAB, rng.integers(*doc_lengths))
    doc[rng.random(len(doc)) < 0.125] = STOP
    docs.append(doc.astype(np.int32))
  packed = pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, EOS)
  return [{k: v[i] for k, v in packed.items()} for i in range(num)]


def _segments(tokens, segs) -> dict[int, np.ndarray]:
  return {int(s): tokens[segs == s] for s in np.unique(segs) if s > 0}


def _body(piece):
  """A segment without its closing end-of-document id, and whether it had one."""
  return (piece[:-1], True) if piece[-1] == EOS else (piece, False)


def _noised_segments(noiser, row, seed):
  """{segment: (clean body, noised body)}, after checking the shared invariants: static
  shapes, the clean row as targets, every segment present and no longer than it was, its
  end-of-document id still last, positions restarting per segment, padding at the end."""
  out = noiser.random_map(row, np.random.default_rng(seed))
  assert all(v.shape == (SEQ,) for v in out.values())
  np.testing.assert_array_equal(out["targets"], row["tokens"])
  np.testing.assert_array_equal(out["target_segment_ids"], row["segment_ids"])
  segs = out["input_segment_ids"]
  real = segs > 0
  assert real[:real.sum()].all() and (np.diff(segs[real]) >= 0).all()
  clean = _segments(row["tokens"], row["segment_ids"])
  noised = _segments(out["inputs"], segs)
  assert clean.keys() == noised.keys()
  pairs = {}
  for s in clean:
    assert len(noised[s]) <= len(clean[s])
    np.testing.assert_array_equal(out["input_positions"][segs == s], np.arange(len(noised[s])))
    body, closed = _body(clean[s])
    assert (noised[s][-1] == EOS) == closed
    pairs[s] = body, noised[s][:-1] if closed else noised[s]
  return pairs


def _is_subsequence(short, long) -> bool:
  rest = iter(long.tolist())
  return all(any(t == r for r in rest) for t in short.tolist())


# --- text infilling -----------------------------------------------------------------------


def _poisson_pmf(k, lam=3.0):
  return math.exp(-lam) * lam ** k / math.factorial(k)


def test_infilling_span_lengths_follow_poisson_3():
  """Over many budgets, span lengths (all but each budget's cut last span) have Poisson(3)
  frequencies, zero-length spans included; the spans cover the budget exactly."""
  rng = np.random.default_rng(0)
  lengths = []
  for _ in range(300):
    spans = bart.poisson_spans(60, 3.0, rng)
    assert spans.sum() == 60 and spans[-1] > 0
    lengths.extend(spans[:-1])
  lengths = np.asarray(lengths)
  assert len(lengths) > 5000
  for k in range(8):
    assert abs((lengths == k).mean() - _poisson_pmf(k)) < 0.015, k
  assert abs(lengths.mean() - 3.0) < 0.1


@pytest.mark.parametrize("n", [1, 2, 7, 40, 200])
def test_infilling_spans_fit_apart_and_cover_the_budget(n):
  for seed in range(30):
    starts, lengths, empty = bart.infilling_spans(n, 0.3, 3.0, np.random.default_rng(seed))
    assert (lengths > 0).all() and empty >= 0
    if len(starts):
      assert starts[0] >= 0 and starts[-1] + lengths[-1] <= n
      assert (starts[1:] > starts[:-1] + lengths[:-1]).all()  # a kept token between
    if n >= 40:  # large pieces always hold the whole 30% budget
      assert lengths.sum() == round(0.3 * n)


def test_infilling_replaces_each_span_by_one_mask():
  """With only infilling, the output is the body with each planned span collapsed to one
  [MASK], plus the zero-length spans' [MASK]s (as many as keep the piece no longer); over
  many rows 30% of the tokens are masked, and empty spans do occur."""
  masked = total = inserted = 0
  noiser = _noiser(infill_rate=0.3)
  for seed in range(60):
    body = np.arange(100, 160, dtype=np.int32)
    out = noiser.noise_body(body, np.random.default_rng(seed))
    starts, lengths, empty = bart.infilling_spans(60, 0.3, 3.0, np.random.default_rng(seed))
    keep = np.ones(60, bool)
    for s, l in zip(starts, lengths):
      keep[s:s + l] = False
    collapsed = np.where(keep, body, MASK)[keep | np.isin(np.arange(60), starts)]
    inserts = min(empty, 60 - len(collapsed))
    assert len(out) == len(collapsed) + inserts <= 60
    np.testing.assert_array_equal(out[out != MASK], body[keep])
    assert (out == MASK).sum() == len(starts) + inserts
    if not inserts:
      np.testing.assert_array_equal(out, collapsed)
    masked += (~keep).sum()
    total += 60
    inserted += inserts
  assert masked == 60 * 18  # round(0.3 * 60) per piece
  assert inserted > 0


def test_infilling_mask_rate_over_packed_rows():
  """On packed rows, each segment loses round(0.3 n) tokens (n = its body) to spans, short
  pieces aside; the row-level masked fraction is ~0.3."""
  noiser = _noiser(infill_rate=0.3)
  lost = total = 0
  for seed, row in enumerate(_rows(100, seed=1)):
    for body, noised in _noised_segments(noiser, row, seed).values():
      kept = (noised != MASK).sum()
      assert _is_subsequence(noised[noised != MASK], body)
      if len(body) >= 10:
        assert len(body) - kept == round(0.3 * len(body))
      lost += len(body) - kept
      total += len(body)
  assert abs(lost / total - 0.3) < 0.01


# --- the other noise functions ------------------------------------------------------------


def _sentences(body) -> list[tuple]:
  ends = np.flatnonzero(np.isin(body, ENDS) & ~np.isin(np.append(body[1:], PAD), ENDS)) + 1
  return [tuple(s) for s in np.split(body, ends) if len(s)]


def test_sentence_permutation_preserves_the_multiset_of_sentences():
  body = np.array([10, 11, STOP, 12, QUESTION, 13, 14, 15, STOP, STOP, 16, STOP, 17, 18,
                   STOP], np.int32)
  orders = set()
  for seed in range(40):
    out = bart.permute_sentences(body, ENDS, 1.0, np.random.default_rng(seed))
    assert sorted(_sentences(out)) == sorted(_sentences(body))
    orders.add(tuple(_sentences(out)))
  assert len(orders) > 10  # 5 sentences: many of the 120 orders turn up
  assert len(_sentences(body)) == 5  # "STOP STOP" is one sentence end


def test_sentence_permutation_rate_moves_only_chosen_sentences():
  """rate 0.4 of 5 sentences: ceil(2) are shuffled between their two places."""
  body = np.array([10, STOP, 11, STOP, 12, STOP, 13, STOP, 14, STOP], np.int32)
  for seed in range(20):
    out = _sentences(bart.permute_sentences(body, ENDS, 0.4, np.random.default_rng(seed)))
    assert sum(a != b for a, b in zip(out, _sentences(body))) in (0, 2)


def test_permutation_on_packed_rows_keeps_each_document_piece():
  noiser = _noiser(permute_rate=1.0)
  for seed, row in enumerate(_rows(20, seed=2)):
    for body, noised in _noised_segments(noiser, row, seed).values():
      np.testing.assert_array_equal(np.sort(noised), np.sort(body))


def test_rotation_is_a_rotation_of_the_original():
  noiser = _noiser(rotate_rate=1.0)
  for seed, row in enumerate(_rows(20, seed=3)):
    for body, noised in _noised_segments(noiser, row, seed).values():
      shifts = [k for k in range(len(body)) if np.array_equal(np.roll(body, -k), noised)]
      assert shifts and (len(body) < 2 or 0 not in shifts or len(set(body)) == 1)


def test_deletion_leaves_a_subsequence():
  noiser = _noiser(delete_rate=0.2)
  for seed, row in enumerate(_rows(20, seed=4)):
    for body, noised in _noised_segments(noiser, row, seed).values():
      assert len(noised) == len(body) - round(0.2 * len(body))
      assert _is_subsequence(noised, body)


def test_token_masking_masks_one_for_one():
  noiser = _noiser(token_mask_rate=0.15)
  for seed, row in enumerate(_rows(20, seed=5)):
    for body, noised in _noised_segments(noiser, row, seed).values():
      changed = noised != body
      assert changed.sum() == round(0.15 * len(body)) and (noised[changed] == MASK).all()


BART_NOISE = {"infill_rate": 0.3, "permute_rate": 1.0, "token_mask_rate": 0.05, "delete_rate": 0.05,
                  "rotate_rate": 0.5}


def test_mixed_noise_keeps_packed_documents_apart():
  """All five noises at once on rows of documents drawn from disjoint id ranges: every
  token of a noised segment is [MASK] or comes from the same clean segment."""
  noiser = _noiser(**BART_NOISE)
  for seed in range(20):
    rng = np.random.default_rng(seed)
    docs = [np.where(rng.random(n) < 0.15, STOP, 5 + 12 * (d % 4) + rng.integers(0, 12, n))
            for d, n in enumerate(rng.integers(3, 30, 12))]
    row = {k: v[0] for k, v in pack_documents(docs, [np.ones(len(d), bool) for d in docs],
                                              SEQ, EOS).items()}
    for body, noised in _noised_segments(noiser, row, seed).values():
      assert np.isin(noised[noised != MASK], body).all()


def test_noise_is_deterministic_in_the_rng():
  row = _rows(1, seed=6)[0]
  noiser = _noiser(**BART_NOISE)
  a, b, c = (noiser.random_map(row, np.random.default_rng(s)) for s in (5, 5, 6))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_tokenizer_sentence_ends(tmp_path):
  docs = ["It rains. Does it? Yes! Mr. Smith said so...", "No more rain."] * 20
  tok = train_or_load_tokenizer("bpe", 300, "sentences", docs, str(tmp_path))
  ends = tok.sentence_end_ids()
  assert ends and all(tok.decode([i]).rstrip()[-1] in ".!?" for i in ends)
  ids, _ = tok.encode("Does it? Yes!")
  assert np.isin(ids, ends).sum() == 2 and ids[-1] in ends


# --- E2S2 encoder noise -------------------------------------------------------------------


def _e2s2_noiser(**bart_rates) -> e2s2.E2S2Noising:
  return e2s2.E2S2Noising(_noiser(**bart_rates), seq_len=SEQ, shuffle_rate=0.1,
                          random_rate=0.1, vocab_size=VOCAB)


def test_e2s2_denoising_targets_by_hand():
  """No BART noise: the inputs differ from the clean row exactly at the weighted slots,
  whose ids are the clean tokens there; swaps exchange two neighbours of one segment,
  replacements use another ordinary id; [MASK] and special ids are never touched."""
  noiser = _e2s2_noiser()
  assert (noiser.pairs, noiser.replaced, noiser.slots) == (3, 6, 12)
  for seed, row in enumerate(_rows(30, seed=7)):
    clean, segs = row["tokens"], row["segment_ids"]
    out = noiser.random_map(row, np.random.default_rng(seed))
    pos, ids, w = out["denoise_positions"], out["denoise_ids"], out["denoise_weights"]
    changed = np.flatnonzero(out["inputs"] != clean)
    np.testing.assert_array_equal(np.sort(pos[w > 0]), changed)
    np.testing.assert_array_equal(ids[w > 0], clean[pos[w > 0]])
    assert len(np.unique(pos[w > 0])) == (w > 0).sum() and (w[(w > 0).sum():] == 0).all()
    assert not np.isin(clean[changed], SPECIALS).any()
    assert not np.isin(out["inputs"][changed], SPECIALS).any()
    inputs = out["inputs"]
    swapped = {j for i in changed for j in (i - 1, i) if 0 <= j < SEQ - 1
               and segs[j] == segs[j + 1] and inputs[j] == clean[j + 1]
               and inputs[j + 1] == clean[j]}
    in_swap = np.isin(changed, [*swapped, *(j + 1 for j in swapped)])
    assert in_swap.sum() <= 2 * noiser.pairs and (~in_swap).sum() <= noiser.replaced
    assert in_swap.any() and (~in_swap).any()


def test_e2s2_denoising_targets_are_the_bart_noised_tokens():
  """On top of BART noise the targets are what BART left there (a [MASK] is never a
  target), and the clean row stays the decoder's target."""
  noiser = _e2s2_noiser(infill_rate=0.3)
  for seed, row in enumerate(_rows(10, seed=8)):
    plain = noiser.bart.random_map(row, np.random.default_rng(seed))["inputs"]
    out = noiser.random_map(row, np.random.default_rng(seed))
    w = out["denoise_weights"] > 0
    np.testing.assert_array_equal(out["denoise_ids"][w], plain[out["denoise_positions"][w]])
    assert (out["denoise_ids"][w] != MASK).all()
    np.testing.assert_array_equal(out["targets"], row["tokens"])


# --- losses -------------------------------------------------------------------------------


def _np_info_nce(a, b, t):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a /= np.linalg.norm(a, axis=-1, keepdims=True)
  b /= np.linalg.norm(b, axis=-1, keepdims=True)
  sim = a @ b.T / t
  labels = np.arange(len(a))
  return 0.5 * (np_cross_entropy(sim, labels).mean() + np_cross_entropy(sim.T, labels).mean())


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  b[:3] = a[:3] + 0.1 * b[:3]  # three near pairs
  for t in (1.0, 0.1):
    loss, acc = e2s2.info_nce(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t)
    np.testing.assert_allclose(loss, _np_info_nce(a, b, t), rtol=1e-5)
    sim = a @ b.T / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)
    assert acc == (sim.argmax(1) == np.arange(6)).mean()


ED_CFG = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=1, dec_layers=1, d_model=16,
                              num_heads=2, d_ff=32, max_len=SEQ, init_std=0.5, norm="post",
                              embed_norm=True, activation="gelu_exact")


@pytest.fixture(scope="module")
def model():
  """Tiny post-LN EncoderDecoder with a random logits bias, a jitted (encoder, decoder)
  state function and an E2S2-noised batch of three packed rows."""
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(EncoderDecoder(ED_CFG, rngs=nnx.Rngs(0)), nnx.Param)
  md, params = ModelDef(graphdef), nnx.to_pure_dict(state)
  params["logits_bias"] = jnp.asarray(np.random.default_rng(1).normal(size=VOCAB), jnp.float32)
  noiser = e2s2.E2S2Noising(_noiser(**BART_NOISE), seq_len=SEQ, shuffle_rate=0.1,
                            random_rate=0.1, vocab_size=VOCAB)
  outs = [noiser.random_map(r, np.random.default_rng(i)) for i, r in enumerate(_rows(3, 9))]
  batch = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
  batch["target_segment_ids"][2, -5:] = 0  # some target padding, which must not count

  @jax.jit
  def states(p, b):
    net = md.bind(p)
    enc = net.encode(b["inputs"], segment_ids=b["input_segment_ids"],
                     positions=b["input_positions"])
    clean = net.encode(b["targets"], segment_ids=b["target_segment_ids"],
                       positions=b["target_positions"])
    dec = net.decode(shift_right(b["targets"], b["target_segment_ids"], 0), enc,
                     segment_ids=b["target_segment_ids"], positions=b["target_positions"],
                     enc_segment_ids=b["input_segment_ids"])
    return enc, clean, dec

  return md, params, batch, states


def _np_logits(params, hidden):
  table = np.asarray(params["embed"]["table"], np.float64)
  return np.asarray(hidden, np.float64) @ table.T + np.asarray(params["logits_bias"])


def _np_decoder_loss(params, batch, dec):
  w = batch["target_segment_ids"] > 0
  logits = _np_logits(params, dec)
  return (np_cross_entropy(logits, batch["targets"])[w].mean(),
          (logits.argmax(-1) == batch["targets"])[w].mean())


def test_bart_loss_matches_numpy(model):
  """The decoder's mean cross-entropy over the clean targets, padding excluded."""
  md, params, batch, states = model
  _, _, dec = states(params, batch)
  want, want_acc = _np_decoder_loss(params, batch, dec)
  loss_fn = jax.jit(functools.partial(bart.Bart().loss_fn, model=md,
                                      config=ml_collections.ConfigDict()))
  loss, metrics = loss_fn(params, batch, RNG)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)


def test_e2s2_loss_matches_numpy(model):
  """decoder CE + 0.3 x CE of the tied logits at the weighted encoder slots + 0.7 x
  InfoNCE of the mean-pooled (non-padding) noised and clean encoder states."""
  md, params, batch, states = model
  enc, clean, dec = (np.asarray(x, np.float64) for x in states(params, batch))
  dec_loss, _ = _np_decoder_loss(params, batch, dec)
  w = batch["denoise_weights"] > 0
  picked = np.take_along_axis(enc, batch["denoise_positions"][..., None], 1)
  de_loss = np_cross_entropy(_np_logits(params, picked), batch["denoise_ids"])[w].mean()

  def pool(h, segs):
    m = segs > 0
    return (h * m[..., None]).sum(1) / m.sum(1)[:, None]

  cl_loss = _np_info_nce(pool(enc, batch["input_segment_ids"]),
                         pool(clean, batch["target_segment_ids"]), 0.5)
  config = ml_collections.ConfigDict({"objective": {
      "denoise_weight": 0.3, "contrastive_weight": 0.7, "contrastive_temperature": 0.5}})
  loss_fn = jax.jit(functools.partial(e2s2.E2S2().loss_fn, model=md, config=config))
  loss, metrics = loss_fn(params, batch, RNG)
  np.testing.assert_allclose(metrics["decoder_loss"], dec_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["denoise_loss"], de_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["contrastive_loss"], cl_loss, rtol=1e-5)
  np.testing.assert_allclose(loss, dec_loss + 0.3 * de_loss + 0.7 * cl_loss, rtol=1e-5)


# --- recipes ------------------------------------------------------------------------------


def _load(spec):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", spec))


# facebook/bart-base and bart-large on the HF hub: 139.4M and 406.3M parameters (E2S2's
# backbone is bart-large). Ours shares one position table and embedding LayerNorm between
# encoder and decoder and pads the vocabulary 50265 -> 50304.
@pytest.mark.parametrize("spec,paper", [("bart.py:base", 139.4e6), ("bart.py:large", 406.3e6),
                                        ("e2s2.py:large", 406.3e6)])
def test_paper_sizes_build_abstractly_with_the_paper_param_count(spec, paper):
  config = _load(spec)
  builder = MODELS.get("encoder_decoder")
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert abs(count / paper - 1) < 0.02, (spec, count)


@pytest.mark.parametrize("spec,args,expected", [
    ("bart.py", ["--config.objective.infill_rate=0.6"], "infill_rate=0.6: must be <= 0.5"),
    ("bart.py", ["--config.objective.rotate_rate=2"], "rotate_rate=2.0: must be in [0, 1]"),
    ("bart.py", ["--config.objective.poisson_lambda=0"], "poisson_lambda=0.0: must be > 0"),
    ("bart.py", ["--config.objective.delete_rate=0.8"], "must be <= 1 (they pick disjoint"),
    ("e2s2.py", ["--config.objective.contrastive_temperature=0"], "contrastive_temperature=0.0"),
    ("e2s2.py", ["--config.objective.shuffle_rate=-0.1"], "objective.shuffle_rate=-0.1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, spec, args, expected):
  code = main_lib.main([f"--config={ROOT}/configs/{spec}:tiny", f"--workdir={tmp_path}/r",
                        *args])
  err = capsys.readouterr().err
  assert code == 2 and expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize("recipe", ["bart.py:tiny", "e2s2.py:tiny"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  args = ["--config.train.steps=30", "--config.train.log_every=5",
          "--config.train.checkpoint_every=30", "--config.train.eval_every=0"]
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}", f"--workdir={tmp_path}",
                        *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert all(r["mfu"] > 0 and "accuracy" in r for r in records if "loss" in r)
