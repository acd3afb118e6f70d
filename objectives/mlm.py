"""BERT masked language modelling (Devlin et al. 2018, §3.1 and Appendix A.1).

Host side: choose `mask_rate` of the non-special tokens (or whole words), replace
80% of them with [MASK], 10% with a random token and keep 10%, and record the chosen
positions in a fixed-size list (BERT's `max_predictions_per_seq`) so the device computes
vocabulary logits only at those positions, not at all L.
"""
from __future__ import annotations

import math

import grain
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import transformer_flops_per_token, logits_flops_per_token
from objectives import base


def num_predictions(seq_len: int, mask_rate: float) -> int:
  """Slots per example for predictions (BERT: 20 for 128 tokens at 15%)."""
  return max(1, math.ceil(seq_len * mask_rate))


def word_ids(word_start: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
  """Word index per token: a new word at each word start and at each segment start."""
  new_segment = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  return np.cumsum(word_start | new_segment) - 1


class MlmMasking(grain.transforms.RandomMap):
  """Clean packed text example -> MLM inputs and prediction targets."""

  def __init__(self, *, mask_rate: float, replace_mask: float, replace_random: float,
               whole_word: bool, mask_id: int, vocab_size: int, special_ids, seq_len: int):
    self.mask_rate = mask_rate
    self.replace_mask = replace_mask
    self.replace_random = replace_random
    self.whole_word = whole_word
    self.mask_id = mask_id
    self.special_ids = np.asarray(special_ids, np.int32)
    self.random_ids = np.setdiff1d(np.arange(vocab_size), self.special_ids).astype(np.int32)
    self.slots = num_predictions(seq_len, mask_rate)

  def choose(self, tokens, segment_ids, word_start, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions to predict, at most `self.slots` of them."""
    candidate = (segment_ids > 0) & ~np.isin(tokens, self.special_ids)
    budget = min(self.slots, max(1, round(candidate.sum() * self.mask_rate)))
    if not candidate.any():
      return np.zeros((0,), np.int32)
    if not self.whole_word:
      return np.sort(rng.choice(np.flatnonzero(candidate), budget, replace=False))
    words = word_ids(word_start, segment_ids)
    chosen = []
    for w in rng.permutation(np.unique(words[candidate])):
      members = np.flatnonzero((words == w) & candidate)
      if len(chosen) + len(members) > budget:
        continue
      chosen.extend(members)
      if len(chosen) == budget:
        break
    return np.sort(np.asarray(chosen, np.int32))

  def random_map(self, example, rng: np.random.Generator):
    tokens = example["tokens"]
    positions = self.choose(tokens, example["segment_ids"], example["word_start"], rng)
    inputs = tokens.copy()
    roll = rng.random(len(positions))
    to_mask = positions[roll < self.replace_mask]
    to_random = positions[(roll >= self.replace_mask)
                          & (roll < self.replace_mask + self.replace_random)]
    inputs[to_mask] = self.mask_id
    inputs[to_random] = rng.choice(self.random_ids, len(to_random))
    pad = self.slots - len(positions)
    return {
        "inputs": inputs.astype(np.int32),
        "segment_ids": example["segment_ids"],
        "positions": example["positions"],
        "masked_positions": np.pad(positions, (0, pad)).astype(np.int32),
        "masked_ids": np.pad(tokens[positions], (0, pad)).astype(np.int32),
        "masked_weights": np.pad(np.ones(len(positions), np.float32), (0, pad)),
    }


def masked_logits(net, batch) -> jnp.ndarray:
  """Vocabulary logits (B, K, V) at the K prediction slots of an `MlmMasking` batch."""
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  hidden = net(batch["inputs"], positions=batch["positions"], mask=mask)  # (B, L, D)
  picked = jnp.take_along_axis(hidden, batch["masked_positions"][..., None], axis=1)
  return net.logits(picked)


@base.register("mlm")
class MaskedLM(base.Objective):
  modality = "text"
  unit = "tokens"
  tokenizer = "wordpiece"

  def validate(self, config):
    o = config.objective
    if not 0 < o.mask_rate < 1:
      raise ValueError(f"objective.mask_rate={o.mask_rate}: must be in (0, 1)")
    if not (0 <= o.replace_mask and 0 <= o.replace_random
            and o.replace_mask + o.replace_random <= 1):
      raise ValueError(f"objective.replace_mask={o.replace_mask}, objective.replace_random="
                       f"{o.replace_random}: must be >= 0 and sum to <= 1")

  def host_transform(self, config, info):
    o = config.objective
    return MlmMasking(mask_rate=o.mask_rate, replace_mask=o.replace_mask,
                      replace_random=o.replace_random, whole_word=o.whole_word,
                      mask_id=info.mask_id, vocab_size=info.vocab_size,
                      special_ids=info.special_ids, seq_len=info.seq_len)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    logits = masked_logits(model.bind(params), batch)
    loss, accuracy = base.token_loss(logits, batch["masked_ids"], batch["masked_weights"])
    return loss, {"mlm_accuracy": accuracy}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    return (info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len,
                                                       with_logits=False)
            + slots * logits_flops_per_token(model_cfg))
