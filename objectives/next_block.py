"""Next-block prediction, semi-autoregressive (Ren et al. 2025, "Next Block Prediction:
Video Generation via Semi-Autoregressive Modeling").

The sequence is cut into equal blocks of `objective.block_size` tokens; attention is
bidirectional inside a block and causal across blocks (mask kind `block_causal`), and each
token predicts its counterpart in the next block: position p predicts p + block_size. A
block of tokens is then generated in one step. Blocks are positions // block_size, so they
restart at every packed segment, and the mask is still intersected with the segments; a
target past the segment's end gets weight 0 (`next_token_targets` at offset block_size).
On text a block is a run of tokens; a video objective would pass frame ids as blocks.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.attention import attention_mask
from models.transformer import transformer_flops_per_token
from objectives import base
from objectives.causal_lm import next_token_targets


@base.register("next_block")
class NextBlock(base.Objective):
  models = ("transformer", "transformer_extra_ids")
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"

  def validate(self, config):
    block, seq_len = config.objective.block_size, config.data.seq_len
    if not 1 <= block < seq_len:
      raise ValueError(f"objective.block_size={block}: must be in [1, data.seq_len={seq_len})")

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    net = model.bind(params)
    tokens, segment_ids, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    block = config.objective.block_size
    mask = attention_mask("block_causal", segment_ids=segment_ids,
                          block_ids=positions // block)
    logits = net.logits(net(tokens, positions=positions, mask=mask))  # (B, L, V)
    targets, weights = next_token_targets(tokens, segment_ids, block)
    loss, accuracy = base.token_loss(logits, targets, weights)
    return loss, {"accuracy": accuracy, "perplexity": jnp.exp(loss)}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    # A query in block b sees (b + 1) blocks: (L + block_size) / 2 keys on average.
    attended = (info.seq_len + config.objective.block_size) / 2
    return info.seq_len * transformer_flops_per_token(model_cfg, attended, with_logits=True)
