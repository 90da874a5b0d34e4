"""Finetune trainer data plane: distributed fine-tuning, checkpoints, export and Triton publication."""

__version__ = "0.1.0"
