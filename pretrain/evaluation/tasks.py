"""Labelled tasks built from the project's own real data, for probing pretrained features.

Each task is a fixed, class-balanced sample (seed 0, independent of the run's seed) so two
runs, or a pretrained and a random-init model, are scored on exactly the same examples.
Train/test membership is decided by a (task-salted) content hash.

- fashion_mnist: the 10 clothing classes; train from Fashion-MNIST's train split, test from
  its test split.
- shakespeare_plays: which of the 8 longest works a passage (4 consecutive paragraphs, about
  600 characters) comes from.
- code_or_prose: a 600-character chunk of the Python stdlib vs a Shakespeare passage.
- spoken_digits: which digit word eSpeak NG speaks (pretrain/data/spoken_digits.py); the
  test speakers (voices) never speak a training example.
The text passages may also occur in a Shakespeare/stdlib pretraining corpus; their labels
never do, so a probe still measures what the features encode about the label.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pretrain.data import corpora, spoken_digits as digits

TEST_FRACTION = 0.2
PARAGRAPHS_PER_PASSAGE = 4
CHUNK_CHARS = 600
NUM_PLAYS = 8


@dataclasses.dataclass(frozen=True)
class LabelledTask:
  name: str
  modality: str  # "image": inputs are uint8 (N, H, W[, C]); "text": inputs are strings;
  # "audio": inputs are int16 (N, samples) 16 kHz waveforms
  classes: tuple[str, ...]
  train_inputs: object
  train_labels: np.ndarray
  test_inputs: object
  test_labels: np.ndarray


def _balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of up to `per_class` examples of every class."""
  picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
            for c in np.unique(labels)]
  return np.sort(np.concatenate(picked))


def _split_text(name: str, classes, texts: list[str], labels: list[int],
                train_examples: int, test_examples: int) -> LabelledTask:
  first = dict(zip(reversed(texts), reversed(range(len(texts)))))  # text -> first index
  keep = sorted(first.values())  # Repeated texts (stdlib has some) would sit in both sets.
  texts, labels = [texts[i] for i in keep], np.asarray(labels, np.int32)[keep]
  # Salted with the task name: independent of the pretraining corpora's own held-out split
  # (the same unsalted hash), so a corpus made of task passages still has a validation part.
  test = corpora.heldout_mask([f"{name}\n{t}" for t in texts], TEST_FRACTION)
  rng = np.random.default_rng(0)
  parts = []
  for mask, total in ((~test, train_examples), (test, test_examples)):
    index = np.flatnonzero(mask)
    keep = index[_balanced(labels[index], max(1, total // len(classes)), rng)]
    parts.append(([texts[i] for i in keep], labels[keep]))
  (train_x, train_y), (test_x, test_y) = parts
  return LabelledTask(name, "text", tuple(classes), train_x, train_y, test_x, test_y)


def fashion_mnist(cache_dir: str, train_examples: int, test_examples: int) -> LabelledTask:
  del cache_dir  # Shipped by Debian or held in the repo.
  rng = np.random.default_rng(0)
  out = []
  for split, total in (("train", train_examples), ("test", test_examples)):
    images, labels = corpora.fashion_mnist(split)
    keep = _balanced(labels, max(1, total // 10), rng)
    out.extend([images[keep], labels[keep].astype(np.int32)])
  classes = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
             "bag", "ankle-boot")
  return LabelledTask("fashion_mnist", "image", classes, *out)


def _passages(paragraphs: list[str]) -> list[str]:
  n = PARAGRAPHS_PER_PASSAGE
  return ["\n\n".join(paragraphs[i:i + n]) for i in range(0, len(paragraphs) - n + 1, n)]


def shakespeare_plays(cache_dir: str, train_examples: int, test_examples: int) -> LabelledTask:
  works = corpora.shakespeare_works(cache_dir)
  longest = sorted(sorted(works), key=lambda w: -len(works[w]))[:NUM_PLAYS]
  texts, labels = [], []
  for label, work in enumerate(longest):
    passages = _passages(works[work])
    texts.extend(passages)
    labels.extend([label] * len(passages))
  return _split_text("shakespeare_plays", longest, texts, labels, train_examples,
                     test_examples)


def code_or_prose(cache_dir: str, train_examples: int, test_examples: int) -> LabelledTask:
  prose = [p for ps in corpora.shakespeare_works(cache_dir).values() for p in _passages(ps)]
  code = [doc[i:i + CHUNK_CHARS] for doc in corpora.python_stdlib_documents(max_files=400)
          for i in range(0, len(doc) - CHUNK_CHARS + 1, CHUNK_CHARS)]
  return _split_text("code_or_prose", ("prose", "code"), prose + code,
                     [0] * len(prose) + [1] * len(code), train_examples, test_examples)


def spoken_digits(cache_dir: str, train_examples: int, test_examples: int) -> LabelledTask:
  data = digits.spoken_digits(cache_dir)
  test = digits.is_test_speaker(data["speaker"])
  rng = np.random.default_rng(0)
  out = []
  for mask, total in ((~test, train_examples), (test, test_examples)):
    index = np.flatnonzero(mask)
    keep = index[_balanced(data["label"][index], max(1, total // len(digits.DIGITS)), rng)]
    out.extend([data["waveform"][keep], data["label"][keep]])
  return LabelledTask("spoken_digits", "audio", digits.DIGITS, *out)


TASKS = {"fashion_mnist": fashion_mnist, "shakespeare_plays": shakespeare_plays,
         "code_or_prose": code_or_prose, "spoken_digits": spoken_digits}
MODALITY = {"fashion_mnist": "image", "shakespeare_plays": "text", "code_or_prose": "text",
            "spoken_digits": "audio"}
DEFAULT_TASK = {"image": "fashion_mnist", "text": "shakespeare_plays", "audio": "spoken_digits"}
