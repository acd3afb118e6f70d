"""One rule table per architecture, applied by the same code in both directions.

Our params are the '/'-joined paths of the pure params dict (as `pretrain.checkpoint`
flattens them); HF tensors are their safetensors names. A rule maps one HF tensor to one or
more of ours: GPT-2's `c_attn` fuses query, key and value on its last axis.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

LAYER = "{i}"  # Stands for the layer index in rule names.


@dataclasses.dataclass(frozen=True)
class Rule:
  """hf <-> ours. kind: "vector" (HF 1-D: biases, norms), "matrix" (HF (in, out):
  embeddings, GPT-2 Conv1D), "linear" (torch Linear (out, in)). num_in: how many leading
  axes of our kernel are inputs (2 for the attention output (heads, kv, embed))."""
  hf: str
  ours: tuple[str, ...]
  kind: str = "vector"
  num_in: int = 1

  def for_layer(self, i: int) -> "Rule":
    return dataclasses.replace(self, hf=self.hf.replace(LAYER, str(i)),
                               ours=tuple(o.replace(LAYER, str(i)) for o in self.ours))

  def to_ours(self, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    t = tensor.T if self.kind == "linear" else tensor
    parts = np.split(t, len(self.ours), axis=-1)
    for name, part, shape in zip(self.ours, parts, shapes):
      if part.size != math.prod(shape):
        raise ValueError(f"HF tensor {self.hf} {tensor.shape} does not fit {name} {shape}")
    return {n: np.ascontiguousarray(p.reshape(s)) for n, p, s in zip(self.ours, parts, shapes)}

  def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
    flat = [a.reshape(-1) if self.kind == "vector"
            else a.reshape(math.prod(a.shape[:self.num_in]), -1) for a in arrays]
    t = np.concatenate(flat, axis=-1)
    return np.ascontiguousarray(t.T if self.kind == "linear" else t)


def expand(rules: list[Rule], num_layers: int) -> list[Rule]:
  """Rules with `{i}` repeated for every layer."""
  out = []
  for r in rules:
    out += [r.for_layer(i) for i in range(num_layers)] if LAYER in r.hf else [r]
  return out


@dataclasses.dataclass(frozen=True)
class Arch:
  """What differs between HF architectures; everything else is shared in `convert`.

  sizes: our TransformerConfig field -> HF config key. fixed: our fields the architecture
  implies. rules(tie) -> the table. fold_in / fold_out handle the pieces with no one-to-one
  counterpart: they pop what they consume from the tensors the rules left, write the other
  side, and return notes saying what was folded or dropped.
  """
  model_type: str
  architecture: str  # the HF class `config.json` names
  prefix: str  # base-model prefix, absent from checkpoints saved from the base model
  sizes: dict[str, str]
  fixed: dict
  activation_key: str
  heads: tuple[str, ...]  # first name components outside the base model (head tensors)
  hf_defaults: Callable[[dict], dict]  # values of HF config keys a config.json may omit
  extra_config: dict  # written on export besides sizes and activation
  rules: Callable[[bool], list[Rule]]
  fold_in: Callable[[dict, dict, object], list[str]]  # (hf left, ours, cfg) -> notes
  fold_out: Callable[[dict, dict, object], list[str]]  # (ours left, hf, cfg) -> notes
