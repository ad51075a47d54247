"""Errors that the command line reports as one clear line, without a traceback."""


class MethodError(Exception):
    """An error the command line reports as one line (exit status 2 for input, 3 for training)."""


class InputError(MethodError):
    """Bad user input: a file, row or column at fault.

    The message must be one line that names the file and, where it applies, the row (1-based, as a
    text editor counts data rows of the star loop) or the column at fault.
    """


class TrainingError(MethodError):
    """Training cannot go on (for instance the loss is no longer finite); the message says where it stopped."""
