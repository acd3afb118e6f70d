"""Carrying params into a model whose position table or vocabulary differs from the source's.

`init_from` (and a teacher's `path`) load every param that fits by path and shape; the two
tables below are the ones that legitimately change shape when a run is continued with
another sequence length, image size or tokenizer. Both are rebuilt here from the source
table (NumPy, on the host) instead of being left freshly initialised.

Positions. A text table (max_len, D) that grows is linearly interpolated along positions
(the scheme ViT uses for its grid, Dosovitskiy et al. 2021 §3.2, in 1-D): the new table
still spans the positions the model learned, at a finer step, so no row is untrained. The
alternative, Longformer's (Beltagy et al. 2020 §5) copy of the table over the new length,
keeps short-range steps exact but repeats absolute positions; interpolation was chosen as the
one scheme shared with the image grid. A table that shrinks keeps its first rows: positions
0..n-1 then mean exactly what they meant (interpolating would move every one of them). A
ViT grid (N, D) is resampled bilinearly as a 2-D (h, w) image, the rows before the grid
(cls/prefix, none in our ViT, one in HF ViT's table) kept as they are. The sampling is
half-pixel centred (torch `align_corners=False`, `jax.image.resize` "linear" upsampling).

Vocabulary (continued pretraining with a new tokenizer, as BIOptimus, Pavlova & Makhlouf
2023, extends BERT's vocabulary for biomedical text; their contextualized weight distillation
is not done here): a row whose token string exists in both tokenizers is copied; any other
new token is decoded to text with the new tokenizer, encoded with the old one, and its row is
the mean of those old rows (FVT, Gee et al. 2022), so the continued run starts from what the
old model knew of the same characters. Applied to every vocab-indexed
param (input and output tables, logits bias).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tokenizers


def resize_linear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Linear interpolation of `x` along `axis` to `size` samples, half-pixel centred:
  output i reads input coordinate (i + 0.5) * n / size - 0.5, clamped to the ends."""
  n = x.shape[axis]
  coord = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
  lo = np.floor(coord).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  shape = [1] * x.ndim
  shape[axis] = size
  frac = (coord - lo).reshape(shape)
  return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def resize_sequence_table(table: np.ndarray, length: int) -> np.ndarray:
  """(n, D) text positions -> (length, D): interpolated when longer, first rows when shorter."""
  if length <= table.shape[0]:
    return table[:length]
  return resize_linear(table, length, axis=0)


def square_grid(num: int) -> tuple[int, int] | None:
  side = math.isqrt(num)
  return (side, side) if side * side == num else None


def resize_grid_table(table: np.ndarray, grid: tuple[int, int], new_grid: tuple[int, int],
                      num_prefix: int = 0) -> np.ndarray:
  """(prefix + h*w, D) row-major grid positions -> (prefix + H*W, D), bilinearly resampled;
  the prefix rows (cls) are kept."""
  prefix, rows = table[:num_prefix], table[num_prefix:]
  if rows.shape[0] != math.prod(grid):
    raise ValueError(f"{rows.shape[0]} grid rows do not form a {grid} grid")
  image = rows.reshape(*grid, -1)
  for axis, size in enumerate(new_grid):
    image = resize_linear(image, size, axis)
  return np.concatenate([prefix, image.reshape(math.prod(new_grid), -1)], axis=0)


def is_sequence_table(name: str) -> bool:
  """TextTransformer's learned positions (`.../pos_embed/table`)."""
  return name.split("/")[-2:] == ["pos_embed", "table"]


def is_grid_table(name: str) -> bool:
  """ViT/MAE learned patch positions (`encoder/pos/learned/table`, `dec_pos/learned/table`)."""
  parts = name.split("/")
  return len(parts) >= 3 and parts[-2:] == ["learned", "table"] and parts[-3].endswith("pos")


def resize_positions(name: str, table: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """The source position table `name` resized to the target `shape`; None when `name` is
  no position table or the widths differ. Grids must be square (the row count alone does
  not tell a 4x8 grid from 8x4; those are left fresh)."""
  if table.ndim != 2 or table.shape[1:] != tuple(shape[1:]):
    return None
  if is_sequence_table(name):
    return resize_sequence_table(table, shape[0])
  if is_grid_table(name):
    grid, new_grid = square_grid(table.shape[0]), square_grid(shape[0])
    if grid and new_grid:
      return resize_grid_table(table, grid, new_grid)
  return None


def is_vocab_param(name: str) -> bool:
  """Params indexed by token id on their first axis: Embed tables and the logits bias."""
  parts = name.split("/")
  return parts[-1] == "logits_bias" or (parts[-2:-1] in (["embed"], ["unembed"])
                                        and parts[-1] == "table")


@dataclasses.dataclass(frozen=True)
class VocabMap:
  """For every new token id, the old ids whose rows it starts from (empty: left fresh).

  copied: ids whose token string the old vocabulary has; averaged: ids built from the old
  pieces of their text; fresh: ids whose text the old tokenizer encodes to nothing.
  """
  sources: tuple[tuple[int, ...], ...]
  copied: int
  averaged: int
  fresh: int
  old_size: int

  @classmethod
  def build(cls, old: tokenizers.Tokenizer, new: tokenizers.Tokenizer) -> VocabMap:
    old_vocab = old.get_vocab()
    sources, copied, averaged = [], 0, 0
    for i in range(new.get_vocab_size()):
      token = new.id_to_token(i)
      if token in old_vocab:
        sources.append((old_vocab[token],))
        copied += 1
        continue
      pieces = tuple(old.encode(new.decode([i], skip_special_tokens=False),
                                add_special_tokens=False).ids)
      sources.append(pieces)
      averaged += bool(pieces)
    return cls(tuple(sources), copied, averaged, len(sources) - copied - averaged,
               old.get_vocab_size())

  def apply(self, table: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Old (padded) vocab-indexed `table` -> the new one; rows without sources (and the
    padding past the new vocabulary) keep `fresh`'s."""
    out = np.array(fresh, dtype=table.dtype, copy=True)
    for i, ids in enumerate(self.sources):
      if ids:
        out[i] = table[list(ids)].mean(axis=0)
    return out

  def summary(self) -> str:
    return (f"vocab {self.old_size} -> {len(self.sources)}: {self.copied} rows copied, "
            f"{self.averaged} averaged from old pieces, {self.fresh} fresh")
