"""What went wrong, as a type: the user's fault (:class:`UserError`) or a bug (anything else).

Only a :class:`UserError` is shown as one line with exit code 2 on the command line and as a
4xx answer from the service (its ``http_status``); any other exception is a defect in
embedstore: exit code 1 or HTTP 500, one line for the user and the traceback in the log.
Each subclass says what kind of mistake it is, and every library error type derives from one
of them (``StoreError`` and ``HeadsError`` from :class:`BadInput`, a missing run from
:class:`NotFound` ...). All derive from ``ValueError``, so callers that caught ``ValueError``
before still do, and scikit-learn's parameter checks still see one.

>>> try:
...     embedstore.connect("no-such-store")
... except embedstore.UserError as e:
...     print(e.http_status, e)
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad use of embedstore: ``str(e)`` names the input at fault and what to do about it."""

    http_status = 422
    error = "bad input"


class BadInput(UserError):
    """An option, argument, file or request body that cannot be used as given."""


class NotFound(UserError):
    """A store, run, image, file or id that does not exist."""

    http_status = 404
    error = "not found"


class Conflict(UserError):
    """The request clashes with what exists or runs now (a run name taken, a store locked)."""

    http_status = 409
    error = "conflict"


__all__ = ["BadInput", "Conflict", "NotFound", "UserError"]
