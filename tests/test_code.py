"""Code objectives: Python annotations and data flow checked by hand, CodeT5's masked
identifier targets by hand and tagging loss against NumPy, GraphCodeBERT's graph mask by
hand and pair losses against NumPy, host-transform invariants, paper sizes by parameter
count, and both tiny recipes end to end through `pretrain.main`."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.encoder_decoder import EncoderDecoderConfig, TaggingEncoderDecoder
from objectives import codet5, graphcodebert as gcb
from objectives.base import DataInfo, ModelDef
from objectives.mlm import MlmMasking
from pretrain import config as config_lib
from pretrain import main as main_lib
from pretrain.data.code import annotate, data_flow, docstring_pairs, function_sources
from pretrain.data.packing import pack_documents
from pretrain.data.tokenizer import train_or_load_tokenizer
from pretrain.registry import MODELS
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.key_data(jax.random.key(0))

SNIPPET = '''def add(total, item):
    # item is counted
    s = "total"
    total = total + item
    return total
'''
FUNCTION = '''def f(a, b):
    c = a + b
    if c > 0:
        a = c * 2
    return a + c
'''


def _bce(logits, labels):
  logits = np.asarray(logits, np.float64)
  p = 1 / (1 + np.exp(-logits))
  return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  docs = [SNIPPET, FUNCTION, "def g(x):\n    return x\n"] * 20
  return train_or_load_tokenizer("bpe", 300, "code-test", docs,
                                 str(tmp_path_factory.mktemp("tok")))


# --- annotations -------------------------------------------------------------------------


def test_identifiers_from_tokenize_skip_keywords_strings_and_comments(tokenizer):
  code = annotate(SNIPPET, tokenizer.hf.encode(SNIPPET, add_special_tokens=False))
  ids = code.identifier_id
  starts = np.flatnonzero((ids > 0) & (np.diff(np.append(0, ids)) != 0))
  occurrences = [(int(ids[s]), SNIPPET[code.offsets[s, 0]:code.offsets[
      s + np.argmin(np.append(ids[s:] == ids[s], False)) - 1, 1]].strip()) for s in starts]
  # add=1, total=2, item=3, s=4; "total" in the string and "item" in the comment are not.
  assert occurrences == [(1, "add"), (2, "total"), (3, "item"), (4, "s"), (2, "total"),
                         (2, "total"), (3, "item"), (2, "total")]
  assert len(code.ids) == len(code.word_start) == len(ids)


def test_data_flow_of_a_five_line_function_by_hand():
  flow = data_flow(FUNCTION)
  assert [n for _, _, n in flow.spans] == ["a", "b", "c", "a", "b", "c", "a", "c", "a", "c"]
  assert all(FUNCTION[s:e] == n for s, e, n in flow.spans)
  # c = a + b: c2 <- a3, b4; uses come from the last definition: a3 <- arg a0, b4 <- b1,
  # c5 <- c2, c7 <- c2, c9 <- c2; a = c * 2: a6 <- c7; return a: a8 <- a6 only (no merging
  # of the if with the fall-through path, a documented simplification).
  assert flow.edges == [(2, 3), (2, 4), (3, 0), (4, 1), (5, 2), (6, 7), (7, 2), (8, 6), (9, 2)]


def test_data_flow_augassign_comprehension_and_function_extraction():
  flow = data_flow("def g(x):\n    x += 1\n    return [x for x in x]\n")
  names = [n for _, _, n in flow.spans]
  assert names == ["x"] * 5  # arg, x+=, elt x, target x, iter x
  # x += 1 comes from the arg; the iterable from x+=; the target from the iterable; the
  # element from the comprehension's own target.
  assert flow.edges == [(1, 0), (2, 3), (3, 4), (4, 1)]
  flow = data_flow("def u(x):\n    s = 'é→'; y = x\n")  # ast columns are UTF-8 bytes
  assert [n for _, _, n in flow.spans] == ["x", "s", "y", "x"]
  assert all("def u(x):\n    s = 'é→'; y = x\n"[b:e] == n for b, e, n in flow.spans)
  module = "import os\n\nclass A:\n    def m(self):\n        return 1\n\ndef h():\n    pass\n"
  assert function_sources(module) == ["def m(self):\n    return 1", "def h():\n    pass"]


def test_pack_documents_carries_extras_and_keeps_its_outputs():
  docs = [np.array([5, 6, 7]), np.array([8, 9])]
  starts = [np.ones(3, bool), np.ones(2, bool)]
  plain = pack_documents(docs, starts, 3, eos_id=1)
  extra = pack_documents(docs, starts, 3, eos_id=1,
                         extras={"identifier_id": [np.array([1, 0, 2]), np.array([3, 3])]})
  assert set(extra) == set(plain) | {"identifier_id"}
  assert all(np.array_equal(plain[k], extra[k]) for k in plain)
  np.testing.assert_array_equal(extra["identifier_id"], [[1, 0, 2], [0, 3, 3]])


# --- CodeT5 ------------------------------------------------------------------------------


def test_masked_identifier_targets_by_hand():
  tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
  segs = np.array([1, 1, 1, 1, 2, 2, 2, 2])
  ident = np.array([1, 1, 0, 1, 1, 0, 2, 1])  # ids restart per document
  out = codet5.mask_identifiers(tokens, segs, ident, top_id=100, max_sentinels=10,
                                target_len=16)
  expected = ([100, 12, 100, 100, 15, 99, 100], [1, 1, 1, 2, 2, 2, 2],
              [100, 10, 11, 100, 14, 99, 16], [1, 1, 1, 2, 2, 2, 2])
  for got, want in zip(out, expected):
    np.testing.assert_array_equal(got, want)
  # A 5-token budget leaves segment 2's second identifier visible.
  inputs, _, targets, _ = codet5.mask_identifiers(tokens, segs, ident, top_id=100,
                                                  max_sentinels=10, target_len=5)
  np.testing.assert_array_equal(inputs, [100, 12, 100, 100, 15, 16, 100])
  np.testing.assert_array_equal(targets, [100, 10, 11, 100, 14])


def _codet5_transform(probs=(1, 1, 1)):
  return codet5.IdentifierAwareDenoising(seq_len=16, noise_density=0.15, mean_span_length=3.0,
                                         vocab_size=50, extra_ids=10, task_probs=probs,
                                         target_len=8)


def _code_row():
  tokens = np.arange(1, 17, dtype=np.int32)
  segs = np.array([1] * 9 + [2] * 7, np.int32)
  ident = np.array([0, 1, 1, 0, 2, 0, 1, 0, 0, 0, 1, 0, 1, 2, 0, 0], np.int32)
  return {"tokens": tokens, "segment_ids": segs, "identifier_id": ident,
          "positions": np.zeros(16, np.int32), "word_start": np.ones(16, bool)}


def test_codet5_transform_static_shapes_determinism_and_task_mix():
  transform, row = _codet5_transform(), _code_row()
  tasks = []
  for seed in range(300):
    out = transform.random_map(row, np.random.default_rng(seed))
    again = transform.random_map(row, np.random.default_rng(seed))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    assert {k: v.shape for k, v in out.items()} == {
        "inputs": (16,), "input_segment_ids": (16,), "input_positions": (16,),
        "targets": (8,), "target_segment_ids": (8,), "target_positions": (8,),
        "is_identifier": (16,), "tag_weights": (16,)}
    tagging = out["tag_weights"].any()
    if tagging:  # IT: clean input, no decoder targets, labels on every real token
      np.testing.assert_array_equal(out["inputs"], row["tokens"])
      assert not out["target_segment_ids"].any()
      np.testing.assert_array_equal(out["is_identifier"], row["identifier_id"] > 0)
    tasks.append("it" if tagging else "mip" if (out["inputs"] >= 50).sum() > 3 else "msp")
  counts = np.array([tasks.count(t) for t in ("msp", "it", "mip")])
  assert (abs(counts - 100) < 35).all(), counts


def test_codet5_loss_is_decoder_ce_plus_tagging_bce_against_numpy():
  cfg = EncoderDecoderConfig(vocab_size=64, num_layers=1, dec_layers=1, d_model=16,
                             num_heads=2, d_ff=32, max_len=16, init_std=0.5)
  with nnx.use_eager_sharding(False):
    net = TaggingEncoderDecoder(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(net, nnx.Param)
  transform, row = _codet5_transform(), _code_row()
  outs = [transform.random_map(row, np.random.default_rng(s)) for s in range(6)]
  batch = {k: jnp.asarray(np.stack([o[k] for o in outs])) for k in outs[0]}
  assert batch["tag_weights"].any() and batch["target_segment_ids"].any()
  objective = codet5.CodeT5()
  loss, metrics = jax.jit(functools.partial(objective.loss_fn, model=ModelDef(graphdef),
                                            config=None))(nnx.to_pure_dict(params), batch, RNG)
  encode = nnx.jit(lambda net, b: net.encode(b["inputs"], segment_ids=b["input_segment_ids"],
                                             positions=b["input_positions"]))
  context = np.asarray(encode(net, batch), np.float64)
  logits = context @ np.asarray(net.tag_head.kernel[...]) + np.asarray(net.tag_head.bias[...])
  w = np.asarray(batch["tag_weights"])
  expected_tag = (_bce(logits[..., 0], np.asarray(batch["is_identifier"])) * w).sum() / w.sum()
  np.testing.assert_allclose(metrics["tag_loss"], expected_tag, rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["seq_loss"] + metrics["tag_loss"], rtol=1e-6)


def test_binary_loss_against_numpy():
  logits = np.array([[2.0, -1.0, 0.5, 30.0]], np.float32)
  labels = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)
  weights = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
  loss, accuracy = codet5.binary_loss(jnp.asarray(logits), labels, weights)
  np.testing.assert_allclose(loss, _bce(logits, labels)[0, :3].mean(), rtol=1e-6)
  np.testing.assert_allclose(accuracy, 1 / 3)


def test_docstring_pairs_and_dual_generation_by_hand():
  module = ('class A:\n    def m(self, x):\n        """Double x.\n\n        Twice."""\n'
            '        return x * 2\n\ndef h():\n    """Only a docstring."""\n')
  assert docstring_pairs(module) == [("Double x.\n\nTwice.", "def m(self, x):\n    return x * 2")]
  transform = codet5.DualGeneration(seq_len=6, target_len=3)
  pair = {"nl": np.array([7, 8, 0, 0, 0, 0]), "pl": np.array([1, 2, 3, 4, 5, 0])}
  seen = set()
  for seed in range(20):
    out = transform.random_map(pair, np.random.default_rng(seed))
    direction = "nl2pl" if out["inputs"][0] == 7 else "pl2nl"
    seen.add(direction)
    want = {"nl2pl": ([7, 8, 0, 0, 0, 0], [1, 2, 3]), "pl2nl": ([1, 2, 3, 4, 5, 0], [7, 8, 0])}
    np.testing.assert_array_equal(out["inputs"], want[direction][0])
    np.testing.assert_array_equal(out["targets"], want[direction][1])
    np.testing.assert_array_equal(out["target_segment_ids"], np.array(want[direction][1]) > 0)
    np.testing.assert_array_equal(out["input_positions"][:2], [0, 1])
  assert seen == {"nl2pl", "pl2nl"}


# --- GraphCodeBERT -----------------------------------------------------------------------


def test_graph_attention_mask_by_hand():
  P, C, S, N = gcb.PAD, gcb.CODE, gcb.SPECIAL, gcb.NODE
  # [CLS] t1 t2 [SEP] pad | n0 n1 n2 n3(pad); n0 <- t1, n1 <- t2 (alignment hidden),
  # n2 <- t1 t2; edges n0-n1 (visible), n1-n2 (hidden).
  kind = jnp.array([[S, C, C, S, P, N, N, N, P]])
  span = jnp.array([[[1, 2], [2, 3], [1, 3], [0, 0]]])
  align_visible = jnp.array([[True, False, True, False]])
  edges = jnp.array([[[0, 1], [1, 2], [0, 0]]])
  edge_visible = jnp.array([[True, False, False]])
  mask = np.asarray(gcb.graph_attention_mask(kind, span, align_visible, edges, edge_visible))
  expected = np.zeros((9, 9), bool)
  expected[np.ix_([0, 3], [0, 1, 2, 3, 5, 6, 7])] = True  # [CLS]/[SEP] see every real slot
  expected[np.ix_([1, 2], [0, 1, 2, 3])] = True           # code sees code
  for node, tokens in ((5, [1]), (7, [1, 2])):            # visible alignments, both ways
    expected[node, tokens] = expected[tokens, node] = True
  for a, b in ((5, 5), (6, 6), (7, 7), (5, 6), (6, 5)):   # self loops, visible edge
    expected[a, b] = True
  np.testing.assert_array_equal(mask[0, 0], expected)


def test_pair_losses_against_numpy():
  rng = np.random.default_rng(0)
  nodes, code = rng.normal(size=(2, 4, 8)), rng.normal(size=(2, 6, 8))
  pairs = rng.integers(0, 4, size=(2, 5, 2))
  align = np.stack([rng.integers(0, 4, size=(2, 5)), rng.integers(0, 6, size=(2, 5))], -1)
  labels, weights = rng.integers(0, 2, size=(2, 5)), rng.integers(0, 2, size=(2, 5))
  for left, right, idx in ((nodes, nodes, pairs), (nodes, code, align)):
    logits = gcb.pair_logits(jnp.asarray(left, jnp.float32), jnp.asarray(right, jnp.float32),
                             jnp.asarray(idx))
    b = np.arange(2)[:, None]
    want = (left[b, idx[..., 0]] * right[b, idx[..., 1]]).sum(-1) / np.sqrt(8)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    loss, _ = codet5.binary_loss(logits, labels.astype(np.float32),
                                 weights.astype(np.float32))
    np.testing.assert_allclose(loss, (_bce(want, labels) * weights).sum() / weights.sum(),
                               rtol=1e-5)


def _graph_example(tokenizer):
  encoding = tokenizer.hf.encode(FUNCTION, add_special_tokens=False)
  return gcb.function_example(FUNCTION, encoding, cls_id=tokenizer.cls_id,
                              sep_id=tokenizer.sep_id, seq_len=48, max_nodes=12, max_edges=24)


def test_function_example_aligns_nodes_with_their_tokens(tokenizer):
  ex = _graph_example(tokenizer)
  assert ex["num_nodes"] == 10 and ex["num_edges"] == 9
  for (s, e), name in zip(ex["node_span"][:10], "abcabcacac"):
    assert tokenizer.decode(ex["tokens"][s:e]).strip() == name
  assert ex["tokens"][0] == tokenizer.cls_id
  # Undirected, deduplicated edges between kept nodes.
  assert [tuple(p) for p in ex["edges"][:9]] == [(0, 3), (1, 4), (2, 3), (2, 4), (2, 5),
                                                  (2, 7), (2, 9), (6, 7), (6, 8)]


def test_graph_masking_invariants(tokenizer):
  ex = _graph_example(tokenizer)
  mlm = MlmMasking(mask_rate=0.15, replace_mask=0.8, replace_random=0.1, whole_word=False,
                   mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                   special_ids=tokenizer.special_ids, seq_len=48)
  transform = gcb.GraphMasking(seq_len=48, max_nodes=12, node_sample_rate=0.3, mlm=mlm)
  edges = ex["edges"][:ex["num_edges"]]
  for seed in range(20):
    out = transform.random_map(ex, np.random.default_rng(seed))
    again = transform.random_map(ex, np.random.default_rng(seed))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    assert out["kind"].shape == out["positions"].shape == (60,)
    assert out["edge_pairs"].shape == out["align_pairs"].shape == (12, 2)
    for name in ("edge", "align"):  # balanced: as many negatives as positives
      w, y = out[f"{name}_weights"], out[f"{name}_labels"]
      assert y.sum() * 2 == w.sum() and (y <= w).all()
    hidden = {tuple(e) for e, v in zip(edges, out["edge_visible"]) if not v}
    for (i, j), y, w in zip(out["edge_pairs"], out["edge_labels"], out["edge_weights"]):
      if w:  # a positive is a hidden edge; a negative is no edge at all
        assert ((i, j) in hidden) == bool(y) and (y or (i, j) not in map(tuple, edges))
    for (n, t), y, w in zip(out["align_pairs"], out["align_labels"], out["align_weights"]):
      if w:  # scored alignments are hidden, positives lie in the node's span
        assert not out["align_visible"][n]
        assert (ex["node_span"][n, 0] <= t < ex["node_span"][n, 1]) == bool(y)
    assert (out["positions"][48:] == 0).all() and out["positions"][1] == 2


# --- recipes -----------------------------------------------------------------------------


def _param_count(recipe, variant):
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", f"{recipe}.py:{variant}"))
  builder = MODELS.get(config.model.name)
  cfg = builder.model_config(config.model, DataInfo(vocab_size=config.data.vocab_size))
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: builder.build(cfg, nnx.Rngs(0)))
  return cfg, sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("recipe,variant,paper", [
    ("codet5", "small", 60e6),        # Wang et al. 2021 §4.1: CodeT5-small 60M
    ("codet5", "base", 220e6),        # §4.1: CodeT5-base 220M
    ("graphcodebert", "base", 125e6),  # Guo et al. 2021 §4.1: 125M (RoBERTa-base shape)
])
def test_paper_sizes_build_abstractly_with_the_paper_param_count(recipe, variant, paper):
  cfg, count = _param_count(recipe, variant)
  assert cfg.vocab_size == {"codet5": 32128, "graphcodebert": 50304}[recipe]
  assert abs(count / paper - 1) < 0.02, (recipe, variant, count)


@pytest.mark.parametrize("recipe", ["codet5", "codet5_bimodal", "graphcodebert"])
def test_tiny_recipe_trains_through_main(tmp_path, recipe):
  args = ["--config.train.steps=40", "--config.train.log_every=5",
          "--config.train.checkpoint_every=40", "--config.train.eval_every=40"]
  assert main_lib.main([f"--config={ROOT}/configs/{recipe}.py:tiny",
                        f"--workdir={tmp_path}", *args]) == 0
  records = read_metrics(str(tmp_path))
  curve = [r["loss"] for r in records if "loss" in r]
  assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.5, curve
  assert any("eval_loss" in r for r in records)
