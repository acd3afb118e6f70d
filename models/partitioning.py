"""Logical axis names for parameters and activations.

Models only speak logical names (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`,
`vocab`, ...). `pretrain.sharding` maps them to mesh axes with flax's logical-axis-rules
context, so the same module runs unsharded on one CPU and FSDP x tensor-parallel on a pod.
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import PartitionSpec


def with_axes(init, names: Sequence[str | None]):
  """Wraps a parameter initializer with its logical axis names."""
  return nnx.with_partitioning(init, tuple(names))


def logical_to_mesh_spec(names: Sequence[str | None], rules) -> PartitionSpec:
  """Maps logical names to a PartitionSpec under `rules` ((logical, mesh_axis), ...)."""
  return PartitionSpec(*core_spmd.from_sharding_rules(tuple(names), tuple(rules)))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op without a mesh/rules."""
  rules = core_spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_mesh_spec(names, rules))
