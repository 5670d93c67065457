"""The one exception type a user sees as a single line instead of a traceback."""


class SoftpromptError(Exception):
    """Bad input or state the user can fix: the message names the file, row or field."""
