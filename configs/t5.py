"""T5 span-corruption pretraining of an encoder-decoder (Raffel et al. 2020, "Exploring the
Limits of Transfer Learning with a Unified Text-to-Text Transformer").

  python -m pretrain.main --config=configs/t5.py:tiny --workdir=runs/t5_tiny

Variants: tiny (CPU test size), small, base, large (T5.1.0 sizes, §3.1.1 and §3.7).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# The T5.1.0 layout is built (relative position bias in self-attention, scale-only RMSNorm,
# ReLU MLPs, no biases: `python -m pretrain.hf.convert export` writes an HF T5 checkpoint).
# Not implemented: the d_model^-0.5 rescaling before the tied output layer (a constant
# factor on the decoder's final norm scale, which is learned: same function class, other
# init; imported checkpoints fold it in there), dropout 0.1, the final EOS/sentinel of each
# target, and Adafactor with the inverse-square-root schedule (we use AdamW, see below).
NOT_IMPLEMENTED = ("tied_logit_scaling", "dropout", "target_eos", "adafactor",
                   "inverse_sqrt_schedule")

# (encoder layers = decoder layers, d_model, heads, d_ff): §3.1.1 baseline ("base", ~220M
# params), §3.7 "Small" (~60M) and "Large" (~770M); d_kv = 64 throughout.
SIZES = {"small": (6, 512, 8, 2048), "base": (12, 768, 12, 3072),
         "large": (24, 1024, 16, 4096)}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "span_corruption"
  # §3.3.4 / §3.7: corrupt 15% of tokens in spans of mean length 3.
  c.objective.noise_density = 0.15
  c.objective.mean_span_length = 3.0
  c.model.name = "encoder_decoder"
  c.model.variant = "custom"
  c.model.max_len = 512
  c.model.pos_emb = "relative"    # §2.1: 32 log-spaced buckets up to 128, one table per stack
  c.model.norm = "pre"            # §3.1.1: LayerNorm at each sub-block's input ...
  c.model.norm_type = "rmsnorm"   # ... "a simplified layer norm": scale only, no bias
  c.model.use_bias = False        # §2.1: no biases anywhere
  c.model.activation = "relu"     # §2.1 / T5.1.0: ReLU feed-forward
  c.model.tie_embeddings = True   # T5.1.0 shares the input and output embeddings
  c.model.head_transform = False
  c.model.ln_eps = 1e-6
  c.model.dtype = "float32"
  c.model.extra_ids = 100         # T5's 100 sentinel ids above the SentencePiece vocabulary
  c.data.source = "shakespeare"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 32000       # §3.1.3: SentencePiece, 32,000 wordpieces
  c.data.seq_len = 512            # §3.1.2: maximum sequence length 512
  # §3.1.2: 2^19 = 524,288 steps, batch 128 sequences of 512 tokens (2^16 tokens). The
  # paper's Adafactor with lr 1/sqrt(max(step, 10^4)) is not available: AdamW with a
  # 10^4-step warmup (the paper's constant phase) and linear decay; lr 1e-4 and no weight
  # decay are our choice, not the paper's.
  c.train.steps = 524_288
  c.train.global_batch = 128
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 10_000
  c.optim.weight_decay = 0.0
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  if variant == "tiny":  # CPU: trains in seconds on the built-in Shakespeare corpus.
    layers, d_model, heads, d_ff = 2, 128, 4, 512
    c.model.max_len = 64
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=3e-3)
  elif variant in SIZES:
    layers, d_model, heads, d_ff = SIZES[variant]
    # Raffel et al. trained on TPU v3 pod slices (§3.1.2) without naming sizes per model;
    # these hold the 128 x 512-token batch at 2-8 sequences per chip.
    c.topology = {"small": "v5p-32", "base": "v5p-64", "large": "v5p-128"}[variant]
  else:
    raise ValueError(f"configs/t5.py variant {variant!r}; valid: tiny, {', '.join(SIZES)}")
  c.model.update(num_layers=layers, num_decoder_layers=layers, d_model=d_model,
                 num_heads=heads, d_ff=d_ff)
  return c
