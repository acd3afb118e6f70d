"""One file per pretraining objective; importing this package registers them all."""
from objectives import (causal_lm, distill_mlm, mae, minilm, mlm, prefix_lm,  # noqa: F401
                        span_corruption)
