"""One file per pretraining objective; importing this package registers them all."""
from objectives import causal_lm, mae, mlm  # noqa: F401
