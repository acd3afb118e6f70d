"""Python source annotations for code objectives, from Python's own `tokenize` and `ast`.

CodeT5 (Wang et al. 2021) needs to know which subword tokens are identifiers and which
identifier each belongs to; GraphCodeBERT (Guo et al. 2021) needs the data-flow graph of a
function over its variable occurrences. Both come from the language's own lexer and parser
(a regex would mistake names inside strings and comments for identifiers), and are then
carried onto the project tokenizer's subword tokens through the character offsets that
`tokenizers` returns: a subword token belongs to the lexical token that holds its first
non-space character.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import keyword
import textwrap
import tokenize

import numpy as np

from pretrain.data.tokenizer import _IS_SPACE, Tokenizer, _ids_and_word_starts

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _line_starts(text: str) -> np.ndarray:
  """Character offset of each line start (lines split at "\\n", as StringIO.readline does)."""
  lengths = [len(line) + 1 for line in text.split("\n")]
  return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def identifier_spans(text: str) -> list[tuple[int, int, str]]:
  """(start, end, name) character spans of every identifier (a NAME token that is not a
  keyword) in Python source; raises SyntaxError/tokenize.TokenError on malformed source."""
  starts = _line_starts(text)
  spans = []
  for tok in tokenize.generate_tokens(io.StringIO(text).readline):
    if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
      begin = int(starts[tok.start[0] - 1]) + tok.start[1]
      spans.append((begin, begin + len(tok.string), tok.string))
  return spans


def token_anchors(text: str, offsets: np.ndarray) -> np.ndarray:
  """Per subword token, the offset of its first non-space character (-1 for all-space)."""
  chars = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  space = _IS_SPACE[np.minimum(chars, len(_IS_SPACE) - 1)]
  # next_nonspace[i]: the first non-space character at or after i (len(text) if none).
  candidates = np.where(space, len(chars), np.arange(len(chars)))
  next_nonspace = np.append(np.minimum.accumulate(candidates[::-1])[::-1], len(chars))
  first = next_nonspace[np.minimum(offsets[:, 0], len(chars))]
  return np.where(first < offsets[:, 1], first, -1)


def char_owner(text_len: int, spans) -> np.ndarray:
  """owner[c] = index of the span holding character c, or -1."""
  owner = np.full(text_len + 1, -1, np.int64)
  for i, (begin, end, *_) in enumerate(spans):
    owner[begin:end] = i
  return owner


def span_token_ranges(text: str, offsets: np.ndarray, spans) -> np.ndarray:
  """(len(spans), 2) [first, last + 1) range of the subword tokens anchored in each span
  ([0, 0) if none)."""
  owner = char_owner(len(text), spans)[token_anchors(text, offsets)]
  ranges = np.zeros((len(spans), 2), np.int64)
  for i in range(len(spans)):
    hits = np.flatnonzero(owner == i)
    if len(hits):
      ranges[i] = hits[0], hits[-1] + 1
  return ranges


@dataclasses.dataclass(frozen=True)
class AnnotatedCode:
  """A document as subword tokens with identifier labels.

  identifier_id[t] is 0 for a non-identifier token and k >= 1 for a token of the document's
  k-th distinct identifier (numbered by first occurrence), so `identifier_id > 0` is the
  identifier-tagging label and equal ids are occurrences of the same name.
  """

  ids: np.ndarray            # (T,) int32
  word_start: np.ndarray     # (T,) bool
  offsets: np.ndarray        # (T, 2) character spans
  identifier_id: np.ndarray  # (T,) int32


def annotate(text: str, encoding) -> AnnotatedCode:
  """Labels one tokenizer `encoding` of `text` with the identifiers `tokenize` finds."""
  ids, word_start = _ids_and_word_starts(text, encoding)
  offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
  spans = identifier_spans(text)
  names: dict[str, int] = {}
  span_name = np.array([names.setdefault(n, len(names) + 1) for _, _, n in spans] + [0])
  anchors = token_anchors(text, offsets)
  owner = char_owner(len(text), spans)[anchors]  # anchors == -1 reads the final -1 entry
  identifier_id = np.where((anchors >= 0) & (owner >= 0), span_name[owner], 0)
  return AnnotatedCode(ids, word_start, offsets, identifier_id.astype(np.int32))


def annotate_documents(docs: list[str], tokenizer: Tokenizer) -> list[AnnotatedCode]:
  """`annotate` over many documents (batch-tokenized); documents Python cannot tokenize
  (e.g. Python 2 files) are left out rather than given wrong labels."""
  out = []
  for text, encoding in zip(docs, tokenizer.hf.encode_batch(docs, add_special_tokens=False)):
    try:
      out.append(annotate(text, encoding))
    except (SyntaxError, tokenize.TokenError):
      continue
  return out


def _functions(module_text: str) -> list[ast.AST]:
  """Function nodes defined at module or class level, in source order ([] if the module
  does not parse)."""
  try:
    tree = ast.parse(module_text)
  except (SyntaxError, ValueError):
    return []
  found, todo = [], list(tree.body)
  while todo:
    node = todo.pop()
    if isinstance(node, _FUNCTIONS):
      found.append(node)
    elif isinstance(node, ast.ClassDef):
      todo.extend(node.body)
  return sorted(found, key=lambda f: f.lineno)


def _source(lines: list[str], first: int, last: int, skip: range = range(0)) -> str:
  """Dedented lines first..last (1-based, inclusive) without the line numbers in `skip`."""
  return textwrap.dedent("\n".join(lines[i - 1] for i in range(first, last + 1)
                                   if i not in skip))


def function_sources(module_text: str) -> list[str]:
  """The dedented source of every function defined at module or class level (nested
  functions stay inside their parent), without decorators."""
  lines = module_text.split("\n")
  return [_source(lines, f.lineno, f.end_lineno) for f in _functions(module_text)]


def docstring_pairs(module_text: str) -> list[tuple[str, str]]:
  """(docstring, code) of every module- or class-level function that has a docstring and
  more code than it: the NL-PL pairs of CodeT5's bimodal dual generation (Wang et al. 2021
  §3.2, there from CodeSearchNet). The code is the function without its docstring."""
  lines = module_text.split("\n")
  pairs = []
  for f in _functions(module_text):
    doc = ast.get_docstring(f)
    if (doc and len(f.body) > 1 and f.lineno < f.body[0].lineno  # docstring on lines of
        and f.body[0].end_lineno < f.body[1].lineno):              # its own
      skip = range(f.body[0].lineno, f.body[0].end_lineno + 1)
      pairs.append((doc, _source(lines, f.lineno, f.end_lineno, skip)))
  return pairs


@dataclasses.dataclass(frozen=True)
class DataFlow:
  """Variable occurrences (nodes, as character spans, in source order) and directed
  "value comes from" edges (dst, src) between them."""

  spans: list[tuple[int, int, str]]
  edges: list[tuple[int, int]]


class _DataFlowBuilder:
  """Walks a function in evaluation order, keeping the last definition of each name.

  Simplifications (GraphCodeBERT's own extractor is also syntactic): straight-line
  semantics over the source order, so after an if/else a use comes from the textually last
  definition only (no merging of branches) and loops do not feed back into themselves;
  tuple targets take every right-hand-side name as a source (no destructuring);
  attribute and subscript targets (`a.x = v`, `a[i] = v`) define nothing; names bound by
  `import`, `except ... as`, `global` and nested `def`/`class` statements are not nodes.
  Comprehensions, lambdas and nested functions see the enclosing definitions, and their
  own bindings do not leak out.
  """

  def __init__(self, text: str):
    self.lines, self.line_starts = text.split("\n"), _line_starts(text)
    self.spans: list[tuple[int, int, str]] = []
    self.edges: set[tuple[int, int]] = set()
    self.last: dict[str, int] = {}

  def _node(self, name: str, lineno: int, col: int) -> int:
    line = self.lines[lineno - 1]
    if not line.isascii():  # ast columns count UTF-8 bytes, spans count characters
      col = len(line.encode("utf-8")[:col].decode("utf-8"))
    begin = int(self.line_starts[lineno - 1]) + col
    self.spans.append((begin, begin + len(name), name))
    return len(self.spans) - 1

  def _define(self, target: ast.AST, sources: list[int]) -> None:
    if isinstance(target, ast.Name):
      node = self._node(target.id, target.lineno, target.col_offset)
      self.edges.update((node, s) for s in sources)
      self.last[target.id] = node
    elif isinstance(target, (ast.Tuple, ast.List)):
      for element in target.elts:
        self._define(element, sources)
    elif isinstance(target, ast.Starred):
      self._define(target.value, sources)
    else:  # Attribute / Subscript: only the names it reads.
      self.expr(target)

  def _arguments(self, args: ast.arguments) -> None:
    for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
      self.expr(default)
    for arg in [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]:
      if arg is not None:
        self.last[arg.arg] = self._node(arg.arg, arg.lineno, arg.col_offset)

  def _scoped(self, walk) -> list[int]:
    saved = dict(self.last)
    reads = walk()
    self.last = saved
    return reads

  def expr(self, node: ast.AST | None) -> list[int]:
    """Visits an expression; returns the nodes of the names it reads."""
    if node is None:
      return []
    if isinstance(node, ast.Name):
      if not isinstance(node.ctx, ast.Load):
        self._define(node, [])
        return []
      use = self._node(node.id, node.lineno, node.col_offset)
      if node.id in self.last:
        self.edges.add((use, self.last[node.id]))
      return [use]
    if isinstance(node, ast.NamedExpr):
      sources = self.expr(node.value)
      self._define(node.target, sources)
      return [self.last[node.target.id]]
    if isinstance(node, _COMPREHENSIONS):
      return self._scoped(lambda: self._comprehension(node))
    if isinstance(node, ast.Lambda):
      return self._scoped(lambda: (self._arguments(node.args), self.expr(node.body))[1])
    reads = []
    for child in ast.iter_child_nodes(node):
      reads.extend(self.expr(child))
    return reads

  def _comprehension(self, node) -> list[int]:
    reads = []
    for gen in node.generators:
      sources = self.expr(gen.iter)
      self._define(gen.target, sources)
      for cond in gen.ifs:
        reads.extend(self.expr(cond))
    parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    for part in parts:
      reads.extend(self.expr(part))
    return reads

  def stmt(self, node: ast.stmt) -> None:
    if isinstance(node, ast.Assign):
      sources = self.expr(node.value)
      for target in node.targets:
        self._define(target, sources)
    elif isinstance(node, ast.AugAssign):
      sources = self.expr(node.value)
      if isinstance(node.target, ast.Name):  # x += v: x comes from v and the old x.
        sources += [self.last[node.target.id]] if node.target.id in self.last else []
      self._define(node.target, sources)
    elif isinstance(node, ast.AnnAssign):
      self.expr(node.annotation)
      if node.value is not None:
        self._define(node.target, self.expr(node.value))
    elif isinstance(node, (ast.For, ast.AsyncFor)):
      self._define(node.target, self.expr(node.iter))
      self.body(node.body + node.orelse)
    elif isinstance(node, (ast.With, ast.AsyncWith)):
      for item in node.items:
        sources = self.expr(item.context_expr)
        if item.optional_vars is not None:
          self._define(item.optional_vars, sources)
      self.body(node.body)
    elif isinstance(node, _FUNCTIONS):
      for decorator in node.decorator_list:
        self.expr(decorator)
      self._scoped(lambda: (self._arguments(node.args), self.body(node.body)))
    elif isinstance(node, ast.ClassDef):
      self._scoped(lambda: self.body(node.body))
    else:  # if/while/try/return/expression/...: children in field (= evaluation) order.
      for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
          self.stmt(child)
        elif isinstance(child, (ast.excepthandler, ast.match_case)):
          self.expr(getattr(child, "type", None) or getattr(child, "guard", None))
          self.body(child.body)
        elif isinstance(child, ast.expr):
          self.expr(child)

  def body(self, statements) -> None:
    for statement in statements:
      self.stmt(statement)


def data_flow(function_text: str) -> DataFlow:
  """The data-flow graph of one function's source (nodes sorted by position)."""
  tree = ast.parse(function_text)
  builder = _DataFlowBuilder(function_text)
  for node in tree.body:
    if isinstance(node, _FUNCTIONS):
      builder._arguments(node.args)
      builder.body(node.body)
    else:
      builder.stmt(node)
  order = sorted(range(len(builder.spans)), key=lambda i: builder.spans[i][0])
  rank = {old: new for new, old in enumerate(order)}
  return DataFlow([builder.spans[i] for i in order],
                  sorted((rank[d], rank[s]) for d, s in builder.edges))
