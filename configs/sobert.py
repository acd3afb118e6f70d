"""SOBert: BERT MLM pretrained on StackOverflow with a long context and a large batch
(Mukherjee & Hellendoorn 2023, "Stack Over-Flowing with Results: The Case for
Domain-Specific Pre-Training Over One-Size-Fits-All Models", arXiv 2306.03268).

  python -m pretrain.main --config=configs/sobert.py:tiny --workdir=runs/sobert_tiny

Variants: tiny (CPU test size), base, large. The abstract's recipe: context 2,048 tokens,
batch 0.5M tokens, 27B training tokens, Megatron-LM; SOBertBase and SOBertLarge. Everything
else is the BERT recipe (configs/bert.py), with a BPE vocabulary trained on the pretraining
corpus itself (in-domain).
"""
from __future__ import annotations

from configs import bert

# Not implemented: the StackOverflow corpus (no offline copy; use data.source=text_files),
# and what configs/bert.py lists.
NOT_IMPLEMENTED = ("stackoverflow_corpus", *bert.NOT_IMPLEMENTED)

SEQ_LEN = 2048          # abstract: "a very large context size (2,048 tokens)"
GLOBAL_BATCH = 256      # 256 x 2,048 = 524,288 tokens: the abstract's "batch size (0.5M tokens)"
TRAIN_TOKENS = 27e9     # abstract: "training set (27B tokens)"; one pass over it below
VOCAB_SIZE = 50000      # inferred, not quoted: the size that gives the counts below
# (layers, d_model, heads, d_ff). The headline counts are 125M (arXiv v2's abstract; v1 says
# 109M) and 762M. base is BERT-base with a 2,048-position table; for large, 24 layers of
# width 1536 is the BERT-style shape (d_ff = 4 d_model, head dim 96) that gives 762M with
# this vocabulary and context: the abstract does not spell the shapes out.
SIZES = {"base": (12, 768, 12, 3072), "large": (24, 1536, 16, 6144)}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", *SIZES):
    raise ValueError(f"configs/sobert.py variant {variant!r}; valid: tiny, {', '.join(SIZES)}")
  c = bert.get_config("tiny" if variant == "tiny" else "base")
  # Megatron-LM's BERT puts LayerNorm at each sub-block's input (Shoeybi et al. 2019 §3,
  # Figure 7: what made BERT scale past BERT-large), with a final LayerNorm.
  c.model.norm = "pre"
  c.data.tokenizer = "bpe"
  if variant == "tiny":
    return c
  layers, d_model, heads, d_ff = SIZES[variant]
  c.model.update(variant="custom", num_layers=layers, d_model=d_model, num_heads=heads,
                 d_ff=d_ff, max_len=SEQ_LEN)
  c.data.update(seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE)
  c.train.update(global_batch=GLOBAL_BATCH, steps=round(TRAIN_TOKENS / (GLOBAL_BATCH * SEQ_LEN)))
  # The abstract's budgets ($187 and $800 of cloud GPUs) name no hardware; BERT-base's and
  # BERT-large's slices (configs/bert.py) hold the same 256-sequence batch.
  c.topology = {"base": "v5p-32", "large": "v5p-128"}[variant]
  return c
