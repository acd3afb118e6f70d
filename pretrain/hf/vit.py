"""ViTModel <-> our ViT (models/vit.py), the encoder of the registered `mae` model, and
ViTMAEForPreTraining (encoder and decoder) <-> our MAE, both directions.

Our params are keyed as MAE's `encoder/...` subtree (the only registered image model), so an
HF ViT directory loads as `init_from.path` into an MAE run's encoder. Differences handled:
- HF's position table (1, 1 + N, D) has a row for the cls token; ours adds no position to
  cls, so import folds row 0 into `cls_token` (exact) and export writes it as zeros;
- the patch projection is a Conv2d (D, C, ph, pw); ours a Dense over patches flattened as
  (ph, pw, C) (`patchify`);
- a fixed sin-cos model exports its grid as HF's learned table (exact; it imports learned);
- the pooler (HF ViTModel's default) has no counterpart: reported unused, not exported;
- the MAE decoder's position table has a zero row for the cls token (ours adds none there);
  a fixed sin-cos decoder exports its grid there as the encoder's does.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from models.vit import ViTConfig, sincos_grid_positions
from pretrain.hf.layout import Rule, expand

ARCHITECTURE, MODEL_TYPE, PREFIX, OURS = "ViTModel", "vit", "vit.", "encoder/"
MAE_ARCHITECTURE, MAE_TYPE = "ViTMAEForPreTraining", "vit_mae"
DEC_POSITIONS, MASK_TOKEN = "decoder.decoder_pos_embed", "decoder.mask_token"
# transformers 5 names the decoder layers like the encoder's; older versions `decoder_layers`.
DEC_LAYER, LEGACY_DEC_LAYER = "decoder.decoder_encoder.layer.{i}.", "decoder.decoder_layers."
CLS, POSITIONS = "embeddings.cls_token", "embeddings.position_embeddings"
CONV = "embeddings.patch_embeddings.projection."
LAYER, BLOCK = "encoder.layer.{i}.", OURS + "stack/blocks/{i}/"


def _layer(hf: str, ours: str) -> list[Rule]:
  """One pre-LN ViT layer (`hf`, `ours`: name prefixes with `{i}`)."""
  return [
      *(Rule(f"{hf}attention.attention.{n}.weight", (f"{ours}attn/{n}/kernel",), "linear")
        for n in ("query", "key", "value")),
      *(Rule(f"{hf}attention.attention.{n}.bias", (f"{ours}attn/{n}/bias",))
        for n in ("query", "key", "value")),
      Rule(hf + "attention.output.dense.weight", (ours + "attn/out/kernel",), "linear", 2),
      Rule(hf + "attention.output.dense.bias", (ours + "attn/out/bias",)),
      Rule(hf + "layernorm_before.weight", (ours + "attn_norm/scale",)),
      Rule(hf + "layernorm_before.bias", (ours + "attn_norm/bias",)),
      Rule(hf + "layernorm_after.weight", (ours + "mlp_norm/scale",)),
      Rule(hf + "layernorm_after.bias", (ours + "mlp_norm/bias",)),
      Rule(hf + "intermediate.dense.weight", (ours + "mlp/wi/kernel",), "linear"),
      Rule(hf + "intermediate.dense.bias", (ours + "mlp/wi/bias",)),
      Rule(hf + "output.dense.weight", (ours + "mlp/wo/kernel",), "linear"),
      Rule(hf + "output.dense.bias", (ours + "mlp/wo/bias",)),
  ]


def conv_to_dense(conv: np.ndarray) -> np.ndarray:
  """An HF patch Conv2d weight (D, C, ph, pw) -> our patch Dense kernel (ph pw C, D)."""
  return np.ascontiguousarray(conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]))


def dense_to_conv(kernel: np.ndarray, cfg: ViTConfig) -> np.ndarray:
  """`conv_to_dense`'s inverse."""
  ph, pw = cfg.patch_size
  return np.ascontiguousarray(kernel.reshape(ph, pw, cfg.channels, -1).transpose(3, 2, 0, 1))


