"""T5 span corruption (Raffel et al. 2020 §3.1.4, §3.3.4): drop noise spans from the
encoder input, one sentinel per span, and make the decoder emit sentinel + dropped tokens.

Shapes. A packed clean row has L tokens. K = round(L * noise_density) of them are noise, in
M = max(1, round(K / mean_span_length)) spans, so the encoder input is the L - K kept tokens
plus M sentinels and the targets are the K noise tokens plus M sentinels: both are static
(`corrupted_lengths`) and full for every row whose spans fit (L=512: 461 and 103).

Documents. Spans are placed per packed segment, so a span never crosses a document
boundary, and sentinels restart at the first one in every segment (as when T5 corrupts each
document before packing). A segment of n tokens holds spans of lengths l_i iff
sum(l_i + 1) <= n + 1 (spans need a kept token between them). Spans that fit no segment
(only in rows of many tiny documents) are dropped, and as many of the row's last kept tokens
are discarded as keep the encoder input at its static length; the targets are then padded.

Sentinels. The tokenizers have no T5 sentinels, so like T5's 100 `extra_ids` they extend
the vocabulary: sentinel k is id vocab_size + extra_ids - 1 - k (T5's <extra_id_0> is the
top id), and the model's vocabulary is vocab_size + model.extra_ids.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from models.encoder_decoder import encoder_decoder_flops
from objectives import base


def corrupted_lengths(seq_len: int, noise_density: float, mean_span_length: float):
  """(noise tokens K, spans M, encoder length L - K + M, target length K + M)."""
  noise = round(seq_len * noise_density)
  spans = max(1, round(noise / mean_span_length))
  return noise, spans, seq_len - noise + spans, noise + spans


def _composition(total: int, parts: int, rng: np.random.Generator, *, positive: bool):
  """`parts` random ints summing to `total` (all >= 1 if positive, else >= 0), uniform
  over such compositions (stars and bars)."""
  if positive:
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))
  bars = np.sort(rng.choice(total + parts - 1, parts - 1, replace=False))
  return np.diff(np.concatenate([[-1], bars, [total + parts - 1]])) - 1


def _segment_runs(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, length) of each maximal run of one nonzero segment id."""
  change = np.flatnonzero(np.diff(segment_ids)) + 1
  starts = np.concatenate([[0], change])
  lengths = np.diff(np.concatenate([starts, [len(segment_ids)]]))
  real = segment_ids[starts] > 0
  return starts[real], lengths[real]


def noise_spans(segment_ids: np.ndarray, num_noise: int, num_spans: int,
                rng: np.random.Generator) -> np.ndarray:
  """Bool (L,) noise mask of `num_spans` spans totalling `num_noise` tokens, none crossing a
  segment; spans that fit nowhere are left out (see the module doc)."""
  starts, lengths = _segment_runs(segment_ids)
  room = lengths + 1  # n + 1 slots; a span of length l takes l + 1 of them
  placed = [[] for _ in starts]
  for span in np.sort(_composition(num_noise, num_spans, rng, positive=True))[::-1]:
    fits = np.flatnonzero(room >= span + 1)
    if len(fits):
      s = rng.choice(fits, p=room[fits] / room[fits].sum())
      placed[s].append(span)
      room[s] -= span + 1
  noise = np.zeros(len(segment_ids), bool)
  for start, free, spans in zip(starts, room, placed):
    if not spans:
      continue
    spans = rng.permutation(spans)
    gaps = _composition(free, len(spans) + 1, rng, positive=False)
    offset = start + gaps[0]
    for span, gap in zip(spans, gaps[1:]):
      noise[offset:offset + span] = True
      offset += span + 1 + gap
  return noise


def _positions(segment_ids: np.ndarray) -> np.ndarray:
  """Index within each segment (0 on padding)."""
  index = np.arange(len(segment_ids))
  first = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  return (index - np.maximum.accumulate(np.where(first, index, 0))) * (segment_ids > 0)


def _pad(x: np.ndarray, length: int) -> np.ndarray:
  return np.pad(x, (0, length - len(x))).astype(np.int32)


