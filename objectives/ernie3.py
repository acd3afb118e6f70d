"""ERNIE 3.0's joint auto-encoding and auto-regressive pretraining (Sun et al. 2021)
on `models.multi_branch.MultiBranchTransformer`.

Every batch trains both branches. The AE branch: the backbone and the AE stack run
bidirectionally on the BERT-masked row (the `mlm` masking and keys) and predict the masked
tokens. The AR branch: the same backbone and the AR stack run causally on the clean row and
predict every next token. ERNIE 3.0 shares one backbone between its understanding and
generation tasks and tells them apart by the attention mask, so the backbone runs twice,
once under each mask (a causal pass cannot be read bidirectionally, nor the reverse): twice
the backbone compute of one pass. Loss = MLM loss + LM loss.
"""
from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.multi_branch import branch_flops_per_token
from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base
from objectives.causal_lm import next_token_targets
from objectives.mlm import MaskedLM, max_slots


class WithCleanTokens(grain.transforms.RandomMap):
  """An MLM masking's outputs plus the clean `tokens` (the AR branch's input and targets)."""

  def __init__(self, masking: grain.transforms.RandomMap):
    self.masking = masking
    self.wants_example_index = getattr(masking, "wants_example_index", False)

  def random_map(self, example, rng: np.random.Generator):
    return {**self.masking.random_map(example, rng), "tokens": example["tokens"]}


@base.register("ernie3")
class Ernie3(MaskedLM):
  models = ("multi_branch",)

  def host_transform(self, config, info):
    return WithCleanTokens(super().host_transform(config, info))

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    segs, positions = batch["segment_ids"], batch["positions"]
    ae = net(batch["inputs"], branch="ae", positions=positions,
             mask=attention_mask("bidirectional", segment_ids=segs))  # (B, L, D)
    picked = jnp.take_along_axis(ae, batch["masked_positions"][..., None], axis=1)
    mlm_loss, mlm_accuracy = base.token_loss(net.logits(picked), batch["masked_ids"],
                                             batch["masked_weights"])
    ar = net(batch["tokens"], branch="ar", positions=positions,
             mask=attention_mask("causal", segment_ids=segs))  # (B, L, D)
    targets, weights = next_token_targets(batch["tokens"], segs)
    lm_loss, lm_accuracy = base.token_loss(net.logits(ar), targets, weights)
    return mlm_loss + lm_loss, {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_accuracy,
                                "lm_loss": lm_loss, "lm_accuracy": lm_accuracy}

  def forward_flops_per_example(self, config, info, model_cfg):
    length = info.seq_len
    ae = length * (transformer_flops_per_token(model_cfg, length, with_logits=False)
                   + branch_flops_per_token(model_cfg, length))
    ar = length * (transformer_flops_per_token(model_cfg, length / 2, with_logits=True)
                   + branch_flops_per_token(model_cfg, length / 2))
    return ae + ar + max_slots(config, length) * logits_flops_per_token(model_cfg)
