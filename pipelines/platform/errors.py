"""The errors a user can cause, as opposed to bugs.

Every command ends an error of these kinds in one sentence that names the problem and the fix; anything else is a
bug and shows its traceback. `InvalidInput` is also a ValueError, so library code that validates arguments can
raise it where a ValueError is expected.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message is one sentence that says what and how."""


class InvalidInput(UserError, ValueError):
    """An option, a setting or a request that cannot be used as given."""


class ServiceUnavailable(UserError):
    """A service the command needs is not reachable; the message says which and how to start it."""


class PortInUse(UserError):
    """A port a process should listen on is taken."""


class DependencyUnavailable(ServiceUnavailable):
    """A store or service on the processing path failed (online store, state store, broker); the caller retries."""


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for a log line or a degraded answer's reason."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
