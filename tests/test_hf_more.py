"""Continued pretraining across shapes: position tables of another length or grid load
interpolated, a new tokenizer's rows load from the old one's (pretrain/transfer.py); BART
and ViT import/export parity with transformers (pretrain/hf/bart.py, vit.py)."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx
from PIL import Image
from tokenizers import decoders, models, pre_tokenizers

from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.vit import MAE, ViT, ViTConfig, patchify, sincos_grid_positions
from objectives.mae import masked_mse
from pretrain import checkpoint, transfer
from pretrain import main as main_lib
from pretrain.hf import convert

from helpers import (encoder_decoder_logits, hf_seq2seq_logits, save_perturbed,
                     torch_and_transformers, with_params)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One step at lr 0 (warmup from 0): the target's saved params are exactly what it loaded.
QUICK = ["--config.train.peak_flops_per_device=1e12", "--config.optim.warmup_steps=1",
         "--config.train.eval_every=0"]
FROZEN = [*QUICK, "--config.train.steps=1", "--config.train.checkpoint_every=1"]
SOURCE = [*QUICK, "--config.train.steps=2", "--config.train.checkpoint_every=2"]


def test_sequence_table_by_hand():
  table = np.array([[0.0], [3.0], [6.0]])
  # Output i reads input coordinate (i + 0.5) * 3 / 6 - 0.5, clamped to [0, 2].
  np.testing.assert_allclose(transfer.resize_sequence_table(table, 6)[:, 0],
                             [0.0, 0.75, 2.25, 3.75, 5.25, 6.0])
  np.testing.assert_array_equal(transfer.resize_sequence_table(table, 2), table[:2])


def test_grid_table_by_hand_keeps_the_prefix_rows():
  cls = np.array([[9.0, -9.0]])
  grid = np.array([[0.0, 4.0], [8.0, 12.0]])  # value at (r, c) = 8r + 4c, both channels
  table = np.concatenate([cls, np.stack([grid.reshape(-1)] * 2, axis=-1)])
  out = transfer.resize_grid_table(table, (2, 2), (4, 4), num_prefix=1)
  np.testing.assert_array_equal(out[0], cls[0])
  axis = np.array([0.0, 0.25, 0.75, 1.0])  # 2 -> 4 samples, half-pixel centred, clamped
  want = 8 * axis[:, None] + 4 * axis[None, :]
  np.testing.assert_allclose(out[1:, 0].reshape(4, 4), want)
  np.testing.assert_allclose(out[1:, 1], out[1:, 0])
  # Upsampling agrees with jax.image.resize's linear kernel.
  rows = np.random.default_rng(0).normal(size=(49, 3))
  ours = transfer.resize_grid_table(rows, (7, 7), (8, 8))
  theirs = jax.image.resize(jnp.asarray(rows.reshape(7, 7, 3)), (8, 8, 3), "linear")
  np.testing.assert_allclose(ours, np.asarray(theirs).reshape(64, 3), atol=1e-5)


def test_resize_positions_dispatches_on_the_path():
  table = np.ones((4, 2))
  assert transfer.resize_positions("pos_embed/table", table, (8, 2)).shape == (8, 2)
  assert transfer.resize_positions("encoder/pos/learned/table", table, (9, 2)).shape == (9, 2)
  assert transfer.resize_positions("encoder/pos/learned/table", table, (8, 2)) is None  # 2x4?
  assert transfer.resize_positions("dec_pos_embed/table", table, (8, 2)) is None
  assert transfer.resize_positions("pos_embed/table", table, (8, 3)) is None


def _wordpiece(vocab: list[str]) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)},
                                              unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.decoder = decoders.WordPiece()
  return tok


def test_vocab_map_by_hand():
  old = _wordpiece(["[PAD]", "[UNK]", "a", "##b", "c", "##d"])
  new = _wordpiece(["[PAD]", "[UNK]", "ab", "c", "abd", "x"])
  vocab = transfer.VocabMap.build(old, new)
  # Same strings copied; "ab" = a ##b, "abd" = a ##b ##d; "x" is the old [UNK].
  assert vocab.sources == ((0,), (1,), (2, 3), (4,), (2, 3, 5), (1,))
  assert (vocab.copied, vocab.averaged, vocab.fresh) == (3, 3, 0)
  table = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)  # old vocab 6, padded to 8
  out = vocab.apply(table, fresh=np.full((8, 2), -1.0, np.float32))
  np.testing.assert_array_equal(out[0], table[0])
  np.testing.assert_array_equal(out[2], (table[2] + table[3]) / 2)
  np.testing.assert_array_equal(out[3], table[4])
  np.testing.assert_allclose(out[4], (table[2] + table[3] + table[5]) / 3)
  np.testing.assert_array_equal(out[6:], -1.0)  # padding rows past the new vocab stay fresh


def _main(config: str, workdir, *flags) -> str:
  assert main_lib.main([f"--config={ROOT}/configs/{config}", f"--workdir={workdir}",
                        *flags]) == 0
  return str(workdir)


@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory):
  """A causal LM with max_len 64 on Shakespeare's own 1024-token BPE."""
  return _main("gpt.py:tiny", tmp_path_factory.mktemp("shakespeare"), *SOURCE,
               "--config.model.num_layers=1", "--config.model.d_model=32",
               "--config.model.d_ff=64", "--config.data.vocab_size=1024",
               "--config.train.global_batch=4")


