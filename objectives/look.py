"""LOOK: supervised pre-training with a leave-one-out k-nearest-neighbour loss (Feng et al.
2022, "Rethinking Supervised Pre-training for Better Downstream Transferring").

Cross-entropy on class logits pulls every image of a class towards one point and forgets
how images of a class differ ("overfit of upstream tasks"). LOOK asks less: each image need
only share its label with most of its k nearest neighbours, so a class may spread over
several modes. For an image i with l2-normalised feature f_i and label y_i, over a memory M
of other images' features and labels (never i itself: leave-one-out),
  N_k(i) = the k entries j of M with the largest cosine f_i . f_j,
  p_i = sum_{j in N_k(i), y_j = y_i} exp(f_i . f_j / tau) / sum_{j in N_k(i)} exp(f_i . f_j / tau),
  loss = mean_i -log p_i,
the negative log-likelihood of the right label under a soft kNN vote. Images none of whose
neighbours share their label have p_i = 0: they are left out of the mean (no gradient
could reach them through the vote anyway) and counted in the metric `no_neighbour_agrees`.

Design: the memory is the rest of the batch (gradient flows through both sides) plus a FIFO
queue of the last `queue_size` features and labels of earlier batches, kept without
gradient as this objective's state (`initial_state`, base.NEXT_STATE; see objectives/dino.py),
so the vote sees more neighbours than one batch holds without a second forward pass. Queue
entries are the features as computed when they were enqueued (a memory bank: slightly
stale, like Wu et al. 2018's); slots not yet filled are masked out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.dino import l2_normalize
from objectives import base
from objectives.classify import ImageClassifierObjective

MASKED = -1e9  # similarity of memory entries an image may not vote with


def knn_vote(features: jax.Array, labels: jax.Array, memory: jax.Array,
             memory_labels: jax.Array, allowed: jax.Array, k: int,
             temperature: float) -> tuple[jax.Array, jax.Array]:
  """(-log p_i (B,), whether any of i's k neighbours shares its label (B,) bool).

  features (B, D) and memory (M, D) l2-normalised, labels (B,), memory_labels (M,),
  allowed (B, M): the entries image i may count among its neighbours. Fewer than k allowed
  entries: the missing neighbours get no vote.
  """
  sims = jnp.where(allowed, features.astype(jnp.float32) @ memory.astype(jnp.float32).T,
                   MASKED)
  top, idx = jax.lax.top_k(sims, k)  # (B, k)
  voting = jnp.take_along_axis(allowed, idx, axis=1)
  agrees = voting & (memory_labels[idx] == labels[:, None])
  logits = top / temperature
  log_all = jax.nn.logsumexp(jnp.where(voting, logits, MASKED), axis=-1)
  log_same = jax.nn.logsumexp(jnp.where(agrees, logits, MASKED), axis=-1)
  return log_all - log_same, agrees.any(-1)


@base.register("look")
class Look(ImageClassifierObjective):

  def validate(self, config):
    o = config.objective
    if o.knn_k < 1:
      raise ValueError(f"objective.knn_k={o.knn_k}: must be >= 1")
    if o.knn_temperature <= 0:
      raise ValueError(f"objective.knn_temperature={o.knn_temperature}: must be > 0")
    if o.queue_size < 0:
      raise ValueError(f"objective.queue_size={o.queue_size}: must be >= 0")
    memory = config.train.global_batch - 1 + o.queue_size
    if o.knn_k > memory:
      raise ValueError(f"objective.knn_k={o.knn_k}: more than the {memory} other images in "
                       "the memory (train.global_batch - 1 + objective.queue_size)")
    if config.train.grad_accum != 1:
      raise ValueError(f"train.grad_accum={config.train.grad_accum}: objective 'look' keeps "
                       "a queue of features, which the mean over micro-batches would blur; "
                       "use 1")

  def initial_state(self, config, info, model_cfg):
    size, dim = config.objective.queue_size, model_cfg.feature_dim
    if not size:
      return {}
    return {"features": jnp.zeros((size, dim), jnp.float32),
            "labels": jnp.zeros((size,), jnp.int32),
            "filled": jnp.zeros((size,), jnp.bool_)}

  def loss_fn(self, params, batch, rng, *, model, config, objective_state=None):
    del rng  # The flips are on the host.
    o = config.objective
    features = l2_normalize(model.bind(params).features(batch["image"]).astype(jnp.float32))
    labels = batch["label"].astype(jnp.int32)
    b = features.shape[0]
    memory, memory_labels = features, labels
    allowed = ~jnp.eye(b, dtype=bool)  # leave one out
    if objective_state:
      queue = objective_state
      memory = jnp.concatenate([features, queue["features"]])
      memory_labels = jnp.concatenate([labels, queue["labels"]])
      allowed = jnp.concatenate(
          [allowed, jnp.broadcast_to(queue["filled"], (b, o.queue_size))], axis=1)
    nll, agrees = knn_vote(features, labels, memory, memory_labels, allowed, o.knn_k,
                           o.knn_temperature)
    loss = base.weighted_mean(nll, agrees.astype(jnp.float32))
    metrics = {"no_neighbour_agrees": 1.0 - agrees.mean()}
    if objective_state:  # Newest first; the oldest fall off the end.
      q = o.queue_size
      metrics[base.NEXT_STATE] = {
          "features": jax.lax.stop_gradient(memory[:q]), "labels": memory_labels[:q],
          "filled": jnp.concatenate([jnp.ones((b,), bool), queue["filled"]])[:q]}
    return loss, metrics
