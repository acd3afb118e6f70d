"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, drbert, e2s2, ernie3, ftp, mae, mlm,  # noqa: F401
                        multi_token, next_block, prefix_lm, span_corruption, unixcoder)
