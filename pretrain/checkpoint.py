"""Orbax checkpoints: async keep-N saves, automatic resume, and `init_from`.

A checkpoint holds the whole train state (params, optimizer state, step, RNG) and the
data-iterator state (JSON), so rerunning the same command continues the same run. Orbax
writes each step to a temporary directory and renames it when complete, so a crash
mid-save never replaces the previous good checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


def checkpoint_dir(path: str) -> str:
  """A run's workdir or its checkpoints/ folder -> the checkpoints/ folder."""
  path = os.path.abspath(path)
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


class Checkpointer:
  """Saves/restores {state, data} under <workdir>/checkpoints/<step>."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state)}),
        force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto `abstract_state`'s shardings (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
    return restored[STATE], restored[DATA]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


@dataclasses.dataclass
class InitReport:
  """What `init_from` did to each target param path."""

  matched: list[str]
  shape_mismatch: list[str]  # present in the source with another shape: left fresh
  missing: list[str]         # absent from the source: left fresh
  unused: list[str]          # in the source but not in the target

  def summary(self) -> str:
    lines = [f"init_from: {len(self.matched)} matched, {len(self.shape_mismatch)} "
             f"reshaped->fresh, {len(self.missing)} fresh, {len(self.unused)} unused"]
    for title, paths in (("fresh (shape differs)", self.shape_mismatch),
                         ("fresh (not in source)", self.missing),
                         ("unused source", self.unused)):
      lines += [f"  {title}: {p}" for p in paths]
    return "\n".join(lines)


def _flat(tree) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten_into(flat: dict[str, Any]) -> dict:
  """'/'-joined paths -> nested dicts with string keys (orbax's on-disk tree)."""
  nested: dict = {}
  for path, leaf in flat.items():
    node = nested
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return nested


def load_params(path: str, step: int, subtree: str, target_params: Any) -> tuple[dict, InitReport]:
  """Loads the params of another run that match `target_params` by path and shape.

  `target_params` is the freshly initialised (sharded) params dict; matched leaves are
  restored straight onto their shardings, everything else keeps its fresh value.
  Only paths under `subtree` (a '/'-separated prefix) are considered.
  """
  directory = checkpoint_dir(path)
  manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA),
                                  item_handlers={STATE: ocp.PyTreeCheckpointHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step < 0 else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"init_from.path={path!r}: no checkpoint step "
                            f"{'(any)' if step is None else step} in {directory}; "
                            f"available: {manager.all_steps()}")
  source = _flat(manager.item_metadata(step)[STATE].tree["params"])
  target = _flat(target_params)
  prefix = subtree.strip("/")
  report = InitReport([], [], [], [])
  wanted = {}
  for name, leaf in target.items():
    if prefix and not (name == prefix or name.startswith(prefix + "/")):
      continue
    if name not in source:
      report.missing.append(name)
    elif tuple(source[name].shape) != tuple(leaf.shape):
      report.shape_mismatch.append(name)
    else:
      report.matched.append(name)
      wanted[name] = leaf
  report.unused = sorted(set(source) - set(target))
  loaded = {}
  if wanted:
    item = {"params": _unflatten_into({k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                               sharding=v.sharding)
                                       for k, v in wanted.items()})}
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)}))
    loaded = _flat(restored[STATE]["params"])
  manager.close()
  treedef = jax.tree.structure(target_params)
  return jax.tree.unflatten(treedef, [loaded.get(n, leaf) for n, leaf in target.items()]), report

