"""GraphCodeBERT (Guo et al. 2021, "GraphCodeBERT: Pre-training Code Representations with
Data Flow", §3): a BERT-style encoder over code tokens plus the nodes of the code's
data-flow graph, with graph-guided masked attention and three losses.

Examples. One per Python function of the corpus (pretrain/data/code.py extracts the
functions and their data flow with `ast`): [CLS] code tokens [SEP] in the first seq_len
positions, then `objective.max_nodes` variable nodes, padded to static shapes. A node is one
occurrence of a variable; it is aligned with the code tokens it comes from. As in the paper,
a node's input embedding is the mean of the word embeddings of its aligned (visible) code
tokens and all nodes share one position id (0), code tokens taking positions 1, 2, ...

Graph-guided attention (§3.2, Eq. 4), an explicit boolean mask for `TextTransformer`: code
tokens attend to code tokens; [CLS]/[SEP] attend to everything; a node attends to itself and
to the nodes it shares a data-flow edge with; a node and a code token attend to each other
when they are aligned. Edges are used undirected (the paper's dot-product edge predictor is
symmetric too).

Losses (§3.3), summed: masked language modelling on the code tokens (BERT masking, reused
from mlm.py); edge prediction: `node_sample_rate` of the nodes are sampled, every edge
touching them is hidden from the attention mask, and for pairs with a sampled end the
model predicts edge / no edge from the dot product of the two node states (BCE, as many
non-edges as edges; unlike the paper the dot product is scaled by 1/sqrt(d_model), see
`pair_logits`); node alignment: another sample of nodes loses its node-token attention,
and the model predicts which code tokens each came from the same way.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base
from objectives.codet5 import binary_loss
from objectives.mlm import MlmMasking, num_predictions
from pretrain.data.code import data_flow, function_sources, span_token_ranges

PAD, CODE, SPECIAL, NODE = 0, 1, 2, 3  # `kind` of each example position


def function_example(text: str, encoding, *, cls_id: int, sep_id: int, seq_len: int,
                     max_nodes: int, max_edges: int) -> dict[str, np.ndarray] | None:
  """One function's static-shape example, or None if it does not parse or has no nodes.

  Code is truncated to seq_len - 2 tokens; nodes whose tokens do not all fit are dropped,
  then the first `max_nodes` nodes (in source order) and `max_edges` edges are kept.
  """
  try:
    flow = data_flow(text)
  except SyntaxError:
    return None
  ids = np.asarray(encoding.ids, np.int32)[:seq_len - 2]
  offsets = np.asarray(encoding.offsets).reshape(-1, 2)
  ranges = span_token_ranges(text, offsets, flow.spans) + 1  # + 1: after [CLS]
  keep = np.flatnonzero((ranges[:, 1] > ranges[:, 0]) & (ranges[:, 1] <= len(ids) + 1))
  keep = keep[:max_nodes]
  if not len(keep):
    return None
  new = np.full(len(ranges), -1)
  new[keep] = np.arange(len(keep))
  edges = sorted({tuple(sorted((new[d], new[s]))) for d, s in flow.edges
                  if new[d] >= 0 and new[s] >= 0 and new[d] != new[s]})[:max_edges]
  tokens = np.zeros(seq_len, np.int32)
  tokens[:len(ids) + 2] = [cls_id, *ids, sep_id]
  node_span = np.zeros((max_nodes, 2), np.int32)
  node_span[:len(keep)] = ranges[keep]
  edge_list = np.zeros((max_edges, 2), np.int32)
  edge_list[:len(edges)] = np.asarray(edges, np.int32).reshape(-1, 2)
  return {"tokens": tokens, "node_span": node_span, "edges": edge_list,
          "num_nodes": np.int32(len(keep)), "num_edges": np.int32(len(edges))}


class FunctionGraphs:
  """`Objective.text_examples`: one example per function with its data-flow graph."""

  def __init__(self, *, max_nodes: int, max_edges: int):
    self.max_nodes, self.max_edges = max_nodes, max_edges
    self.key = {"function_graphs": "python-ast-v2", "max_nodes": max_nodes,
                "max_edges": max_edges}

  def build(self, docs, tokenizer, data_cfg) -> dict[str, np.ndarray]:
    functions = [f for doc in docs for f in function_sources(doc)]
    encodings = tokenizer.hf.encode_batch(functions, add_special_tokens=False)
    examples = [function_example(f, e, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                                 seq_len=data_cfg.seq_len, max_nodes=self.max_nodes,
                                 max_edges=self.max_edges)
                for f, e in zip(functions, encodings)]
    examples = [e for e in examples if e is not None]
    if not examples:
      return {"tokens": np.zeros((0, data_cfg.seq_len), np.int32)}
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def example(self, info) -> dict[str, np.ndarray]:
    """A synthetic (node-free) example of the built rows' shapes and dtypes (for AOT)."""
    return {"tokens": np.arange(info.seq_len, dtype=np.int32) % info.vocab_size,
            "node_span": np.zeros((self.max_nodes, 2), np.int32),
            "edges": np.zeros((self.max_edges, 2), np.int32),
            "num_nodes": np.int32(0), "num_edges": np.int32(0)}


