"""The `curate` section of a recipe: one dataclass per step, defaults for web text.

The defaults are the published ones (Gopher, C4, FineWeb, as datatrove ships them), tuned for
web pages of English prose. Other corpora need other thresholds: recipes/curate_toyworld.yaml
shows a set for the toyworld corpus, whose arithmetic drills and one-line notes would fail
several web rules. docs/curation.md explains every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.data.sources import SourceConfig
from lmforge.errors import FieldError, check_fields, fraction, non_negative, one_of, positive
from lmforge.toyworld.noisy_web import NoisyWebConfig

# multiprocessing's start methods (not get_all_start_methods(): that depends on the platform, and a
# recipe should load the same everywhere)
START_METHODS = ("fork", "spawn", "forkserver")


def _optional(obj, fields, ok, expected: str) -> None:
    """check_fields on the fields that are set: None switches a rule off."""
    check_fields(obj, [f for f in fields if getattr(obj, f) is not None], ok, f"{expected}, or null (off)")


def _optional_fraction(obj, *fields) -> None:
    _optional(obj, fields, lambda v: 0 <= v <= 1, "a number between 0 and 1")


def _optional_non_negative(obj, *fields) -> None:
    _optional(obj, fields, lambda v: v >= 0, "a number >= 0")


def _at_most(obj, low: str, high: str) -> None:
    lo, hi = getattr(obj, low), getattr(obj, high)
    if lo is not None and hi is not None and lo > hi:
        raise FieldError(low, f"expected at most {high} ({hi}), got {lo}")


def _off_or(obj, *fields, least: int = 0) -> None:
    """C4's integer rules, where -1 switches the rule off."""
    check_fields(obj, fields, lambda v: v == -1 or v >= least, f"-1 (off) or an integer >= {least}")


@dataclass
class CleanupConfig:
    """Language-agnostic normalisation; a document left empty is dropped."""

    enabled: bool = True
    unicode_nfc: bool = True          # compose characters (e + combining accent -> é)
    strip_control: bool = True        # drop control and zero-width characters (keeps \n and \t)
    normalize_whitespace: bool = True  # \r\n -> \n, trailing spaces, 3+ newlines -> 2, nbsp -> space
    symbol_lines: bool = True         # remove lines made only of punctuation ("-----", "|||")
    ftfy: bool = False                # fix mojibake with ftfy (pip install ftfy)


@dataclass
class LanguageConfig:
    """fastText language ID (datatrove LanguageFilter). Needs `pip install fasttext-numpy2-wheel
    fasteners` and downloads the lid.176 model on first use, so it is off by default (offline)."""

    enabled: bool = False
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_score: float = 0.65

    def __post_init__(self):
        fraction(self, "min_score")  # a fastText probability
        if not self.languages:  # the filter would keep no document at all
            raise FieldError("languages", "expected at least one language code (e.g. [en])")


@dataclass
class GopherQualityConfig:
    """Rae et al. 2021 (Gopher), table A1; `null` switches a rule off."""

    enabled: bool = True
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1     # '#' and '...' per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8     # words holding a letter (datatrove: max_non_alpha_words_ratio)
    min_stop_words: int | None = 2

    def __post_init__(self):
        _optional_non_negative(self, "min_doc_words", "max_doc_words", "min_avg_word_length",
                               "max_avg_word_length", "min_stop_words")
        # '#' or '...' per word: above 1 is possible ("###"), so only the sign is checked
        _optional_non_negative(self, "max_symbol_word_ratio")
        _optional_fraction(self, "max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio")
        _at_most(self, "min_doc_words", "max_doc_words")
        _at_most(self, "min_avg_word_length", "max_avg_word_length")


@dataclass
class GopherRepetitionConfig:
    enabled: bool = True
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    # [n, max fraction of characters in the most frequent n-gram]
    top_n_grams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
    # [n, max fraction of characters in repeated n-grams]
    dup_n_grams: list[list[float]] = field(default_factory=lambda: [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12],
                                                                    [9, 0.11], [10, 0.10]])

    def __post_init__(self):
        _optional_fraction(self, "dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac")
        for key in ("top_n_grams", "dup_n_grams"):
            for pair in getattr(self, key):
                if len(pair) != 2 or pair[0] < 1 or int(pair[0]) != pair[0] or not 0 <= pair[1] <= 1:
                    raise FieldError(key, f"expected [n, fraction] pairs with an integer n >= 1 and the fraction "
                                          f"between 0 and 1, got {pair}")


@dataclass
class C4Config:
    """Raffel et al. 2020 (C4). Line rules delete lines; document rules drop the page."""

    enabled: bool = True
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True   # delete lines not ending in . ! ? " '
    min_num_sentences: int = 5              # -1: off
    min_words_per_line: int = 3             # -1: off
    max_word_length: int = 1000             # -1: off
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def __post_init__(self):
        _off_or(self, "min_num_sentences", "min_words_per_line")
        _off_or(self, "max_word_length", least=1)  # 0 would delete every line that has a word


