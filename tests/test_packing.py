"""Prepacking-style bin packing (Zhao et al. 2024): whole documents per row, first fit
decreasing and best fit, the (input, target) pair variant, and packed segments isolated
under every attention-mask kind, by the mask and through model forwards."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from models import attention
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.transformer import TextTransformer, TransformerConfig
from pretrain import main as main_lib
from pretrain.data import pipeline
from pretrain.data.packing import (BIN_PACKINGS, assign_bins, bin_pack_documents,
                                   bin_pack_pairs)

SEQ, EOS, VOCAB = 32, 63, 64


def _docs(num: int, seed: int = 0, max_len: int = 70) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, EOS, rng.integers(1, max_len)).astype(np.int32) for _ in range(num)]


def _segments(row: dict[str, np.ndarray]) -> list[np.ndarray]:
  segs = row["segment_ids"]
  return [row["tokens"][segs == s] for s in range(1, segs.max() + 1)]


@pytest.mark.parametrize("method", BIN_PACKINGS)
def test_rows_hold_every_document_whole_and_restart_positions(method):
  docs = _docs(120)
  packed = bin_pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, EOS, method)
  tokens, segs, pos = packed["tokens"], packed["segment_ids"], packed["positions"]
  assert tokens.shape == segs.shape == pos.shape == packed["word_start"].shape
  assert tokens.shape[1] == SEQ and tokens.dtype == np.int32
  pieces = []
  for row in range(len(tokens)):
    real = segs[row] > 0
    # Segments are 1, 2, ... in order, contiguous, with all padding at the end.
    assert real[:real.sum()].all() and not real[real.sum():].any()
    assert (np.diff(segs[row][real]) >= 0).all() and (np.diff(segs[row][real]) <= 1).all()
    assert (tokens[row][~real] == 0).all() and (pos[row][~real] == 0).all()
    for s in range(1, segs[row].max() + 1):
      np.testing.assert_array_equal(pos[row][segs[row] == s], np.arange((segs[row] == s).sum()))
      assert packed["word_start"][row][segs[row] == s][0]
    pieces += _segments({k: v[row] for k, v in packed.items()})
  # Nothing dropped or cut beyond seq_len pieces: every document + eos, in SEQ-long pieces.
  want = sorted(tuple(np.append(d, EOS)[i:i + SEQ]) for d in docs
                for i in range(0, len(d) + 1, SEQ))
  assert sorted(tuple(p) for p in pieces) == want
  total = sum(len(d) + 1 for d in docs)
  assert len(tokens) >= -(-total // SEQ)  # no row over capacity, so at least this many


def test_first_fit_decreasing_and_best_fit_by_hand():
  sizes = [3, 6, 2, 5, 4, 1]  # capacity 7
  # FFD: 6->r0, 5->r1, 4->r2, 3->r2 (7), 2->r1 (7), 1->r0 (7).
  np.testing.assert_array_equal(assign_bins(sizes, 7, "first_fit_decreasing"),
                                [2, 0, 1, 1, 2, 0])
  # Best fit in order: 3->r0, 6->r1, 2->r0 (5), 5->r2, 4->r3, 1 -> fullest that fits: r1 (7).
  np.testing.assert_array_equal(assign_bins(sizes, 7, "best_fit"), [0, 1, 0, 2, 3, 1])
  with pytest.raises(ValueError, match="exceeds the row capacity"):
    assign_bins([8], 7, "best_fit")
  with pytest.raises(ValueError, match="unknown bin packing 'worst_fit'"):
    assign_bins([1], 7, "worst_fit")


@pytest.mark.parametrize("method", BIN_PACKINGS)
def test_pairs_fit_both_rows_and_keep_inputs_with_their_targets(method):
  rng = np.random.default_rng(1)
  inputs = [rng.integers(1, EOS, rng.integers(1, 25)).astype(np.int32) for _ in range(60)]
  # Target k starts with k's input length and the input's first id, so pairs are checkable.
  targets = [np.concatenate([[len(x), x[0]], rng.integers(1, EOS, rng.integers(0, 8))])
             for x in inputs]
  packed = bin_pack_pairs(inputs, targets, 24, 10, method)
  assert packed["inputs"].shape[1] == 24 and packed["targets"].shape[1] == 10
  seen = []
  for row in range(len(packed["inputs"])):
    ins = _segments({"tokens": packed["inputs"][row],
                     "segment_ids": packed["input_segment_ids"][row]})
    outs = _segments({"tokens": packed["targets"][row],
                      "segment_ids": packed["target_segment_ids"][row]})
    assert len(ins) == len(outs)
    for x, t in zip(ins, outs):
      assert (t[0], t[1]) == (len(x), x[0])
      seen.append(tuple(x))
    for side in ("input", "target"):
      segs, pos = packed[f"{side}_segment_ids"][row], packed[f"{side}_positions"][row]
      for s in range(1, segs.max() + 1):
        np.testing.assert_array_equal(pos[segs == s], np.arange((segs == s).sum()))
  assert sorted(seen) == sorted(tuple(x) for x in inputs)
  # Within capacity on both sides (at least the bound) yet well under one pair per row.
  bound = max(-(-sum(map(len, inputs)) // 24), -(-sum(map(len, targets)) // 10))
  assert bound <= len(packed["inputs"]) < 0.7 * len(inputs)


# --- isolation under every mask kind ------------------------------------------------------


def _packed_batch(method: str, rows: int = 3) -> dict[str, np.ndarray]:
  docs = _docs(40, seed=2, max_len=14)
  packed = bin_pack_documents(docs, [np.ones(len(d), bool) for d in docs], SEQ, EOS, method)
  return {k: v[:rows] for k, v in packed.items()}


def _mask_args(batch: dict[str, np.ndarray]) -> dict:
  """Every optional argument any mask kind takes, with values that stress isolation: a
  prefix reaching into later segments, random prefix flags, and blocks of 4 positions
  (positions restart per segment, so a block never spans two)."""
  rng = np.random.default_rng(0)
  b, length = batch["tokens"].shape
  return {"prefix_len": jnp.full((b,), length - 3),
          "is_prefix": jnp.asarray(rng.random((b, length)) < 0.5),
          "block_ids": jnp.asarray(batch["positions"] // 4)}


@pytest.mark.parametrize("kind", sorted(attention._KINDS))
@pytest.mark.parametrize("method", BIN_PACKINGS)
def test_no_mask_kind_crosses_a_bin_packed_segment(kind, method):
  batch = _packed_batch(method)
  segs = batch["segment_ids"]
  assert (segs.max(1) > 1).all() and (segs == 0).any()  # several segments, some padding
  mask = np.asarray(attention.attention_mask(kind, segment_ids=jnp.asarray(segs),
                                             **_mask_args(batch)))[:, 0]
  same = (segs[:, :, None] == segs[:, None, :]) & (segs[:, None, :] > 0)
  assert not (mask & ~same).any()
  assert mask[same & (np.arange(SEQ)[:, None] == np.arange(SEQ))[None]].all()  # self


@pytest.fixture(scope="module")
def text_model():
  cfg = TransformerConfig(vocab_size=VOCAB, num_layers=2, d_model=16, num_heads=2, d_ff=32,
                          max_len=SEQ, pos_emb="rotary", init_std=0.5)
  with nnx.use_eager_sharding(False):
    model = TextTransformer(cfg, rngs=nnx.Rngs(0))

  @jax.jit
  def hidden(tokens, positions, mask):
    return model(tokens, mask=mask, positions=positions)

  return hidden


@pytest.mark.parametrize("kind", sorted(attention._KINDS))
@pytest.mark.parametrize("method", BIN_PACKINGS)
def test_model_outputs_of_other_segments_ignore_a_perturbed_segment(text_model, kind, method):
  batch = _packed_batch(method)
  segs = jnp.asarray(batch["segment_ids"])
  mask = attention.attention_mask(kind, segment_ids=segs, **_mask_args(batch))
  positions = jnp.asarray(batch["positions"])
  base = np.asarray(text_model(jnp.asarray(batch["tokens"]), positions, mask))
  target = batch["segment_ids"] == 2
  tokens = np.where(target, (batch["tokens"] + 7) % (VOCAB - 1) + 1, batch["tokens"])
  out = np.asarray(text_model(jnp.asarray(tokens), positions, mask))
  others = ~target & (batch["segment_ids"] > 0)
  np.testing.assert_allclose(out[others], base[others], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out[target], base[target])  # the perturbation does reach segment 2


@pytest.mark.parametrize("method", BIN_PACKINGS)
def test_encoder_decoder_pairs_are_isolated(method):
  """Perturbing example 2's input changes only example 2's decoder states."""
  rng = np.random.default_rng(3)
  inputs = [rng.integers(1, EOS, rng.integers(2, 12)).astype(np.int32) for _ in range(30)]
  targets = [rng.integers(1, EOS, rng.integers(2, 6)).astype(np.int32) for _ in range(30)]
  p = {k: v[:2] for k, v in bin_pack_pairs(inputs, targets, SEQ, 16, method).items()}
  cfg = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=1, dec_layers=1, d_model=16,
                             num_heads=2, d_ff=32, max_len=SEQ, pos_emb="rotary",
                             init_std=0.5)
  with nnx.use_eager_sharding(False):
    model = EncoderDecoder(cfg, rngs=nnx.Rngs(0))

  def decode(enc):
    return np.asarray(model(jnp.asarray(enc), jnp.asarray(p["targets"]),
                            enc_segment_ids=jnp.asarray(p["input_segment_ids"]),
                            dec_segment_ids=jnp.asarray(p["target_segment_ids"]),
                            enc_positions=jnp.asarray(p["input_positions"]),
                            dec_positions=jnp.asarray(p["target_positions"])))

  base = decode(p["inputs"])
  out = decode(np.where(p["input_segment_ids"] == 2, (p["inputs"] + 5) % (VOCAB - 1) + 1,
                        p["inputs"]))
  mine = p["target_segment_ids"] == 2
  others = ~mine & (p["target_segment_ids"] > 0)
  np.testing.assert_allclose(out[others], base[others], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out[mine], base[mine])


# --- pipeline ---------------------------------------------------------------------------


def _data_cfg(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(source="shakespeare", cache_dir="", vocab_size=2048,
                                        seq_len=64, **kw))


def test_pipeline_packs_by_data_packing_and_caches_each_separately():
  concat, tok = pipeline.build_text_dataset(_data_cfg(packing="concat"), "validation", "bpe")
  ffd, _ = pipeline.build_text_dataset(_data_cfg(packing="first_fit_decreasing"),
                                       "validation", "bpe")
  assert (concat.arrays["segment_ids"] > 0).all()  # concat never pads
  segs = ffd.arrays["segment_ids"]
  assert (segs == 0).any() and len(ffd) >= len(concat)
  # Every bin-packed segment ends with the end-of-document id or fills a whole row.
  for row in range(len(ffd)):
    for s in range(1, segs[row].max() + 1):
      seg = ffd.arrays["tokens"][row][segs[row] == s]
      assert seg[-1] == tok.eos_id or len(seg) == 64
  with pytest.raises(ValueError, match="data.packing='bestfit'; valid: concat, "):
    pipeline.build_text_dataset(_data_cfg(packing="bestfit"), "validation", "bpe")


def test_bad_packing_is_a_one_line_error_before_training(tmp_path, capsys):
  code = main_lib.main(["--config=configs/gpt.py:tiny", f"--workdir={tmp_path}/r",
                        "--config.data.packing=bestfit"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert "data.packing='bestfit'; valid: concat, first_fit_decreasing, best_fit" in err
