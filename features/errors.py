"""The one exception type for problems a user can cause and fix."""


class InputError(ValueError):
    """Bad input data or settings: the message says what, where and what to do.

    Stage entry points print it as one line (no traceback); any other exception is a bug and keeps its
    traceback.
    """
