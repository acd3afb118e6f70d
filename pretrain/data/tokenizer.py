"""Tokenizers trained on the corpus they will encode, cached as HF `tokenizer.json` files.

Training our own (instead of shipping a pretrained vocab) keeps the setup offline and lets
the vocabulary size be a config knob. Every kind carries every special id an objective may
need ([MASK] for MLM, [CLS]/[SEP] for pair tasks, an end-of-document id for packing).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

KINDS = ("wordpiece", "bpe")
# [PAD] is first so that pad_id == 0 (batches are zero-padded elsewhere).
_SPECIALS = {
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "bpe": ["[PAD]", "<|endoftext|>", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}
_EOS = {"wordpiece": "[SEP]", "bpe": "<|endoftext|>"}


# _IS_SPACE[c] for code points c <= 0x3000 (the last Unicode space); larger ones map to the
# final False entry. A table lookup is several times faster than np.isin per document.
_IS_SPACE = np.array([chr(c).isspace() for c in range(0x3001)] + [False])


class Tokenizer:
  """An HF tokenizer plus the special ids and word-start flags the objectives use."""

  def __init__(self, hf: tokenizers.Tokenizer, kind: str):
    self.hf = hf
    self.kind = kind
    self.vocab_size = hf.get_vocab_size()
    ids = {tok: hf.token_to_id(tok) for tok in _SPECIALS[kind]}
    self.pad_id, self.unk_id = ids["[PAD]"], ids["[UNK]"]
    self.cls_id, self.sep_id, self.mask_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]
    self.eos_id = ids[_EOS[kind]]
    self.special_ids = np.array(sorted(ids.values()), np.int32)
    assert self.pad_id == 0, "[PAD] must have id 0"

  def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, word_start bool); no special tokens are added."""
    return _ids_and_word_starts(text, self.hf.encode(text, add_special_tokens=False))

  def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`encode` over many texts, tokenized in parallel by the Rust batch API."""
    encodings = self.hf.encode_batch(texts, add_special_tokens=False)
    return [_ids_and_word_starts(t, e) for t, e in zip(texts, encodings)]

  def decode(self, ids, skip_special: bool = False) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def sentence_end_ids(self) -> tuple[int, ...]:
    """Ids of the non-special tokens whose text ends in '.', '!' or '?' (trailing
    whitespace aside): where BART's sentence permutation splits a document."""
    special = set(self.special_ids.tolist())
    return tuple(i for i in range(self.vocab_size) if i not in special
                 and self.hf.decode([i]).rstrip().endswith((".", "!", "?")))


def _ids_and_word_starts(text: str, encoding) -> tuple[np.ndarray, np.ndarray]:
  """Word starts from character offsets: a token starts a word when its first non-space
  character begins the text or follows whitespace, and no earlier token started there.

  Offsets (not word ids) because the pre-tokenizers split punctuation into separate "words"
  ("don't" -> don ' t), which whole-word masking must keep together. A token made only of
  whitespace (byte-level "Ġ" or a newline) belongs to the word that follows it, as GPT-2's
  leading-space convention has it, so that word starts at the whitespace token.
  """
  ids = np.asarray(encoding.ids, np.int32)
  if ids.size == 0:
    return ids, np.zeros(0, bool)
  chars = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  space = _IS_SPACE[np.minimum(chars, len(_IS_SPACE) - 1)]
  # next_nonspace[i]: index of the first non-space character at or after i (len if none).
  candidates = np.where(space, len(chars), np.arange(len(chars)))
  next_nonspace = np.append(np.minimum.accumulate(candidates[::-1])[::-1], len(chars))
  offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
  start = next_nonspace[np.minimum(offsets[:, 0], len(chars))]
  after_space = (start == 0) | space[np.maximum(start - 1, 0)]
  first_at_start = np.append(True, start[1:] != start[:-1])
  return ids, after_space & first_at_start


def _build(kind: str, vocab_size: int) -> tuple[tokenizers.Tokenizer, trainers.Trainer]:
  specials = _SPECIALS[kind]
  if kind == "wordpiece":
    hf = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                        show_progress=False)
  else:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
  return hf, trainer


def load_tokenizer_file(path: str, kind: str) -> Tokenizer:
  """An existing HF tokenizer.json (e.g. a teacher's, so that student and teacher read the
  same ids) used as a tokenizer of `kind`. Its truncation and padding are switched off:
  whole documents are encoded here and packed afterwards."""
  if kind not in KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")
  hf = tokenizers.Tokenizer.from_file(path)
  hf.no_truncation()
  hf.no_padding()
  missing = [tok for tok in _SPECIALS[kind] if hf.token_to_id(tok) is None]
  if missing:
    raise ValueError(f"data.tokenizer_file={path!r} lacks the special tokens {missing} that "
                     f"data.tokenizer={kind!r} needs")
  if hf.token_to_id("[PAD]") != 0:
    raise ValueError(f"data.tokenizer_file={path!r}: [PAD] has id {hf.token_to_id('[PAD]')}, "
                     "batches are zero-padded so it must be 0")
  return Tokenizer(hf, kind)


def tokenizer_path(cache_dir: str, corpus_name: str, kind: str, vocab_size: int) -> str:
  return os.path.join(cache_dir, "tokenizers", f"{corpus_name}-{kind}-{vocab_size}.json")


def file_hash(path: str) -> str:
  """Content hash of a file: part of every cache key derived from that file."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def train_or_load_tokenizer(kind: str, vocab_size: int, corpus_name: str, documents: list[str],
                            cache_dir: str) -> Tokenizer:
  """Loads `<cache_dir>/tokenizers/<corpus_name>-<kind>-<vocab_size>.json`, else trains it.

  The cache key does not see `documents`: `corpus_name` must name them uniquely.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")
  path = tokenizer_path(cache_dir, corpus_name, kind, vocab_size)
  if not os.path.exists(path):
    hf, trainer = _build(kind, vocab_size)
    hf.train_from_iterator(documents, trainer, length=len(documents))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    hf.save(tmp)
    os.replace(tmp, path)
  return Tokenizer(tokenizers.Tokenizer.from_file(path), kind)
