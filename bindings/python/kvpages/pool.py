"""The page pool (``kvpages/pool.h``): hands a cache's pages to sequences (:class:`SeqId`),
shares them by fork and reuses them across prompts by prefix hash."""
from __future__ import annotations

import collections
import ctypes
import os
from typing import Any, List, Sequence, Tuple

import numpy as np

from ._ffi import (_P, _i32, _u32, _vp, kvp_batch_request, kvp_pool_options, kvp_pool_shard_stats, kvp_pool_stats,
                   kvp_pool_tier_stats, kvp_seq_id, lib, sized)
from ._handle import Handle
from .errors import check, invalid
from .metadata import BatchRequest

POOL_FLAG_NO_PREFIX_CACHE, POOL_ADD_FLAG_REUSE_ALL, POOL_ADD_FLAG_SHARD = 1, 1, 2
POOL_FLUSH_CACHED = 1  # kvp_pool_flush_tiers (since 1.5)
PAGE_FLAG_NULL, PAGE_FLAG_FREE, PAGE_FLAG_INDEXED = 1, 2, 4
POOL_SAVE_FLAG_NO_SYNC = 1
_BUFFER_TOO_SMALL = 6  # KVP_ERR_BUFFER_TOO_SMALL: the size half of size-then-fill
_size = ctypes.c_size_t

#: Counters of a pool (kvp_pool_get_stats); ``free_pages + evictable_pages + used_pages == total_pages``.
PoolStats = collections.namedtuple("PoolStats", [f for f, _ in kvp_pool_stats._fields_ if f != "struct_size"])
#: Counters of one data-parallel shard of a pool (kvp_pool_get_shard_stats, since 1.4): its page
#: range ``[first_page, end_page)`` and ``free_pages + evictable_pages + used_pages == total_pages``.
PoolShardStats = collections.namedtuple("PoolShardStats",
                                        [f for f, _ in kvp_pool_shard_stats._fields_ if f != "struct_size"])
#: Counters of one storage tier of a pool (kvp_pool_get_tier_stats, since 1.4): pages looked up
#: and restored (``restored_tokens``), blocks rejected by the checks, evicted pages written, and
#: (since 1.5) ``dropped``: evicted pages not written because the write queue was full.
PoolTierStats = collections.namedtuple("PoolTierStats",
                                       [f for f, _ in kvp_pool_tier_stats._fields_ if f != "struct_size"])


class SeqId:
    """Identifies a sequence of a :class:`Pool` (opaque; ``int(seq)`` gives the raw value for logs).

    Hashable and comparable for equality. Freeing the sequence makes the id stale: later calls
    with it raise :class:`NotFound`."""
    __slots__ = ("_id",)

    def __init__(self, raw):
        object.__setattr__(self, "_id", int(raw))

    def __setattr__(self, name, value):
        raise AttributeError("SeqId is immutable")

    def __int__(self):
        return self._id

    def __eq__(self, other):
        return isinstance(other, SeqId) and other._id == self._id

    def __hash__(self):
        return hash(("kvp_seq_id", self._id))

    def __repr__(self):
        return "SeqId(0x%08x)" % self._id


def _seq(seq):
    if not isinstance(seq, SeqId):
        raise TypeError("expected a kvpages.SeqId, got %s" % type(seq).__name__)
    return kvp_seq_id(seq._id)


def _tokens(tokens):
    """Token ids (a sequence of ints or a 1-D integer array) as int32 C memory: (array, pointer, count)."""
    a = np.ascontiguousarray(tokens, dtype=np.int32)
    if a.ndim != 1:
        raise invalid("expected a 1-D sequence of token ids, got %d dimensions" % a.ndim)
    return a, a.ctypes.data_as(_P(_i32)), a.shape[0]


def _shard_flags(shard):
    """The flags of a restore into data-parallel shard ``shard`` (KVP_POOL_ADD_IN_SHARD), or 0 for None."""
    if shard is None:
        return 0
    if not 0 <= shard < 1 << 16:
        raise invalid("shard %d is out of range [0, 65536)" % shard)
    return POOL_ADD_FLAG_SHARD | (shard << 16)