def rules(cfg: ViTConfig) -> list[Rule]:
  """The one-to-one tensors; cls, positions and the patch projection are folded apart."""
  return [*expand(_layer(LAYER, BLOCK), cfg.num_layers),
          Rule("layernorm.weight", (OURS + "stack/final_norm/scale",)),
          Rule("layernorm.bias", (OURS + "stack/final_norm/bias",)),
          Rule(CONV + "bias", (OURS + "patch_embed/bias",))]


def config_from_hf(hf: dict, activation: str) -> ViTConfig:
  if not hf.get("qkv_bias", True):
    raise ValueError("qkv_bias=False has no counterpart here (our attention has biases)")
  pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
  cfg = ViTConfig(image_size=pair(hf["image_size"]), patch_size=pair(hf["patch_size"]),
                  d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                  num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                  channels=hf.get("num_channels", 3), pos_emb="learned", use_cls_token=True,
                  norm="pre", activation=activation, ln_eps=hf.get("layer_norm_eps", 1e-12))
  if hf.get("model_type") != MAE_TYPE:
    return cfg
  return dataclasses.replace(cfg, dec_d_model=hf["decoder_hidden_size"],
                             dec_layers=hf["decoder_num_hidden_layers"],
                             dec_heads=hf["decoder_num_attention_heads"],
                             dec_d_ff=hf["decoder_intermediate_size"])


def to_ours(tensors: dict[str, np.ndarray], shapes: dict, cfg: ViTConfig, hf: dict
            ) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF tensors (consumed from `tensors`; a `vit.` prefix of ViTFor* models stripped; `cfg`
  says all this needs of the HF config `hf`)."""
  for name in [n for n in tensors if n.startswith(PREFIX)]:
    tensors[name.removeprefix(PREFIX)] = tensors.pop(name)
  ours = {}
  for rule in rules(cfg):
    if rule.hf not in tensors:
      raise ValueError(f"ViT checkpoint has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  conv = tensors.pop(CONV + "weight").astype(np.float32)
  ours[OURS + "patch_embed/kernel"] = conv_to_dense(conv)
  positions = tensors.pop(POSITIONS)[0].astype(np.float32)  # (1 + N, D)
  ours[OURS + "cls_token"] = tensors.pop(CLS).astype(np.float32) + positions[0]
  ours[OURS + "pos/learned/table"] = positions[1:]
  notes = ["position row 0 (the cls token's) folded into cls_token"]
  if DEC_POSITIONS in tensors:
    notes += _decoder_to_ours(tensors, shapes, cfg, ours)
  return ours, notes


def _decoder_rules(cfg: ViTConfig) -> list[Rule]:
  return [*expand(_layer(DEC_LAYER, "decoder/blocks/{i}/"), cfg.dec_layers),
          *(Rule(f"decoder.decoder_{hf}.{w}", (f"{ours}/{leaf}",), kind)
            for hf, ours in (("embed", "dec_embed"), ("pred", "dec_pred"))
            for w, leaf, kind in (("weight", "kernel", "linear"), ("bias", "bias", "vector"))),
          Rule("decoder.decoder_norm.weight", ("decoder/final_norm/scale",)),
          Rule("decoder.decoder_norm.bias", ("decoder/final_norm/bias",)),
          Rule(MASK_TOKEN, ("mask_token",))]


def _decoder_to_ours(tensors: dict, shapes: dict, cfg: ViTConfig, ours: dict) -> list[str]:
  """ViTMAEForPreTraining's decoder -> our MAE's. Its position row 0 (the cls token's) is
  zero in HF's fixed sin-cos table; ours adds none there, so a nonzero row is refused."""
  for name in [n for n in tensors if n.startswith(LEGACY_DEC_LAYER)]:
    tensors[DEC_LAYER.split("{")[0] + name.removeprefix(LEGACY_DEC_LAYER)] = tensors.pop(name)
  for rule in _decoder_rules(cfg):
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  positions = tensors.pop(DEC_POSITIONS)[0].astype(np.float32)
  if np.any(positions[0]):
    raise ValueError(f"{DEC_POSITIONS}[0] (the cls token's decoder position) is nonzero; "
                     "our MAE adds no position to the decoder's cls token")
  ours["dec_pos/learned/table"] = positions[1:]
  return ["the decoder's fixed sin-cos positions loaded as a learned table (HF's layout, "
          "not recomputed)"]


def _positions_to_hf(ours: dict, table: str, cfg: ViTConfig, dim: int) -> tuple[np.ndarray, bool]:
  """HF's (1, 1 + N, dim) table: a zero cls row, then our learned `table` (consumed) or the
  fixed sin-cos grid; and whether it was the grid."""
  fixed = cfg.pos_emb != "learned"
  grid = np.asarray(sincos_grid_positions(cfg.grid, dim)) if fixed else ours.pop(table)
  return np.concatenate([np.zeros((1, dim), np.float32), grid])[None], fixed


def to_hf(ours: dict[str, np.ndarray], cfg: ViTConfig) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our `encoder/...` params (consumed from `ours`) -> HF ViTModel tensors, notes."""
  tensors = {rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours]) for rule in rules(cfg)}
  tensors[CONV + "weight"] = dense_to_conv(ours.pop(OURS + "patch_embed/kernel"), cfg)
  notes = ["cls_token's position written as zeros (ours adds none to cls)"]
  tensors[POSITIONS], fixed = _positions_to_hf(ours, OURS + "pos/learned/table", cfg, cfg.d_model)
  notes += ["the fixed sin-cos grid written as the learned position table"] if fixed else []
  tensors[CLS] = ours.pop(OURS + "cls_token")
  return tensors, notes


def to_hf_mae(ours: dict[str, np.ndarray], cfg: ViTConfig
              ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our MAE params (consumed from `ours`) -> HF ViTMAEForPreTraining tensors, notes: the
  encoder as `to_hf` under `vit.`, the decoder by `_decoder_to_ours`'s rules inverted."""
  encoder, notes = to_hf(ours, cfg)
  tensors = {PREFIX + n: t for n, t in encoder.items()}
  tensors.update({rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours])
                  for rule in _decoder_rules(cfg)})
  tensors[MASK_TOKEN] = tensors[MASK_TOKEN].reshape(1, 1, -1)  # HF's (1, 1, Dd), not a vector
  tensors[DEC_POSITIONS], fixed = _positions_to_hf(ours, "dec_pos/learned/table", cfg,
                                                   cfg.dec_d_model)
  notes.append("the decoder's cls position written as zeros (HF's layout; ours adds none)")
  notes += ["the decoder's fixed sin-cos grid written as its position table"] if fixed else []
  return tensors, notes


