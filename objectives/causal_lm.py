"""Causal language modelling on packed sequences (GPT-2, Radford et al. 2019).

Every position predicts the next token of its own document: the target at the last
position of a segment (the next token belongs to another document), at the end of the
row and at padding gets weight 0.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.attention import attention_mask
from models.transformer import transformer_flops_per_token
from objectives import base


def next_token_targets(tokens, segment_ids, offset: int = 1):
  """(targets (B, L), weights (B, L)): token t+offset where it is in t's segment (offset 0:
  the token itself, weighted where it is not padding)."""
  targets = jnp.concatenate([tokens[:, offset:], jnp.zeros_like(tokens[:, :offset])], axis=1)
  next_segment = jnp.concatenate([segment_ids[:, offset:],
                                  jnp.zeros_like(segment_ids[:, :offset])], 1)
  weights = (segment_ids > 0) & (next_segment == segment_ids)
  return targets, weights.astype(jnp.float32)


@base.register("causal_lm")
class CausalLM(base.Objective):
  models = ("transformer", "transformer_extra_ids")
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"
  feature_mask = "causal"

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    net = model.bind(params)
    tokens, segment_ids = batch["tokens"], batch["segment_ids"]
    mask = attention_mask("causal", segment_ids=segment_ids)
    logits = net.logits(net(tokens, positions=batch["positions"], mask=mask))  # (B, L, V)
    targets, weights = next_token_targets(tokens, segment_ids)
    loss, accuracy = base.token_loss(logits, targets, weights)
    return loss, {"accuracy": accuracy, "perplexity": jnp.exp(loss)}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    # Causal attention: each query sees on average half the keys.
    return info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len / 2,
                                                      with_logits=True)
