"""Starbucks masked-autoencoding pretraining (Zhuang et al. 2024, "Starbucks: Improved
Training for 2D Matryoshka Embeddings"): MLM applied to sub-layers and sub-dimensions, so
that every (first n layers, first d dimensions) slice of the encoder is a usable model.

For each pair (n, d) of a fixed list from small to large (`objective.layer_dims`; the paper's
(2, 32), (4, 64), ..., (12, 768)), the hidden states after block n are truncated to their
first d dimensions - the rest set to 0, which is what reading only d dimensions means to the
shared MLM head - and predict the masked tokens (BERT masking, `MlmMasking`, once per row:
all pairs see the same input). The loss is the mean over the pairs; a fixed list rather than
a sampled pair per step is the paper's finding (2D Matryoshka sampled one).

Why zero-padding: the MLM head (dense + LayerNorm + tied unembedding) expects d_model
inputs; zeroing the tail lets every pair share the one head, so no per-pair parameters are
added and the full pair is ordinary MLM. The stack must be unscanned (`model.scan_layers`
false) to read its intermediate layers. Left out (configs/starbucks.py NOT_IMPLEMENTED): the
paper's MAE decoder on each pair and its fine-tuning stage (2D Matryoshka contrastive loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base
from objectives.mlm import MaskedLM, num_predictions
from pretrain.model_builders import decode_size


def truncate(hidden: jax.Array, dim: int) -> jax.Array:
  """The first `dim` features of hidden (..., D), the others zeroed."""
  return hidden * (jnp.arange(hidden.shape[-1]) < dim).astype(hidden.dtype)


def pairs_of(objective_cfg) -> tuple[tuple[int, int], ...]:
  return tuple((int(n), int(d)) for n, d in objective_cfg.layer_dims)


@base.register("starbucks")
class Starbucks(MaskedLM):
  """The `mlm` keys configure the masking; `objective.layer_dims` the (layers, dims) pairs."""
  models = ("transformer",)

  def validate(self, config):
    super().validate(config)
    size = decode_size(config.model)
    try:
      pairs = pairs_of(config.objective)
    except (TypeError, ValueError):
      pairs = ()
    ok = bool(pairs) and all(1 <= n <= size["num_layers"] and 1 <= d <= size["d_model"]
                             for n, d in pairs)
    ok = ok and all(a[0] <= b[0] and a[1] <= b[1] and a != b for a, b in zip(pairs, pairs[1:]))
    if not ok:
      raise ValueError(f"objective.layer_dims={config.objective.layer_dims!r}: expected "
                       f"(layers, dims) pairs with 1 <= layers <= {size['num_layers']}, "
                       f"1 <= dims <= {size['d_model']}, increasing, small to large")
    if config.model.scan_layers:
      raise ValueError("starbucks reads intermediate layers: model.scan_layers must be false")

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    pairs = pairs_of(config.objective)
    mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
    states = net.layer_states(batch["inputs"], mask=mask, positions=batch["positions"],
                              layers=[n for n, _ in pairs])
    losses, metrics = [], {}
    for n, d in pairs:
      picked = jnp.take_along_axis(states[n], batch["masked_positions"][..., None], axis=1)
      loss, accuracy = base.token_loss(net.logits(truncate(picked, d)), batch["masked_ids"],
                                       batch["masked_weights"])
      losses.append(loss)
      metrics[f"loss_L{n}_d{d}"], metrics[f"accuracy_L{n}_d{d}"] = loss, accuracy
    metrics["mlm_accuracy"] = metrics[f"accuracy_L{pairs[-1][0]}_d{pairs[-1][1]}"]
    return sum(losses) / len(losses), metrics

  def forward_flops_per_example(self, config, info, model_cfg):
    """The stack up to the deepest pair, and the MLM slots' logits once per pair."""
    pairs = pairs_of(config.objective)
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    depth = max(n for n, _ in pairs) / model_cfg.num_layers
    return (depth * info.seq_len
            * transformer_flops_per_token(model_cfg, info.seq_len, with_logits=False)
            + len(pairs) * slots * logits_flops_per_token(model_cfg))
