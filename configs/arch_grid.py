"""The architecture x objective grid of Wang et al. 2022, "What Language Model Architecture
and Pretraining Objective Work Best for Zero-Shot Generalization?".

  python -m pretrain.main --config=configs/arch_grid.py:tiny:nd_mlm --workdir=runs/nd_mlm

Variants `<cell>` (the paper's size) and `tiny:<cell>` (CPU test size), one per trained cell:
  cd_flm  causal decoder, full LM                 causal_lm
  cd_mlm  causal decoder, span corruption         decoder_span_corruption, decoder_mask=causal
  nd_plm  non-causal decoder, prefix LM           prefix_lm
  nd_mlm  non-causal decoder, span corruption     decoder_span_corruption, decoder_mask=prefix
  ed_plm  encoder-decoder, prefix LM              encoder_decoder_prefix_lm
  ed_mlm  encoder-decoder, span corruption        span_corruption
Every cell shares one model family (T5.1.1-like blocks: pre-norm RMSNorm, gated MLP,
rotary) and one vocabulary (tokenizer + 100 sentinel ids), so the three decoder cells have
the same params: a checkpoint of one loads fully into another with `init_from.path`, as the
paper's adaptations (CD:FLM -> ND:MLM, ND -> CD) need.

Paper size (the paper's setup, and the authors' t5x configs `dec_xxl.gin` / `enc_dec_xxl.gin`, T5.1.1
XXL's shape): decoder-only 24 layers, d_model 4096, 64 heads of 64, gated-GELU MLP of
10,240: 4.8B params; the encoder-decoder has 24 + 24 such layers (each token still passes
24 layers): 11B. Input and output embeddings are tied here: that counts 4.76B and 11.01B,
where T5.1.1's untied ones would count 4.89B and 11.14B; the paper gives only the rounded
figures, so which one it had we cannot tell. Inputs 512 and targets 114 tokens (T5's
span-corruption lengths of a 568-token clean text); full and prefix LM rows take
512 + 114 = 626 tokens. 168B tokens = 131,072 steps of 2,048 rows x 626 tokens (our
reading of the paper's setup; every cell runs the same steps and batch, so the MLM cells
consume 568 clean tokens per row).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not implemented: T5's relative position bias (rotary instead) and gated GELU (SwiGLU:
# the same three matrices, so the same param count), Adafactor with the inverse-square-root
# schedule (AdamW), the final EOS of inputs and targets (so MLM rows are 511 + 113 = 624
# positions, not 626), C4 (the built-in corpora instead), the multitask finetuning and
# zero-shot evaluation the paper compares the cells by, and its adaptation runs (ND:MLM ->
# CD:FLM, CD:FLM -> ND:MLM) as named recipes: they are `init_from` runs of these cells.
NOT_IMPLEMENTED = ("relative_position_bias", "gated_gelu", "adafactor",
                   "inverse_sqrt_schedule", "target_eos", "c4", "multitask_finetuning",
                   "zero_shot_evaluation", "adaptation_recipes")

# cell -> (objective.name, decoder_mask or None); decoder cells use the shared decoder.
CELLS = {
    "cd_flm": ("causal_lm", None),
    "cd_mlm": ("decoder_span_corruption", "causal"),
    "nd_plm": ("prefix_lm", None),
    "nd_mlm": ("decoder_span_corruption", "prefix"),
    "ed_plm": ("encoder_decoder_prefix_lm", None),
    "ed_mlm": ("span_corruption", None),
}
PAPER = dict(num_layers=24, d_model=4096, num_heads=64, d_ff=10240)
TINY = dict(num_layers=2, d_model=128, num_heads=4, d_ff=512)
LM_LEN, CLEAN_MLM_LEN = 626, 568  # 568 clean tokens -> 511 inputs + 113 targets
TINY_LM_LEN, TINY_CLEAN_MLM_LEN = 64, 58  # 58 -> 52 + 12 = 64


def get_config(arg: str | None = None):
  size, _, cell = (arg or "tiny:cd_flm").rpartition(":")
  if size not in ("", "tiny") or cell not in CELLS:
    raise ValueError(f"configs/arch_grid.py variant {arg!r}; valid: <cell> or tiny:<cell> "
                     f"with cell in {', '.join(CELLS)}")
  objective, decoder_mask = CELLS[cell]
  tiny = size == "tiny"
  c = base_config()
  c.objective.name = objective
  if decoder_mask:
    c.objective.decoder_mask = decoder_mask
  if cell.endswith("mlm"):
    c.objective.noise_density = 0.15  # T5's span corruption (Raffel et al. 2020 §3.3.4)
    c.objective.mean_span_length = 3.0
  encoder_decoder = cell.startswith("ed")
  c.model.name = "encoder_decoder" if encoder_decoder else "transformer_extra_ids"
  c.model.variant = "custom"
  c.model.update(TINY if tiny else PAPER)
  if encoder_decoder:
    c.model.num_decoder_layers = c.model.num_layers  # twice the decoder-only depth
  c.model.extra_ids = 100  # T5's sentinels, in every cell's vocabulary
  c.model.max_len = 128 if tiny else 1024  # unused by rotary; above every row length
  c.model.update(pos_emb="rotary", norm="pre", norm_type="rmsnorm", activation="swiglu",
                 tie_embeddings=True, head_transform=False, ln_eps=1e-6, dtype="float32")
  c.data.source = "shakespeare"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = 2048 if tiny else 32000  # T5's SentencePiece vocabulary: 32,000
  lm_len, mlm_len = (TINY_LM_LEN, TINY_CLEAN_MLM_LEN) if tiny else (LM_LEN, CLEAN_MLM_LEN)
  c.data.seq_len = mlm_len if cell.endswith("mlm") else lm_len
  # AdamW stands in for the paper's Adafactor (lr 0.01 / sqrt(step), 10k warmup steps):
  # lr 1e-4 with the same warmup and linear decay, our choice as in configs/t5.py.
  c.train.update(steps=131_072, global_batch=2048)
  c.optim.update(lr=1e-4, schedule="linear", warmup_steps=10_000, weight_decay=0.0,
                 b1=0.9, b2=0.999, eps=1e-8)
  if tiny:
    tiny_schedule(c, global_batch=16, lr=3e-3)
  else:
    # The paper trained on TPUv4 pods without a per-model slice; params and Adam state are
    # sharded over all 128 chips (FSDP). `python -m pretrain.aot`: nd_mlm 13.5 GiB per chip,
    # ed_plm 58.2 GiB (of 95); the other cells were not compiled.
    c.topology = "v5p-256"
    c.mesh.update(data=1, fsdp=-1)
    if encoder_decoder:
      # No scan or remat in the encoder-decoder yet: 4 micro-batches (4 rows per chip each)
      # bound the 48 layers' saved activations instead.
      c.train.grad_accum = 4
    else:
      c.model.update(scan_layers=True, remat="full")
  return c
