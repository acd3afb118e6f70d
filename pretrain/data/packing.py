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
                   eos_id: int, extras: dict[str, list[np.ndarray]] | None = None
                   ) -> dict[str, np.ndarray]:
  """Packs documents into (N, seq_len) rows, N = total tokens // seq_len (remainder dropped).

  Each document is followed by `eos_id` (a word start of its own). In each row,
  `segment_ids` number the document pieces 1, 2, ... (0 stays free for padding) and
  `positions` restart at 0 at each document start and at the start of the row.
  `word_start` is also set at each row start, so a word cut by a row boundary is still a
  whole word (for whole-word masking) inside each row.

  `extras` maps a name to one int array per document (a per-token label, e.g. identifier
  ids for code objectives); each is packed like the tokens, with 0 at every eos, and
  returned under its name.
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
  packed = {
      "tokens": tokens[:total].reshape(rows, seq_len),
      "segment_ids": np.cumsum(is_start, axis=1, dtype=np.int32),
      "positions": positions,
      "word_start": word_start[:total].reshape(rows, seq_len) | is_start,
  }
  for name, docs in (extras or {}).items():
    packed[name] = np.insert(_concat(docs, np.int32), ends, 0)[:total].reshape(rows, seq_len)
  return packed
