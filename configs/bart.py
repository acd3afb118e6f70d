"""BART denoising pretraining of an encoder-decoder (Lewis et al. 2019, "BART: Denoising
Sequence-to-Sequence Pre-training for Natural Language Generation, Translation, and
Comprehension").

  python -m pretrain.main --config=configs/bart.py:tiny --workdir=runs/bart_tiny

Variants: tiny (CPU test size), base (6+6 layers, d 768), large (12+12, d 1024; §5.1).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: dropout 0.1 and turning it off for the last 10% of steps (§5.1; the
# models have no dropout), the 160GB RoBERTa corpus (§5.1), the paper's unstated learning
# rate schedule (we use RoBERTa's, below), and fairseq's replacement of 10% of the masks by
# random tokens (`mask_random`, a code default the paper does not describe).
NOT_IMPLEMENTED = ("dropout",
                   "dropout_off_last_10pct", "roberta_160gb_corpus", "paper_lr_schedule",
                   "mask_random")

# (layers per side, d_model, heads, d_ff). §2.1: base 6 encoder + 6 decoder layers, large
# 12 + 12; widths as in the released facebook/bart-base and bart-large (BERT's).
SIZES = {"base": (6, 768, 12, 3072), "large": (12, 1024, 16, 4096)}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "bart"
  # §5.1: "we mask 30% of tokens in each document, and permute all sentences"; §2.2: span
  # lengths ~ Poisson(lambda = 3). Masking, deletion and rotation are §4's ablations.
  c.objective.infill_rate = 0.3
  c.objective.poisson_lambda = 3.0
  c.objective.permute_rate = 1.0
  c.objective.token_mask_rate = 0.0
  c.objective.delete_rate = 0.0
  c.objective.rotate_rate = 0.0
  c.model.name = "encoder_decoder"
  c.model.variant = "custom"
  c.model.max_len = 1024          # the released checkpoints' max_position_embeddings
  c.model.pos_emb = "learned"
  c.model.norm = "post"           # post-LN, as BERT and the fairseq transformer
  c.model.embed_norm = True       # layernorm_embedding in the released checkpoints
  c.model.dec_embeddings = True   # the decoder's own position table and embedding norm, too
  c.model.activation = "gelu_exact"  # §2.1 GeLU; HF BartConfig activation "gelu" (erf)
  c.model.tie_embeddings = True   # one table for encoder, decoder and output
  c.model.head_transform = False
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.model.extra_ids = 0           # infilling uses the tokenizer's own [MASK]
  c.data.source = "shakespeare"
  c.data.tokenizer = "bpe"        # §5.1: GPT-2's byte-level BPE
  c.data.vocab_size = 50265       # facebook/bart-* vocab (GPT-2's 50257 + specials)
  c.data.seq_len = 1024           # not stated in the paper: the position table's size
  # §5.1: "Following RoBERTa, we use a batch size of 8000, and train the model for 500000
  # steps." The paper gives no learning rate or warmup: RoBERTa-large's (Liu et al. 2019,
  # Table 9): Adam b2 0.98, eps 1e-6, peak 4e-4, 30k warmup, linear decay, wd 0.01, no
  # gradient clipping.
  c.train.steps = 500_000
  c.train.global_batch = 8000
  c.optim.lr = 4e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 30_000
  c.optim.weight_decay = 0.01
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  c.optim.clip_norm = 0.0
  if variant == "tiny":  # CPU: trains in seconds on the built-in Shakespeare corpus.
    layers, d_model, heads, d_ff = 2, 128, 4, 512
    c.model.max_len = 64
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=1e-3)
    c.optim.clip_norm = 1.0  # the base recipe's clipping keeps the short warmup stable
  elif variant in SIZES:
    layers, d_model, heads, d_ff = SIZES[variant]
    # The paper names no hardware. 8000 x 1024 tokens per step as 25 micro-batches, 5
    # (large) or 10 (base) sequences per chip each; the encoder-decoder has no remat yet.
    c.topology = {"base": "v5p-64", "large": "v5p-128"}[variant]
    c.train.grad_accum = 25
  else:
    raise ValueError(f"configs/bart.py variant {variant!r}; valid: tiny, {', '.join(SIZES)}")
  c.model.update(num_layers=layers, num_decoder_layers=layers, d_model=d_model,
                 num_heads=heads, d_ff=d_ff)
  return c
