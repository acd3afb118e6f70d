"""ERNIE 3.0: a shared backbone with auto-encoding and auto-regressive branches trained
jointly (Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for
Language Understanding and Generation").

  python -m pretrain.main --config=configs/ernie3.py:tiny --workdir=runs/ernie3_tiny

Variants: tiny (CPU test size), 10b (the paper's pre-training settings: universal representation
module 48 layers, d 4096, 64 heads; each task-specific module 12 layers, d 768, 12 heads;
"10 billion parameters"). Hand count of ours (post-LN, d_ff = 4d, biases and norms
included, vocabulary 40,000 padded to 40,064, 512 positions):
  backbone 48 x 201.4M = 9,666M; embeddings 40,064 x 4096 + 512 x 4096 = 166M;
  each branch 12 x 7.09M + projections 2 x 3.15M = 91.4M, two of them 183M;
  total 10,015M, 0.2% over 10B.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: the Transformer-XL backbone with its recurrence memory and relative
# positions (we use a standard transformer with learned positions), knowledge masked LM
# (phrase / entity masking: we mask tokens or whole words), document LM over long
# documents, sentence reordering, sentence distance, universal knowledge-text prediction
# (needs a knowledge graph), progressive training, the paper's corpus (4TB, Chinese) and
# dropout.
NOT_IMPLEMENTED = ("transformer_xl_memory", "relative_positions", "knowledge_masking",
                   "document_lm", "sentence_reordering", "sentence_distance",
                   "knowledge_text_prediction", "progressive_training", "paper_corpus",
                   "dropout")


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "ernie3"
  # AE branch: BERT masking of 15% of tokens, 80/10/10.
  c.objective.mask_rate = 0.15
  c.objective.replace_mask = 0.8
  c.objective.replace_random = 0.1
  c.objective.whole_word = False
  c.model.name = "multi_branch"
  c.model.variant = "custom"
  c.model.pos_emb = "learned"
  c.model.norm = "post"
  c.model.embed_norm = True
  c.model.activation = "gelu"
  c.model.tie_embeddings = True
  c.model.head_transform = False
  c.model.ln_eps = 1e-5
  c.model.dtype = "float32"
  c.data.source = "shakespeare"
  c.data.tokenizer = "wordpiece"
  # Our choices (the paper's optimizer settings are not reproduced): AdamW, linear decay.
  c.train.steps = 375_000
  c.train.global_batch = 512
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 10_000
  c.optim.weight_decay = 0.01
  if variant == "tiny":
    c.model.update(num_layers=2, d_model=128, num_heads=4, d_ff=512, max_len=64,
                   branch_layers=1, branch_d_model=64, branch_heads=2, branch_d_ff=256)
    c.data.vocab_size = 2048
    c.data.seq_len = 64
    tiny_schedule(c, global_batch=16, lr=2e-3)
  elif variant == "10b":
    c.model.update(num_layers=48, d_model=4096, num_heads=64, d_ff=4 * 4096, max_len=512,
                   branch_layers=12, branch_d_model=768, branch_heads=12, branch_d_ff=4 * 768)
    # The paper does not give the 10B model's vocabulary; 40,000 is the released ERNIE 3.0
    # (base/medium, PaddleNLP) checkpoints' vocabulary size.
    c.data.vocab_size = 40_000
    c.data.seq_len = 512
    c.model.scan_layers = True
    c.model.remat = "full"
    c.mesh.fsdp = -1
    c.mesh.data = 1
    c.topology = "v5p-256"  # not given by the paper (it trained on 384 V100s)
  else:
    raise ValueError(f"configs/ernie3.py variant {variant!r}; valid: tiny, 10b")
  return c
