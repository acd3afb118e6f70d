"""CodeT5 identifier-aware denoising (Wang et al. 2021, "CodeT5: Identifier-aware Unified
Pre-trained Encoder-Decoder Models for Code Understanding and Generation", §3.1).

Three tasks on packed Python source whose tokens carry identifier labels from Python's own
lexer (pretrain/data/code.py):
  MSP  masked span prediction: T5 span corruption, reused from span_corruption.py;
  IT   identifier tagging: a binary head on the encoder output predicts, per token of the
       clean input, whether it belongs to an identifier (binary cross-entropy);
  MIP  masked identifier prediction: every occurrence of one identifier in a segment is
       replaced by the same sentinel (one sentinel per distinct identifier, numbered by first
       occurrence, restarting per segment as span corruption's do) and the decoder emits
       "sentinel_0 identifier_0 sentinel_1 identifier_1 ...".
The paper alternates the tasks with equal probability; here each example draws its task on
the host (`objective.task_probs`, default 1/3 each), so one batch mixes tasks and the loss is
the decoder cross-entropy over the MSP and MIP targets plus the tagging BCE over the IT
tokens. Every example has the same static shapes: encoder length seq_len (MSP and MIP
inputs are shorter and padded), decoder length `objective.target_len` (IT examples leave it
empty). MIP masks identifiers in order of first occurrence while their sentinel + tokens
fit in target_len and sentinels last (model.extra_ids); later ones stay visible.

`codet5_bimodal` is the paper's second stage (§3.2, bimodal dual generation): on
(docstring, function) pairs, each example is NL->PL or PL->NL with equal probability,
trained with span corruption's decoder loss on the same model.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np
import optax

from models.encoder_decoder import encoder_decoder_flops
from objectives import base
from objectives.span_corruption import (SpanCorruption, SpanCorruptionLM, _pad, _positions,
                                        corrupted_lengths, shift_right)
from pretrain.data.code import annotate_documents, docstring_pairs
from pretrain.data.packing import pack_documents

TASKS = ("msp", "it", "mip")


class PackedIdentifiers:
  """`Objective.text_examples`: packed rows that also carry `identifier_id` per token."""

  key = {"identifier_id": "python-tokenize-v1"}

  def build(self, docs, tokenizer, data_cfg) -> dict[str, np.ndarray]:
    annotated = annotate_documents(docs, tokenizer)
    return pack_documents([a.ids for a in annotated], [a.word_start for a in annotated],
                          data_cfg.seq_len, tokenizer.eos_id,
                          extras={"identifier_id": [a.identifier_id for a in annotated]})

  def example(self, info) -> dict[str, np.ndarray]:
    """A synthetic clean example of the built rows' keys, shapes and dtypes (for AOT)."""
    ids = np.arange(info.seq_len, dtype=np.int32) % info.vocab_size
    rows = pack_documents([ids], [np.ones(info.seq_len, bool)], info.seq_len, eos_id=0,
                          extras={"identifier_id": [ids % 3]})
    return {k: v[0] for k, v in rows.items()}


