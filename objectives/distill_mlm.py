"""Pre-trained Distillation (Turc et al. 2019, "Well-Read Students Learn Better: On the
Importance of Pre-training Compact Models", §3, Algorithm 1) on the MLM task.

Turc et al.: pre-train a compact student with MLM (configs/bert.py, the 24 miniatures),
then distil a big teacher into it on unlabeled transfer data, minimising the cross-entropy
between the teacher's soft predictions and the student's, -sum_y P_T(y|x) log P_S(y|x)
(their eq. 1, no temperature, no hard-label term). Here the teacher's predictions are its
MLM distributions over the vocabulary at BERT's masked positions: the student sees the same
corrupted input (host transform = `mlm.MlmMasking`) and matches the teacher's softmax there.
Their distillation targets a fine-tuned task teacher's labels; that stage is task data, not
pretraining (configs/pd.py: NOT_IMPLEMENTED).
"""
from __future__ import annotations

import jax.numpy as jnp

from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base, mlm
from pretrain import teacher as teacher_lib


@base.register("distill_mlm")
class DistillMLM(mlm.MaskedLM):
  uses_teacher = True

  def loss_fn(self, params, batch, rng, *, model, config, teacher):
    del rng, config  # All randomness is on the host.
    logits = mlm.masked_logits(model.bind(params), batch)  # (B, K, V)
    target = mlm.masked_logits(teacher.bind(), batch)
    if target.shape != logits.shape:
      raise ValueError(f"teacher logits {target.shape} vs student {logits.shape}: student and "
                       "teacher must share the vocabulary (data.tokenizer)")
    weights = batch["masked_weights"]
    loss = base.weighted_mean(base.soft_cross_entropy(logits, target), weights)
    _, accuracy = base.token_loss(logits, batch["masked_ids"], weights)
    agree = (jnp.argmax(logits, -1) == jnp.argmax(target, -1)).astype(jnp.float32)
    # The loss's floor: loss - teacher_entropy is KL(teacher || student).
    entropy = base.weighted_mean(base.soft_cross_entropy(target, target), weights)
    return loss, {"mlm_accuracy": accuracy, "teacher_entropy": entropy,
                  "teacher_agreement": base.weighted_mean(agree, weights)}

  def forward_flops_per_example(self, config, info, model_cfg):
    """The student's MLM forward plus the teacher's / 3 (no backward through it)."""
    teacher_cfg = teacher_lib.model_config(config, info)
    slots = mlm.num_predictions(info.seq_len, config.objective.mask_rate)

    def forward(cfg):
      return (info.seq_len * transformer_flops_per_token(cfg, info.seq_len, with_logits=False)
              + slots * logits_flops_per_token(cfg))

    return forward(model_cfg) + forward(teacher_cfg) / 3
