"""T5ForConditionalGeneration <-> our pre-LN EncoderDecoder with `pos_emb="relative"`,
`norm_type="rmsnorm"` and `use_bias=False` (models/encoder_decoder.py).

T5 differs from our layout in three places, folded here exactly:
- attention logits are not scaled by 1/sqrt(head dim) (T5 folds that into its init): import
  multiplies our query kernels by sqrt(head dim), export divides;
- the decoder output may be scaled by d_model^-0.5 before the LM head (T5 v1.0's tied
  embeddings; `output_scaled`): import folds it into the decoder's final norm scale, export
  of a tied model unfolds it;
- the relative position bias lives in layer 0 of each stack (shared by the stack's layers):
  ours is one table per stack (`stack/rel_bias`, `dec_rel_bias`).
Both T5 v1.0 (`feed_forward_proj="relu"`) and v1.1 / Flan-T5 (`"gated-gelu"`: our `geglu`,
`wi_0` is the gate) map; `d_kv` must equal d_model / num_heads (ours derives it).
"""
from __future__ import annotations

import math

import numpy as np

from models.encoder_decoder import EncoderDecoderConfig
from pretrain.hf.layout import Rule, expand

ARCHITECTURE, MODEL_TYPE = "T5ForConditionalGeneration", "t5"
ACTIVATIONS = {"relu": "relu", "geglu": "gated-gelu"}  # ours -> feed_forward_proj
SHARED, LM_HEAD = "shared.weight", "lm_head.weight"
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
REL_BIAS = {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            "stack/rel_bias/table",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            "dec_rel_bias/table"}
DEC_NORM = "dec_norm/scale"


def _attention(hf: str, ours: str) -> list[Rule]:
  names = (("q", "query"), ("k", "key"), ("v", "value"))
  return [*(Rule(f"{hf}{p}.weight", (f"{ours}{n}/kernel",), "linear") for p, n in names),
          Rule(hf + "o.weight", (ours + "out/kernel",), "linear", 2)]


def _mlp(hf: str, ours: str, gated: bool) -> list[Rule]:
  wi = ([Rule(hf + "wi_0.weight", (ours + "gate/kernel",), "linear"),
         Rule(hf + "wi_1.weight", (ours + "wi/kernel",), "linear")] if gated
        else [Rule(hf + "wi.weight", (ours + "wi/kernel",), "linear")])
  return wi + [Rule(hf + "wo.weight", (ours + "wo/kernel",), "linear")]


def rules(cfg: EncoderDecoderConfig) -> list[Rule]:
  gated = cfg.activation == "geglu"
  enc, dec = "encoder.block.{i}.layer.", "decoder.block.{i}.layer."
  encoder = [*_attention(enc + "0.SelfAttention.", "stack/blocks/{i}/attn/"),
             Rule(enc + "0.layer_norm.weight", ("stack/blocks/{i}/attn_norm/scale",)),
             *_mlp(enc + "1.DenseReluDense.", "stack/blocks/{i}/mlp/", gated),
             Rule(enc + "1.layer_norm.weight", ("stack/blocks/{i}/mlp_norm/scale",))]
  decoder = [*_attention(dec + "0.SelfAttention.", "dec_blocks/{i}/attn/"),
             Rule(dec + "0.layer_norm.weight", ("dec_blocks/{i}/attn_norm/scale",)),
             *_attention(dec + "1.EncDecAttention.", "dec_blocks/{i}/cross_attn/"),
             Rule(dec + "1.layer_norm.weight", ("dec_blocks/{i}/cross_norm/scale",)),
             *_mlp(dec + "2.DenseReluDense.", "dec_blocks/{i}/mlp/", gated),
             Rule(dec + "2.layer_norm.weight", ("dec_blocks/{i}/mlp_norm/scale",))]
  table = [Rule(SHARED, ("embed/table",), "matrix"),
           Rule("encoder.final_layer_norm.weight", ("stack/final_norm/scale",)),
           Rule("decoder.final_layer_norm.weight", (DEC_NORM,)),
           *(Rule(hf, (ours,), "matrix") for hf, ours in REL_BIAS.items()),
           *expand(encoder, cfg.num_layers), *expand(decoder, cfg.dec_layers)]
  return table if cfg.tie_embeddings else table + [Rule(LM_HEAD, ("unembed/table",), "matrix")]