def hf_config(cfg: ViTConfig, activation: str) -> dict:
  return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
          "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
          "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
          "hidden_act": activation, "layer_norm_eps": cfg.ln_eps,
          "image_size": cfg.image_size[0], "patch_size": cfg.patch_size[0],
          "num_channels": cfg.channels, "qkv_bias": True, "dtype": "float32"}


def hf_mae_config(cfg: ViTConfig, activation: str, mask_ratio: float,
                  norm_pix_loss: bool) -> dict:
  """ViTMAEConfig: `hf_config`'s keys, the decoder's sizes and the objective's two keys."""
  return {**hf_config(cfg, activation), "architectures": [MAE_ARCHITECTURE],
          "model_type": MAE_TYPE, "decoder_hidden_size": cfg.dec_d_model,
          "decoder_num_hidden_layers": cfg.dec_layers,
          "decoder_num_attention_heads": cfg.dec_heads,
          "decoder_intermediate_size": cfg.dec_d_ff, "mask_ratio": mask_ratio,
          "norm_pix_loss": norm_pix_loss}


def check_exportable(cfg: ViTConfig) -> dict:
  """Our fields that have no ViTModel counterpart (empty: exportable)."""
  wrong = {k: getattr(cfg, k) for k, v in dict(norm="pre", use_cls_token=True,
                                                 scan_layers=False).items()
           if getattr(cfg, k) != v}
  if len(cfg.image_size) != 2 or len(set(cfg.image_size)) != 1 or len(set(cfg.patch_size)) != 1:
    wrong.update(image_size=cfg.image_size, patch_size=cfg.patch_size)  # HF: square only
  return wrong
