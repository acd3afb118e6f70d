"""In-batch contrastive loss shared by the contrastive objectives (E2S2, ContraBERT).

InfoNCE (van den Oord et al. 2018; SimCLR / CLIP's symmetric form): rows a[i] and b[i] are a
positive pair and every other row of the batch is a negative. The similarity matrix is over
the GLOBAL batch, on any number of devices: a loss is traced under `jax.jit` with the batch
sharded along its leading axis, so `a @ b.T` is the (B, B) matrix of the whole global
batch and XLA inserts the all-gather that gives every device the other devices' rows. No
`pmap`/`all_gather` by hand is needed, and tests/test_contrastive.py checks that the loss on
8 devices equals the loss on one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from objectives import base


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit norm in float32 (zero rows stay zero)."""
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def pair_losses(sim: jax.Array) -> jax.Array:
  """(B, B) logits of paired rows (sim[i, i] the positives) -> (B,) per-pair symmetric
  cross-entropy: half of row i's (a[i] picks b[i]) plus half of column i's (b[i] picks a[i]).
  Their mean is InfoNCE; ALIP weights them per pair."""
  labels = jnp.arange(sim.shape[0])
  return 0.5 * (base.cross_entropy(sim, labels) + base.cross_entropy(sim.T, labels))


def info_nce(a: jax.Array, b: jax.Array, temperature: float | jax.Array):
  """Symmetric InfoNCE of paired rows a[i] <-> b[i] (B, D), in-batch negatives, on cosine
  similarity / temperature -> (loss, accuracy of picking the true partner).

  `temperature` may be a traced scalar, e.g. CLIP's learnable `exp(-log_scale)`."""
  sim = l2_normalize(a) @ l2_normalize(b).T / temperature  # (B, B) over the global batch
  labels = jnp.arange(sim.shape[0])
  return pair_losses(sim).mean(), (jnp.argmax(sim, -1) == labels).astype(jnp.float32).mean()


def validate_temperature(objective_cfg, key: str = "contrastive_temperature") -> None:
  if objective_cfg[key] <= 0:
    raise ValueError(f"objective.{key}={objective_cfg[key]}: must be > 0")
