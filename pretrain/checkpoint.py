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
import tokenizers
from jax.experimental import multihost_utils

from pretrain import transfer
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
  # Position tables resized from the source's (pretrain.transfer.resize_positions).
  interpolated: list[str] = dataclasses.field(default_factory=list)
  # Vocab-indexed params rebuilt for another tokenizer (init_from.vocab=extend).
  vocab_mapped: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)

  def summary(self, title: str = "init_from") -> str:
    adapted = "".join(f"{len(paths)} {what}, " for what, paths in (
        ("interpolated", self.interpolated), ("vocab-mapped", self.vocab_mapped)) if paths)
    lines = [f"{title}: {len(self.matched)} matched, {adapted}{len(self.shape_mismatch)} "
             f"reshaped->fresh, {len(self.missing)} fresh, {len(self.unused)} unused"]
    lines += [f"  {note}" for note in self.notes]
    for title, paths in (("interpolated", self.interpolated),
                         ("vocab-mapped", self.vocab_mapped),
                         ("fresh (shape differs)", self.shape_mismatch),
                         ("fresh (not in source)", self.missing),
                         ("unused source", self.unused)):
      lines += [f"  {title}: {p}" for p in paths]
    return "\n".join(lines)


def _flat(tree) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, Any]) -> dict:
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


TOKENIZER = "tokenizer.json"  # a run records its tokenizer here (pretrain.train)


def source_tokenizer(path: str) -> tokenizers.Tokenizer:
  """The tokenizer a run (workdir, or its checkpoints/ folder) or an HF directory encodes with."""
  path = os.path.abspath(path)
  for directory in (path, os.path.dirname(path)):
    if os.path.isfile(os.path.join(directory, TOKENIZER)):
      return tokenizers.Tokenizer.from_file(os.path.join(directory, TOKENIZER))
  raise FileNotFoundError(f"init_from.vocab='extend': no {TOKENIZER} in {path} (runs record "
                          "theirs at start; for an older run copy its data cache tokenizer there)")


def _to_host(report: InitReport, source: dict, target: dict,
             vocab: transfer.VocabMap | None) -> list[str]:
  """Source params to read on the host and rebuild: position tables whose length differs,
  and with `vocab` every vocab-indexed param of the same width."""
  names = [n for n in report.shape_mismatch
           if transfer.is_sequence_table(n) or transfer.is_grid_table(n)]
  if vocab is not None:
    names += [n for n in report.matched + report.shape_mismatch if transfer.is_vocab_param(n)
              and tuple(source[n].shape[1:]) == tuple(target[n].shape[1:])
              and source[n].shape[0] >= vocab.old_size]
  return names


def _rebuild(host: dict[str, np.ndarray], target: dict, vocab: transfer.VocabMap | None,
             report: InitReport) -> dict[str, jax.Array]:
  """The target params rebuilt from the host source arrays; moves their names from
  matched / shape_mismatch to interpolated / vocab_mapped in `report`."""
  out = {}
  for name, array in host.items():
    want = target[name]
    if vocab is not None and transfer.is_vocab_param(name):
      new = vocab.apply(array, fresh=multihost_utils.process_allgather(want, tiled=True))
      report.vocab_mapped.append(name)
    else:
      new = transfer.resize_positions(name, array, tuple(want.shape))
      if new is None:
        continue
      report.interpolated.append(name)
    for kept in (report.matched, report.shape_mismatch):
      if name in kept:
        kept.remove(name)
    out[name] = _on_target(want, np.asarray(new, want.dtype))
  if vocab is not None and report.vocab_mapped:
    report.notes.append(vocab.summary())
  return out


def _on_target(want: jax.Array, array: np.ndarray) -> jax.Array:
  return jax.make_array_from_callback(want.shape, want.sharding, lambda idx: array[idx])


