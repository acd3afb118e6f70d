"""Multi-process start-up and barriers that fail with a clear error instead of hanging.

Every process of a run is started with the same command plus its role. Flags win over env:

  --distributed=auto        PRETRAIN_DISTRIBUTED=auto    let jax detect the cluster
                                                          (Cloud TPU VM pods, SLURM, ...)
  --coordinator=HOST:PORT   PRETRAIN_COORDINATOR         address of process 0's service
  --num_processes=N         PRETRAIN_NUM_PROCESSES
  --process_id=I            PRETRAIN_PROCESS_ID          0 .. N-1; process 0 hosts the service
  --init_timeout=SECONDS    PRETRAIN_INIT_TIMEOUT        default 300

With none of them the run is single-process and nothing is initialised. Fake CPU devices
per process come from jax's own env var `JAX_NUM_CPU_DEVICES` (it overrides `XLA_FLAGS`'
host device count); CPU collectives across processes use gloo with no extra setting.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

FLAGS = ("distributed", "coordinator", "num_processes", "process_id", "init_timeout")
DEFAULT_INIT_TIMEOUT = 300


class DistributedError(RuntimeError):
  """The processes of a run could not find or wait for each other."""


@dataclasses.dataclass(frozen=True)
class Role:
  """How this process joins the run: `auto`, explicit (coordinator set) or single."""

  auto: bool = False
  coordinator: str | None = None
  num_processes: int = 1
  process_id: int = 0
  init_timeout: int = DEFAULT_INIT_TIMEOUT

  @property
  def multi_process(self) -> bool:
    return self.auto or self.coordinator is not None


def _int(name: str, text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise DistributedError(f"--{name}={text!r}: expected an integer") from None


def parse_role(argv: list[str], environ=os.environ) -> tuple[Role, list[str]]:
  """Takes this module's flags out of argv (env fills the ones not given); returns the rest."""
  given, rest = {}, []
  for arg in argv:
    name, eq, value = arg.partition("=")
    if name[2:] in FLAGS and name.startswith("--") and eq:
      given[name[2:]] = value
    else:
      rest.append(arg)
  for flag in FLAGS:
    env = f"PRETRAIN_{flag.upper()}"
    if flag not in given and environ.get(env):
      given[flag] = environ[env]
  mode = given.pop("distributed", "")
  if mode not in ("", "auto"):
    raise DistributedError(f"--distributed={mode!r}: the only value is 'auto' (explicit roles "
                           "use --coordinator, --num_processes, --process_id)")
  role = Role(auto=mode == "auto", coordinator=given.get("coordinator") or None,
              num_processes=_int("num_processes", given.get("num_processes", "1")),
              process_id=_int("process_id", given.get("process_id", "0")),
              init_timeout=_int("init_timeout", given.get("init_timeout",
                                                          str(DEFAULT_INIT_TIMEOUT))))
  if role.auto and role.coordinator:
    raise DistributedError("--distributed=auto detects the coordinator; do not also set "
                           "--coordinator")
  if role.coordinator is None and not role.auto and (role.num_processes, role.process_id) != (1, 0):
    raise DistributedError(f"--num_processes={role.num_processes} --process_id="
                           f"{role.process_id} need --coordinator=HOST:PORT")
  if role.coordinator is not None:
    host, _, port = role.coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise DistributedError(f"--coordinator={role.coordinator!r}: expected HOST:PORT")
    if not 0 <= role.process_id < role.num_processes:
      raise DistributedError(f"--process_id={role.process_id} not in [0, --num_processes="
                             f"{role.num_processes})")
  if role.init_timeout <= 0:
    raise DistributedError(f"--init_timeout={role.init_timeout}: must be > 0 seconds")
  return role, rest


def _wait_for_port(address: str, timeout_s: float) -> None:
  """Waits until the coordinator accepts TCP connections.

  jax's client aborts the whole process (no Python exception) when the coordinator does not
  answer, so a non-coordinator process checks the port first and raises a readable error.
  """
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
        return
    except OSError:
      if time.monotonic() >= deadline:
        raise DistributedError(
            f"coordinator {address} did not answer within {timeout_s:g} s "
            f"(--init_timeout); is process 0 running and is the address reachable from "
            f"this host?") from None
      time.sleep(0.2)


def initialize(role: Role) -> None:
  """Joins the run; call before anything touches jax devices. No-op for a single process."""
  import jax

  if not role.multi_process or jax.distributed.is_initialized():
    return

  timeout = role.init_timeout
  if role.auto:
    print(f"distributed: auto-detecting the cluster (timeout {timeout} s)", file=sys.stderr,
          flush=True)
    jax.distributed.initialize(initialization_timeout=timeout)
    return
  print(f"distributed: process {role.process_id}/{role.num_processes} joining coordinator "
        f"{role.coordinator} (timeout {timeout} s)", file=sys.stderr, flush=True)
  start = time.monotonic()
  if role.process_id != 0:
    _wait_for_port(role.coordinator, timeout)
  # What is left of the budget: a process that never joins makes jax abort (DEADLINE_EXCEEDED
  # at RegisterTask) within the same timeout rather than hang.
  remaining = max(1, int(timeout - (time.monotonic() - start)))
  jax.distributed.initialize(coordinator_address=role.coordinator,
                             num_processes=role.num_processes, process_id=role.process_id,
                             initialization_timeout=remaining)


_barrier_counts: dict[str, int] = {}


def barrier(name: str, timeout_s: float) -> None:
  """Blocks until every process reaches `name`; raises DistributedError after `timeout_s`.

  Uses the coordination service (not device collectives), so it works while devices are busy.
  Each call gets a fresh id, so the same name may be used again (e.g. once per checkpoint).
  """
  import jax

  # The client has no public accessor (orbax reaches it the same way).
  from jax._src import distributed as jax_distributed

  client = jax_distributed.global_state.client
  if client is None or jax.process_count() == 1:
    return
  count = _barrier_counts.get(name, 0)
  _barrier_counts[name] = count + 1
  try:
    client.wait_at_barrier(f"{name}:{count}", int(timeout_s * 1000))
  except jax.errors.JaxRuntimeError as e:
    raise DistributedError(f"barrier {name!r} timed out after {timeout_s:g} s on process "
                           f"{jax.process_index()}: another process is slow, stuck or dead "
                           f"({str(e).splitlines()[0]})") from None
