"""CLIPModel <-> our CLIP (pretrain/hf/clip.py): the logits and both towers' normalized
embeddings match transformers' in both directions, and an HF directory loads as init_from."""
from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from models.clip import CLIP, CLIPConfig
from models.transformer import TransformerConfig
from models.vit import ViTConfig
from pretrain import checkpoint
from pretrain.hf import convert

from helpers import save_perturbed, torch_and_transformers, with_params

VOCAB, TEXT_LEN, EOS = 100, 12, 99


def _inputs():
  """Right-padded captions ending in EOS (the largest id, as CLIP's end-of-text token is),
  and images."""
  rng = np.random.default_rng(1)
  tokens = np.zeros((3, TEXT_LEN), np.int64)
  for row, length in enumerate((12, 7, 4)):
    tokens[row, :length - 1] = rng.integers(1, EOS, length - 1)
    tokens[row, length - 1] = EOS
  return tokens, rng.normal(size=(3, 16, 16, 3)).astype(np.float32)


def _ours_logits(model: CLIP, tokens, images):
  unit = lambda x: np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)  # noqa: E731
  img, txt = unit(model.embed_images(images)), unit(model.embed_texts(tokens))
  return np.exp(float(model.logit_scale[...])) * img @ txt.T, img, txt


def _hf_logits(model, tokens, images):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0),
                pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  return (out.logits_per_image.numpy(), out.image_embeds.numpy(), out.text_embeds.numpy())


def _check(what, ours, theirs):
  diffs = {name: np.abs(a - b).max()
           for name, a, b in zip(("logits", "image embeds", "text embeds"), ours, theirs)}
  print(f"\n{what} clip max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
  assert max(diffs.values()) < 1e-5, diffs


def test_clip_import_matches_hf(tmp_path):
  torch, tf = torch_and_transformers()
  torch.manual_seed(0)
  act = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)
  hf = save_perturbed(tf.CLIPModel(tf.CLIPConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=TEXT_LEN, eos_token_id=EOS, pad_token_id=0,
                       **act),
      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=16, patch_size=4, **act),
      projection_dim=24)), tmp_path)
  imported = convert.import_hf(str(tmp_path))
  assert imported.unused == [], imported.unused
  tokens, images = _inputs()
  ours = with_params(CLIP, imported.config, imported.params)
  _check("import", _ours_logits(ours, tokens, images), _hf_logits(hf, tokens, images))
  target = nnx.to_pure_dict(nnx.state(with_params(CLIP, imported.config), nnx.Param))
  _, report = checkpoint.load_params(str(tmp_path), -1, "", target)
  assert not (report.missing or report.shape_mismatch or report.unused), report.summary()
  assert imported.overrides["model.name"] == "clip"


@pytest.mark.parametrize("pos_emb", ["learned", "sincos"])
def test_clip_export_matches_hf(tmp_path, pos_emb):
  cfg = CLIPConfig(
      vision=ViTConfig(image_size=(16, 16), patch_size=(4, 4), d_model=48, num_layers=2,
                       num_heads=4, d_ff=96, pos_emb=pos_emb, pre_norm=True,
                       activation="quick_gelu", ln_eps=1e-5),
      text=TransformerConfig(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                             max_len=TEXT_LEN, activation="quick_gelu", ln_eps=1e-5),
      embed_dim=24)
  ours = with_params(CLIP, cfg)  # perturbed: the patch bias is nonzero, folded on export
  notes = convert.export_hf(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), cfg, str(tmp_path))
  assert any("bias folded" in n for n in notes)
  config = json.loads((tmp_path / "config.json").read_text())
  config["text_config"]["eos_token_id"] = EOS  # what the export note asks the user to set
  (tmp_path / "config.json").write_text(json.dumps(config))
  tf = torch_and_transformers()[1]
  hf = tf.CLIPModel.from_pretrained(str(tmp_path)).eval()
  tokens, images = _inputs()
  _check(f"export ({pos_emb})", _ours_logits(ours, tokens, images), _hf_logits(hf, tokens, images))
