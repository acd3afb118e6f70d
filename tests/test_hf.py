"""Hugging Face interop: exact round trips, logits parity with transformers both ways, and
`init_from.path=<HF directory>` through `pretrain.main`.

Parity is float32 at 1e-5. HF BERT normalises its embeddings (`bert.embeddings.LayerNorm`)
and ours has no such norm, so BERT parity is checked in two exact parts: the embedding sum
before that norm, and everything after it (HF's normalised embeddings fed to our stack).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from models.attention import attention_mask
from models.transformer import TextTransformer, TransformerConfig
from pretrain import main as main_lib
from pretrain.hf import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
SIZES = dict(vocab_size=128, num_layers=2, d_model=64, num_heads=4, d_ff=256, max_len=32)
OURS = {"bert": TransformerConfig(**SIZES, norm="post", head_transform=True, ln_eps=1e-12),
        "gpt2": TransformerConfig(**SIZES, norm="pre")}
MASK_KIND = {"bert": "bidirectional", "gpt2": "causal"}


def _torch():
  torch = pytest.importorskip("torch", reason="parity tests need the hf extra (torch)")
  transformers = pytest.importorskip("transformers", reason="parity tests need the hf extra")
  return torch, transformers


def hf_model(arch: str, directory):
  """A randomly initialised tiny HF model, every tensor perturbed (HF initialises biases
  and norms to constants, which would hide mapping errors), saved as safetensors."""
  torch, tf = _torch()
  torch.manual_seed(0)
  if arch == "bert":
    cfg = tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256,
                        max_position_embeddings=32, hidden_act="gelu_new")
    model = tf.BertForMaskedLM(cfg)
  else:
    cfg = tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    model = tf.GPT2LMHeadModel(cfg)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(directory), safe_serialization=True)
  return model.eval()


def our_model(cfg: TransformerConfig, flat: dict | None = None, seed: int = 0):
  """Our model with `flat` params ('/'-joined paths), or random ones perturbed like HF's."""
  with nnx.use_eager_sharding(False):
    model = TextTransformer(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, leaf: flat[jax.tree_util.keystr(p, simple=True, separator="/")] if flat else
      np.asarray(leaf) + 0.05 * rng.standard_normal(leaf.shape, np.float32),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  nnx.update(model, state)
  return model


def inputs():
  """Token ids (2, 16) and an HF attention mask with the second row right-padded."""
  ids = np.random.default_rng(1).integers(0, 128, (2, 16))
  valid = np.ones((2, 16), np.int64)
  valid[1, 12:] = 0
  return ids, valid


def ours_logits(model, arch, ids, valid, embed_norm=None):
  """Our logits; `embed_norm` (weight, bias, eps) adds HF BERT's embedding LayerNorm."""
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  x = model.embed(jnp.asarray(ids)) + model.pos_embed(positions)
  if embed_norm is not None:
    weight, bias, eps = embed_norm
    mean = x.mean(-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    x = x * weight + bias
  mask = attention_mask(MASK_KIND[arch], segment_ids=jnp.asarray(valid))
  return np.asarray(model.logits(model.stack(x, mask=mask, positions=positions)))


def hf_logits(model, ids, valid):
  torch, _ = _torch()
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(valid)).logits.numpy()


def bert_embedding_sum(model, ids):
  """HF BERT's word + position + token type 0 embeddings, before its LayerNorm."""
  torch, _ = _torch()
  emb = model.bert.embeddings
  with torch.no_grad():
    ids_t = torch.tensor(ids)
    pos = torch.arange(ids.shape[1])[None]
    return (emb.word_embeddings(ids_t) + emb.position_embeddings(pos)
            + emb.token_type_embeddings(torch.zeros_like(ids_t))).numpy()


def max_diff(a, b, valid):
  """Largest |a - b| over the non-padding positions."""
  return float(np.abs(a - b)[valid.astype(bool)].max())


def check_parity(arch, hf, ours, direction):
  """Compares logits (BERT: both exact parts, see the module docstring) and prints the
  numbers the report quotes."""
  ids, valid = inputs()
  want = hf_logits(hf, ids, valid)
  if arch == "gpt2":
    diff = max_diff(ours_logits(ours, arch, ids, valid), want, valid)
    print(f"\n{direction} gpt2 logits max |diff| = {diff:.2e}")
    assert diff < TOL
    return
  norm = hf.bert.embeddings.LayerNorm
  embed_norm = (norm.weight.detach().numpy(), norm.bias.detach().numpy(), norm.eps)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  ours_sum = np.asarray(ours.embed(jnp.asarray(ids)) + ours.pos_embed(positions))
  emb_diff = float(np.abs(ours_sum - bert_embedding_sum(hf, ids)).max())
  diff = max_diff(ours_logits(ours, arch, ids, valid, embed_norm), want, valid)
  without = max_diff(ours_logits(ours, arch, ids, valid), want, valid)
  print(f"\n{direction} bert: embedding sum max |diff| = {emb_diff:.2e}, logits with HF's "
        f"embedding norm {diff:.2e}, our model as is (no embedding norm) {without:.2e}")
  assert emb_diff < TOL and diff < TOL


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_import_matches_hf_logits(arch, tmp_path):
  hf = hf_model(arch, tmp_path)
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == OURS[arch]
  check_parity(arch, hf, our_model(imported.config, imported.params), "import")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_export_loads_in_hf_with_same_logits(arch, tmp_path):
  _, tf = _torch()
  ours = our_model(OURS[arch])
  if arch == "gpt2":  # GPT-2 has no output bias: a nonzero one is dropped with a note
    ours.logits_bias[...] = jnp.zeros_like(ours.logits_bias[...])
  notes = convert.export_hf(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), OURS[arch],
                            str(tmp_path))
  assert len(notes) == (2 if arch == "bert" else 0), notes
  cls = tf.BertForMaskedLM if arch == "bert" else tf.GPT2LMHeadModel
  hf = cls.from_pretrained(str(tmp_path)).eval()
  check_parity(arch, hf, ours, "export")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
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


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_import_then_export_is_identical(arch, tmp_path):
  """HF -> ours -> HF gives every tensor back, except what BERT folds: token type 0 moves
  into the positions, and the embedding norm has no counterpart (reported unused)."""
  hf_model(arch, tmp_path / "hf")
  imported = convert.import_hf(str(tmp_path / "hf"))
  convert.export_hf(imported.params, imported.config, str(tmp_path / "out"))
  src = load_file(str(tmp_path / "hf" / convert.WEIGHTS))
  out = load_file(str(tmp_path / "out" / convert.WEIGHTS))
  assert sorted(src) == sorted(out)
  folded = {}
  if arch == "bert":
    types, pos = "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.position_embeddings.weight"
    folded = {pos: src[pos] + src[types][0], types: np.zeros_like(src[types])}
    assert imported.unused == ["bert.embeddings.LayerNorm.bias", "bert.embeddings.LayerNorm.weight"]
    folded.update({n: out[n] for n in imported.unused})
  for name in src:
    np.testing.assert_array_equal(out[name], folded.get(name, src[name]), err_msg=name)


