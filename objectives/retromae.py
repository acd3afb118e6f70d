"""RetroMAE v2 / DupMAE (Liu & Shao 2022, "RetroMAE v2: Duplex Masked Auto-Encoder For
Pre-Training Retrieval-Oriented Language Models"): pretraining for dense retrieval, so that
both the [CLS] embedding and the ordinary tokens' embeddings summarise the input.

  loss = encoder MLM + decoder_weight * [CLS] decoding + bow_weight * bag-of-words

Encoder MLM: BERT masking (`MlmMasking`) at a moderate `mask_rate` (RetroMAE: 30%).
[CLS] decoding: a one-layer decoder (the `multi_token` model's single head block) rebuilds
an aggressively masked copy of the input (`decoder_mask_rate`, RetroMAE: 50-70%) whose
first position is replaced by the encoder's [CLS] state: the copy has too little left to be
rebuilt alone, so the [CLS] state must carry the text's meaning.
Bag of words: the encoder's ordinary-token states go through the MLM head to vocabulary
scores, max-pooled over the tokens (DupMAE eq. 4); softmax over the vocabulary must put its
mass on the set of distinct input tokens (mean -log p over that set). This makes the
ordinary tokens, not only [CLS], carry the whole input.

The unified embedding (`features`, what the probes and kNN read) is the L2-normalised [CLS]
state concatenated with the L2-normalised ReLU of the max-pooled vocabulary scores.

Design. Packed rows hold several documents; each segment gets its own [CLS] at its start
(`insert_mode_token`, as UniXcoder's mode tokens) and the encoder, decoder and masking
respect segments, but the bag of words is over a row (a packed row is one example, as in
E2S2's contrastive loss: a per-segment max-pool would cost segments x L x V). The [CLS] id
is the last row of the padded vocabulary table, which the tokenizer never emits (the
vocabulary must not be an exact multiple of 128, checked up front), so `features` knows it
from the model alone. Left out (configs/retromae.py NOT_IMPLEMENTED): RetroMAE's enhanced
decoding (a two-stream decoder whose queries are [CLS] + position and whose keys see a
random subset of positions) - here the decoder is a plain bidirectional block over
[CLS state; masked copy]; and DupMAE's dimension reduction of the two embeddings.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import (logits_flops_per_token, stack_flops_per_token,
                                transformer_flops_per_token)
from objectives import base
from objectives.contrastive import l2_normalize
from objectives.mlm import MaskedLM, MlmMasking, num_predictions
from objectives.unixcoder import insert_mode_token
from pretrain.model_builders import VOCAB_MULTIPLE, padded_vocab


def cls_id_for(vocab_size: int) -> int:
  """The [CLS] id: the last row of the padded table of a `vocab_size` tokenizer."""
  return padded_vocab(vocab_size) - 1


class DuplexMasking(grain.transforms.RandomMap):
  """Clean packed row -> [CLS] per segment; encoder MLM inputs and slots (`MlmMasking`);
  the decoder's copy (`decoder_inputs`, [MASK] at `decoder_weights` = 1 positions, never
  at [CLS]); `tokens` (the row with [CLS]) and `is_cls`."""

  def __init__(self, *, masking: MlmMasking, decoder_mask_rate: float, cls_id: int):
    self.masking = masking
    self.decoder_mask_rate = decoder_mask_rate
    self.cls_id = cls_id

  def random_map(self, example, rng: np.random.Generator):
    row = insert_mode_token(example, self.cls_id)
    out = self.masking.random_map(row, rng)
    ordinary = np.flatnonzero((row["segment_ids"] > 0)
                              & ~np.isin(row["tokens"], self.masking.special_ids))
    count = round(len(ordinary) * self.decoder_mask_rate)
    masked = rng.choice(ordinary, count, replace=False)
    decoder_inputs = row["tokens"].copy()
    decoder_inputs[masked] = self.masking.mask_id
    weights = np.zeros(len(decoder_inputs), np.float32)
    weights[masked] = 1.0
    return {**out, "tokens": row["tokens"].astype(np.int32),
            "is_cls": row["is_mode"], "decoder_inputs": decoder_inputs.astype(np.int32),
            "decoder_weights": weights}


def bag_of_words_loss(scores: jax.Array, tokens: jax.Array, ordinary: jax.Array):
  """scores (B, L, V) per-token vocabulary scores, tokens (B, L), ordinary (B, L) bool ->
  (mean over rows of the mean -log softmax(max-pooled scores)[t] over the distinct ordinary
  tokens t of the row, pooled (B, V))."""
  pooled = jnp.where(ordinary[..., None], scores, -1e9).max(1)  # (B, V)
  present = (jax.nn.one_hot(tokens, scores.shape[-1], dtype=jnp.float32)
             * ordinary[..., None]).max(1)  # (B, V) multi-hot of the row's tokens
  nll = -(jax.nn.log_softmax(pooled, -1) * present).sum(-1)
  return base.weighted_mean(nll / jnp.maximum(present.sum(-1), 1.0),
                            present.sum(-1) > 0), pooled


def duplex_states(net, batch) -> tuple[jax.Array, jax.Array]:
  """(encoder states of the MLM input, decoder states of the masked copy whose [CLS]
  positions hold the encoder's [CLS] states), both (B, L, D), segments kept apart."""
  positions = batch["positions"]
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  hidden = net(batch["inputs"], positions=positions, mask=mask)
  copy = jnp.where(batch["is_cls"][..., None], hidden,
                   net.embed_tokens(batch["decoder_inputs"], positions))
  return hidden, net.future_hidden(copy, mask=mask, positions=positions)[0]


def unified_embedding(cls_state: jax.Array, pooled: jax.Array) -> jax.Array:
  """DupMAE's representation: [CLS] state and ReLU'd bag-of-words scores, each unit norm."""
  return jnp.concatenate([l2_normalize(cls_state), l2_normalize(jax.nn.relu(pooled))], -1)


@base.register("retromae")
class RetroMAE(MaskedLM):
  """The `mlm` keys configure the encoder's masking; `objective.decoder_*` and `bow_weight`
  the two decoding tasks."""
  models = ("multi_token",)  # trunk = encoder, its single one-block head = decoder

  def validate(self, config):
    super().validate(config)
    o = config.objective
    if not 0 < o.decoder_mask_rate < 1:
      raise ValueError(f"objective.decoder_mask_rate={o.decoder_mask_rate}: must be in (0, 1)")
    if o.get("curriculum"):
      raise ValueError("retromae does not take objective.curriculum")
    for key in ("decoder_weight", "bow_weight"):
      if o[key] < 0:
        raise ValueError(f"objective.{key}={o[key]}: must be >= 0")
    if config.model.get("num_future", 1) != 1:
      raise ValueError(f"retromae decodes with one head block: model.num_future must be 1, "
                       f"got {config.model.num_future}")
    if config.data.vocab_size % VOCAB_MULTIPLE == 0:
      raise ValueError(f"data.vocab_size={config.data.vocab_size}: retromae keeps [CLS] in the "
                       f"vocabulary's padding, so it must not be a multiple of {VOCAB_MULTIPLE}")

  def host_transform(self, config, info):
    o = config.objective
    cls_id = cls_id_for(info.vocab_size)
    if cls_id < info.vocab_size:
      raise ValueError(f"tokenizer vocabulary {info.vocab_size} fills its padded table: no "
                       "free id for retromae's [CLS]")
    masking = MlmMasking(mask_rate=o.mask_rate, replace_mask=o.replace_mask,
                         replace_random=o.replace_random, mask_id=info.mask_id,
                         vocab_size=info.vocab_size, special_ids=(*info.special_ids, cls_id),
                         seq_len=info.seq_len)
    return DuplexMasking(masking=masking, decoder_mask_rate=o.decoder_mask_rate,
                         cls_id=cls_id)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    o = config.objective
    net = model.bind(params)
    hidden, decoded = duplex_states(net, batch)
    picked = jnp.take_along_axis(hidden, batch["masked_positions"][..., None], axis=1)
    mlm, mlm_accuracy = base.token_loss(net.logits(picked), batch["masked_ids"],
                                        batch["masked_weights"])
    dec, dec_accuracy = base.token_loss(net.logits(decoded), batch["tokens"],
                                        batch["decoder_weights"])
    ordinary = (batch["segment_ids"] > 0) & ~batch["is_cls"]
    bow, _ = bag_of_words_loss(net.logits(hidden), batch["tokens"], ordinary)
    loss = mlm + o.decoder_weight * dec + o.bow_weight * bow
    return loss, {"accuracy": mlm_accuracy, "mlm_loss": mlm, "decoder_loss": dec,
                  "decoder_accuracy": dec_accuracy, "bow_loss": bow}

  def features(self, params, batch, *, model, config):
    """The unified embedding of each row, read as trained: [CLS] put in front of the row
    (its last token dropped), one encoder pass, no masking."""
    net = model.bind(params)
    tokens, segs, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    cls = jnp.full_like(tokens[:, :1], net.cfg.vocab_size - 1)
    tokens = jnp.concatenate([cls, tokens[:, :-1]], 1)
    segs = jnp.concatenate([segs[:, :1], segs[:, :-1]], 1)
    positions = jnp.concatenate([jnp.zeros_like(positions[:, :1]), positions[:, :-1] + 1], 1)
    hidden = net(tokens, positions=positions,
                 mask=attention_mask("bidirectional", segment_ids=segs))
    ordinary = segs[:, 1:] > 0
    _, pooled = bag_of_words_loss(net.logits(hidden[:, 1:]), tokens[:, 1:], ordinary)
    return unified_embedding(hidden[:, 0], pooled)

  def forward_flops_per_example(self, config, info, model_cfg):
    """Encoder + MLM slots, the one-block decoder, and logits at every position twice
    (decoder targets and the bag of words)."""
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    encoder = info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len,
                                                         with_logits=False)
    decoder = info.seq_len * stack_flops_per_token(model_cfg.block, 1, info.seq_len)
    return (encoder + decoder
            + (slots + 2 * info.seq_len) * logits_flops_per_token(model_cfg))
