"""MiniLM: deep self-attention distillation (Wang et al. 2020, "MiniLM: Deep Self-Attention
Distillation for Task-Agnostic Compression of Pre-Trained Transformers", §3).

The student mimics the self-attention of the teacher's LAST layer only, on unlabeled text:
  L_AT = mean over heads a and queries t of KL(A^T_{a,t} || A^S_{a,t}),
         A = softmax(Q K^T / sqrt(d_k))  (attention distributions),
  L_VR = mean over heads a and queries t of KL(VR^T_{a,t} || VR^S_{a,t}),
         VR = softmax(V V^T / sqrt(d_k))  (value relations, the paper's new knowledge),
  loss = L_AT + L_VR.
Both relations are L x L per head, so student and teacher may differ in depth and hidden
size with no projection; they must have the same number of heads (MiniLM v1; `validate`
says so). The last layer only means no layer mapping: the student's depth is free.

Teacher assistant (§3.3): distil teacher -> assistant (same depth as the student, the
teacher's width), then assistant -> student with teacher.path = the assistant's workdir:
two runs of this recipe chained through teacher.path (configs/minilm.py says how).

Design: no host transform (the student reads the same clean packed text as the teacher);
padding queries and other segments' keys are masked as in every attention here, so packed
documents never see each other and padding adds nothing.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.attention import attention_logits, attention_mask
from models.transformer import stack_flops_per_token
from objectives import base
from pretrain import teacher as teacher_lib


def relation_logits(net, batch) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(Q K^T, V V^T) / sqrt(d_k) of `net`'s last layer, masked: two (B, H, L, L) float32."""
  mask = attention_mask("bidirectional", segment_ids=batch["segment_ids"])
  q, k, v = net.last_attention_qkv(batch["tokens"], mask=mask, positions=batch["positions"])
  return attention_logits(q, k, mask), attention_logits(v, v, mask)


@base.register("minilm")
class MiniLM(base.Objective):
  modality = "text"
  unit = "tokens"
  tokenizer = "wordpiece"
  uses_teacher = True

  def validate(self, config):
    from pretrain.model_builders import decode_size  # it imports every objective's models

    teacher = teacher_lib.model_section(config)
    for where, section in (("model", config.model), ("teacher.model", teacher)):
      if section.name != "transformer":
        raise ValueError(f"{where}.name={section.name!r}: minilm distils the self-attention "
                         "of a text transformer ('transformer')")
      if section.scan_layers:
        raise ValueError(f"{where}.scan_layers=True: minilm reads the last layer's "
                         "attention, which a scanned stack does not expose; set it false")
    heads, teacher_heads = decode_size(config.model)["num_heads"], decode_size(teacher)[
        "num_heads"]
    if heads != teacher_heads:
      raise ValueError(f"model.num_heads={heads} but the teacher has {teacher_heads} "
                       "(teacher.model): minilm compares attention head by head, so the "
                       "student needs the teacher's head count")

  def loss_fn(self, params, batch, rng, *, model, config, teacher):
    del rng, config  # Deterministic: no corruption.
    student = relation_logits(model.bind(params), batch)
    target = relation_logits(teacher.bind(), batch)
    real = batch["segment_ids"] > 0  # Padding queries attend nowhere: not counted.
    weights = jnp.broadcast_to(real[:, None, :], student[0].shape[:-1]).astype(jnp.float32)
    attention, values = (base.weighted_mean(base.kl_divergence(t, s), weights)
                         for t, s in zip(target, student))
    return attention + values, {"attention_kl": attention, "value_relation_kl": values}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    """Student stack + relations, plus the teacher's forward / 3 (the trainer counts 3x
    this for forward + backward; the teacher has no backward). Each side's last block is
    counted whole; its output and MLP are not computed, so this errs high by a block."""
    teacher_cfg = teacher_lib.model_config(config, info)
    length = info.seq_len
    student = length * (stack_flops_per_token(model_cfg.block, model_cfg.num_layers, length)
                        + 2 * length * model_cfg.d_model)  # + V V^T
    teacher = length * (stack_flops_per_token(teacher_cfg.block, teacher_cfg.num_layers,
                                              length) + 2 * length * teacher_cfg.d_model)
    return student + teacher / 3
