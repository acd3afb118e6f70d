"""BERT masked-LM pretraining (Devlin et al. 2018) and the Well-Read Students miniatures.

  python -m pretrain.main --config=configs/bert.py:tiny --workdir=runs/bert_tiny

Variants: tiny (CPU test size), base, large, and the 24 miniatures L-{2..12}_H-{128..768}
(Turc et al. 2019). Paper numbers below cite their source; what this recipe does not do
(yet) is listed in NOT_IMPLEMENTED.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Left out of the paper recipe: next-sentence prediction (RoBERTa showed it unnecessary),
# dropout 0.1 (models have no dropout yet), and the 90%/10% split of steps between
# sequence length 128 and 512 (one seq_len per run; chain two runs with init_from).
NOT_IMPLEMENTED = ("next_sentence_prediction", "dropout", "two_phase_seq_len")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "mlm"
  # Devlin et al. 2018 §3.1 "Task #1": 15% of WordPiece tokens, 80% [MASK] / 10% random /
  # 10% unchanged. Whole-word masking is the later (2019) BERT release's variant.
  c.objective.mask_rate = 0.15
  c.objective.replace_mask = 0.8
  c.objective.replace_random = 0.1
  c.objective.whole_word = False
  c.model.name = "transformer"
  c.model.variant = "bert:base"
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.max_len = 512
  c.model.pos_emb = "learned"
  c.model.norm = "post"           # BERT is post-LN
  # tanh GELU, as google-research/bert's modeling.py `gelu` computes it now. HF's port
  # (hidden_act="gelu", imported as "gelu_exact") and, per the docstring of transformers'
  # GELUActivation, that repo's first version use erf; the two differ by under 5e-4.
  c.model.activation = "gelu"
  c.model.tie_embeddings = True
  c.model.head_transform = True   # cls/predictions/transform in the released checkpoints
  c.model.embed_norm = True       # modeling.py embedding_postprocessor's layer_norm
  c.model.ln_eps = 1e-12
  c.model.dtype = "float32"
  c.data.source = "shakespeare"
  c.data.tokenizer = "wordpiece"
  c.data.vocab_size = 30522       # §3 "WordPiece embeddings with a 30,000 token vocabulary"
  c.data.seq_len = 512
  # Appendix A.2: 1M steps, batch 256 x 512 tokens, Adam lr 1e-4, b1 0.9, b2 0.999,
  # weight decay 0.01, 10k warmup steps then linear decay.
  c.train.steps = 1_000_000
  c.train.global_batch = 256
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 10_000
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-6

  if variant == "tiny":  # CPU: trains in seconds on the built-in Shakespeare corpus.
    c.model.variant = "bert:tiny"
    c.model.max_len = 128
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=2e-3)
  elif variant == "base":
    c.model.variant = "bert:base"
    # §A.2: "4 Cloud TPUs in Pod configuration (16 TPU chips total)" (TPU v2/v3); the
    # nearest current slice with 16 chips is v5p-32.
    c.topology = "v5p-32"
  elif variant == "large":
    c.model.variant = "bert:large"
    # §A.2: "16 Cloud TPUs (64 TPU chips total)"; v5p-128 has 64 chips.
    c.topology = "v5p-128"
  else:  # A Well-Read Students miniature, e.g. "L-4_H-256" or "mini".
    c.model.variant = f"bert:{variant}"
    # Turc et al. do not give their hardware: 16 chips like BERT-base (§A.2), on v5e.
    c.topology = "v5e-16"
    # Turc et al. 2019 §4 / README: pre-trained with the BERT recipe at seq_len 128 for the
    # miniatures' MLM stage; lr per size was tuned (we keep BERT's 1e-4).
    c.data.seq_len = 128
  return c
