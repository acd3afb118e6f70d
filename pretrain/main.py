"""Entry point: flags -> train(config, workdir).

  python -m pretrain.main --config=configs/bert.py:tiny --workdir=runs/bert \\
      [--config.train.steps=200 ...] [--describe]

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""
from __future__ import annotations

import sys

from pretrain import config as config_lib


def main(argv: list[str]) -> int:
  try:
    config, workdir, switches = config_lib.parse_args(argv)
    if "describe" in switches:
      print(config_lib.describe(config))
      return 0
    import jax
    from pretrain import train  # Heavy imports only after the flags are known good.
    config_lib.validate(config, jax.device_count())
    changed = config_lib.check_resumable(config, workdir)
  except (config_lib.ConfigError, KeyError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  if changed:
    print(f"resuming with changed settings: {', '.join(changed)}", flush=True)
  train.train(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
