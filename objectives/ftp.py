"""Future Token Prediction (Walker 2024, "Future Token Prediction -- Causal Language
Modelling with Per-Token Semantic State Vector for Multi-Token Prediction").

The causal encoder's top state at t is projected to an N-vector pseudo-sequence, and a
small decoder (`FutureTokenLM.decode`), teacher-forced on tokens t..t+N-1, predicts
t+1..t+N. Inputs and targets past t's segment are padding with weight 0 (as in
multi_token), so no position sees or predicts another document; the losses of the N steps
are averaged with weights `objective.future_decay`^(k-1) (the paper down-weights tokens
exponentially with their distance ahead). `accuracy`/`perplexity` are step 1's: next-token
prediction, comparable with causal_lm.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from models.attention import attention_mask
from models.encoder_decoder import encoder_decoder_flops
from models.transformer import stack_flops_per_token
from objectives import base
from objectives.multi_token import MultiToken, future_token_loss, future_token_targets


def decoder_inputs(tokens, targets, weights):
  """(B, L, N) teacher-forced decoder inputs: token t, then the targets t+1..t+N-1 with
  those outside t's segment replaced by 0 (padding)."""
  shifted = jnp.concatenate([tokens[None], (targets * weights.astype(targets.dtype))[:-1]])
  return jnp.moveaxis(shifted, 0, -1)


@base.register("ftp")
class FutureTokenPrediction(MultiToken):
  """Multi-token's data, checks and unit; the N future tokens come from a small decoder
  over a pseudo-sequence instead of N heads."""
  models = ("ftp",)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    net = model.bind(params)
    tokens, segment_ids = batch["tokens"], batch["segment_ids"]
    mask = attention_mask("causal", segment_ids=segment_ids)
    hidden = net(tokens, positions=batch["positions"], mask=mask)  # (B, L, D)
    targets, weights = future_token_targets(tokens, segment_ids, net.cfg.num_future)
    states = net.decode(hidden, decoder_inputs(tokens, targets, weights))  # (B, L, N, D)
    logits = net.logits(jnp.moveaxis(states, 2, 0))  # (N, B, L, V)
    return future_token_loss(logits, targets, weights, config.objective.future_decay)

  def forward_flops_per_example(self, config, info, model_cfg):
    # Per position: the causal encoder, the D -> N x D projection, and one encoder-decoder
    # pass without encoder layers whose "encoder" is the N-vector pseudo-sequence (its
    # k/v projections, N causal decoder steps cross-attending to all N, N logits).
    n, d = model_cfg.num_future, model_cfg.d_model
    decoder = encoder_decoder_flops(dataclasses.replace(model_cfg, num_layers=0), enc_len=n,
                                    dec_len=n, enc_attended=n, dec_attended=(n + 1) / 2)
    encoder = stack_flops_per_token(model_cfg.block, model_cfg.num_layers, info.seq_len / 2)
    return info.seq_len * (encoder + 2 * d * n * d + decoder)
