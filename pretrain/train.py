"""The training loop: build, resume or init, step, evaluate, log, checkpoint.

Everything objective-specific comes through the `Objective` interface
(objectives/base.py); everything model-specific through a registered model builder. The
step is one jit-compiled pure function of (state, global batch) sharded over the mesh.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from objectives.base import DataInfo, ModelDef, Objective
from pretrain import checkpoint, config as config_lib, metrics as metrics_lib, optim, sharding
from pretrain.data import pipeline
from pretrain.registry import MODELS, OBJECTIVES


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


def build_data(config, objective: Objective):
  """(train source, eval source, DataInfo) for the objective's modality."""
  if objective.modality == "text":
    kind = config.data.get("tokenizer") or objective.tokenizer
    train_source, tok = pipeline.build_text_dataset(config.data, "train", kind)
    eval_source, _ = pipeline.build_text_dataset(config.data, "validation", kind)
    info = DataInfo(seq_len=config.data.seq_len, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                    mask_id=tok.mask_id, special_ids=tuple(int(i) for i in tok.special_ids))
  else:
    train_source = pipeline.build_image_dataset(config.data, "train")
    eval_source = pipeline.build_image_dataset(config.data, "validation")
    info = DataInfo(image_shape=tuple(train_source[0]["image"].shape))
  return train_source, eval_source, info


def setup(config: ml_collections.ConfigDict) -> Run:
  config_lib.validate(config, jax.device_count())
  objective = OBJECTIVES.get(config.objective.name)
  train_source, eval_source, info = build_data(config, objective)
  builder = MODELS.get(config.model.name)
  model_cfg = builder.model_config(config.model, info)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError(f"model {config.model.name!r} has non-param state; the "
                              "trainer only carries params so far")
  schedule = optim.learning_rate_schedule(config.optim, config.train.steps)
  return Run(config=config, objective=objective, info=info, train_source=train_source,
             eval_source=eval_source, mesh=sharding.make_mesh(config.mesh),
             rules=sharding.rules_tuple(config.sharding_rules),
             model_def=ModelDef(graphdef), model_cfg=model_cfg,
             abstract_params=abstract_params,
             tx=optim.make_optimizer(config.optim, config.train.steps), schedule=schedule)


def state_shardings(run: Run, abstract_state) -> dict:
  """Params by their logical axes; optimizer moments like their params; rest replicated."""
  params = sharding.param_shardings(run.abstract_params, run.mesh, run.rules)
  replicated = sharding.replicated(run.mesh)
  opt = optax.tree_map_params(run.tx, lambda _, s: s, abstract_state["opt_state"], params,
                              transform_non_params=lambda _: replicated)
  return {"step": replicated, "params": params, "opt_state": opt, "rng": replicated}


def init_state_fn(run: Run):
  """A pure function rng -> fresh train state (params, optimizer state, step, rng)."""
  builder = MODELS.get(run.config.model.name)

  def init(rng):
    with nnx.use_eager_sharding(False):
      module = builder.build(run.model_cfg, nnx.Rngs(rng))
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": run.tx.init(params), "rng": rng}

  return init


def make_train_step(run: Run, shardings):
  """jit(state, batch) -> (state, metrics): grad accumulation over micro-batches."""
  objective, config, accum = run.objective, run.config, run.config.train.grad_accum

  def loss(params, batch, rng):
    return objective.loss_fn(params, batch, rng, model=run.model_def, config=config)

  grad_fn = jax.value_and_grad(loss, has_aux=True)

  def step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    if accum == 1:
      (loss_value, aux), grads = grad_fn(state["params"], batch, rng)
    else:
      # Micro-batch a takes rows a, a+accum, ...: every device holds a slice of each.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1), batch)

      def body(carry, inputs):
        mb, i = inputs
        (l, m), g = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, m, g)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          lambda: grad_fn(state["params"], jax.tree.map(lambda x: x[0], micro), rng)))
      zeros = (zeros[0][0], zeros[0][1], zeros[1])
      total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
      loss_value, aux, grads = jax.tree.map(lambda x: x / accum, total)
    updates, opt_state = run.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    out = {"loss": loss_value, **aux, "grad_norm": optax.tree.norm(grads),
           "lr": run.schedule(state["step"])}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
            "rng": state["rng"]}, out

  return jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(run.mesh)),
                 out_shardings=(shardings, sharding.replicated(run.mesh)), donate_argnums=0)


