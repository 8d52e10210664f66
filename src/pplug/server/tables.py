"""The user-store schema (SQLAlchemy 2 ORM): tenants, API keys, users, history items, item embeddings.

Portable across SQLite (the default: one embedded file, WAL) and PostgreSQL (psycopg 3); ``make_engine`` sets
the SQLite pragmas that make a committed write survive a killed process, and ``create_schema`` creates the tables
once however many replicas start on one database at the same moment.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# 64-bit item ids on PostgreSQL (its INTEGER is 32-bit); on SQLite INTEGER PRIMARY KEY is the 64-bit rowid already
# (a BIGINT column there would not auto-increment)
ItemPk = BigInteger().with_variant(Integer, "sqlite")


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(256))  # the id the tenant uses
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Item(Base):
    __tablename__ = "history_items"
    __table_args__ = (UniqueConstraint("user_id", "item_id"),)
    id: Mapped[int] = mapped_column(ItemPk, primary_key=True)  # insertion order = history order
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(256))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    date: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ItemEmbedding(Base):
    __tablename__ = "item_embeddings"
    item_pk: Mapped[int] = mapped_column(ItemPk, ForeignKey("history_items.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(128), primary_key=True)  # task + encoder id (see runtime.py)
    dim: Mapped[int] = mapped_column(Integer)
    vec: Mapped[bytes] = mapped_column(LargeBinary)  # float16 [dim] (float32 in older stores); bytea on PostgreSQL


def private_file(path: Path) -> None:
    """Create the database file (and missing folders, 0700) readable by its owner only (0600); SQLite gives
    its WAL and shared-memory files the same mode. An existing file keeps its mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


SCHEMA_LOCK = 0x70706C7567  # PostgreSQL advisory lock id ("pplug") held while creating or migrating the schema


def create_schema(engine: Engine) -> None:
    """Create the missing tables (and, later, run migrations) in one transaction that holds a database-wide lock,
    so replicas starting together on one database create the schema once: the first takes the lock and creates,
    the others wait, then find the tables and create nothing. PostgreSQL: a transaction-level advisory lock (its DDL
    is transactional); SQLite: ``BEGIN IMMEDIATE`` (the write lock). Without the lock both dialects fail with
    "already exists" or a unique violation in the catalog when two processes race."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        Base.metadata.create_all(conn)


BUSY_TIMEOUT_S = 30  # SQLite: how long a connection waits for another's lock


def _enable_wal(cur: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried for up to the busy timeout: switching a new file to WAL takes an exclusive
    lock and SQLite returns "database is locked" at once instead of running the busy handler, so processes (or
    threads) opening a fresh database together would fail without the retry."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str, synchronous: str = "FULL") -> Engine:
    """An engine; for SQLite: the file is created private (0600) and every connection gets WAL,
    ``synchronous``, foreign keys and a busy timeout. ``postgresql://`` means psycopg 3 (the installed driver)."""
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"unknown SQLite synchronous mode '{synchronous}'")
    u = make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True)
    if u.database and u.database != ":memory:":
        private_file(Path(u.database).expanduser())
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        _enable_wal(cur)
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.close()

    return engine
