"""Classifiers on frozen features: a linear probe and a weighted k-nearest-neighbour vote.

Both take features as NumPy arrays already gathered on the host (a few thousand rows), so
they are independent of the mesh the features came from.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both sets scaled by the train set's per-dimension mean and std: the probe's learning
  rate then means the same thing for every model. NumPy or jax arrays."""
  mean, std = train.mean(0), train.std(0) + 1e-6
  return (train - mean) / std, (test - mean) / std


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_softmax(x, y, *, num_classes: int, steps: int, lr: float, weight_decay: float):
  """Full-batch multinomial logistic regression (Adam, L2 on the weights)."""
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = x @ p["w"] + p["b"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return nll + weight_decay * jnp.sum(p["w"] ** 2)

  def step(carry, _):
    p, opt = carry
    grads = jax.grad(loss)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


# Adam's step size for a softmax head on standardized features (the linear probe's, and the
# fine-tuning evaluator's head).
HEAD_LR = 0.05


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, num_classes: int, steps: int = 300, lr: float = HEAD_LR,
                 weight_decay: float = 1e-4) -> dict[str, float]:
  """Train and test accuracy of a softmax classifier on standardized frozen features."""
  train_x, test_x = standardize(np.asarray(train_x, np.float64), np.asarray(test_x, np.float64))
  p = _fit_softmax(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y),
                   num_classes=num_classes, steps=steps, lr=lr, weight_decay=weight_decay)
  w, b = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
  accuracy = lambda x, y: float(np.mean(np.argmax(x @ w + b, -1) == y))
  return {"train_accuracy": accuracy(train_x, train_y), "accuracy": accuracy(test_x, test_y)}


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> np.ndarray:
  """Predicted class per test row: the k most cosine-similar train rows vote with weight
  exp(similarity / temperature) (Wu et al. 2018; DINO's kNN evaluation)."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  sim = unit(test_x) @ unit(train_x).T  # (T, N)
  k = min(k, sim.shape[1])
  top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (T, k), unordered
  weights = np.exp(np.take_along_axis(sim, top, 1) / temperature)
  votes = np.zeros((len(sim), num_classes))
  np.add.at(votes, (np.arange(len(sim))[:, None], np.asarray(train_y)[top]), weights)
  return np.argmax(votes, 1)


@functools.partial(jax.jit, static_argnames=("rank", "steps"))
def _fit_distance_probe(x, d, *, rank: int, steps: int, lr: float):
  """P (D, rank) minimising mean |‖P x‖² - d| (full batch, Adam), from a fixed random start
  (P = 0 is a stationary point of ‖P x‖²)."""
  proj = jax.random.normal(jax.random.key(0), (x.shape[1], rank)) / jnp.sqrt(x.shape[1])
  tx = optax.adam(lr)

  def loss(p):
    return jnp.abs(((x @ p) ** 2).sum(-1) - d).mean()

  def step(carry, _):
    p, opt = carry
    updates, opt = tx.update(jax.grad(loss)(p), opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (proj, _), _ = jax.lax.scan(step, (proj, tx.init(proj)), None, length=steps)
  return proj


def distance_probe(train_x: np.ndarray, train_d: np.ndarray, test_x: np.ndarray,
                   test_d: np.ndarray, test_groups: np.ndarray, *, rank: int, steps: int,
                   lr: float = 0.01) -> float:
  """A structural probe (Hewitt & Manning 2019; AST-Probe's form): a linear map P into a
  `rank`-dim subspace where ‖P (h_i - h_{i+1})‖² predicts the syntactic distance of tokens
  i and i+1. Returns the Spearman correlation of predicted and true distances on the test
  pairs, averaged over test snippets (`test_groups` names each pair's snippet; snippets with
  constant distances have no ranking and are skipped)."""
  from scipy import stats

  train_x, test_x = standardize(np.asarray(train_x, np.float64), np.asarray(test_x, np.float64))
  proj = _fit_distance_probe(jnp.asarray(train_x, jnp.float32),
                             jnp.asarray(train_d, jnp.float32), rank=rank, steps=steps, lr=lr)
  predicted = ((test_x @ np.asarray(proj, np.float64)) ** 2).sum(-1)
  scores = [stats.spearmanr(predicted[test_groups == g], test_d[test_groups == g]).statistic
            for g in np.unique(test_groups) if len(np.unique(test_d[test_groups == g])) > 1]
  return float(np.nanmean(scores)) if scores else float("nan")
