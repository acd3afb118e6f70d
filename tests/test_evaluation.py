"""Evaluators: probes against independent computations, the built-in labelled tasks, the
features contract, and both entry points (in the training loop and `pretrain.evaluate`)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.attention import attention_mask
from models.transformer import TextTransformer, TransformerConfig
from objectives.base import ModelDef
from pretrain import evaluate as evaluate_lib
from pretrain import main as main_lib, sharding
from pretrain.evaluation import evaluators
from pretrain.evaluation import probes, tasks
from pretrain.registry import OBJECTIVES
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_knn_matches_a_brute_force_vote():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(60, 5)), rng.normal(size=(15, 5))
  train_y = rng.integers(0, 3, 60)
  got = probes.knn_classify(train_x, train_y, test_x, num_classes=3, k=7, temperature=0.5)
  for row, pred in zip(test_x, got):
    sims = [a @ row / np.linalg.norm(a) / np.linalg.norm(row) for a in train_x]
    votes = [0.0, 0.0, 0.0]
    for i in np.argsort(sims)[::-1][:7]:
      votes[train_y[i]] += np.exp(sims[i] / 0.5)
    assert pred == int(np.argmax(votes))


def test_linear_probe_separates_separable_data_and_not_random_labels():
  """Labels a linear function of the features: test accuracy ~1. Random labels: the probe
  can fit the train set but is at chance on the test set."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(600, 8))
  y = (x @ rng.normal(size=(8, 3))).argmax(1)
  scores = probes.linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=3)
  assert scores["accuracy"] > 0.95
  wide, noise = rng.normal(size=(600, 32)), rng.integers(0, 2, 600)
  scores = probes.linear_probe(wide[:40], noise[:40], wide[40:], noise[40:], num_classes=2,
                               steps=500, lr=0.1, weight_decay=0.0)
  assert scores["train_accuracy"] > 0.8 and abs(scores["accuracy"] - 0.5) < 0.1


@pytest.mark.parametrize("name,classes", [("fashion_mnist", 10), ("shakespeare_plays", 8),
                                          ("code_or_prose", 2)])
def test_builtin_tasks_are_balanced_and_train_test_disjoint(name, classes):
  task = tasks.TASKS[name](os.environ["PRETRAIN_CACHE"], 200, 80)
  assert len(task.classes) == classes and task.modality == tasks.MODALITY[name]
  for labels, total in ((task.train_labels, 200), (task.test_labels, 80)):
    counts = np.bincount(labels, minlength=classes)
    assert counts.max() == total // classes, counts  # balanced (rare classes may have fewer)
  if task.modality == "text":
    assert not set(task.train_inputs) & set(task.test_inputs)
    assert len(set(task.train_inputs)) == len(task.train_inputs)
  again = tasks.TASKS[name](os.environ["PRETRAIN_CACHE"], 200, 80)
  assert np.array_equal(again.test_labels, task.test_labels)  # a fixed sample


def test_text_features_are_the_mean_of_the_objectives_hidden_states():
  """mlm reads bidirectionally, causal_lm causally; padding never changes the features."""
  cfg = TransformerConfig(vocab_size=32, num_layers=2, d_model=16, num_heads=2, d_ff=32,
                          max_len=12)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(TextTransformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  params, model = nnx.to_pure_dict(state), ModelDef(graphdef)
  tokens = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0]])
  segs = (tokens > 0).astype(jnp.int32)
  batch = {"tokens": tokens, "segment_ids": segs,
           "positions": jnp.broadcast_to(jnp.arange(8), tokens.shape)}
  net = model.bind(params)
  for name, kind in (("mlm", "bidirectional"), ("causal_lm", "causal")):
    got = np.asarray(OBJECTIVES.get(name).features(params, batch, model=model, config=None))
    hidden = np.asarray(net(tokens, mask=attention_mask(kind, segment_ids=segs)), np.float64)
    for row in range(2):
      n = int(segs[row].sum())
      np.testing.assert_allclose(got[row], hidden[row, :n].mean(0), rtol=1e-5, atol=1e-6)
  longer = {k: jnp.pad(v, ((0, 0), (0, 4))) for k, v in batch.items()}
  np.testing.assert_allclose(
      OBJECTIVES.get("mlm").features(params, longer, model=model, config=None),
      OBJECTIVES.get("mlm").features(params, batch, model=model, config=None), atol=1e-6)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
  """A tiny MAE run with evaluators in the loop at steps 10 and 20."""
  workdir = str(tmp_path_factory.mktemp("mae"))
  code = main_lib.main([f"--config={ROOT}/configs/mae.py:tiny", f"--workdir={workdir}",
                        "--config.train.steps=20", "--config.train.eval_every=0",
                        "--config.evaluate.evaluators=heldout_loss,knn,linear_probe",
                        "--config.evaluate.every=10", "--config.evaluate.train_examples=300",
                        "--config.evaluate.test_examples=200"])
  assert code == 0
  return workdir


