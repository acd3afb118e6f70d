"""Concatenate-then-split packing: every position of every row is a real token.

Documents are joined with an end-of-document id and cut into fixed rows, so no compute goes
to padding; `segment_ids` and `positions` let attention and position embeddings respect the
document boundaries that fall inside a row.
"""
from __future__ import annotations

import numpy as np


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
  return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype)


def pack_documents(token_docs: list[np.ndarray], word_starts: list[np.ndarray], seq_len: int,
                   eos_id: int) -> dict[str, np.ndarray]:
  """Packs documents into (N, seq_len) rows, N = total tokens // seq_len (remainder dropped).

  Each document is followed by `eos_id` (a word start of its own). In each row,
  `segment_ids` number the document pieces 1, 2, ... (0 stays free for padding) and
  `positions` restart at 0 at each document start and at the start of the row.
  `word_start` is also set at each row start, so a word cut by a row boundary is still a
  whole word (for whole-word masking) inside each row.
  """
  lengths = np.array([len(d) for d in token_docs], np.int64)
  ends = np.cumsum(lengths)  # Where each eos goes, in the coordinates of the joined docs.
  tokens = np.insert(_concat(token_docs, np.int32), ends, eos_id)
  word_start = np.insert(_concat(word_starts, bool), ends, True)
  rows = len(tokens) // seq_len
  total = rows * seq_len
  doc_start = ends - lengths + np.arange(len(lengths))  # Start offsets once eos ids are in.
  doc_of = np.repeat(np.arange(len(lengths)), lengths + 1)[:total]
  index = np.arange(total)
  piece_start = np.maximum(doc_start[doc_of], index - index % seq_len)
  is_start = (index == piece_start).reshape(rows, seq_len)
  positions = (index - piece_start).astype(np.int32).reshape(rows, seq_len)
  return {
      "tokens": tokens[:total].reshape(rows, seq_len),
      "segment_ids": np.cumsum(is_start, axis=1, dtype=np.int32),
      "positions": positions,
      "word_start": word_start[:total].reshape(rows, seq_len) | is_start,
  }


# --- bin packing of whole examples (Prepacking, Zhao et al. 2024) -------------------------
#
# Concat-then-split cuts documents at row boundaries. Bin packing instead keeps every example
# whole inside one row (only examples longer than a row are cut, into row-sized pieces) and
# pads what is left of each row: the choice Prepacking makes for prompts, which must not be
# split. The two strategies differ in how they pick the row:
#   first_fit_decreasing  longest first, each into the first row it fits (offline; FFD uses
#                         at most 11/9 OPT + 6/9 rows).
#   best_fit              in corpus order, each into the fullest row it fits (online: the
#                         order of the corpus is kept within and across rows).

BIN_PACKINGS = ("first_fit_decreasing", "best_fit")
PACKINGS = ("concat", *BIN_PACKINGS)


def assign_bins(sizes: np.ndarray, capacity, method: str) -> np.ndarray:
  """Row index of each item, packing (N, k) `sizes` into rows of k `capacity` limits.

  k = 1 for token rows, 2 for (input, target) pairs whose rows must both fit. Every item
  must fit an empty row. Rows are numbered in the order they are opened. Open rows are
  searched with one vectorised comparison per item: O(items x rows) work, seconds for the
  built-in corpora.
  """
  if method not in BIN_PACKINGS:
    raise ValueError(f"unknown bin packing {method!r}; valid: {', '.join(BIN_PACKINGS)}")
  capacity = np.atleast_1d(np.asarray(capacity, np.int64))
  sizes = np.asarray(sizes, np.int64).reshape(len(sizes), len(capacity))
  too_big = np.flatnonzero((sizes > capacity).any(1))
  if too_big.size:
    raise ValueError(f"item {too_big[0]} of sizes {sizes[too_big[0]].tolist()} exceeds the "
                     f"row capacity {capacity.tolist()}")
  if method == "first_fit_decreasing":  # Largest share of its tightest limit first.
    order = np.argsort(-(sizes / capacity).max(1), kind="stable")
  else:
    order = np.arange(len(sizes))
  # remaining[r] = room left in row r; row `opened` is the next empty one, so it always fits.
  remaining = np.tile(capacity, (len(sizes) + 1, 1))
  bins = np.empty(len(sizes), np.int64)
  opened = 0
  for i in order:
    fits = np.flatnonzero((remaining[:opened + 1] >= sizes[i]).all(1))
    if method == "first_fit_decreasing":
      row = fits[0]
    else:  # Least room left after placing it, each limit as a share of its capacity.
      row = fits[np.argmin(((remaining[fits] - sizes[i]) / capacity).sum(1))]
    remaining[row] -= sizes[i]
    bins[i] = row
    opened = max(opened, row + 1)
  return bins


