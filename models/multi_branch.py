"""A shared backbone with task-specific branches: ERNIE 3.0's "universal representation"
and "task-specific representation" modules (Sun et al. 2021, "ERNIE 3.0: Large-scale
Knowledge Enhanced Pre-training for Language Understanding and Generation").

The backbone is a `TextTransformer` (embeddings, the universal stack, the tied output
layer); each branch is a `TransformerStack` of its own, usually narrower (the 10B model:
backbone 48 x 4096, branches 12 x 768). The paper does not say how the 768-wide branches
meet the 4096-wide backbone; here a linear projection maps the backbone states down into
each branch and another maps the branch states back up to the backbone width, so both
branches read out through the backbone's tied token embedding (no per-branch vocabulary
table). The caller picks the mask per call: ERNIE 3.0 runs the same backbone under a
different attention mask for each task.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from models.layers import Dense
from models.transformer import (BlockConfig, TextTransformer, TransformerConfig,
                                TransformerStack, stack_flops_per_token)

BRANCHES = ("ae", "ar")  # auto-encoding (NLU) and auto-regressive (NLG) networks


@dataclasses.dataclass(frozen=True)
class MultiBranchConfig(TransformerConfig):
  branch_layers: int = 1
  branch_d_model: int = 64
  branch_heads: int = 1
  branch_d_ff: int = 256

  @property
  def backbone(self) -> TransformerConfig:
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
    return TransformerConfig(**fields)

  @property
  def branch_block(self) -> BlockConfig:
    return dataclasses.replace(self.block, d_model=self.branch_d_model,
                               num_heads=self.branch_heads, d_ff=self.branch_d_ff)

  def validate(self) -> None:
    super().validate()
    if self.branch_layers < 1:
      raise ValueError(f"branch_layers={self.branch_layers} must be >= 1")
    self.branch_block.validate()


class Branch(nnx.Module):
  """Backbone states (B, L, D) -> branch stack at its own width -> (B, L, D)."""

  def __init__(self, d_model: int, cfg: BlockConfig, num_layers: int, *, rngs: nnx.Rngs):
    project = d_model != cfg.d_model
    dense = dict(dtype=cfg.dtype, init_std=cfg.init_std, rngs=rngs)
    self.down = Dense(d_model, cfg.d_model, ("embed", "mlp"), **dense) if project else None
    self.stack = TransformerStack(cfg, num_layers, rngs=rngs)
    self.up = Dense(cfg.d_model, d_model, ("mlp", "embed"), **dense) if project else None

  def __call__(self, x: jax.Array, *, mask, positions) -> jax.Array:
    if self.down is not None:
      x = self.down(x)
    x = self.stack(x, mask=mask, positions=positions)
    return x if self.up is None else self.up(x)


class MultiBranchTransformer(nnx.Module):
  """`backbone` + one `Branch` per name in BRANCHES (params "ae", "ar")."""

  def __init__(self, cfg: MultiBranchConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.backbone = TextTransformer(cfg.backbone, rngs=rngs)
    self.ae = Branch(cfg.d_model, cfg.branch_block, cfg.branch_layers, rngs=rngs)
    self.ar = Branch(cfg.d_model, cfg.branch_block, cfg.branch_layers, rngs=rngs)

  def __call__(self, tokens: jax.Array, *, branch: str, mask: jax.Array | None,
               positions: jax.Array | None = None) -> jax.Array:
    """tokens (B, L) -> the branch's states (B, L, D), backbone and branch under `mask`."""
    if branch not in BRANCHES:
      raise ValueError(f"branch={branch!r}; valid: {BRANCHES}")
    hidden = self.backbone(tokens, mask=mask, positions=positions)
    return getattr(self, branch)(hidden, mask=mask, positions=positions)

  def logits(self, hidden: jax.Array) -> jax.Array:
    return self.backbone.logits(hidden)


def branch_flops_per_token(cfg: MultiBranchConfig, attended_len: float) -> float:
  """Forward matmul FLOPs per token of one branch: its stack and the two projections."""
  projections = 2 * 2 * cfg.d_model * cfg.branch_d_model if cfg.d_model != cfg.branch_d_model else 0
  return stack_flops_per_token(cfg.branch_block, cfg.branch_layers, attended_len) + projections
