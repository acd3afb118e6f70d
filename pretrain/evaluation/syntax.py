"""Syntactic distances between adjacent code tokens, from Python's own lexer and parser: the
target of the layer-wise syntax probe (AST-Probe, López et al. 2022).

The syntax tree of a snippet has the AST's nodes as inner nodes and the lexical tokens
(`tokenize`'s, without layout tokens) as leaves: each token hangs under the deepest node
whose source span holds it. The syntactic distance between tokens i and i+1 is the height
of their lowest common ancestor (a leaf has height 0, a node 1 + its tallest child): tokens
of one small expression are close, a token ending one statement and the next statement's
first token are far apart. The sequence of these distances determines the tree's shape
(Shen et al. 2018), which is why AST-Probe asks a probe to recover them from hidden states.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import tokenize

import numpy as np

from pretrain.data.code import _line_starts

_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT,
           tokenize.ENDMARKER, tokenize.ENCODING}


@dataclasses.dataclass(frozen=True)
class SyntaxTargets:
  spans: list[tuple[int, int]]  # character [start, end) of each lexical token
  distances: np.ndarray  # (len(spans) - 1,) int: height of the LCA of tokens i and i+1


def lexical_spans(text: str) -> list[tuple[int, int]]:
  """Character spans of the non-layout tokens of Python source."""
  starts = _line_starts(text)
  return [(int(starts[t.start[0] - 1]) + t.start[1], int(starts[t.end[0] - 1]) + t.end[1])
          for t in tokenize.generate_tokens(io.StringIO(text).readline)
          if t.type not in _LAYOUT]


def _char_span(node: ast.AST, lines: list[str], starts: np.ndarray) -> tuple[int, int]:
  """A node's [start, end) in characters (the AST counts columns in UTF-8 bytes)."""
  def offset(line: int, byte_col: int) -> int:
    return int(starts[line - 1]) + len(lines[line - 1].encode()[:byte_col].decode())
  return offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)


def syntactic_distances(text: str) -> SyntaxTargets:
  """Lexical tokens of `text` and the syntactic distance of each adjacent pair; raises
  SyntaxError / tokenize.TokenError on source Python cannot read."""
  tree = ast.parse(text)
  spans = lexical_spans(text)
  lines, starts = text.split("\n"), _line_starts(text)
  parent, depth, node_span = {tree: None}, {tree: 0}, {tree: (0, len(text))}
  order = [tree]  # breadth-first: parents before children
  for node in order:
    for child in ast.iter_child_nodes(node):
      parent[child], depth[child] = node, depth[node] + 1
      if hasattr(child, "end_col_offset") and child.end_col_offset is not None:
        node_span[child] = _char_span(child, lines, starts)
      order.append(child)
  # Each token's owner: the deepest positioned node whose span holds it.
  owners = []
  for begin, end in spans:
    holding = [n for n, (s, e) in node_span.items() if s <= begin and end <= e]
    owners.append(max(holding, key=depth.__getitem__))
  height = {n: 0 for n in order}
  for n in set(owners):
    height[n] = 1  # It has a token leaf below it.
  for n in reversed(order):  # children before parents; nodes holding no token stay out
    if parent[n] is not None and height[n]:
      height[parent[n]] = max(height[parent[n]], height[n] + 1)

  def ancestors(n) -> list:
    chain = []
    while n is not None:
      chain.append(n)
      n = parent[n]
    return chain[::-1]

  paths = [ancestors(n) for n in owners]
  distances = []
  for a, b in zip(paths, paths[1:]):
    common = 0
    while common < min(len(a), len(b)) and a[common] is b[common]:
      common += 1
    distances.append(height[a[common - 1]])
  return SyntaxTargets(spans, np.asarray(distances, np.int64))
