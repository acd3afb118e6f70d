"""Pure Flax NNX modules, used functionally at the jit boundary."""