def make_eval_step(run: Run, param_shardings):
  """jit(params, batch) -> metrics with a fixed rng, so evaluations are comparable."""
  rng = jax.random.key_data(jax.random.key(run.config.seed + 1))

  def step(params, batch):
    loss, aux = run.objective.loss_fn(params, batch, rng, model=run.model_def,
                                      config=run.config)
    return {"loss": loss, **aux}

  return jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(run.mesh)),
                 out_shardings=sharding.replicated(run.mesh))


def make_iterator(run: Run, source, *, shuffle: bool):
  return pipeline.make_iterator(
      source, run.objective.host_transform(run.config, run.info), seed=run.config.seed,
      global_batch=run.config.train.global_batch, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=run.config.data.num_threads,
      prefetch=run.config.data.prefetch, shuffle=shuffle)


def evaluate(run: Run, eval_step, params) -> dict[str, float]:
  """Mean metrics over train.eval_steps batches of the held-out split."""
  it = make_iterator(run, run.eval_source, shuffle=False)
  totals: dict[str, float] = {}
  for _ in range(run.config.train.eval_steps):
    out = jax.device_get(eval_step(params, sharding.global_batch(next(it), run.mesh)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v) / run.config.train.eval_steps
  return {f"eval_{k}": v for k, v in totals.items()}


def _write_config(workdir: str, config) -> None:
  """Records the config a fresh run starts with; `config.check_resumable` compares a rerun
  against it. A resumed run never rewrites it."""
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics."""
  run = setup(config)
  t = config.train
  # Measured (on CPU) before any data thread starts competing for the cores.
  peak = metrics_lib.peak_flops_per_device(t.peak_flops_per_device, config.model.dtype)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  ckpt = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints)
  with sharding.activation_context(run.mesh, run.rules):
    init = init_state_fn(run)
    rng = jax.random.key_data(jax.random.key(config.seed))
    abstract_state = jax.eval_shape(init, rng)
    shardings = state_shardings(run, abstract_state)
    data_iter = make_iterator(run, run.train_source, shuffle=True)
    latest = ckpt.latest_step()
    if latest is not None:
      target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, shardings)
      state, data_state = ckpt.restore(latest, target)
      data_iter.set_state(data_state)
      writer.console(f"resumed from {ckpt.directory}/{latest}")
    else:
      if is_main:
        _write_config(workdir, config)
      state = jax.jit(init, out_shardings=shardings)(rng)
      if config.init_from.path:
        params, report = checkpoint.load_params(config.init_from.path, config.init_from.step,
                                                config.init_from.subtree, state["params"])
        state = {**state, "params": params}
        writer.console(report.summary())
    train_step = make_train_step(run, shardings)
    eval_step = make_eval_step(run, shardings["params"]) if t.eval_every else None
    start = int(jax.device_get(state["step"]))
    last = _loop(run, state, start, data_iter, train_step, eval_step, ckpt, writer, peak)
  ckpt.wait()
  ckpt.close()
  writer.close()
  return last


def _loop(run, state, start, data_iter, train_step, eval_step, ckpt, writer, peak_info):
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
  try:
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
        last = {k: float(v) for k, v in jax.device_get(out).items()}
        if not np.isfinite(last["loss"]):
          raise FloatingPointError(f"loss is {last['loss']} at step {done}; the last "
                                   f"checkpoint in {ckpt.directory} is untouched")
        last.update(meter.report())
        step_time = last.get("step_time", step_time)
        writer.write(done, last)
        writer.console(metrics_lib.progress_line(done, t.steps, last, objective.unit,
                                                 step_time * (t.steps - done)))
      if eval_step is not None and (done % t.eval_every == 0 or done == t.steps):
        scores = evaluate(run, eval_step, state["params"])
        writer.write(done, scores)
        writer.console(f"eval step {done}: " + ", ".join(f"{k} {v:.4f}"
                                                         for k, v in scores.items()))
        last.update(scores)
        meter.restart()
      if done % t.checkpoint_every == 0 or done == t.steps:
        ckpt.save(done, state, data_iter.get_state())
        meter.restart()
  finally:
    ckpt.wait()
  return last


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of <workdir>/metrics.jsonl (for tests and scripts)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]

