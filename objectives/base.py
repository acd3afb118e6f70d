"""The contract between an objective and the trainer.

An objective is (a) an optional host-side grain `RandomMap` that corrupts or views a
clean example, deterministic from (seed, example index), and (b) a pure
`loss_fn(params, batch, rng, *, model, config) -> (loss, metrics)`. It also states what
data it eats (`modality`), what throughput is counted in (`unit`) and the forward FLOPs
of one example, so MFU knows that e.g. an MAE encoder sees only the visible patches.
The trainer only ever calls these methods: it never branches on an objective's name.

Distillation objectives set `uses_teacher`; the trainer then passes `teacher=` (a
`Teacher`: the frozen or EMA teacher's structure and params, see pretrain/teacher.py) to
`loss_fn`. Objectives without a teacher keep the original signature.

Objectives that carry arrays from step to step (DINO's center of the teacher's outputs)
return them from `initial_state`; the trainer keeps them in the train state, passes
`objective_state=` to `loss_fn` and takes the next state from its metrics under
`NEXT_STATE` (a value computed without gradient; with gradient accumulation, the mean over
micro-batches).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from models.attention import attention_mask
from pretrain.data.info import DataInfo


NEXT_STATE = "next_objective_state"  # metrics key of a stateful objective's next state


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """A model's structure without its params: `bind(params)` gives a callable module.

  Wraps `nnx.merge` so losses are pure functions of the params pytree (a nested dict).
  """

  graphdef: Any

  def bind(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The teacher a distillation objective learns from: its structure and its params (no
  gradient reaches them: the trainer stops it and the optimizer never sees them)."""

  model: ModelDef
  params: Any

  def bind(self) -> nnx.Module:
    return self.model.bind(self.params)