def _runs(identifier_id: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
  """True at the first token of each identifier occurrence (a run of one nonzero id)."""
  same = (identifier_id[1:] == identifier_id[:-1]) & (segment_ids[1:] == segment_ids[:-1])
  return (identifier_id > 0) & ~np.concatenate([[False], same])


def mask_identifiers(tokens, segment_ids, identifier_id, *, top_id: int, max_sentinels: int,
                     target_len: int):
  """MIP: (inputs, input segment ids, targets, target segment ids), unpadded.

  In each segment, the k-th distinct identifier (by first occurrence) becomes sentinel
  top_id - k at every occurrence; the targets list each sentinel followed by the tokens of
  that identifier's first occurrence."""
  starts = _runs(identifier_id, segment_ids)
  sentinel = np.zeros(len(tokens), np.int64)
  targets, target_segs = [], []
  for seg in np.unique(segment_ids[segment_ids > 0]):
    in_seg = segment_ids == seg
    runs = np.flatnonzero(starts & in_seg)
    _, first = np.unique(identifier_id[runs], return_index=True)
    for k, run in enumerate(runs[np.sort(first)]):
      name = identifier_id[run]
      inside = (identifier_id[run:] == name) & (segment_ids[run:] == seg)
      piece = tokens[run:run + np.argmin(np.append(inside, False))]
      if k >= max_sentinels or len(targets) + 1 + len(piece) > target_len:
        break
      targets += [top_id - k, *piece]
      target_segs += [seg] * (1 + len(piece))
      sentinel[in_seg & (identifier_id == name)] = top_id - k
  masked = sentinel > 0
  keep = ~masked | starts
  return (np.where(masked, sentinel, tokens)[keep], segment_ids[keep],
          np.asarray(targets, np.int64), np.asarray(target_segs, np.int64))


class IdentifierAwareDenoising(grain.transforms.RandomMap):
  """Packed row with `identifier_id` -> one task's encoder/decoder arrays (static shapes)
  plus `is_identifier`/`tag_weights` for the tagging head (weights 0 outside IT)."""

  def __init__(self, *, seq_len: int, noise_density: float, mean_span_length: float,
               vocab_size: int, extra_ids: int, task_probs, target_len: int):
    self.spans = SpanCorruption(seq_len=seq_len, noise_density=noise_density,
                                mean_span_length=mean_span_length, vocab_size=vocab_size,
                                extra_ids=extra_ids)
    self.top_id, self.max_sentinels = vocab_size + extra_ids - 1, extra_ids
    self.task_probs = np.asarray(task_probs, np.float64) / np.sum(task_probs)
    self.seq_len, self.target_len = seq_len, target_len

  def random_map(self, example, rng: np.random.Generator):
    tokens, segs = example["tokens"], example["segment_ids"]
    task = TASKS[rng.choice(len(TASKS), p=self.task_probs)]
    if task == "msp":
      out = self.spans.random_map(example, rng)
      enc, enc_segs = out["inputs"], out["input_segment_ids"]
      dec, dec_segs = out["targets"], out["target_segment_ids"]
    elif task == "mip":
      enc, enc_segs, dec, dec_segs = mask_identifiers(
          tokens, segs, example["identifier_id"], top_id=self.top_id,
          max_sentinels=self.max_sentinels, target_len=self.target_len)
    else:
      enc, enc_segs, dec, dec_segs = tokens, segs, tokens[:0], segs[:0]
    tagging = np.float32(task == "it")
    return {
        "inputs": _pad(enc, self.seq_len),
        "input_segment_ids": _pad(enc_segs, self.seq_len),
        "input_positions": _pad(_positions(enc_segs), self.seq_len),
        "targets": _pad(dec, self.target_len),
        "target_segment_ids": _pad(dec_segs, self.target_len),
        "target_positions": _pad(_positions(dec_segs), self.target_len),
        "is_identifier": (example["identifier_id"] > 0).astype(np.float32),
        "tag_weights": (segs > 0).astype(np.float32) * tagging,
    }


def binary_loss(logits, labels, weights):
  """(mean BCE, accuracy) of per-token binary logits over positions with nonzero weight."""
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)
  correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
  return base.weighted_mean(bce, weights), base.weighted_mean(correct, weights)


