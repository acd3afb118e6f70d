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
import optax

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
    reason = EVALUATORS.get(name).unsupported(config, objective)
    if reason:
      raise ValueError(f"evaluate.evaluators={e.evaluators!r}: {name} {reason}")
  if any(getattr(EVALUATORS.get(n), "needs_features", False) for n in selected(config)) \
      and not task_name(config, objective.modality):
    raise ValueError(f"evaluate.task is unset and {objective.modality} data has no built-in "
                     f"task; valid: {', '.join(sorted(tasks.TASKS))}")
  if e.task and e.task not in tasks.TASKS:
    raise ValueError(f"evaluate.task={e.task!r}; valid: {', '.join(sorted(tasks.TASKS))}")
  if e.task and tasks.MODALITY[e.task] != objective.modality:
    raise ValueError(f"evaluate.task={e.task!r} holds {tasks.MODALITY[e.task]} examples; "
                     f"objective {objective.name!r} reads {objective.modality}")
  for key in ("train_examples", "test_examples", "knn_k", "probe_steps", "probe_rank",
              "finetune_steps"):
    if e[key] < 1:
      raise ValueError(f"evaluate.{key}={e[key]}: must be >= 1")
  if not e.finetune_lr > 0:
    raise ValueError(f"evaluate.finetune_lr={e.finetune_lr}: must be > 0")
  if e.every < 0:
    raise ValueError(f"evaluate.every={e.every}: must be >= 0 (0 = only at the end)")


class Evaluator:
  """Base: holds the Run; subclasses implement `run(state) -> metrics`."""

  needs_features = False

  def __init__(self, run):
    self.run_ = run

  @classmethod
  def unsupported(cls, config, objective) -> str:
    """Why this evaluator cannot score runs of `objective` ("" = it can)."""
    if cls.needs_features and not objective.has_features():
      return (f"probes features, which objective {objective.name!r} does not define "
              f"(Objective.features)")
    return ""

  def run(self, state) -> dict[str, float]:
    raise NotImplementedError

  def global_batch(self, examples: dict[str, np.ndarray], index: np.ndarray):
    """Rows `index` (one global batch) of host arrays as global arrays: each process feeds
    its own slice."""
    local = len(index) // jax.process_count()
    lo = jax.process_index() * local
    return sharding.global_batch({k: v[index[lo:lo + local]] for k, v in examples.items()},
                                 self.run_.mesh)


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


def run_tokenizer(run):
  """The run's text tokenizer (trained on its corpus, or read from the data cache)."""
  kind = run.config.data.get("tokenizer") or run.objective.tokenizer
  return pipeline.build_text_dataset(run.config.data, "train", kind)[1]


def text_rows(texts, tokenizer, length: int) -> dict[str, np.ndarray]:
  """One unpacked row per text (truncated to `length`): the model's clean text inputs."""
  tokens = np.zeros((len(texts), length), np.int32)
  for i, (ids, _) in enumerate(tokenizer.encode_batch(list(texts))):
    tokens[i, :len(ids[:length])] = ids[:length]
  segment_ids = (tokens != tokenizer.pad_id).astype(np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


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
    return text_rows(inputs, run_tokenizer(self.run_), c.data.seq_len)

  def features(self, params, inputs) -> np.ndarray:
    """(N, D) float32: rows in global batches; each process feeds its slice of each."""
    examples = self._examples(inputs)
    n = len(next(iter(examples.values())))
    size = self.run_.config.train.global_batch
    out = []
    for start in range(0, n, size):
      index = np.arange(start, start + size) % n  # The last batch wraps; trimmed below.
      out.append(np.asarray(jax.device_get(
          self._features(params, self.global_batch(examples, index)))))
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


@EVALUATORS.register("finetune")
class FineTune(FrozenFeatures):
  """Every param plus a new linear head trained on the task's train examples: test accuracy.

  `evaluate.finetune_steps` AdamW steps at `evaluate.finetune_lr` (constant), one global
  batch of train examples each (a fixed shuffle, seed 0), cross-entropy on the head's logits
  over the objective's `features` standardized per dimension by the statistics of the batch
  (a BatchNorm without affine params, as MAE's linear probe has; the test set by the
  fine-tuned train set's): features of pretrained models often differ between examples
  only in small deviations around a large shared component, and fixed statistics would
  blow up as soon as the body moves. The head starts at zero: step 0 is chance. The run's own params are never changed: the fine-tuned
  copy is dropped after scoring.
  """

  def __init__(self, run):
    super().__init__(run)
    r = run
    # The new head learns at the linear probe's rate (its input is standardized); the
    # pretrained body at evaluate.finetune_lr.
    tx = optax.multi_transform(
        {"body": optax.adamw(r.config.evaluate.finetune_lr, weight_decay=1e-4),
         "head": optax.adam(probes.HEAD_LR)}, ("body", "head"))

    def logits_fn(trainable, batch):
      params, head = trainable
      x = r.objective.features(params, batch, model=r.model_def, config=r.config)
      return probes.standardize(x, x)[0] @ head["w"] + head["b"]

    def loss_fn(trainable, batch, labels):
      return optax.softmax_cross_entropy_with_integer_labels(
          logits_fn(trainable, batch), labels).mean()

    def step(trainable, opt_state, batch, labels):
      loss, grads = jax.value_and_grad(loss_fn)(trainable, batch, labels)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state, loss

    self._init, self._step = jax.jit(tx.init), jax.jit(step, donate_argnums=(0, 1))

  def run(self, state):
    t, c = self.task, self.run_.config
    width = self.features(state["params"], t.train_inputs[:1]).shape[1]
    head = jax.device_put(
        {"w": np.zeros((width, len(t.classes)), np.float32),
         "b": np.zeros(len(t.classes), np.float32)}, sharding.replicated(self.run_.mesh))
    # A copy: the step donates its input buffers, which must not be the run's own params.
    trainable = (jax.tree.map(lambda a: a.copy(), state["params"]), head)
    opt_state = self._init(trainable)
    examples = {**self._examples(t.train_inputs), "label": np.asarray(t.train_labels)}
    size, n = c.train.global_batch, len(t.train_labels)
    order = np.concatenate([np.random.default_rng(0).permutation(n)
                            for _ in range(-(-c.evaluate.finetune_steps * size // n))])
    for i in range(c.evaluate.finetune_steps):
      batch = self.global_batch(examples, order[i * size:(i + 1) * size])
      labels = batch.pop("label")
      trainable, opt_state, loss = self._step(trainable, opt_state, batch, labels)
    params, head = trainable
    train_x, test_x = probes.standardize(self.features(params, t.train_inputs),
                                         self.features(params, t.test_inputs))
    logits = test_x @ np.asarray(head["w"]) + np.asarray(head["b"])
    return {f"finetune_{t.name}_accuracy": float(np.mean(logits.argmax(-1) == t.test_labels)),
            f"finetune_{t.name}_train_loss": float(loss)}


def build(run) -> list[Evaluator]:
  return [EVALUATORS.get(name)(run) for name in selected(run.config)]


def run_all(evaluators: list[Evaluator], state) -> dict[str, float]:
  scores: dict[str, float] = {}
  for evaluator in evaluators:
    scores.update(evaluator.run(state))
  return scores


from pretrain.evaluation import ast_probe  # noqa: E402,F401  (registers ast_probe)
