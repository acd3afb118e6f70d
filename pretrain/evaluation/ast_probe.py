"""Layer-wise syntax probing (AST-Probe, López et al. 2022): which layer of a text model
encodes the syntax of Python code best.

Snippets are functions of the Python standard library (salted hash split into probe-train
and probe-test functions; `evaluate.train_examples` / `test_examples` of each, those that
fit in `data.seq_len` tokens). For every layer (0 = the embeddings), each lexical token is the
mean hidden state of the subword tokens overlapping it, and a structural probe
(`probes.distance_probe`, rank `evaluate.probe_rank`) learns to read the syntactic distance
of adjacent tokens (`syntax.py`) from the difference of their states. Reported: each
layer's mean Spearman correlation on the test functions and the best layer. The embedding
layer is the baseline: what token identity alone says about the tree.
"""
from __future__ import annotations

import jax
import numpy as np

from models.attention import attention_mask
from pretrain import sharding
from pretrain.data import corpora
from pretrain.data.code import function_sources
from pretrain.evaluation import probes
from pretrain.evaluation.evaluators import EVALUATORS, Evaluator, run_tokenizer, text_rows
from pretrain.evaluation.syntax import syntactic_distances

MAX_FILES = 400
TEST_FRACTION = 0.2
MIN_TOKENS = 8  # Shorter functions give too few pairs to rank.


def probe_snippets(seq_len: int, tokenizer, train_examples: int, test_examples: int):
  """(texts, syntax targets, subword offsets, is_test) of stdlib functions that parse and
  fit in `seq_len` subword tokens, in a fixed order (the first of each split by source)."""
  candidates = sorted({f for doc in corpora.python_stdlib_documents(max_files=MAX_FILES)
                       for f in function_sources(doc)})
  test = corpora.heldout_mask([f"ast_probe\n{t}" for t in candidates], TEST_FRACTION)
  quota = {False: train_examples, True: test_examples}
  texts, targets, offsets, is_test = [], [], [], []
  for text, held in zip(candidates, test):
    if not quota[bool(held)]:
      continue
    encoding = tokenizer.hf.encode(text, add_special_tokens=False)
    if len(encoding.ids) > seq_len:
      continue
    try:
      target = syntactic_distances(text)
    except (SyntaxError, ValueError):
      continue
    if len(target.spans) < MIN_TOKENS:
      continue
    quota[bool(held)] -= 1
    texts.append(text), targets.append(target), is_test.append(bool(held))
    offsets.append(np.asarray(encoding.offsets, np.int64).reshape(-1, 2))
  return texts, targets, offsets, np.asarray(is_test)


def lexical_average(spans, offsets: np.ndarray) -> np.ndarray:
  """(lexical tokens, subword tokens) weights: row i averages the subwords overlapping
  lexical token i."""
  begin, end = np.asarray(spans).T
  overlap = (offsets[None, :, 0] < end[:, None]) & (offsets[None, :, 1] > begin[:, None])
  return overlap / np.maximum(overlap.sum(1, keepdims=True), 1)


@EVALUATORS.register("ast_probe")
class AstProbe(Evaluator):
  """Per-layer structural probe for Python syntax; metrics `ast_probe_layer<N>_spearman`
  and `ast_probe_best_layer`."""

  @classmethod
  def unsupported(cls, config, objective) -> str:
    if objective.modality != "text" or not objective.feature_mask:
      return (f"reads a text model's layers, which objective {objective.name!r} does not "
              f"expose (Objective.feature_mask)")
    if config.model.get("scan_layers"):
      return "reads intermediate layers: model.scan_layers must be false"
    return ""

  def __init__(self, run):
    super().__init__(run)
    r = run
    self._snippets = None
    self._layers = list(range(r.model_cfg.num_layers + 1))

    def states(params, batch):
      net = r.model_def.bind(params)
      mask = attention_mask(r.objective.feature_mask, segment_ids=batch["segment_ids"])
      out = net.layer_states(batch["tokens"], mask=mask, positions=batch["positions"],
                             layers=self._layers)
      return jax.numpy.stack([out[n] for n in self._layers])

    params = sharding.param_shardings(r.abstract_params, r.mesh, r.rules)
    self._states = jax.jit(states, in_shardings=(params, sharding.batch_sharding(r.mesh)),
                           out_shardings=sharding.replicated(r.mesh))

  def snippets(self):
    if self._snippets is None:
      c, tokenizer = self.run_.config, run_tokenizer(self.run_)
      texts, targets, offsets, is_test = probe_snippets(
          c.data.seq_len, tokenizer, c.evaluate.train_examples, c.evaluate.test_examples)
      rows = text_rows(texts, tokenizer, c.data.seq_len)
      self._snippets = rows, targets, offsets, is_test
    return self._snippets

  def run(self, state):
    rows, targets, offsets, is_test = self.snippets()
    size, n = self.run_.config.train.global_batch, len(targets)
    diffs = [[] for _ in self._layers]  # per layer, per snippet: (pairs, D)
    for start in range(0, n, size):
      index = np.arange(start, start + size) % n  # The last batch wraps; trimmed below.
      hidden = np.asarray(jax.device_get(self._states(
          state["params"], self.global_batch(rows, index))), np.float64)
      for j, i in enumerate(index[:n - start]):
        average = lexical_average(targets[i].spans, offsets[i])
        for layer in self._layers:
          lexical = average @ hidden[layer, j, :average.shape[1]]
          diffs[layer].append(lexical[:-1] - lexical[1:])
    distances = [t.distances for t in targets]
    groups = np.concatenate([np.full(len(d), i) for i, d in enumerate(distances)])
    pair_test = np.repeat(is_test, [len(d) for d in distances])
    d = np.concatenate(distances).astype(np.float64)
    c = self.run_.config.evaluate
    scores = {}
    for layer in self._layers:
      x = np.concatenate(diffs[layer])
      scores[f"ast_probe_layer{layer}_spearman"] = probes.distance_probe(
          x[~pair_test], d[~pair_test], x[pair_test], d[pair_test], groups[pair_test],
          rank=min(c.probe_rank, x.shape[1]), steps=c.probe_steps)
    scores["ast_probe_best_layer"] = float(max(
        self._layers, key=lambda n: np.nan_to_num(scores[f"ast_probe_layer{n}_spearman"],
                                                  nan=-2)))
    return scores
