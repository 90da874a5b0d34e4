"""Errors a user can fix: bad data, bad paths, bad config. They are reported as one line, not a traceback."""


class InputError(ValueError):
    """Input that retrying cannot fix: a missing file or column, unknown labels, undecodable text."""
