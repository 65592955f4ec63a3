"""The one exception type users see: a message that names the thing and says how to fix it.

The CLI prints these without a traceback; everything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user: a path, a column, a flag, a checkpoint or a cache that cannot be used."""
