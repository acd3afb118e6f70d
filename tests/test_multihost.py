"""Multi-process runs on one CPU: 2 processes x 4 fake devices train like 1 x 8, write one
checkpoint that resumes on another topology, read disjoint data slices, and fail fast when
the coordinator never comes up. Launcher scripts that cannot run here are syntax-checked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from launch.local import free_port
from pretrain import distributed
from pretrain.data import pipeline
from pretrain.data.sources import PackedTextSource
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SAVED = 6, 4
TRAIN = ["--config=configs/gpt.py:tiny", f"--config.train.steps={STEPS}",
         "--config.train.log_every=1", "--config.train.eval_every=0",
         f"--config.train.checkpoint_every={SAVED}", "--config.optim.warmup_steps=1",
         "--config.train.peak_flops_per_device=1e12"]  # Skips the CPU peak measurement.
MESH_222 = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
MESH_221 = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1"]
RTOL = 1e-5


def _run(cmd: list[str], devices: int | None = None, timeout: int = 240):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        check=False)


def train_single(workdir, devices: int, *extra: str) -> None:
  proc = _run([sys.executable, "-m", "pretrain.main", f"--workdir={workdir}", *TRAIN, *extra],
              devices)
  assert proc.returncode == 0, proc.stderr[-3000:]


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


def resume_from(source, workdir, step: int):
  """A fresh workdir holding only `source`'s checkpoint `step`."""
  os.makedirs(workdir / "checkpoints")
  shutil.copytree(source / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 2 x 4 multi-process run and the uninterrupted 1 x 8 run of the same steps."""
  root = tmp_path_factory.mktemp("multihost")
  proc = _run([sys.executable, "-m", "launch.local", "--processes=2", "--devices_per_process=4",
               "--timeout=200", "--", f"--workdir={root / 'multi'}", *TRAIN, *MESH_222])
  assert proc.returncode == 0, proc.stderr[-3000:]
  train_single(root / "single", 8, *MESH_222)
  return root


def test_two_processes_match_one(runs):
  """2 processes x 4 devices give the per-step losses of 1 process x 8 (same 2x2x2 mesh)."""
  multi, single = losses(runs / "multi"), losses(runs / "single")
  assert sorted(multi) == sorted(single) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([multi[s] for s in single], list(single.values()), rtol=RTOL)
  # Both processes wrote their shards into one checkpoint directory.
  assert sorted(os.listdir(runs / "multi" / "checkpoints")) == [str(SAVED), str(STEPS)]


@pytest.mark.parametrize("devices,mesh", [(8, MESH_222), (4, MESH_221)], ids=["1x8", "1x4"])
def test_checkpoint_of_two_processes_resumes_on_one(runs, tmp_path, devices, mesh):
  """The 2-process checkpoint resumes with 1 process (8 devices, or 4 with tensor=1) and
  continues with the uninterrupted run's losses."""
  workdir = resume_from(runs / "multi", tmp_path / "resumed", SAVED)
  train_single(workdir, devices, *mesh)
  got, want = losses(workdir), losses(runs / "single")
  assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(got)],
                             rtol=RTOL)


# Run by each of 2 processes: its rows of global batch 0, the assembled batch, barriers.
READ_SLICE = """
import json, sys
import numpy as np
from pretrain import distributed
distributed.initialize(distributed.parse_role(sys.argv[1:])[0])
import jax
from jax.experimental import multihost_utils
from pretrain import sharding
from pretrain.data import pipeline
from pretrain.data.sources import PackedTextSource
from pretrain.data.sources import PackedTextSource
source = PackedTextSource({"tokens": np.arange(40, dtype=np.int32)[:, None]})
it = pipeline.make_iterator(source, None, seed=0, global_batch=8, num_threads=0, prefetch=0,
                            process_index=jax.process_index(), process_count=jax.process_count())
local = next(it)
mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
whole = multihost_utils.process_allgather(sharding.global_batch(local, mesh)["tokens"], tiled=True)
out = {"local": local["tokens"][:, 0].tolist(), "global": whole[:, 0].tolist()}
distributed.barrier("both", 60)
if jax.process_index() == 1:  # Process 0 never comes: a clear error, not a hang.
  try:
    distributed.barrier("process_1_only", 2)
  except distributed.DistributedError as e:
    out["barrier_error"] = str(e)
print(json.dumps(out))
"""


