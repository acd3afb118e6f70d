"""UniXcoder's three modes of one transformer (Guo et al. 2022, "UniXcoder: Unified
Cross-Modal Pre-training for Code Representation").

Each packed row draws a mode with `objective.mode_probs`; the mode picks the attention mask,
the loss and a mode token put at the start of every packed segment:
  [ENC] encoder-only: bidirectional, BERT masked LM (the `mlm` masking and keys);
  [DEC] decoder-only: causal, next-token prediction;
  [E2D] encoder-decoder: a random leading part of each segment is seen bidirectionally
        (the prefix, with the mode token), the rest causally, and only the rest predicted.
All three are one "segment_prefix" mask: is_prefix is every real token for [ENC], none for
[DEC] and the drawn prefix for [E2D]. One forward per row serves whichever loss its mode has.

Mode tokens. The tokenizers have no such tokens, so, as T5's sentinels do, they are ids
reserved above the tokenizer's vocabulary (`model.extra_ids` >= 3, model builder
`transformer_extra_ids`): [ENC], [DEC], [E2D] = vocab_size, vocab_size + 1, vocab_size + 2.
They are real embedding rows that the model learns, never chosen for masking nor drawn as
random replacements. Inserting them shifts each segment right by one; the row keeps its
length by dropping its last tokens (one per segment).

The loss is the sum of the three modes' mean token losses (a mode absent from a batch adds
0), as UniXcoder sums its objectives.

Contrastive code representation (§3.3; `contrastive_weight` > 0): every row also comes as
two [ENC] views, the row with the [ENC] token and two independent BERT maskings; their
mean-pooled bidirectional encodings are a positive pair and the other rows of the global
batch negatives, with symmetric InfoNCE (objectives/contrastive.py) at
`contrastive_temperature`. UniXcoder makes its two views with dropout, SimCSE-style; our
models have no dropout, so masking is the noise. Its code-comment pairs, cross-modal
generation and AST inputs are not here (see configs/unixcoder.py).
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base
from objectives.contrastive import info_nce, validate_temperature
from objectives.mlm import MaskedLM, MlmMasking, num_predictions
from objectives.prefix_lm import prefix_lm_targets, segment_prefix

MODES = ("enc", "dec", "e2d")
ENC, DEC, E2D = range(3)


def segment_starts(segment_ids: np.ndarray) -> np.ndarray:
  """Index of the first token of each nonzero segment run."""
  first = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  return np.flatnonzero(first & (segment_ids > 0))


def insert_mode_token(example: dict, mode_id: int) -> dict:
  """tokens, segment_ids, positions, word_start (L,) with `mode_id` before each segment
  (position 0, the segment's own id, a word start of its own), cut back to L."""
  segs = example["segment_ids"]
  length, starts = len(segs), segment_starts(segs)

  def insert(values, value):
    return np.insert(values, starts, value)[:length]

  return {"tokens": insert(example["tokens"], mode_id),
          "segment_ids": insert(segs, segs[starts]),
          "positions": insert(np.where(segs > 0, example["positions"] + 1, 0), 0),
          "word_start": insert(example["word_start"], True),
          "is_mode": insert(np.zeros(length, bool), True)}


class UnifiedModes(grain.transforms.RandomMap):
  """Clean packed row -> one mode's inputs: the row with mode tokens (`tokens`), the model
  input (`inputs`: [MASK]ed for [ENC]), `is_prefix`, `mode` and the MLM slots (weight 0
  unless [ENC]); with `views`, also two independently masked [ENC] copies of the row
  (`views` (2, L), `view_segment_ids`, `view_positions`) for the contrastive term."""

  def __init__(self, *, probs, vocab_size: int, masking: MlmMasking, views: bool = False):
    self.probs = np.asarray(probs, np.float64)
    self.mode_ids = vocab_size + np.arange(len(MODES))
    self.masking = masking
    self.views = views

  def enc_views(self, example, rng: np.random.Generator) -> dict:
    row = insert_mode_token(example, self.mode_ids[ENC])
    views = [self.masking.random_map(row, rng)["inputs"] for _ in range(2)]
    return {"views": np.stack(views).astype(np.int32), "view_segment_ids": row["segment_ids"],
            "view_positions": row["positions"]}

  def random_map(self, example, rng: np.random.Generator):
    mode = int(rng.choice(len(MODES), p=self.probs))
    row = insert_mode_token(example, self.mode_ids[mode])
    real = row["segment_ids"] > 0
    slots = self.masking.slots
    if mode == ENC:
      out = self.masking.random_map(row, rng)
      is_prefix = real
    else:
      out = {"inputs": row["tokens"], "segment_ids": row["segment_ids"],
             "positions": row["positions"],
             "masked_positions": np.zeros(slots, np.int32),
             "masked_ids": np.zeros(slots, np.int32),
             "masked_weights": np.zeros(slots, np.float32)}
      is_prefix = np.zeros_like(real)
      if mode == E2D:  # mode token + 1..n-1 of the segment's own tokens
        drawn = segment_prefix(example["segment_ids"], rng)
        is_prefix = np.insert(drawn, segment_starts(example["segment_ids"]), True)[:len(real)]
    out = {**out, "tokens": row["tokens"].astype(np.int32), "is_prefix": is_prefix & real,
           "mode": np.int32(mode)}
    return {**out, **self.enc_views(example, rng)} if self.views else out


@base.register("unixcoder")
class UniXcoder(MaskedLM):
  """The `mlm` keys configure [ENC]'s masking; `objective.mode_probs` the mode mix."""
  models = ("transformer_extra_ids",)
  tokenizer = "bpe"

  def validate(self, config):
    super().validate(config)
    probs = tuple(config.objective.mode_probs)
    if len(probs) != len(MODES) or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
      raise ValueError(f"objective.mode_probs={probs}: expected {len(MODES)} probabilities "
                       f"({', '.join(MODES)}) >= 0 summing to 1")
    if config.model.get("extra_ids", 0) < len(MODES):
      raise ValueError(f"unixcoder needs model.extra_ids >= {len(MODES)} for its mode tokens "
                       f"(model.name='transformer_extra_ids'), got "
                       f"{config.model.get('extra_ids', 0)}")
    if config.objective.contrastive_weight < 0:
      raise ValueError(f"objective.contrastive_weight={config.objective.contrastive_weight}: "
                       "must be >= 0")
    validate_temperature(config.objective)

  def host_transform(self, config, info):
    o = config.objective
    mode_ids = tuple(range(info.vocab_size, info.vocab_size + len(MODES)))
    masking = MlmMasking(mask_rate=o.mask_rate, replace_mask=o.replace_mask,
                         replace_random=o.replace_random, whole_word=o.whole_word,
                         mask_id=info.mask_id, vocab_size=info.vocab_size,
                         special_ids=(*info.special_ids, *mode_ids), seq_len=info.seq_len)
    return UnifiedModes(probs=o.mode_probs, vocab_size=info.vocab_size, masking=masking,
                        views=o.contrastive_weight > 0)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    segs = batch["segment_ids"]
    mask = attention_mask("segment_prefix", segment_ids=segs, is_prefix=batch["is_prefix"])
    hidden = net(batch["inputs"], positions=batch["positions"], mask=mask)  # (B, L, D)
    picked = jnp.take_along_axis(hidden, batch["masked_positions"][..., None], axis=1)
    losses, metrics = {}, {}
    losses["enc"], metrics["enc_accuracy"] = base.token_loss(
        net.logits(picked), batch["masked_ids"], batch["masked_weights"])
    targets, weights = prefix_lm_targets(batch["tokens"], segs, batch["is_prefix"])
    logits = net.logits(hidden)  # (B, L, V)
    for name, mode in (("dec", DEC), ("e2d", E2D)):
      row_weights = weights * (batch["mode"] == mode)[:, None]
      losses[name], metrics[f"{name}_accuracy"] = base.token_loss(logits, targets, row_weights)
    metrics.update({f"{name}_loss": value for name, value in losses.items()})
    loss = sum(losses.values())
    if config.objective.contrastive_weight:
      contrastive, metrics["contrastive_accuracy"] = self.contrastive(net, batch, config)
      metrics["contrastive_loss"] = contrastive
      loss = loss + config.objective.contrastive_weight * contrastive
    return loss, metrics

  def contrastive(self, net, batch, config):
    """(InfoNCE between the two [ENC] views' mean-pooled encodings, its accuracy)."""
    segs = batch["view_segment_ids"]
    mask = attention_mask("bidirectional", segment_ids=segs)
    pooled = [base.mean_pool(net(batch["views"][:, v], positions=batch["view_positions"],
                                 mask=mask), segs > 0) for v in range(2)]
    return info_nce(*pooled, config.objective.contrastive_temperature)

  def forward_flops_per_example(self, config, info, model_cfg):
    # Keys seen per query: L ([ENC]), L/2 ([DEC]), 2L/3 ([E2D], see prefix_lm), mixed by
    # mode_probs; logits at every position plus the MLM slots.
    enc, dec, e2d = config.objective.mode_probs
    attended = info.seq_len * (enc + dec / 2 + 2 * e2d / 3)
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    # The contrastive term: two more bidirectional passes without logits.
    views = 2 if config.objective.contrastive_weight else 0
    return (info.seq_len * transformer_flops_per_token(model_cfg, attended, with_logits=True)
            + slots * logits_flops_per_token(model_cfg)
            + views * info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len,
                                                                 with_logits=False))
