"""Evaluators of pretrained representations: built-in labelled tasks, probes, the registry."""
