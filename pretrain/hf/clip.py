"""CLIPModel <-> our CLIP dual encoder (models/clip.py).

The layouts match block for block (pre-LN, `pre_layrnorm` before the vision stack, final
norms, bias-free projections, the log logit scale); three pieces are folded, exactly:
- HF's vision position table has a row for the class token; ours adds none to it, so import
  folds row 0 into `cls_token` and export writes it as zeros;
- HF's patch convolution has no bias; ours (a Dense over `patchify`'s (ph, pw, C) patches)
  has one: zero on import, folded into the patch positions on export (the same sum);
- a fixed sin-cos vision grid exports as HF's learned table.
Text is pooled at the last non-padding token, HF's at the first `eos_token_id`: the same
token when captions end with it, right-padded with id 0. Our config does not know the
tokenizer's end id, so export leaves `text_config.eos_token_id` for the user to set.
"""
from __future__ import annotations

import numpy as np

from models.clip import CLIPConfig
from models.transformer import TransformerConfig
from models.vit import ViTConfig, sincos_grid_positions
from pretrain.hf import vit
from pretrain.hf.bart import _attention, _norm
from pretrain.hf.layout import Rule, expand

ARCHITECTURE, MODEL_TYPE, ACTIVATION_KEY = "CLIPModel", "clip", "text_config.hidden_act"
EMBED = "vision_model.embeddings."
CLS, POSITIONS, CONV = EMBED + "class_embedding", EMBED + "position_embedding.weight", \
    EMBED + "patch_embedding.weight"


def _layer(hf: str, ours: str) -> list[Rule]:
  return [*_attention(hf + "self_attn.", ours + "attn/"),
          *_norm(hf + "layer_norm1", ours + "attn_norm"),
          Rule(hf + "mlp.fc1.weight", (ours + "mlp/wi/kernel",), "linear"),
          Rule(hf + "mlp.fc1.bias", (ours + "mlp/wi/bias",)),
          Rule(hf + "mlp.fc2.weight", (ours + "mlp/wo/kernel",), "linear"),
          Rule(hf + "mlp.fc2.bias", (ours + "mlp/wo/bias",)),
          *_norm(hf + "layer_norm2", ours + "mlp_norm")]


def rules(cfg: CLIPConfig) -> list[Rule]:
  """The one-to-one tensors; the class token, vision positions, patch projection and the
  (scalar) logit scale are handled apart."""
  return [Rule("text_model.embeddings.token_embedding.weight", ("text/embed/table",), "matrix"),
          Rule("text_model.embeddings.position_embedding.weight", ("text/pos_embed/table",),
               "matrix"),
          *expand(_layer("text_model.encoder.layers.{i}.", "text/stack/blocks/{i}/"),
                  cfg.text.num_layers),
          *_norm("text_model.final_layer_norm", "text/stack/final_norm"),
          *_norm("vision_model.pre_layrnorm", "vision/pre_norm"),
          *expand(_layer("vision_model.encoder.layers.{i}.", "vision/stack/blocks/{i}/"),
                  cfg.vision.num_layers),
          *_norm("vision_model.post_layernorm", "vision/stack/final_norm"),
          Rule("visual_projection.weight", ("visual_projection/kernel",), "linear"),
          Rule("text_projection.weight", ("text_projection/kernel",), "linear")]


def config_from_hf(hf: dict, activation: str) -> CLIPConfig:
  text, image = hf["text_config"], hf["vision_config"]
  if image.get("hidden_act", text.get("hidden_act")) != text.get("hidden_act"):
    raise ValueError("CLIP towers with different activations have no counterpart here")
  eps = text.get("layer_norm_eps", 1e-5)
  return CLIPConfig(
      vision=ViTConfig(image_size=(image["image_size"],) * 2,
                       patch_size=(image["patch_size"],) * 2, d_model=image["hidden_size"],
                       num_layers=image["num_hidden_layers"],
                       num_heads=image["num_attention_heads"], d_ff=image["intermediate_size"],
                       channels=image.get("num_channels", 3), pos_emb="learned",
                       use_cls_token=True, pre_norm=True, activation=activation,
                       ln_eps=image.get("layer_norm_eps", eps)),
      text=TransformerConfig(vocab_size=text["vocab_size"],
                             num_layers=text["num_hidden_layers"], d_model=text["hidden_size"],
                             num_heads=text["num_attention_heads"],
                             d_ff=text["intermediate_size"],
                             max_len=text["max_position_embeddings"], activation=activation,
                             ln_eps=eps),
      embed_dim=hf["projection_dim"])


