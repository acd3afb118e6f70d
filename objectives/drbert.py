"""DrBERT masked LM (Liang & Liang 2024): BERT's MLM loss read out after the
pretraining-only decoder blocks of `models.drbert.DrBert`.

The masking and the loss are the `mlm` objective's (the model's forward already runs the
decoder); this objective adds the decoder's FLOPs and checks that the model has one.
"""
from __future__ import annotations

from models.transformer import stack_flops_per_token
from objectives import base
from objectives.mlm import MaskedLM


@base.register("drbert")
class DrBertMLM(MaskedLM):
  models = ("drbert",)

  def forward_flops_per_example(self, config, info, model_cfg):
    decoder = stack_flops_per_token(model_cfg.block, model_cfg.mlm_decoder_layers,
                                    info.seq_len)
    return super().forward_flops_per_example(config, info, model_cfg) + info.seq_len * decoder
