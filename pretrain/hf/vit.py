"""ViTModel <-> our ViT (models/vit.py), the encoder of the registered `mae` model.

Our params are keyed as MAE's `encoder/...` subtree (the only registered image model), so an
HF ViT directory loads as `init_from.path` into an MAE run's encoder. Differences handled:
- HF's position table (1, 1 + N, D) has a row for the cls token; ours adds no position to
  cls, so import folds row 0 into `cls_token` (exact) and export writes it as zeros;
- the patch projection is a Conv2d (D, C, ph, pw); ours a Dense over patches flattened as
  (ph, pw, C) (`patchify`);
- a fixed sin-cos model exports its grid as HF's learned table (exact; it imports learned);
- the pooler (HF ViTModel's default) has no counterpart: reported unused, not exported.
"""
from __future__ import annotations

import numpy as np

from models.vit import ViTConfig, sincos_grid_positions
from pretrain.hf.layout import Rule, expand

ARCHITECTURE, MODEL_TYPE, PREFIX, OURS = "ViTModel", "vit", "vit.", "encoder/"
CLS, POSITIONS = "embeddings.cls_token", "embeddings.position_embeddings"
CONV = "embeddings.patch_embeddings.projection."
LAYER, BLOCK = "encoder.layer.{i}.", OURS + "stack/blocks/{i}/"


def rules(cfg: ViTConfig) -> list[Rule]:
  """The one-to-one tensors; cls, positions and the patch projection are folded apart."""
  layer = [
      *(Rule(f"{LAYER}attention.attention.{n}.weight", (f"{BLOCK}attn/{n}/kernel",), "linear")
        for n in ("query", "key", "value")),
      *(Rule(f"{LAYER}attention.attention.{n}.bias", (f"{BLOCK}attn/{n}/bias",))
        for n in ("query", "key", "value")),
      Rule(LAYER + "attention.output.dense.weight", (BLOCK + "attn/out/kernel",), "linear", 2),
      Rule(LAYER + "attention.output.dense.bias", (BLOCK + "attn/out/bias",)),
      Rule(LAYER + "layernorm_before.weight", (BLOCK + "attn_norm/scale",)),
      Rule(LAYER + "layernorm_before.bias", (BLOCK + "attn_norm/bias",)),
      Rule(LAYER + "layernorm_after.weight", (BLOCK + "mlp_norm/scale",)),
      Rule(LAYER + "layernorm_after.bias", (BLOCK + "mlp_norm/bias",)),
      Rule(LAYER + "intermediate.dense.weight", (BLOCK + "mlp/wi/kernel",), "linear"),
      Rule(LAYER + "intermediate.dense.bias", (BLOCK + "mlp/wi/bias",)),
      Rule(LAYER + "output.dense.weight", (BLOCK + "mlp/wo/kernel",), "linear"),
      Rule(LAYER + "output.dense.bias", (BLOCK + "mlp/wo/bias",)),
  ]
  return [*expand(layer, cfg.num_layers),
          Rule("layernorm.weight", (OURS + "stack/final_norm/scale",)),
          Rule("layernorm.bias", (OURS + "stack/final_norm/bias",)),
          Rule(CONV + "bias", (OURS + "patch_embed/bias",))]


def config_from_hf(hf: dict, activation: str) -> ViTConfig:
  if not hf.get("qkv_bias", True):
    raise ValueError("qkv_bias=False has no counterpart here (our attention has biases)")
  pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
  return ViTConfig(image_size=pair(hf["image_size"]), patch_size=pair(hf["patch_size"]),
                   d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                   channels=hf.get("num_channels", 3), pos_emb="learned", use_cls_token=True,
                   norm="pre", activation=activation, ln_eps=hf.get("layer_norm_eps", 1e-12))


def to_ours(tensors: dict[str, np.ndarray], shapes: dict, cfg: ViTConfig
            ) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF tensors (consumed from `tensors`; a `vit.` prefix of ViTFor* models stripped)."""
  for name in [n for n in tensors if n.startswith(PREFIX)]:
    tensors[name.removeprefix(PREFIX)] = tensors.pop(name)
  ours = {}
  for rule in rules(cfg):
    if rule.hf not in tensors:
      raise ValueError(f"ViT checkpoint has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  conv = tensors.pop(CONV + "weight").astype(np.float32)  # (D, C, ph, pw)
  ours[OURS + "patch_embed/kernel"] = np.ascontiguousarray(
      conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]))
  positions = tensors.pop(POSITIONS)[0].astype(np.float32)  # (1 + N, D)
  ours[OURS + "cls_token"] = tensors.pop(CLS).astype(np.float32) + positions[0]
  ours[OURS + "pos/learned/table"] = positions[1:]
  return ours, ["position row 0 (the cls token's) folded into cls_token"]


def to_hf(ours: dict[str, np.ndarray], cfg: ViTConfig) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our `encoder/...` params (consumed from `ours`) -> HF ViTModel tensors, notes."""
  tensors = {rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours]) for rule in rules(cfg)}
  kernel = ours.pop(OURS + "patch_embed/kernel")
  ph, pw = cfg.patch_size
  tensors[CONV + "weight"] = np.ascontiguousarray(
      kernel.reshape(ph, pw, cfg.channels, -1).transpose(3, 2, 0, 1))
  notes = ["cls_token's position written as zeros (ours adds none to cls)"]
  if cfg.pos_emb == "learned":
    grid = ours.pop(OURS + "pos/learned/table")
  else:
    grid = np.asarray(sincos_grid_positions(cfg.grid, cfg.d_model))
    notes.append("the fixed sin-cos grid written as the learned position table")
  tensors[POSITIONS] = np.concatenate([np.zeros((1, cfg.d_model), np.float32), grid])[None]
  tensors[CLS] = ours.pop(OURS + "cls_token")
  return tensors, notes


def hf_config(cfg: ViTConfig, activation: str) -> dict:
  return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
          "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
          "hidden_act": activation, "layer_norm_eps": cfg.ln_eps,
          "image_size": cfg.image_size[0], "patch_size": cfg.patch_size[0],
          "num_channels": cfg.channels, "qkv_bias": True, "dtype": "float32"}


def check_exportable(cfg: ViTConfig) -> dict:
  """Our fields that have no ViTModel counterpart (empty: exportable)."""
  wrong = {k: getattr(cfg, k) for k, v in dict(norm="pre", use_cls_token=True,
                                                 scan_layers=False).items()
           if getattr(cfg, k) != v}
  if len(cfg.image_size) != 2 or len(set(cfg.image_size)) != 1 or len(set(cfg.patch_size)) != 1:
    wrong.update(image_size=cfg.image_size, patch_size=cfg.patch_size)  # HF: square only
  return wrong
