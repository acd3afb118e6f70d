"""TokenUnify (Chen et al. 2024, "TokenUnify: Scalable Autoregressive Visual Pre-training
with Mixture Token Prediction"): one network trained on a mixture of three token tasks
over image token sequences.

- random-token prediction: a random subset of the tokens is replaced by [MASK] and
  predicted from the whole (bidirectional) sequence, as in MLM / MAE;
- next-token prediction: causal attention, position t predicts token t+1;
- next-all token prediction: causal attention, position t predicts every following token.
  Ours (stated, not the paper's code): "every following token" within a window of
  N = `model.num_future` tokens, t+1..t+N, one output head per offset (the `multi_token`
  model, Gloeckle et al. 2024), the head losses averaged with `objective.future_decay`;
  N = L - 1 is literally all following tokens, a smaller window keeps the heads affordable.

Images become tokens on the host: the k-means visual tokenizer
(`pretrain/data/visual_tokens.py`) maps each patch of the image, in raster order, to its
nearest code. Each example gets ONE of the three tasks, drawn on the host from the
example's own rng (seeded by the example index) with probabilities `objective.task_mix`,
and the attention mask kind that goes with it (bidirectional for random-token, causal for
the other two), chosen per example on device from the `task` id. The batch loss is the
mean over examples of each example's mean token loss for its own task.

The model is the `multi_token` trunk + heads (`token_unify` builder: vocabulary = the
codebook plus [MASK]): the trunk's states feed the unembedding directly for random-token
prediction (MLM's `masked_logits`), head 1 serves next-token prediction and heads 1..N
next-all prediction. The paper's backbone is Mamba; ours is this transformer.

Pictures show each held-out image, its tokens drawn as their codes' pixels, the tokens
with a fresh random `mask_rate` hidden, and the model's random-token fill-in. Features
(for probes) tokenize clean images on device with the same codebook and mean-pool the
bidirectional trunk.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, stack_flops_per_token
from models.vit import patchify, unpatchify
from objectives import base
from objectives.mae import random_keep, reconstruction_grid
from objectives.mlm import MlmMasking, num_predictions
from objectives.multi_token import future_token_targets
from pretrain.data import visual_tokens

TASKS = ("random", "next", "next_all")
RANDOM, NEXT, NEXT_ALL = range(len(TASKS))


def mask_id(codebook_size: int) -> int:
  """[MASK] comes right after the codes: the model's vocabulary is codebook_size + 1."""
  return codebook_size


class TokenUnifyTasks(grain.transforms.RandomMap):
  """Clean image -> its code sequence, one task drawn per example, and that task's inputs:
  `tokens` (clean codes), `inputs` (codes with [MASK]s for the random-token task, else the
  clean codes), `task`, and MLM's fixed prediction slots (weight 0 unless random-token)."""

  def __init__(self, *, codebook: np.ndarray, patch: tuple[int, int], task_mix,
               mask_rate: float, seq_len: int):
    self.codebook, self.patch = codebook, tuple(patch)
    self.task_probs = np.asarray(task_mix, np.float64) / np.sum(task_mix)
    self.mask_id = mask_id(len(codebook))
    # Every chosen token becomes [MASK] (no 10% random / 10% kept: the paper masks tokens).
    self.masking = MlmMasking(mask_rate=mask_rate, replace_mask=1.0, replace_random=0.0,
                              mask_id=self.mask_id, vocab_size=self.mask_id + 1,
                              special_ids=(self.mask_id,), seq_len=seq_len)

  def random_map(self, example, rng: np.random.Generator):
    vectors = visual_tokens.patch_vectors(example["image"][None], self.patch)[0]
    tokens = visual_tokens.nearest_code(vectors, self.codebook)  # (L,)
    length = len(tokens)
    task = int(rng.choice(len(TASKS), p=self.task_probs))
    clean = {"tokens": tokens, "segment_ids": np.ones(length, np.int32),
             "positions": np.arange(length, dtype=np.int32),
             "word_start": np.ones(length, bool)}
    out = self.masking.random_map(clean, rng)
    if task != RANDOM:
      out["inputs"] = tokens
      out["masked_weights"] = np.zeros_like(out["masked_weights"])
    return {**out, "image": example["image"], "tokens": tokens, "task": np.int32(task)}


