"""Prefix language modelling with a non-causal decoder (Wang et al. 2022, "What Language
Model Architecture and Pretraining Objective Work Best for Zero-Shot Generalization?").

Each packed segment (document piece) is split at a point drawn uniformly on the host: its
first p tokens, 1 <= p <= n - 1, are the prefix, seen bidirectionally by the prefix and by
the rest, which is causal; only the rest is predicted. Per segment rather than per row, so
every packed document gets its own prefix and a split never crosses a document.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import transformer_flops_per_token
from objectives import base
from objectives.causal_lm import next_token_targets


def segment_prefix(segment_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Bool (L,): the first p tokens of each nonzero segment run of n tokens, p uniform in
  [1, max(1, n - 1)] (a one-token segment is all prefix)."""
  index = np.arange(len(segment_ids))
  first = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  starts = index[first]
  lengths = np.diff(np.concatenate([starts, [len(segment_ids)]]))
  cut = rng.integers(1, np.maximum(lengths - 1, 1), endpoint=True)  # (segments,)
  offset = index - np.repeat(starts, lengths)
  return (offset < np.repeat(cut, lengths)) & (segment_ids > 0)


class PrefixSplit(grain.transforms.RandomMap):
  """Clean packed row -> the row plus `is_prefix` (L,) bool."""

  def random_map(self, example, rng: np.random.Generator):
    return {**example, "is_prefix": segment_prefix(example["segment_ids"], rng)}


def prefix_lm_targets(tokens, segment_ids, is_prefix):
  """(targets, weights) (B, L): next-token targets weighted only where the target token
  is past its segment's prefix."""
  targets, weights = next_token_targets(tokens, segment_ids)
  next_prefix = jnp.concatenate([is_prefix[:, 1:], jnp.ones_like(is_prefix[:, :1])], 1)
  return targets, weights * ~next_prefix


@base.register("prefix_lm")
class PrefixLM(base.Objective):
  models = ("transformer", "transformer_extra_ids")
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"
  feature_mask = "causal"

  def host_transform(self, config, info):
    return PrefixSplit()

  def mask_kind(self, config) -> str:
    """How positions attend: the prefix bidirectionally (decoder_span_corruption may make
    it causal, the causal-decoder cell of the same rows)."""
    return "segment_prefix"

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # The split is drawn on the host.
    net = model.bind(params)
    tokens, segment_ids = batch["tokens"], batch["segment_ids"]
    mask = attention_mask(self.mask_kind(config), segment_ids=segment_ids,
                          is_prefix=batch["is_prefix"])
    logits = net.logits(net(tokens, positions=batch["positions"], mask=mask))  # (B, L, V)
    targets, weights = prefix_lm_targets(tokens, segment_ids, batch["is_prefix"])
    loss, accuracy = base.token_loss(logits, targets, weights)
    return loss, {"accuracy": accuracy, "perplexity": jnp.exp(loss)}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    # Visible keys: p^2 for the prefix plus (n^2 - p^2) / 2 causal; with p uniform in
    # [0, n] that averages 2n/3 per query (causal LM: n/2), counted over the row as there.
    return info.seq_len * transformer_flops_per_token(model_cfg, 2 * info.seq_len / 3,
                                                      with_logits=True)
