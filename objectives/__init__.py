"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, distill_mlm, drbert, e2s2, ernie3, ftp, mae,  # noqa: F401
                        minilm, mlm, multi_token, next_block, prefix_lm, span_corruption,
                        unixcoder)
