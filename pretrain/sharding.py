"""Mesh from config, logical-axis rules, and global batches.

Models annotate params and activations with logical names (models/partitioning.py);
this module owns the mapping of those names to the mesh axes `data`, `fsdp`, `tensor`.
The same code therefore runs on one CPU (a 1x1x1 mesh), eight fake CPU devices and a pod.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
  """The configured mesh does not fit the devices."""


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the single -1 entry so the mesh uses every device; checks the product."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  bad = [f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise MeshError(f"{', '.join(bad)}: mesh sizes must be positive or -1 (fill)")
  if sizes.count(-1) > 1:
    raise MeshError("at most one of mesh.data/fsdp/tensor may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"{num_devices} devices are not divisible by the fixed mesh axes "
                      f"({dict(zip(MESH_AXES, sizes))})")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices "
                    f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def rules_tuple(rules) -> tuple[tuple[str, Any], ...]:
  """Config rules (lists after ConfigDict round trips) as hashable tuples."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def param_shardings(abstract_params, mesh, rules):
  """NamedShardings for an nnx.State of params from their logical axis names."""
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(abstract_params)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), nnx.to_pure_dict(specs),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Process-local numpy rows -> one global array per key, split over data x fsdp."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_context(mesh, rules):
  """Context under which models' `constrain` calls shard activations."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    yield
