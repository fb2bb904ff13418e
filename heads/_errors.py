"""The one exception type for bad input to heads (a clear message that says what to do)."""

from embedstore.errors import BadInput


class HeadsError(BadInput):
    """Bad input for a head, a run or an ensemble; ``str(e)`` says what to do."""
