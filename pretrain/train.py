"""The training loop: build, resume or init, step, evaluate, log, checkpoint.

Everything objective-specific comes through the `Objective` interface
(objectives/base.py); everything model-specific through a registered model builder. The
step is one jit-compiled pure function of (state, global batch) sharded over the mesh.

Faults: a step with a non-finite loss or gradient keeps the previous params (counted in the
state, checked on the host only at log/checkpoint boundaries, see `train.nonfinite`);
SIGTERM checkpoints the current step and exits with PREEMPTED_EXIT_CODE; a checkpoint
that no longer restores is moved aside and the previous one used (checkpoint.py).

A distillation objective's teacher (pretrain/teacher.py) rides along in the state under
"teacher": no optimizer state, no gradient, EMA-updated inside the step when it is one.
An objective's own running arrays (`Objective.initial_state`, e.g. DINO's teacher center)
ride along under "objective": replicated, checkpointed, replaced each step by the next
state its loss returns.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from objectives.base import DataInfo, ModelDef, Objective
from pretrain import checkpoint, config as config_lib, metrics as metrics_lib, optim, sharding
from pretrain import steps, teacher as teacher_lib
from pretrain.data.modalities import MODALITIES
from pretrain.evaluation import evaluators as evaluators_lib
from pretrain.registry import MODELS, OBJECTIVES

# EX_TEMPFAIL: the run was stopped on purpose with its state saved; rerun the same command.
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL


class Preempted(SystemExit):
  """SIGTERM arrived; the current step is checkpointed. Exits with PREEMPTED_EXIT_CODE."""


@dataclasses.dataclass
class Run:
  """Everything built from a config before anything is compiled."""

  config: ml_collections.ConfigDict
  objective: Objective
  info: DataInfo
  train_source: Any
  eval_source: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  model_def: ModelDef
  model_cfg: Any
  abstract_params: Any  # nnx.State of ShapeDtypeStructs carrying logical axis names
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  teacher: teacher_lib.TeacherModel | None = None
  tokenizer: Any = None  # text runs: the data's Tokenizer, recorded in the workdir


def build_data(config, objective: Objective):
  """(train source, eval source, DataInfo, Tokenizer or None) for the objective's modality."""
  return MODALITIES.get(objective.modality).build(config, objective)


def setup(config: ml_collections.ConfigDict) -> Run:
  config_lib.validate(config, jax.device_count())
  objective = OBJECTIVES.get(config.objective.name)
  builder = MODELS.get(config.model.name)
  try:  # Bad data (empty files, mixed image shapes, ...) is an input error, before compile.
    train_source, eval_source, info, tokenizer = build_data(config, objective)
    model_cfg = builder.model_config(config.model, info)
    model_cfg.validate()  # Now against the data's real shapes (e.g. image size vs patch).
  except (FileNotFoundError, ValueError) as e:
    raise config_lib.ConfigError(f"data.source={config.data.source!r}: {e}") from None
  try:
    teacher_lib.check_loadable(config)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  run = build_run(config, objective, info, model_cfg, train_source, eval_source)
  run.tokenizer = tokenizer
  return run


def build_run(config, objective: Objective, info: DataInfo, model_cfg, train_source,
              eval_source, devices=None) -> Run:
  """The Run for known data shapes: abstract model, mesh (over `devices`, default all),
  optimizer. `pretrain.aot` calls it with compile-only TPU devices and no sources."""
  model_def, abstract_params = _abstract_model(config.model.name, model_cfg)
  teacher = None
  if teacher_lib.kind(config) != "none":
    name, teacher_cfg = teacher_lib.model_section(config).name, teacher_lib.model_config(
        config, info)
    teacher = teacher_lib.TeacherModel(config.teacher.kind, name, teacher_cfg,
                                       *_abstract_model(name, teacher_cfg))
  return Run(config=config, objective=objective, info=info, train_source=train_source,
             eval_source=eval_source, mesh=sharding.make_mesh(config.mesh, devices),
             rules=sharding.rules_tuple(config.sharding_rules),
             model_def=model_def, model_cfg=model_cfg,
             abstract_params=abstract_params,
             tx=optim.make_optimizer(config.optim, config.train.steps),
             schedule=optim.learning_rate_schedule(config.optim, config.train.steps),
             teacher=teacher)


def _abstract_model(name: str, model_cfg) -> tuple[ModelDef, Any]:
  """(structure, abstract params carrying logical axis names) of a registered model."""
  builder = MODELS.get(name)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError(f"model {name!r} has non-param state; the "
                              "trainer only carries params so far")
  return ModelDef(graphdef), abstract_params


