"""Errors reported as one line, not a traceback: input a user can fix, and a publication that failed."""


class InputError(ValueError):
    """Input that retrying cannot fix: a missing file or column, unknown labels, undecodable text."""


class PublishError(RuntimeError):
    """Publication failed; the message says what failed and whether the repository was left unchanged."""
