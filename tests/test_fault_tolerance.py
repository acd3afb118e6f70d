"""Preemption, non-finite steps, corrupt and slow checkpoints, kill -9 at random times, and
no pickle on any load path."""
from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import objectives  # noqa: F401  (registers objectives)
from pretrain import checkpoint, train
from pretrain.registry import OBJECTIVES
from test_train import ROOT, run_main

RECIPE = "configs/gpt.py:tiny"
FAST = ("--config.train.eval_every=0", "--config.train.peak_flops_per_device=1e12",
        "--config.optim.warmup_steps=1")


def fast_args(steps: int, checkpoint_every: int, log_every: int = 1) -> list[str]:
  return [*FAST, f"--config.train.steps={steps}", f"--config.train.log_every={log_every}",
          f"--config.train.checkpoint_every={checkpoint_every}"]


def tree_digest(path) -> dict[str, str]:
  """Relative path -> sha256 of every file under `path` (to prove nothing changed)."""
  digest = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def poison_step(monkeypatch, step: int) -> None:
  """Makes the loss and every gradient NaN at 1-based `step` of a seed-0 run. The trainer's
  step rng is fold_in(key(seed), step - 1), so a wrapped loss_fn can recognise the step."""
  objective = OBJECTIVES.get("causal_lm")
  original = objective.loss_fn
  bad_rng = jax.random.fold_in(jax.random.key_data(jax.random.key(0)), step - 1)

  def loss_fn(params, batch, rng, **kwargs):
    loss, aux = original(params, batch, rng, **kwargs)
    return loss * jnp.where(jnp.all(rng == bad_rng), jnp.nan, 1.0), aux

  monkeypatch.setattr(objective, "loss_fn", loss_fn)


def test_nonfinite_stop_names_the_step_and_saves_nothing(tmp_path, monkeypatch):
  """train.nonfinite=stop: the run fails at the next host check naming the bad step, and
  no checkpoint is written or changed after it."""
  assert run_main(RECIPE, tmp_path, *fast_args(5, 5)) == 0
  before = tree_digest(tmp_path / "checkpoints")
  poison_step(monkeypatch, 7)
  with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step 7 .*"
                     r"train.nonfinite=stop.* untouched"):
    run_main(RECIPE, tmp_path, *fast_args(12, 5, log_every=4))  # checks at 8, 10, 12
  assert tree_digest(tmp_path / "checkpoints") == before


