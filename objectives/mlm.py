"""BERT masked language modelling (Devlin et al. 2018, §3.1 and Appendix A.1).

Host side: choose `mask_rate` of the non-special tokens (or whole words), replace
80% of them with [MASK], 10% with a random token and keep 10%, and record the chosen
positions in a fixed-size list (BERT's `max_predictions_per_seq`) so the device computes
vocabulary logits only at those positions, not at all L.

Strategies (the unit a selection takes whole): "token", "whole_word" (every piece of a word)
or "span" (SpanBERT, Joshi et al. 2020 §3.1: runs of whole words, lengths drawn from a
geometric distribution). A curriculum (`objective.curriculum`, used by configs/bioptimus.py
after Pavlova & Makhlouf 2023, "BIOptimus") switches strategy and rate at given training
steps; the host learns the step from the global example index (step = index // global
batch), so a resumed run masks batch k exactly as an uninterrupted one does.
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


STRATEGIES = ("token", "whole_word", "span")
# SpanBERT §3.1: span length in words ~ Geometric(p=0.2) truncated to at most 10 words
# (renormalised: "clipped at 10, yielding a mean span length of 3.8").
SPAN_P, SPAN_MAX = 0.2, 10


def span_lengths(rng: np.random.Generator, size: int, p: float = SPAN_P,
                 max_len: int = SPAN_MAX) -> np.ndarray:
  """`size` span lengths in words: Geometric(p) on {1, ..., max_len}, renormalised."""
  lengths = np.arange(1, max_len + 1)
  pmf = p * (1 - p) ** (lengths - 1)
  return rng.choice(lengths, size, p=pmf / pmf.sum())


def word_ids(word_start: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
  """Word index per token: a new word at each word start and at each segment start."""
  new_segment = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  return np.cumsum(word_start | new_segment) - 1


class MlmMasking(grain.transforms.RandomMap):
  """Clean packed text example -> MLM inputs and prediction targets.

  `strategy` (token, whole_word or span) overrides the older `whole_word` flag; `slots`
  overrides the number of prediction slots (a curriculum gives all its phases the most any
  phase needs, so batch shapes never change).
  """

  def __init__(self, *, mask_rate: float, replace_mask: float, replace_random: float,
               whole_word: bool = False, mask_id: int, vocab_size: int, special_ids,
               seq_len: int, strategy: str | None = None, slots: int | None = None):
    self.mask_rate = mask_rate
    self.replace_mask = replace_mask
    self.replace_random = replace_random
    self.strategy = strategy or ("whole_word" if whole_word else "token")
    self.mask_id = mask_id
    self.special_ids = np.asarray(special_ids, np.int32)
    self.random_ids = np.setdiff1d(np.arange(vocab_size), self.special_ids).astype(np.int32)
    self.slots = slots or num_predictions(seq_len, mask_rate)

  def choose(self, tokens, segment_ids, word_start, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions to predict, at most `self.slots` of them."""
    candidate = (segment_ids > 0) & ~np.isin(tokens, self.special_ids)
    budget = min(self.slots, max(1, round(candidate.sum() * self.mask_rate)))
    if not candidate.any():
      return np.zeros((0,), np.int32)
    if self.strategy == "token":
      return np.sort(rng.choice(np.flatnonzero(candidate), budget, replace=False))
    words = word_ids(word_start, segment_ids)
    if self.strategy == "whole_word":
      groups = (np.flatnonzero((words == w) & candidate)
                for w in rng.permutation(np.unique(words[candidate])))
    else:
      groups = _spans(words, segment_ids, candidate, 4 * budget, rng)
    return _fill(groups, budget, len(tokens))

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


def _fill(groups, budget: int, length: int) -> np.ndarray:
  """Sorted positions of the groups taken in order, skipping any that would overshoot the
  budget, until it is met (or the groups run out)."""
  chosen, count = np.zeros(length, bool), 0
  for members in groups:
    members = members[~chosen[members]]
    if count + len(members) > budget:
      continue
    chosen[members] = True
    count += len(members)
    if count == budget:
      break
  return np.flatnonzero(chosen).astype(np.int32)


