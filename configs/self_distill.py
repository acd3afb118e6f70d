"""Self-distillation for further pre-training (Lee et al. 2022, "Self-Distillation for
Further Pre-training of Transformers"), on MAE.

  python -m pretrain.main --config=configs/mae.py:tiny --workdir=runs/initial
  python -m pretrain.main --config=configs/self_distill.py:tiny_teacher \
      --workdir=runs/teacher --config.init_from.path=runs/initial
  python -m pretrain.main --config=configs/self_distill.py:tiny_student \
      --workdir=runs/student --config.init_from.path=runs/initial \
      --config.teacher.path=runs/teacher

Stage 1 (`*_teacher`): further pre-train the initial pre-trained model with MAE on the
target data. Stage 2 (`*_student`): start again from the same initial weights and train
MAE plus the distance of the encoder's hidden states to the frozen stage-1 teacher's
(objectives/mae_distill.py). Both stages load the initial model through init_from.path;
the student finds the teacher through teacher.path. Variants: tiny_teacher, tiny_student
(Fashion-MNIST) and B/16_teacher, B/16_student (the paper's ViT-B/16 MAE, 86M encoder
params, Dosovitskiy et al. 2020 Table 1).
"""
from __future__ import annotations

from configs import mae

# Left out: the paper's target datasets and its fine-tuning stage (not pretraining), its
# text (RoBERTa) experiments, and what configs/mae.py lists. The distillation weight is
# 1.0 here, not a tuned value.
NOT_IMPLEMENTED = ("target_datasets", "fine_tuning", "text_models", "tuned_distill_weight",
                   *mae.NOT_IMPLEMENTED)
SIZES = ("tiny", "B/16")


def get_config(arg: str | None = None):
  variant = arg or "tiny_student"
  size, _, stage = variant.rpartition("_")
  if size not in SIZES or stage not in ("teacher", "student"):
    raise ValueError(f"configs/self_distill.py variant {variant!r}; valid: "
                     + ", ".join(f"{s}_{t}" for s in SIZES for t in ("teacher", "student")))
  c = mae.get_config(size)  # The initial model's own MAE recipe; init_from.path per run.
  if stage == "student":
    c.objective.name = "self_distill_mae"
    c.objective.mimic_weight = 1.0
    c.teacher.kind = "frozen"  # teacher.path: the stage-1 run's workdir, given per run.
  return c
