"""BART denoising (Lewis et al. 2019, "BART: Denoising Sequence-to-Sequence Pre-training for
Natural Language Generation, Translation, and Comprehension", §2.2, §5.1).

An encoder-decoder reads corrupted text and its decoder reconstructs the original: the loss
is the decoder's cross-entropy on every clean token. The five noise functions of §2.2 each
have a rate and compose, in the order of the released fairseq `DenoisingDataset`
(permutation first, rotation last):

  sentence permutation  `permute_rate` of a document's sentences are shuffled among their
                        places (BART: all). A sentence ends at a run of tokens whose text
                        ends in '.', '!' or '?' (`DataInfo.sentence_end_ids`, from the
                        tokenizer); a piece cut by the row boundary ends one too.
  text infilling        `infill_rate` of the tokens (BART: 30%) are covered by spans whose
                        lengths are drawn from Poisson(`poisson_lambda`) (BART: 3) until the
                        budget is met (the last span is cut to fit); each span becomes ONE
                        [MASK], and a zero-length span inserts a [MASK].
  token masking         `token_mask_rate` of the tokens become [MASK], one for one.
  token deletion        `delete_rate` of the tokens are removed.
  document rotation     with probability `rotate_rate` the document is rotated so that a
                        uniformly drawn token (other than its first) starts it.

Infilling, masking and deletion pick disjoint tokens; infilling spans keep at least one
token between them, so every span's [MASK] stands for exactly one span.

Documents. Rows are packed: every noise function works on one segment (a document piece)
at a time, so no token crosses a document boundary, and a segment's closing special token
(the end-of-document id) stays last, as fairseq keeps </s>.

Static shapes. Deletion and infilling shorten a segment; masking, permutation and rotation
keep its length; only zero-length spans lengthen it, and those that would make the segment
longer than it was are dropped (for Poisson(3) spans over 30% of a document that is rare:
it needs more empty spans than the other spans' lengths beyond 1). So the encoder input
never exceeds seq_len and is padded to it; the decoder targets are the clean row itself.
"""
from __future__ import annotations

import math

import grain
import jax.numpy as jnp
import numpy as np

from models.encoder_decoder import encoder_decoder_flops
from objectives import base
from objectives.span_corruption import (_composition, _pad, _positions, _segment_runs,
                                         shift_right)

RATES = ("infill_rate", "token_mask_rate", "delete_rate", "permute_rate", "rotate_rate")


def permute_sentences(body: np.ndarray, sentence_end_ids, rate: float,
                      rng: np.random.Generator) -> np.ndarray:
  """`body` with ceil(rate * S) of its S sentences shuffled among their own places."""
  is_end = np.isin(body, sentence_end_ids)
  ends = np.flatnonzero(is_end & ~np.append(is_end[1:], False)) + 1
  bounds = np.unique(np.concatenate([[0], ends, [len(body)]]))
  sentences = len(bounds) - 1
  if sentences < 2 or rate <= 0:
    return body
  chosen = rng.choice(sentences, math.ceil(sentences * rate), replace=False)
  order = np.arange(sentences)
  order[chosen] = rng.permutation(chosen)
  return np.concatenate([body[bounds[i]:bounds[i + 1]] for i in order])


def poisson_spans(budget: int, lam: float, rng: np.random.Generator) -> np.ndarray:
  """Span lengths ~ Poisson(lam), drawn until they cover `budget` tokens, the last cut to
  fit (as BART's fairseq code does); zero-length spans are kept (they are insertions)."""
  if budget <= 0:
    return np.zeros(0, np.int64)
  draws = rng.poisson(lam, budget)
  while draws.sum() < budget:
    draws = np.concatenate([draws, rng.poisson(lam, budget)])
  cum = np.cumsum(draws)
  last = int(np.searchsorted(cum, budget))  # first draw reaching the budget
  lengths = draws[:last + 1].copy()
  lengths[-1] = budget - (cum[last - 1] if last else 0)
  return lengths


def infilling_spans(n: int, rate: float, lam: float, rng: np.random.Generator):
  """(starts, lengths) of the nonempty infilling spans over n tokens, in order, at least
  one token apart, and the number of zero-length spans. Spans that cannot fit (only when
  rate > 0.5) are left out."""
  lengths = poisson_spans(round(n * rate), lam, rng)
  empty = int((lengths == 0).sum())
  lengths = lengths[lengths > 0]
  while len(lengths) and lengths.sum() + len(lengths) - 1 > n:
    lengths = lengths[:-1]
  if not len(lengths):
    return np.zeros(0, np.int64), lengths, empty
  gaps = _composition(n - lengths.sum() - (len(lengths) - 1), len(lengths) + 1, rng,
                      positive=False)
  starts = gaps[0] + np.concatenate([[0], np.cumsum(lengths[:-1] + 1 + gaps[1:-1])])
  return starts, lengths, empty


