"""Where built and downloaded data live. Its own module, free of imports from the rest of
the package, so that data helpers that objectives import at load time can use it without
an import cycle through the pipeline."""
from __future__ import annotations

import os


def cache_dir(cfg) -> str:
  """`data.cache_dir`, else $PRETRAIN_CACHE, else ~/.cache/pretrain."""
  return (cfg.get("cache_dir") or os.environ.get("PRETRAIN_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "pretrain"))
