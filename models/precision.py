"""Mixed-precision matmuls: compute-dtype operands, float32 accumulation, both directions.

`jnp.einsum(a_bf16, b_bf16, preferred_element_type=f32)` runs its forward in bf16, but its
autodiff transpose receives a float32 cotangent and so runs the two backward matmuls in
float32 (2/3 of a training step's matmul FLOPs; multi-pass and several times slower on TPU).
`mixed_einsum` casts the cotangent to the operands' dtype first, so every matmul of the step
is compute-dtype x compute-dtype with float32 accumulation. In float32 it is a plain einsum.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name


def _parse(spec: str) -> tuple[str, str, str]:
  inputs, out = spec.replace(" ", "").split("->")
  a, b = inputs.split(",")
  return a, b, out


def _labels(term: str) -> set[str]:
  return set(term.replace("...", "")) | ({"..."} if "..." in term else set())


# Remat policies see through a custom_vjp only by name: "dots" saves outputs named so.
MATMUL_NAME = "mixed_matmul"


def mixed_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """`einsum(spec, a, b)` accumulated in float32 (float32 result).

  spec is a two-operand contraction in which every label of an operand also appears in the
  other operand or the output (matmul-like: no label summed within one operand alone).
  """
  return checkpoint_name(_mixed_einsum(spec, a, b), MATMUL_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _fwd(spec, a, b):
  ta, tb, out = _parse(spec)
  for term, other in ((ta, tb), (tb, ta)):
    if not _labels(term) <= _labels(other) | _labels(out):
      raise ValueError(f"mixed_einsum({spec!r}): a label of {term!r} is in neither "
                       "the other operand nor the output")
  return _mixed_einsum(spec, a, b), (a, b)


def _bwd(spec, residuals, g):
  a, b = residuals
  ta, tb, out = _parse(spec)
  g = g.astype(a.dtype)  # The point: backward matmuls in the compute dtype.
  da = jnp.einsum(f"{out},{tb}->{ta}", g, b, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{ta},{out}->{tb}", a, g, preferred_element_type=jnp.float32)
  return da.astype(a.dtype), db.astype(b.dtype)


_mixed_einsum.defvjp(_fwd, _bwd)
