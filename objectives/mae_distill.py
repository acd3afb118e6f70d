"""MAE plus matching a frozen teacher's features on the visible tokens: two methods.

`mr_mae`: Mimic before Reconstruct (Gao et al. 2023, "Mimic before Reconstruct: Enhancing
Masked Autoencoders with Feature Mimicking", §3). The teacher (a pre-trained encoder: CLIP
or DINO in the paper; here a ViT run of ours: an `mae` run, or a `dino` run, whose `encoder`
params load into the teacher's MAE structure) encodes the whole clean
image; the student's encoder output on its ~25% visible tokens mimics the teacher's tokens
at the same positions (MSE to the teacher's per-token normalised features), while the
decoder reconstructs the ~75% masked patches' pixels as in MAE. High-level and low-level
targets sit on disjoint token sets, so they do not interfere (the paper's point).

`self_distill_mae`: Self-Distillation for Further Pre-training (Lee et al. 2022,
"Self-Distillation for Further Pre-training of Transformers", §3): stage 1 further
pre-trains the initial model with MAE on the target data (the `mae` objective with
init_from); stage 2 starts the student again from the initial weights and trains MAE plus
the squared distance of its encoder hidden states to the stage-1 teacher's (frozen). Both
encode the same visible patches here (the MAE forward the student already runs), so the
teacher costs an encoder pass on ~25% of the patches.

  loss = MAE masked-patch pixel MSE + objective.mimic_weight * mean squared distance
         between the student's and the teacher's visible tokens (per token, per channel).

Student and teacher share the patch grid and width: the student's tokens are compared with
no projection (`validate` says so).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.vit import patchify, vit_encoder_flops_per_image
from objectives import base, mae
from pretrain import teacher as teacher_lib



class _MaeFeatureDistill(mae.MaskedAutoencoder):
  """MAE with a frozen teacher's visible-token features as a second target."""

  uses_teacher = True

  def teacher_tokens(self, encoder, images: jax.Array, keep_idx: jax.Array) -> jax.Array:
    """The teacher ViT's targets for the visible tokens keep_idx: (B, Nk, D)."""
    raise NotImplementedError

  def teacher_flops(self, teacher_cfg, config, info) -> float:
    raise NotImplementedError

  def validate(self, config):
    super().validate(config)
    from pretrain.model_builders import decode_size  # it imports every objective's models

    if config.objective.mimic_weight < 0:
      raise ValueError(f"objective.mimic_weight={config.objective.mimic_weight}: must be >= 0")
    if teacher_lib.kind(config) != "frozen":
      raise ValueError(f"teacher.kind={teacher_lib.kind(config)!r}: {self.name} distils a "
                       "frozen pre-trained teacher; use teacher.kind=frozen")
    section = teacher_lib.model_section(config)
    if section.name != "mae":
      raise ValueError(f"teacher.model.name={section.name!r}: the teacher is built as 'mae' "
                       "(a dino run's encoder loads into it too)")
    student, teacher = decode_size(config.model), decode_size(section)
    if student["d_model"] != teacher["d_model"]:
      raise ValueError(f"model.d_model={student['d_model']} but the teacher's is "
                       f"{teacher['d_model']} (teacher.model): {self.name} compares tokens "
                       "with no projection, so the widths must match")
    patch = [tuple(s.patch_size) if any(s.patch_size) else d["patch_size"]
             for s, d in ((config.model, student), (section, teacher))]
    if patch[0] != patch[1]:
      raise ValueError(f"model.patch_size={patch[0]} but the teacher's is {patch[1]} "
                       "(teacher.model): tokens are matched patch by patch")

  def loss_fn(self, params, batch, rng, *, model, config, teacher):
    net = model.bind(params)
    pixel, latent, keep_idx = mae.reconstruct(net, batch["image"], rng, config)
    student = latent[:, net.cfg.num_prefix:].astype(jnp.float32)  # (B, Nk, D)
    target = self.teacher_tokens(teacher.bind().encoder, batch["image"], keep_idx)
    mimic = jnp.mean(jnp.square(student - target.astype(jnp.float32)))
    return pixel + config.objective.mimic_weight * mimic, {"pixel_loss": pixel,
                                                          "mimic_loss": mimic}

  def forward_flops_per_example(self, config, info, model_cfg):
    """MAE's forward plus the teacher's / 3 (no backward through it)."""
    return (super().forward_flops_per_example(config, info, model_cfg)
            + self.teacher_flops(teacher_lib.model_config(config, info), config, info) / 3)


def _visible(tokens: jax.Array, keep_idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(tokens, keep_idx[..., None], axis=1)


@base.register("mr_mae")
class MimicBeforeReconstruct(_MaeFeatureDistill):

  def teacher_tokens(self, encoder, images, keep_idx):
    """The teacher sees the whole image; its tokens at the visible positions, each
    normalised to zero mean and unit variance over channels (targets on one scale)."""
    tokens = encoder(images)[:, encoder.cfg.num_prefix:]  # (B, N, D)
    return mae.normalize_patches(_visible(tokens, keep_idx).astype(jnp.float32))

  def teacher_flops(self, teacher_cfg, config, info):
    return vit_encoder_flops_per_image(teacher_cfg, teacher_cfg.num_patches)


@base.register("self_distill_mae")
class SelfDistillMAE(_MaeFeatureDistill):

  def teacher_tokens(self, encoder, images, keep_idx):
    """The teacher encodes the same visible patches as the student: its hidden states."""
    visible = _visible(patchify(images, encoder.cfg.patch_size), keep_idx)
    return encoder.encode(encoder.embed(visible, keep_idx))[:, encoder.cfg.num_prefix:]

  def teacher_flops(self, teacher_cfg, config, info):
    return vit_encoder_flops_per_image(
        teacher_cfg, int(teacher_cfg.num_patches * (1 - config.objective.mask_ratio)))
