"""BartForConditionalGeneration <-> our post-LN EncoderDecoder (models/encoder_decoder.py).

BART's layout is ours with three differences, handled here:
- learned positions with an offset of 2 (HF `BartLearnedPositionalEmbedding`: position p
  reads row p + 2, the table has max_position_embeddings + 2 rows): import drops rows 0-1,
  export writes them as zeros (no position reads them);
- separate encoder and decoder position tables and embedding LayerNorms: import builds our
  model with `dec_embeddings=True` (its own decoder table and norm) rather than refusing
  every real checkpoint, whose two tables differ; export of a shared-table model writes the
  one table and norm to both sides, which is exact;
- the output bias is the (1, V) buffer `final_logits_bias`.
Encoder and decoder must have the same heads and MLP width (ours share one width).
`scale_embedding=True` (sqrt(d) on token embeddings, mBART/some BART variants) has no
counterpart and is refused.
"""
from __future__ import annotations

import numpy as np

from models.encoder_decoder import EncoderDecoderConfig
from pretrain.hf.layout import Rule, expand

ARCHITECTURE, MODEL_TYPE = "BartForConditionalGeneration", "bart"
OFFSET = 2
SHARED, LM_HEAD, BIAS = "model.shared.weight", "lm_head.weight", "final_logits_bias"
TIED_COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
POSITIONS = {"model.encoder.embed_positions.weight": "pos_embed/table",
             "model.decoder.embed_positions.weight": "dec_embeddings/pos_embed/table"}
EMBED_NORMS = {"model.encoder.layernorm_embedding": "embed_norm",
               "model.decoder.layernorm_embedding": "dec_embeddings/embed_norm"}


def _norm(hf: str, ours: str) -> list[Rule]:
  return [Rule(hf + ".weight", (ours + "/scale",)), Rule(hf + ".bias", (ours + "/bias",))]


def _attention(hf: str, ours: str) -> list[Rule]:
  names = (("q", "query"), ("k", "key"), ("v", "value"))
  return [*(Rule(f"{hf}{p}_proj.weight", (f"{ours}{n}/kernel",), "linear") for p, n in names),
          *(Rule(f"{hf}{p}_proj.bias", (f"{ours}{n}/bias",)) for p, n in names),
          Rule(hf + "out_proj.weight", (ours + "out/kernel",), "linear", 2),
          Rule(hf + "out_proj.bias", (ours + "out/bias",))]


def _layer(hf: str, ours: str, cross: bool) -> list[Rule]:
  table = _attention(hf + "self_attn.", ours + "attn/") + _norm(hf + "self_attn_layer_norm",
                                                              ours + "attn_norm")
  if cross:
    table += _attention(hf + "encoder_attn.", ours + "cross_attn/") + _norm(
        hf + "encoder_attn_layer_norm", ours + "cross_norm")
  return table + [Rule(hf + "fc1.weight", (ours + "mlp/wi/kernel",), "linear"),
                  Rule(hf + "fc1.bias", (ours + "mlp/wi/bias",)),
                  Rule(hf + "fc2.weight", (ours + "mlp/wo/kernel",), "linear"),
                  Rule(hf + "fc2.bias", (ours + "mlp/wo/bias",)),
                  *_norm(hf + "final_layer_norm", ours + "mlp_norm")]


def rules(cfg: EncoderDecoderConfig) -> list[Rule]:
  """The one-to-one tensors; positions and the logits bias are folded separately."""
  table = [Rule(SHARED, ("embed/table",), "matrix"),
           *(r for hf, ours in EMBED_NORMS.items() for r in _norm(hf, ours)),
           *expand(_layer("model.encoder.layers.{i}.", "stack/blocks/{i}/", False),
                   cfg.num_layers),
           *expand(_layer("model.decoder.layers.{i}.", "dec_blocks/{i}/", True), cfg.dec_layers)]
  return table if cfg.tie_embeddings else table + [Rule(LM_HEAD, ("unembed/table",), "matrix")]


