"""Errors silo reports, each carrying the gRPC status code it maps to.

Raise the subclass that names the failure kind; the service layer turns ``code`` and the message
into the RPC status without further translation.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes (same numbers as the gRPC specification)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class SiloError(Exception):
    """Base of every error silo reports to a caller.

    ``metadata`` carries extra key/value pairs sent as trailing metadata (e.g. the address of the
    node that owns a shard).
    """

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(SiloError):
    code = Code.INVALID_ARGUMENT


class NotFound(SiloError):
    code = Code.NOT_FOUND


class AlreadyExists(SiloError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(SiloError):
    code = Code.FAILED_PRECONDITION


class Aborted(SiloError):
    code = Code.ABORTED


class ResourceExhausted(SiloError):
    code = Code.RESOURCE_EXHAUSTED


class Unavailable(SiloError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(SiloError):
    code = Code.DEADLINE_EXCEEDED


class Unauthenticated(SiloError):
    code = Code.UNAUTHENTICATED


class Internal(SiloError):
    code = Code.INTERNAL


_BY_CODE: dict[Code, type[SiloError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        Internal,
    )
}


def error_for_code(code: int, message: str, metadata: dict[str, str] | None = None) -> SiloError:
    """The :class:`SiloError` subclass for a status code received over the wire."""
    try:
        c = Code(code)
    except ValueError:
        c = Code.UNKNOWN
    cls = _BY_CODE.get(c)
    if cls is None:
        err = SiloError(message, metadata=metadata)
        err.code = c
        return err
    return cls(message, metadata=metadata)


QUOTE_MAX_CHARS = 80
"""How many characters of a caller's value an error message quotes by default."""


def quote(value: object, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """``repr(value)`` cut to at most about ``max_chars`` characters, for error messages.

    Every message that quotes caller input goes through here, so an oversized id cannot make an
    error message (carried in an HTTP/2 header) oversized too. A cut value ends with ``...`` and
    the length of the original, e.g. ``'xxxxxxxx'... (65536 chars)``. Only the first
    ``max_chars`` characters of a string are looked at, whatever its size.
    """
    if isinstance(value, str | bytes | bytearray) and len(value) > max_chars:
        unit = "chars" if isinstance(value, str) else "bytes"
        return f"{value[:max_chars]!r}... ({len(value)} {unit})"
    text = repr(value)
    if len(text) > max_chars:
        return f"{text[:max_chars]}..."
    return text
