"""Runs evaluators on a saved run, on demand.

  python -m pretrain.evaluate --workdir=runs/mae_tiny [--step=N] \\
      [--evaluators=heldout_loss,linear_probe,knn] [--config.evaluate.task=...]

Reads the run's config.json, restores its checkpoint (the latest by default; the workdir is
only read, plus one appended line), runs the evaluators (default: the config's
`evaluate.evaluators`, else every one the objective supports), prints the metrics and
appends {"step": N, ...metrics} to <workdir>/evaluations.jsonl. Bad flags, an unknown
evaluator or a workdir without checkpoints are one line on stderr, exit 2, before any
restore.
"""
from __future__ import annotations

import json
import os
import sys

import ml_collections

from pretrain import config as config_lib

USAGE = ("usage: python -m pretrain.evaluate --workdir=<run dir> [--step=N] "
         "[--evaluators=a,b] [--config.<key>=<value> ...]")


def _parse(argv: list[str]) -> tuple[str, int | None, str | None, list[tuple[str, str]]]:
  workdir, step, names, overrides = None, None, None, []
  for arg in argv:
    name, eq, value = arg.partition("=")
    if not eq:
      raise config_lib.ConfigError(f"unknown argument {arg!r}; {USAGE}")
    if name == "--workdir":
      workdir = value
    elif name == "--step":
      if not value.isdigit():
        raise config_lib.ConfigError(f"--step={value}: expected a checkpoint step number")
      step = int(value)
    elif name == "--evaluators":
      names = value
    elif name.startswith("--config."):
      overrides.append((name[len("--config."):], value))
    else:
      raise config_lib.ConfigError(f"unknown argument {arg!r}; {USAGE}")
  if workdir is None:
    raise config_lib.ConfigError(f"missing --workdir; {USAGE}")
  return workdir, step, names, overrides


def _load_config(workdir: str, names: str | None, overrides) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"--workdir={workdir}: no config.json (not a run directory)")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for key, value in overrides:
    config_lib.apply_override(config, key, value)
  if names is not None:
    config.evaluate.evaluators = names
  return config


def _default_evaluators(config) -> None:
  """Every evaluator the objective supports, when the run's config selects none."""
  import objectives  # noqa: F401  (registers objectives)
  from pretrain.evaluation import evaluators
  from pretrain.registry import OBJECTIVES

  if evaluators.selected(config):
    return
  objective = OBJECTIVES.get(config.objective.name)
  usable = [n for n in evaluators.EVALUATORS.names()
            if not evaluators.EVALUATORS.get(n).unsupported(config, objective)]
  config.evaluate.evaluators = ",".join(usable)


def _checkpoint_steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def main(argv: list[str]) -> int:
  try:
    workdir, step, names, overrides = _parse(argv)
    config = _load_config(workdir, names, overrides)
    _default_evaluators(config)
    import jax

    config_lib.validate(config, jax.device_count())
    steps = _checkpoint_steps(workdir)
    if not steps or (step is not None and step not in steps):
      raise config_lib.ConfigError(
          f"--workdir={workdir}: no checkpoint step {step if step is not None else ''} "
          f"(steps there: {steps or 'none'})")
  except (config_lib.ConfigError, KeyError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  scores = evaluate_checkpoint(config, workdir, step if step is not None else steps[-1])
  for key, value in scores.items():
    print(f"{key} {value:.4f}")
  return 0


def restore(config, workdir: str, step: int):
  """(Run, train state) of checkpoint `step` of the run in `workdir`, read-only."""
  from pretrain import checkpoint, sharding, train

  run = train.setup(config)
  ckpt = checkpoint.Checkpointer(workdir, keep=max(1, len(_checkpoint_steps(workdir))),
                                 async_save=False)
  try:
    with sharding.activation_context(run.mesh, run.rules):
      target, _ = train.sharded_abstract_state(run)
      state, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return run, state


def evaluate_checkpoint(config, workdir: str, step: int) -> dict[str, float]:
  """Restores `step` of the run in `workdir`, runs its evaluators, appends the record."""
  import jax

  from pretrain import sharding
  from pretrain.evaluation import evaluators

  run, state = restore(config, workdir, step)
  with sharding.activation_context(run.mesh, run.rules):
    scores = evaluators.run_all(evaluators.build(run), state)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "evaluations.jsonl"), "a") as f:
      f.write(json.dumps({"step": step, **scores}) + "\n")
  return scores


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
