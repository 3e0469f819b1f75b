"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: a wrong option, a malformed file, an unknown name."""


class NoFormatError(UserError):
    """An RL run stopped because no sample ever wrote the template (every reward 0: nothing to learn)."""
