"""E2S2 (Zhong et al. 2022, "E2S2: Encoding-Enhanced Sequence-to-Sequence Pretraining for
Language Understanding and Generation"): BART denoising plus two losses on the encoder.

  loss = decoder reconstruction (BART, `objectives/bart.py`)
         + denoise_weight * encoder denoising
         + contrastive_weight * encoder contrastive

Encoder denoising (local). On top of the BART noise the encoder input gets a second,
length-preserving noise: adjacent token pairs are swapped (`shuffle_rate` of seq_len tokens)
and tokens are replaced by a random other token (`random_rate`). Only ordinary tokens are
touched, never [MASK], special ids or a pair across a document. The encoder must restore
the token that stood at each changed position, through the model's tied output embedding
(an MLM head on the encoder); as in MLM the changed positions are listed in a fixed number
of slots, so vocabulary logits are computed there only.

Encoder contrastive (global). InfoNCE (objectives/contrastive.py) between the mean-pooled
encoder states of each noised row and of its clean row (L2-normalised, temperature
`contrastive_temperature`), the other rows of the batch as negatives, averaged over both
directions. Pooling is over a row's non-padding positions: a packed row is one example, as
a fairseq sample is.

Differences from the released code (github.com/WHU-ZQH/E2S2, criterions/cross_entropy.py,
data/denoising_dataset.py), listed in configs/e2s2.py's NOT_IMPLEMENTED: there the encoder
head classifies each token as original / shuffled / replaced instead of restoring it, a
shuffle permutes a 3-token window instead of swapping a pair, the contrastive pair is the
noised input and the BART-only-noised input (whose decoder loss is added too, the paper's
L*_nll) rather than the clean row, and SimCLR's within-view negatives are also used.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.transformer import logits_flops_per_token, stack_flops_per_token
from objectives import base
from objectives.bart import (bart_flops, bart_noising, encode_inputs, reconstruction_loss,
                             validate_noise)
from objectives.contrastive import info_nce, validate_temperature

ENCODER_RATES = ("shuffle_rate", "random_rate")


def encoder_slots(seq_len: int, shuffle_rate: float, random_rate: float) -> tuple[int, int]:
  """(adjacent pairs swapped, tokens replaced) per row; 2 * pairs + replaced slots."""
  return round(seq_len * shuffle_rate / 2), round(seq_len * random_rate)


def swap_pairs(tokens: np.ndarray, segment_ids: np.ndarray, eligible: np.ndarray,
               num_pairs: int, rng: np.random.Generator) -> np.ndarray:
  """Left indices of up to `num_pairs` disjoint pairs (i, i+1), both eligible and in one
  segment, uniformly ordered then taken greedily."""
  ok = eligible[:-1] & eligible[1:] & (segment_ids[:-1] == segment_ids[1:])
  taken = np.zeros(len(tokens) + 1, bool)
  chosen = []
  for i in rng.permutation(np.flatnonzero(ok)):
    if len(chosen) == num_pairs:
      break
    if not (taken[i] or taken[i + 1]):
      taken[i:i + 2] = True
      chosen.append(i)
  return np.sort(np.asarray(chosen, np.int64))


class E2S2Noising(grain.transforms.RandomMap):
  """BART's outputs with the inputs noised further, plus the encoder-denoising slots:
  `denoise_positions` (encoder positions), `denoise_ids` (the token the BART noise left
  there) and `denoise_weights` (1 where the token changed, 0 on unused slots)."""

  def __init__(self, bart: grain.transforms.RandomMap, *, seq_len: int, shuffle_rate: float,
               random_rate: float, vocab_size: int):
    self.bart = bart
    self.pairs, self.replaced = encoder_slots(seq_len, shuffle_rate, random_rate)
    self.slots = 2 * self.pairs + self.replaced
    fixed = np.append(bart.special_ids, bart.mask_id)
    self.random_ids = np.setdiff1d(np.arange(vocab_size), fixed).astype(np.int32)

  def random_map(self, example, rng: np.random.Generator):
    out = self.bart.random_map(example, rng)
    before, segs = out["inputs"], out["input_segment_ids"]
    eligible = (segs > 0) & np.isin(before, self.random_ids)
    left = swap_pairs(before, segs, eligible, self.pairs, rng)
    swapped = np.concatenate([left, left + 1])
    inputs = before.copy()
    inputs[swapped] = before[np.concatenate([left + 1, left])]
    eligible[swapped] = False
    replaced = rng.permutation(np.flatnonzero(eligible))[:self.replaced]
    # A different ordinary token: draw among the others and skip over the old one's index.
    draw = rng.integers(0, len(self.random_ids) - 1, len(replaced))
    draw += draw >= np.searchsorted(self.random_ids, before[replaced])
    inputs[replaced] = self.random_ids[draw]
    positions = np.sort(np.concatenate([swapped, replaced]))
    pad = self.slots - len(positions)
    out["inputs"] = inputs
    out["denoise_positions"] = np.pad(positions, (0, pad)).astype(np.int32)
    out["denoise_ids"] = np.pad(before[positions], (0, pad)).astype(np.int32)
    out["denoise_weights"] = np.pad(inputs[positions] != before[positions],
                                    (0, pad)).astype(np.float32)
    return out


def mean_pool(hidden: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """(B, L, D) -> (B, D) float32 mean over the non-padding positions."""
  weights = (segment_ids > 0).astype(jnp.float32)[..., None]
  total = (hidden.astype(jnp.float32) * weights).sum(1)
  return total / jnp.maximum(weights.sum(1), 1.0)


@base.register("e2s2")
class E2S2(base.Objective):
  models = ("encoder_decoder",)
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"

  def validate(self, config):
    o = config.objective
    validate_noise(o)
    for key in ENCODER_RATES:
      if not 0 <= o[key] < 1:
        raise ValueError(f"objective.{key}={o[key]}: must be in [0, 1)")
    if o.shuffle_rate + o.random_rate >= 1:
      raise ValueError(f"objective.shuffle_rate + random_rate = "
                       f"{o.shuffle_rate + o.random_rate}: must be < 1")
    if sum(encoder_slots(config.data.seq_len, o.shuffle_rate, o.random_rate)) < 1:
      raise ValueError(f"data.seq_len={config.data.seq_len} x objective.shuffle_rate/"
                       "random_rate rounds to no encoder noise")
    validate_temperature(o)
    for key in ("denoise_weight", "contrastive_weight"):
      if o[key] < 0:
        raise ValueError(f"objective.{key}={o[key]}: must be >= 0")

  def host_transform(self, config, info):
    o = config.objective
    return E2S2Noising(bart_noising(config, info), seq_len=info.seq_len,
                       shuffle_rate=o.shuffle_rate, random_rate=o.random_rate,
                       vocab_size=info.vocab_size)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    o = config.objective
    net = model.bind(params)
    context = encode_inputs(net, batch)  # (B, L, D)
    dec_loss, accuracy = reconstruction_loss(net, batch, context)
    picked = jnp.take_along_axis(context, batch["denoise_positions"][..., None], axis=1)
    de_loss, de_accuracy = base.token_loss(net.logits(picked), batch["denoise_ids"],
                                           batch["denoise_weights"])
    clean = net.encode(batch["targets"], segment_ids=batch["target_segment_ids"],
                       positions=batch["target_positions"])
    cl_loss, cl_accuracy = info_nce(mean_pool(context, batch["input_segment_ids"]),
                                    mean_pool(clean, batch["target_segment_ids"]),
                                    o.contrastive_temperature)
    loss = dec_loss + o.denoise_weight * de_loss + o.contrastive_weight * cl_loss
    return loss, {"accuracy": accuracy, "decoder_loss": dec_loss, "denoise_loss": de_loss,
                  "denoise_accuracy": de_accuracy, "contrastive_loss": cl_loss,
                  "contrastive_accuracy": cl_accuracy}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    """BART's, plus the clean row's encoder pass and the denoising slots' logits."""
    o = config.objective
    pairs, replaced = encoder_slots(info.seq_len, o.shuffle_rate, o.random_rate)
    clean = info.seq_len * stack_flops_per_token(model_cfg.block, model_cfg.num_layers,
                                                 info.seq_len)
    return (bart_flops(model_cfg, info.seq_len) + clean
            + (2 * pairs + replaced) * logits_flops_per_token(model_cfg))
