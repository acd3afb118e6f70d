"""TERA pretraining (Liu, Li and Lee 2021, "TERA: Self-Supervised Learning of Transformer
Encoder Representation for Speech", IEEE/ACM TASLP 29).

  python -m pretrain.main --config=configs/tera.py:tiny --workdir=runs/tera_tiny

Variants: tiny (pocketsphinx's real speech on CPU), base / medium / large: 3 / 6 / 12
BERT-style blocks, 768 wide, 12 heads, MLP 3072, over 80-bin log-mel frames. The paper's
counts, 21.3M / 42.6M / 85.1M, are the encoder's (frame projection, its LayerNorm and the
blocks), without the pretraining-only prediction head (tests/test_audio.py asserts them).
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not built: the LibriSpeech corpus (here pocketsphinx's 56 s of real speech), whole
# utterances of any length (here fixed clips of data.clip_frames), dropout, and the
# paper's optimizer schedule (the numbers below are ours).
NOT_IMPLEMENTED = ("librispeech_corpus", "variable_length_utterances", "dropout",
                   "paper_optimizer_schedule")

LAYERS = {"base": 3, "medium": 6, "large": 12}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "tera"
  # The alteration policy (our reading of TERA §III-A): 15% of the frames in blocks of 7,
  # a frequency band of up to 8 bins, Gaussian noise (std 0.2) on 15% of the clips.
  c.objective.time_mask_proportion = 0.15
  c.objective.time_mask_width = 7
  c.objective.freq_mask_max_width = 8
  c.objective.noise_proportion = 0.15
  c.objective.noise_std = 0.2
  c.model.name = "frame_transformer"
  c.model.variant = "custom"
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 3, 768, 12, 3072
  c.model.norm = "post"
  c.model.activation = "gelu_exact"
  c.model.ln_eps = 1e-12
  c.model.dtype = "float32"
  c.data.source = "pocketsphinx_speech"
  c.data.sample_rate = 16000
  c.data.mel_bins = 80
  c.data.clip_frames = 1024
  c.data.window_ms, c.data.hop_ms = 25.0, 10.0
  c.optim.update(lr=2e-4, schedule="linear", weight_decay=0.0)
  if variant == "tiny":
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 32, 4, 64
    c.data.mel_bins, c.data.clip_frames = 32, 64
    c.objective.freq_mask_max_width = 4
    tiny_schedule(c, global_batch=16, lr=3e-3)
  elif variant in LAYERS:
    c.model.num_layers = LAYERS[variant]
    c.topology = "v5p-8"
  else:
    raise ValueError(f"configs/tera.py variant {variant!r}; valid: tiny, base, medium, large")
  return c
