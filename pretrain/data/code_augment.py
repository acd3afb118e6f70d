"""Semantics-preserving augmentations of Python functions, on Python's own `ast`
(ContraBERT, Liu et al. 2023, "ContraBERT: Enhancing Code Pre-trained Models via
Contrastive Learning", §3.2: the PL operators variable renaming, dead-code insertion and
statement permutation).

Each operator takes one function's source and returns the augmented source (unparsed by
`ast.unparse`) or None when it does not apply; `augment` draws among those that apply. What
"preserving" means and how each is made safe:
  rename_variables   the function's own locals (parameters, assigned names, loop / with /
                     except targets) get fresh names `v0, v1, ...` consistently everywhere in
                     the function (nested scopes included, so closures still see them).
                     Names also bound in ways not renamed here (imports, def / class names,
                     global / nonlocal, match captures) keep theirs. Calls by keyword to a
                     renamed parameter would break: ContraBERT renames parameters too.
  insert_dead_code   `if False:` holding a copy of one of the function's own simple
                     statements, at a random point of its body (after the docstring): never
                     runs, and binds no name the function does not already bind.
  reorder_statements swaps two adjacent assignments to plain names that share no name (read
                     or written) and contain no call, await, yield, walrus or lambda, so
                     neither can observe the other (operator overloads with side effects
                     aside).
"""
from __future__ import annotations

import ast
import copy

import numpy as np

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)
_EFFECTS = (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr, ast.Lambda)
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return)


def _function(source: str) -> tuple[ast.Module, ast.FunctionDef | ast.AsyncFunctionDef]:
  """The parsed module and its first statement, which must be a function definition."""
  tree = ast.parse(source)
  if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
    raise ValueError("expected the source of one function")
  return tree, tree.body[0]


def _own_scope(func) -> list[ast.AST]:
  """Nodes of `func`'s body not inside a nested function, lambda, class or comprehension
  (whose own variables are not the function's: a comprehension's `x` may shadow a global
  `x` read elsewhere in the function)."""
  out, todo = [], list(func.body)
  while todo:
    node = todo.pop()
    out.append(node)
    if not isinstance(node, _SCOPES):
      todo.extend(ast.iter_child_nodes(node))
  return out


def local_names(func) -> list[str]:
  """The function's own renamable locals, in first-seen order."""
  args = func.args
  params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                            *filter(None, (args.vararg, args.kwarg)))]
  own = _own_scope(func)
  stored = [n.id for n in own if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
  stored += [n.name for n in own if isinstance(n, ast.ExceptHandler) and n.name]
  fixed = set()
  for node in ast.walk(func):
    if isinstance(node, (ast.Global, ast.Nonlocal)):
      fixed.update(node.names)
    elif isinstance(node, ast.alias):
      fixed.add((node.asname or node.name).split(".")[0])
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      fixed.add(node.name)
    elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
      fixed.add(node.name)
    elif isinstance(node, ast.MatchMapping) and node.rest:
      fixed.add(node.rest)
  return [n for n in dict.fromkeys(params + stored) if n not in fixed]


def _all_identifiers(tree: ast.AST) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    for field in ("id", "arg", "name", "attr", "asname", "rest"):
      value = getattr(node, field, None)
      if isinstance(value, str):
        names.add(value)
  return names


def rename_variables(source: str, rng: np.random.Generator) -> str | None:
  """Every local of the function renamed to a fresh `v<i>` (in a random order)."""
  tree, func = _function(source)
  names = local_names(func)
  if not names:
    return None
  taken = _all_identifiers(tree)
  fresh = (f"v{i}" for i in range(len(taken) + len(names)))
  fresh = [n for n in fresh if n not in taken][:len(names)]
  mapping = dict(zip(names, (fresh[i] for i in rng.permutation(len(names)))))
  for node in ast.walk(func):
    if isinstance(node, ast.Name) and node.id in mapping:
      node.id = mapping[node.id]
    elif isinstance(node, ast.arg) and node.arg in mapping:
      node.arg = mapping[node.arg]
    elif isinstance(node, ast.ExceptHandler) and node.name in mapping:
      node.name = mapping[node.name]
  return ast.unparse(tree)


def _body_start(func) -> int:
  """Index of the first body statement after the docstring."""
  first = func.body[0]
  has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
             and isinstance(first.value.value, str))
  return int(has_doc)


def insert_dead_code(source: str, rng: np.random.Generator) -> str | None:
  """An `if False:` block with a copy of one of the function's simple statements (or
  `pass`) inserted at a random point of the body."""
  tree, func = _function(source)
  simple = [s for s in _own_scope(func) if isinstance(s, _SIMPLE)]
  body = copy.deepcopy(simple[rng.integers(len(simple))]) if simple else ast.Pass()
  start = _body_start(func)
  at = int(rng.integers(start, len(func.body) + 1))
  func.body.insert(at, ast.If(test=ast.Constant(False), body=[body], orelse=[]))
  return ast.unparse(ast.fix_missing_locations(tree))


def _names(node: ast.AST) -> set[str]:
  return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
  """Both plain-name assignments without effects, and no name in common."""
  for s in (a, b):
    targets = s.targets if isinstance(s, ast.Assign) else [getattr(s, "target", None)]
    if not (isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign))
            and all(isinstance(t, ast.Name) for t in targets)
            and not any(isinstance(n, _EFFECTS) for n in ast.walk(s))):
      return False
  return not _names(a) & _names(b)


def reorder_statements(source: str, rng: np.random.Generator) -> str | None:
  """Two adjacent independent assignments (in any block of the function) swapped."""
  tree, func = _function(source)
  candidates = []
  for node in [func, *_own_scope(func)]:
    for field in ("body", "orelse", "finalbody"):
      block = getattr(node, field, None)
      if isinstance(block, list):
        candidates += [(block, i) for i in range(len(block) - 1)
                       if _independent(block[i], block[i + 1])]
  if not candidates:
    return None
  block, i = candidates[rng.integers(len(candidates))]
  block[i], block[i + 1] = block[i + 1], block[i]
  return ast.unparse(tree)


OPERATORS = {"rename_variables": rename_variables, "insert_dead_code": insert_dead_code,
             "reorder_statements": reorder_statements}


def augment(source: str, rng: np.random.Generator) -> str:
  """One operator drawn uniformly among those that apply (dead code always does)."""
  for name in rng.permutation(sorted(OPERATORS)):
    out = OPERATORS[name](source, rng)
    if out is not None:
      return out
  raise AssertionError("insert_dead_code always applies")
