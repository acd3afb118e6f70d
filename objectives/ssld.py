"""SSLD: distillation from a teacher's predictions alone (Cui et al. 2021, "Beyond
Self-Supervision: A Simple Yet Effective Network Distillation Alternative to Improve
Backbones").

Unlike Hinton-style distillation, the student is not also fitted to the human labels: its
only target is the frozen teacher's predicted class distribution on the same (flipped)
image, so any unlabeled image is training data. Here the loss is
  KL(softmax(t / T) || softmax(s / T)) averaged over the batch
(teacher.kind=frozen: a `classify` run of ours, or a larger `vit_classifier` via
teacher.model; T = objective.distill_temperature, 1 in SSLD). The labels never reach the
device: the host transform drops them (`reads_labels = False`), so the loss cannot read
them.
"""
from __future__ import annotations

import jax

from objectives import base
from objectives.classify import ImageClassifierObjective, check_num_classes


@base.register("ssld")
class Ssld(ImageClassifierObjective):
  uses_teacher = True
  reads_labels = False

  def validate(self, config):
    check_num_classes(config)
    t = config.objective.distill_temperature
    if t <= 0:
      raise ValueError(f"objective.distill_temperature={t}: must be > 0")

  def loss_fn(self, params, batch, rng, *, model, config, teacher):
    del rng  # The flips are on the host.
    t = config.objective.distill_temperature
    images = batch["image"]
    student = model.bind(params)(images)
    target = jax.lax.stop_gradient(teacher.bind()(images))
    kl = base.kl_divergence(target / t, student / t).mean()
    agree = (student.argmax(-1) == target.argmax(-1)).mean()
    return kl, {"teacher_agreement": agree}

  def forward_flops_per_example(self, config, info, model_cfg):
    """The student's plus a third for the teacher's forward (no backward), as dino counts
    its EMA teacher: exact for a teacher of the student's size, low for a larger one."""
    return super().forward_flops_per_example(config, info, model_cfg) * (1 + 1 / 3)
