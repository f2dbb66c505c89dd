"""The project's own error types, in one module every reader can import.

Both are ``ValueError`` subclasses whose message names the file, column or key and what was
expected; the stage scripts report them as one line (``stages/_common.py``).
"""


class ParamsError(ValueError):
    """A params.yaml problem; the message names the file, the key and what was expected."""


class SurveyError(ValueError):
    """Bad or missing survey input; the message names the file and what was expected."""
