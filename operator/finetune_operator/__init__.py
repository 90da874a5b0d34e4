"""Finetune Operator control plane: the FineTuneJob API, the kopf operator and the `finetune` CLI."""

__version__ = "0.1.0"
