"""Wang et al. 2022's architecture x objective grid: span corruption on decoder-only rows
(CD:MLM, ND:MLM) and prefix LM on the encoder-decoder (ED:PLM). Rows and splits by hand and
by their invariants, masks, packing isolation, losses against NumPy, the paper sizes by
parameter count, each new tiny cell through `pretrain.main`, and CD:FLM -> ND:MLM
adaptation with `init_from`."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from models.attention import attention_mask
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, encoder_decoder_flops
from models.transformer import TextTransformer, TransformerConfig
from objectives import decoder_span_corruption as dsc
from objectives import encoder_decoder_prefix_lm as edp
from objectives.base import DataInfo
from objectives.causal_lm import CausalLM
from objectives.prefix_lm import prefix_lm_targets
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data.packing import pack_documents
from pretrain.registry import MODELS
from pretrain.train import read_metrics
from helpers import build, np_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.key_data(jax.random.key(0))
VOCAB, EXTRA, SEQ = 50, 10, 64
ROW = dsc.DecoderRow(seq_len=SEQ, noise_density=0.15, mean_span_length=3.0,
                     vocab_size=VOCAB, extra_ids=EXTRA)
LM_CFG = TransformerConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                           max_len=128, init_std=0.5)
ED_CFG = EncoderDecoderConfig(vocab_size=64, num_layers=1, dec_layers=1, d_model=16,
                              num_heads=2, d_ff=32, max_len=SEQ, init_std=0.5)


def _rows(num: int, seed: int = 0) -> list[dict]:
  """Packed rows of random documents of 5..39 tokens (eos VOCAB-1)."""
  rng = np.random.default_rng(seed)
  docs = [rng.integers(1, VOCAB - 1, rng.integers(5, 40)).astype(np.int32)
          for _ in range(num * SEQ // 10)]
  packed = pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, VOCAB - 1)
  return [{k: v[i] for k, v in packed.items()} for i in range(num)]


# --- CD:MLM / ND:MLM rows ----------------------------------------------------------------


class _Parts:
  """A stand-in for SpanCorruption with hand-made outputs (sentinels 59, 58)."""
  inputs_len, targets_len = 6, 6

  def random_map(self, example, rng):
    del example, rng
    return {"inputs": np.array([5, 59, 6, 59, 7, 0]),
            "input_segment_ids": np.array([1, 1, 1, 2, 2, 0]),
            "targets": np.array([59, 8, 59, 9, 10, 0]),
            "target_segment_ids": np.array([1, 1, 2, 2, 2, 0])}


def test_decoder_row_and_its_targets_by_hand():
  """Each segment's inputs, then its targets; the last input predicts the first sentinel,
  and only target tokens are predicted, never across segments."""
  row = dsc.DecoderRow(seq_len=8, noise_density=0.15, mean_span_length=3.0, vocab_size=50,
                       extra_ids=10)
  row.corrupt, row.length = _Parts(), 12
  got = row.random_map({}, np.random.default_rng(0))
  np.testing.assert_array_equal(got["tokens"], [5, 59, 6, 59, 8, 59, 7, 59, 9, 10, 0, 0])
  np.testing.assert_array_equal(got["segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0])
  np.testing.assert_array_equal(got["positions"], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0])
  np.testing.assert_array_equal(got["is_prefix"], [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0])
  targets, weights = prefix_lm_targets(*(jnp.asarray(got[k])[None] for k in
                                         ("tokens", "segment_ids", "is_prefix")))
  np.testing.assert_array_equal(weights[0], [0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(targets[0, [2, 3, 6, 7, 8]], [59, 8, 59, 9, 10])


@pytest.mark.parametrize("seed", range(4))
def test_decoder_row_interleaves_span_corruption_per_segment(seed):
  """Static length inputs_len + targets_len; segment k's run is exactly its corrupted
  inputs then its targets (same transform, same rng); padding only at the end."""
  example = _rows(1, seed)[0]
  parts = ROW.corrupt.random_map(example, np.random.default_rng(seed))
  got = ROW.random_map(example, np.random.default_rng(seed))
  assert {k: v.shape for k, v in got.items()} == {k: (ROW.length,) for k in got}
  assert ROW.length == 57 + 13
  segs, tokens = got["segment_ids"], got["tokens"]
  for s in np.unique(example["segment_ids"]):
    want = np.concatenate([parts["inputs"][parts["input_segment_ids"] == s],
                           parts["targets"][parts["target_segment_ids"] == s]])
    run = np.flatnonzero(segs == s)
    np.testing.assert_array_equal(np.diff(run), 1)  # one contiguous run
    np.testing.assert_array_equal(tokens[run], want)
    np.testing.assert_array_equal(got["positions"][run], np.arange(len(run)))
    n_in = (parts["input_segment_ids"] == s).sum()
    np.testing.assert_array_equal(got["is_prefix"][run], np.arange(len(run)) < n_in)
  real = segs > 0
  assert real[:real.sum()].all() and not got["is_prefix"][~real].any()
  again = ROW.random_map(example, np.random.default_rng(seed))
  assert all(np.array_equal(got[k], again[k]) for k in got)


def test_nd_prefix_mask_covers_exactly_each_segments_inputs():
  """With decoder_mask=prefix, the keys every query of a segment sees are its inputs; no
  query sees another segment; with causal, a query never sees a later key."""
  got = ROW.random_map(_rows(1, 3)[0], np.random.default_rng(3))
  segs, is_prefix = got["segment_ids"][None], got["is_prefix"][None]
  nd = np.asarray(attention_mask(dsc.MASKS["prefix"], segment_ids=segs,
                                 is_prefix=is_prefix))[0, 0]
  cd = np.asarray(attention_mask(dsc.MASKS["causal"], segment_ids=segs,
                                 is_prefix=is_prefix))[0, 0]
  for s in np.unique(segs[segs > 0]):
    rows = segs[0] == s
    np.testing.assert_array_equal(nd[rows].all(0), rows & is_prefix[0])
    assert not nd[rows][:, ~rows].any() and not cd[rows][:, ~rows].any()
  assert not np.triu(cd, 1).any()
  assert np.triu(nd, 1).any()  # the inputs part looks ahead


@pytest.fixture(scope="module")
def decoder():
  model, params = build(TextTransformer, LM_CFG)
  batch = {k: jnp.asarray(np.stack([ROW.random_map(r, np.random.default_rng(i))[k]
                                    for i, r in enumerate(_rows(2, 5))]))
           for k in ("tokens", "segment_ids", "positions", "is_prefix")}
  return model, params, batch


@pytest.mark.parametrize("decoder_mask", ["causal", "prefix"])
def test_decoder_span_corruption_loss_matches_numpy(decoder, decoder_mask):
  model, params, batch = decoder
  config = ml_collections.ConfigDict({"objective": {"decoder_mask": decoder_mask}})
  loss, metrics = jax.jit(functools.partial(dsc.DecoderSpanCorruption().loss_fn, model=model,
                                            config=config))(params, batch, RNG)
  net = model.bind(params)
  mask = attention_mask(dsc.MASKS[decoder_mask], segment_ids=batch["segment_ids"],
                        is_prefix=batch["is_prefix"])
  logits = np.asarray(net.logits(net(batch["tokens"], positions=batch["positions"],
                                     mask=mask)), np.float64)
  tokens, segs, prefix = (np.asarray(batch[k]) for k in ("tokens", "segment_ids", "is_prefix"))
  targets = np.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  nxt = np.pad(segs[:, 1:], ((0, 0), (0, 1)))
  w = (segs > 0) & (nxt == segs) & ~np.pad(prefix[:, 1:], ((0, 0), (0, 1)))
  assert w.sum() == (~prefix & (segs > 0)).sum()  # every target token is predicted once
  np.testing.assert_allclose(loss, np_cross_entropy(logits, targets)[w].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], (logits.argmax(-1) == targets)[w].mean(),
                             rtol=1e-6)


def test_decoder_rows_keep_packed_segments_isolated(decoder):
  """Changing segment 2's tokens leaves segment 1's states unchanged (ND mask)."""
  model, params, batch = decoder
  net = model.bind(params)
  mask = attention_mask("segment_prefix", segment_ids=batch["segment_ids"],
                        is_prefix=batch["is_prefix"])
  hidden = lambda t: np.asarray(net(t, positions=batch["positions"], mask=mask))[0]
  segs = np.asarray(batch["segment_ids"][0])
  changed = jnp.where(jnp.asarray(segs == 2)[None], 7, batch["tokens"])
  base, other = hidden(batch["tokens"]), hidden(changed)
  np.testing.assert_allclose(other[segs == 1], base[segs == 1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(other[segs == 2], base[segs == 2])


def test_decoder_flops_count_the_row_and_its_mask():
  """CD counts the row like causal_lm counts a row of that length; ND adds the inputs'
  look-ahead."""
  info, cfg = DataInfo(seq_len=SEQ, vocab_size=VOCAB), LM_CFG
  config = lambda m: ml_collections.ConfigDict(
      {"objective": {"decoder_mask": m, "noise_density": 0.15, "mean_span_length": 3.0},
       "model": {"extra_ids": EXTRA}})
  cd = dsc.DecoderSpanCorruption().forward_flops_per_example(config("causal"), info, cfg)
  row = CausalLM().forward_flops_per_example(None, DataInfo(seq_len=ROW.length), cfg)
  assert cd == row
  assert dsc.DecoderSpanCorruption().forward_flops_per_example(config("prefix"), info,
                                                               cfg) > cd


# --- ED:PLM --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_ed_prefix_split_invariants(seed):
  """Per segment: encoder prefix + decoder rest = the segment, the prefix 1..n-1 tokens (a
  one-token segment all prefix); positions restart per side; static shapes, padding last;
  deterministic in the rng."""
  example = _rows(1, seed)[0]
  got = edp.PrefixToEncoder().random_map(example, np.random.default_rng(seed))
  assert set(got) == set(edp.KEYS) and all(v.shape == (SEQ,) for v in got.values())
  tokens, segs = example["tokens"], example["segment_ids"]
  for s in np.unique(segs[segs > 0]):
    enc = got["input_segment_ids"] == s
    dec = got["target_segment_ids"] == s
    np.testing.assert_array_equal(np.concatenate([got["inputs"][enc], got["targets"][dec]]),
                                  tokens[segs == s])
    n = (segs == s).sum()
    assert 1 <= enc.sum() <= max(n - 1, 1)
    np.testing.assert_array_equal(got["input_positions"][enc], np.arange(enc.sum()))
    np.testing.assert_array_equal(got["target_positions"][dec], np.arange(dec.sum()))
  for side in ("input", "target"):
    real = got[f"{side}_segment_ids"] > 0
    assert real[:real.sum()].all()
  again = edp.PrefixToEncoder().random_map(example, np.random.default_rng(seed))
  assert all(np.array_equal(got[k], again[k]) for k in got)


@pytest.fixture(scope="module")
def ed_batch():
  rows = [edp.PrefixToEncoder().random_map(r, np.random.default_rng(i))
          for i, r in enumerate(_rows(2, 7))]
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in edp.KEYS}


def test_ed_prefix_lm_loss_matches_numpy_and_segments_are_isolated(ed_batch):
  """Teacher forcing: decoder input t is target t-1 of its segment (a segment starts from
  0); the loss averages every target token. Changing encoder segment 2 leaves decoder
  segment 1 unchanged."""
  model, params = build(EncoderDecoder, ED_CFG)
  b = ed_batch
  loss, metrics = jax.jit(functools.partial(edp.EncoderDecoderPrefixLM().loss_fn, model=model,
                                            config=None))(params, b, RNG)
  targets, segs = np.asarray(b["targets"]), np.asarray(b["target_segment_ids"])
  same = np.pad(segs[:, :-1], ((0, 0), (1, 0))) == segs
  dec_in = np.where(same, np.pad(targets[:, :-1], ((0, 0), (1, 0))), 0)
  net = model.bind(params)

  def logits(inputs):
    return np.asarray(net.logits(net(
        inputs, jnp.asarray(dec_in), enc_segment_ids=b["input_segment_ids"],
        dec_segment_ids=b["target_segment_ids"], enc_positions=b["input_positions"],
        dec_positions=b["target_positions"])), np.float64)

  base, w = logits(b["inputs"]), segs > 0
  np.testing.assert_allclose(loss, np_cross_entropy(base, targets)[w].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], (base.argmax(-1) == targets)[w].mean(),
                             rtol=1e-6)
  other = logits(jnp.where(b["input_segment_ids"] == 2, 7, b["inputs"]))
  np.testing.assert_allclose(other[segs == 1], base[segs == 1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(other[segs == 2], base[segs == 2])


def test_ed_prefix_lm_flops_count_half_the_row_per_side():
  flops = edp.EncoderDecoderPrefixLM().forward_flops_per_example(
      None, DataInfo(seq_len=SEQ), ED_CFG)
  assert flops == encoder_decoder_flops(ED_CFG, enc_len=32, dec_len=32, enc_attended=32,
                                        dec_attended=16)


# --- recipes -------------------------------------------------------------------------------


def _load(variant):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", f"arch_grid.py:{variant}"))


# Wang et al. 2022: decoder-only models 4.8B params, encoder-decoders 11B.
# The cells of one architecture share their model section, so one cell of each is built.
@pytest.mark.parametrize("cell,paper", [("cd_flm", 4.8e9), ("ed_plm", 11e9)])
def test_paper_sizes_build_abstractly_with_the_paper_param_count(cell, paper):
  config = _load(cell)
  config_lib.validate(config, num_devices=1)
  for other in ("cd_mlm", "nd_plm", "nd_mlm") if cell == "cd_flm" else ("ed_mlm",):
    assert _load(other).model.to_dict() == config.model.to_dict()
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert cfg.vocab_size == 32128  # 32,000 + 100 sentinels, padded as T5's
  assert abs(count / paper - 1) < 0.02, (cell, count)
  # 168B tokens: 131,072 steps x 2,048 rows x 626 positions.
  assert abs(config.train.steps * config.train.global_batch * 626 / 168e9 - 1) < 0.01


def test_bad_decoder_mask_is_a_one_line_error(tmp_path, capsys):
  code = main_lib.main([f"--config={ROOT}/configs/arch_grid.py:tiny:nd_mlm",
                        f"--workdir={tmp_path}", "--config.objective.decoder_mask=full"])
  err = capsys.readouterr().err
  assert code == 2 and "objective.decoder_mask='full'; valid: causal, prefix" in err, err
  assert err.count("\n") == 1


SHORT = ["--config.train.steps=25", "--config.train.global_batch=8",
         "--config.train.log_every=5", "--config.train.eval_every=0",
         "--config.train.checkpoint_every=25"]


@pytest.mark.parametrize("cell", ["cd_mlm", "nd_mlm", "ed_plm"])
def test_tiny_cell_trains_through_main(tmp_path, cell):
  assert main_lib.main([f"--config={ROOT}/configs/arch_grid.py:tiny:{cell}",
                        f"--workdir={tmp_path}", *SHORT]) == 0
  curve = [r["loss"] for r in read_metrics(str(tmp_path)) if "loss" in r]
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert all(r["mfu"] > 0 and "accuracy" in r for r in read_metrics(str(tmp_path))
             if "loss" in r)


def test_cd_flm_checkpoint_adapts_to_nd_mlm(tmp_path, capsys):
  """The paper's non-causal MLM adaptation: every param of a CD:FLM run loads into an
  ND:MLM run, which trains on from it."""
  few = ["--config.train.global_batch=4", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.optim.warmup_steps=1"]
  source = tmp_path / "cd_flm"
  assert main_lib.main([f"--config={ROOT}/configs/arch_grid.py:tiny:cd_flm",
                        f"--workdir={source}", "--config.train.steps=2",
                        "--config.train.checkpoint_every=2", *few]) == 0
  capsys.readouterr()
  target = tmp_path / "nd_mlm"
  assert main_lib.main([f"--config={ROOT}/configs/arch_grid.py:tiny:nd_mlm",
                        f"--workdir={target}", f"--config.init_from.path={source}",
                        "--config.train.steps=2", "--config.train.checkpoint_every=2",
                        *few]) == 0
  out = capsys.readouterr().out
  assert " matched, 0 reshaped->fresh, 0 fresh, 0 unused" in out, out
  assert [r["step"] for r in read_metrics(str(target)) if "loss" in r] == [1, 2]
