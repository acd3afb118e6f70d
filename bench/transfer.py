"""Small-scale reproductions: does pretraining a tiny model on built-in data help a probe?

  python -m bench.transfer [--rows mae,bert,gpt,t5,bert-self,...] [--seeds 0,1,2]
                           [--steps 300] [--evaluators linear_probe,knn] [--json out.json]

For each row and seed, the row's tiny recipe is scored twice with the same evaluators on the
same fixed labelled task (pretrain/evaluation/tasks.py): once at its random initialisation
(the seed's init, no training) and once after `--steps` pretraining steps through
`pretrain.train.train`. Evaluators: a linear probe and a weighted kNN on frozen features
(test accuracy on held-out examples) by default; `--evaluators` may add `finetune` (all
params + a new head trained on the task) and `ast_probe` (per-layer Python syntax probe,
text rows). Rows:

  mae        MAE on Fashion-MNIST train images         -> fashion_mnist (10 classes)
  bert       MLM on Shakespeare                         -> shakespeare_plays (8 works)
  gpt        causal LM on Shakespeare                   -> shakespeare_plays
  t5         span corruption on Shakespeare             -> shakespeare_plays
  bert-self  MLM on the task's own train passages only  -> shakespeare_plays
             ("Never Train from Scratch": self-pretraining on the downstream data)
  bert-code  MLM on the Python standard library         -> code_or_prose (and ast_probe)
  dino       DINO on Fashion-MNIST train images         -> fashion_mnist
  tera       TERA on pocketsphinx's recorded speech     -> spoken_digits (eSpeak NG voices)

The table reports mean +- std over seeds, and what was measured, gains or not.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

os.environ.setdefault("PRETRAIN_CACHE", os.path.expanduser("~/.cache/pretrain"))

import jax  # noqa: E402

from pretrain import config as config_lib  # noqa: E402
from pretrain import sharding, train  # noqa: E402
from pretrain.data import pipeline  # noqa: E402
from pretrain.evaluation import evaluators, tasks  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ROWS = {"mae": "mae.py:tiny", "bert": "bert.py:tiny", "gpt": "gpt.py:tiny",
        "t5": "t5.py:tiny", "bert-self": "bert.py:tiny", "bert-code": "bert.py:tiny",
        "dino": "dino.py:tiny", "tera": "tera.py:tiny"}
ROW_OVERRIDES = {"bert-code": {"data.source": "python_stdlib", "evaluate.task": "code_or_prose"}}
SCORES = ("linear_probe_", "knn_", "finetune_", "ast_probe_")  # metric prefixes reported
NOT_SCORES = ("train_accuracy", "train_loss", "best_layer")


def _task_passages(directory: str, task_name: str, train_examples: int) -> str:
  """The task's train passages as a jsonl corpus (the bert-self row pretrains on it)."""
  task = tasks.TASKS[task_name](pipeline.cache_dir({}), train_examples, 1)
  path = os.path.join(directory, f"{task_name}_train.jsonl")
  with open(path, "w") as f:
    for text in task.train_inputs:
      f.write(json.dumps({"text": text}) + "\n")
  return path


def row_config(row: str, seed: int, steps: int, corpus_dir: str,
               evaluator_names: str = "linear_probe,knn"):
  config = config_lib.load_config_file(os.path.join(CONFIGS, ROWS[row]))
  overrides = {"seed": seed, "train.steps": steps, "train.eval_every": 0,
               "train.checkpoint_every": steps, "train.log_every": max(1, steps // 5),
               "evaluate.evaluators": evaluator_names, "evaluate.every": 0,
               **ROW_OVERRIDES.get(row, {})}
  if row == "bert-self":
    task = tasks.DEFAULT_TASK["text"]
    overrides.update({"data.source": "text_files",
                      "data.path": _task_passages(corpus_dir, task, 1000)})
  for key, value in overrides.items():
    config_lib.apply_override(config, key, str(value))
  return config


def scores_at_init(config) -> dict[str, float]:
  run = train.setup(config)
  with sharding.activation_context(run.mesh, run.rules):
    _, shardings = train.sharded_abstract_state(run)
    state = jax.jit(train.init_state_fn(run), out_shardings=shardings)(train.init_rng(config))
    return evaluators.run_all(evaluators.build(run), state)


def scores_after_pretraining(config, workdir: str) -> dict[str, float]:
  last = train.train(config, workdir)
  return {k: v for k, v in last.items() if k.startswith(SCORES) and not k.endswith(NOT_SCORES)}


def _summary(values: list[float]) -> str:
  mean = statistics.mean(values)
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{mean:.3f} ± {spread:.3f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--evaluators", default="linear_probe,knn")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = args.rows.split(",")
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    parser.error(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
  seeds = [int(s) for s in args.seeds.split(",")]
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for row in rows:
      for seed in seeds:
        config = row_config(row, seed, args.steps, tmp, args.evaluators)
        init = scores_at_init(config)
        trained = scores_after_pretraining(config, os.path.join(tmp, f"{row}-{seed}"))
        for metric in sorted(trained):
          results.append({"row": row, "seed": seed, "metric": metric,
                          "random_init": init[metric], "pretrained": trained[metric]})
          print(f"{row} seed {seed} {metric}: init {init[metric]:.3f} -> "
                f"pretrained {trained[metric]:.3f}", flush=True)
  print(f"\n| row | metric | random init | pretrained ({args.steps} steps) | gain |")
  print("|---|---|---|---|---|")
  for row in rows:
    for metric in sorted({r["metric"] for r in results if r["row"] == row}):
      picked = [r for r in results if r["row"] == row and r["metric"] == metric]
      init = [r["random_init"] for r in picked]
      done = [r["pretrained"] for r in picked]
      gain = [b - a for a, b in zip(init, done)]
      print(f"| {row} | {metric} | {_summary(init)} | {_summary(done)} | {_summary(gain)} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"steps": args.steps, "seeds": seeds, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
