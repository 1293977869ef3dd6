"""The exceptions mxsync raises.

::

    MxsyncError
    ├── ConfigError            a bad argument or setting, raised before any I/O
    ├── LoginError             the homeserver refused the credentials
    ├── MatrixError            the homeserver answered with a Matrix error (errcode)
    │   ├── ForbiddenError         M_FORBIDDEN (missing power level, not joined, ...)
    │   └── RateLimitedError       M_LIMIT_EXCEEDED, with retry_after_ms
    ├── HomeserverUnavailable  network error, 5xx or garbage after bounded retries
    ├── TransientError         one request failed in a way worth retrying (network, 5xx,
    │                          garbage); the engine's loops retry it, callers see
    │                          HomeserverUnavailable once bounded retries are spent
    ├── ProtocolError          a malformed mxsync event (skipped by readers, never raised
    │                          out of a sync loop)
    ├── BufferFull             a publisher's buffer is full under the "block" policy
    ├── CommandError           a command to a device did not succeed (``command_id`` says which)
    │   ├── CommandFailed          the device ran it and answered with an error
    │   ├── CommandExpired         the device did not run it: it arrived after its expiry
    │   │                          (or the run was interrupted by a crash)
    │   └── CommandTimeout         no answer within the caller's timeout (it may still run
    │                              before its expiry; ask again with the same id)
    ├── DevServerError         the embedded Synapse could not be started or stopped answering
    │   └── StateDirLocked         another DevServer is using that state directory
    ├── DemoError              ``mxsync demo`` could not start (an example failed; its log
    │                          says why)
    └── NodeUnavailable        Node.js/npm, or a pinned npm package set, is missing and
                               could not be installed (JS interop tests, peers bench)

No message ever contains an access token or a password.
"""

from __future__ import annotations

__all__ = [
    "MxsyncError",
    "ConfigError",
    "LoginError",
    "MatrixError",
    "ForbiddenError",
    "RateLimitedError",
    "HomeserverUnavailable",
    "ProtocolError",
    "TransientError",
    "BufferFull",
    "CommandError",
    "CommandFailed",
    "CommandExpired",
    "CommandTimeout",
    "DevServerError",
    "StateDirLocked",
    "DemoError",
    "NodeUnavailable",
]


class MxsyncError(Exception):
    """Base class of every exception mxsync raises on purpose."""


class ConfigError(MxsyncError, ValueError):
    """A bad argument or setting; nothing was sent."""


class LoginError(MxsyncError):
    """The homeserver refused to log the user in."""

    def __init__(self, homeserver: str, user_id: str, reason: str) -> None:
        self.homeserver = homeserver
        self.user_id = user_id
        self.reason = reason
        super().__init__(f"login of {user_id} on {homeserver} failed: {reason}")


class MatrixError(MxsyncError):
    """The homeserver answered a request with an error."""

    def __init__(
        self,
        status: int,
        errcode: str,
        error: str,
        *,
        method: str = "",
        path: str = "",
        retry_after_ms: int | None = None,
    ) -> None:
        self.status = status
        self.errcode = errcode
        self.error = error
        self.method = method
        self.path = path
        self.retry_after_ms = retry_after_ms
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status} {errcode}: {error}{where}")


class ForbiddenError(MatrixError):
    """M_FORBIDDEN: for example the sender lacks the power level for an event type."""


class RateLimitedError(MatrixError):
    """M_LIMIT_EXCEEDED; ``retry_after_ms`` says when to try again."""


class HomeserverUnavailable(MxsyncError):
    """The homeserver could not be reached or answered garbage, after bounded retries."""

    def __init__(self, homeserver: str, reason: str) -> None:
        self.homeserver = homeserver
        self.reason = reason
        super().__init__(f"homeserver {homeserver} unavailable: {reason}")


class ProtocolError(MxsyncError, ValueError):
    """A malformed mxsync event or payload."""


class TransientError(MxsyncError):
    """A failure worth retrying: network error, timeout, 5xx, unparsable answer."""


class BufferFull(MxsyncError):
    """The publisher's buffer holds ``max_buffered`` readings (policy "block").

    Nothing was buffered. ``await publisher.publish_wait(...)`` waits for room.
    """


class CommandError(MxsyncError):
    """A command to a device did not succeed."""

    def __init__(self, command_id: str, device: str, message: str) -> None:
        self.command_id = command_id
        self.device = device
        super().__init__(f"command {command_id} to {device}: {message}")


class CommandFailed(CommandError):
    """The device ran the command and answered with an error (``error``: its text)."""

    def __init__(self, command_id: str, device: str, error: str) -> None:
        self.error = error
        super().__init__(command_id, device, f"failed: {error}")


class CommandExpired(CommandError):
    """The device did not run the command: it came after its expiry, or the
    device crashed while running it (``status``: "expired" or "interrupted")."""

    def __init__(self, command_id: str, device: str, status: str) -> None:
        self.status = status
        super().__init__(command_id, device, f"not run ({status})")


class CommandTimeout(CommandError, TimeoutError):
    """No answer within the timeout. The device may still run the command before
    it expires; asking again with the same ``command_id`` never runs it twice."""


class DevServerError(MxsyncError):
    """The embedded Synapse could not be started, or stopped answering."""


class StateDirLocked(DevServerError):
    """Another DevServer (or its Synapse) is using this state directory."""


class DemoError(MxsyncError):
    """The demo could not start (an example failed; its log says why)."""


class NodeUnavailable(MxsyncError):
    """Node.js or npm is missing, or a pinned npm package set could not be installed."""