def config_from_hf(hf: dict, activation: str) -> EncoderDecoderConfig:
  """Our config for an HF BART config.json (`activation`: ours for its activation_function)."""
  differ = {k: (hf[f"encoder_{k}"], hf[f"decoder_{k}"]) for k in ("attention_heads", "ffn_dim")
            if hf[f"encoder_{k}"] != hf[f"decoder_{k}"]}
  if differ:
    raise ValueError(f"BART encoder/decoder {differ} differ; our encoder-decoder has one width")
  if hf.get("scale_embedding"):
    raise ValueError("scale_embedding=True (sqrt(d_model) token scaling) has no counterpart here")
  return EncoderDecoderConfig(
      vocab_size=hf["vocab_size"], num_layers=hf["encoder_layers"], d_model=hf["d_model"],
      num_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
      max_len=hf["max_position_embeddings"], pos_emb="learned", norm="post",
      activation=activation, tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
      head_transform=False, embed_norm=True, ln_eps=1e-5, dec_layers=hf["decoder_layers"],
      dec_embeddings=True)


def to_ours(tensors: dict[str, np.ndarray], shapes: dict, cfg: EncoderDecoderConfig,
            hf: dict) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF tensors (consumed from `tensors`) -> our params by path, notes (`cfg` says all this
  needs of the HF config `hf`)."""
  for name in TIED_COPIES + ((LM_HEAD,) if cfg.tie_embeddings else ()):
    tensors.pop(name, None)  # save_pretrained stores tied copies or not, by version
  ours = {}
  for rule in rules(cfg):
    if rule.hf not in tensors:
      raise ValueError(f"BART checkpoint has no tensor {rule.hf}")
    ours.update(rule.to_ours(tensors.pop(rule.hf).astype(np.float32),
                             [shapes[o] for o in rule.ours]))
  for hf, path in POSITIONS.items():
    ours[path] = np.ascontiguousarray(tensors.pop(hf)[OFFSET:], np.float32)
  ours["logits_bias"] = tensors.pop(BIAS, np.zeros((1, cfg.vocab_size), np.float32))[0]
  return ours, [f"rows 0-{OFFSET - 1} of BART's position tables (HF's offset) dropped"]


def to_hf(ours: dict[str, np.ndarray], cfg: EncoderDecoderConfig
          ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Our params (consumed from `ours`) -> HF tensors, notes."""
  notes = []
  if not cfg.dec_embeddings:  # One shared table and norm: BART's two copies of them.
    for path in ("pos_embed/table", "embed_norm/scale", "embed_norm/bias"):
      ours["dec_embeddings/" + path] = ours[path]
    notes.append("the shared position table and embedding norm written to both encoder "
                 "and decoder")
  tensors = {rule.hf: rule.to_hf([ours.pop(o) for o in rule.ours]) for rule in rules(cfg)}
  for hf, path in POSITIONS.items():
    table = ours.pop(path)
    tensors[hf] = np.concatenate([np.zeros((OFFSET, table.shape[1]), table.dtype), table])
  tensors[BIAS] = ours.pop("logits_bias")[None]
  return tensors, notes


def hf_config(cfg: EncoderDecoderConfig, activation: str) -> dict:
  return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
          "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
          "encoder_layers": cfg.num_layers, "decoder_layers": cfg.dec_layers,
          "encoder_attention_heads": cfg.num_heads, "decoder_attention_heads": cfg.num_heads,
          "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff,
          "max_position_embeddings": cfg.max_len, "activation_function": activation,
          "scale_embedding": False, "tie_word_embeddings": cfg.tie_embeddings,
          "pad_token_id": 0, "dtype": "float32"}


def check_exportable(cfg: EncoderDecoderConfig) -> dict:
  """Our fields that have no BART counterpart (empty: exportable)."""
  want = dict(norm="post", norm_type="layernorm", pos_emb="learned", embed_norm=True,
              head_transform=False, fused_qkv=False, scan_layers=False, use_bias=True)
  return {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