def load_params(path: str, step: int, subtree: str, target_params: Any, *,
                vocab_to: tokenizers.Tokenizer | None = None) -> tuple[dict, InitReport]:
  """Loads the params of another run (or a Hugging Face directory) that match
  `target_params` by path and shape.

  `target_params` is the freshly initialised (sharded) params dict; matched leaves are
  restored straight onto their shardings, everything else keeps its fresh value. Learned
  position tables of another length or grid are loaded resized (`pretrain.transfer`).
  With `vocab_to` (the target run's tokenizer), vocab-indexed params are rebuilt from the
  source tokenizer's rows (init_from.vocab=extend). Only paths under `subtree` (a
  '/'-separated prefix) are considered.
  """
  vocab = (transfer.VocabMap.build(source_tokenizer(path), vocab_to)
           if vocab_to is not None else None)
  target = _flat(target_params)
  if hf_convert.is_hf_dir(path):
    if step >= 0:
      raise ValueError(f"init_from.step={step}: {path!r} is a Hugging Face directory "
                       "without steps; leave init_from.step at -1")
    imported = hf_convert.import_hf(path)
    source = imported.params
    _pad_vocab(source, target)
    report = _match(source, target, subtree)
    report.unused = sorted(report.unused + imported.unused)
    host = {n: source[n] for n in _to_host(report, source, target, vocab)}
    loaded = {n: _on_target(target[n], source[n]) for n in report.matched if n not in host}
  else:
    manager = _read_only_manager(path)
    step = _pick_step(manager, path, step)
    source = _flat(manager.item_metadata(step)[STATE].tree["params"])
    report = _match(source, target, subtree)
    host_names = _to_host(report, source, target, vocab)
    loaded, host = _restore(manager, step, {n: target[n] for n in report.matched
                                            if n not in host_names},
                            {n: source[n] for n in host_names})
    manager.close()
  loaded.update(_rebuild(host, target, vocab, report))
  treedef = jax.tree.structure(target_params)
  return jax.tree.unflatten(treedef, [loaded.get(n, leaf) for n, leaf in target.items()]), report


def read_params(path: str, step: int = -1) -> dict[str, np.ndarray]:
  """A run's params at `step` (-1 = latest) on the host, by '/'-joined path."""
  manager = _read_only_manager(path)
  step = _pick_step(manager, path, step)
  _, params = _restore(manager, step, {}, _flat(manager.item_metadata(step)[STATE].tree["params"]))
  manager.close()
  return params


def _read_only_manager(path: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(path), item_names=(STATE, DATA),
                               item_handlers={STATE: ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True))


def _pick_step(manager: ocp.CheckpointManager, path: str, step: int) -> int:
  """`step`, or the latest for -1; FileNotFoundError naming the available steps."""
  step = manager.latest_step() if step < 0 else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"init_from.path={path!r}: no checkpoint step "
                            f"{'(any)' if step is None else step} in {manager.directory}; "
                            f"available: {manager.all_steps()}")
  return step


def _restore(manager: ocp.CheckpointManager, step: int, on_device: dict[str, jax.Array],
             on_host: dict[str, Any]) -> tuple[dict[str, jax.Array], dict[str, np.ndarray]]:
  """Partial restore of `step`'s params: `on_device` onto those (sharded) target leaves,
  `on_host` (source metadata) as NumPy arrays of the source's shape."""
  if not on_device and not on_host:
    return {}, {}
  device_item = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
                 for k, v in on_device.items()}
  args = {**_flat(ocp.checkpoint_utils.construct_restore_args(unflatten(device_item))),
          **{k: ocp.RestoreArgs(restore_type=np.ndarray) for k in on_host}}
  item = {**device_item, **{k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in on_host.items()}}
  restored = _flat(manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
      item={"params": unflatten(item)},
      restore_args={"params": unflatten(args)}, partial_restore=True)}))[STATE]["params"])
  return ({k: restored[k] for k in on_device}, {k: np.asarray(restored[k]) for k in on_host})


def _pad_vocab(source: dict[str, Any], target: dict[str, Any]) -> None:
  """HF vocab-sized tensors (embeddings, logits bias) grow zero rows up to our padded vocab
  (model_builders.padded_vocab): ids past the tokenizer's never occur, so nothing changes."""
  for name, array in source.items():
    want = target.get(name)
    if (want is not None and array.ndim and tuple(array.shape[1:]) == tuple(want.shape[1:])
        and array.shape[0] < want.shape[0] == padded_vocab(array.shape[0])):
      pad = [(0, want.shape[0] - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
      source[name] = np.pad(array, pad)
