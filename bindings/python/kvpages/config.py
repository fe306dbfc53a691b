"""Cache configuration and planning: :class:`Config` (``kvp_config``), built by
:meth:`Config.create` from the model shape and a memory budget taken from the device the cache
will live on; its :class:`LayoutInfo` and :class:`Plan`; JSON; device memory statistics."""
from __future__ import annotations

import ctypes
import dataclasses
import enum
from typing import Any, Dict, Iterable, Optional, Sequence

from ._ffi import (_i64, config_record, kvp_config, kvp_config_options, kvp_layout_info, kvp_memory_stats, kvp_plan,
                   kvp_shard_info, lib, sized)
from .errors import check, invalid
from .types import BudgetMode, Device, DeviceLike, Dtype, DtypeLike, Layout, parse_device

#: Safety margin of the reference budget function (KVP_DEFAULT_SAFETY_MARGIN, 256 MiB).
DEFAULT_SAFETY_MARGIN = 268435456
#: Budget when no device reported statistics (KVP_FALLBACK_BUDGET, 4 GiB).
FALLBACK_BUDGET = 4294967296
CONFIG_FLAG_REFERENCE_BUDGET, CONFIG_FLAG_NO_SAFETY_MARGIN = 1, 2


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Memory statistics of one device (``kvp_memory_stats``); 0 means absent."""
    bytes_limit: int = 0
    bytes_reservable_limit: int = 0
    bytes_total: int = 0
    bytes_in_use: int = 0
    bytes_reserved: int = 0
    valid: bool = True

    def _raw(self) -> kvp_memory_stats:
        return kvp_memory_stats(self.bytes_limit, self.bytes_reservable_limit, self.bytes_total, self.bytes_in_use,
                                self.bytes_reserved, 1 if self.valid else 0, 0)


def memory_stats(device: DeviceLike = "cpu", device_id: Optional[int] = None) -> MemoryStats:
    """kvp_device_memory_stats: the host's memory for "cpu", cudaMemGetInfo for "cuda:N"."""
    dev, ordinal = parse_device(device, device_id)
    raw = kvp_memory_stats()
    check(lib.kvp_device_memory_stats(dev.value, ordinal, ctypes.byref(raw)), "kvp_device_memory_stats")
    return MemoryStats(raw.bytes_limit, raw.bytes_reservable_limit, raw.bytes_total, raw.bytes_in_use,
                       raw.bytes_reserved, bool(raw.valid))


def _stats_array(stats: Sequence[MemoryStats]) -> Any:
    arr = (kvp_memory_stats * max(len(stats), 1))()
    for i, s in enumerate(stats):
        arr[i] = s._raw()
    return arr


def hbm_budget_bytes(stats: Sequence[MemoryStats], utilization: float = 0.9, mode: BudgetMode = BudgetMode.FREE,
                     safety_margin_bytes: int = DEFAULT_SAFETY_MARGIN) -> int:
    """kvp_hbm_budget_bytes: the reference's per-device budget over device statistics."""
    stats = list(stats)
    out = _i64()
    check(lib.kvp_hbm_budget_bytes(_stats_array(stats), len(stats), utilization, BudgetMode(mode).value,
                                   safety_margin_bytes, ctypes.byref(out)), "kvp_hbm_budget_bytes")
    return out.value


def _struct_dict(raw: Any) -> Dict[str, Any]:
    return {f: getattr(raw, f) for f, _ in raw._fields_ if not f.startswith("_") and f != "struct_size"}


