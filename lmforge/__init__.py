"""lmforge: build a chat language model through every stage, and see what each stage does."""

__version__ = "0.1.0"
