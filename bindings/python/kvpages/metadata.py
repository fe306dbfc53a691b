"""Runtime metadata of one step (``kvp_metadata``): built from scheduled requests by
:meth:`Metadata.build`, which reorders them decode-first and remembers the order, so
:meth:`Metadata.pack` (and :meth:`Cache.concatenate_requests`) put every request's keys and
values in the rows the library reads them from; or wrapped from caller arrays, created empty, or
read from JSON."""
from __future__ import annotations

import collections
import ctypes
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._ffi import (METADATA_FLAG_IMMUTABLE, _P, _i32, _i64, _vp, kvp_batch_options, kvp_batch_request, kvp_metadata_desc,
                   lib)
from ._handle import Handle
from .config import Config
from .errors import check, invalid
from .types import Device, DeviceLike, Layout, MetadataField, parse_device

BATCH_FLAG_SEED_DISTRIBUTION, BATCH_FLAG_TIGHT_SLICES, BATCH_FLAG_KEEP_ORDER, BATCH_FLAG_REQUEST_ORDER = 1, 2, 4, 8

#: A request of :meth:`Metadata.build` (it also accepts plain ``(computed, scheduled, pages)`` tuples).
BatchRequest = collections.namedtuple("BatchRequest", "num_computed num_scheduled page_ids")

_ARRAYS = ["pages_tables", "context_lens", "query_start_loc", "num_seqs", "slot_mapping", "num_kv_update_slices",
           "request_distribution", "position_ids", "token_starts"]
_LENGTHS = {"pages_tables": "num_reqs", "context_lens": "context_lens_len", "query_start_loc": "query_start_loc_len",
            "num_seqs": "num_seqs_len", "slot_mapping": "num_slices",
            "num_kv_update_slices": "num_kv_update_slices_len",
            "request_distribution": "request_distribution_len", "position_ids": "position_ids_len",
            "token_starts": "token_starts_len"}