def test_init_from_hf_directory_through_main(tmp_path, capsys):
  """`init_from.path=<HF dir>` loads every param that matches (values checked after a
  step at a negligible lr) and reports the HF tensors it could not use."""
  cfg = TransformerConfig(vocab_size=2048, num_layers=2, d_model=128, num_heads=2, d_ff=512,
                          max_len=128, norm="post", head_transform=True, ln_eps=1e-12)
  source = convert.by_path(nnx.to_pure_dict(nnx.state(our_model(cfg, seed=3), nnx.Param)))
  convert.export_hf(source, cfg, str(tmp_path / "hf"))
  flags = [f"--config.{k}={v}" for k, v in convert.import_hf(str(tmp_path / "hf")).overrides.items()]
  argv = [f"--config={ROOT}/configs/bert.py:tiny", f"--workdir={tmp_path / 'run'}", *flags,
          f"--config.init_from.path={tmp_path / 'hf'}", "--config.train.steps=1",
          "--config.train.eval_every=0", "--config.optim.warmup_steps=0",
          "--config.optim.lr=1e-12"]
  assert main_lib.main(argv) == 0
  out = capsys.readouterr().out
  assert f"init_from: {len(source)} matched, 0 reshaped->fresh, 0 fresh, 2 unused" in out
  assert "unused source: bert.embeddings.LayerNorm.weight" in out
  loaded, _ = convert.load_run(str(tmp_path / "run"))
  for name, value in convert.by_path(loaded).items():
    np.testing.assert_allclose(value, source[name], atol=1e-6, err_msg=name)
