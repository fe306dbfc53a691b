"""Exceptions: one class per ``kvp_status`` code, each a :class:`KvpagesError` and also the
built-in exception a Python caller would catch for that kind of failure (``ValueError`` for bad
arguments, ``MemoryError`` for exhausted memory, ``OSError`` for file and stream failures, ...).
"""
from __future__ import annotations

import ctypes
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple, Type

from ._ffi import lib


class KvpagesError(Exception):
    """A kvpages call failed.

    ``status`` is the ``kvp_status`` code (also ``code``), ``name`` its C name
    ("KVP_ERR_INVALID_ARGUMENT"), ``message`` the library's detail for the failing call and
    ``function`` the C function (or binding method) that failed."""
    status: int
    name: str
    message: str
    function: Optional[str]

    def __init__(self, status: int, message: str = "", function: Optional[str] = None):
        self.status = status
        self.name = lib.kvp_status_name(status).decode()
        self.message = message
        self.function = function
        text = "%s: %s" % (self.name, message) if message else self.name
        Exception.__init__(self, text)

    @property
    def code(self) -> int:
        """The status code (same as ``status``)."""
        return self.status

    def __str__(self) -> str:
        return self.args[0] if self.args else self.name


#: Former name of :class:`KvpagesError` (kvpages 1.0 and 1.1 bindings).
KvpError = KvpagesError


class InvalidArgument(KvpagesError, ValueError):
    """KVP_ERR_INVALID_ARGUMENT: a value is out of range or inconsistent."""


class InvalidHandle(KvpagesError, ValueError):
    """KVP_ERR_INVALID_HANDLE: the object is closed (or not a live kvpages handle)."""


class NotFound(KvpagesError, LookupError):
    """KVP_ERR_NOT_FOUND: an unknown name (dtype, layout) or a stale sequence id."""


class VersionMismatch(KvpagesError, RuntimeError):
    """KVP_ERR_VERSION_MISMATCH: the loaded library is older than these bindings, or of another major."""


class Unsupported(KvpagesError, NotImplementedError):
    """KVP_ERR_UNSUPPORTED: valid, but not supported by this build, device or dtype."""


class BufferTooSmall(KvpagesError, ValueError):
    """KVP_ERR_BUFFER_TOO_SMALL: a caller buffer is too small."""


class OutOfMemory(KvpagesError, MemoryError):
    """KVP_ERR_OUT_OF_MEMORY: host memory is exhausted (nothing changed)."""


class OutOfPages(KvpagesError, RuntimeError):
    """KVP_ERR_OUT_OF_PAGES: the page pool has too few free pages."""


class KvpagesIOError(KvpagesError, OSError):
    """KVP_ERR_IO: a file or stream operation failed."""

    def __init__(self, status: int, message: str = "", function: Optional[str] = None):
        KvpagesError.__init__(self, status, message, function)

    def __str__(self) -> str:
        return KvpagesError.__str__(self)


class DeviceError(KvpagesError, RuntimeError):
    """KVP_ERR_DEVICE: a CUDA call failed."""


class DeviceLost(DeviceError):
    """KVP_ERR_DEVICE_LOST: the cache has a pending asynchronous error (Cache.async_error())."""


class NoDevice(DeviceError):
    """KVP_ERR_NO_DEVICE: no such device, or no CUDA backend in this build."""


class DeviceOutOfMemory(DeviceError, MemoryError):
    """KVP_ERR_DEVICE_OUT_OF_MEMORY: device memory is exhausted."""


class FormatError(KvpagesError, ValueError):
    """A serialized blob is not valid (the ``KVP_ERR_FORMAT_*`` codes, each a subclass)."""


class FormatMagic(FormatError):
    """KVP_ERR_FORMAT_MAGIC: the data is not a kvpages blob."""


class FormatVersion(FormatError):
    """KVP_ERR_FORMAT_VERSION: a format major version or required flag this library cannot read."""


class FormatTruncated(FormatError):
    """KVP_ERR_FORMAT_TRUNCATED: the blob ends before its declared size."""


class FormatChecksum(FormatError):
    """KVP_ERR_FORMAT_CHECKSUM: a checksum does not match."""


class FormatCorrupt(FormatError):
    """KVP_ERR_FORMAT_CORRUPT: the blob is structurally invalid."""


class FormatMismatch(FormatError):
    """KVP_ERR_FORMAT_MISMATCH: the blob does not fit the target cache."""


class InternalError(KvpagesError, RuntimeError):
    """KVP_ERR_INTERNAL: an internal invariant failed; please report it."""


ERRORS: Dict[int, Type[KvpagesError]] = {
    1: InvalidArgument, 2: InvalidHandle, 3: NotFound, 4: VersionMismatch, 5: Unsupported, 6: BufferTooSmall,
    64: OutOfMemory, 65: OutOfPages, 66: KvpagesIOError, 128: DeviceError, 129: DeviceLost, 130: NoDevice,
    131: DeviceOutOfMemory, 192: FormatMagic, 193: FormatVersion, 194: FormatTruncated, 195: FormatChecksum,
    196: FormatCorrupt, 197: FormatMismatch, 255: InternalError,
}


def error_for(status: int, message: str = "", function: Optional[str] = None) -> KvpagesError:
    """The exception for a status code (a plain KvpagesError for codes this binding does not know)."""
    return ERRORS.get(status, KvpagesError)(status, message, function)


def last_error_message() -> str:
    """This thread's message of the last failed kvpages call (kvp_last_error_copy)."""
    n = lib.kvp_last_error_copy(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.kvp_last_error_copy(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


#: Destroys queued by finalizers (Handle.__del__), run by the next check(). A finalizer runs
#: whenever the garbage collector does, also between a failed call and check() reading its
#: message; a destroy called there would clear that message (every kvpages call that succeeds
#: empties this thread's message), so finalizers only queue theirs.
_deferred: Deque[Tuple[Callable[[Any], int], int]] = deque()


def defer_destroy(destroy: Callable[[Any], int], ptr: int) -> None:
    """Queues destroy(ptr) for the next check() (safe to call from a finalizer)."""
    _deferred.append((destroy, ptr))


def run_deferred() -> None:
    """Runs the queued destroys (their statuses have no one to go to and are dropped)."""
    while _deferred:
        try:
            destroy, ptr = _deferred.popleft()
        except IndexError:  # another thread took the last one
            return
        destroy(ptr)


def check(status: int, function: Optional[str] = None) -> None:
    """Raises the exception of a non-OK status with this thread's message (ctypes calls run on the
    calling OS thread, so the message read right away is the failing call's; finalizers never
    call kvpages, see defer_destroy), after running the destroys finalizers queued."""
    if status != 0:
        error = error_for(status, last_error_message(), function)
        run_deferred()
        raise error
    if _deferred:
        run_deferred()


def invalid(message: str, function: Optional[str] = None) -> InvalidArgument:
    """An InvalidArgument raised by the binding itself (before any C call)."""
    return InvalidArgument(1, message, function)