class BartNoising(grain.transforms.RandomMap):
  """Clean packed text row -> noised encoder inputs (padded to seq_len) and the clean row
  as decoder targets; positions restart per segment, padding has segment id 0."""

  def __init__(self, *, infill_rate: float, poisson_lambda: float, token_mask_rate: float,
               delete_rate: float, permute_rate: float, rotate_rate: float, mask_id: int,
               special_ids, sentence_end_ids):
    self.infill_rate, self.poisson_lambda = infill_rate, poisson_lambda
    self.token_mask_rate, self.delete_rate = token_mask_rate, delete_rate
    self.permute_rate, self.rotate_rate = permute_rate, rotate_rate
    self.mask_id = mask_id
    self.special_ids = np.asarray(special_ids, np.int32)
    self.sentence_end_ids = np.asarray(sentence_end_ids, np.int32)

  def noise_body(self, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One document piece (without its closing special token) -> its noised tokens, never
    longer than `body`."""
    n = len(body)
    body = permute_sentences(body, self.sentence_end_ids, self.permute_rate, rng)
    starts, lengths, empty = infilling_spans(n, self.infill_rate, self.poisson_lambda, rng)
    in_span = np.zeros(n, bool)
    for start, length in zip(starts, lengths):
      in_span[start:start + length] = True
    free = rng.permutation(np.flatnonzero(~in_span))
    num_mask = min(round(n * self.token_mask_rate), len(free))
    num_delete = min(round(n * self.delete_rate), len(free) - num_mask)
    out = body.copy()
    out[free[:num_mask]] = self.mask_id
    out[starts] = self.mask_id
    keep = ~in_span
    keep[starts] = True
    keep[free[num_mask:num_mask + num_delete]] = False
    out = out[keep]
    inserts = min(empty, n - len(out))  # never longer than the clean piece
    if inserts:
      out = np.insert(out, np.sort(rng.integers(0, len(out) + 1, inserts)), self.mask_id)
    if len(out) > 1 and rng.random() < self.rotate_rate:
      out = np.roll(out, -rng.integers(1, len(out)))
    return out

  def noise_row(self, tokens: np.ndarray, segment_ids: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noised tokens, their segment ids), unpadded: each segment noised on its own."""
    pieces, segs = [], []
    for start, length in zip(*_segment_runs(segment_ids)):
      piece = tokens[start:start + length]
      closed = np.isin(piece[-1], self.special_ids)  # the document's end-of-text id
      out = self.noise_body(piece[:-1] if closed else piece, rng)
      if closed:
        out = np.append(out, piece[-1])
      pieces.append(out)
      segs.append(np.full(len(out), segment_ids[start]))
    return np.concatenate(pieces), np.concatenate(segs)

  def random_map(self, example, rng: np.random.Generator):
    tokens, segs = example["tokens"], example["segment_ids"]
    inputs, input_segs = self.noise_row(tokens, segs, rng)
    return {
        "inputs": _pad(inputs, len(tokens)),
        "input_segment_ids": _pad(input_segs, len(tokens)),
        "input_positions": _pad(_positions(input_segs), len(tokens)),
        "targets": tokens.astype(np.int32),
        "target_segment_ids": segs.astype(np.int32),
        "target_positions": example["positions"].astype(np.int32),
    }


def validate_noise(o) -> None:
  """ValueError naming the first bad BART noise setting (shared with E2S2)."""
  for key in RATES:
    if not 0 <= o[key] <= 1:
      raise ValueError(f"objective.{key}={o[key]}: must be in [0, 1]")
  if o.infill_rate > 0.5:
    raise ValueError(f"objective.infill_rate={o.infill_rate}: must be <= 0.5 (spans need a "
                     "kept token between them)")
  if o.poisson_lambda <= 0:
    raise ValueError(f"objective.poisson_lambda={o.poisson_lambda}: must be > 0")
  total = o.infill_rate + o.token_mask_rate + o.delete_rate
  if total > 1:
    raise ValueError(f"objective.infill_rate + token_mask_rate + delete_rate = {total}: "
                     "must be <= 1 (they pick disjoint tokens)")


def bart_noising(config, info: base.DataInfo) -> BartNoising:
  o = config.objective
  return BartNoising(infill_rate=o.infill_rate, poisson_lambda=o.poisson_lambda,
                     token_mask_rate=o.token_mask_rate, delete_rate=o.delete_rate,
                     permute_rate=o.permute_rate, rotate_rate=o.rotate_rate,
                     mask_id=info.mask_id, special_ids=info.special_ids,
                     sentence_end_ids=info.sentence_end_ids)


def reconstruction_loss(net, batch, context):
  """Decoder cross-entropy of the clean targets given encoder states `context`.

  The decoder starts each segment from the padding id, as T5 does here; fairseq's BART
  starts from </s>, an arbitrary fixed id either way."""
  targets, segs = batch["targets"], batch["target_segment_ids"]
  hidden = net.decode(shift_right(targets, segs, 0), context, segment_ids=segs,
                      positions=batch["target_positions"],
                      enc_segment_ids=batch["input_segment_ids"])  # (B, L, D)
  return base.token_loss(net.logits(hidden), targets, (segs > 0).astype(jnp.float32))


def encode_inputs(net, batch):
  """Encoder states (B, L, D) of the noised inputs."""
  return net.encode(batch["inputs"], segment_ids=batch["input_segment_ids"],
                    positions=batch["input_positions"])


def bart_flops(model_cfg, seq_len: int) -> float:
  """Forward FLOPs of one row: encoder and decoder over seq_len positions."""
  return encoder_decoder_flops(model_cfg, enc_len=seq_len, dec_len=seq_len,
                               enc_attended=seq_len, dec_attended=seq_len / 2)


@base.register("bart")
class Bart(base.Objective):
  models = ("encoder_decoder",)
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"  # §5.1: GPT-2's byte-level BPE

  def validate(self, config):
    validate_noise(config.objective)

  def host_transform(self, config, info):
    return bart_noising(config, info)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    loss, accuracy = reconstruction_loss(net, batch, encode_inputs(net, batch))
    return loss, {"accuracy": accuracy}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    return bart_flops(model_cfg, info.seq_len)