def test_evaluators_run_in_the_training_loop(mae_run):
  records = [r for r in read_metrics(mae_run) if "knn_fashion_mnist_accuracy" in r]
  assert [r["step"] for r in records] == [10, 20]
  for r in records:
    # Chance is 0.1 on the 10 balanced classes; even a barely trained encoder is far above.
    assert r["linear_probe_fashion_mnist_accuracy"] > 0.4
    assert r["knn_fashion_mnist_accuracy"] > 0.3
    assert r["eval_loss"] > 0


def test_evaluate_cli_reproduces_the_in_loop_scores(mae_run, capsys):
  assert evaluate_lib.main([f"--workdir={mae_run}", "--evaluators=knn,linear_probe"]) == 0
  with open(os.path.join(mae_run, "evaluations.jsonl")) as f:
    record = json.loads(f.readlines()[-1])
  in_loop = [r for r in read_metrics(mae_run) if "knn_fashion_mnist_accuracy" in r][-1]
  assert record["step"] == 20
  for key in ("knn_fashion_mnist_accuracy", "linear_probe_fashion_mnist_accuracy"):
    assert record[key] == pytest.approx(in_loop[key], abs=1e-6)
  assert "knn_fashion_mnist_accuracy" in capsys.readouterr().out


def test_finetune_trains_a_copy_of_the_params_and_beats_chance(mae_run):
  config = evaluate_lib._load_config(mae_run, "finetune", [
      ("evaluate.finetune_steps", "40"), ("evaluate.finetune_lr", "1e-3"),
      ("evaluate.train_examples", "300"), ("evaluate.test_examples", "200")])
  run, state = evaluate_lib.restore(config, mae_run, 20)
  before = jax.tree.map(np.asarray, state["params"])
  finetune = evaluators.EVALUATORS.get("finetune")(run)
  with sharding.activation_context(run.mesh, run.rules):
    scores = finetune.run(state)
  print(f"\nfinetune after 40 steps from step 20 of a tiny MAE: {scores}")
  # The step donates its buffers: the run's own params must be untouched and still alive.
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, state["params"]))
  # Chance is 0.1 (10 balanced classes) and the head starts at zero, so only training gets
  # above it (40 steps of 32 images gave 0.555 when this was written).
  assert scores["finetune_fashion_mnist_accuracy"] > 0.4, scores
  assert scores["finetune_fashion_mnist_train_loss"] < np.log(10) - 0.5, scores


@pytest.mark.parametrize("args,expected", [
    (["--evaluators=bogus"],
     "unknown evaluator 'bogus'; valid: ast_probe, finetune, heldout_loss, knn, linear_probe"),
    (["--config.evaluate.finetune_lr=0"], "evaluate.finetune_lr=0.0: must be > 0"),
    (["--step=7"], "no checkpoint step 7 (steps there: [20])"),
    (["--config.evaluate.task=shakespeare_plays"], "holds text examples; objective 'mae' reads image"),
    (["--config.evaluate.knn_k=0"], "evaluate.knn_k=0: must be >= 1"),
    (["--bogus=1"], "unknown argument '--bogus=1'"),
])
def test_evaluate_cli_bad_input_is_one_line(mae_run, capsys, args, expected):
  before = sorted(os.listdir(mae_run))
  assert evaluate_lib.main([f"--workdir={mae_run}", *args]) == 2
  err = capsys.readouterr().err
  assert expected in err and err.count("\n") == 1, err
  assert sorted(os.listdir(mae_run)) == before


def test_training_with_an_unsupported_evaluator_fails_before_work(tmp_path, capsys):
  code = main_lib.main([f"--config={ROOT}/configs/bert.py:tiny", f"--workdir={tmp_path}/r",
                        "--config.evaluate.task=fashion_mnist",
                        "--config.evaluate.evaluators=knn"])
  assert code == 2
  assert "evaluate.task='fashion_mnist' holds image examples" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()
