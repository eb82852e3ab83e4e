"""Feature caches with bounded memory: an agent-wide LRU bounded in bytes, and a per-run layer.

`ByteLRU` holds what is worth keeping across runs (reference features, reference banks,
calibrations): least recently used entries are dropped once the entries' estimated size passes
`max_bytes`. `RunCache` is what a tool sees as `ctx.cache`: entries whose key names one of the
run's reference images (by pixel digest) go to the shared LRU; every other entry (the query's
features, a crop's embedding) stays in the run's own dict and is released with the run.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np

DEFAULT_CACHE_MB = 1024


def estimate_bytes(value: Any, _depth: int = 0) -> int:
    """Approximate memory held by a cached value (numpy arrays, faiss indexes, containers, dataclasses)."""
    if _depth > 6:
        return 64
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    ntotal, dim = getattr(value, "ntotal", None), getattr(value, "d", None)
    if isinstance(ntotal, int) and isinstance(dim, int):  # a faiss index: float32 vectors
        return 4 * ntotal * dim + 256
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor
        return int(value.element_size() * value.nelement()) + 128
    if isinstance(value, dict):
        return 64 + sum(estimate_bytes(k, _depth + 1) + estimate_bytes(v, _depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 56 + sum(estimate_bytes(v, _depth + 1) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return 64 + sum(estimate_bytes(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value))
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return 64 + sum(estimate_bytes(v, _depth + 1) for v in vars(value).values())
    return sys.getsizeof(value)


class ByteLRU(MutableMapping):
    """A thread-safe dict that keeps its entries' estimated size under `max_bytes` (least recently used out).

    An entry larger than `max_bytes` on its own is not kept at all (the caller still has it).
    `stats()` reports hits, misses, evictions and the current size.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_MB * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = 0

    def __getitem__(self, key):
        with self._lock:
            try:
                value, _ = self._data[key]
            except KeyError:
                self.misses += 1
                raise
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def __setitem__(self, key, value) -> None:
        size = estimate_bytes(value)
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, (_, old) = self._data.popitem(last=False)
                self._bytes -= old
                self.evictions += 1

    def __delitem__(self, key) -> None:
        with self._lock:
            self._bytes -= self._data.pop(key)[1]

    def __iter__(self) -> Iterator:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    @property
    def nbytes(self) -> int:
        """Estimated bytes held by the entries."""
        return self._bytes

    def stats(self) -> dict:
        return {"entries": len(self._data), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


def mentions(key: Any, digests: set[str]) -> bool:
    """Does a cache key (a tuple, possibly nested) contain one of `digests`?"""
    if isinstance(key, str):
        return key in digests
    if isinstance(key, tuple | list | frozenset):
        return any(mentions(k, digests) for k in key)
    return False


class RunCache(MutableMapping):
    """`ctx.cache` for one run: reference-keyed entries in a shared `ByteLRU`, the rest in the run's dict.

    Args:
        shared: the agent-wide LRU (reference features, banks, calibrations).
        shared_digests: returns the pixel digests of the run's references, read at each write (the
            references are added after the context is made).
    """

    def __init__(self, shared: MutableMapping, shared_digests: Callable[[], set[str]]) -> None:
        self.shared = shared
        self.local: dict[Any, Any] = {}
        self._shared_digests = shared_digests

    def __getitem__(self, key):
        if key in self.local:
            return self.local[key]
        return self.shared[key]

    def __contains__(self, key) -> bool:
        return key in self.local or key in self.shared

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, value) -> None:
        if mentions(key, self._shared_digests()):
            self.shared[key] = value
        else:
            self.local[key] = value

    def __delitem__(self, key) -> None:
        if key in self.local:
            del self.local[key]
        else:
            del self.shared[key]

    def __iter__(self) -> Iterator:
        yield from list(self.local)
        yield from (k for k in list(self.shared) if k not in self.local)

    def __len__(self) -> int:
        return len(self.local) + sum(1 for k in list(self.shared) if k not in self.local)

    def release(self) -> None:
        """Drop the run's own entries (the query's features); the shared ones stay."""
        self.local.clear()
