"""Errors that the command line reports as one clear line, without a traceback."""


class InputError(Exception):
    """Bad user input: a file, row or column at fault.

    The message must be one line that names the file and, where it applies, the row (1-based, as a
    text editor counts data rows of the star loop) or the column at fault.
    """