def fill_rows(pieces: list[np.ndarray], bins: np.ndarray, seq_len: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Lays each piece out in its row, rows in order, pieces of a row in input order.

  Returns (values, segment_ids, positions, is_start), each (rows, seq_len): values
  zero-padded, segment ids 1, 2, ... per row (0 = padding), positions restarting at 0
  at each piece, is_start marking each piece's first slot.
  """
  lengths = np.array([len(p) for p in pieces], np.int64)
  num_rows = int(bins.max()) + 1 if len(bins) else 0
  order = np.lexsort((np.arange(len(bins)), bins))  # By row, then input order.
  lengths, row_of = lengths[order], bins[order]
  index = np.arange(len(order))
  first_in_row = np.ones(len(order), bool)
  first_in_row[1:] = row_of[1:] != row_of[:-1]
  flat_start = np.cumsum(lengths) - lengths  # Where each piece starts, all rows joined.
  offset = flat_start - np.maximum.accumulate(np.where(first_in_row, flat_start, 0))
  rank = index - np.maximum.accumulate(np.where(first_in_row, index, 0))
  within = np.arange(lengths.sum()) - np.repeat(flat_start, lengths)
  slot = np.repeat(row_of * seq_len + offset, lengths) + within
  values = np.zeros(num_rows * seq_len, np.int64)
  segment_ids, positions = (np.zeros(num_rows * seq_len, np.int32) for _ in range(2))
  is_start = np.zeros(num_rows * seq_len, bool)
  values[slot] = _concat([pieces[i] for i in order], np.int64)
  segment_ids[slot] = np.repeat(rank + 1, lengths)
  positions[slot] = within
  is_start[row_of * seq_len + offset] = True
  shape = (num_rows, seq_len)
  return (values.reshape(shape), segment_ids.reshape(shape), positions.reshape(shape),
          is_start.reshape(shape))


def document_pieces(token_docs: list[np.ndarray], word_starts: list[np.ndarray], seq_len: int,
                    eos_id: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Each document plus `eos_id`, cut into pieces of at most `seq_len` tokens; as in
  `pack_documents`, a piece starts a word."""
  tokens, starts = [], []
  for doc, ws in zip(token_docs, word_starts):
    doc = np.append(np.asarray(doc, np.int32), np.int32(eos_id))
    ws = np.append(np.asarray(ws, bool), True)
    for begin in range(0, len(doc), seq_len):
      tokens.append(doc[begin:begin + seq_len])
      starts.append(ws[begin:begin + seq_len].copy())
      starts[-1][0] = True
  return tokens, starts


def bin_pack_documents(token_docs: list[np.ndarray], word_starts: list[np.ndarray],
                       seq_len: int, eos_id: int, method: str) -> dict[str, np.ndarray]:
  """`pack_documents`' row format, with whole documents (pieces of long ones) per row and
  padding (segment 0, token 0) after them; nothing is dropped."""
  pieces, starts = document_pieces(token_docs, word_starts, seq_len, eos_id)
  bins = assign_bins([len(p) for p in pieces], seq_len, method)
  tokens, segment_ids, positions, is_start = fill_rows(pieces, bins, seq_len)
  word_start, _, _, _ = fill_rows(starts, bins, seq_len)
  return {"tokens": tokens.astype(np.int32), "segment_ids": segment_ids,
          "positions": positions, "word_start": word_start.astype(bool) | is_start}


def bin_pack_pairs(inputs: list[np.ndarray], targets: list[np.ndarray], input_len: int,
                   target_len: int, method: str) -> dict[str, np.ndarray]:
  """(input, target) examples of an encoder-decoder packed so that each row's inputs fit
  `input_len` and its targets `target_len`; example j of a row has segment id j + 1 on both
  sides, so cross-attention (kv_segment_ids) pairs each target with its own input."""
  bins = assign_bins(np.array([[len(i), len(t)] for i, t in zip(inputs, targets)]),
                     [input_len, target_len], method)
  packed = {}
  for name, prefix, pieces, length in (("inputs", "input", inputs, input_len),
                                       ("targets", "target", targets, target_len)):
    values, segment_ids, positions, _ = fill_rows(pieces, bins, length)
    packed.update({name: values.astype(np.int32), f"{prefix}_segment_ids": segment_ids,
                   f"{prefix}_positions": positions})
  return packed


def pack(token_docs: list[np.ndarray], word_starts: list[np.ndarray], seq_len: int,
         eos_id: int, method: str = "concat") -> dict[str, np.ndarray]:
  """Rows by `method` (`PACKINGS`): concat-then-split or a bin packing."""
  if method == "concat":
    return pack_documents(token_docs, word_starts, seq_len, eos_id)
  return bin_pack_documents(token_docs, word_starts, seq_len, eos_id, method)
