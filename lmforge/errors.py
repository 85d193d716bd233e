"""User-facing errors.

Anything the user can fix (a bad config key, a malformed data line, a missing file)
raises `LmforgeError` with a one-line message that names the file, line or field and
what was expected. The CLI prints it as `error: <message>` and exits with code 2;
everything else is a bug and keeps its traceback.
"""


class LmforgeError(Exception):
    """An error caused by user input; the message is one line and self-explanatory."""

    exit_code = 2
