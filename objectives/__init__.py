"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, codet5, contrabert, distill_mlm,  # noqa: F401
                        drbert, e2s2, ernie3, ftp, graphcodebert, mae, minilm, mlm,
                        multi_token, next_block, prefix_lm, retromae, span_corruption,
                        starbucks, unixcoder)