def test_text_run_continues_with_longer_positions_and_another_vocabulary(
    shakespeare_run, tmp_path, capsys):
  target = _main("gpt.py:tiny", tmp_path, *FROZEN, "--config.model.num_layers=1",
                 "--config.model.d_model=32", "--config.model.d_ff=64",
                 "--config.model.max_len=128", "--config.data.source=python_stdlib",
                 "--config.data.vocab_size=2048", "--config.train.global_batch=4",
                 f"--config.init_from.path={shakespeare_run}", "--config.init_from.vocab=extend")
  out = capsys.readouterr().out
  assert "1 interpolated, 2 vocab-mapped" in out and "interpolated: pos_embed/table" in out
  assert "vocab-mapped: embed/table" in out and "vocab-mapped: logits_bias" in out
  src, dst = checkpoint.read_params(shakespeare_run), checkpoint.read_params(target)
  assert src["pos_embed/table"].shape == (64, 32) and dst["pos_embed/table"].shape == (128, 32)
  np.testing.assert_allclose(dst["pos_embed/table"],
                             transfer.resize_sequence_table(src["pos_embed/table"], 128),
                             atol=1e-6)
  old = tokenizers.Tokenizer.from_file(os.path.join(shakespeare_run, "tokenizer.json"))
  new = tokenizers.Tokenizer.from_file(os.path.join(target, "tokenizer.json"))
  assert (old.get_vocab_size(), new.get_vocab_size()) == (1024, 2048)
  vocab = transfer.VocabMap.build(old, new)
  assert vocab.copied > 100 and vocab.averaged > 100, vocab.summary()
  assert vocab.summary() in out
  rows = [i for i, ids in enumerate(vocab.sources) if ids]
  want = vocab.apply(src["embed/table"], fresh=dst["embed/table"])
  np.testing.assert_allclose(dst["embed/table"][rows], want[rows], atol=1e-6)
  # Tokens in both vocabularies keep their exact rows.
  common = sorted(set(old.get_vocab()) & set(new.get_vocab()))
  np.testing.assert_array_equal(dst["embed/table"][[new.token_to_id(t) for t in common]],
                                src["embed/table"][[old.token_to_id(t) for t in common]])


def _image_folder(root, size: int) -> str:
  rng = np.random.default_rng(0)
  for label in ("a", "b"):
    os.makedirs(root / label)
    for k in range(64):
      image = rng.integers(0, 256, (size, size), np.uint8)
      Image.fromarray(image).save(root / label / f"{k}.png")
  return str(root)


