"""End to end through `pretrain.main`: each tiny recipe trains, resumes exactly, and the
same steps on 8 sharded devices match one device."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pretrain import main as main_lib
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("configs/bert.py:tiny", "configs/gpt.py:tiny", "configs/mae.py:tiny")


def run_main(recipe: str, workdir, *overrides: str) -> int:
  return main_lib.main([f"--config={os.path.join(ROOT, recipe.split(':')[0])}:"
                        f"{recipe.split(':')[1]}", f"--workdir={workdir}", *overrides])


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


@pytest.fixture(scope="module", params=RECIPES)
def trained(request, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  assert run_main(request.param, workdir, "--config.train.log_every=5") == 0
  return request.param, workdir


def test_loss_falls_and_outputs_written(trained):
  """Training lowers the loss; metrics.jsonl, TensorBoard events and checkpoints exist."""
  recipe, workdir = trained
  curve = losses(workdir)
  steps = sorted(curve)
  first, last = np.mean([curve[s] for s in steps[:2]]), np.mean([curve[s] for s in steps[-2:]])
  assert last < first - 0.02 * abs(first), (recipe, curve)
  records = read_metrics(str(workdir))
  logged = [r for r in records if "loss" in r]
  for key in ("step", "loss", "mfu", "lr", "grad_norm"):
    assert all(key in r for r in logged), key
  assert any(k.endswith("_per_sec") for k in logged[-1])
  assert any(k.startswith("eval_loss") for r in records for k in r)
  assert os.listdir(workdir / "tensorboard")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["30", "60"]


def test_rerun_resumes_and_does_nothing_when_done(trained):
  """Rerunning a finished run's command restores step 60 and trains no further."""
  recipe, workdir = trained
  before = len(read_metrics(str(workdir)))
  assert run_main(recipe, workdir) == 0
  assert len(read_metrics(str(workdir))) == before


def test_resume_reproduces_losses(tmp_path):
  """Resuming from step 20 gives the same per-step losses as the uninterrupted run."""
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  args = ("--config.train.steps=30", "--config.train.log_every=1",
          "--config.train.checkpoint_every=20", "--config.train.eval_every=0")
  assert run_main("configs/gpt.py:tiny", full, *args) == 0
  os.makedirs(resumed / "checkpoints")
  shutil.copytree(full / "checkpoints" / "20", resumed / "checkpoints" / "20")
  assert run_main("configs/gpt.py:tiny", resumed, *args) == 0
  want, got = losses(full), losses(resumed)
  assert sorted(got) == list(range(21, 31))
  np.testing.assert_array_equal([got[s] for s in sorted(got)], [want[s] for s in sorted(got)])


def test_init_from_loads_params_and_reports(tmp_path, capsys):
  """init_from copies matching params from another run and reports the fresh ones."""
  source, target = tmp_path / "source", tmp_path / "target"
  base = ("--config.train.steps=2", "--config.train.eval_every=0", "--config.optim.warmup_steps=1")
  assert run_main("configs/bert.py:tiny", source, *base) == 0
  capsys.readouterr()
  assert run_main("configs/bert.py:tiny", target, *base, f"--config.init_from.path={source}",
                  "--config.init_from.subtree=stack") == 0
  out = capsys.readouterr().out
  assert "init_from:" in out and "0 reshaped->fresh" in out
  assert "fresh (not in source)" not in out  # same architecture: everything under stack matched


def _run_in_subprocess(code: str, devices: int):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("recipe", ["configs/gpt.py:tiny", "configs/mae.py:tiny"])
def test_eight_sharded_devices_match_one(tmp_path, recipe):
  """data=2 x fsdp=2 x tensor=2 on 8 fake CPU devices gives the 1-device losses."""
  args = ["--config.train.steps=4", "--config.train.log_every=1", "--config.train.eval_every=0",
          "--config.optim.warmup_steps=1"]
  assert run_main(recipe, tmp_path / "one", *args) == 0
  sharded = args + ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
  argv = [f"--config={recipe}", f"--workdir={tmp_path / 'eight'}", *sharded]
  code = f"import sys; from pretrain import main; sys.exit(main.main({argv!r}))"
  _run_in_subprocess(code, devices=8)
  one, eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
  assert sorted(one) == sorted(eight) == [1, 2, 3, 4]
  np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=2e-4)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
  """2 micro-batches of 8 follow the same loss curve as one batch of 16."""
  args = ("--config.train.steps=3", "--config.train.log_every=1", "--config.train.eval_every=0",
          "--config.optim.warmup_steps=1")
  assert run_main("configs/gpt.py:tiny", tmp_path / "one", *args) == 0
  assert run_main("configs/gpt.py:tiny", tmp_path / "accum", *args,
                  "--config.train.grad_accum=2") == 0
  one, accum = losses(tmp_path / "one"), losses(tmp_path / "accum")
  # Micro-batch losses are averaged per micro-batch, so token-count differences between
  # the halves (document boundaries) allow a small mismatch; a wrong update is far larger.
  np.testing.assert_allclose([accum[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)],
                             rtol=2e-3)


def test_bfloat16_compute_trains(tmp_path):
  """bf16 compute (f32 params) trains, and its first loss is close to f32's."""
  args = ("--config.train.steps=20", "--config.train.log_every=1", "--config.train.eval_every=0")
  assert run_main("configs/gpt.py:tiny", tmp_path / "f32", *args) == 0
  assert run_main("configs/gpt.py:tiny", tmp_path / "bf16", *args,
                  "--config.model.dtype=bfloat16") == 0
  f32, bf16 = losses(tmp_path / "f32"), losses(tmp_path / "bf16")
  assert abs(bf16[1] - f32[1]) < 0.05 * f32[1]
  assert np.mean([bf16[s] for s in (19, 20)]) < np.mean([bf16[s] for s in (1, 2)]) - 0.3


def test_rerun_with_another_model_is_refused_before_work(trained, capsys):
  """A workdir's checkpoints belong to one model: another one is a clear error."""
  recipe, workdir = trained
  listing = sorted(os.listdir(workdir / "checkpoints"))
  assert run_main(recipe, workdir, "--config.model.dtype=bfloat16", "--config.seed=3") == 2
  err = capsys.readouterr().err
  assert "holds a run with different model.dtype, seed" in err and "init_from" in err
  assert sorted(os.listdir(workdir / "checkpoints")) == listing
