"""One file per pretraining objective; importing this package registers them all."""
from objectives import (causal_lm, ftp, mae, mlm, multi_token, next_block,  # noqa: F401
                        prefix_lm, span_corruption)
