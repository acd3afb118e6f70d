"""Packing efficiency of the built-in corpora: padding per example vs concat vs bin packing.

  python -m bench.packing [--seq_lens 128,512,2048] [--vocab_size 8192]

For each corpus (its train split, tokenized with the byte-level BPE trained on it, as the
pipeline does) and each seq_len, prints how many rows each method needs and what fraction
of their slots hold tokens:

  none                   one example (a document, or a seq_len piece of a longer one) per
                         row, padded: what a padded batch of unpacked examples costs.
  concat                 `pack_documents`: no padding, but documents are cut at row ends
                         (the tail that does not fill a last row is dropped).
  first_fit_decreasing,  `bin_pack_documents`: whole documents per row (Prepacking, Zhao
  best_fit               et al. 2024), pieces only for documents longer than a row.

`cut docs` counts documents split over more than one row; `s` is the packing wall time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import ml_collections

from pretrain.data import pipeline
from pretrain.data.packing import BIN_PACKINGS, document_pieces, pack
from pretrain.data.tokenizer import train_or_load_tokenizer

CORPORA = ("shakespeare", "python_stdlib")


def encoded_corpus(source: str, vocab_size: int):
  """(token ids, word starts) of the corpus' train split, and the tokenizer's eos id."""
  cfg = ml_collections.ConfigDict(dict(source=source, cache_dir=""))
  docs = pipeline._text_documents(cfg, "train")
  name = pipeline._corpus_name(source, pipeline._corpus_id(cfg))
  tok = train_or_load_tokenizer("bpe", vocab_size, name, docs, pipeline.cache_dir(cfg))
  encoded = tok.encode_batch(docs)
  return [ids for ids, _ in encoded], [ws for _, ws in encoded], tok.eos_id


def measure(ids, starts, seq_len: int, eos_id: int, method: str) -> dict:
  """Rows, non-pad fraction, documents cut over rows, and packing seconds."""
  begin = time.perf_counter()
  if method == "none":
    pieces, _ = document_pieces(ids, starts, seq_len, eos_id)
    rows, tokens = len(pieces), sum(len(p) for p in pieces)
    cut = sum(len(d) + 1 > seq_len for d in ids)
  else:
    packed = pack(ids, starts, seq_len, eos_id, method)
    rows, tokens = len(packed["tokens"]), int((packed["segment_ids"] > 0).sum())
    if method == "concat":  # A document is cut when a row boundary falls inside it.
      ends = np.cumsum([len(d) + 1 for d in ids])
      begins = ends - [len(d) + 1 for d in ids]
      cut = int((begins // seq_len != (ends - 1) // seq_len).sum())
    else:
      cut = sum(len(d) + 1 > seq_len for d in ids)
  return dict(rows=rows, fill=tokens / max(rows * seq_len, 1), cut=cut,
              seconds=time.perf_counter() - begin)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_lens", default="128,512,2048")
  parser.add_argument("--vocab_size", type=int, default=8192)
  args = parser.parse_args()
  print(f"{'corpus':<14}{'seq_len':>8}  {'method':<22}{'rows':>8}{'non-pad':>9}"
        f"{'cut docs':>10}{'s':>8}")
  for corpus in CORPORA:
    ids, starts, eos_id = encoded_corpus(corpus, args.vocab_size)
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
      for method in ("none", "concat", *BIN_PACKINGS):
        m = measure(ids, starts, seq_len, eos_id, method)
        print(f"{corpus:<14}{seq_len:>8}  {method:<22}{m['rows']:>8}{m['fill']:>9.1%}"
              f"{m['cut']:>10}{m['seconds']:>8.2f}", flush=True)


if __name__ == "__main__":
  main()