@dataclass
class FineWebConfig:
    """Penedo et al. 2024 (FineWeb) custom rules."""

    enabled: bool = True
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def __post_init__(self):
        fraction(self, "line_punct_thr", "char_duplicates_ratio")
        # short_line_thr >= 1 switches the rule off (the recipes write 1.01); new_line_ratio counts newlines
        # per word, which can pass 1: for both only the sign is checked
        non_negative(self, "short_line_thr", "short_line_length", "new_line_ratio")


@dataclass
class ExactDedupConfig:
    enabled: bool = True             # identical text after whitespace/case normalisation: keep one


@dataclass
class MinhashConfig:
    """Near duplicates: MinHash over word shingles, LSH with `bands` x `rows` hashes.

    Two documents with Jaccard similarity s share a band with probability 1 - (1 - s^rows)^bands;
    the 50% point is about (1/bands)^(1/rows): 0.72 for 14 x 8 (FineWeb's setting).
    """

    enabled: bool = True
    shingle_size: int = 5            # words per shingle
    bands: int = 14
    rows: int = 8
    normalize_numbers: bool = True   # every number reads "0" (web text); off for corpora of arithmetic
    seed: int = 1

    def __post_init__(self):
        positive(self, "shingle_size", "bands", "rows")


@dataclass
class PIIConfig:
    """Replace (not drop) emails, phone numbers and IP addresses with fixed placeholders."""

    enabled: bool = True
    emails: bool = True
    phones: bool = True
    ips: bool = True
    only_public_ips: bool = True     # 10.x, 192.168.x, 127.x ... are not personal
    email_replacement: str = "email@example.com"
    phone_replacement: str = "555-0100"
    ip_replacement: str = "192.0.2.1"


@dataclass
class BlocklistConfig:
    """Drop documents containing words from a user list (one word or phrase per line, # comments)."""

    path: str = ""                   # word-list file; empty and no `words`: the step is skipped
    words: list[str] = field(default_factory=list)
    min_hits: int = 1                # drop a document with at least this many matches

    def __post_init__(self):
        positive(self, "min_hits")  # 0 would drop every document


@dataclass
class EvalSetConfig:
    """One evaluation set whose questions must not appear in training text.

    name: gsm8k | svamp | asdiv | multiarith | bbh (read in their released formats, as
    `lmforge eval` reads them) or any other name with `field` (a JSONL/JSON file of records).
    path: a file, or a directory holding the release layout (e.g. ../shared/data); empty: `hf`.
    """

    name: str
    path: str = ""
    hf: str = ""                     # hub id; empty: the data set's usual one (needs the network)
    split: str = ""                  # hub split; empty: the evaluation split lmforge eval uses
    field: str = ""                  # for other sets: the record field holding the question


@dataclass
class DecontamConfig:
    """Drop a document holding >= `min_overlap` of some evaluation item's word n-grams (PaLM's rule:
    8-grams, 70%). Items shorter than `ngram` words are too generic to match and are skipped."""

    enabled: bool = True
    ngram: int = 8
    min_overlap: float = 0.7
    normalize_numbers: bool = False  # true: "12 apples" matches "13 apples" (more recall, less precision)
    sets: list[EvalSetConfig] = field(default_factory=list)
    toyworld: bool = True            # also toyworld's evaluation prompts (when the run has the toyworld stage)
    toyworld_tasks: list[str] = field(default_factory=lambda: ["word_problem", "main_character"])
    toyworld_per_task: int = 200     # items per task and split (train and heldout)

    def __post_init__(self):
        check_fields(self, ["ngram"], lambda v: v >= 2, "an integer >= 2")
        fraction(self, "min_overlap")
        if self.min_overlap == 0:
            raise FieldError("min_overlap", "must be > 0 (0 would drop every document)")
        non_negative(self, "toyworld_per_task")


@dataclass
class ExecutorConfig:
    """datatrove LocalPipelineExecutor: `tasks` shards of the input, `workers` processes at a time."""

    tasks: int = 2
    workers: int = 2
    start_method: str = "forkserver"  # multiprocessing start method when workers > 1

    def __post_init__(self):
        positive(self, "tasks", "workers")
        one_of(self, "start_method", START_METHODS)


@dataclass
class CurateConfig:
    # Input. Empty: data.sources, else the toyworld corpus (the `toyworld` stage's output).
    sources: list[SourceConfig] = field(default_factory=list)
    noisy_web: NoisyWebConfig = field(default_factory=NoisyWebConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    minhash: MinhashConfig = field(default_factory=MinhashConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    samples_per_filter: int = 20     # removed documents kept per step in removed_samples/
    keep_work: bool = False          # keep intermediate shards and signatures (work/); logs are always kept

    def __post_init__(self):
        non_negative(self, "samples_per_filter")
