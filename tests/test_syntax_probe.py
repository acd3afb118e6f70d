"""Layer-wise syntax probing (AST-Probe): the syntactic distances by hand, the structural
probe on planted and on unrelated features, and the evaluator on a tiny code model."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from pretrain import config as config_lib, sharding, train
from pretrain.evaluation import ast_probe, evaluators, probes
from pretrain.evaluation.syntax import syntactic_distances
from pretrain.registry import OBJECTIVES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_syntactic_distances_by_hand():
  # Module > Assign(x, =, BinOp(a, +, b)): heights Name 1, BinOp 2, Assign 3.
  t = syntactic_distances("x = a + b\n")
  assert t.spans == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
  np.testing.assert_array_equal(t.distances, [3, 3, 2, 2])
  # FunctionDef 5 > Return 4 > BinOp(a * (...)) 3 > BinOp(b + 1) 2; the parentheses belong
  # to the outer BinOp (the inner node's span is `b + 1`); `arguments` has no span, so `(`,
  # `)` and `:` of the signature hang under the FunctionDef.
  t = syntactic_distances("def f(a):\n    return a * (b + 1)\n")
  np.testing.assert_array_equal(t.distances, [5, 5, 5, 5, 5, 5, 4, 3, 3, 3, 2, 2, 3])
  # Columns are UTF-8 bytes in the AST, characters in the spans.
  assert syntactic_distances('s = "é" + ü\n').spans[-1] == (10, 11)


def test_distance_probe_finds_a_planted_subspace_and_nothing_in_noise():
  rng = np.random.default_rng(0)
  d = rng.integers(1, 8, 1200).astype(np.float64)
  groups = np.repeat(np.arange(60), 20)
  direction = rng.normal(size=(1200, 3))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  planted = np.concatenate([np.sqrt(d)[:, None] * direction,
                            rng.normal(size=(1200, 13))], 1)  # distance lives in 3 of 16 dims
  unrelated = rng.normal(size=(1200, 16))
  scores = {}
  for name, x in (("planted", planted), ("unrelated", unrelated)):
    scores[name] = probes.distance_probe(x[:800], d[:800], x[800:], d[800:], groups[800:],
                                         rank=4, steps=300)
  assert scores["planted"] > 0.9, scores
  assert abs(scores["unrelated"]) < 0.2, scores


def test_lexical_average_covers_each_token_with_its_subwords():
  spans = [(0, 3), (4, 5), (5, 9)]
  offsets = np.array([[0, 2], [2, 3], [4, 6], [6, 9]])  # subword 2 straddles tokens 1 and 2
  np.testing.assert_allclose(ast_probe.lexical_average(spans, offsets),
                             [[.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, .5, .5]])


def recipe(spec: str, **overrides):
  config = config_lib.load_config_file(f"{ROOT}/configs/{spec}")
  for key, value in overrides.items():
    config_lib.apply_override(config, key.replace("__", "."), value)
  return config


@pytest.fixture(scope="module")
def code_run():
  config = recipe("bert.py:tiny", data__source="python_stdlib",
                  evaluate__evaluators="ast_probe", evaluate__train_examples="48",
                  evaluate__test_examples="24", evaluate__probe_steps="150")
  run = train.setup(config)
  _, shardings = train.sharded_abstract_state(run)
  with sharding.activation_context(run.mesh, run.rules):
    state = jax.jit(train.init_state_fn(run), out_shardings=shardings)(train.init_rng(config))
  return run, state


def test_ast_probe_scores_every_layer(code_run):
  run, state = code_run
  (probe,) = evaluators.build(run)
  with sharding.activation_context(run.mesh, run.rules):
    scores = probe.run(state)
  layers = run.model_cfg.num_layers
  assert set(scores) == {f"ast_probe_layer{n}_spearman" for n in range(layers + 1)} | {
      "ast_probe_best_layer"}
  per_layer = [scores[f"ast_probe_layer{n}_spearman"] for n in range(layers + 1)]
  assert all(-1 <= s <= 1 for s in per_layer), scores
  assert scores["ast_probe_best_layer"] == int(np.argmax(per_layer))
  # Even random-init embeddings know token identity, and identity alone says much about
  # syntax (`:` ends a header, `(` opens a call): well above no correlation.
  assert per_layer[0] > 0.2, scores
  _, _, _, is_test = probe.snippets()
  assert is_test.sum() == 24 and (~is_test).sum() == 48


def test_ast_probe_refuses_scanned_stacks_and_image_objectives():
  ast_probe_cls = evaluators.EVALUATORS.get("ast_probe")
  cases = ((recipe("bert.py:tiny"), ""),
           (recipe("bert.py:tiny", model__scan_layers="true"), "model.scan_layers must be false"),
           (recipe("mae.py:tiny"), "does not expose (Objective.feature_mask)"))
  for config, expected in cases:
    reason = ast_probe_cls.unsupported(config, OBJECTIVES.get(config.objective.name))
    assert (expected in reason) if expected else reason == "", reason
