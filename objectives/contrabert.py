"""ContraBERT (Liu et al. 2023, "ContraBERT: Enhancing Code Pre-trained Models via
Contrastive Learning"): masked LM plus a contrastive loss that pulls a function and a
semantics-preserving variant of it together, so the encoder becomes robust to renamed
variables, dead code and reordered statements.

  loss = MLM + contrastive_weight * InfoNCE(pool(masked function), pool(variant))

Data (`FunctionPairs`): one example per function of the Python standard library
(`function_sources`), each canonicalised by `ast.unparse` and paired with a variant made by
one operator of pretrain/data/code_augment.py (drawn from a generator seeded by the
function's index, so the cached build is deterministic). Both are single-segment rows
[CLS] code [SEP], padded. Host side, the original gets BERT masking (`MlmMasking`); the
device encodes the masked original (whose states also serve the MLM slots) and the clean
variant, mean-pools each over its tokens, and scores InfoNCE with the batch's other
functions as negatives (objectives/contrastive.py: over the global batch).

Left out (configs/contrabert.py NOT_IMPLEMENTED): ContraBERT's MoCo momentum encoder and
negative queue (in-batch negatives here), its NL operators and the PL operators beyond these
three, its continued training from CodeBERT / GraphCodeBERT weights, and its corpus
(CodeSearchNet, six languages; the Python stdlib here).
"""
from __future__ import annotations

import ast

import jax.numpy as jnp
import numpy as np

from models.attention import attention_mask
from models.transformer import logits_flops_per_token, transformer_flops_per_token
from objectives import base
from objectives.contrastive import info_nce, validate_temperature
from objectives.mlm import MaskedLM, MlmMasking, num_predictions
from pretrain.data.code import function_sources
from pretrain.data.code_augment import augment

VIEW = "variant_"  # key prefix of the augmented view's arrays


def single_row(ids: np.ndarray, word_start: np.ndarray, *, cls_id: int, sep_id: int,
               seq_len: int) -> dict[str, np.ndarray]:
  """[CLS] ids [SEP] padded to seq_len (ids cut to seq_len - 2): tokens, segment_ids (1 on
  real tokens), positions, word_start."""
  ids, word_start = ids[:seq_len - 2], word_start[:seq_len - 2]
  n = len(ids) + 2
  tokens = np.zeros(seq_len, np.int32)
  tokens[:n] = [cls_id, *ids, sep_id]
  starts = np.zeros(seq_len, bool)
  starts[:n] = [True, *word_start, True]
  return {"tokens": tokens, "segment_ids": (np.arange(seq_len) < n).astype(np.int32),
          "positions": np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32),
          "word_start": starts}


def function_pairs(docs: list[str]) -> list[tuple[str, str]]:
  """(canonical source, augmented variant) of every parseable stdlib function."""
  pairs = []
  for source in (f for doc in docs for f in function_sources(doc)):
    try:
      canonical = ast.unparse(ast.parse(source))
    except (SyntaxError, ValueError, RecursionError):
      continue
    rng = np.random.default_rng([0xC0DE, len(pairs)])
    pairs.append((canonical, augment(canonical, rng)))
  return pairs


class FunctionPairs:
  """`Objective.text_examples`: one function per example and its augmented variant."""

  key = {"function_pairs": "contrabert-ast-v1"}

  def build(self, docs, tokenizer, data_cfg) -> dict[str, np.ndarray]:
    pairs = function_pairs(docs)
    if not pairs:
      return {"tokens": np.zeros((0, data_cfg.seq_len), np.int32)}
    encoded = tokenizer.encode_batch([text for pair in pairs for text in pair])
    rows = [single_row(ids, starts, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                       seq_len=data_cfg.seq_len) for ids, starts in encoded]
    original, variant = rows[0::2], rows[1::2]
    out = {k: np.stack([r[k] for r in original]) for k in original[0]}
    out.update({VIEW + k: np.stack([r[k] for r in variant]) for k in variant[0]})
    return out

  def example(self, info) -> dict[str, np.ndarray]:
    """A synthetic example of the built rows' keys, shapes and dtypes (for AOT)."""
    ids = np.arange(info.seq_len // 2, dtype=np.int32) % info.vocab_size
    row = single_row(ids, np.ones(len(ids), bool), cls_id=0, sep_id=0, seq_len=info.seq_len)
    return {**row, **{VIEW + k: v for k, v in row.items()}}


class PairMasking(MlmMasking):
  """MLM masking of the original; the variant's arrays pass through unchanged."""

  def random_map(self, example, rng: np.random.Generator):
    out = super().random_map(example, rng)
    out.update({k: v for k, v in example.items() if k.startswith(VIEW)})
    return out


@base.register("contrabert")
class ContraBERT(MaskedLM):
  """The `mlm` keys configure the masking; `objective.contrastive_*` the InfoNCE term."""
  models = ("transformer",)
  tokenizer = "bpe"

  def validate(self, config):
    super().validate(config)
    validate_temperature(config.objective)
    if config.objective.contrastive_weight < 0:
      raise ValueError(f"objective.contrastive_weight={config.objective.contrastive_weight}: "
                       "must be >= 0")
    if config.objective.get("curriculum"):
      raise ValueError("contrabert does not take objective.curriculum")

  def text_examples(self, config):
    return FunctionPairs()

  def host_transform(self, config, info):
    o = config.objective
    return PairMasking(mask_rate=o.mask_rate, replace_mask=o.replace_mask,
                       replace_random=o.replace_random, whole_word=o.whole_word,
                       mask_id=info.mask_id, vocab_size=info.vocab_size,
                       special_ids=info.special_ids, seq_len=info.seq_len)

  def loss_fn(self, params, batch, rng, *, model, config):
    del rng  # All randomness is on the host.
    o = config.objective
    net = model.bind(params)
    segs = batch["segment_ids"]
    hidden = net(batch["inputs"], positions=batch["positions"],
                 mask=attention_mask("bidirectional", segment_ids=segs))
    picked = jnp.take_along_axis(hidden, batch["masked_positions"][..., None], axis=1)
    mlm, accuracy = base.token_loss(net.logits(picked), batch["masked_ids"],
                                    batch["masked_weights"])
    view_segs = batch[VIEW + "segment_ids"]
    variant = net(batch[VIEW + "tokens"], positions=batch[VIEW + "positions"],
                  mask=attention_mask("bidirectional", segment_ids=view_segs))
    contrastive, cl_accuracy = info_nce(base.mean_pool(hidden, segs > 0),
                                        base.mean_pool(variant, view_segs > 0),
                                        o.contrastive_temperature)
    return mlm + o.contrastive_weight * contrastive, {
        "mlm_accuracy": accuracy, "mlm_loss": mlm, "contrastive_loss": contrastive,
        "contrastive_accuracy": cl_accuracy}

  def forward_flops_per_example(self, config, info, model_cfg):
    """Two encoder passes (original and variant) and the MLM slots' logits."""
    slots = num_predictions(info.seq_len, config.objective.mask_rate)
    return (2 * info.seq_len * transformer_flops_per_token(model_cfg, info.seq_len,
                                                           with_logits=False)
            + slots * logits_flops_per_token(model_cfg))
