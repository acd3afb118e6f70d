"""One file per pretraining objective; importing this package registers them all."""
from objectives import causal_lm, mae, mlm, prefix_lm, span_corruption  # noqa: F401
from objectives import drbert, ernie3, unixcoder  # noqa: F401
