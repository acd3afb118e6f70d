"""Prefix language modelling on an encoder-decoder: the "ED:PLM" cell of Wang et al. 2022,
"What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot
Generalization?": the encoder reads a prefix of the text, the decoder predicts the rest.

Each packed segment is split as `prefix_lm` splits it (`segment_prefix`: p uniform in
[1, n - 1]); the prefixes, in row order, are the encoder inputs and the rests the decoder
targets, each padded to seq_len (static shapes: a row's prefixes and rests add up to at
most seq_len tokens, but either side alone may take almost all of them). Both sides keep
the row's segment ids, so decoder segment k cross-attends only to encoder segment k, and
positions restart per segment on each side. The batch has `span_corruption`'s keys, so its
loss (teacher-forced, targets shifted right per segment) is reused as is.
"""
from __future__ import annotations

import grain
import numpy as np

from models.encoder_decoder import encoder_decoder_flops
from objectives import base
from objectives.prefix_lm import segment_prefix
from objectives.span_corruption import SpanCorruptionLM, _pad, _positions

KEYS = ("inputs", "input_segment_ids", "input_positions",
        "targets", "target_segment_ids", "target_positions")


def _side(tokens: np.ndarray, segment_ids: np.ndarray, keep: np.ndarray) -> tuple:
  """(tokens, segment ids, positions) of the kept tokens, padded to the row's length."""
  segs = segment_ids[keep]
  return tuple(_pad(x, len(tokens)) for x in (tokens[keep], segs, _positions(segs)))


class PrefixToEncoder(grain.transforms.RandomMap):
  """Clean packed row -> encoder inputs (each segment's prefix) and decoder targets (the
  rest), with segment ids and positions: the keys `SpanCorruption` makes."""

  def random_map(self, example, rng: np.random.Generator):
    tokens, segs = example["tokens"], example["segment_ids"]
    is_prefix = segment_prefix(segs, rng)
    return dict(zip(KEYS, (*_side(tokens, segs, is_prefix),
                           *_side(tokens, segs, ~is_prefix & (segs > 0)))))


@base.register("encoder_decoder_prefix_lm")
class EncoderDecoderPrefixLM(SpanCorruptionLM):
  """`span_corruption`'s encoder-decoder loss on prefix / rest splits."""

  def validate(self, config):
    if config.data.seq_len < 2:
      raise ValueError(f"data.seq_len={config.data.seq_len}: a prefix split needs >= 2")

  def host_transform(self, config, info):
    return PrefixToEncoder()

  def forward_flops_per_example(self, config, info, model_cfg):
    # Useful work, not the static padding: p is uniform in [1, n - 1], so on average half of
    # the row's tokens go to each side; the encoder side is bidirectional over its tokens,
    # the decoder causal over its own (counted over the side, as span_corruption counts).
    half = info.seq_len / 2
    return encoder_decoder_flops(model_cfg, enc_len=half, dec_len=half, enc_attended=half,
                                 dec_attended=half / 2)