def test_nonfinite_skip_keeps_params_and_counts(tmp_path, monkeypatch):
  """train.nonfinite=skip: the bad step is undone and counted, training goes on."""
  poison_step(monkeypatch, 3)
  assert run_main(RECIPE, tmp_path, *fast_args(6, 6), "--config.train.nonfinite=skip") == 0
  records = {r["step"]: r for r in train.read_metrics(str(tmp_path))}
  assert [records[s]["nonfinite_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
  assert np.isnan(records[3]["loss"]) and np.isfinite(records[6]["loss"])
  assert records[6]["loss"] < records[1]["loss"]


def corrupt_checkpoint(step_dir) -> str:
  """Truncates the largest array file of a committed checkpoint; returns its path."""
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(10)
  return victim


def test_corrupt_latest_checkpoint_falls_back_and_is_kept(tmp_path, capsys):
  """A truncated latest step is moved aside (not deleted) with a warning; the run resumes
  from the previous step and saves that step number again."""
  assert run_main(RECIPE, tmp_path, *fast_args(10, 5)) == 0
  victim = corrupt_checkpoint(tmp_path / "checkpoints" / "10")
  capsys.readouterr()
  assert run_main(RECIPE, tmp_path, *fast_args(12, 5)) == 0
  out, err = capsys.readouterr()
  assert re.search(r"warning: checkpoint \S+/checkpoints/10 does not restore .*moved to "
                   r"\S+/corrupt-10-\d+T\d+, resuming from step 5", err), err
  assert f"resumed from {tmp_path}/checkpoints/5" in out
  moved, = glob.glob(str(tmp_path / "checkpoints" / "corrupt-10-*"))
  assert os.path.getsize(os.path.join(moved, os.path.relpath(victim, tmp_path / "checkpoints"
                                                             / "10"))) == 10
  assert {"5", "10", "12"} <= set(os.listdir(tmp_path / "checkpoints"))
  assert [r["step"] for r in train.read_metrics(str(tmp_path))][-7:] == list(range(6, 13))


def test_commit_timeout_names_step_and_directory(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, timeout_s=0.2)
  real_wait = ckpt._manager.wait_until_finished
  monkeypatch.setattr(ckpt._manager, "wait_until_finished", lambda: time.sleep(0.6))
  ckpt.save(3, {"w": jnp.ones(4)}, {"global_batches": 3})
  with pytest.raises(checkpoint.CheckpointError,
                     match=rf"checkpoint step 3 did not commit to {tmp_path}/checkpoints "
                           r"within train.checkpoint_timeout_s=0.2s"):
    ckpt.wait()
  time.sleep(0.6)
  real_wait()
  ckpt._manager.close()


def _env(cache) -> dict[str, str]:
  """CPU only (no TPU probing), and one persistent compile cache for all the reruns."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _command(workdir, args) -> list[str]:
  return [sys.executable, "-m", "pretrain.main", f"--config={RECIPE}", f"--workdir={workdir}",
          *args]


def _logged_step(workdir) -> int:
  """The highest step in metrics.jsonl so far (a last line may be half written)."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      steps = re.findall(r'^\{"step": (\d+)', f.read(), re.M)
  except FileNotFoundError:
    return 0
  return max(map(int, steps), default=0)


def _start_and_wait_for(workdir, args, env, step: int) -> subprocess.Popen:
  """Starts a run and returns once it has logged `step` (or exited)."""
  proc = subprocess.Popen(_command(workdir, args), cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 120
  while _logged_step(workdir) < step and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  return proc


def test_sigterm_saves_current_step_and_rerun_resumes(tmp_path):
  env = _env(tmp_path / "cache")
  workdir = tmp_path / "run"
  proc = _start_and_wait_for(workdir, fast_args(500, 1000), env, 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == train.PREEMPTED_EXIT_CODE, out[-2000:]
  saved = int(re.search(r"preempted \(SIGTERM\): saved step (\d+) to", out).group(1))
  assert saved >= 3 and os.listdir(workdir / "checkpoints") == [str(saved)]
  rerun = subprocess.run(_command(workdir, fast_args(saved + 2, 1000)), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"resumed from {workdir}/checkpoints/{saved}" in rerun.stdout
  assert _logged_step(workdir) == saved + 2


def _final_state(workdir, step: int):
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"),
                                  item_names=(checkpoint.STATE, checkpoint.DATA))
  restored = manager.restore(step, args=ocp.args.Composite(
      **{checkpoint.STATE: ocp.args.StandardRestore(), checkpoint.DATA: ocp.args.JsonRestore()}))
  manager.close()
  return restored[checkpoint.STATE], restored[checkpoint.DATA]


def test_kill9_at_random_times_matches_uninterrupted_run(tmp_path):
  """SIGKILL four times at seeded random steps (each past the last one seen), rerun until
  done: the final state is bitwise the uninterrupted run's."""
  env, args = _env(tmp_path / "cache"), fast_args(40, 5)
  full, killed = tmp_path / "full", tmp_path / "killed"
  assert subprocess.run(_command(full, args), cwd=ROOT, env=env, capture_output=True,
                        timeout=300).returncode == 0
  rng = random.Random(0)
  for _ in range(4):
    proc = _start_and_wait_for(killed, args, env, _logged_step(killed) + rng.randint(2, 8))
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
  last = subprocess.run(_command(killed, args), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert last.returncode == 0, last.stdout[-2000:]
  want, got = _final_state(full, 40), _final_state(killed, 40)
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SOURCE_DIRS = ("pretrain", "models", "objectives", "configs", "bench", "launch")
UNSAFE = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|cloudpickle|dill|joblib)\b|"
                    r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(|"
                    r"np\.load\((?![^)]*allow_pickle=False)", re.M)


def test_no_pickle_on_any_load_path():
  """Loads are orbax (tensorstore + JSON), JSON and np.load(allow_pickle=False) only."""
  hits = []
  for folder in SOURCE_DIRS:
    for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
      with open(path) as f:
        hits += [f"{os.path.relpath(path, ROOT)}: {m.group(0)}" for m in UNSAFE.finditer(f.read())]
  assert not hits
