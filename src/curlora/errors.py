"""One exception type for every mistake a user can fix; its message names the problem and the fix."""


class CurloraError(ValueError):
    """A bad input or environment problem that the user can fix. The CLI shows the message without a traceback."""
