"""GPT2LMHeadModel <-> our pre-LN TextTransformer.

GPT-2's Conv1D stores weights as (in, out) and fuses query, key, value in `c_attn` along
its output axis, each heads-major: one rule splits it into our three (embed, heads, kv)
kernels. GPT-2's tied LM head has no bias: ours (`logits_bias`) is zero on import and
dropped on export (with a note when it is not zero).
"""
from __future__ import annotations

import numpy as np

from pretrain.hf.layout import Arch, Rule

P = "transformer."
BLOCK, LAYER = "stack/blocks/{i}/", "transformer.h.{i}."
HEAD = "lm_head.weight"


def rules(tie: bool) -> list[Rule]:
  table = [
      Rule(P + "wte.weight", ("embed/table",), "matrix"),
      Rule(P + "wpe.weight", ("pos_embed/table",), "matrix"),
      Rule(LAYER + "ln_1.weight", (BLOCK + "attn_norm/scale",)),
      Rule(LAYER + "ln_1.bias", (BLOCK + "attn_norm/bias",)),
      Rule(LAYER + "attn.c_attn.weight",
           tuple(f"{BLOCK}attn/{n}/kernel" for n in ("query", "key", "value")), "matrix"),
      Rule(LAYER + "attn.c_attn.bias",
           tuple(f"{BLOCK}attn/{n}/bias" for n in ("query", "key", "value"))),
      Rule(LAYER + "attn.c_proj.weight", (BLOCK + "attn/out/kernel",), "matrix", 2),
      Rule(LAYER + "attn.c_proj.bias", (BLOCK + "attn/out/bias",)),
      Rule(LAYER + "ln_2.weight", (BLOCK + "mlp_norm/scale",)),
      Rule(LAYER + "ln_2.bias", (BLOCK + "mlp_norm/bias",)),
      Rule(LAYER + "mlp.c_fc.weight", (BLOCK + "mlp/wi/kernel",), "matrix"),
      Rule(LAYER + "mlp.c_fc.bias", (BLOCK + "mlp/wi/bias",)),
      Rule(LAYER + "mlp.c_proj.weight", (BLOCK + "mlp/wo/kernel",), "matrix"),
      Rule(LAYER + "mlp.c_proj.bias", (BLOCK + "mlp/wo/bias",)),
      Rule(P + "ln_f.weight", ("stack/final_norm/scale",)),
      Rule(P + "ln_f.bias", ("stack/final_norm/bias",)),
  ]
  return table if tie else table + [Rule(HEAD, ("unembed/table",), "matrix")]


def fold_in(hf: dict, ours: dict, cfg) -> list[str]:
  hf.pop(HEAD, None)  # the tied copy, when a checkpoint stores it
  for name in [n for n in hf if n.endswith((".attn.bias", ".attn.masked_bias"))]:
    if hf[name].ndim == 4:  # causal-mask buffers of older checkpoints, not weights
      hf.pop(name)
  ours["logits_bias"] = np.zeros(cfg.vocab_size, np.float32)
  return []


def fold_out(ours: dict, hf: dict, cfg) -> list[str]:
  del hf, cfg
  bias = ours.pop("logits_bias")
  largest = float(np.abs(bias).max())
  return [f"logits_bias dropped (GPT-2 has no output bias); max |bias| = {largest:.3g}"
          ] if largest else []


ARCH = Arch(
    model_type="gpt2", architecture="GPT2LMHeadModel", prefix=P, heads=("lm_head",),
    sizes=dict(vocab_size="vocab_size", num_layers="n_layer", d_model="n_embd",
               num_heads="n_head", d_ff="n_inner", max_len="n_positions",
               ln_eps="layer_norm_epsilon", tie_embeddings="tie_word_embeddings"),
    fixed=dict(norm="pre", head_transform=False, pos_emb="learned", embed_norm=False),
    activation_key="activation_function",
    hf_defaults=lambda c: dict(n_inner=4 * c["n_embd"], layer_norm_epsilon=1e-5,
                               tie_word_embeddings=True, activation_function="gelu_new"),
    extra_config=dict(bos_token_id=None, eos_token_id=None),  # ours come from our tokenizer
    rules=rules, fold_in=fold_in, fold_out=fold_out)