@dataclasses.dataclass(frozen=True)
class LayoutInfo:
    """Geometry of a config's layer buffers (``kvp_layout_info``)."""
    is_h64: bool
    kv_head_packing: int
    storage_num_combined_kv_heads: int
    storage_num_kv_groups: int
    storage_head_dim: int
    itemsize: int
    ndim: int
    shape: tuple
    layer_bytes: int
    page_bytes_per_layer: int
    max_num_seqs: int

    @classmethod
    def _of(cls, raw: kvp_layout_info) -> "LayoutInfo":
        d = _struct_dict(raw)
        d["is_h64"], d["shape"] = bool(raw.is_h64), tuple(raw.shape[: raw.ndim])
        return cls(**d)

    def __getitem__(self, key: str) -> Any:  # the 1.1 bindings returned a dict
        return getattr(self, key)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What fits in a config (``kvp_plan``): pages, bytes and token capacity."""
    num_pages: int
    usable_pages: int
    page_size: int
    bytes_per_page: int
    reference_bytes_per_page: int
    bytes_per_token: int
    total_bytes: int
    token_capacity: int
    max_concurrent_seqs: int
    max_num_seqs: int
    data_parallel_size: int = 1
    kv_head_shards: int = 1
    requested_kv_head_shards: int = 1
    head_sharding: "HeadSharding" = None  # type: ignore[assignment]
    requested_kvdtype: Optional[Dtype] = None
    kvdtype: Optional[Dtype] = None
    units_per_device: int = 0
    pages_per_device: int = 0
    bytes_per_device: int = 0
    sharding_message: str = ""

    @classmethod
    def _of(cls, raw: kvp_plan) -> "Plan":
        d = _struct_dict(raw)
        d["head_sharding"] = HeadSharding(raw.head_sharding)
        d["requested_kvdtype"], d["kvdtype"] = Dtype(raw.requested_kvdtype), Dtype(raw.kvdtype)
        d["sharding_message"] = raw.sharding_message.decode("utf-8")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """Which slice of a sharded config a cache or a blob holds (``kvp_shard_info``, since 1.4):
    the tensor and data ranks, the combined entries ``[slot_begin, slot_end)``, the KV heads
    (``head_begin`` is row 0 of a local key/value tensor), the keys and values held, and the
    global pages ``[page_begin, page_end)`` of ``global_pages``. A whole cache: ranks 0 of
    sizes 1, every entry and page."""
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    slot_begin: int
    slot_end: int
    head_begin: int
    head_end: int
    key_head_begin: int
    key_head_end: int
    value_head_begin: int
    value_head_end: int
    page_begin: int
    page_end: int
    global_pages: int

    @classmethod
    def _of(cls, raw: kvp_shard_info) -> "ShardInfo":
        return cls(**_struct_dict(raw))


class HeadSharding(enum.IntEnum):
    """What the KV-head sharding resolution decided (``KVP_HEAD_SHARDING_*``, since 1.3)."""
    NONE = 0       # one device
    KEEP = 1       # the heads split in the requested dtype
    UPCAST = 2     # the dtype was changed (bf16, then fp32) so that they split
    REPLICATE = 3  # no dtype splits them: every device holds all heads


class Config:
    """A cache configuration (a copy of the C ``kvp_config`` record; its fields are attributes).

    Build one with :meth:`create` (validated, pages derived from a budget), :meth:`defaults` (the
    reference defaults, fields to fill by hand) or :meth:`from_json`. ``device`` is the device
    :meth:`create` budgeted for; :class:`Cache` puts the cache there unless told otherwise."""
    _raw: kvp_config
    device: Device
    device_id: int

    def __init__(self, raw: kvp_config, device: DeviceLike = None, device_id: int = 0):
        self._raw = raw
        self.device, self.device_id = parse_device(device, device_id)

    @classmethod
    def create(cls, *, num_hidden_layers: int, num_kv_heads: int, max_model_length: int, head_dim: int = 0,
               k_headdim: int = 0, v_headdim: int = 0, page_size: int = 0, dtype: DtypeLike = Dtype.BF16,
               layout: Any = Layout.V3, budget_bytes: int = 0, hbm_utilization: float = 0.0,
               budget_mode: BudgetMode = BudgetMode.FREE, safety_margin_bytes: int = 0,
               no_safety_margin: bool = False, reference_budget: bool = False,
               memory_stats: Optional[Iterable[MemoryStats]] = None, device: DeviceLike = None,
               device_id: Optional[int] = None, kv_head_shards: int = 0, max_num_tokens: int = 0,
               max_num_reqs: int = 0, flags: int = 0, data_parallel_size: int = 0) -> "Config":
        """kvp_config_create: every field of ``kvp_config_options`` (0 means its default).

        The budget is ``budget_bytes`` when > 0, else computed (``hbm_utilization``,
        ``budget_mode``, ``safety_margin_bytes`` / ``no_safety_margin``) from ``memory_stats``
        when given, else from the statistics of ``device`` ("cpu", "cuda", "cuda:N"): the device
        the cache will live on. ``kv_head_shards`` (tensor parallelism) is resolved as the reference
        does: kept, the dtype upcast (bf16, then fp32) or the heads replicated (:meth:`plan` says
        which and why); the budget is multiplied by the effective shards and by
        ``data_parallel_size``, and ``num_pages`` is a multiple of the latter; ``reference_budget``
        sizes pages with the reference's unpadded formula; ``flags`` are raw
        ``KVP_CONFIG_FLAG_*`` bits added to those two."""
        dev, ordinal = parse_device(device, device_id)
        o = kvp_config_options()
        check(lib.kvp_config_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_config_options_init")
        o.num_hidden_layers, o.num_kv_heads, o.max_model_length = num_hidden_layers, num_kv_heads, max_model_length
        o.kv_head_dim_size, o.k_headdim, o.v_headdim = head_dim, k_headdim, v_headdim
        o.page_size, o.kvdtype, o.version = page_size, Dtype.parse(dtype).value, Layout.parse(layout).value
        o.budget_bytes, o.hbm_utilization, o.budget_mode = budget_bytes, hbm_utilization, BudgetMode(budget_mode)
        o.safety_margin_bytes, o.kv_head_shards = safety_margin_bytes, kv_head_shards
        o.flags = flags | (CONFIG_FLAG_REFERENCE_BUDGET if reference_budget else 0) | (
            CONFIG_FLAG_NO_SAFETY_MARGIN if no_safety_margin else 0)
        o.max_num_tokens, o.max_num_reqs = max_num_tokens, max_num_reqs
        o.data_parallel_size = data_parallel_size
        o.device_type, o.device_id = dev.value, ordinal
        stats = list(memory_stats) if memory_stats is not None else []
        keep = _stats_array(stats)
        if stats:
            o.memory_stats, o.num_memory_stats = keep, len(stats)
        raw = config_record()
        check(lib.kvp_config_create(ctypes.byref(o), ctypes.byref(raw)), "kvp_config_create")
        return cls(raw, dev, ordinal)

    @classmethod
    def defaults(cls) -> "Config":
        """kvp_config_init: the reference defaults (page 128, util 0.9, v3, bf16), model fields 0."""
        raw = kvp_config()
        check(lib.kvp_config_init(ctypes.byref(raw), ctypes.sizeof(raw)), "kvp_config_init")
        return cls(raw)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """kvp_config_from_json: the reference's from_json (not validated: call validate())."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        raw = config_record()
        check(lib.kvp_config_from_json(data, len(data), ctypes.byref(raw)), "kvp_config_from_json")
        return cls(raw)

    def to_json(self) -> str:
        """kvp_config_to_json: the reference's to_json text."""
        need = ctypes.c_size_t()
        lib.kvp_config_to_json(ctypes.byref(self._raw), None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value)
        check(lib.kvp_config_to_json(ctypes.byref(self._raw), buf, len(buf), ctypes.byref(need)),
              "kvp_config_to_json")
        return buf.value.decode()

    def validate(self) -> "Config":
        """kvp_config_validate: raises (naming the field) unless the record is consistent."""
        check(lib.kvp_config_validate(ctypes.byref(self._raw)), "kvp_config_validate")
        return self

    def layout(self) -> LayoutInfo:
        """kvp_config_get_layout: the geometry of a layer's pages."""
        info = sized(kvp_layout_info)
        check(lib.kvp_config_get_layout(ctypes.byref(self._raw), ctypes.byref(info)), "kvp_config_get_layout")
        return LayoutInfo._of(info)

    def plan(self) -> Plan:
        """kvp_config_plan: pages, bytes and token capacity of this config."""
        p = sized(kvp_plan)
        check(lib.kvp_config_plan(ctypes.byref(self._raw), ctypes.byref(p)), "kvp_config_plan")
        return Plan._of(p)

    def shard(self, tp_rank: int, dp_rank: int) -> ShardInfo:
        """kvp_config_get_shard: the slice shard (``tp_rank``, ``dp_rank``) of this config holds,
        without creating it (:meth:`Cache.create_shard` creates it)."""
        info = sized(kvp_shard_info)
        check(lib.kvp_config_get_shard(ctypes.byref(self._raw), tp_rank, dp_rank, ctypes.byref(info)),
              "kvp_config_get_shard")
        return ShardInfo._of(info)

    def padded_num_slices(self, num_tokens: int = 0, max_num_reqs: int = 0) -> int:
        """kvp_config_padded_num_slices: the reference's v2 slice capacity of a step."""
        out = _i64()
        check(lib.kvp_config_padded_num_slices(ctypes.byref(self._raw), num_tokens, max_num_reqs,
                                               ctypes.byref(out)), "kvp_config_padded_num_slices")
        return out.value

    def replace(self, **fields: Any) -> "Config":
        """A copy with some ``kvp_config`` fields changed (not validated)."""
        raw = kvp_config.from_buffer_copy(self._raw)
        for name, value in fields.items():
            if name not in _FIELDS:
                raise invalid("kvp_config has no field %r" % name, "Config.replace")
            setattr(raw, name, _to_c(name, value))
        return Config(raw, self.device, self.device_id)

    @property
    def dtype(self) -> Dtype:
        return Dtype(self._raw.kvdtype)

    @property
    def layout_version(self) -> Layout:
        return Layout(self._raw.version)

    def as_dict(self) -> Dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}

    def __getattr__(self, name: str) -> Any:
        raw = self.__dict__.get("_raw")
        if raw is not None and name in _FIELDS:
            value = getattr(raw, name)
            if name == "requested_kvdtype":  # 0: nothing was upcast
                return Dtype(value) if value else None
            return Dtype(value) if name == "kvdtype" else Layout(value) if name == "version" else value
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and bytes(self._raw) == bytes(other._raw)

    def __repr__(self) -> str:
        return "Config(%s)" % ", ".join("%s=%r" % (k, v) for k, v in self.as_dict().items())


_FIELDS = [f for f, _ in kvp_config._fields_ if f not in ("struct_size", "abi_version") and not f.startswith("_")]


def _to_c(name: str, value: Any) -> Any:
    if name == "requested_kvdtype" and not value:
        return 0
    if name in ("kvdtype", "requested_kvdtype"):
        return Dtype.parse(value).value
    if name == "version":
        return Layout.parse(value).value
    return value