@base.register("codet5")
class CodeT5(SpanCorruptionLM):
  """Span corruption's settings and checks, plus the identifier tasks."""
  models = ("encoder_decoder_tagger",)

  def validate(self, config):
    super().validate(config)  # noise_density, mean_span_length, extra_ids
    o = config.objective
    probs = tuple(o.task_probs)
    if len(probs) != len(TASKS) or min(probs) < 0 or sum(probs) <= 0:
      raise ValueError(f"objective.task_probs={probs}: need {len(TASKS)} weights >= 0 "
                       f"for {', '.join(TASKS)}, not all 0")
    _, _, _, span_targets = corrupted_lengths(config.data.seq_len, o.noise_density,
                                              o.mean_span_length)
    if o.target_len < span_targets:
      raise ValueError(f"objective.target_len={o.target_len}: must be >= {span_targets}, "
                       f"the span-corruption target length at data.seq_len="
                       f"{config.data.seq_len}")

  def text_examples(self, config):
    return PackedIdentifiers()

  def host_transform(self, config, info):
    o = config.objective
    return IdentifierAwareDenoising(
        seq_len=info.seq_len, noise_density=o.noise_density,
        mean_span_length=o.mean_span_length, vocab_size=info.vocab_size,
        extra_ids=config.model.extra_ids, task_probs=tuple(o.task_probs),
        target_len=o.target_len)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    targets, segs = batch["targets"], batch["target_segment_ids"]
    context = net.encode(batch["inputs"], segment_ids=batch["input_segment_ids"],
                         positions=batch["input_positions"])  # (B, L, D)
    hidden = net.decode(shift_right(targets, segs, 0), context, segment_ids=segs,
                        positions=batch["target_positions"],
                        enc_segment_ids=batch["input_segment_ids"])  # (B, Lt, D)
    seq_loss, accuracy = base.token_loss(net.logits(hidden), targets,
                                         (segs > 0).astype(jnp.float32))
    tag_loss, tag_accuracy = binary_loss(net.tag_logits(context), batch["is_identifier"],
                                          batch["tag_weights"])
    return seq_loss + tag_loss, {"accuracy": accuracy, "seq_loss": seq_loss,
                                 "tag_loss": tag_loss, "tag_accuracy": tag_accuracy}

  def forward_flops_per_example(self, config, info, model_cfg):
    dec_len = config.objective.target_len
    return encoder_decoder_flops(model_cfg, enc_len=info.seq_len, dec_len=dec_len,
                                 enc_attended=info.seq_len, dec_attended=dec_len / 2)


class DocstringPairs:
  """`Objective.text_examples`: one (docstring, code) pair per documented function, each
  side truncated to seq_len tokens and zero-padded."""

  key = {"docstring_pairs": "python-ast-v1"}

  def build(self, docs, tokenizer, data_cfg) -> dict[str, np.ndarray]:
    pairs = [p for doc in docs for p in docstring_pairs(doc)]
    rows = {}
    for i, side in enumerate(("nl", "pl")):
      encoded = tokenizer.encode_batch([p[i] for p in pairs])
      rows[side] = np.reshape([_pad(ids[:data_cfg.seq_len], data_cfg.seq_len)
                               for ids, _ in encoded], (len(pairs), data_cfg.seq_len))
    return rows

  def example(self, info) -> dict[str, np.ndarray]:
    """A synthetic pair of the built rows' shapes (for AOT)."""
    ids = 1 + np.arange(info.seq_len, dtype=np.int32) % (info.vocab_size - 1)
    return {"nl": ids, "pl": ids}


class DualGeneration(grain.transforms.RandomMap):
  """(nl, pl) pair -> NL->PL or PL->NL (equally likely) as encoder inputs / decoder targets
  in span corruption's batch format, so `SpanCorruptionLM.loss_fn` trains on it."""

  def __init__(self, *, seq_len: int, target_len: int):
    self.seq_len, self.target_len = seq_len, target_len

  def random_map(self, example, rng: np.random.Generator):
    source, target = ("nl", "pl") if rng.random() < 0.5 else ("pl", "nl")
    enc, dec = example[source], example[target][:self.target_len]
    enc_segs, dec_segs = (enc > 0).astype(np.int32), (dec > 0).astype(np.int32)
    return {
        "inputs": enc, "input_segment_ids": enc_segs, "input_positions": _positions(enc_segs),
        "targets": dec, "target_segment_ids": dec_segs,
        "target_positions": _positions(dec_segs),
    }


@base.register("codet5_bimodal")
class CodeT5Bimodal(CodeT5):
  """CodeT5's second stage (§3.2): bimodal dual generation, NL->PL and PL->NL, trained with
  span corruption's decoder loss (no tagging); same model, so `init_from` chains stages."""

  loss_fn = SpanCorruptionLM.loss_fn

  def validate(self, config):
    if not 0 < config.objective.target_len <= config.data.seq_len:
      raise ValueError(f"objective.target_len={config.objective.target_len}: must be in "
                       f"[1, data.seq_len={config.data.seq_len}]")

  def text_examples(self, config):
    return DocstringPairs()

  def host_transform(self, config, info):
    return DualGeneration(seq_len=info.seq_len, target_len=config.objective.target_len)
