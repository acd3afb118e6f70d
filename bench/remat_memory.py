"""AOT temp memory per chip of a scanned / unscanned stack under each remat policy.

  python -m bench.remat_memory      (needs the `aot` extra: libtpu's compile-only devices)

Compiles the trainer's step for a 4-layer GPT-2-small-width model (bf16, 8 x 256 tokens) on
v5p-8 and prints the compiler's temp bytes, the figure remat exists to lower.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices need no TPU

from pretrain import aot  # noqa: E402
from pretrain import config as config_lib  # noqa: E402

OVERRIDES = {"topology": "v5p-8", "model.dtype": "bfloat16", "train.global_batch": "8",
             "data.seq_len": "256", "model.num_layers": "4"}
REMATS = ("none", "dots", "full")


def temp_gib(scan: bool, remat: str) -> float:
  config = config_lib.load_config_file("configs/gpt.py:small")
  for key, value in {**OVERRIDES, "model.scan_layers": str(scan), "model.remat": remat}.items():
    config_lib.apply_override(config, key, value)
  return aot.compile_step(config).temp / 2**30


def main() -> int:
  print("temp GiB/chip  " + "  ".join(f"{r:>6}" for r in REMATS))
  for scan in (False, True):
    row = [temp_gib(scan, remat) for remat in REMATS]
    print(f"{'scanned' if scan else 'unscanned':<14}" + "  ".join(f"{t:6.3f}" for t in row),
          flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
