"""mixed_einsum: the same gradients as einsum, and bf16 matmuls in the backward pass too."""
from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from models.precision import mixed_einsum

CASES = [("abc,cd->abd", (2, 3, 4), (4, 5)),          # Dense
         ("abc,cde->abde", (2, 3, 4), (4, 5, 6)),     # q/k/v projection
         ("abcd,cde->abe", (2, 3, 4, 5), (4, 5, 6)),  # output projection
         ("...d,vd->...v", (2, 3, 4), (7, 4))]        # tied logits


def _loss(einsum):
  return lambda spec, a, b: jnp.sum(jnp.sin(einsum(spec, a, b)))


@pytest.mark.parametrize("spec,sa,sb", CASES)
def test_gradients_match_einsum_in_float32(spec, sa, sb):
  ka, kb = jax.random.split(jax.random.key(0))
  a, b = jax.random.normal(ka, sa), jax.random.normal(kb, sb)
  plain = jax.grad(lambda a, b: _loss(jnp.einsum)(spec, a, b), (0, 1))(a, b)
  mixed = jax.grad(lambda a, b: _loss(mixed_einsum)(spec, a, b), (0, 1))(a, b)
  for want, got in zip(plain, mixed):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _dot_operand_dtypes(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  found = []

  def walk(eqns):
    for eqn in eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub.eqns)

  walk(jaxpr.jaxpr.eqns)
  return found


@pytest.mark.parametrize("spec,sa,sb", CASES)
def test_backward_matmuls_stay_bfloat16(spec, sa, sb):
  """Every dot of forward + backward takes bf16 operands (einsum's own transpose would not)."""
  a, b = jnp.ones(sa, jnp.bfloat16), jnp.ones(sb, jnp.bfloat16)
  grad = jax.grad(lambda a, b: _loss(mixed_einsum)(spec, a, b), (0, 1))
  dots = _dot_operand_dtypes(grad, a, b)
  assert len(dots) == 3 and all(d == ("bfloat16", "bfloat16") for d in dots), dots
  plain = jax.grad(lambda a, b: jnp.sum(jnp.einsum(spec, a, b,
                                                    preferred_element_type=jnp.float32)), (0, 1))
  assert any("float32" in d for d in _dot_operand_dtypes(plain, a, b))  # the case it fixes


def test_rejects_non_matmul_spec():
  with pytest.raises(ValueError, match="neither"):
    jax.grad(lambda a: mixed_einsum("ab,bc->c", a, jnp.ones((3, 4))).sum())(jnp.ones((2, 3)))
