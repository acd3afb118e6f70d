"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, cae, causal_lm, codet5, cropmae, distill_mlm,  # noqa: F401
                        drbert, e2s2, ernie3, ftp, graphcodebert, mae, minilm, mlm,
                        multi_token, next_block, prefix_lm, span_corruption, unixcoder)
