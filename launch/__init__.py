"""Launchers that start `python -m pretrain.main` as the processes of one run."""
