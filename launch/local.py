"""Runs N processes of one training run on this machine, each with its own fake CPU devices.

  python -m launch.local --processes=2 --devices_per_process=4 [--timeout=3600] -- \\
      --config=configs/gpt.py:tiny --workdir=runs/x --config.mesh.data=2 ...

The same code path as a pod (coordinator, per-process data slices, one orbax checkpoint
written by all processes), so multi-host behaviour is testable on one CPU. Process 0's
output streams to the console; the others' goes to files named on failure. The first
process to fail, Ctrl-C or the timeout stops them all; the exit code is the first failure's.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT_EXIT = 124
GRACE_S = 5.0


def free_port() -> int:
  """A loopback port that was free a moment ago (the coordinator binds it right after)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _die_with_parent() -> None:
  """Linux: a child gets SIGKILL if the launcher itself is killed (no orphaned trainers)."""
  if sys.platform == "linux":
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start(train_args: list[str], processes: int, devices: int, log_dir: str
          ) -> list[tuple[subprocess.Popen, str | None]]:
  coordinator = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
         "PYTHONUNBUFFERED": "1"}
  children = []
  for i in range(processes):
    cmd = [sys.executable, "-m", "pretrain.main", *train_args, f"--coordinator={coordinator}",
           f"--num_processes={processes}", f"--process_id={i}"]
    log = None if i == 0 else os.path.join(log_dir, f"process_{i}.log")
    with open(log or os.devnull, "w") as out:  # The child keeps its own copy of the fd.
      children.append((subprocess.Popen(
          cmd, env=env, stdout=out if log else None, stderr=subprocess.STDOUT if log else None,
          start_new_session=True, preexec_fn=_die_with_parent), log))  # noqa: PLW1509 (no threads)
  return children


def stop(children) -> None:
  """SIGTERM every process group still running, SIGKILL what is left after a grace period."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p, _ in children if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + GRACE_S
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
      time.sleep(0.1)


def _describe(code: int) -> str:
  return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def supervise(children, timeout_s: float) -> int:
  """Waits for all; on the first failure or the timeout stops the rest. Returns the exit code."""
  deadline = time.monotonic() + timeout_s
  while True:
    codes = [p.poll() for p, _ in children]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      i, code = failed[0]
      stop(children)
      log = children[i][1]
      tail = ""
      if log is not None:
        with open(log) as f:
          tail = "".join(f.readlines()[-20:])
      print(f"launch.local: process {i} failed ({_describe(code)}); stopped the others"
            + (f"\n--- last lines of {log} ---\n{tail}" if tail else ""), file=sys.stderr)
      return 128 - code if code < 0 else code
    if all(c == 0 for c in codes):
      return 0
    if time.monotonic() > deadline:
      stop(children)
      print(f"launch.local: timeout after {timeout_s:g} s; stopped all processes",
            file=sys.stderr)
      return TIMEOUT_EXIT
    time.sleep(0.2)


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
  parser.add_argument("--log_dir", default=None,
                      help="where processes 1.. write their output (default: a temp dir)")
  parser.add_argument("train_args", nargs="*", help="after --: the pretrain.main arguments")
  args = parser.parse_args(argv)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices_per_process must be >= 1")
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="launch_local_")
  os.makedirs(log_dir, exist_ok=True)
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _raise_interrupt)
  children = []
  try:
    children = start(args.train_args, args.processes, args.devices_per_process, log_dir)
    return supervise(children, args.timeout)
  except KeyboardInterrupt:
    stop(children)
    print("launch.local: interrupted; stopped all processes", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