def state_shardings(run: Run, abstract_state) -> dict:
  """Params by their logical axes; optimizer moments like their params; rest replicated."""
  params = sharding.param_shardings(run.abstract_params, run.mesh, run.rules)
  replicated = sharding.replicated(run.mesh)
  opt = optax.tree_map_params(run.tx, lambda _, s: s, abstract_state["opt_state"], params,
                              transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": params, "opt_state": opt, "rng": replicated,
               "nonfinite_steps": replicated, "first_nonfinite_step": replicated}
  if run.teacher is not None:
    shardings["teacher"] = sharding.param_shardings(run.teacher.abstract_params, run.mesh,
                                                    run.rules)
  if "objective" in abstract_state:
    shardings["objective"] = jax.tree.map(lambda _: replicated, abstract_state["objective"])
  return shardings


def init_state_fn(run: Run):
  """A pure function rng -> fresh train state (params, optimizer state, step, rng, and the
  count and first step (1-based, 0 = none) of steps skipped for a non-finite loss/grad).

  With a teacher, "teacher" holds its params: the student's for an EMA teacher, a fresh
  init for a frozen one (a placeholder `train` replaces with the loaded teacher)."""

  def build(name, model_cfg, rng):
    with nnx.use_eager_sharding(False):
      module = MODELS.get(name).build(model_cfg, nnx.Rngs(rng))
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))

  def init(rng):
    params = build(run.config.model.name, run.model_cfg, rng)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": run.tx.init(params), "rng": rng,
             "nonfinite_steps": jnp.zeros((), jnp.int32),
             "first_nonfinite_step": jnp.zeros((), jnp.int32)}
    if run.teacher is not None:
      state["teacher"] = params if run.teacher.kind == "ema" else build(
          run.teacher.model_name, run.teacher.model_cfg, jax.random.fold_in(rng, 1))
    objective_state = run.objective.initial_state(run.config, run.info, run.model_cfg)
    if objective_state:
      state["objective"] = objective_state
    return state

  return init


def init_rng(config) -> jax.Array:
  """The raw key a fresh state is initialised from (stored in the state as uint32 data)."""
  return jax.random.key_data(jax.random.key(config.seed))