class Pool(Handle):
    """A page pool over one cache (kvp_pool_create / kvp_pool_destroy).

    Keeps a reference to its cache; :meth:`Cache.close` refuses while the pool is open. Not
    internally synchronised: calls that modify the pool must not run concurrently. Every failed
    call raises and leaves the pool unchanged."""
    _destroy = lib.kvp_pool_destroy

    def __init__(self, cache, max_sequences=0, no_prefix_cache=False, write_queue_bytes=0):
        o = kvp_pool_options()
        check(lib.kvp_pool_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_pool_options_init")
        o.max_sequences = max_sequences
        o.write_queue_bytes = write_queue_bytes  # staging for the asynchronous tiers; 0 = 64 MiB
        if no_prefix_cache:
            o.flags |= POOL_FLAG_NO_PREFIX_CACHE
        out = _vp()
        check(lib.kvp_pool_create(cache.ptr, ctypes.byref(o), ctypes.byref(out)), "kvp_pool_create")
        super().__init__(out.value)
        self.cache = cache
        self.stores = []  # the storage tiers, in order (kept open while the pool is)
        cache._pools.add(self)
        self._max_pages = self.stats().max_pages_per_sequence

    def add_sequence(self, tokens, salt=0, reuse_all=False, shard=None):
        """Adds a sequence holding the prompt ``tokens``, reusing the longest cached prefix of full
        pages (unless ``reuse_all``, at least one token is left to compute).

        With data-parallel shards the pool places the sequence (the shard with the longest cached
        prefix that can hold the rest, else the one with the most free pages); ``shard`` forces
        one. Prefix matching stays within the sequence's shard.

        Returns ``(seq, reused_tokens)``; the reused tokens count as computed."""
        keep, arr, n = _tokens(tokens)
        seq, reused = kvp_seq_id(), _size()
        flags = POOL_ADD_FLAG_REUSE_ALL if reuse_all else 0
        if shard is not None:
            if not 0 <= shard < 1 << 16:
                raise invalid("shard %d is out of range [0, 65536)" % shard)
            flags |= POOL_ADD_FLAG_SHARD | (shard << 16)
        check(lib.kvp_pool_add_sequence(self.ptr, arr, n, salt, flags, ctypes.byref(seq), ctypes.byref(reused)),
               "kvp_pool_add_sequence")
        return SeqId(seq.id), reused.value

    def append(self, seq, tokens):
        """Appends tokens (every token already in the sequence then counts as computed); a shared
        partial tail page is copied first."""
        keep, arr, n = _tokens(tokens)
        check(lib.kvp_pool_append(self.ptr, _seq(seq), arr, n, None), "kvp_pool_append")

    def set_computed(self, seq, num_tokens):
        """Declares the K/V of the first ``num_tokens`` tokens written (full pages get indexed)."""
        check(lib.kvp_pool_set_computed(self.ptr, _seq(seq), num_tokens), "kvp_pool_set_computed")

    def truncate(self, seq, new_length):
        check(lib.kvp_pool_truncate(self.ptr, _seq(seq), new_length), "kvp_pool_truncate")

    def fork(self, seq, num_children):
        """Forks ``seq`` into ``num_children`` sequences sharing all its pages; returns their ids."""
        out = (kvp_seq_id * max(num_children, 1))()
        check(lib.kvp_pool_fork(self.ptr, _seq(seq), num_children, out), "kvp_pool_fork")
        return [SeqId(out[i].id) for i in range(num_children)]

    def free_sequence(self, seq):
        """Releases the sequence's pages; ``seq`` becomes stale."""
        check(lib.kvp_pool_free_sequence(self.ptr, _seq(seq)), "kvp_pool_free_sequence")

    def _length(self, seq):
        n, computed = _size(), _size()
        check(lib.kvp_pool_get_sequence_length(self.ptr, _seq(seq), ctypes.byref(n), ctypes.byref(computed)),
               "kvp_pool_get_sequence_length")
        return n.value, computed.value

    def length(self, seq):
        """Tokens in the sequence."""
        return self._length(seq)[0]

    def computed(self, seq):
        """The computed watermark: tokens whose K/V is written."""
        return self._length(seq)[1]

    def page_table(self, seq):
        """The sequence's page ids in logical order (a list)."""
        buf, n = (_i32 * max(self._max_pages, 1))(), _size()
        check(lib.kvp_pool_get_page_table(self.ptr, _seq(seq), buf, self._max_pages, ctypes.byref(n)),
               "kvp_pool_get_page_table")
        return buf[: n.value]

    def slots(self, seq, start, count):
        """Cache slots (``page * page_size + row``) of positions ``start … start + count - 1``."""
        buf = (_i32 * max(count, 1))()
        check(lib.kvp_pool_get_slots(self.ptr, _seq(seq), start, count, buf), "kvp_pool_get_slots")
        return buf[:count]

    def batch_request(self, seq):
        """A :class:`BatchRequest` for :meth:`Metadata.build`: the computed watermark, the pending
        tokens and a copy of the page ids (so it stays valid after the pool changes)."""
        r = kvp_batch_request()
        check(lib.kvp_pool_get_batch_request(self.ptr, _seq(seq), ctypes.byref(r)), "kvp_pool_get_batch_request")
        return BatchRequest(r.num_computed, r.num_scheduled, r.page_ids[: r.num_pages])

    def page_state(self, page):
        """``(refcount, flags)`` of a page; flags are ``PAGE_FLAG_*`` bits."""
        ref, flags = _u32(), _u32()
        check(lib.kvp_pool_get_page_state(self.ptr, page, ctypes.byref(ref), ctypes.byref(flags)),
               "kvp_pool_get_page_state")
        return ref.value, flags.value

    def stats(self):
        """The pool's counters as a :class:`PoolStats`."""
        st = kvp_pool_stats()
        st.struct_size = ctypes.sizeof(st)
        check(lib.kvp_pool_get_stats(self.ptr, ctypes.byref(st)), "kvp_pool_get_stats")
        return PoolStats(*(getattr(st, f) for f in PoolStats._fields))

    def sequence_shard(self, seq):
        """The data-parallel shard ``seq`` lives in (0 without shards)."""
        out = _u32()
        check(lib.kvp_pool_get_sequence_shard(self.ptr, _seq(seq), ctypes.byref(out)), "kvp_pool_get_sequence_shard")
        return out.value

    def shard_stats(self, shard):
        """The counters of one data-parallel shard as a :class:`PoolShardStats` (a pool without
        shards has one, shard 0)."""
        st = kvp_pool_shard_stats()
        st.struct_size = ctypes.sizeof(st)
        check(lib.kvp_pool_get_shard_stats(self.ptr, shard, ctypes.byref(st)), "kvp_pool_get_shard_stats")
        return PoolShardStats(*(getattr(st, f) for f in PoolShardStats._fields))

    def add_store(self, store):
        """Adds a :class:`Store` as the pool's next storage tier (at most 4): tier 0 receives the
        prefix pages the pool evicts, and :meth:`add_sequence` restores a prompt's next pages from
        the tiers in order. The store stays open while the pool is."""
        check(lib.kvp_pool_add_store(self.ptr, store.ptr), "kvp_pool_add_store")
        store._pools.add(self)
        self.stores.append(store)

    def tier_stats(self, tier):
        """The counters of storage tier ``tier`` (in the order the stores were added) as a
        :class:`PoolTierStats`."""
        st = sized(kvp_pool_tier_stats)
        check(lib.kvp_pool_get_tier_stats(self.ptr, tier, ctypes.byref(st)), "kvp_pool_get_tier_stats")
        return PoolTierStats(*(getattr(st, f) for f in PoolTierStats._fields))

    def flush_tiers(self, cached=False):
        """Waits until every write to tier 0 queued so far has reached its store (or failed,
        counted in :meth:`tier_stats`); with ``cached`` first writes every cached prefix page tier 0
        does not hold yet (to persist the prefix cache, at exit say)."""
        check(lib.kvp_pool_flush_tiers(self.ptr, POOL_FLUSH_CACHED if cached else 0), "kvp_pool_flush_tiers")

    def save_sequence(self, seq):
        """The blob (``bytes``) of sequence ``seq``: its token ids and its pages' bytes in every
        layer, which :meth:`restore_sequence` turns into a new sequence of any pool of a compatible
        cache. Every token must be computed (:meth:`set_computed`)."""
        size = _size()
        status = lib.kvp_pool_save_sequence(self.ptr, _seq(seq), None, 0, ctypes.byref(size))
        if status != _BUFFER_TOO_SMALL:
            check(status, "kvp_pool_save_sequence")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.kvp_pool_save_sequence(self.ptr, _seq(seq), buf, size.value, ctypes.byref(size)),
              "kvp_pool_save_sequence")
        return buf.raw[: size.value]

    def save_sequence_to_file(self, seq, path, sync=True):
        """:meth:`save_sequence` into a file replaced atomically; ``sync=False`` skips the two
        fsyncs (KVP_POOL_SAVE_FLAG_NO_SYNC)."""
        flags = 0 if sync else POOL_SAVE_FLAG_NO_SYNC
        check(lib.kvp_pool_save_sequence_to_file(self.ptr, _seq(seq), os.fsencode(path), flags),
              "kvp_pool_save_sequence_to_file")

    def restore_sequence(self, blob, shard=None):
        """A new sequence (its :class:`SeqId`) from a saved blob (bytes-like), checked whole
        before the pool changes; its full pages that the prefix index holds are shared, and every
        token counts as computed. ``shard`` forces a data-parallel shard; None places it as
        :meth:`add_sequence` does."""
        data = bytes(blob)
        seq = kvp_seq_id()
        check(lib.kvp_pool_restore_sequence(self.ptr, data, len(data), _shard_flags(shard), ctypes.byref(seq)),
              "kvp_pool_restore_sequence")
        return SeqId(seq.id)

    def restore_sequence_from_file(self, path, shard=None):
        """:meth:`restore_sequence` from a file written by :meth:`save_sequence_to_file`."""
        seq = kvp_seq_id()
        check(lib.kvp_pool_restore_sequence_from_file(self.ptr, os.fsencode(path), _shard_flags(shard),
                                                      ctypes.byref(seq)), "kvp_pool_restore_sequence_from_file")
        return SeqId(seq.id)

    def check_invariants(self):
        """Raises KvpError (KVP_ERR_INTERNAL, naming the violation) if the bookkeeping is inconsistent."""
        check(lib.kvp_pool_check_invariants(self.ptr), "kvp_pool_check_invariants")

    def clear_prefix_cache(self):
        """Empties the prefix index (after a model or weight change)."""
        check(lib.kvp_pool_clear_prefix_cache(self.ptr), "kvp_pool_clear_prefix_cache")
