"""The teacher a distillation objective learns from: frozen, or an EMA of the student.

Config section `teacher`:
  kind   none | frozen (loaded once from `path`, e.g. a larger run of ours or a Hugging Face
         directory, never updated) | ema (a moving average of the student's params, as in
         BYOL, Grill et al. 2020, and DINO, Caron et al. 2021; starts equal to the student)
  model  the teacher's `model` keys where they differ from the student's (another size or
         architecture); empty = the student's model
  ema_momentum, ema_schedule
         the EMA momentum m (teacher <- m * teacher + (1 - m) * student) at step 0, held
         ("constant") or raised to 1 along a half cosine over train.steps ("cosine", DINO §3.1
         following BYOL §3.2).

The teacher's params live in the train state under "teacher": sharded by their logical axes
like the student's, saved and restored with every checkpoint (an EMA teacher resumes where
it was, and a frozen one is not reloaded), with no optimizer state and no gradient.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from objectives.base import DataInfo, ModelDef
from pretrain.registry import MODELS

KINDS = ("none", "frozen", "ema")
EMA_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass
class TeacherModel:
  """What the trainer builds for a teacher: its kind, structure and abstract params."""

  kind: str
  model_name: str
  model_cfg: Any
  model_def: ModelDef
  abstract_params: Any


def kind(config: ml_collections.ConfigDict) -> str:
  """teacher.kind, 'none' for configs without a teacher section."""
  return config.teacher.kind if "teacher" in config else "none"


def model_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher's model section: the student's `model` with `teacher.model` on top."""
  section = ml_collections.ConfigDict(config.model.to_dict())
  section.update(config.teacher.model.to_dict())
  return section


def model_config(config: ml_collections.ConfigDict, info: DataInfo):
  """The teacher's model dataclass config for data `info` (its builder's `model_config`)."""
  section = model_section(config)
  return MODELS.get(section.name).model_config(section, info)


def validate(config: ml_collections.ConfigDict, objective) -> None:
  """ValueError naming the bad teacher.* key (or the objective that needs a teacher)."""
  t = config.teacher
  if t.kind not in KINDS:
    raise ValueError(f"teacher.kind={t.kind!r}; valid: {', '.join(KINDS)}")
  if objective.uses_teacher and t.kind == "none":
    raise ValueError(f"objective {objective.name!r} distils a teacher: set teacher.kind to "
                     "frozen or ema")
  if not objective.uses_teacher and t.kind != "none":
    raise ValueError(f"teacher.kind={t.kind!r}: objective {objective.name!r} takes no "
                     "teacher; use teacher.kind=none")
  unknown = sorted(set(t.model.keys()) - set(config.model.keys()))
  if unknown:
    raise ValueError(f"teacher.model.{unknown[0]} is not a model key; valid: "
                     f"{', '.join(sorted(config.model.keys()))}")
  if t.path and not os.path.isdir(t.path):
    raise ValueError(f"teacher.path={t.path!r}: no such directory")
  if t.kind == "ema":
    if t.model:
      raise ValueError(f"teacher.kind='ema' averages the student's params, so the teacher "
                       f"is the student's model: leave teacher.model empty (has "
                       f"{', '.join(sorted(t.model.keys()))})")
    if not 0 <= t.ema_momentum <= 1:
      raise ValueError(f"teacher.ema_momentum={t.ema_momentum}: must be in [0, 1]")
    if t.ema_schedule not in EMA_SCHEDULES:
      raise ValueError(f"teacher.ema_schedule={t.ema_schedule!r}; valid: "
                       f"{', '.join(EMA_SCHEDULES)}")


def check_loadable(config: ml_collections.ConfigDict) -> None:
  """A frozen teacher must come from somewhere. Checked when a run starts, not by
  `validate`: paper recipes leave teacher.path for the user to fill in."""
  if kind(config) == "frozen" and not config.teacher.path:
    raise ValueError("teacher.kind='frozen' needs teacher.path (a run's workdir or a "
                     "Hugging Face directory)")


def ema_momentum(t: ml_collections.ConfigDict, step: jax.Array, total_steps: int) -> jax.Array:
  """The momentum of the update after optimizer step `step` (0-based)."""
  base = jnp.float32(t.ema_momentum)
  if t.ema_schedule == "constant":
    return base
  progress = step.astype(jnp.float32) / max(total_steps, 1)
  return 1.0 - (1.0 - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(teacher, params, momentum: jax.Array):
  """teacher <- m * teacher + (1 - m) * params, leafwise in each leaf's dtype."""
  return jax.tree.map(lambda t, p: (momentum * t + (1.0 - momentum) * p).astype(t.dtype),
                      teacher, params)


def initial_params(config: ml_collections.ConfigDict, state: dict, console):
  """The teacher params a fresh run starts from: loaded from teacher.path onto the state's
  (sharded) teacher, else, for an EMA teacher, a copy of the (possibly `init_from`-loaded)
  student. Raises ValueError when nothing at teacher.path fits the teacher model."""
  from pretrain import checkpoint  # orbax; only a training run needs it

  t = config.teacher
  if t.path:
    params, report = checkpoint.load_params(t.path, t.step, "", state["teacher"])
    console(report.summary("teacher"))
    if not report.matched:
      raise ValueError(f"teacher.path={t.path!r}: none of its params fits the teacher model "
                       "(set teacher.model to the teacher's sizes)")
    return params
  return jax.tree.map(jnp.copy, state["params"])
