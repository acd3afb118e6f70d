"""Evaluators: what a pretraining run transfers, measured in the loop and on demand.

`EVALUATORS.get(name)(run)` builds one for a `pretrain.train.Run`; `.run(state)` returns
flat metrics. The config's `evaluate.evaluators` selects them; the trainer runs them every
`evaluate.every` steps and `python -m pretrain.evaluate --workdir=...` runs them on a saved
checkpoint. Feature evaluators read the model through `Objective.features`, so they work
for every objective that defines how its model is read (and say so when one does not).
"""
from __future__ import annotations

import jax
import numpy as np

from pretrain import sharding, steps
from pretrain.data import audio, pipeline
from pretrain.data.sources import image_example
from pretrain.evaluation import probes, tasks
from pretrain.registry import Registry

EVALUATORS: Registry = Registry("evaluator")


def selected(config) -> list[str]:
  """The evaluator names of `evaluate.evaluators` (comma-separated)."""
  return [n.strip() for n in config.evaluate.evaluators.split(",") if n.strip()]


def task_name(config, modality: str) -> str:
  return config.evaluate.task or tasks.DEFAULT_TASK.get(modality, "")


def validate(config, objective) -> None:
  """ValueError naming a bad `evaluate.*` value; before anything is built."""
  e = config.evaluate
  for name in selected(config):
    if name not in EVALUATORS:
      raise ValueError(f"evaluate.evaluators: unknown evaluator {name!r}; valid: "
                       f"{', '.join(EVALUATORS.names())}")
    if getattr(EVALUATORS.get(name), "needs_features", False) and not objective.has_features():
      raise ValueError(f"evaluate.evaluators={e.evaluators!r}: {name} probes features, which "
                       f"objective {objective.name!r} does not define (Objective.features)")
  if any(getattr(EVALUATORS.get(n), "needs_features", False) for n in selected(config)) \
      and not task_name(config, objective.modality):
    raise ValueError(f"evaluate.task is unset and {objective.modality} data has no built-in "
                     f"task; valid: {', '.join(sorted(tasks.TASKS))}")
  if e.task and e.task not in tasks.TASKS:
    raise ValueError(f"evaluate.task={e.task!r}; valid: {', '.join(sorted(tasks.TASKS))}")
  if e.task and tasks.MODALITY[e.task] != objective.modality:
    raise ValueError(f"evaluate.task={e.task!r} holds {tasks.MODALITY[e.task]} examples; "
                     f"objective {objective.name!r} reads {objective.modality}")
  for key in ("train_examples", "test_examples", "knn_k", "probe_steps"):
    if e[key] < 1:
      raise ValueError(f"evaluate.{key}={e[key]}: must be >= 1")
  if e.every < 0:
    raise ValueError(f"evaluate.every={e.every}: must be >= 0 (0 = only at the end)")


class Evaluator:
  """Base: holds the Run; subclasses implement `run(state) -> metrics`."""

  needs_features = False

  def __init__(self, run):
    self.run_ = run

  def run(self, state) -> dict[str, float]:
    raise NotImplementedError


@EVALUATORS.register("heldout_loss")
class HeldoutLoss(Evaluator):
  """The objective's loss (and its metrics) on `train.eval_steps` held-out batches;
  `eval_perplexity` = exp(loss) for token-level objectives."""

  def __init__(self, run):
    super().__init__(run)
    self._step = None

  def run(self, state):
    if self._step is None:
      shardings = sharding.param_shardings(self.run_.abstract_params, self.run_.mesh,
                                           self.run_.rules)
      self._step = steps.make_eval_step(self.run_, shardings)
    scores = steps.evaluate(self.run_, self._step, state["params"], state.get("teacher"),
                                  state.get("objective"))
    if self.run_.objective.unit == "tokens":
      scores["eval_perplexity"] = float(np.exp(scores["eval_loss"]))
    return scores