def test_vit_grid_28_loads_into_32_interpolated(tmp_path, capsys):
  vit = ["--config.model.pos_emb=learned", "--config.model.num_layers=1",
         "--config.model.d_model=32", "--config.model.d_ff=64", "--config.train.global_batch=8"]
  source = _main("mae.py:tiny", tmp_path / "src", *SOURCE, *vit)
  images = _image_folder(tmp_path / "images", 32)
  target = _main("mae.py:tiny", tmp_path / "dst", *FROZEN, *vit,
                 "--config.data.source=image_folder", f"--config.data.path={images}",
                 f"--config.init_from.path={source}")
  out = capsys.readouterr().out
  assert "2 interpolated" in out, out
  src, dst = checkpoint.read_params(source), checkpoint.read_params(target)
  for name in ("encoder/pos/learned/table", "dec_pos/learned/table"):
    assert src[name].shape[0] == 49 and dst[name].shape[0] == 64  # 7x7 -> 8x8 patches of 4
    np.testing.assert_allclose(dst[name], transfer.resize_grid_table(src[name], (7, 7), (8, 8)),
                               atol=1e-6)
  kernel = "encoder/patch_embed/kernel"
  np.testing.assert_array_equal(dst[kernel], src[kernel])


# BART: import and export parity with BartForConditionalGeneration (float32, 1e-5).
BART = EncoderDecoderConfig(vocab_size=128, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                            max_len=24, pos_emb="learned", norm="post", embed_norm=True,
                            activation="gelu_exact", dec_layers=2, dec_embeddings=True)


def _bart_hf(directory):
  """A random tiny HF BART, every tensor perturbed (norms and biases start constant),
  saved as safetensors in `directory`."""
  torch, tf = torch_and_transformers()
  torch.manual_seed(0)
  model = tf.BartForConditionalGeneration(tf.BartConfig(
      vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
      decoder_ffn_dim=64, max_position_embeddings=24, activation_function="gelu",
      pad_token_id=0, dropout=0.0))
  with torch.no_grad():
    model.final_logits_bias.add_(0.05 * torch.randn_like(model.final_logits_bias))
  return save_perturbed(model, directory)


def _ours(cfg, flat: dict | None = None, seed: int = 0):
  return with_params(EncoderDecoder, cfg, flat, seed)


def _bart_inputs():
  rng = np.random.default_rng(1)
  return rng.integers(1, 128, (2, 20)), rng.integers(1, 128, (2, 12))


def test_bart_import_matches_hf_logits(tmp_path):
  hf = _bart_hf(tmp_path)
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == BART and imported.unused == []
  enc, dec = _bart_inputs()
  diff = np.abs(encoder_decoder_logits(_ours(imported.config, imported.params), enc, dec)
                - hf_seq2seq_logits(hf, enc, dec)).max()
  print(f"\nimport bart logits max |diff| = {diff:.2e}")
  assert diff < 1e-5
  # init_from.path=<HF BART dir>: every param of a dec_embeddings model loads.
  target = nnx.to_pure_dict(nnx.state(_ours(BART), nnx.Param))
  loaded, report = checkpoint.load_params(str(tmp_path), -1, "", target)
  assert not (report.missing or report.shape_mismatch or report.unused), report.summary()
  np.testing.assert_array_equal(loaded["dec_embeddings"]["pos_embed"]["table"],
                                imported.params["dec_embeddings/pos_embed/table"])


@pytest.mark.parametrize("shared", [False, True])
def test_bart_export_matches_hf_logits(tmp_path, shared):
  cfg = dataclasses.replace(BART, dec_embeddings=not shared)
  ours = _ours(cfg)
  notes = convert.export_hf(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), cfg, str(tmp_path))
  assert any("both encoder and decoder" in n for n in notes) == shared
  tf = torch_and_transformers()[1]
  hf = tf.BartForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  enc, dec = _bart_inputs()
  diff = np.abs(encoder_decoder_logits(ours, enc, dec)
                - hf_seq2seq_logits(hf, enc, dec)).max()
  print(f"\nexport bart (shared tables: {shared}) logits max |diff| = {diff:.2e}")
  assert diff < 1e-5


