"""Shared test setup: a process-wide data cache so tokenizers and packed arrays are built
once, and the CPU platform only (with libtpu installed for AOT compiles, jax would otherwise
probe for a TPU in every test process; compile-only TPU topologies still work)."""
from __future__ import annotations

import os

# Before jax initialises anywhere in the test process.
os.environ.setdefault("PRETRAIN_CACHE", os.path.expanduser("~/.cache/pretrain"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
