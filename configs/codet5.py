"""CodeT5 identifier-aware denoising of an encoder-decoder on Python source (Wang et al.
2021, "CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code
Understanding and Generation").

  python -m pretrain.main --config=configs/codet5.py:tiny --workdir=runs/codet5_tiny

Variants: tiny (CPU test size), small (60M) and base (220M), §4.1. Built on the T5 recipe
(configs/t5.py): same model, span corruption settings and optimizer notes.
"""
from __future__ import annotations

from configs import t5
from configs.base import tiny_schedule

# Left out: the CodeSearchNet + BigQuery C/C# corpus (we train on this interpreter's stdlib)
# and everything configs/t5.py leaves out of T5 itself. The bimodal dual generation stage
# (§3.2) is its own recipe, configs/codet5_bimodal.py.
NOT_IMPLEMENTED = ("codesearchnet_data", *t5.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "small", "base"):
    raise ValueError(f"configs/codet5.py variant {variant!r}; valid: tiny, small, base")
  c = t5.get_config(variant)
  c.objective.name = "codet5"
  # §3.1: MSP, IT and MIP alternate with equal probability; MSP corrupts 15% of tokens in
  # spans of mean length 3 (T5's settings, kept from configs/t5.py).
  c.objective.task_probs = (1 / 3, 1 / 3, 1 / 3)
  c.model.name = "encoder_decoder_tagger"  # + the identifier-tagging head
  c.data.source = "python_stdlib"
  c.data.tokenizer = "bpe"
  # §4.1: a code-specific byte-level BPE of 32,000 tokens plus T5's 100 sentinels = the
  # released 32,100-id vocabulary; maximum source and target lengths 512 and 256.
  c.data.vocab_size = 32_000
  c.objective.target_len = 256
  if variant == "tiny":  # seq_len 64 as configs/t5.py:tiny
    c.data.vocab_size = 2048
    c.objective.target_len = 32
    tiny_schedule(c, global_batch=16, lr=3e-3)
  else:
    # §4.1: CodeT5-small 60M / base 220M on 16 A100s, batch 1024, lr 2e-4, 100 epochs of
    # denoising; steps and hardware here are scaled like configs/t5.py's.
    c.train.global_batch = 1024
    c.optim.lr = 2e-4
  return c