class SpanCorruption(grain.transforms.RandomMap):
  """Clean packed text row -> encoder inputs and decoder targets, each with segment ids
  (the row's) and positions restarting per segment; padding has segment id 0."""

  def __init__(self, *, seq_len: int, noise_density: float, mean_span_length: float,
               vocab_size: int, extra_ids: int):
    self.noise, self.spans, self.inputs_len, self.targets_len = corrupted_lengths(
        seq_len, noise_density, mean_span_length)
    self.top_id = vocab_size + extra_ids - 1

  def random_map(self, example, rng: np.random.Generator):
    tokens, segs = example["tokens"], example["segment_ids"]
    noise = noise_spans(segs, self.noise, self.spans, rng)
    first = noise & ~np.concatenate([[False], noise[:-1] & (segs[1:] == segs[:-1])])
    # k-th span of its segment -> sentinel top_id - k.
    before = np.cumsum(first) - first
    seg_start = np.concatenate([[True], segs[1:] != segs[:-1]])
    sentinel = self.top_id - (before - np.maximum.accumulate(np.where(seg_start, before, 0)))
    kept = np.flatnonzero(~noise)
    excess = len(kept) + first.sum() - self.inputs_len  # > 0 only when spans were left out
    keep = ~noise
    keep[kept[len(kept) - max(excess, 0):]] = False
    enc = first | keep
    inputs, input_segs = np.where(first, sentinel, tokens)[enc], segs[enc]
    at = np.flatnonzero(first[noise])  # insert each sentinel before its span's tokens
    targets = np.insert(tokens[noise], at, sentinel[first])
    target_segs = np.insert(segs[noise], at, segs[first])
    return {
        "inputs": _pad(inputs, self.inputs_len),
        "input_segment_ids": _pad(input_segs, self.inputs_len),
        "input_positions": _pad(_positions(input_segs), self.inputs_len),
        "targets": _pad(targets, self.targets_len),
        "target_segment_ids": _pad(target_segs, self.targets_len),
        "target_positions": _pad(_positions(target_segs), self.targets_len),
    }


def shift_right(targets, segment_ids, start_id: int):
  """Decoder inputs (B, Lt): each segment's targets delayed by one, starting with start_id."""
  prev = jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], 1)
  prev_seg = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], 1)
  return jnp.where(prev_seg == segment_ids, prev, start_id)


@base.register("span_corruption")
class SpanCorruptionLM(base.Objective):
  models = ("encoder_decoder",)
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"
  feature_mask = "bidirectional"

  def validate(self, config):
    o = config.objective
    if not 0 < o.noise_density < 0.5:
      raise ValueError(f"objective.noise_density={o.noise_density}: must be in (0, 0.5)")
    if o.mean_span_length < 1:
      raise ValueError(f"objective.mean_span_length={o.mean_span_length}: must be >= 1")
    noise, spans, _, _ = corrupted_lengths(config.data.seq_len, o.noise_density,
                                           o.mean_span_length)
    if noise < 1:
      raise ValueError(f"data.seq_len={config.data.seq_len} x objective.noise_density="
                       f"{o.noise_density} rounds to no noise tokens")
    if spans > config.model.extra_ids:
      raise ValueError(f"span_corruption needs {spans} sentinels per row but "
                       f"model.extra_ids={config.model.extra_ids}")

  def host_transform(self, config, info):
    o = config.objective
    return SpanCorruption(seq_len=info.seq_len, noise_density=o.noise_density,
                          mean_span_length=o.mean_span_length, vocab_size=info.vocab_size,
                          extra_ids=config.model.extra_ids)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    targets, segs = batch["targets"], batch["target_segment_ids"]
    # T5 starts the decoder with the padding id (0 here as in T5).
    hidden = net(batch["inputs"], shift_right(targets, segs, 0),
                 enc_segment_ids=batch["input_segment_ids"], dec_segment_ids=segs,
                 enc_positions=batch["input_positions"],
                 dec_positions=batch["target_positions"])  # (B, Lt, D)
    logits = net.logits(hidden)  # (B, Lt, V)
    loss, accuracy = base.token_loss(logits, targets, (segs > 0).astype(jnp.float32))
    return loss, {"accuracy": accuracy}

  def units_per_example(self, config, info):
    return info.seq_len  # clean tokens consumed per row

  def forward_flops_per_example(self, config, info, model_cfg):
    o = config.objective
    _, _, enc_len, dec_len = corrupted_lengths(info.seq_len, o.noise_density,
                                               o.mean_span_length)
    return encoder_decoder_flops(model_cfg, enc_len=enc_len, dec_len=dec_len,
                                 enc_attended=enc_len, dec_attended=dec_len / 2)
