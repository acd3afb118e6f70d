"""Hugging Face interop: exact round trips, logits parity with transformers both ways, and
`init_from.path=<HF directory>` through `pretrain.main`.

Parity is float32 at 1e-5, end to end: our model's logits (its own embedding norm, GELU
and head) against HF's from the same token ids and padding mask. "bert" is HF's default
erf GELU (hidden_act="gelu", ours "gelu_exact"); "bert-tanh" is our recipe's tanh GELU
(ours "gelu", HF "gelu_new").
"""
from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from models.attention import attention_mask
from models.transformer import TextTransformer, TransformerConfig
from pretrain import main as main_lib
from pretrain.hf import convert

from helpers import save_perturbed, torch_and_transformers, with_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
SIZES = dict(vocab_size=128, num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=32)
BERT = TransformerConfig(**SIZES, norm="post", head_transform=True, embed_norm=True,
                         ln_eps=1e-12, activation="gelu_exact")
OURS = {"bert": BERT, "bert-tanh": dataclasses.replace(BERT, activation="gelu"),
        "gpt2": TransformerConfig(**SIZES, norm="pre")}
HF_ACT = {"bert": "gelu", "bert-tanh": "gelu_new"}
CASES = list(OURS)


def hf_model(arch: str, directory):
  """A randomly initialised tiny HF model, every tensor perturbed (HF initialises biases
  and norms to constants, which would hide mapping errors), saved as safetensors."""
  torch, tf = torch_and_transformers()
  torch.manual_seed(0)
  if arch.startswith("bert"):
    cfg = tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256,
                        max_position_embeddings=32, hidden_act=HF_ACT[arch])
    model = tf.BertForMaskedLM(cfg)
  else:
    cfg = tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    model = tf.GPT2LMHeadModel(cfg)
  return save_perturbed(model, directory)


def our_model(cfg: TransformerConfig, flat: dict | None = None, seed: int = 0):
  return with_params(TextTransformer, cfg, flat, seed)


def inputs():
  """Token ids (2, 16) and an HF attention mask with the second row right-padded."""
  ids = np.random.default_rng(1).integers(0, 128, (2, 16))
  valid = np.ones((2, 16), np.int64)
  valid[1, 12:] = 0
  return ids, valid


def ours_logits(model, arch, ids, valid):
  """Our model's logits, tokens in; HF's padding mask as segment ids (0 = padding)."""
  kind = "causal" if arch == "gpt2" else "bidirectional"
  mask = attention_mask(kind, segment_ids=jnp.asarray(valid))
  return np.asarray(model.logits(model(jnp.asarray(ids), mask=mask)))


def hf_logits(model, ids, valid):
  torch, _ = torch_and_transformers()
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(valid)).logits.numpy()


def max_diff(a, b, valid):
  """Largest |a - b| over the non-padding positions."""
  return float(np.abs(a - b)[valid.astype(bool)].max())


def check_parity(arch, hf, ours, direction):
  """Compares end-to-end logits and prints the number the report quotes."""
  ids, valid = inputs()
  diff = max_diff(ours_logits(ours, arch, ids, valid), hf_logits(hf, ids, valid), valid)
  print(f"\n{direction} {arch} logits max |diff| = {diff:.2e}")
  assert diff < TOL


@pytest.mark.parametrize("arch", CASES)
def test_import_matches_hf_logits(arch, tmp_path):
  hf = hf_model(arch, tmp_path)
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == OURS[arch]
  check_parity(arch, hf, our_model(imported.config, imported.params), "import")


@pytest.mark.parametrize("arch", CASES)
def test_export_loads_in_hf_with_same_logits(arch, tmp_path):
  _, tf = torch_and_transformers()
  ours = our_model(OURS[arch])
  if arch == "gpt2":  # GPT-2 has no output bias: a nonzero one is dropped with a note
    ours.logits_bias[...] = jnp.zeros_like(ours.logits_bias[...])
  notes = convert.export_hf(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), OURS[arch],
                            str(tmp_path))
  assert notes == ([] if arch == "gpt2" else
                   ["token_type_embeddings written as zeros (ours has no token types)"])
  cls = tf.GPT2LMHeadModel if arch == "gpt2" else tf.BertForMaskedLM
  hf = cls.from_pretrained(str(tmp_path)).eval()
  check_parity(arch, hf, ours, "export")


@pytest.mark.parametrize("arch", CASES)
def test_export_then_import_is_identical(arch, tmp_path):
  """Ours -> HF -> ours gives every param back bit for bit (torch-free)."""
  params = convert.by_path(nnx.to_pure_dict(nnx.state(our_model(OURS[arch]), nnx.Param)))
  if arch == "gpt2":
    params["logits_bias"] = jnp.zeros_like(params["logits_bias"])
  convert.export_hf(params, OURS[arch], str(tmp_path))
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == OURS[arch]
  assert sorted(imported.params) == sorted(params)
  for name, value in params.items():
    np.testing.assert_array_equal(imported.params[name], value, err_msg=name)


@pytest.mark.parametrize("arch", CASES)
def test_import_then_export_is_identical(arch, tmp_path):
  """HF -> ours -> HF gives every tensor back and leaves none unused, except what BERT
  folds: token type 0 moves into the positions."""
  hf_model(arch, tmp_path / "hf")
  imported = convert.import_hf(str(tmp_path / "hf"))
  convert.export_hf(imported.params, imported.config, str(tmp_path / "out"))
  src = load_file(str(tmp_path / "hf" / convert.WEIGHTS))
  out = load_file(str(tmp_path / "out" / convert.WEIGHTS))
  assert sorted(src) == sorted(out) and imported.unused == []
  folded = {}
  if arch != "gpt2":
    types, pos = "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.position_embeddings.weight"
    folded = {pos: src[pos] + src[types][0], types: np.zeros_like(src[types])}
  for name in src:
    np.testing.assert_array_equal(out[name], folded.get(name, src[name]), err_msg=name)


def test_init_from_hf_directory_through_main(tmp_path, capsys):
  """`init_from.path=<HF dir>` loads every param (values checked after a step at a
  negligible lr), the embedding norm included, and leaves no HF tensor unused."""
  cfg = dataclasses.replace(BERT, vocab_size=2048, d_model=128, num_heads=2, d_ff=512,
                            max_len=128)
  source = convert.by_path(nnx.to_pure_dict(nnx.state(our_model(cfg, seed=3), nnx.Param)))
  convert.export_hf(source, cfg, str(tmp_path / "hf"))
  flags = [f"--config.{k}={v}" for k, v in convert.import_hf(str(tmp_path / "hf")).overrides.items()]
  argv = [f"--config={ROOT}/configs/bert.py:tiny", f"--workdir={tmp_path / 'run'}", *flags,
          f"--config.init_from.path={tmp_path / 'hf'}", "--config.train.steps=1",
          "--config.train.eval_every=0", "--config.optim.warmup_steps=0",
          "--config.optim.lr=1e-12"]
  assert main_lib.main(argv) == 0
  out = capsys.readouterr().out
  assert "embed_norm/scale" in source
  assert f"init_from: {len(source)} matched, 0 reshaped->fresh, 0 fresh, 0 unused" in out
  loaded, _ = convert.load_run(str(tmp_path / "run"))
  for name, value in convert.by_path(loaded).items():
    np.testing.assert_allclose(value, source[name], atol=1e-6, err_msg=name)
