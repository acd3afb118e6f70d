"""Orbax checkpoints: async keep-N saves, automatic resume, and `init_from`.

A checkpoint holds the whole train state (params, optimizer state, step, RNG, non-finite
step counters) and the data-iterator state (JSON), so rerunning the same command continues
the same run. Orbax writes each step to a temporary directory and renames it when complete,
so a crash mid-save never replaces the previous good checkpoint; it ignores such leftover
`<step>.orbax-checkpoint-tmp*` directories and replaces one only when it saves that step
again. Nothing here deletes a committed step except keep-N: a step that no longer restores
is moved aside to `checkpoints/corrupt-<step>-<time>` (see `Checkpointer.restore_latest`).
Nothing is ever unpickled: arrays are tensorstore/OCDBT files, the data state is JSON.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from pretrain.hf import convert as hf_convert
from pretrain.model_builders import padded_vocab

STATE, DATA = "state", "data"


class CheckpointError(RuntimeError):
  """A checkpoint that failed to save, to commit in time, or to restore; one-line message."""


def checkpoint_dir(path: str) -> str:
  """A run's workdir or its checkpoints/ folder -> the checkpoints/ folder."""
  path = os.path.abspath(path)
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _one_line(error: BaseException, limit: int = 200) -> str:
  """orbax/tensorstore errors span many lines; messages here are one."""
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> None:
  """fn() in a daemon thread (a hung commit must not also hang the exit); re-raises its
  error, raises TimeoutError when it is still running after `timeout_s`."""
  errors: list[BaseException] = []

  def target():
    try:
      fn()
    except BaseException as e:  # noqa: BLE001  (handed to the caller's thread)
      errors.append(e)

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError
  if errors:
    raise errors[0]


class Checkpointer:
  """Saves/restores {state, data} under <workdir>/checkpoints/<step>.

  At most one save is in flight; `wait` (called before the next save and at the end)
  turns its failure or a commit slower than `timeout_s` into a CheckpointError.
  """

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True,
               timeout_s: float = 600.0):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.timeout_s = timeout_s
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = self._open()
    self._pending: int | None = None  # the step whose save may not have committed yet
    self._failed = False  # a save failed or hung: orbax's close would re-raise or hang

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=(STATE, DATA))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self.wait()
    self._pending = step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state)}),
          force=True)
    except Exception as e:
      self._pending = None
      raise self._save_error(step, e) from e

  def wait(self) -> None:
    """Blocks until the pending save has committed."""
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      _run_with_timeout(self._manager.wait_until_finished, self.timeout_s)
    except TimeoutError:
      self._failed = True
      raise CheckpointError(
          f"checkpoint step {step} did not commit to {self.directory} within "
          f"train.checkpoint_timeout_s={self.timeout_s:g}s; earlier steps there are intact"
          ) from None
    except Exception as e:
      self._failed = True
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, error: Exception) -> CheckpointError:
    return CheckpointError(f"saving checkpoint step {step} to {self.directory} failed "
                           f"({_one_line(error)}); earlier steps there are intact")

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto `abstract_state`'s shardings (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
    return restored[STATE], restored[DATA]

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, data state) of the newest step that restores; None when there is none.

    A newer step that fails to restore (truncated or missing files) is warned about and
    moved aside to `corrupt-<step>-<time>`, never deleted: the run will save that step
    number again, which orbax refuses while the directory exists. When no step restores,
    nothing is moved and the error names every step and why it failed.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001  (any unreadable step is a fallback case)
        failed.append((step, _one_line(e)))
        continue
      if failed:
        self._move_aside(failed, step)
      return step, state, data
    if failed:
      reasons = "; ".join(f"step {s}: {why}" for s, why in failed)
      raise CheckpointError(f"no checkpoint in {self.directory} restores ({reasons}); nothing "
                            "was moved or deleted: move them aside or use a new --workdir")
    return None

  def _move_aside(self, failed: list[tuple[int, str]], good: int) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for step, why in failed:
      target = os.path.join(self.directory, f"corrupt-{step}-{stamp}")
      if jax.process_index() == 0:
        os.rename(os.path.join(self.directory, str(step)), target)
      print(f"warning: checkpoint {self.directory}/{step} does not restore ({why}); moved "
            f"to {target}, resuming from step {good}", file=sys.stderr, flush=True)
    multihost_utils.sync_global_devices("checkpoint_move_aside")
    self._manager.close()
    self._manager = self._open()  # It cached the moved steps.

  def close(self) -> None:
    """Waits for the pending save, then stops orbax's threads (unless a save failed: that
    error was raised already)."""
    try:
      self.wait()
    finally:
      if not self._failed:
        self._manager.close()


