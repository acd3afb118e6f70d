"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, codet5, contrabert, contrastive,  # noqa: F401
                        distill_mlm, drbert, e2s2, ernie3, ftp, graphcodebert, mae, minilm, mlm,
                        multi_token, next_block, prefix_lm, retromae, span_corruption,
                        starbucks, unixcoder)
