"""Pre-trained Distillation (Turc et al. 2019, "Well-Read Students Learn Better: On the
Importance of Pre-training Compact Models"), on the MLM task.

  python -m pretrain.main --config=configs/bert.py:large --workdir=runs/teacher
  python -m pretrain.main --config=configs/bert.py:mini --workdir=runs/mini
  python -m pretrain.main --config=configs/pd.py:mini --workdir=runs/mini_pd \
      --config.init_from.path=runs/mini --config.teacher.path=runs/teacher

Algorithm 1: (1) pre-train the compact student with MLM (configs/bert.py, any of the 24
miniatures), (2) distil a larger teacher into it: here a frozen BERT run of ours, its soft
MLM predictions at the masked positions (objectives/distill_mlm.py), (3) fine-tune (not
pretraining: out of scope). The student starts from its MLM run through init_from.path.

Variants: tiny (CPU test: student bert:tiny, teacher bert:mini) and every miniature name of
configs/bert.py as the student, with a BERT-large teacher (the paper's, §4).
"""
from __future__ import annotations

import ml_collections

from configs import bert

# Left out: the labeled-task stage (a teacher fine-tuned on the task labels the transfer
# data; we distil its pre-trained MLM predictions instead), fine-tuning (3), and what
# configs/bert.py lists.
NOT_IMPLEMENTED = ("task_specific_teacher", "fine_tuning", *bert.NOT_IMPLEMENTED)


def get_config(arg: str | None = None):
  variant = arg or "tiny"
  c = bert.get_config(variant)  # The student: a BERT miniature and its MLM recipe.
  c.objective.name = "distill_mlm"
  c.teacher.kind = "frozen"  # teacher.path: the teacher run's workdir, given per run.
  # init_from.path: the student's own MLM run (Algorithm 1 step 1), given per run.
  if variant == "tiny":
    c.teacher.model = ml_collections.ConfigDict(dict(variant="bert:mini"))
  else:
    # §4: the teacher is BERT-Large for every student size (fine-tuned there, see above).
    c.teacher.model = ml_collections.ConfigDict(dict(variant="bert:large"))
  return c
