"""Owned handles: released exactly once (close(), a with block, or garbage collection)."""
from __future__ import annotations

import threading
from typing import Any, Callable, ClassVar, Optional

from .errors import InvalidHandle, KvpagesError, check, defer_destroy


class Handle:
    """Base of the handle classes (Cache, Metadata, Pool)."""
    _destroy: ClassVar[Optional[Callable[[Any], int]]] = None
    _ptr: Optional[int] = None
    #: The object that owns a borrowed handle (a CacheGroup's shard), kept alive by this
    #: reference; close() of a borrowed handle only detaches this object, never destroys it.
    _owner: Any = None

    def __init__(self, ptr: int):
        self._ptr = ptr
        self._lock = threading.Lock()

    @property
    def ptr(self) -> int:
        """The C handle (raises InvalidHandle once closed)."""
        if self._ptr is None:
            raise InvalidHandle(2, "%s is closed" % type(self).__name__, type(self).__name__)
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        """Releases the handle (a borrowed one: detaches it); later calls are no-ops."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None and self._owner is None:
            check(type(self)._destroy(ptr), type(self).__name__ + ".close")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception is already propagating: do not replace it
            self.close()
        except (BufferError, KvpagesError):
            pass  # still in use (e.g. by the traceback's frames): released by garbage collection

    def __del__(self) -> None:
        # Garbage: nothing refers to this object any more (no pin, export or shard of it is
        # alive). The destroy is queued, not called: see errors.defer_destroy.
        try:
            ptr = self.__dict__.get("_ptr")
            if ptr is not None and self._owner is None:
                self._ptr = None
                defer_destroy(type(self)._destroy, ptr)
        except Exception:  # never raise from a finalizer
            pass
