"""Scanned stacks compute what the unscanned list computes; remat changes memory, not math."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs.base import DEFAULT_RULES

from models.attention import attention_mask
from models.transformer import TextTransformer, TransformerConfig
from models.vit import ViT, ViTConfig
from pretrain import main as main_lib, sharding
from pretrain.train import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = TransformerConfig(vocab_size=64, num_layers=3, d_model=32, num_heads=4, d_ff=64,
                         max_len=16, pos_emb="rotary")
VIT = ViTConfig(image_size=(8, 8), patch_size=(4, 4), channels=3, d_model=16, num_layers=3,
                num_heads=2, d_ff=32)
SEGS = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 3 + [2] * 9])


def _params(cls, cfg):
  with nnx.use_eager_sharding(False):
    module = cls(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(module, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _stack_layers(params):
  """Unscanned params -> the scanned layout: blocks/<i>/... stacked on a leading axis."""
  blocks = params["stack"]["blocks"]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(blocks[i] for i in sorted(blocks)))
  return {**params, "stack": {**params["stack"], "blocks": stacked}}


def _text_loss(graphdef, params):
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 64, SEGS.shape))
  positions = jnp.broadcast_to(jnp.arange(SEGS.shape[1]), SEGS.shape)
  model = nnx.merge(graphdef, params)
  hidden = model(tokens, mask=attention_mask("causal", segment_ids=jnp.asarray(SEGS)),
                 positions=positions)
  return jnp.sum(jnp.sin(hidden)), hidden


def _vit_loss(graphdef, params):
  images = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 3), np.float32))
  hidden = nnx.merge(graphdef, params)(images)
  return jnp.sum(jnp.sin(hidden)), hidden


def _assert_close(a, b):
  """float32 agreement up to XLA reassociating sums (fusion differs between layouts)."""
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


CASES = {"text": (TextTransformer, TEXT, _text_loss), "vit": (ViT, VIT, _vit_loss)}


def _grads(case, **options):
  cls, cfg, loss = CASES[case]
  graphdef, params = _params(cls, dataclasses.replace(cfg, **options))
  if options.get("scan_layers"):  # Same weights as the unscanned model.
    params = _stack_layers(_params(cls, cfg)[1])
  fn = jax.jit(jax.value_and_grad(lambda p: loss(graphdef, p), has_aux=True))
  (_, hidden), grads = fn(params)
  return hidden, grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_scanned_stack_matches_unscanned(case):
  hidden, grads = _grads(case)
  scan_hidden, scan_grads = _grads(case, scan_layers=True)
  _assert_close(scan_hidden, hidden)
  jax.tree.map(_assert_close, scan_grads, _stack_layers(grads))


def test_unscanned_param_tree_is_a_list_of_blocks():
  _, params = _params(TextTransformer, TEXT)
  assert sorted(params["stack"]["blocks"]) == [0, 1, 2]
  assert params["stack"]["blocks"][0]["attn"]["query"]["kernel"].shape == (32, 4, 8)


def test_scanned_params_carry_a_layers_axis_that_stays_unsharded():
  with nnx.use_eager_sharding(False):
    model = TextTransformer(dataclasses.replace(TEXT, scan_layers=True), rngs=nnx.Rngs(0))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  specs = sharding.param_shardings(nnx.state(model, nnx.Param), mesh,
                                   sharding.rules_tuple(DEFAULT_RULES))
  assert model.stack.blocks.attn.query.kernel.shape == (3, 32, 4, 8)
  assert specs["stack"]["blocks"]["attn"]["query"]["kernel"].spec == P(
      None, "fsdp", "tensor", None)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_identical_gradients(scan_layers, remat):
  hidden, grads = _grads("text", scan_layers=scan_layers)
  remat_hidden, remat_grads = _grads("text", scan_layers=scan_layers, remat=remat)
  _assert_close(remat_hidden, hidden)
  jax.tree.map(_assert_close, remat_grads, grads)


def test_bad_remat_is_named():
  with pytest.raises(ValueError, match=r"remat='some' is not one of \['none', 'full', 'dots'\]"):
    dataclasses.replace(TEXT, remat="some").validate()


def test_tiny_scanned_remat_run_trains(tmp_path):
  """The trainer, checkpoints and eval work unchanged on a scanned, rematerialized model."""
  assert main_lib.main([f"--config={ROOT}/configs/gpt.py:tiny", f"--workdir={tmp_path}",
                        "--config.model.scan_layers=true", "--config.model.remat=dots",
                        "--config.train.steps=6", "--config.train.log_every=2",
                        "--config.train.eval_every=6", "--config.train.checkpoint_every=6",
                        "--config.optim.warmup_steps=2"]) == 0
  records = read_metrics(str(tmp_path))
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert any("eval_loss" in r for r in records)
  assert os.listdir(tmp_path / "checkpoints") == ["6"]
