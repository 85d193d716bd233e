"""Data curation on datatrove: cleanups, quality filters, exact and MinHash deduplication, PII
scrubbing, a blocklist and decontamination against evaluation sets, with counts and samples of what
each step removed. The `curate` stage (lmforge/stages/curate.py) runs it; docs/curation.md explains it.

Modules: config (the recipe section), steps (custom datatrove steps), decontam (evaluation sets and
the n-gram filter), pipeline (executor stages), stats (counts and noisy-web scores), report (md, png).
Importing this package does not import datatrove; the modules that run the pipeline do.
"""