def to_ours(tensors: dict[str, np.ndarray], shapes: dict, cfg: CLIPConfig, hf: dict
            ) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF tensors (consumed from `tensors`) -> our params by path, notes."""
  tensors.pop("text_model.embeddings.position_ids", None)  # buffers older versions saved
  tensors.pop("vision_model.embeddings.position_ids", None)
  ours = {}
  for rule in rules(cfg):
    if rule.hf not in tensors:
      raise ValueError(f"CLIP checkpoint has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  ours["vision/patch_embed/kernel"] = vit.conv_to_dense(tensors.pop(CONV).astype(np.float32))
  ours["vision/patch_embed/bias"] = np.zeros(cfg.vision.d_model, np.float32)
  positions = tensors.pop(POSITIONS).astype(np.float32)  # (1 + N, D)
  ours["vision/cls_token"] = (tensors.pop(CLS).astype(np.float32) + positions[0])[None, None]
  ours["vision/pos/learned/table"] = positions[1:]
  ours["logit_scale"] = np.asarray(tensors.pop("logit_scale"), np.float32).reshape(())
  return ours, ["position row 0 (the class token's) folded into cls_token",
                "patch projection bias set to zero (HF's convolution has none)"]


def to_hf(ours: dict[str, np.ndarray], cfg: CLIPConfig) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our params (consumed from `ours`) -> HF CLIPModel tensors, notes."""
  tensors = {rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours]) for rule in rules(cfg)}
  v = cfg.vision
  tensors[CONV] = vit.dense_to_conv(ours.pop("vision/patch_embed/kernel"), v)
  notes = ["the patch projection's bias folded into the patch positions (HF's convolution "
           "has none)", "the class token's position written as zeros",
           "HF pools text at the first text_config.eos_token_id (not written: set it to the "
           "tokenizer's end-of-text id; ours pools at each caption's last non-padding token)"]
  if v.pos_emb == "learned":
    grid = ours.pop("vision/pos/learned/table")
  else:
    grid = np.asarray(sincos_grid_positions(v.grid, v.d_model))
    notes.append("the fixed sin-cos grid written as the learned position table")
  grid = grid + ours.pop("vision/patch_embed/bias")
  tensors[POSITIONS] = np.concatenate([np.zeros((1, v.d_model), np.float32), grid])
  tensors[CLS] = ours.pop("vision/cls_token").reshape(v.d_model)
  tensors["logit_scale"] = np.asarray(ours.pop("logit_scale"), np.float32).reshape(())
  return tensors, notes


def hf_config(cfg: CLIPConfig, activation: str) -> dict:
  t, v = cfg.text, cfg.vision
  return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
          "projection_dim": cfg.embed_dim, "logit_scale_init_value": float(
              np.log(1 / cfg.init_temperature)),
          "text_config": {"vocab_size": t.vocab_size, "hidden_size": t.d_model,
                          "intermediate_size": t.d_ff, "num_hidden_layers": t.num_layers,
                          "num_attention_heads": t.num_heads,
                          "max_position_embeddings": t.max_len, "hidden_act": activation,
                          "layer_norm_eps": t.ln_eps, "projection_dim": cfg.embed_dim,
                          "pad_token_id": 0},
          "vision_config": {"hidden_size": v.d_model, "intermediate_size": v.d_ff,
                            "num_hidden_layers": v.num_layers,
                            "num_attention_heads": v.num_heads,
                            "image_size": v.image_size[0], "patch_size": v.patch_size[0],
                            "num_channels": v.channels, "hidden_act": activation,
                            "layer_norm_eps": v.ln_eps, "projection_dim": cfg.embed_dim},
          "dtype": "float32"}


def check_exportable(cfg: CLIPConfig) -> dict:
  """Our fields that have no CLIPModel counterpart (empty: exportable)."""
  wrong = vit.check_exportable(cfg.vision)
  if not cfg.vision.pre_norm:
    wrong["vision.pre_norm"] = False
  if cfg.vision.activation != cfg.text.activation or cfg.vision.ln_eps != cfg.text.ln_eps:
    wrong["activation/ln_eps"] = (cfg.vision.activation, cfg.text.activation)
  t = cfg.text
  wrong.update({f"text.{k}": getattr(t, k) for k, want in dict(
      norm="pre", norm_type="layernorm", pos_emb="learned", fused_qkv=False,
      scan_layers=False, use_bias=True).items() if getattr(t, k) != want})
  return wrong