def sharded_abstract_state(run: Run):
  """(state as ShapeDtypeStructs carrying shardings, the shardings): the restore target,
  the init's out_shardings and the AOT compiler's input, without allocating anything."""
  abstract = jax.eval_shape(init_state_fn(run), init_rng(run.config))
  shardings = state_shardings(run, abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  return target, shardings


def _write_config(workdir: str, config) -> None:
  """Records the config a fresh run starts with; `config.check_resumable` compares a rerun
  against it. A resumed run never rewrites it."""
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def _write_tokenizer(workdir: str, tokenizer) -> None:
  """Copies the run's tokenizer next to its config, where a run continuing from this one
  with another vocabulary (init_from.vocab=extend) finds it."""
  if tokenizer is not None:
    path = os.path.join(workdir, checkpoint.TOKENIZER)
    tokenizer.hf.save(path + ".tmp")
    os.replace(path + ".tmp", path)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics."""
  config_lib.check_workdir(workdir)
  run = setup(config)
  t = config.train
  # Measured (on CPU) before any data thread starts competing for the cores.
  peak = metrics_lib.peak_flops_per_device(t.peak_flops_per_device, config.model.dtype)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  ckpt = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints,
                                 timeout_s=t.checkpoint_timeout_s)
  try:
    with sharding.activation_context(run.mesh, run.rules), _sigterm_flag() as preempted:
      target, shardings = sharded_abstract_state(run)
      data_iter = steps.make_iterator(run, run.train_source, shuffle=True)
      resumed = ckpt.restore_latest(target)
      if resumed is not None:
        step, state, data_state = resumed
        data_iter.set_state(data_state)
        writer.console(f"resumed from {ckpt.directory}/{step}")
      else:
        if is_main:
          _write_config(workdir, config)
          _write_tokenizer(workdir, run.tokenizer)
        state = jax.jit(init_state_fn(run), out_shardings=shardings)(init_rng(config))
        if config.init_from.path:
          extend = config.init_from.vocab == "extend"
          try:
            params, report = checkpoint.load_params(
                config.init_from.path, config.init_from.step, config.init_from.subtree,
                state["params"], vocab_to=run.tokenizer.hf if extend else None)
          except FileNotFoundError as e:
            raise config_lib.ConfigError(str(e)) from None
          state = {**state, "params": params}
          writer.console(report.summary())
        if run.teacher is not None:
          try:
            teacher = teacher_lib.initial_params(config, state, writer.console)
          except (FileNotFoundError, ValueError) as e:
            raise config_lib.ConfigError(str(e)) from None
          state = {**state, "teacher": teacher}
      train_step = steps.make_train_step(run, shardings)
      eval_step = steps.make_eval_step(run, shardings["params"]) if t.eval_every else None
      pictures = steps.make_picture_fn(run, shardings["params"]) if t.eval_every else None
      start = int(jax.device_get(state["step"]))
      evaluators = evaluators_lib.build(run)
      return _loop(run, state, start, data_iter, train_step, eval_step, evaluators, ckpt,
                   writer, peak, preempted, pictures=pictures)
  finally:
    writer.close()
    ckpt.close()


@contextlib.contextmanager
def _sigterm_flag():
  """An Event that SIGTERM (a preemption notice) sets instead of killing the process; the
  loop checks it between steps. Off the main thread (no signals there) it is never set."""
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _should_stop(preempted: threading.Event, done: int, t) -> bool:
  """Whether to save and exit after step `done` on a preemption notice.

  One process stops at once. Several processes stop only at log boundaries, where they
  agree through an all-gather: a process stopping alone while the others run the next step
  would deadlock their collectives (SIGTERM reaches hosts at different steps).
  """
  if done >= t.steps:
    return False
  if jax.process_count() == 1:
    return preempted.is_set()
  if done % t.log_every:
    return False
  flags = multihost_utils.process_allgather(np.asarray(preempted.is_set()))
  return bool(np.any(flags))


def _check_finite(state, policy: str, ckpt) -> None:
  """Host check at log/checkpoint boundaries: with train.nonfinite=stop, any skipped step
  ends the run before anything is saved after it."""
  if policy != "stop":
    return
  count, first = (int(x) for x in jax.device_get(
      (state["nonfinite_steps"], state["first_nonfinite_step"])))
  if count:
    raise FloatingPointError(
        f"non-finite loss or gradient at step {first} ({count} such step(s) so far, "
        f"train.nonfinite=stop); nothing was saved after it: the checkpoints in "
        f"{ckpt.directory} are untouched")


def _log_scores(writer, done: int, what: str, scores: dict[str, float]) -> None:
  writer.write(done, scores)
  writer.console(f"{what} step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _loop(run, state, start, data_iter, train_step, eval_step, evaluators, ckpt, writer,
          peak_info, preempted, pictures=None):
  t, objective = run.config.train, run.objective
  peak, peak_source = peak_info
  flops = 3 * objective.forward_flops_per_example(run.config, run.info, run.model_cfg)
  units = objective.units_per_example(run.config, run.info)
  meter = metrics_lib.Throughput(units_per_step=units * t.global_batch,
                                 flops_per_step=flops * t.global_batch, peak_flops=peak,
                                 num_devices=jax.device_count(), unit=objective.unit)
  writer.console(f"{objective.name}: {t.steps} steps from {start}, mesh "
                 f"{dict(run.mesh.shape)}, MFU vs {peak / 1e9:,.0f} GFLOP/s/device "
                 f"({peak_source})")
  last: dict[str, float] = {}
  step_time = 0.0
  for step in range(start, t.steps):
    batch = sharding.global_batch(next(data_iter), run.mesh)
    state, out = train_step(state, batch)
    done = step + 1
    if step == start:  # Exclude compilation from throughput.
      jax.block_until_ready(out)
      meter.restart()
    else:
      meter.tick()
    if done % t.log_every == 0 or done == t.steps:
      _check_finite(state, t.nonfinite, ckpt)
      last = {k: float(v) for k, v in jax.device_get(out).items()}
      last.update(meter.report())
      step_time = last.get("step_time", step_time)
      writer.write(done, last)
      writer.console(metrics_lib.progress_line(done, t.steps, last, objective.unit,
                                               step_time * (t.steps - done)))
    if eval_step is not None and (done % t.eval_every == 0 or done == t.steps):
      scores = steps.evaluate(run, eval_step, state["params"], state.get("teacher"),
                        state.get("objective"))
      _log_scores(writer, done, "eval", scores)
      last.update(scores)
      if pictures is not None:
        writer.images(done, pictures(state["params"]))
      meter.restart()
    every = run.config.evaluate.every
    if evaluators and ((every and done % every == 0) or done == t.steps):
      scores = evaluators_lib.run_all(evaluators, state)
      _log_scores(writer, done, "evaluators", scores)
      last.update(scores)
      meter.restart()
    stop = _should_stop(preempted, done, t)
    if done % t.checkpoint_every == 0 or done == t.steps or stop:
      _check_finite(state, t.nonfinite, ckpt)
      ckpt.save(done, state, data_iter.get_state())
      meter.restart()
    if stop:
      ckpt.wait()
      writer.console(f"preempted (SIGTERM): saved step {done} to {ckpt.directory}/{done}; "
                     f"rerun the same command to resume (exit code {PREEMPTED_EXIT_CODE})")
      raise Preempted(PREEMPTED_EXIT_CODE)
  ckpt.wait()
  return last


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of <workdir>/metrics.jsonl (for tests and scripts)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]

