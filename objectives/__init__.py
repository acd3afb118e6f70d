"""One file per pretraining objective; importing this package registers them all."""
from objectives import causal_lm, codet5, graphcodebert, mae, mlm, prefix_lm, span_corruption  # noqa: F401