def _sample(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Bool (count,): round(rate * count) entries chosen uniformly."""
  chosen = np.zeros(count, bool)
  chosen[rng.permutation(count)[:round(rate * count)]] = True
  return chosen


def _balanced(positives: np.ndarray, negatives: np.ndarray, slots: int,
              rng: np.random.Generator):
  """(pairs (slots, 2), labels, weights): n positives and n negatives, n as large as
  both lists and half the slots allow; zero-weight padding after them."""
  n = min(len(positives), len(negatives), slots // 2)
  picked = [p[rng.permutation(len(p))[:n]].reshape(-1, 2) for p in (positives, negatives)]
  pairs = np.zeros((slots, 2), np.int32)
  pairs[:2 * n] = np.concatenate(picked)
  labels = np.zeros(slots, np.float32)
  labels[:n] = 1.0
  weights = np.zeros(slots, np.float32)
  weights[:2 * n] = 1.0
  return pairs, labels, weights


class GraphMasking(grain.transforms.RandomMap):
  """Function example -> MLM inputs on the code, hidden edges / alignments, and the
  balanced pairs the edge and alignment heads are scored on."""

  def __init__(self, *, seq_len: int, max_nodes: int, node_sample_rate: float,
               mlm: MlmMasking):
    self.seq_len, self.max_nodes, self.rate, self.mlm = seq_len, max_nodes, node_sample_rate, mlm

  def random_map(self, example, rng: np.random.Generator):
    tokens, span = example["tokens"], example["node_span"]
    n, num_edges = int(example["num_nodes"]), int(example["num_edges"])
    real = (tokens != 0).astype(np.int32)
    masked = self.mlm.random_map({"tokens": tokens, "segment_ids": real, "positions": real,
                                  "word_start": np.zeros(self.seq_len, bool)}, rng)
    # Edge prediction: hide every edge touching a sampled node; score edge vs non-edge.
    sampled = _sample(n, self.rate, rng)
    edges = example["edges"][:num_edges]
    hidden = sampled[edges].any(-1)
    i, j = np.triu_indices(n, 1)  # edges are stored as (i, j), i < j
    candidate = sampled[i] | sampled[j]
    is_edge = np.zeros((n, n), bool)
    is_edge[edges[:, 0], edges[:, 1]] = True
    pairs, linked = np.stack([i, j], -1)[candidate], is_edge[i, j][candidate]
    edge_pairs = _balanced(pairs[linked], pairs[~linked], self.max_nodes, rng)
    # Node alignment: sampled nodes lose their node-token attention; score token vs not.
    unaligned = _sample(n, self.rate, rng)
    code = np.flatnonzero(real)[1:-1]  # code token positions ([CLS]/[SEP] excluded)
    node, tok = np.repeat(np.flatnonzero(unaligned), len(code)), np.tile(code, unaligned.sum())
    aligned = (span[node, 0] <= tok) & (tok < span[node, 1])
    pairs = np.stack([node, tok], -1)
    align_pairs = _balanced(pairs[aligned], pairs[~aligned], self.max_nodes, rng)

    kind = np.concatenate([np.where(real > 0, CODE, PAD), np.full(self.max_nodes, PAD)])
    kind[[0, real.sum() - 1]] = SPECIAL
    kind[self.seq_len:self.seq_len + n] = NODE
    positions = np.concatenate([np.arange(1, self.seq_len + 1), np.zeros(self.max_nodes)])
    edge_visible = np.zeros(len(example["edges"]), bool)
    edge_visible[:num_edges] = ~hidden
    align_visible = np.zeros(self.max_nodes, bool)
    align_visible[:n] = ~unaligned
    return {
        "inputs": masked["inputs"], "kind": kind.astype(np.int32),
        "positions": (positions * (kind > 0)).astype(np.int32),
        "node_span": span, "align_visible": align_visible,
        "edges": example["edges"], "edge_visible": edge_visible,
        **{k: masked[k] for k in ("masked_positions", "masked_ids", "masked_weights")},
        **dict(zip(("edge_pairs", "edge_labels", "edge_weights"), edge_pairs)),
        **dict(zip(("align_pairs", "align_labels", "align_weights"), align_pairs)),
    }


def node_alignment(node_span, align_visible, code_len: int) -> jax.Array:
  """Bool (B, N, L): node n is aligned with (and may attend) code position t."""
  t = jnp.arange(code_len)
  return ((node_span[..., :1] <= t) & (t < node_span[..., 1:])) & align_visible[..., None]


def graph_attention_mask(kind, node_span, align_visible, edges, edge_visible) -> jax.Array:
  """Graph-guided attention mask (B, 1, L + N, L + N) (see the module doc)."""
  num_nodes = node_span.shape[1]
  code_len = kind.shape[1] - num_nodes
  is_code = (kind == CODE) | (kind == SPECIAL)
  code = attention_mask("bidirectional", segment_ids=is_code.astype(jnp.int32))[:, 0]
  align = node_alignment(node_span, align_visible, code_len)  # (B, N, L)
  onehot = lambda k: jax.nn.one_hot(edges[..., k], num_nodes) * edge_visible[..., None]
  adjacency = jnp.einsum("bei,bej->bij", onehot(0), onehot(1)) > 0  # (B, N, N)
  is_node = kind[:, code_len:] == NODE
  nodes = adjacency | jnp.swapaxes(adjacency, 1, 2) | (jnp.eye(num_nodes, dtype=bool)
                                                       & is_node[:, :, None])
  graph = jnp.concatenate([
      jnp.concatenate([code[:, :code_len, :code_len], jnp.swapaxes(align, 1, 2)], 2),
      jnp.concatenate([align, nodes], 2)], 1)  # (B, T, T)
  specials = (kind == SPECIAL)[:, :, None] & (kind != PAD)[:, None, :]
  return (graph | specials)[:, None]


def pair_logits(left, right, pairs) -> jax.Array:
  """Scaled dot products (B, K) float32 of left[pairs[..., 0]] and right[pairs[..., 1]].

  Divided by sqrt(D) (the paper uses the plain dot product): final states are LayerNormed
  to norm ~sqrt(D), so unscaled logits start at +-D and the sigmoid saturates."""
  pick = lambda h, idx: jnp.take_along_axis(h, idx[..., None], axis=1).astype(jnp.float32)
  dots = jnp.einsum("bkd,bkd->bk", pick(left, pairs[..., 0]), pick(right, pairs[..., 1]))
  return dots * left.shape[-1] ** -0.5


def embed_with_nodes(net, inputs, positions, align) -> jax.Array:
  """Input embeddings (B, T, D): code rows as usual; node rows take the mean word
  embedding of their aligned code tokens (GraphCodeBERT's node initialisation), then every
  row adds its position embedding (and the embedding norm, if the model has one)."""
  code_len = align.shape[2]
  words = net.embed(inputs)  # (B, T, D) float32
  weights = align.astype(words.dtype)
  nodes = jnp.einsum("bnl,bld->bnd", weights, words[:, :code_len]) / jnp.maximum(
      weights.sum(-1, keepdims=True), 1.0)
  x = jnp.concatenate([words[:, :code_len], nodes], 1) + net.pos_embed(positions)
  if net.embed_norm is not None:
    x = net.embed_norm(x)
  return x.astype(net.cfg.dtype)


@base.register("graphcodebert")
class GraphCodeBERT(base.Objective):
  models = ("transformer",)
  modality = "text"
  unit = "tokens"
  tokenizer = "bpe"

  def validate(self, config):
    o, m = config.objective, config.model
    if o.max_nodes < 1:
      raise ValueError(f"objective.max_nodes={o.max_nodes}: must be >= 1")
    if not 0 < o.node_sample_rate <= 1:
      raise ValueError(f"objective.node_sample_rate={o.node_sample_rate}: must be in (0, 1]")
    if not 0 < o.mask_rate < 1:
      raise ValueError(f"objective.mask_rate={o.mask_rate}: must be in (0, 1)")
    if m.pos_emb != "learned" or m.max_len < config.data.seq_len + 1:
      raise ValueError(f"graphcodebert needs model.pos_emb='learned' (got {m.pos_emb!r}) and "
                       f"model.max_len >= data.seq_len + 1 = {config.data.seq_len + 1} (got "
                       f"{m.max_len}): nodes share position 0, code tokens start at 1")

  def text_examples(self, config):
    o = config.objective
    return FunctionGraphs(max_nodes=o.max_nodes, max_edges=2 * o.max_nodes)

  def host_transform(self, config, info):
    o = config.objective
    mlm = MlmMasking(mask_rate=o.mask_rate, replace_mask=o.replace_mask,
                     replace_random=o.replace_random, whole_word=False,
                     mask_id=info.mask_id, vocab_size=info.vocab_size,
                     special_ids=info.special_ids, seq_len=info.seq_len)
    return GraphMasking(seq_len=info.seq_len, max_nodes=o.max_nodes,
                        node_sample_rate=o.node_sample_rate, mlm=mlm)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    net = model.bind(params)
    code_len = config.data.seq_len
    inputs = jnp.pad(batch["inputs"], ((0, 0), (0, batch["node_span"].shape[1])))
    align = node_alignment(batch["node_span"], batch["align_visible"], code_len)
    mask = graph_attention_mask(batch["kind"], batch["node_span"], batch["align_visible"],
                                batch["edges"], batch["edge_visible"])
    hidden = net.stack(embed_with_nodes(net, inputs, batch["positions"], align), mask=mask,
                       positions=batch["positions"])  # (B, L + N, D)
    code, nodes = hidden[:, :code_len], hidden[:, code_len:]
    picked = jnp.take_along_axis(code, batch["masked_positions"][..., None], axis=1)
    mlm_loss, mlm_accuracy = base.token_loss(net.logits(picked), batch["masked_ids"],
                                             batch["masked_weights"])
    edge_loss, edge_accuracy = binary_loss(pair_logits(nodes, nodes, batch["edge_pairs"]),
                                            batch["edge_labels"], batch["edge_weights"])
    align_loss, align_accuracy = binary_loss(pair_logits(nodes, code, batch["align_pairs"]),
                                              batch["align_labels"], batch["align_weights"])
    return mlm_loss + edge_loss + align_loss, {
        "accuracy": mlm_accuracy, "mlm_loss": mlm_loss, "edge_loss": edge_loss,
        "edge_accuracy": edge_accuracy, "align_loss": align_loss,
        "align_accuracy": align_accuracy}

  def units_per_example(self, config, info):
    return info.seq_len

  def forward_flops_per_example(self, config, info, model_cfg):
    length = info.seq_len + config.objective.max_nodes
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    return (length * transformer_flops_per_token(model_cfg, length, with_logits=False)
            + slots * logits_flops_per_token(model_cfg))
