"""One file per pretraining objective; importing this package registers them all."""
from objectives import (bart, causal_lm, codet5, drbert, e2s2, ernie3,  # noqa: F401
                        graphcodebert, mae, mlm, prefix_lm, span_corruption, unixcoder)
