"""Curation thresholds out of range are errors naming the full key when the recipe loads; they used
to be accepted and run (line_punct_thr=5 silently kept 0.46% of the documents)."""

import pytest

from lmforge.config import load_run_config
from lmforge.errors import LmforgeError

RECIPE = "recipes/demo.yaml"
BETWEEN = "expected a number between 0 and 1"


@pytest.mark.parametrize("override, expected", [
    ("fineweb.line_punct_thr=5", f"fineweb.line_punct_thr: {BETWEEN}, got 5.0"),
    ("fineweb.char_duplicates_ratio=-1", f"fineweb.char_duplicates_ratio: {BETWEEN}, got -1.0"),
    ("fineweb.short_line_thr=-0.5", "fineweb.short_line_thr: expected a number >= 0, got -0.5"),
    ("fineweb.new_line_ratio=-1", "fineweb.new_line_ratio: expected a number >= 0, got -1.0"),
    ("fineweb.short_line_length=-3", "fineweb.short_line_length: expected a number >= 0, got -3"),
    ("gopher_quality.max_symbol_word_ratio=-1",
     "gopher_quality.max_symbol_word_ratio: expected a number >= 0, or null (off), got -1.0"),
    ("gopher_quality.max_bullet_lines_ratio=1.5",
     f"gopher_quality.max_bullet_lines_ratio: {BETWEEN}, or null (off), got 1.5"),
    ("gopher_quality.min_stop_words=-2",
     "gopher_quality.min_stop_words: expected a number >= 0, or null (off), got -2"),
    ("gopher_quality.min_doc_words=200000",
     "gopher_quality.min_doc_words: expected at most max_doc_words (100000), got 200000"),
    ("gopher_quality.min_avg_word_length=20",
     "gopher_quality.min_avg_word_length: expected at most max_avg_word_length (10), got 20.0"),
    ("gopher_repetition.dup_line_frac=7", f"gopher_repetition.dup_line_frac: {BETWEEN}, or null (off), got 7.0"),
    ("gopher_repetition.dup_n_grams=[[5,7]]",
     "gopher_repetition.dup_n_grams: expected [n, fraction] pairs with an integer n >= 1 and the fraction between "
     "0 and 1, got [5.0, 7.0]"),
    ("gopher_repetition.top_n_grams=[[0,0.2]]",
     "gopher_repetition.top_n_grams: expected [n, fraction] pairs with an integer n >= 1 and the fraction between "
     "0 and 1, got [0.0, 0.2]"),
    ("c4.max_word_length=0", "c4.max_word_length: expected -1 (off) or an integer >= 1, got 0"),
    ("c4.min_num_sentences=-2", "c4.min_num_sentences: expected -1 (off) or an integer >= 0, got -2"),
    ("language.min_score=2", f"language.min_score: {BETWEEN}, got 2.0"),
    ("language.languages=[]", "language.languages: expected at least one language code (e.g. [en])"),
    ("blocklist.min_hits=0", "blocklist.min_hits: expected a positive integer, got 0"),
    ("samples_per_filter=-1", "samples_per_filter: expected a number >= 0, got -1"),
    ("decontam.toyworld_per_task=-1", "decontam.toyworld_per_task: expected a number >= 0, got -1"),
    ("decontam.ngram=1", "decontam.ngram: expected an integer >= 2, got 1"),
    ("decontam.min_overlap=1.5", f"decontam.min_overlap: {BETWEEN}, got 1.5"),
    ("decontam.min_overlap=0", "decontam.min_overlap: must be > 0 (0 would drop every document)"),
    ("minhash.bands=0", "minhash.bands: expected a positive integer, got 0"),
    ("executor.workers=0", "executor.workers: expected a positive integer, got 0"),
    ("executor.start_method=bogus", "executor.start_method: expected one of fork, spawn, forkserver, got 'bogus'"),
])
def test_out_of_range_value_names_the_key(override, expected):
    with pytest.raises(LmforgeError) as e:
        load_run_config(RECIPE, [f"curate.{override}"])
    assert str(e.value) == f"override: curate.{expected}"


@pytest.mark.parametrize("override", [
    "curate.gopher_repetition.dup_line_frac=null",    # null switches a rule off
    "curate.gopher_quality.max_doc_words=null",
    "curate.fineweb.short_line_thr=1.01",             # >= 1: the rule is off (the recipes' spelling)
    "curate.c4.max_word_length=-1",
    "curate.fineweb.line_punct_thr=1",
    "curate.executor.start_method=spawn",
    "curate.samples_per_filter=0",
])
def test_boundary_and_off_values_load(override):
    load_run_config(RECIPE, [override])


def test_shipped_curate_recipes_load():
    for recipe in ("recipes/demo.yaml", "recipes/curate_toyworld.yaml", "recipes/curate_hf.yaml"):
        load_run_config(recipe, [])
