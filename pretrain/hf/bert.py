"""BertForMaskedLM <-> our post-LN TextTransformer with the MLM head transform and the
embedding norm (`bert.embeddings.LayerNorm` is our `embed_norm`).

HF BERT has token types and ours does not: every token of ours is type 0, so
`token_type_embeddings[0]` is folded into the position table on import (not into the word
embeddings: those are the tied decoder too) and exported as zeros. Type 0 is added before
the embedding norm on both sides, so logits match exactly.
"""
from __future__ import annotations

import numpy as np

from pretrain.hf.layout import Arch, Rule

P = "bert."
BLOCK, LAYER = "stack/blocks/{i}/", "bert.encoder.layer.{i}."
TOKEN_TYPES = P + "embeddings.token_type_embeddings.weight"
DECODER = "cls.predictions.decoder."


def rules(tie: bool) -> list[Rule]:
  table = [
      Rule(P + "embeddings.word_embeddings.weight", ("embed/table",), "matrix"),
      Rule(P + "embeddings.position_embeddings.weight", ("pos_embed/table",), "matrix"),
      Rule(P + "embeddings.LayerNorm.weight", ("embed_norm/scale",)),
      Rule(P + "embeddings.LayerNorm.bias", ("embed_norm/bias",)),
      *(Rule(f"{LAYER}attention.self.{n}.weight", (f"{BLOCK}attn/{n}/kernel",), "linear")
        for n in ("query", "key", "value")),
      *(Rule(f"{LAYER}attention.self.{n}.bias", (f"{BLOCK}attn/{n}/bias",))
        for n in ("query", "key", "value")),
      Rule(LAYER + "attention.output.dense.weight", (BLOCK + "attn/out/kernel",), "linear", 2),
      Rule(LAYER + "attention.output.dense.bias", (BLOCK + "attn/out/bias",)),
      Rule(LAYER + "attention.output.LayerNorm.weight", (BLOCK + "attn_norm/scale",)),
      Rule(LAYER + "attention.output.LayerNorm.bias", (BLOCK + "attn_norm/bias",)),
      Rule(LAYER + "intermediate.dense.weight", (BLOCK + "mlp/wi/kernel",), "linear"),
      Rule(LAYER + "intermediate.dense.bias", (BLOCK + "mlp/wi/bias",)),
      Rule(LAYER + "output.dense.weight", (BLOCK + "mlp/wo/kernel",), "linear"),
      Rule(LAYER + "output.dense.bias", (BLOCK + "mlp/wo/bias",)),
      Rule(LAYER + "output.LayerNorm.weight", (BLOCK + "mlp_norm/scale",)),
      Rule(LAYER + "output.LayerNorm.bias", (BLOCK + "mlp_norm/bias",)),
      Rule("cls.predictions.transform.dense.weight", ("head_dense/kernel",), "linear"),
      Rule("cls.predictions.transform.dense.bias", ("head_dense/bias",)),
      Rule("cls.predictions.transform.LayerNorm.weight", ("head_norm/scale",)),
      Rule("cls.predictions.transform.LayerNorm.bias", ("head_norm/bias",)),
      Rule("cls.predictions.bias", ("logits_bias",)),
  ]
  return table if tie else table + [Rule(DECODER + "weight", ("unembed/table",), "matrix")]


def fold_in(hf: dict, ours: dict, cfg) -> list[str]:
  del cfg
  hf.pop(DECODER + "weight", None)  # older checkpoints store the tied copies
  hf.pop(DECODER + "bias", None)
  types = hf.pop(TOKEN_TYPES)
  ours["pos_embed/table"] = ours["pos_embed/table"] + types[0]
  return ["token_type_embeddings[0] folded into the position embeddings"
          + (f"; the other {len(types) - 1} type(s) dropped (no token types here)"
             if len(types) > 1 else "")]


def fold_out(ours: dict, hf: dict, cfg) -> list[str]:
  del ours
  hf[TOKEN_TYPES] = np.zeros((2, cfg.d_model), np.float32)
  return ["token_type_embeddings written as zeros (ours has no token types)"]


ARCH = Arch(
    model_type="bert", architecture="BertForMaskedLM", prefix=P, heads=("cls",),
    sizes=dict(vocab_size="vocab_size", num_layers="num_hidden_layers", d_model="hidden_size",
               num_heads="num_attention_heads", d_ff="intermediate_size",
               max_len="max_position_embeddings", ln_eps="layer_norm_eps",
               tie_embeddings="tie_word_embeddings"),
    fixed=dict(norm="post", head_transform=True, pos_emb="learned", embed_norm=True),
    activation_key="hidden_act",
    hf_defaults=lambda c: dict(layer_norm_eps=1e-12, tie_word_embeddings=True, hidden_act="gelu"),
    extra_config=dict(type_vocab_size=2),
    rules=rules, fold_in=fold_in, fold_out=fold_out)
