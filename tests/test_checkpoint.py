"""init_from loads exactly the params whose path and shape match, and nothing else."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(params):
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": {},
          "rng": jnp.zeros((2,), jnp.uint32)}


@pytest.fixture
def source_run(tmp_path):
  params = {"stack": {"w": jnp.full((2, 3), 1.0), "b": jnp.full((3,), 2.0)},
            "head": {"w": jnp.full((3, 4), 3.0)}, "only_in_source": jnp.ones(5)}
  ckpt = checkpoint.Checkpointer(str(tmp_path / "src"), keep=1)
  ckpt.save(7, _state(params), {"global_batches": 7})
  ckpt.wait()
  ckpt.close()
  return tmp_path / "src"


def test_loads_matching_paths_and_reports_the_rest(source_run):
  target = {"stack": {"w": jnp.zeros((2, 3)), "b": jnp.zeros((3,))},
            "head": {"w": jnp.zeros((3, 5))},            # shape differs: stays fresh
            "new": {"w": jnp.zeros((2,))}}               # not in source: stays fresh
  loaded, report = checkpoint.load_params(str(source_run), -1, "", target)
  np.testing.assert_array_equal(loaded["stack"]["w"], 1.0)
  np.testing.assert_array_equal(loaded["stack"]["b"], 2.0)
  np.testing.assert_array_equal(loaded["head"]["w"], 0.0)
  np.testing.assert_array_equal(loaded["new"]["w"], 0.0)
  assert sorted(report.matched) == ["stack/b", "stack/w"]
  assert report.shape_mismatch == ["head/w"] and report.missing == ["new/w"]
  assert report.unused == ["only_in_source"]
  assert jax.tree.structure(loaded) == jax.tree.structure(target)


def test_subtree_limits_what_is_loaded(source_run):
  target = {"stack": {"w": jnp.zeros((2, 3)), "b": jnp.zeros((3,))},
            "head": {"w": jnp.zeros((3, 4))}}
  loaded, report = checkpoint.load_params(str(source_run), 7, "head", target)
  np.testing.assert_array_equal(loaded["head"]["w"], 3.0)
  np.testing.assert_array_equal(loaded["stack"]["w"], 0.0)
  assert report.matched == ["head/w"]


def test_missing_step_names_the_available_ones(source_run):
  with pytest.raises(FileNotFoundError, match=r"available: \[7\]"):
    checkpoint.load_params(str(source_run), 3, "", {"x": jnp.zeros(1)})
