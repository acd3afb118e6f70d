"""The jit-compiled steps of a run and the host loops around them: the train step
(gradient accumulation, EMA teacher, non-finite guard), the held-out evaluation, the
reconstruction pictures, and the data iterator they all read through.

`pretrain.train` runs them in its loop; `pretrain.aot` compiles the train step for a TPU
slice; the evaluators and `bench/` reuse them, so nothing here is written twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from objectives.base import NEXT_STATE, Teacher
from pretrain import sharding
from pretrain import teacher as teacher_lib
from pretrain.data import pipeline

if TYPE_CHECKING:
  from pretrain.train import Run


def make_train_step(run: Run, shardings):
  """jit(state, batch) -> (state, metrics): grad accumulation over micro-batches."""
  config, accum = run.config, run.config.train.grad_accum
  loss = loss_fn(run)
  grad_fn = jax.value_and_grad(loss, has_aux=True)  # Only the student's params: argnum 0.

  def step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    teacher, objective_state = state.get("teacher"), state.get("objective")
    if accum == 1:
      (loss_value, aux), grads = grad_fn(state["params"], batch, rng, teacher, objective_state)
    else:
      # Micro-batch a takes rows a, a+accum, ...: every device holds a slice of each.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1), batch)

      def body(carry, inputs):
        mb, i = inputs
        (l, m), g = grad_fn(state["params"], mb, jax.random.fold_in(rng, i), teacher,
                            objective_state)
        return jax.tree.map(jnp.add, carry, (l, m, g)), None

      first = jax.tree.map(lambda x: x[0], micro)
      loss_and_aux = jax.eval_shape(loss, state["params"], first, rng, teacher, objective_state)
      zeros = jax.tree.map(jnp.zeros_like, (*loss_and_aux, state["params"]))
      total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
      # The next objective state too is the mean over micro-batches.
      loss_value, aux, grads = jax.tree.map(lambda x: x / accum, total)
    aux = dict(aux)
    next_objective_state = aux.pop(NEXT_STATE, objective_state)
    updates, opt_state = run.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
    if run.teacher is not None and run.teacher.kind == "ema":  # After the optimizer update.
      teacher = teacher_lib.ema_update(
          teacher, params, teacher_lib.ema_momentum(config.teacher, state["step"],
                                                    config.train.steps))
    # No host sync here: a bad step is undone on device and only counted.
    params, opt_state, teacher, objective_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state, teacher, next_objective_state),
        (state["params"], state["opt_state"], state.get("teacher"), objective_state))
    first_bad = state["first_nonfinite_step"]
    new_state = {
        "step": state["step"] + 1, "params": params, "opt_state": opt_state,
        "rng": state["rng"], "nonfinite_steps": state["nonfinite_steps"] + (~finite),
        "first_nonfinite_step": jnp.where(finite | (first_bad > 0), first_bad,
                                          state["step"] + 1)}
    if run.teacher is not None:
      new_state["teacher"] = teacher
    if objective_state is not None:
      new_state["objective"] = objective_state
    out = {"loss": loss_value, **aux, "grad_norm": grad_norm,
           "lr": run.schedule(state["step"]), "nonfinite_steps": new_state["nonfinite_steps"]}
    return new_state, out

  return jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(run.mesh)),
                 out_shardings=(shardings, sharding.replicated(run.mesh)), donate_argnums=0)


def loss_fn(run: Run):
  """(params, batch, rng, teacher params or None, objective state or None) -> (loss,
  metrics): the objective's loss, given the teacher (gradient stopped) when the run has one
  and its running state when it keeps one."""
  objective, config = run.objective, run.config

  def loss(params, batch, rng, teacher_params, objective_state):
    extra = {} if run.teacher is None else {
        "teacher": Teacher(run.teacher.model_def, jax.lax.stop_gradient(teacher_params))}
    if objective_state is not None:
      extra["objective_state"] = objective_state
    return objective.loss_fn(params, batch, rng, model=run.model_def, config=config, **extra)

  return loss


def make_eval_step(run: Run, param_shardings):
  """jit(params, batch, teacher params or None, objective state or None) -> metrics with a
  fixed rng, so evaluations are comparable (the objective's next state is dropped)."""
  rng = jax.random.key_data(jax.random.key(run.config.seed + 1))
  loss = loss_fn(run)
  teacher = None if run.teacher is None else sharding.param_shardings(
      run.teacher.abstract_params, run.mesh, run.rules)

  def step(params, batch, teacher_params, objective_state):
    value, aux = loss(params, batch, rng, teacher_params, objective_state)
    return {"loss": value, **{k: v for k, v in aux.items() if k != NEXT_STATE}}

  return jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(run.mesh),
                                     teacher, sharding.replicated(run.mesh)),
                 out_shardings=sharding.replicated(run.mesh))


# Held-out examples (the first of the unshuffled validation split) an objective draws its
# reconstructions of at every evaluation.
RECONSTRUCTION_EXAMPLES = 8


def make_picture_fn(run: Run, param_shardings):
  """params -> the objective's pictures of the first RECONSTRUCTION_EXAMPLES held-out
  examples (the same ones every time, with the eval rng); None if it draws none. The
  batch is read once, on the first call."""
  if not run.objective.has_reconstructions():
    return None
  rng = jax.random.key_data(jax.random.key(run.config.seed + 1))

  def step(params, batch):
    few = {k: v[:RECONSTRUCTION_EXAMPLES] for k, v in batch.items()}
    return run.objective.reconstructions(params, few, rng, model=run.model_def,
                                         config=run.config)

  jitted = jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(run.mesh)),
                   out_shardings=sharding.replicated(run.mesh))
  held_out: list = []

  def pictures(params) -> dict[str, np.ndarray]:
    if not held_out:
      it = make_iterator(run, run.eval_source, shuffle=False)
      held_out.append(sharding.global_batch(next(it), run.mesh))
    return jax.device_get(jitted(params, held_out[0]))

  return pictures


def make_iterator(run: Run, source, *, shuffle: bool):
  return pipeline.make_iterator(
      source, run.objective.host_transform(run.config, run.info), seed=run.config.seed,
      global_batch=run.config.train.global_batch, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=run.config.data.num_threads,
      prefetch=run.config.data.prefetch, shuffle=shuffle)


def evaluate(run: Run, eval_step, params, teacher=None,
             objective_state=None) -> dict[str, float]:
  """Mean metrics over train.eval_steps batches of the held-out split (`teacher`: the
  state's teacher params, for distillation objectives; `objective_state`: the state's
  "objective" entry, for objectives that keep one)."""
  it = make_iterator(run, run.eval_source, shuffle=False)
  totals: dict[str, float] = {}
  for _ in range(run.config.train.eval_steps):
    out = jax.device_get(eval_step(params, sharding.global_batch(next(it), run.mesh),
                                   teacher, objective_state))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v) / run.config.train.eval_steps
  return {f"eval_{k}": v for k, v in totals.items()}
