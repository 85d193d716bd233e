"""Evaluation: perplexity / bits per byte and probe accuracy (toyworld cloze, arithmetic)."""
