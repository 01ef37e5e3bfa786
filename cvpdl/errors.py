"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits non-zero."""


class UserInputError(ValueError):
    """Bad input (missing file, malformed annotation, unknown name); the message says what and where."""
