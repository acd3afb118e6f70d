"""Model sizes by name, decoded in one place, each table cited.

Configs call these and pass the dict into a model config; a custom tiny size for CPU
tests is the config's business.
"""
from __future__ import annotations

import re


def _size(layers: int, width: int, heads: int, d_ff: int) -> dict:
  return dict(num_layers=layers, d_model=width, num_heads=heads, d_ff=d_ff)


def _unknown(family: str, name: str, valid) -> ValueError:
  return ValueError(f"unknown {family} size {name!r}; valid: {sorted(valid)}")


# BERT miniatures, Turc et al. 2019 "Well-Read Students Learn Better" (README table):
# L in {2,4,6,8,10,12} x H in {128,256,512,768}, heads = H/64, d_ff = 4H.
_BERT = {f"L-{l}_H-{h}": _size(l, h, h // 64, 4 * h)
         for l in (2, 4, 6, 8, 10, 12) for h in (128, 256, 512, 768)}
# Named miniatures (same README) and Devlin et al. 2018 §3: base L12 H768 A12, large L24 H1024 A16.
_BERT.update(tiny=_BERT["L-2_H-128"], mini=_BERT["L-4_H-256"], small=_BERT["L-4_H-512"],
             medium=_BERT["L-8_H-512"], base=_size(12, 768, 12, 3072),
             large=_size(24, 1024, 16, 4096))

# Radford et al. 2019 Table 2 (heads from the released checkpoints); context 1024, vocab 50257.
_GPT2 = {
    "small": _size(12, 768, 12, 3072),
    "medium": _size(24, 1024, 16, 4096),
    "large": _size(36, 1280, 20, 5120),
    "xl": _size(48, 1600, 25, 6400),
}
GPT2_CONTEXT = 1024
GPT2_VOCAB = 50257

# Dosovitskiy et al. 2020 Table 1 (B/L/H); Touvron et al. 2021 (DeiT) Table 1 (Ti/S).
_VIT = {
    "Ti": _size(12, 192, 3, 768),
    "S": _size(12, 384, 6, 1536),
    "B": _size(12, 768, 12, 3072),
    "L": _size(24, 1024, 16, 4096),
    "H": _size(32, 1280, 16, 5120),
}
# He et al. 2021 (MAE) §A.1: decoder 512 wide, 8 blocks, 16 heads, MLP ratio 4.
MAE_DECODER = dict(dec_d_model=512, dec_layers=8, dec_heads=16, dec_d_ff=2048)


def bert(name: str) -> dict:
  """'base', 'large', 'tiny'..'medium' or 'L-{2..12}_H-{128..768}' -> size dict."""
  if name not in _BERT:
    raise _unknown("BERT", name, _BERT)
  return dict(_BERT[name])


def gpt2(name: str) -> dict:
  """'small' | 'medium' | 'large' | 'xl' -> size dict."""
  if name not in _GPT2:
    raise _unknown("GPT-2", name, _GPT2)
  return dict(_GPT2[name])


def vit(name: str) -> dict:
  """'B/16' (or '3D' patches like 'B/2x16x16', or 'B' without a patch) -> size dict with
  patch_size: a tuple of the per-axis patch sides, square for a single number
  ('B/16' -> (16, 16)); None when no patch is given."""
  match = re.fullmatch(r"([A-Za-z]+)(?:/(\d+(?:x\d+)*))?", name)
  if not match or match.group(1) not in _VIT:
    raise _unknown("ViT", name, [f"{v}/<patch>" for v in _VIT])
  size, patch = dict(_VIT[match.group(1)]), match.group(2)
  sides = tuple(int(p) for p in patch.split("x")) if patch else None
  size["patch_size"] = sides * 2 if sides and len(sides) == 1 else sides
  return size
