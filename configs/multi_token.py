"""Multi-token prediction: a shared causal trunk and N one-block output heads, head k
predicting token t+k (Gloeckle et al. 2024, "Better & Faster Large Language Models via
Multi-token Prediction").

  python -m pretrain.main --config=configs/multi_token.py:tiny --workdir=runs/multi_token_tiny

Variants: tiny (CPU test size, n = 4), 7B (n = 4 on a Llama-2-7B-shaped model; see below).
Data, tokenizer and optimizer are the GPT recipe's (configs/gpt.py).
"""
from __future__ import annotations

from configs import gpt

# Not implemented: the paper's memory-saving order of the backward pass (one head's logits
# at a time; here XLA holds all N heads' logits), its code corpora (shakespeare here), and
# for the 7B shape Llama-2's RMSNorm and bias-free layers (we have LayerNorm and biases:
# +0.02% params), plus what configs/gpt.py lists.
NOT_IMPLEMENTED = ("sequential_head_backward", "code_corpus", "rmsnorm", "bias_free_dense",
                   *gpt.NOT_IMPLEMENTED)

# Llama-2-7B (Touvron et al. 2023, Table 1 and §2.2): 32 layers, d_model 4096, 32 heads,
# SwiGLU MLP 11008, vocabulary 32,000, rotary positions, context 4096, untied output.
LLAMA2_7B = dict(layers=32, d_model=4096, heads=32, d_ff=11008, vocab=32000, context=4096)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "7B"):
    raise ValueError(f"configs/multi_token.py variant {variant!r}; valid: tiny, 7B")
  c = gpt.get_config("tiny" if variant == "tiny" else "small")
  c.objective.name = "multi_token"
  c.objective.future_decay = 1.0  # §2: the plain sum of the heads' losses
  c.model.name = "multi_token"
  c.model.num_future = 4          # the paper's main setting (n = 4)
  if variant == "7B":
    # Heads take the top n blocks of the 32: a 28-block trunk + 4 one-block heads is
    # Llama-2-7B's 32 blocks, so the model has Llama-2-7B's 6.74B params (the count
    # tests assert). Whether the paper's n = 4 trunk keeps all 32 layers (7.55B) is not
    # restated here: ours is the parameter-matched reading.
    s = LLAMA2_7B
    c.model.update(variant="custom", num_layers=s["layers"] - c.model.num_future,
                   d_model=s["d_model"], num_heads=s["heads"], d_ff=s["d_ff"],
                   max_len=s["context"], pos_emb="rotary", activation="swiglu",
                   tie_embeddings=False)
    c.data.vocab_size, c.data.seq_len = s["vocab"], s["context"]
    # 200B tokens (the paper's 7B code runs) in batches of 4M tokens (1024 x 4096; the
    # batch is ours) = 47,684 steps; Llama-2's AdamW settings (lr 3e-4, b2 0.95, wd 0.1,
    # 2000 warmup steps, cosine to 10%).
    c.train.update(steps=47_684, global_batch=1024)
    c.optim.update(lr=3e-4, warmup_steps=2000, b2=0.95, weight_decay=0.1, schedule="cosine",
                   end_lr_fraction=0.1)
    # Slice ours (the paper trained on GPUs): `python -m pretrain.aot` needs 105 GiB/chip
    # on v5p-256 in float32 (the N heads' logits and 4096^2 attention scores), 83 GiB on
    # v5p-512 (4 sequences per chip) in bfloat16, Llama-2's own training precision.
    c.topology = "v5p-512"
    c.mesh.update(data=1, fsdp=-1)
    c.model.update(scan_layers=True, remat="full", dtype="bfloat16")
  return c
