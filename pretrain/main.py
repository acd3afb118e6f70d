"""Entry point: flags -> train(config, workdir).

  python -m pretrain.main --config=configs/bert.py:tiny --workdir=runs/bert \\
      [--config.train.steps=200 ...] [--describe]

Rerunning the same command resumes from the latest checkpoint in --workdir.
Multi-process runs add each process's role (pretrain/distributed.py, launch/README.md):
  --distributed=auto  or  --coordinator=HOST:PORT --num_processes=N --process_id=I
Exit codes: 2 for bad flags, config or data (one line on stderr), 1 when the processes
of a run cannot reach each other in time.
"""
from __future__ import annotations

import sys

from pretrain import config as config_lib
from pretrain import distributed


def _fail(error: Exception, code: int) -> int:
  print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
  return code


def main(argv: list[str]) -> int:
  try:
    role, rest = distributed.parse_role(argv)
    config, workdir, switches = config_lib.parse_args(rest)
  except (config_lib.ConfigError, distributed.DistributedError, KeyError) as e:
    return _fail(e, 2)
  if "describe" in switches:
    print(config_lib.describe(config))
    return 0
  try:
    distributed.initialize(role)  # Before anything below asks jax for devices.
  except distributed.DistributedError as e:
    return _fail(e, 1)
  try:
    import jax

    from pretrain import train  # Heavy imports only after the flags are known good.
    config_lib.validate(config, jax.device_count())
    changed = config_lib.check_resumable(config, workdir)
  except (config_lib.ConfigError, KeyError) as e:
    return _fail(e, 2)
  if changed:
    print(f"resuming with changed settings: {', '.join(changed)}", flush=True)
  try:
    train.train(config, workdir)  # Raises ConfigError for bad data found while building.
    # Exit 0 only once every process has finished, its last checkpoint included.
    distributed.barrier("run_complete", role.init_timeout)
  except config_lib.ConfigError as e:
    return _fail(e, 2)
  except distributed.DistributedError as e:
    return _fail(e, 1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