def device_tokens(images, codebook: np.ndarray, patch: tuple[int, int]):
  """`nearest_code` of every patch, on device: images (B, H, W, C) -> (B, L) int32 codes."""
  book = jnp.asarray(codebook, jnp.float32)
  patches = patchify(images.astype(jnp.float32), patch)  # (B, L, P)
  distance = (book ** 2).sum(-1) - 2 * jnp.einsum("blp,kp->blk", patches, book)
  return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def bidirectional_states(net, tokens):
  """The trunk over whole images' token rows (B, L), every token seeing every other."""
  segment_ids = jnp.ones_like(tokens)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return net(tokens, positions=positions,
             mask=attention_mask("bidirectional", segment_ids=segment_ids))


def task_attention_mask(task, segment_ids):
  """(B, 1, L, L): bidirectional for random-token examples, causal for the others."""
  bidirectional = attention_mask("bidirectional", segment_ids=segment_ids)
  causal = attention_mask("causal", segment_ids=segment_ids)
  return jnp.where((task == RANDOM)[:, None, None, None], bidirectional, causal)


def per_example_mean(values, weights):
  """Mean of `values` (B, ...) over each example's weighted entries -> (B,) (0 if none)."""
  axes = tuple(range(1, values.ndim))
  total = weights.sum(axes)
  return (values * weights).sum(axes) / jnp.where(total > 0, total, 1.0)


def task_losses(net, batch, decay: float):
  """(per-example loss (B,) of each example's own task, metrics)."""
  task, segment_ids, positions = batch["task"], batch["segment_ids"], batch["positions"]
  mask = task_attention_mask(task, segment_ids)
  trunk = net(batch["inputs"], positions=positions, mask=mask)  # (B, L, D)
  picked = jnp.take_along_axis(trunk, batch["masked_positions"][..., None], axis=1)
  random_logits = net.logits(picked)  # (B, K, V)
  random_ce = base.cross_entropy(random_logits, batch["masked_ids"])
  random_loss = per_example_mean(random_ce, batch["masked_weights"])  # (B,)

  future_logits = net.logits(net.future_hidden(trunk, mask=mask, positions=positions))
  n = future_logits.shape[0]
  targets, weights = future_token_targets(batch["tokens"], segment_ids, n)  # (N, B, L)
  head_ce = base.cross_entropy(future_logits, targets)  # (N, B, L)
  head_loss = jnp.stack([per_example_mean(head_ce[k], weights[k]) for k in range(n)])
  head_weights = decay ** jnp.arange(n, dtype=jnp.float32)
  next_all_loss = (head_weights[:, None] * head_loss).sum(0) / head_weights.sum()  # (B,)
  per_example = jnp.stack([random_loss, head_loss[0], next_all_loss], -1)  # (B, 3)
  loss = jnp.take_along_axis(per_example, task[:, None], axis=1)[:, 0]

  is_task = [(task == t).astype(jnp.float32) for t in range(len(TASKS))]
  random_correct = (jnp.argmax(random_logits, -1) == batch["masked_ids"]).astype(jnp.float32)
  next_correct = (jnp.argmax(future_logits[0], -1) == targets[0]).astype(jnp.float32)
  causal = (is_task[NEXT] + is_task[NEXT_ALL])[:, None] * weights[0]
  metrics = {f"{name}_loss": base.weighted_mean(per_example[:, t], is_task[t])
             for t, name in enumerate(TASKS)}
  metrics.update(
      random_accuracy=base.weighted_mean(random_correct, batch["masked_weights"]),
      accuracy=base.weighted_mean(next_correct, causal),  # next-token accuracy (head 1)
      **{f"{name}_fraction": is_task[t].mean() for t, name in enumerate(TASKS)})
  return loss, metrics


def validate_mix(config) -> None:
  mix = tuple(config.objective.task_mix)
  if len(mix) != len(TASKS) or min(mix) < 0 or sum(mix) <= 0:
    raise ValueError(f"objective.task_mix={mix}: must be {len(TASKS)} weights >= 0 "
                     f"({', '.join(TASKS)}) with a positive sum")