@dataclasses.dataclass
class InitReport:
  """What `init_from` did to each target param path."""

  matched: list[str]
  shape_mismatch: list[str]  # present in the source with another shape: left fresh
  missing: list[str]         # absent from the source: left fresh
  unused: list[str]          # in the source but not in the target

  def summary(self, title: str = "init_from") -> str:
    lines = [f"{title}: {len(self.matched)} matched, {len(self.shape_mismatch)} "
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


def _match(source: dict[str, Any], target: dict[str, Any], subtree: str) -> InitReport:
  """Which target paths (under `subtree`) the source has with the same shape."""
  prefix = subtree.strip("/")
  report = InitReport([], [], [], sorted(set(source) - set(target)))
  for name, leaf in target.items():
    if prefix and not (name == prefix or name.startswith(prefix + "/")):
      continue
    if name not in source:
      report.missing.append(name)
    elif tuple(source[name].shape) != tuple(leaf.shape):
      report.shape_mismatch.append(name)
    else:
      report.matched.append(name)
  return report


def _load_hf_params(path: str, subtree: str, target_params: Any) -> tuple[dict, InitReport]:
  """`load_params` for a Hugging Face directory; its tensors without a counterpart here
  are reported as unused."""
  imported = hf_convert.import_hf(path)
  target = _flat(target_params)
  _pad_vocab(imported.params, target)
  report = _match(imported.params, target, subtree)
  report.unused = sorted(report.unused + imported.unused)
  loaded = {n: jax.make_array_from_callback(target[n].shape, target[n].sharding,
                                            lambda idx, a=imported.params[n]: a[idx])
            for n in report.matched}
  treedef = jax.tree.structure(target_params)
  return jax.tree.unflatten(treedef, [loaded.get(n, leaf) for n, leaf in target.items()]), report


def _pad_vocab(source: dict[str, Any], target: dict[str, Any]) -> None:
  """HF vocab-sized tensors (embeddings, logits bias) grow zero rows up to our padded vocab
  (model_builders.padded_vocab): ids past the tokenizer's never occur, so nothing changes."""
  for name, array in source.items():
    want = target.get(name)
    if (want is not None and array.ndim and tuple(array.shape[1:]) == tuple(want.shape[1:])
        and array.shape[0] < want.shape[0] == padded_vocab(array.shape[0])):
      pad = [(0, want.shape[0] - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
      source[name] = np.pad(array, pad)


def load_params(path: str, step: int, subtree: str, target_params: Any) -> tuple[dict, InitReport]:
  """Loads the params of another run (or a Hugging Face directory) that match
  `target_params` by path and shape.

  `target_params` is the freshly initialised (sharded) params dict; matched leaves are
  restored straight onto their shardings, everything else keeps its fresh value.
  Only paths under `subtree` (a '/'-separated prefix) are considered.
  """
  if hf_convert.is_hf_dir(path):
    if step >= 0:
      raise ValueError(f"init_from.step={step}: {path!r} is a Hugging Face directory "
                       "without steps; leave init_from.step at -1")
    return _load_hf_params(path, subtree, target_params)
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
  report = _match(source, target, subtree)
  wanted = {name: target[name] for name in report.matched}
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