def config_from_hf(hf: dict, activation: str) -> EncoderDecoderConfig:
  """Our config for an HF T5 config.json (`activation` is ours for feed_forward_proj)."""
  if hf["d_kv"] * hf["num_heads"] != hf["d_model"]:
    raise ValueError(f"T5 d_kv={hf['d_kv']} x num_heads={hf['num_heads']} != d_model="
                     f"{hf['d_model']}: our attention derives the head dim from d_model")
  return EncoderDecoderConfig(
      vocab_size=hf["vocab_size"], num_layers=hf["num_layers"], d_model=hf["d_model"],
      num_heads=hf["num_heads"], d_ff=hf["d_ff"], max_len=512, pos_emb="relative",
      norm="pre", norm_type="rmsnorm", activation=activation,
      tie_embeddings=hf.get("tie_word_embeddings", True) is not False, head_transform=False,
      embed_norm=False, ln_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
      relative_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf.get("relative_attention_max_distance", 128),
      dec_layers=hf.get("num_decoder_layers") or hf["num_layers"])


def _query_kernels(cfg: EncoderDecoderConfig) -> list[str]:
  return ([f"stack/blocks/{i}/attn/query/kernel" for i in range(cfg.num_layers)]
          + [f"dec_blocks/{i}/{a}/query/kernel" for i in range(cfg.dec_layers)
             for a in ("attn", "cross_attn")])


def _scales(cfg: EncoderDecoderConfig, output_scaled: bool) -> dict[str, float]:
  """Our param -> the factor by which ours is HF's (the two folds of the docstring)."""
  scales = {q: math.sqrt(cfg.d_model // cfg.num_heads) for q in _query_kernels(cfg)}
  if output_scaled:
    scales[DEC_NORM] = cfg.d_model ** -0.5
  return scales


def output_scaled(hf: dict) -> bool:
  """Whether HF scales the decoder output by d_model^-0.5: transformers 4 does it for tied
  embeddings; transformers 5 always ties T5's head (unless the checkpoint holds a different
  lm_head) and scales unless config.json says `tie_word_embeddings: false`, recording it as
  `scale_decoder_outputs`."""
  return hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)


def to_ours(tensors: dict[str, np.ndarray], shapes: dict, cfg: EncoderDecoderConfig,
            hf: dict) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF tensors (consumed from `tensors`) -> our params by path, notes."""
  if (cfg.tie_embeddings and LM_HEAD in tensors
      and not np.array_equal(tensors[LM_HEAD], tensors[SHARED])):
    raise ValueError(f"config.json says tie_word_embeddings but the checkpoint's {LM_HEAD} "
                     f"differs from {SHARED}: set tie_word_embeddings=false to import both")
  for name in TIED_COPIES + ((LM_HEAD,) if cfg.tie_embeddings else ()):
    tensors.pop(name, None)  # save_pretrained stores tied copies or not, by version
  ours = {}
  for rule in rules(cfg):
    if rule.hf not in tensors:
      raise ValueError(f"T5 checkpoint has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  for path, scale in _scales(cfg, output_scaled(hf)).items():
    ours[path] = (ours[path] * scale).astype(np.float32)
  notes = ["query kernels scaled by sqrt(head dim): T5 does not scale attention logits"]
  if output_scaled(hf):
    notes.append("T5's d_model^-0.5 decoder output scale folded into dec_norm")
  return ours, notes


def to_hf(ours: dict[str, np.ndarray], cfg: EncoderDecoderConfig
          ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our params (consumed from `ours`) -> HF tensors, notes. HF scales the output of a tied
  model (both transformers 4 and 5 read `tie_word_embeddings` so), so tied unfolds it."""
  for path, scale in _scales(cfg, cfg.tie_embeddings).items():
    ours[path] = (ours[path] / scale).astype(np.float32)
  return {rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours]) for rule in rules(cfg)}, []


def hf_config(cfg: EncoderDecoderConfig, activation: str) -> dict:
  return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
          "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
          "d_kv": cfg.d_model // cfg.num_heads, "num_heads": cfg.num_heads, "d_ff": cfg.d_ff,
          "num_layers": cfg.num_layers, "num_decoder_layers": cfg.dec_layers,
          "relative_attention_num_buckets": cfg.relative_buckets,
          "relative_attention_max_distance": cfg.relative_max_distance,
          "layer_norm_epsilon": cfg.ln_eps, "feed_forward_proj": activation,
          "is_gated_act": cfg.activation == "geglu", "dense_act_fn":
          "gelu_new" if cfg.activation == "geglu" else "relu",
          "tie_word_embeddings": cfg.tie_embeddings, "is_encoder_decoder": True,
          "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
          "dropout_rate": 0.0, "dtype": "float32"}


def check_exportable(cfg: EncoderDecoderConfig) -> dict:
  """Our fields that have no T5 counterpart (empty: exportable)."""
  want = dict(norm="pre", norm_type="rmsnorm", pos_emb="relative", embed_norm=False,
              head_transform=False, fused_qkv=False, scan_layers=False, use_bias=False,
              dec_embeddings=False)
  return {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