# ViT: ViTModel's last_hidden_state against our ViT (MAE's encoder), both directions.
VIT = ViTConfig(image_size=(16, 16), patch_size=(4, 4), d_model=32, num_layers=2, num_heads=4,
                d_ff=64, channels=3, pos_emb="learned", activation="gelu_exact",
                ln_eps=1e-12)


def _our_vit(cfg: ViTConfig, flat: dict | None = None, seed: int = 0):
  """Our ViT with `flat` (MAE `encoder/` paths) or random params, perturbed like HF's."""
  with nnx.use_eager_sharding(False):
    model = ViT(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, leaf: flat["encoder/" + jax.tree_util.keystr(p, simple=True, separator="/")]
      if flat else np.asarray(leaf) + 0.05 * rng.standard_normal(leaf.shape, np.float32),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  nnx.update(model, state)
  return model


def _vit_diff(ours, hf) -> float:
  import torch
  images = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).last_hidden_state
  return float(np.abs(np.asarray(ours(jnp.asarray(images))) - theirs.numpy()).max())


def test_vit_import_matches_hf(tmp_path):
  import torch
  _, tf = torch_and_transformers()
  torch.manual_seed(0)
  hf = tf.ViTModel(tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, num_channels=3))
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn_like(p))
  hf.save_pretrained(str(tmp_path), safe_serialization=True)
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == VIT
  assert imported.unused == ["pooler.dense.bias", "pooler.dense.weight"]
  diff = _vit_diff(_our_vit(imported.config, imported.params), hf.eval())
  print(f"\nimport vit max |diff| = {diff:.2e}")
  assert diff < 1e-5


@pytest.mark.parametrize("pos_emb", ["learned", "sincos"])
def test_vit_export_matches_hf(tmp_path, pos_emb):
  cfg = dataclasses.replace(VIT, pos_emb=pos_emb)
  ours = _our_vit(cfg)
  params = {"encoder": nnx.to_pure_dict(nnx.state(ours, nnx.Param)), "mask_token": np.zeros(1)}
  notes = convert.export_hf(params, cfg, str(tmp_path))
  assert "MAE decoder not exported (ViTModel is the encoder)" in notes
  tf = torch_and_transformers()[1]
  hf = tf.ViTModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
  diff = _vit_diff(ours, hf)
  print(f"\nexport vit ({pos_emb}) max |diff| = {diff:.2e}")
  assert diff < 1e-5


def test_bad_init_from_vocab_is_a_config_error(tmp_path, capsys):
  assert main_lib.main([f"--config={ROOT}/configs/gpt.py:tiny", f"--workdir={tmp_path}",
                        "--config.init_from.vocab=merge"]) == 2
  assert "init_from.vocab='merge'; valid: exact, extend" in capsys.readouterr().err
  assert main_lib.main([f"--config={ROOT}/configs/mae.py:tiny", f"--workdir={tmp_path}",
                        f"--config.init_from.path={tmp_path}",
                        "--config.init_from.vocab=extend"]) == 2
  assert "needs init_from.path and a text objective" in capsys.readouterr().err


def test_vit_mae_import_matches_hf_reconstruction_and_loss(tmp_path):
  """ViTMAEForPreTraining with a given noise vs our MAE on the patches HF keeps."""
  import torch
  _, tf = torch_and_transformers()
  torch.manual_seed(0)
  hf = tf.ViTMAEForPreTraining(tf.ViTMAEConfig(
      image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, num_channels=3, decoder_hidden_size=16,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
      mask_ratio=0.75))
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "pos_embed" not in name and "position_embeddings" not in name:  # fixed sin-cos
        p.add_(0.05 * torch.randn_like(p))
  hf.save_pretrained(str(tmp_path), safe_serialization=True)
  imported = convert.import_hf(str(tmp_path))
  cfg = imported.config
  assert (cfg.dec_d_model, cfg.dec_layers, cfg.dec_heads, cfg.dec_d_ff) == (16, 1, 2, 32)
  assert imported.unused == []
  with nnx.use_eager_sharding(False):
    ours = MAE(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(ours, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, checkpoint.unflatten(imported.params)))
  nnx.update(ours, state)
  _assert_mae_parity(ours, hf, "import vit_mae")


