"""User-facing errors.

Anything the user can fix (a bad config key, a malformed data line, a missing file)
raises `LmforgeError` with a one-line message that names the file, line or field and
what was expected. The CLI prints it as `error: <message>` and exits with code 2;
everything else is a bug and keeps its traceback.
"""


import math


class LmforgeError(Exception):
    """An error caused by user input; the message is one line and self-explanatory."""

    exit_code = 2


class FieldError(LmforgeError):
    """A config field with a bad value, raised by a config dataclass's `__post_init__`.

    `field` is relative to the dataclass ("steps"); `lmforge.config.build` names it with the path
    of the section it was built for ("sft.train.steps"), so the same TrainConfig check reads right
    in every stage. Built directly in code, the message starts with the bare field name.
    """

    def __init__(self, field: str, what: str):
        self.field, self.what = field, what
        super().__init__(f"{field}: {what}")


def check_fields(obj, fields, ok, expected: str) -> None:
    """Raise FieldError for the first of `fields` of `obj` whose value fails `ok(value)`.

    >>> from types import SimpleNamespace
    >>> try:
    ...     check_fields(SimpleNamespace(steps=0), ["steps"], lambda v: v >= 1, "a positive integer")
    ... except FieldError as e:
    ...     print(e)
    steps: expected a positive integer, got 0
    """
    for name in fields:
        value = getattr(obj, name)
        if not ok(value):
            raise FieldError(name, f"expected {expected}, got {value!r}")


def positive(obj, *fields) -> None:
    """Every field >= 1 (integers: counts, sizes, intervals)."""
    check_fields(obj, fields, lambda v: v >= 1, "a positive integer")


def non_negative(obj, *fields) -> None:
    check_fields(obj, fields, lambda v: 0 <= v < math.inf, "a number >= 0")


def above_zero(obj, *fields, why: str = "") -> None:
    """Every field a finite number > 0 (temperatures, timeouts)."""
    check_fields(obj, fields, lambda v: 0 < v < math.inf, f"a number > 0{f' ({why})' if why else ''}")


def fraction(obj, *fields, closed_top: bool = True) -> None:
    """Every field in [0, 1] (or [0, 1) with closed_top=False)."""
    if closed_top:
        check_fields(obj, fields, lambda v: 0 <= v <= 1, "a number between 0 and 1")
    else:
        check_fields(obj, fields, lambda v: 0 <= v < 1, "a number >= 0 and < 1")


def one_of(obj, field: str, options) -> None:
    check_fields(obj, [field], lambda v: v in options, f"one of {', '.join(map(str, options))}")


# what the commands that sample (chat, eval) accept for their shared flags: (check, what is expected)
TEMPERATURE = (lambda v: 0 <= v < math.inf, "a number >= 0 (0: greedy)")  # NaN fails too
MAX_NEW_TOKENS = (lambda v: v >= 1, "a positive integer")


def check_flags(*checks) -> None:
    """Command-line flags, each (flag, value, ok, expected): the first bad one is a one-line error.

    >>> try:
    ...     check_flags(("--top-k", 3, lambda v: v >= 0, "an integer >= 0"), ("--temperature", -1.0, *TEMPERATURE))
    ... except LmforgeError as e:
    ...     print(e)
    --temperature: expected a number >= 0 (0: greedy), got -1.0
    """
    for flag, value, ok, expected in checks:
        if not ok(value):
            raise LmforgeError(f"{flag}: expected {expected}, got {value}")
