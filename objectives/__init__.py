"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, codet5, dino, distill_mlm, drbert, e2s2,  # noqa: F401
                        ernie3, ftp, graphcodebert, mae, mae_distill, minilm, mlm, multi_token,
                        next_block, prefix_lm, span_corruption, unixcoder)