def _assert_mae_parity(ours: MAE, hf, what: str) -> None:
  """Reconstruction (logits) and loss (pixel targets) for the same noise, within 1e-5."""
  import torch
  rng = np.random.default_rng(3)
  images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  noise = rng.random((2, 16)).astype(np.float32)
  with torch.no_grad():
    out = hf.eval()(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)),
                    noise=torch.tensor(noise))
  keep = jnp.asarray(np.argsort(noise, axis=1, kind="stable")[:, :4])  # int(16 * 0.25)
  patches = patchify(jnp.asarray(images), ours.cfg.patch_size)
  pred = ours.decode(ours.encode(patches, keep), keep, 16)
  diff = float(np.abs(np.asarray(pred) - out.logits.numpy()).max())
  loss = float(masked_mse(pred, patches, jnp.asarray(out.mask.numpy())))
  print(f"\n{what} reconstruction max |diff| = {diff:.2e}, loss {loss:.6f} vs "
        f"{out.loss.item():.6f}")
  assert diff < 1e-5 and abs(loss - out.loss.item()) < 1e-5


MAE_CFG = dataclasses.replace(VIT, dec_d_model=16, dec_layers=1, dec_heads=2, dec_d_ff=32)


@pytest.mark.parametrize("pos_emb", ["learned", "sincos"])
def test_vit_mae_export_matches_hf_reconstruction_and_loss(tmp_path, pos_emb):
  """Our MAE (encoder and decoder positions learned or fixed sin-cos) -> HF
  ViTMAEForPreTraining; and back: import gives the exported params again."""
  cfg = dataclasses.replace(MAE_CFG, pos_emb=pos_emb)
  ours = with_params(MAE, cfg)
  params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
  notes = convert.export_hf(params, cfg, str(tmp_path), architecture="ViTMAEForPreTraining",
                            objective={"mask_ratio": 0.75, "norm_pix_loss": False})
  assert ("the decoder's fixed sin-cos grid written as its position table" in notes) == (
      pos_emb == "sincos")
  tf = torch_and_transformers()[1]
  hf = tf.ViTMAEForPreTraining.from_pretrained(str(tmp_path))
  assert (hf.config.decoder_hidden_size, hf.config.mask_ratio, hf.config.norm_pix_loss) == (
      16, 0.75, False)
  _assert_mae_parity(ours, hf, f"export vit_mae ({pos_emb})")
  imported = convert.import_hf(str(tmp_path))
  assert imported.config == dataclasses.replace(cfg, pos_emb="learned")
  flat = convert.by_path(params)
  if pos_emb == "sincos":  # imported as the learned tables it was written as
    flat.update({"encoder/pos/learned/table": sincos_grid_positions(cfg.grid, cfg.d_model),
                 "dec_pos/learned/table": sincos_grid_positions(cfg.grid, cfg.dec_d_model)})
  assert imported.unused == [] and imported.params.keys() == flat.keys()
  for k, v in imported.params.items():
    np.testing.assert_array_equal(v, np.asarray(flat[k]), err_msg=k)


def test_vit_mae_export_needs_the_decoder(tmp_path):
  params = {"encoder": nnx.to_pure_dict(nnx.state(_our_vit(VIT), nnx.Param))}
  with pytest.raises(ValueError, match="needs an MAE's decoder"):
    convert.export_hf(params, VIT, str(tmp_path), architecture="ViTMAEForPreTraining")
  with pytest.raises(ValueError, match="valid: None"):
    convert.export_hf(params, VIT, str(tmp_path), architecture="BertForMaskedLM")
