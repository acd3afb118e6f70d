"""The trainer: everything that is not a model or a loss."""
