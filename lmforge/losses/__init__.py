"""Losses as pure functions: tensors in, per-example or summed values (plus diagnostics) out.

Reduction across micro-batches and processes is the trainer's job, never the loss's.
"""

from lmforge.losses.ce import IGNORE_INDEX, cross_entropy_sum

__all__ = ["IGNORE_INDEX", "cross_entropy_sum"]