def test_each_process_reads_its_own_contiguous_slice():
  """In a real 2-process run each process reads only its half of the global batch, and the
  halves assemble into the batch one process would read (test_data.py checks more cases).
  A barrier that one process never reaches times out with a clear error."""
  coordinator = f"--coordinator=127.0.0.1:{free_port()}"
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
  procs = [subprocess.Popen([sys.executable, "-c", READ_SLICE, coordinator, "--num_processes=2",
                             f"--process_id={i}", "--init_timeout=60"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  single = next(pipeline.make_iterator(
      PackedTextSource({"tokens": np.arange(40, dtype=np.int32)[:, None]}), None,
      seed=0, global_batch=8, process_index=0, process_count=1, num_threads=0, prefetch=0))
  want = single["tokens"][:, 0].tolist()
  assert outs[0]["local"] == want[:4] and outs[1]["local"] == want[4:]
  assert outs[0]["global"] == outs[1]["global"] == want
  assert "barrier 'process_1_only' timed out after 2 s on process 1" in outs[1]["barrier_error"]


def test_role_from_flags_then_env():
  env = {"PRETRAIN_COORDINATOR": "10.0.0.1:1234", "PRETRAIN_NUM_PROCESSES": "4",
         "PRETRAIN_PROCESS_ID": "3"}
  role, rest = distributed.parse_role(["--config=c", "--process_id=2"], env)
  assert rest == ["--config=c"]
  assert (role.coordinator, role.num_processes, role.process_id) == ("10.0.0.1:1234", 4, 2)
  assert distributed.parse_role(["--distributed=auto"], {})[0].auto
  assert not distributed.parse_role([], {})[0].multi_process
  for bad, message in ((["--num_processes=2", "--process_id=1"], "need --coordinator"),
                       (["--coordinator=h:1", "--num_processes=2", "--process_id=2"], "not in"),
                       (["--coordinator=nohost"], "HOST:PORT"),
                       (["--distributed=yes"], "only value is 'auto'")):
    with pytest.raises(distributed.DistributedError, match=message):
      distributed.parse_role(bad, {})


def _join(process_id: int, timeout_s: int):
  start = time.monotonic()
  proc = _run([sys.executable, "-m", "pretrain.main", "--config=configs/gpt.py:tiny",
               "--workdir=unused", f"--coordinator=127.0.0.1:{free_port()}",
               "--num_processes=2", f"--process_id={process_id}",
               f"--init_timeout={timeout_s}"], timeout=120)
  return proc, time.monotonic() - start


def test_missing_coordinator_is_a_clear_error_within_the_timeout():
  """Process 1 of 2 with no process 0: a one-line error naming the coordinator, no hang."""
  proc, elapsed = _join(1, 5)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "error: coordinator 127.0.0.1:" in proc.stderr and "within 5 s" in proc.stderr
  assert elapsed < 5 + 30  # The timeout plus interpreter start-up on a loaded machine.


def test_missing_peer_aborts_within_the_timeout():
  """Process 0 of 2 whose peer never joins: jax aborts after the timeout (no hang)."""
  proc, elapsed = _join(0, 5)
  assert proc.returncode != 0
  assert "joining coordinator 127.0.0.1:" in proc.stderr and "DEADLINE_EXCEEDED" in proc.stderr
  assert elapsed < 5 + 30


def test_cluster_scripts_parse():
  """The TPU pod and SLURM scripts cannot run here; at least their syntax is checked."""
  for script in ("launch/tpu_pod.sh", "launch/slurm.sbatch"):
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, (script, proc.stderr)