def _spans(words, segment_ids, candidate, tries: int, rng: np.random.Generator):
  """Up to `tries` candidate positions of spans of whole words: each starts at a uniformly
  drawn candidate word and runs `span_lengths` words, cut at the end of its segment."""
  first = np.flatnonzero(np.diff(words, prepend=-1))  # first token of each word
  bounds = np.append(first, len(words))
  word_segment = segment_ids[first]
  seg_ends = np.append(np.flatnonzero(np.diff(word_segment)) + 1, len(first))
  seg_end = seg_ends[np.searchsorted(seg_ends, np.arange(len(first)), side="right")]
  starts = rng.choice(np.unique(words[candidate]), tries)
  for start, length in zip(starts, span_lengths(rng, tries)):
    span = np.arange(bounds[start], bounds[min(start + length, seg_end[start])])
    yield span[candidate[span]]


class CurriculumMasking(grain.transforms.RandomMap):
  """MLM masking whose strategy and rate change at given optimizer steps.

  `wants_example_index` asks the pipeline for the global example index (the position in
  the shuffled, repeated stream, which a resume restores): step = index // global_batch.
  """

  wants_example_index = True

  def __init__(self, phases: list[tuple[int, MlmMasking]], global_batch: int):
    self.starts = np.array([start for start, _ in phases])
    self.maskings = [masking for _, masking in phases]
    self.global_batch = global_batch

  def phase(self, step: int) -> int:
    """Index of the phase in force at `step` (the last one started by then)."""
    return int(np.searchsorted(self.starts, step, side="right")) - 1

  def random_map(self, example, rng: np.random.Generator):
    step = int(example["example_index"]) // self.global_batch
    return self.maskings[self.phase(step)].random_map(example, rng)


def masking_phases(objective_cfg) -> list[tuple[int, str, float]]:
  """[(start_step, strategy, rate)] sorted by step: the base (mask_rate, whole_word) from
  step 0, replaced from each `objective.curriculum` entry's start step on."""
  o = objective_cfg
  phases = {0: ("whole_word" if o.whole_word else "token", o.mask_rate)}
  for start, strategy, rate in o.get("curriculum", ()):
    phases[int(start)] = (strategy, float(rate))
  return [(start, *phases[start]) for start in sorted(phases)]


def _valid_phase(phase) -> bool:
  try:
    start, strategy, rate = phase
    return int(start) == start >= 0 and strategy in STRATEGIES and 0 < float(rate) < 1
  except (TypeError, ValueError):
    return False


def max_slots(config, seq_len: int) -> int:
  """Prediction slots per example: enough for the highest rate of any phase."""
  return num_predictions(seq_len, max(rate for _, _, rate in masking_phases(config.objective)))


@base.register("mlm")
class MaskedLM(base.Objective):
  models = ("transformer", "transformer_extra_ids")
  modality = "text"
  unit = "tokens"
  tokenizer = "wordpiece"
  feature_mask = "bidirectional"

  def validate(self, config):
    o = config.objective
    if not 0 < o.mask_rate < 1:
      raise ValueError(f"objective.mask_rate={o.mask_rate}: must be in (0, 1)")
    if not (0 <= o.replace_mask and 0 <= o.replace_random
            and o.replace_mask + o.replace_random <= 1):
      raise ValueError(f"objective.replace_mask={o.replace_mask}, objective.replace_random="
                       f"{o.replace_random}: must be >= 0 and sum to <= 1")
    for i, phase in enumerate(o.get("curriculum", ())):
      if not _valid_phase(phase):
        raise ValueError(f"objective.curriculum[{i}]={phase!r}: expected (start_step >= 0, "
                         f"strategy in {list(STRATEGIES)}, rate in (0, 1))")

  def host_transform(self, config, info):
    o = config.objective
    slots = max_slots(config, info.seq_len)
    phases = [(start, MlmMasking(mask_rate=rate, strategy=strategy, slots=slots,
                                 replace_mask=o.replace_mask, replace_random=o.replace_random,
                                 mask_id=info.mask_id, vocab_size=info.vocab_size,
                                 special_ids=info.special_ids, seq_len=info.seq_len))
              for start, strategy, rate in masking_phases(o)]
    if len(phases) == 1:
      return phases[0][1]
    return CurriculumMasking(phases, config.train.global_batch)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    logits = masked_logits(model.bind(params), batch)
    loss, accuracy = base.token_loss(logits, batch["masked_ids"], batch["masked_weights"])
    return loss, {"mlm_accuracy": accuracy}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    slots = max_slots(config, info.seq_len)
    return (info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len,
                                                       with_logits=False)
            + slots * logits_flops_per_token(model_cfg))
