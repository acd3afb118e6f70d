"""Bad input is a one-line error before compute is spent, and nothing already written is
touched (tests/test_configs.py holds the first cases of this list)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler
from PIL import Image

from pretrain import checkpoint, main as main_lib
from test_fault_tolerance import corrupt_checkpoint, fast_args, tree_digest
from test_train import ROOT, run_main


@pytest.mark.parametrize("recipe,args,expected", [
    ("gpt", ["--config.data.source=text_files", "--config.data.path=/no/such/*.txt"],
     "data.path='/no/such/*.txt': no files match"),
    ("gpt", ["--config.data.seq_len=128"], "data.seq_len=128 exceeds model.max_len=64"),
    ("gpt", ["--config.data.seq_len=0"], "data.seq_len=0: must be > 0"),
    ("gpt", ["--config.data.vocab_size=-5"], "data.vocab_size=-5: must be > 0"),
    ("gpt", ["--config.data.tokenizer=sentencepiece"], "data.tokenizer='sentencepiece'; valid:"),
    ("gpt", ["--config.train.steps=0"], "train.steps=0: must be > 0"),
    ("gpt", ["--config.optim.lr=-1"], "optim.lr=-1.0: must be > 0"),
    ("gpt", ["--config.optim.warmup_steps=1000"], "optim.warmup_steps=1000: must be in [0,"),
    ("gpt", ["--config.train.nonfinite=maybe"], "train.nonfinite='maybe'; valid: stop, skip"),
    ("gpt", ["--config.train.checkpoint_timeout_s=0"], "train.checkpoint_timeout_s=0.0: must be"),
    ("gpt", ["--config.mesh.data=3"], "has 3 devices but 1 are available"),
    ("gpt", ["--config.mesh.fsdp=0"], "mesh.fsdp=0: mesh sizes must be positive or -1"),
    ("gpt", ["--config.model.tie_embeddings=maybe"], "expected a bool (true/false)"),
    ("gpt", ["--config.optim.lr=fast"], "--config.optim.lr=fast: expected a float"),
    ("gpt", ["--config.sharding_rules=batch"], "expected a Python tuple literal"),
    ("mae", ["--config.model.patch_size=(5, 5)"], "(28, 28) is not divisible into patches (5, 5)"),
    ("mae", ["--config.data.source=image_folder", "--config.data.path=/no/dir"],
     "data.path='/no/dir': no such directory"),
])
def test_bad_config_is_one_line_before_any_work(tmp_path, capsys, recipe, args, expected):
  workdir = tmp_path / "run"
  assert run_main(f"configs/{recipe}.py:tiny", workdir, *args) == 2
  err = capsys.readouterr().err
  assert expected in err, err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert not workdir.exists()


def _one_line_error(capsys, argv: list[str], expected: str) -> None:
  assert main_lib.main(argv) == 2
  err = capsys.readouterr().err
  assert expected in err and err.count("\n") == 1, err


def test_unknown_recipe_variant(capsys, tmp_path):
  _one_line_error(capsys, [f"--config={ROOT}/configs/gpt.py:huge", f"--workdir={tmp_path}"],
                  "variant 'huge'; valid: tiny, small")


def test_workdir_that_is_a_file(capsys, tmp_path):
  (tmp_path / "run").write_text("not a directory")
  _one_line_error(capsys, [f"--config={ROOT}/configs/gpt.py:tiny", f"--workdir={tmp_path}/run"],
                  "exists and is not a directory")
  assert (tmp_path / "run").read_text() == "not a directory"


def test_workdir_under_a_file(capsys, tmp_path):
  """Where permissions do not bite (tests run as root), a file in the path still does."""
  (tmp_path / "file").write_text("")
  _one_line_error(capsys, [f"--config={ROOT}/configs/gpt.py:tiny",
                           f"--workdir={tmp_path}/file/run"], "is a file, not a directory")


def _images(folder, shapes) -> None:
  for i, shape in enumerate(shapes):
    os.makedirs(folder / f"class{i % 2}", exist_ok=True)
    Image.fromarray(np.full(shape, i, np.uint8)).save(folder / f"class{i % 2}" / f"{i}.png")


def _data_error(capsys, tmp_path, recipe: str, overrides: list[str], expected: str) -> None:
  """Errors that need the data: found by train() before anything is built or written."""
  workdir = tmp_path / "run"
  _one_line_error(capsys, [f"--config={ROOT}/configs/{recipe}.py:tiny", f"--workdir={workdir}",
                           f"--config.data.cache_dir={tmp_path}/cache", *overrides], expected)
  assert not workdir.exists()


def test_empty_data_file(capsys, tmp_path):
  (tmp_path / "empty.txt").write_text("")
  _data_error(capsys, tmp_path, "gpt", ["--config.data.source=text_files",
                                f"--config.data.path={tmp_path}/*.txt"],
              "the matching files hold no text")


def test_data_file_of_unknown_kind(capsys, tmp_path):
  (tmp_path / "data.csv").write_text("a,b\n")
  _data_error(capsys, tmp_path, "gpt", ["--config.data.source=text_files",
                                f"--config.data.path={tmp_path}/*.csv"],
              "text files must end in .txt or .jsonl")


@pytest.mark.parametrize("shapes,expected", [
    ([(28, 28), (28, 28), (32, 32)], "have different shapes [(28, 28), (32, 32)]"),
    ([(30, 30)] * 4, "(30, 30) is not divisible into patches (4, 4)"),
    ([], "no .png/.jpg/.jpeg images under"),
])
def test_bad_image_folder(capsys, tmp_path, shapes, expected):
  os.makedirs(tmp_path / "images" / "empty_class")
  _images(tmp_path / "images", shapes)
  _data_error(capsys, tmp_path, "mae", ["--config.data.source=image_folder",
                                f"--config.data.path={tmp_path}/images"], expected)


def test_batch_not_divisible_by_data_parallelism_on_8_devices(tmp_path):
  argv = [f"--config={ROOT}/configs/gpt.py:tiny", f"--workdir={tmp_path}/run",
          "--config.train.global_batch=12"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", "pretrain.main", *argv], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: micro-batch 12 (train.global_batch / train.grad_accum) is not divisible by mesh "
      "data x fsdp = 8")
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory):
  """A finished 5-step run with one checkpoint, copied by the tests below."""
  workdir = tmp_path_factory.mktemp("five")
  assert run_main("configs/gpt.py:tiny", workdir, *fast_args(5, 5)) == 0
  return workdir


def test_corrupt_checkpoint_without_fallback(tmp_path, five_steps):
  """The only checkpoint does not restore: a clear error and nothing moved or deleted."""
  subprocess.run(["cp", "-a", str(five_steps), str(tmp_path / "run")], check=True)
  corrupt_checkpoint(tmp_path / "run" / "checkpoints" / "5")
  before = tree_digest(tmp_path / "run")
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in \S+ restores \(step 5: "
                     r".*\); nothing was moved or deleted"):
    run_main("configs/gpt.py:tiny", tmp_path / "run", *fast_args(10, 5))
  assert before.items() <= tree_digest(tmp_path / "run").items()  # all there, unchanged


def test_disk_full_during_save(tmp_path, five_steps, monkeypatch):
  """ENOSPC while writing step 10 fails the run naming it; step 5 stays as it was."""
  subprocess.run(["cp", "-a", str(five_steps), str(tmp_path / "run")], check=True)
  before = tree_digest(tmp_path / "run" / "checkpoints" / "5")

  async def disk_full(self, item, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
  with pytest.raises(checkpoint.CheckpointError, match=r"saving checkpoint step 10 to \S+ failed "
                     r"\(OSError: \[Errno 28\] No space left on device\); earlier steps"):
    run_main("configs/gpt.py:tiny", tmp_path / "run", *fast_args(10, 5))
  assert tree_digest(tmp_path / "run" / "checkpoints" / "5") == before
  assert "10" not in os.listdir(tmp_path / "run" / "checkpoints")
