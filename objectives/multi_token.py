"""Multi-token prediction (Gloeckle et al. 2024, "Better & Faster Large Language Models via
Multi-token Prediction"): on a shared causal trunk, N one-block heads (`MultiTokenLM`)
predict tokens t+1..t+N at every position t through the shared unembedding.

Packing: the target of head k at t is the token k ahead in t's own segment; past the
segment's end it gets weight 0 (`next_token_targets` at offset k), so no head learns across
a document boundary. Loss: the per-head mean cross-entropies averaged with weights
`objective.future_decay`^(k-1) (1.0: the paper's plain sum over heads, divided by N so the
scale matches a next-token loss). Head 1 is an ordinary next-token predictor: `accuracy`
and `perplexity` are its, comparable with causal_lm; every head also logs its own.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, stack_flops_per_token
from objectives import base
from objectives.causal_lm import next_token_targets


def future_token_targets(tokens, segment_ids, num_future: int):
  """(targets, weights) (N, B, L): row k-1 holds token t+k where it is in t's segment."""
  pairs = [next_token_targets(tokens, segment_ids, k) for k in range(1, num_future + 1)]
  return jnp.stack([t for t, _ in pairs]), jnp.stack([w for _, w in pairs])


def future_token_loss(logits, targets, weights, decay: float):
  """logits (N, B, L, V), targets/weights (N, B, L) -> (loss, metrics): head losses
  averaged with weights decay^(k-1); per-head `future<k>_loss` / `future<k>_accuracy`."""
  metrics, losses = {}, []
  for k in range(logits.shape[0]):
    loss, accuracy = base.token_loss(logits[k], targets[k], weights[k])
    metrics[f"future{k + 1}_loss"], metrics[f"future{k + 1}_accuracy"] = loss, accuracy
    losses.append(loss)
  head_weights = decay ** jnp.arange(len(losses), dtype=jnp.float32)
  loss = (head_weights * jnp.stack(losses)).sum() / head_weights.sum()
  metrics.update(accuracy=metrics["future1_accuracy"],
                 perplexity=jnp.exp(metrics["future1_loss"]))
  return loss, metrics


def validate_future(config) -> None:
  """The checks multi_token and ftp share: N and the head decay."""
  if not 1 <= config.model.num_future < config.data.seq_len:
    raise ValueError(f"model.num_future={config.model.num_future}: must be in "
                     f"[1, data.seq_len={config.data.seq_len})")
  if not 0 < config.objective.future_decay <= 1:
    raise ValueError(f"objective.future_decay={config.objective.future_decay}: must be in "
                     "(0, 1]")


@base.register("multi_token")
class MultiToken(base.Objective):
  models = ("multi_token",)
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"

  def validate(self, config):
    validate_future(config)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng
    net = model.bind(params)
    tokens, segment_ids, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    mask = attention_mask("causal", segment_ids=segment_ids)
    trunk = net(tokens, positions=positions, mask=mask)  # (B, L, D)
    logits = net.logits(net.future_hidden(trunk, mask=mask, positions=positions))
    targets, weights = future_token_targets(tokens, segment_ids, len(net.heads))
    return future_token_loss(logits, targets, weights, config.objective.future_decay)

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    # Trunk + N head blocks (causal: half the keys on average), logits once per head.
    n = model_cfg.num_future
    blocks = stack_flops_per_token(model_cfg.block, model_cfg.num_layers + n, info.seq_len / 2)
    return info.seq_len * (blocks + n * logits_flops_per_token(model_cfg))
