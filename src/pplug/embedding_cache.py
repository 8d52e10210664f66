"""On-disk cache of frozen text embeddings, keyed by (encoder name, sha256 of the text).

History items are encoded once across runs and processes: a SQLite file in WAL mode (safe for
concurrent readers and writers) behind an in-process dict. Vectors are stored as float16 by default
(half the bytes; L2-normalized embeddings lose ~1e-4 in a dot product) and read back as float32;
float32 blobs written by older versions are still read (the blob size tells the two apart).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pplug.encoders import TextEncoder

_SCHEMA = """CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT NOT NULL, key TEXT NOT NULL, dim INT NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (encoder, key))"""
_CHUNK = 500  # keys per SELECT (SQLite caps bound parameters)


def default_cache_path() -> Path:
    """``$PPLUG_CACHE/embeddings.sqlite`` (``PPLUG_CACHE`` defaults to ``~/.cache/pplug``)."""
    return Path(os.environ.get("PPLUG_CACHE", "~/.cache/pplug")).expanduser() / "embeddings.sqlite"


def text_key(text: str) -> str:
    """sha256 hex digest of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _frozen(vec: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    vec = np.array(vec, dtype=dtype)  # a copy
    vec.flags.writeable = False  # shared with the in-process dict: callers must not mutate it
    return vec


DTYPES = {"float16": np.float16, "float32": np.float32}


def decode_vec(blob: bytes, dim: int) -> np.ndarray | None:
    """A stored vector as float32 [dim] (float16 or float32 blob, told apart by its size); None if neither."""
    for dtype in (np.float16, np.float32):
        if len(blob) == dim * np.dtype(dtype).itemsize:
            return np.frombuffer(blob, dtype=dtype).astype(np.float32)
    return None


class EmbeddingCache:
    """Embeddings of one encoder, in memory and optionally in a SQLite file.

    Args:
        path: SQLite file (created with its folder); ``None`` keeps entries in memory only.
        encoder_name: the encoder's ``name``; entries of other encoders in the same file are invisible.
    """

    def __init__(self, path: str | Path | None, encoder_name: str, max_memory_items: int = 100_000,
                 dtype: str = "float16"):
        self.path = Path(path).expanduser() if path is not None else None
        self.encoder_name = encoder_name
        if dtype not in DTYPES:
            raise ValueError(f"embedding cache dtype must be one of {list(DTYPES)}, got '{dtype}'")
        self.dtype = DTYPES[dtype]  # storage type in memory and on disk
        # LRU bound on the in-process dict when SQLite backs it (evicted entries are re-read from disk),
        # so a long-running server does not grow without bound; memory-only caches are never evicted.
        self.max_memory_items = max_memory_items
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()

    def get_many(self, texts: list[str]) -> list[np.ndarray | None]:
        """Cached vectors for ``texts`` (read-only float32 arrays of shape [d]), ``None`` where missing."""
        keys = [text_key(t) for t in texts]
        found = {k: self._mem[k] for k in keys if k in self._mem}  # in the storage dtype
        for k in found:
            self._mem.move_to_end(k)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing and self._db is not None:
            with self._lock:
                for s in range(0, len(missing), _CHUNK):
                    chunk = missing[s:s + _CHUNK]
                    rows = self._db.execute(
                        f"SELECT key, dim, vec FROM embeddings WHERE encoder = ? AND key IN "
                        f"({','.join('?' * len(chunk))})", [self.encoder_name, *chunk]).fetchall()
                    for key, dim, blob in rows:
                        vec = decode_vec(blob, dim)
                        if vec is not None:
                            found[key] = self._mem[key] = _frozen(vec, self.dtype)
            self._evict()
        out = {k: _frozen(v) for k, v in found.items()}  # float32 copies
        return [out.get(k) for k in keys]

    def roundtrip(self, vecs: np.ndarray) -> np.ndarray:
        """``vecs`` [n, d] as they read back from this cache (float32 after the storage dtype)."""
        return np.asarray(vecs).astype(self.dtype).astype(np.float32)

    def _evict(self) -> None:
        if self._db is not None:
            while len(self._mem) > self.max_memory_items:
                self._mem.popitem(last=False)

    def put_many(self, texts: list[str], vecs: np.ndarray) -> None:
        """Store one vector per text.

        Args:
            texts: n strings.
            vecs: [n, d] array (stored in the cache's dtype).
        """
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(texts):
            raise ValueError(f"put_many: expected [{len(texts)}, d] vectors, got shape {vecs.shape}")
        entries = {text_key(t): _frozen(v, self.dtype) for t, v in zip(texts, vecs, strict=True)}
        self._mem.update(entries)
        self._evict()
        if self._db is not None and entries:
            rows = [(self.encoder_name, k, v.shape[0], v.tobytes()) for k, v in entries.items()]
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                self._db.commit()

    def __len__(self) -> int:
        """Number of entries for this encoder."""
        if self._db is None:
            return len(self._mem)
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM embeddings WHERE encoder = ?",
                                    (self.encoder_name,)).fetchone()[0]

    def close(self) -> None:
        """Close the SQLite connection (the in-memory entries stay usable)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class CacheStats:
    """Counters of a ``CachedEncoder``: texts served from the cache, unique texts encoded, encoder calls."""

    hits: int = 0
    misses: int = 0
    calls: int = 0


class CachedEncoder:
    """A frozen ``TextEncoder`` behind an ``EmbeddingCache``: each unique text is encoded once.

    Args:
        encoder: the (frozen) encoder.
        cache: a cache opened with ``encoder.name``.
    """

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache):
        if cache.encoder_name != encoder.name:
            raise ValueError(f"cache is for encoder '{cache.encoder_name}', not '{encoder.name}'")
        self.encoder, self.cache, self.stats = encoder, cache, CacheStats()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def name(self) -> str:
        return self.encoder.name

    def encode(self, texts: list[str], show_progress: bool = False) -> Tensor:
        """Embed texts, encoding only those not cached yet (each unique text once) and storing them.

        Args:
            texts: n strings (duplicates allowed).
            show_progress: show a progress bar while encoding the missing texts.

        Returns:
            [n, d] float32 on CPU, no grad.
        """
        found = self.cache.get_many(texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        self.stats.hits += len(texts) - sum(v is None for v in found)
        if missing:
            new = self.encoder.encode(missing, show_progress=show_progress).numpy()  # (m, d)
            self.cache.put_many(missing, new)
            self.stats.misses += len(missing)
            self.stats.calls += 1
            fresh = dict(zip(missing, self.cache.roundtrip(new), strict=True))  # as a later read returns them
            found = [fresh[t] if v is None else v for t, v in zip(texts, found, strict=True)]
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.stack(found).astype(np.float32, copy=False))  # (n, d)