@base.register("token_unify")
class TokenUnify(base.Objective):
  models = ("token_unify",)
  modality = "image"
  unit = "tokens"

  def validate(self, config):
    validate_mix(config)
    o, m = config.objective, config.model
    if not 0 < o.mask_rate < 1:
      raise ValueError(f"objective.mask_rate={o.mask_rate}: must be in (0, 1)")
    if not 0 < o.future_decay <= 1:
      raise ValueError(f"objective.future_decay={o.future_decay}: must be in (0, 1]")
    if len(o.tokenizer_patch) != 2 or min(o.tokenizer_patch) < 1:
      raise ValueError(f"objective.tokenizer_patch={tuple(o.tokenizer_patch)}: must be "
                       "(ph, pw) with both >= 1")
    if m.codebook_size < 2:
      raise ValueError(f"model.codebook_size={m.codebook_size}: must be >= 2")
    if o.kmeans_iters < 1 or o.kmeans_images < 1:
      raise ValueError(f"objective.kmeans_iters={o.kmeans_iters}, objective.kmeans_images="
                       f"{o.kmeans_images}: must both be >= 1")

  def codebook(self, config) -> np.ndarray:
    """The visual tokenizer's codebook for this config (fitted once, then cached)."""
    o = config.objective
    return visual_tokens.fit_codebook(
        config.data, patch=tuple(o.tokenizer_patch), num_codes=config.model.codebook_size,
        iters=o.kmeans_iters, num_images=o.kmeans_images, seed=config.seed)

  def host_transform(self, config, info):
    o = config.objective
    length = self._seq_len(config, info)
    if length > config.model.max_len:
      raise ValueError(f"objective.tokenizer_patch={tuple(o.tokenizer_patch)} makes {length} "
                       f"tokens of a {info.image_shape[:2]} image: more than model.max_len="
                       f"{config.model.max_len}")
    return TokenUnifyTasks(codebook=self.codebook(config), patch=tuple(o.tokenizer_patch),
                           task_mix=o.task_mix, mask_rate=o.mask_rate, seq_len=length)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # Tasks and masks are drawn on the host.
    loss, metrics = task_losses(model.bind(params), batch, config.objective.future_decay)
    return loss.mean(), metrics

  def reconstructions(self, params, batch, rng, *, model, config):
    """Per row: the image, its tokens drawn as their codes' pixels, those tokens with a
    fresh random `mask_rate` of them hidden (grey), and the hidden ones as the model's
    random-token prediction fills them in. (The codebook, a cached host array, enters
    the traced function as a constant.)"""
    net, book = model.bind(params), self.codebook(config)
    patch, tokens = tuple(config.objective.tokenizer_patch), batch["tokens"]
    _, hidden = random_keep(jax.random.wrap_key_data(rng), *tokens.shape,
                            config.objective.mask_rate)
    inputs = jnp.where(hidden > 0, mask_id(len(book)), tokens)
    guess = jnp.argmax(net.logits(bidirectional_states(net, inputs))[..., :len(book)], -1)
    filled = jnp.where(hidden > 0, guess, tokens)
    pixels = lambda ids: jnp.asarray(book)[ids]  # (B, L) codes -> (B, L, P) patches
    image = batch["image"]
    tokenized = unpatchify(pixels(tokens), patch, image.shape[1:-1], image.shape[-1])
    return {"reconstructions": reconstruction_grid(
        tokenized, pixels(tokens), hidden, pixels(filled), patch, context=(image,))}

  def features(self, params, batch, *, model, config):
    """Clean images tokenized on device, the trunk bidirectional, mean-pooled."""
    net = model.bind(params)
    tokens = device_tokens(batch["image"], self.codebook(config),
                           tuple(config.objective.tokenizer_patch))
    return base.mean_pool(bidirectional_states(net, tokens), jnp.ones(tokens.shape, bool))

  def units_per_example(self, config, info):
    return self._seq_len(config, info)

  def _seq_len(self, config, info) -> int:
    (h, w), (ph, pw) = info.image_shape[:2], config.objective.tokenizer_patch
    return (h // ph) * (w // pw)

  def forward_flops_per_example(self, config, info, model_cfg):
    # Trunk + N head blocks (half the keys on average: most tasks are causal), logits
    # for every head and the random-token slots.
    length = self._seq_len(config, info)
    n = model_cfg.num_future
    blocks = stack_flops_per_token(model_cfg.block, model_cfg.num_layers + n, length / 2)
    slots = num_predictions(length, config.objective.mask_rate)
    return (length * (blocks + n * logits_flops_per_token(model_cfg))
            + slots * logits_flops_per_token(model_cfg))
