"""BIOptimus: BERT MLM with a masking curriculum (Pavlova & Makhlouf 2023, "BIOptimus:
Pre-training an Optimal Biomedical Language Model with Curriculum Learning for Named Entity
Recognition", BioNLP 2023).

  python -m pretrain.main --config=configs/bioptimus.py:tiny --workdir=runs/bioptimus_tiny

The paper compares masking rates, corruption strategies and masking strategies (token,
whole-word, span) for a biomedical BERT-base and trains BIOptimus with curriculum learning
over them. Here the curriculum is `objective.curriculum`: (start_step, strategy, rate)
phases on top of the BERT recipe (configs/bert.py), from easy (token masking at 15%) to hard
(whole words, then SpanBERT spans, at higher rates). The phase boundaries and rates are our
choice: the abstract does not state the paper's schedule and we have no other text of it.

Variants: tiny (CPU test size: all three phases within 40 steps), base (BERT-base, 110M).
"""
from __future__ import annotations

from configs import bert

# Not implemented: the contextualized weight distillation that initialises new biomedical
# vocabulary from BERT's weights (the simpler BIOptimus-style init, each new token the mean
# of its old pieces, is `--config.init_from.vocab=extend` with init_from.path=<BERT run>), the PubMed corpus (we train on the built-in corpora), the paper's own phase
# schedule (see above), and what configs/bert.py lists.
NOT_IMPLEMENTED = ("contextualized_weight_distillation",
                   "pubmed_corpus", "paper_curriculum_schedule", *bert.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  if variant not in ("tiny", "base"):
    raise ValueError(f"configs/bioptimus.py variant {variant!r}; valid: tiny, base")
  c = bert.get_config(variant)
  steps = c.train.steps if variant == "base" else 30  # tiny: the 30 steps its test trains
  # Phase 0 is the base (mask_rate 0.15, token masking, BERT's 80/10/10 corruption).
  # Entries are lists, not tuples, so they compare equal to the config.json a resumed run
  # reads back (pretrain.config.check_resumable).
  c.objective.curriculum = ([steps // 3, "whole_word", 0.2], [2 * steps // 3, "span", 0.3])
  return c