class Objective:
  """Base class; subclasses register an instance with `@register("name")`."""

  name: str = ""
  modality: str = ""  # a MODALITIES name (pretrain/data/modalities.py): which data feeds it
  unit: str = ""      # "tokens", "images" or "windows": what throughput counts
  tokenizer: str = ""  # default tokenizer kind for text objectives
  models: tuple[str, ...] = ()  # model builders (model.name) loss_fn can drive; () = any
  uses_teacher: bool = False  # loss_fn takes `teacher=` and needs teacher.kind != none

  def host_transform(self, config: ml_collections.ConfigDict, info: DataInfo):
    """A grain RandomMap (or None) applied to each clean example on the host."""
    return None

  def text_examples(self, config: ml_collections.ConfigDict):
    """None (plain packed rows), or how to build this objective's text examples instead:
    an object with `key` (JSON-able; joins the data cache key) and `build(documents,
    tokenizer, data_cfg) -> dict of (N, ...) arrays` (e.g. packed rows with extra per-token
    labels, or one example per function) and `example(info)`, one synthetic row of the same
    keys and shapes (what `pretrain.aot` compiles for without reading a corpus)."""
    return None

  def loss_fn(self, params, batch: dict[str, jax.Array], rng: jax.Array, *,
              model: ModelDef, config: ml_collections.ConfigDict):
    """(scalar loss, metrics); objectives with `uses_teacher` also take `teacher: Teacher`."""
    raise NotImplementedError

  def initial_state(self, config: ml_collections.ConfigDict, info: DataInfo,
                    model_cfg: Any) -> dict:
    """Arrays the loss carries across steps (a dict of jax arrays); {} = stateless."""
    return {}

  def units_per_example(self, config: ml_collections.ConfigDict, info: DataInfo) -> int:
    raise NotImplementedError

  def forward_flops_per_example(self, config: ml_collections.ConfigDict, info: DataInfo,
                                model_cfg: Any) -> float:
    raise NotImplementedError

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming a bad objective.* value; called before any compile."""

  def has_reconstructions(self) -> bool:
    return type(self).reconstructions is not Objective.reconstructions

  def reconstructions(self, params, batch: dict[str, jax.Array], rng: jax.Array, *,
                      model: ModelDef, config: ml_collections.ConfigDict
                      ) -> dict[str, jax.Array]:
    """Optional pictures of what the model reconstructs from a few fixed held-out examples
    (`batch`, host-transformed): name -> uint8 (H, W, C) image. Pure and jittable; the
    trainer writes them (TensorBoard, <workdir>/<name>/step_<N>.png) at every evaluation."""
    raise NotImplementedError(f"objective {self.name!r} draws no reconstructions")

  # How the trained model reads clean text for `features`: "bidirectional" for an encoder,
  # "causal" for a decoder; "" = no text features (image objectives override `features`).
  feature_mask: str = ""

  def has_features(self) -> bool:
    return bool(self.feature_mask) or type(self).features is not Objective.features

  def features(self, params, batch: dict[str, jax.Array], *, model: ModelDef,
               config: ml_collections.ConfigDict) -> jax.Array:
    """(B, D) float32 representations of clean examples, for probes and kNN.

    Text rows (tokens, segment_ids, positions) go through the embedding and the (encoder)
    stack with `feature_mask`, mean-pooled over non-padding tokens. Image objectives
    override this for `batch["image"]`.
    """
    if not self.feature_mask:
      raise NotImplementedError(f"objective {self.name!r} defines no features")
    net = model.bind(params)
    segment_ids, positions = batch["segment_ids"], batch["positions"]
    hidden = net.stack(net.embed_tokens(batch["tokens"], positions), positions=positions,
                       mask=attention_mask(self.feature_mask, segment_ids=segment_ids))
    return mean_pool(hidden, segment_ids > 0)


def mean_pool(hidden: jax.Array, valid: jax.Array) -> jax.Array:
  """hidden (B, L, D), valid (B, L) bool -> mean over the valid positions (B, D) float32."""
  weights = valid.astype(np.float32)[..., None]
  total = (hidden.astype(np.float32) * weights).sum(1)
  return total / jax.numpy.maximum(weights.sum(1), 1.0)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean of `values` over entries with nonzero weight (0 if there are none)."""
  total = weights.sum()
  return (values * weights).sum() / jax.numpy.where(total > 0, total, 1.0)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-position softmax cross-entropy in float32; logits (..., V), targets (...)."""
  logits = logits.astype(np.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  # A one-hot contraction rather than a gather: its gradient is elementwise, where a
  # gather's is a scatter-add (slow on CPU/GPU, and it does not shard over vocab).
  picked = jax.numpy.einsum("...v,...v->...", logits,
                            jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  return logz - picked


def soft_cross_entropy(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
  """Per-position -sum_v softmax(target) * log softmax(logits) in float32, over the last
  axis: cross-entropy against a teacher's soft labels (Hinton et al. 2015)."""
  target = jax.nn.softmax(target_logits.astype(np.float32), axis=-1)
  return -(target * jax.nn.log_softmax(logits.astype(np.float32), axis=-1)).sum(-1)


def kl_divergence(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """Per-position KL(softmax(target) || softmax(logits)) in float32, over the last axis.
  Entries masked with a large finite negative get probability 0 and add exactly 0."""
  target_logp = jax.nn.log_softmax(target_logits.astype(np.float32), axis=-1)
  logp = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
  return (jax.numpy.exp(target_logp) * (target_logp - logp)).sum(-1)


def token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array):
  """(mean cross-entropy, accuracy) over the positions with nonzero weight."""
  correct = (jax.numpy.argmax(logits, -1) == targets).astype(np.float32)
  return (weighted_mean(cross_entropy(logits, targets), weights),
          weighted_mean(correct, weights))


def register(name: str) -> Callable[[type], type]:
  """Class decorator: registers an instance of the objective under `name`."""
  from pretrain.registry import OBJECTIVES

  def add(cls: type) -> type:
    cls.name = name
    OBJECTIVES.register(name)(cls())
    return cls

  return add
