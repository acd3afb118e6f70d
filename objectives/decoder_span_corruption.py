"""T5 span corruption on a decoder-only model: the causal-decoder and non-causal-decoder
"MLM" cells of Wang et al. 2022, "What Language Model Architecture and Pretraining
Objective Work Best for Zero-Shot Generalization?": a decoder-only model reads the
span-corrupted inputs and the targets concatenated, and is trained on the targets only.

The existing `SpanCorruption` transform corrupts the packed clean row; each segment's
corrupted inputs are then followed by its own targets, [inputs_1 ; targets_1 ; inputs_2 ;
targets_2 ; ...], padding last, so a row is one packed sequence of static length
inputs_len + targets_len (= seq_len + 2 * spans) in which documents stay separate segments.
`is_prefix` marks the inputs part. The loss is `prefix_lm`'s (next-token targets weighted
only where the next token is a target, so the last input predicts the first sentinel);
`objective.decoder_mask` picks the architecture: "causal" (CD: causal over the whole row)
or "prefix" (ND: the inputs part is a bidirectional prefix, mask kind segment_prefix). One
objective with a switch rather than two names, because the rows, targets and parameters
are identical and only the mask differs (a CD checkpoint loads into the ND run as is, the
paper's non-causal adaptation).
"""
from __future__ import annotations

import grain
import numpy as np

from models.transformer import transformer_flops_per_token
from objectives import base
from objectives.prefix_lm import PrefixLM
from objectives.span_corruption import (SpanCorruption, SpanCorruptionLM, _positions,
                                        corrupted_lengths)

MASKS = {"causal": "causal", "prefix": "segment_prefix"}  # objective.decoder_mask -> kind


class DecoderRow(grain.transforms.RandomMap):
  """Clean packed row -> {tokens, segment_ids, positions, is_prefix} (inputs_len +
  targets_len,): per segment its corrupted inputs, then its targets; positions restart per
  segment and run on from the inputs into the targets. Segment ids must increase along the
  row (`pack_documents` numbers them 1, 2, ...)."""

  def __init__(self, **span_corruption):
    self.corrupt = SpanCorruption(**span_corruption)
    self.length = self.corrupt.inputs_len + self.corrupt.targets_len

  def random_map(self, example, rng: np.random.Generator):
    parts = self.corrupt.random_map(example, rng)
    tokens = np.concatenate([parts["inputs"], parts["targets"]])
    segs = np.concatenate([parts["input_segment_ids"], parts["target_segment_ids"]])
    is_input = np.arange(self.length) < self.corrupt.inputs_len
    # Stable sort by segment, padding (id 0) last: each segment's inputs, then its targets.
    order = np.argsort(np.where(segs > 0, segs, segs.max() + 1), kind="stable")
    segs = segs[order]
    return {"tokens": tokens[order], "segment_ids": segs,
            "positions": _positions(segs).astype(np.int32),
            "is_prefix": is_input[order] & (segs > 0)}


@base.register("decoder_span_corruption")
class DecoderSpanCorruption(PrefixLM):
  """`prefix_lm`'s loss on span-corrupted rows; the mask follows objective.decoder_mask."""

  def validate(self, config):
    SpanCorruptionLM().validate(config)  # noise_density, mean_span_length, extra_ids
    if config.objective.decoder_mask not in MASKS:
      raise ValueError(f"objective.decoder_mask={config.objective.decoder_mask!r}; valid: "
                       f"{', '.join(MASKS)}")

  def host_transform(self, config, info):
    o = config.objective
    return DecoderRow(seq_len=info.seq_len, noise_density=o.noise_density,
                      mean_span_length=o.mean_span_length, vocab_size=info.vocab_size,
                      extra_ids=config.model.extra_ids)

  def mask_kind(self, config) -> str:
    return MASKS[config.objective.decoder_mask]

  def units_per_example(self, config, info):
    return info.seq_len  # clean tokens consumed per row

  def forward_flops_per_example(self, config, info, model_cfg):
    # Over the row of n = inputs + targets positions (logits at all of them), counted over
    # the row as causal_lm and prefix_lm count: causal, a query sees n / 2 keys on average;
    # prefix, the inputs see all inputs, the targets all inputs plus half the targets.
    o = config.objective
    _, _, n_in, n_tg = corrupted_lengths(info.seq_len, o.noise_density, o.mean_span_length)
    n = n_in + n_tg
    if o.decoder_mask == "causal":
      attended = n / 2
    else:
      attended = (n_in * n_in + n_tg * (n_in + n_tg / 2)) / n
    return n * transformer_flops_per_token(model_cfg, attended, with_logits=True)