class Metadata(Handle):
    """A ``kvp_metadata`` handle. ``order`` (for built metadata) lists, row by row, the index of
    the request in that row; ``num_scheduled[i]`` is request i's new token count."""
    _destroy = lib.kvp_metadata_destroy
    order: List[int]
    num_scheduled: List[int]

    def __init__(self, ptr: int, order: Optional[List[int]] = None, num_scheduled: Optional[List[int]] = None,
                 keep: Any = None):
        super().__init__(ptr)
        self.order = order if order is not None else []
        self.num_scheduled = num_scheduled if num_scheduled is not None else []
        self._keep = keep  # caller arrays a borrowed handle points at
        self.request_order = False  # built with KVP_BATCH_FLAG_REQUEST_ORDER: pack() keeps request order

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def build(cls, config: Config, requests: Sequence[Any], *, max_num_reqs: int = 0, max_num_tokens: int = 0,
              seed_distribution: bool = False, tight_slices: bool = False,
              keep_order: bool = False, request_order: bool = False) -> Tuple["Metadata", List[int]]:
        """kvp_metadata_build for ``requests`` = [(num_computed, num_scheduled, [page ids]), ...]
        (or :class:`BatchRequest`).

        Returns ``(metadata, order)``: ``order[row]`` is the request in that row (decodes first
        unless ``keep_order``). Pack keys and values with ``metadata.pack(per_request)`` or write
        them with :meth:`Cache.concatenate_requests`, which use that order for you. With
        ``request_order`` (KVP_BATCH_FLAG_REQUEST_ORDER) the tensors stay in request order instead:
        the metadata records where each row's tokens are, and ``pack`` stacks in request order.
        Options as in
        ``kvp_batch_options``: page-table rows, token bucket, and the ``KVP_BATCH_FLAG_*``
        flags."""
        n = len(requests)
        reqs = (kvp_batch_request * max(n, 1))()
        keep, scheduled = [], []
        for i, (computed, count, pages) in enumerate(requests):
            arr = (_i32 * max(len(pages), 1))(*pages)
            keep.append(arr)
            scheduled.append(int(count))
            reqs[i] = kvp_batch_request(computed, count, ctypes.cast(arr, _P(_i32)), len(pages))
        opts = kvp_batch_options()
        check(lib.kvp_batch_options_init(ctypes.byref(opts), ctypes.sizeof(opts)), "kvp_batch_options_init")
        opts.max_num_reqs, opts.max_num_tokens = max_num_reqs, max_num_tokens
        opts.flags = ((BATCH_FLAG_SEED_DISTRIBUTION if seed_distribution else 0)
                      | (BATCH_FLAG_TIGHT_SLICES if tight_slices else 0) | (BATCH_FLAG_KEEP_ORDER if keep_order else 0)
                      | (BATCH_FLAG_REQUEST_ORDER if request_order else 0))
        order = (_i32 * max(n, 1))()
        out = _vp()
        check(lib.kvp_metadata_build(ctypes.byref(config._raw), reqs, n, ctypes.byref(opts), order,
                                     ctypes.byref(out)), "kvp_metadata_build")
        rows = [order[i] for i in range(n) if order[i] >= 0]
        md = cls(out.value, rows, scheduled)
        md.request_order = request_order
        return md, rows

    @classmethod
    def empty(cls, layout: Any = Layout.V3, num_tokens: int = 0, max_num_reqs: int = 0, max_pages: int = 0,
              page_size: int = 0) -> "Metadata":
        """kvp_metadata_create_empty: owning metadata of an empty batch (writes nothing)."""
        out = _vp()
        check(lib.kvp_metadata_create_empty(Layout.parse(layout).value, num_tokens, max_num_reqs, max_pages,
                                            page_size, ctypes.byref(out)), "kvp_metadata_create_empty")
        return cls(out.value)

    @classmethod
    def from_arrays(cls, layout: Any = Layout.V3, *, page_size: int = 0, num_slices_per_kv_cache_update_page: int = 0,
                    device: DeviceLike = None, immutable: bool = False, **arrays: Any) -> "Metadata":
        """kvp_metadata_create: wraps int32 arrays without copying (``pages_tables`` 2-D, the
        others 1-D; ``slot_mapping`` [3, N]); the handle keeps them alive. Host arrays are numpy
        arrays; device arrays (``device="cuda:N"``) are DLPack producers or raw addresses with
        lengths ``(address, shape)``. ``immutable=True`` (KVP_METADATA_FLAG_IMMUTABLE, kvpages
        1.3) promises the arrays do not change while the handle lives: the library then validates
        them once per cache instead of once per call (layer)."""
        unknown = set(arrays) - set(_ARRAYS)
        if unknown:
            raise invalid("unknown metadata arrays: %s (known: %s)" % (sorted(unknown), ", ".join(_ARRAYS)),
                          "Metadata.from_arrays")
        dev, ordinal = parse_device(device)
        d = kvp_metadata_desc()
        check(lib.kvp_metadata_desc_init(ctypes.byref(d), ctypes.sizeof(d)), "kvp_metadata_desc_init")
        d.version, d.device_type, d.device_id = Layout.parse(layout).value or Layout.V3, dev.value, ordinal
        d.page_size, d.num_slices_per_kv_cache_update_page = page_size, num_slices_per_kv_cache_update_page
        d.flags = METADATA_FLAG_IMMUTABLE if immutable else 0
        keep = {}
        for name, value in arrays.items():
            address, shape, keep[name] = _int32_array(name, value, dev)
            setattr(d, name, ctypes.cast(address, _P(_i32)))
            _set_lengths(d, name, shape)
        out = _vp()
        check(lib.kvp_metadata_create(ctypes.byref(d), ctypes.byref(out)), "kvp_metadata_create")
        return cls(out.value, keep=keep)

    @classmethod
    def from_json(cls, text: str) -> "Metadata":
        """kvp_metadata_from_json: owning host metadata from :meth:`to_json` text."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        out = _vp()
        check(lib.kvp_metadata_from_json(data, len(data), ctypes.byref(out)), "kvp_metadata_from_json")
        return cls(out.value)

    # -- reading --------------------------------------------------------------------------------

    def to_json(self) -> str:
        """kvp_metadata_to_json: the arrays as JSON integer lists (host metadata only)."""
        need = ctypes.c_size_t()
        lib.kvp_metadata_to_json(self.ptr, None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value)
        check(lib.kvp_metadata_to_json(self.ptr, buf, len(buf), ctypes.byref(need)), "kvp_metadata_to_json")
        return buf.value.decode()

    def array(self, field: Any) -> np.ndarray:
        """kvp_metadata_get_array: a copy of one host array (``MetadataField`` or its name);
        ``pages_tables`` comes back as [rows, pages], ``slot_mapping`` as [3, N]."""
        f = MetadataField[field.upper()] if isinstance(field, str) else MetadataField(field)
        ptr, n = _P(_i32)(), _i64()
        check(lib.kvp_metadata_get_array(self.ptr, f.value, ctypes.byref(ptr), ctypes.byref(n)),
              "kvp_metadata_get_array")
        desc = self.desc()
        if desc["device_type"] != Device.CPU:
            raise invalid("metadata arrays live on %s; array() reads host metadata" % desc["device_type"],
                          "Metadata.array")
        flat = np.ctypeslib.as_array(ptr, (n.value,)).copy() if n.value else np.zeros(0, dtype=np.int32)
        if f == MetadataField.PAGES_TABLES and desc["num_reqs"]:
            return flat.reshape(desc["num_reqs"], -1)
        if f == MetadataField.SLOT_MAPPING:
            return flat.reshape(3, -1)
        return flat

    def desc(self) -> Dict[str, Any]:
        """kvp_metadata_get_desc: version, device, page size and the array lengths."""
        d = kvp_metadata_desc()
        d.struct_size = ctypes.sizeof(d)
        check(lib.kvp_metadata_get_desc(self.ptr, ctypes.byref(d)), "kvp_metadata_get_desc")
        out = {f: getattr(d, f) for f, _ in d._fields_ if f not in _ARRAYS and not f.startswith("_")
               and f not in ("struct_size", "abi_version")}
        out["version"], out["device_type"] = Layout(d.version), Device(d.device_type)
        return out

    # -- packing in row order -------------------------------------------------------------------

    def pack(self, per_request: Sequence[Any]) -> np.ndarray:
        """Stacks per-request arrays (indexed like the ``requests`` given to :meth:`build`, each
        [num_scheduled, H, D]; inactive requests may be None) in this metadata's row order (in
        request order when built with ``request_order``): the [T, H, D] tensor kvp_concatenate
        reads."""
        if not self.num_scheduled:
            raise invalid("pack() needs metadata from Metadata.build (it knows the row order)", "Metadata.pack")
        if len(per_request) != len(self.num_scheduled):
            raise invalid("pack: %d arrays for %d requests" % (len(per_request), len(self.num_scheduled)),
                          "Metadata.pack")
        rows = []
        for i in (sorted(self.order) if self.request_order else self.order):
            a = np.asarray(per_request[i])
            if a.ndim < 1 or a.shape[0] != self.num_scheduled[i]:
                raise invalid("pack: request %d schedules %d tokens but its array has shape %s"
                              % (i, self.num_scheduled[i], a.shape), "Metadata.pack")
            rows.append(a)
        return np.concatenate(rows, axis=0)

    def __repr__(self) -> str:
        return "Metadata(order=%r)" % (self.order,) if not self.closed else "Metadata(closed)"


def _int32_array(name: str, value: Any, device: Device) -> Tuple[int, Tuple[int, ...], Any]:
    """(address, shape, what keeps the memory alive) of one metadata array."""
    if device == Device.CPU:
        a = np.ascontiguousarray(value, dtype=np.int32)
        return a.ctypes.data, a.shape, a
    if isinstance(value, tuple) and len(value) == 2:  # (device address, shape)
        return int(value[0]), tuple(value[1]), None
    from .dlpack import tensor_from_dlpack
    t, keep = tensor_from_dlpack(value, None, int_ok=True)
    return t.data, tuple(t.shape[: t.ndim]), (value, keep)


def _set_lengths(d: kvp_metadata_desc, name: str, shape: Tuple[int, ...]) -> None:
    if name == "pages_tables":
        d.num_reqs, d.pages_per_req = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0] if shape else 0)
    elif name == "slot_mapping":
        d.num_slices = shape[-1] if shape else 0
    else:
        setattr(d, _LENGTHS[name], shape[0] if shape else 0)
