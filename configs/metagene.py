"""METAGENE-1: a Llama-style causal LM on metagenomic DNA reads with a small BPE vocabulary
(Liu et al. 2025, "METAGENE-1: Metagenomic Foundation Model for Pandemic Monitoring",
arXiv 2501.02045).

  python -m pretrain.main --config=configs/metagene.py:tiny --workdir=runs/metagene_tiny

Variants: tiny (CPU test size), 7b. The abstract: "a 7-billion-parameter autoregressive
transformer" on short DNA/RNA reads, with byte-pair encoding "tailored for metagenomic
sequences". Data: `data.source=dna`, 150-nt reads cut from real genomes (the built-in
substitute for the paper's wastewater reads; pretrain/data/corpora.py), tokenized by a BPE
of 1,024 entries trained on them (tests/test_domain.py checks its compression).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: the wastewater corpus (1.5T base pairs, not public) and bias-free dense
# layers (ours carry biases: +0.02% params at 7B).
NOT_IMPLEMENTED = ("wastewater_corpus", "bias_free_dense")

# The released checkpoint's config (HF metagene-ai/METAGENE-1 config.json): LlamaForCausalLM,
# 32 layers, hidden 4096, 32 heads (head dim 128), intermediate 11008, vocab 1024, 512
# positions, RMSNorm eps 1e-5, SiLU-gated MLP, rotary theta 1e4, untied embeddings.
SIZE_7B = (32, 4096, 32, 11008)


def llama_architecture(c) -> None:
  """Llama's block (Touvron et al. 2023 §2.2): pre-norm RMSNorm, SwiGLU, rotary positions,
  untied input and output embeddings."""
  c.model.update(name="transformer", pos_emb="rotary", norm="pre", norm_type="rmsnorm",
                 activation="swiglu", tie_embeddings=False, head_transform=False,
                 ln_eps=1e-5, dtype="float32")
  c.objective.name = "causal_lm"
  c.data.tokenizer = "bpe"


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  llama_architecture(c)
  c.data.source = "dna"
  c.data.vocab_size = 1024
  c.data.seq_len = 512
  # Pretraining config of metagene-ai/metagene-pretrain (config_hub/pretrain/genomicsllama.yml):
  # global batch 7,680 sequences of 512 tokens, AdamW lr 3e-4 (b1 0.9, b2 0.95, weight decay
  # 0.1, clip 1.0), 200 warmup steps, cosine to 4e-5, 1T tokens (254,313 steps).
  c.train.update(global_batch=7680, steps=254_313)
  c.optim.update(lr=3e-4, schedule="cosine", warmup_steps=200, end_lr_fraction=4e-5 / 3e-4,
                 weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0)
  if variant == "tiny":
    c.model.update(variant="custom", num_layers=2, d_model=64, num_heads=4, d_ff=172,
                   max_len=64)
    c.data.update(seq_len=64, vocab_size=512)
    tiny_schedule(c, global_batch=16, lr=3e-3)
  elif variant == "7b":
    layers, d_model, heads, d_ff = SIZE_7B
    c.model.update(variant="custom", num_layers=layers, d_model=d_model, num_heads=heads,
                   d_ff=d_ff, max_len=512)
    # The paper trained on H100s; a v5p-256 slice (128 chips) holds 60 sequences per chip,
    # params and Adam state sharded over all chips, scanned layers with full remat.
    c.topology = "v5p-256"
    c.mesh.update(data=1, fsdp=-1)
    c.model.update(scan_layers=True, remat="full")
  else:
    raise ValueError(f"configs/metagene.py variant {variant!r}; valid: tiny, 7b")
  return c
