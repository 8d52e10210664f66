"""The user store: tenants, API keys, users, history items and their cached embeddings (SQLAlchemy 2).

SQLite by default (one embedded file in WAL mode) or PostgreSQL (``postgresql+psycopg://``), which several
``pplug serve`` replicas can share (docs/postgres.md). A write is acknowledged only after its transaction committed,
and an item's embeddings are written in the same transaction as the item, so a request never re-encodes history.
Rows that two replicas may create at once (tenants, keys, users, embeddings) are written with the dialect's
``INSERT ... ON CONFLICT``, so a race ends in one row, not in a unique-constraint error.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from pplug.data.records import HistoryItem
from pplug.server.tables import ApiKey, Item, ItemEmbedding, Tenant, User, create_schema, make_engine

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_tenant_name(name: str) -> str:
    """Tenant names: 1-64 characters of letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(f"invalid tenant name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def encode_vec(v: np.ndarray) -> bytes:
    """An item embedding as stored: float16 bytes (half of float32; scores move by ~1e-4)."""
    return np.asarray(v, dtype=np.float16).tobytes()


def decode_vec(blob: bytes, dim: int) -> np.ndarray:
    """A stored embedding as float32 [dim]; float32 blobs of older stores are read too (told by size)."""
    dtype = np.float16 if len(blob) == 2 * dim else np.float32
    return np.frombuffer(blob, dtype=dtype).astype(np.float32)


class NotFound(LookupError):
    """An unknown user or item (of this tenant): ``kind`` and ``id`` name it."""

    def __init__(self, kind: str, id: str):
        super().__init__(f"unknown {kind} '{id}'")
        self.kind, self.id = kind, id


class LimitExceeded(ValueError):
    """A write would pass a configured limit; the message says which and by how much."""


@dataclass
class NewItem:
    """An item to write, with its embedding per space (``vectors[space]``: [d] float32; [0] where the item
    lacks the fields of that space's task)."""

    id: str
    fields: dict[str, Any]
    date: str | None
    vectors: dict[str, np.ndarray]


class Store:
    """All reads and writes of the server, scoped by tenant. Methods are blocking (call them off the loop).

    Args:
        url: SQLAlchemy database URL.
        synchronous: SQLite ``PRAGMA synchronous`` (FULL/NORMAL).
    """

    def __init__(self, url: str, synchronous: str = "FULL"):
        self.engine = make_engine(url, synchronous)
        create_schema(self.engine)
        self._write = threading.Lock()  # one writer at a time in this process (SQLite has one writer anyway)

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A write transaction, safe across processes sharing the database: on SQLite it starts with
        ``BEGIN IMMEDIATE`` (takes the write lock first, so no read-then-write race with another replica;
        others wait up to the busy timeout); on PostgreSQL (read committed) the rows written are locked
        (a user's writes queue on her row) and rows that may be created twice are inserted with
        ``ON CONFLICT``. Commits on success, rolls back on error."""
        with self._write, Session(self.engine) as s, s.begin():
            if self.engine.dialect.name == "sqlite":
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield s

    def _insert(self, s: Session, table: type, values: list[dict[str, Any]], keys: list[str],
                update: list[str] | None = None) -> bool:
        """Insert rows, atomically skipping (or, with ``update``, overwriting those columns of) rows whose ``keys``
        already exist: ``INSERT ... ON CONFLICT`` on SQLite and PostgreSQL. Returns False on another dialect, where
        the caller falls back to read-then-write (and the unique constraints still guard the data)."""
        insert = {"sqlite": sqlite_insert, "postgresql": pg_insert}.get(self.engine.dialect.name)
        if insert is None:
            return False
        q = insert(table).values(values)
        q = (q.on_conflict_do_update(index_elements=keys, set_={c: q.excluded[c] for c in update}) if update
             else q.on_conflict_do_nothing(index_elements=keys))
        s.execute(q)
        return True

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as c:
            c.exec_driver_sql("SELECT 1")

    # ---- tenants and keys ---------------------------------------------------------------------
    def add_key(self, tenant: str, key_hash: str) -> int:
        """Attach a key (by hash) to a tenant, creating the tenant if needed; idempotent. Returns the tenant id."""
        check_tenant_name(tenant)
        with self.write_session() as s:
            self._insert(s, Tenant, [{"name": tenant, "created_at": datetime.now(UTC)}], ["name"])
            t = s.scalar(select(Tenant).where(Tenant.name == tenant))
            if t is None:  # a dialect without ON CONFLICT
                t = Tenant(name=tenant)
                s.add(t)
                s.flush()
            self._insert(s, ApiKey, [{"tenant_id": t.id, "key_hash": key_hash, "created_at": datetime.now(UTC)}],
                         ["key_hash"])
            owner = s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash))
            if owner is not None and owner != t.id:
                raise ValueError(f"this key already belongs to another tenant than '{tenant}'")
            if owner is None:
                s.add(ApiKey(tenant_id=t.id, key_hash=key_hash))
            return t.id

    def tenant_for(self, key_hash: str) -> int | None:
        with Session(self.engine) as s:
            return s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == key_hash))

    # ---- users and items ----------------------------------------------------------------------
    def _user(self, s: Session, tenant: int, user: str, lock: bool = False) -> User | None:
        q = select(User).where(User.tenant_id == tenant, User.external_id == user)
        return s.scalar(q.with_for_update() if lock else q)

    def _upsert_user(self, s: Session, tenant: int, user: str) -> User:
        """The user row, locked, created if missing; atomic when several processes create her at once (on
        PostgreSQL the second insert waits for the first transaction, then does nothing, and the lock queues it)."""
        self._insert(s, User, [{"tenant_id": tenant, "external_id": user, "created_at": datetime.now(UTC)}],
                     ["tenant_id", "external_id"])
        u = self._user(s, tenant, user, lock=True)
        if u is None:  # deleted by another transaction after our insert found her, or a dialect without upserts
            u = User(tenant_id=tenant, external_id=user)
            s.add(u)
            s.flush()
        return u

    def add_items(self, tenant: int, user: str, items: Sequence[NewItem], max_history: int) -> int:
        """Write items (an existing id is replaced and becomes the newest); creates the user if needed.

        Returns:
            the user's history size after the write (committed when this returns).

        Raises:
            LimitExceeded: the history would hold more than ``max_history`` items (nothing is written).
        """
        with self.write_session() as s:
            u = self._upsert_user(s, tenant, user)
            # items locked before their embeddings, in id order: the order put_embeddings locks in (no deadlock)
            old = list(s.scalars(select(Item.id).where(Item.user_id == u.id, Item.item_id.in_([it.id for it in items]))
                                 .order_by(Item.id).with_for_update()))
            if old:
                s.execute(delete(ItemEmbedding).where(ItemEmbedding.item_pk.in_(old)))
                s.execute(delete(Item).where(Item.id.in_(old)))
            size = s.scalar(select(func.count()).select_from(Item).where(Item.user_id == u.id)) + len(items)
            if size > max_history:
                raise LimitExceeded(f"user '{user}' would have {size} history items; the limit is {max_history} "
                                    "(max_history_items): delete some items first")
            rows = [Item(user_id=u.id, item_id=it.id, fields=it.fields, date=it.date) for it in items]
            s.add_all(rows)
            s.flush()
            s.add_all([ItemEmbedding(item_pk=row.id, space=space, dim=int(v.shape[0]),
                                     vec=encode_vec(v))
                       for row, it in zip(rows, items, strict=True) for space, v in it.vectors.items()])
            return size

    def user_info(self, tenant: int, user: str) -> dict[str, Any]:
        with Session(self.engine) as s:
            u = self._user(s, tenant, user)
            if u is None:
                raise NotFound("user", user)
            n = s.scalar(select(func.count()).select_from(Item).where(Item.user_id == u.id))
            return {"user_id": user, "history_size": n, "created_at": u.created_at.isoformat()}

    def list_users(self, tenant: int, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the tenant's users (oldest first) with their history sizes, and the total count."""
        with Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(User).where(User.tenant_id == tenant))
            n = select(func.count()).select_from(Item).where(Item.user_id == User.id).scalar_subquery()
            rows = s.execute(select(User.external_id, User.created_at, n).where(User.tenant_id == tenant)
                             .order_by(User.id).offset(offset).limit(limit))
            return [{"user_id": u, "history_size": k, "created_at": t.isoformat()} for u, t, k in rows], total

    def list_items(self, tenant: int, user: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the user's items, oldest first, and the total count."""
        with Session(self.engine) as s:
            u = self._user(s, tenant, user)
            if u is None:
                raise NotFound("user", user)
            total = s.scalar(select(func.count()).select_from(Item).where(Item.user_id == u.id))
            rows = s.scalars(select(Item).where(Item.user_id == u.id).order_by(Item.id).offset(offset).limit(limit))
            return [{"id": r.item_id, "fields": r.fields, "date": r.date} for r in rows], total

    def delete_items(self, tenant: int, user: str, item_id: str | None = None, with_user: bool = False) -> int:
        """Delete one item (``item_id``) or all of the user's items (and the user herself if ``with_user``),
        in one transaction; returns how many items went."""
        with self.write_session() as s:
            u = self._user(s, tenant, user, lock=True)
            if u is None:
                raise NotFound("user", user)
            q = select(Item.id).where(Item.user_id == u.id)
            q = q if item_id is None else q.where(Item.item_id == item_id)
            pks = list(s.scalars(q.order_by(Item.id).with_for_update()))
            if item_id is not None and not pks:
                raise NotFound("item", item_id)
            s.execute(delete(ItemEmbedding).where(ItemEmbedding.item_pk.in_(pks)))
            s.execute(delete(Item).where(Item.id.in_(pks)))
            if with_user:
                s.execute(delete(User).where(User.id == u.id))
            return len(pks)

    def delete_user(self, tenant: int, user: str) -> int:
        """Delete a user and everything of hers (items, embeddings); returns the number of items deleted."""
        return self.delete_items(tenant, user, with_user=True)

    def profile(self, tenant: int, user: str, space: str, last: int | None) -> tuple[list[HistoryItem], np.ndarray]:
        """The user's ``last`` newest items that have an embedding in ``space`` (oldest first) and their
        embeddings [n, d] float32."""
        with Session(self.engine) as s:
            u = self._user(s, tenant, user)
            if u is None:
                raise NotFound("user", user)
            q = (select(Item, ItemEmbedding.vec, ItemEmbedding.dim)
                 .join(ItemEmbedding, (ItemEmbedding.item_pk == Item.id)
                       & (ItemEmbedding.space == space) & (ItemEmbedding.dim > 0))
                 .where(Item.user_id == u.id).order_by(Item.id.desc()))
            rows = list(s.execute(q.limit(last) if last else q))[::-1]
        items = [HistoryItem(r.Item.item_id, dict(r.Item.fields), r.Item.date) for r in rows]
        vecs = [decode_vec(r.vec, r.dim) for r in rows]
        return items, (np.stack(vecs) if vecs else np.zeros((0, 0), dtype=np.float32))

    # ---- backfill (a task added after items were written) ---------------------------------------
    def items_missing(self, space: str, limit: int) -> list[tuple[int, HistoryItem]]:
        """Up to ``limit`` items of any user without an embedding in ``space``."""
        have = select(ItemEmbedding.item_pk).where(ItemEmbedding.space == space)
        with Session(self.engine) as s:
            rows = s.scalars(select(Item).where(Item.id.not_in(have)).order_by(Item.id).limit(limit))
            return [(r.id, HistoryItem(r.item_id, dict(r.fields), r.date)) for r in rows]

    def put_embeddings(self, space: str, pks: Sequence[int], vecs: Sequence[np.ndarray | None]) -> None:
        """Store embeddings, overwriting any of the same item and space (replicas backfill the same items when they
        start together); ``None`` marks an item that does not fit the space (empty vector, skipped later). Items
        deleted meanwhile are skipped; the rest are locked (``FOR KEY SHARE``) until the write commits."""
        with self.write_session() as s:
            alive = set(s.scalars(select(Item.id).where(Item.id.in_(pks)).order_by(Item.id)
                                  .with_for_update(key_share=True)))
            rows = []
            for pk, v in zip(pks, vecs, strict=True):
                v = np.zeros(0, dtype=np.float32) if v is None else np.asarray(v, dtype=np.float32)
                if pk in alive:
                    rows.append({"item_pk": pk, "space": space, "dim": int(v.shape[0]), "vec": encode_vec(v)})
            if rows and not self._insert(s, ItemEmbedding, rows, ["item_pk", "space"], update=["dim", "vec"]):
                for r in rows:
                    s.merge(ItemEmbedding(**r))
