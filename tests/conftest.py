"""Shared test setup: a process-wide data cache so tokenizers and packed arrays are built once."""
from __future__ import annotations

import os

# Before jax initialises anywhere in the test process.
os.environ.setdefault("PRETRAIN_CACHE", os.path.expanduser("~/.cache/pretrain"))