class FrozenFeatures(Evaluator):
  """Features of a built-in labelled task's train and test examples, from the current
  params with the objective's `features`, computed sharded like the eval step."""

  needs_features = True

  def __init__(self, run):
    super().__init__(run)
    self._task = None
    r = run
    params = sharding.param_shardings(r.abstract_params, r.mesh, r.rules)

    def features(p, batch):
      return r.objective.features(p, batch, model=r.model_def, config=r.config)

    self._features = jax.jit(features, in_shardings=(params, sharding.batch_sharding(r.mesh)),
                             out_shardings=sharding.replicated(r.mesh))

  @property
  def task(self) -> tasks.LabelledTask:
    if self._task is None:
      c = self.run_.config
      name = task_name(c, self.run_.objective.modality)
      self._task = tasks.TASKS[name](pipeline.cache_dir(c.data), c.evaluate.train_examples,
                                     c.evaluate.test_examples)
    return self._task

  def _examples(self, inputs) -> dict[str, np.ndarray]:
    """Task inputs -> the model's clean-example arrays (all rows, on the host)."""
    if self.task.modality == "image":
      rows = [image_example(im, 0) for im in inputs]
      return {"image": np.stack([r["image"] for r in rows])}
    c = self.run_.config
    if self.task.modality == "audio":
      waves = np.asarray(inputs, np.float32) / 32768.0
      return {"spectrogram": audio.task_clips(waves, audio.RECORDED_RATE, c.data,
                                              pipeline.cache_dir(c.data))}
    kind = c.data.get("tokenizer") or self.run_.objective.tokenizer
    _, tokenizer = pipeline.build_text_dataset(c.data, "train", kind)
    length = c.data.seq_len
    tokens = np.zeros((len(inputs), length), np.int32)
    for i, (ids, _) in enumerate(tokenizer.encode_batch(list(inputs))):
      tokens[i, :len(ids[:length])] = ids[:length]
    segment_ids = (tokens != tokenizer.pad_id).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}

  def features(self, params, inputs) -> np.ndarray:
    """(N, D) float32: rows in global batches; each process feeds its slice of each."""
    examples = self._examples(inputs)
    n = len(next(iter(examples.values())))
    size = self.run_.config.train.global_batch
    local = size // jax.process_count()
    lo = jax.process_index() * local
    out = []
    for start in range(0, n, size):
      index = np.arange(start, start + size) % n  # The last batch wraps; trimmed below.
      batch = {k: v[index[lo:lo + local]] for k, v in examples.items()}
      out.append(np.asarray(jax.device_get(
          self._features(params, sharding.global_batch(batch, self.run_.mesh)))))
    return np.concatenate(out)[:n]

  def train_test_features(self, state):
    t = self.task
    return (self.features(state["params"], t.train_inputs),
            self.features(state["params"], t.test_inputs))


@EVALUATORS.register("linear_probe")
class LinearProbe(FrozenFeatures):
  """Softmax classifier on frozen, standardized features: test accuracy."""

  def run(self, state):
    train_x, test_x = self.train_test_features(state)
    t = self.task
    scores = probes.linear_probe(train_x, t.train_labels, test_x, t.test_labels,
                                 num_classes=len(t.classes),
                                 steps=self.run_.config.evaluate.probe_steps)
    return {f"linear_probe_{t.name}_{k}": v for k, v in scores.items()}


@EVALUATORS.register("knn")
class Knn(FrozenFeatures):
  """Weighted k-nearest-neighbour vote on cosine similarity: test accuracy."""

  def run(self, state):
    train_x, test_x = self.train_test_features(state)
    t = self.task
    predicted = probes.knn_classify(train_x, t.train_labels, test_x,
                                    num_classes=len(t.classes), k=self.run_.config.evaluate.knn_k)
    return {f"knn_{t.name}_accuracy": float(np.mean(predicted == t.test_labels))}


def build(run) -> list[Evaluator]:
  return [EVALUATORS.get(name)(run) for name in selected(run.config)]


def run_all(evaluators: list[Evaluator], state) -> dict[str, float]:
  scores: dict[str, float] = {}
  for evaluator in evaluators:
    scores.update(evaluator.run(state))
  return scores
