"""T5 <-> our encoder-decoder with relative position bias, RMSNorm and no biases
(pretrain/hf/t5.py): T5's relative position buckets, and logits parity with transformers'
T5ForConditionalGeneration in both directions, for T5 v1.0 (ReLU, tied embeddings: the
output scale is folded) and v1.1 (gated GELU, untied)."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.layers import relative_position_buckets
from pretrain import checkpoint
from pretrain.hf import convert

from helpers import (encoder_decoder_logits, hf_seq2seq_logits, save_perturbed,
                     torch_and_transformers, with_params)

VERSIONS = {"v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
            "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_transformers(bidirectional):
  torch, _ = torch_and_transformers()
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-300, 300)[None, :]
  for buckets, distance in ((32, 128), (8, 20)):
    theirs = T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=buckets,
        max_distance=distance).numpy()
    ours = relative_position_buckets(relative, bidirectional=bidirectional,
                                     num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def _hf_t5(directory, version: str):
  torch, tf = torch_and_transformers()
  torch.manual_seed(0)
  # 8 buckets up to distance 12: the 20-token inputs reach the log-spaced buckets too.
  model = tf.T5ForConditionalGeneration(tf.T5Config(
      vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      num_decoder_layers=3, relative_attention_num_buckets=8,
      relative_attention_max_distance=12, dropout_rate=0.0, decoder_start_token_id=0,
      **VERSIONS[version]))
  return save_perturbed(model, directory)


def _check_parity(what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
  """Within 1e-5 of the logits' scale: T5's init (embeddings of std 1, no output scaling in
  v1.1) gives logits in the tens, where float32 rounding alone exceeds 1e-5 absolute."""
  diff, scale = np.abs(ours - theirs).max(), max(1.0, np.abs(theirs).max())
  print(f"\n{what} logits max |diff| = {diff:.2e} (max |logit| {scale:.1f})")
  assert diff < 1e-5 * scale


def _inputs():
  rng = np.random.default_rng(1)
  return rng.integers(1, 128, (2, 20)), rng.integers(1, 128, (2, 12))


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_t5_import_matches_hf_logits(tmp_path, version):
  hf = _hf_t5(tmp_path, version)
  imported = convert.import_hf(str(tmp_path))
  assert imported.unused == [], imported.unused
  cfg = imported.config
  assert (cfg.pos_emb, cfg.norm_type, cfg.use_bias, cfg.dec_layers) == (
      "relative", "rmsnorm", False, 3)
  enc, dec = _inputs()
  ours = encoder_decoder_logits(with_params(EncoderDecoder, cfg, imported.params), enc, dec)
  _check_parity(f"import t5 {version}", ours, hf_seq2seq_logits(hf, enc, dec))
  # init_from.path=<HF T5 dir>: every param loads.
  target = nnx.to_pure_dict(nnx.state(with_params(EncoderDecoder, cfg), nnx.Param))
  _, report = checkpoint.load_params(str(tmp_path), -1, "", target)
  assert not (report.missing or report.shape_mismatch or report.unused), report.summary()


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_t5_export_matches_hf_logits(tmp_path, version):
  tie = VERSIONS[version]["tie_word_embeddings"]
  cfg = EncoderDecoderConfig(
      vocab_size=128, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_len=64,
      pos_emb="relative", norm="pre", norm_type="rmsnorm", use_bias=False, embed_norm=False,
      activation="relu" if version == "v1.0" else "geglu", tie_embeddings=tie, ln_eps=1e-6,
      relative_buckets=8, relative_max_distance=12, dec_layers=3)
  ours = with_params(EncoderDecoder, cfg)
  convert.export_hf(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), cfg, str(tmp_path))
  tf = torch_and_transformers()[1]
  hf = tf.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  enc, dec = _inputs()
  _check_parity(f"export t5 {version}", encoder_decoder_logits(ours, enc, dec),
                hf_seq2seq_logits(hf, enc, dec))


def test_t5_export_refuses_what_t5_cannot_hold(tmp_path):
  cfg = EncoderDecoderConfig(vocab_size=128, num_layers=1, d_model=32, num_heads=4, d_ff=64,
                             pos_emb="relative", norm_type="rmsnorm", dec_layers=1)
  params = nnx.to_pure_dict(nnx.state(with_params(EncoderDecoder, cfg), nnx.Param))
  with pytest.raises(ValueError, match=r"T5ForConditionalGeneration layout for \{'use_bias'"):
    convert.export_hf(params, cfg, str(tmp_path))
