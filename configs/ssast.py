"""SSAST pretraining (Gong et al. 2022, "SSAST: Self-Supervised Audio Spectrogram
Transformer", AAAI 2022).

  python -m pretrain.main --config=configs/ssast.py:tiny --workdir=runs/ssast_tiny

Variants: tiny (pocketsphinx's real speech on CPU), patch-base (SSAST-Base, 16x16 patches)
and frame-base (SSAST-Base, 128-bin x 2-frame patches), both on 10.24 s clips of 128 log-mel
bins (25 ms windows, 10 ms hop), 400 masked patches of 512, loss = InfoNCE + 10 MSE.
SSAST-Base is the ViT-Base encoder (12 blocks, 768 wide, 12 heads): the paper states 89M
params; this build has 87.2M (tests/test_audio.py), the reference code's 1.5M more being
(we believe) timm's two 1000-way classification heads it leaves unused in pretraining, plus
its second [CLS] ("dist") token and their positions.
"""
from __future__ import annotations

from configs.base import base_config, tiny_schedule

# Not built: the AudioSet-2M + LibriSpeech 960h corpus (here pocketsphinx's 56 s of real
# speech), Kaldi fbank details (a Hamming window, dithering, pre-emphasis; here a Hann
# window, our NumPy log mel), the second ("distillation") [CLS] token, and the paper's
# optimizer schedule (the numbers below are ours). Cluster masking clips squares at the
# grid's edges where the reference code's flat indices wrap to the next row.
NOT_IMPLEMENTED = ("audioset_librispeech_corpus", "kaldi_fbank_hamming", "second_cls_token",
                   "paper_optimizer_schedule")

# The paper's input: 1024 frames x 128 mel bins; 16x16 patches -> 64 x 8 = 512, or
# 2-frame x 128-bin patches -> 512 x 1; 400 of them masked (§3, "Pretraining Details").
PATCHES = {"patch-base": (16, 16), "frame-base": (2, 128)}


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = base_config()
  c.objective.name = "ssast"
  c.objective.mask_patches = 400
  c.objective.cluster_masking = True  # patch-based: masked patches come in clusters
  c.objective.discriminative_weight = 1.0
  c.objective.generative_weight = 10.0  # lambda = 10 on the generative loss
  c.model.name = "ssast"
  c.model.variant = "vit:B"
  c.model.num_layers = c.model.d_model = c.model.num_heads = c.model.d_ff = 0
  c.model.patch_size = PATCHES["patch-base"]
  c.model.pos_emb = "learned"  # AST's trainable position embedding
  c.model.norm = "pre"
  c.model.activation = "gelu_exact"  # timm's nn.GELU
  c.model.ln_eps = 1e-6
  c.model.dtype = "float32"
  c.data.source = "pocketsphinx_speech"
  c.data.sample_rate = 16000
  c.data.mel_bins = 128
  c.data.clip_frames = 1024
  c.data.window_ms, c.data.hop_ms = 25.0, 10.0
  c.optim.update(lr=1e-4, schedule="cosine", weight_decay=0.0)
  if variant == "tiny":
    c.model.variant = "custom"
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 32, 4, 64
    c.model.patch_size = (8, 8)
    c.data.mel_bins, c.data.clip_frames = 32, 64  # 8 x 4 = 32 patches
    c.objective.mask_patches = 16
    c.model.pos_emb = "sincos"  # a few CPU steps cannot learn where each patch sits
    tiny_schedule(c, global_batch=64, lr=1e-2)
  elif variant in PATCHES:
    c.model.patch_size = PATCHES[variant]
    c.objective.cluster_masking = variant == "patch-base"  # frame-based: random frames
    c.topology = "v5p-8"
  else:
    raise ValueError(f"configs/ssast.py variant {variant!r}; valid: tiny, patch-base, "
                     "frame-base")
  return c
