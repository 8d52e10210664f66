"""`pplug serve` replicas on one PostgreSQL database (a throwaway cluster, the `postgres` fixture): the schema is
created once when replicas start together, items written through one replica are used by the other at once,
concurrent first writes of the same users through both replicas all succeed, and two replicas backfilling the same
items store each embedding once. The store-level races run on SQLite too. (The SIGKILL durability test runs on
PostgreSQL in test_server_durability.py.)"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from pplug.server.store import NewItem, Store, decode_vec
from test_server import build_runs, topic
from test_server_durability import server_url, spawn_server

USERS, WRITES_PER_USER, THREADS = 16, 10, 8  # 160 concurrent writes, the first ones of each user colliding
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path) -> str:
    """An empty database of either dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    return request.getfixturevalue("postgres").create_database(f"fresh{next(_databases)}")


def race(n: int, fn) -> list[str]:
    """Run ``fn(i)`` in ``n`` threads released together; each one's outcome: "ok" or its exception."""
    start, out = threading.Barrier(n), [""] * n

    def go(i: int) -> None:
        start.wait()
        try:
            fn(i)
            out[i] = "ok"
        except Exception as e:  # the outcome is what the test checks
            out[i] = f"{type(e).__name__}: {str(e)[:200]}"

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_stores_opened_together_create_the_schema_once(fresh_url):
    stores: list[Store] = []
    assert race(4, lambda _: stores.append(Store(fresh_url))) == ["ok"] * 4  # unlocked: "already exists"
    stores[0].add_key("t", "0" * 64)
    with stores[1].engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM tenants")).scalar() == 1
    for s in stores:
        s.close()


def test_replicas_backfilling_the_same_items_store_each_embedding_once(fresh_url):
    store = Store(fresh_url)
    tenant = store.add_key("t", "0" * 64)
    items = [NewItem(f"i{k}", {"text": f"note {k}"}, None, {}) for k in range(40)]
    store.add_items(tenant, "u", items, max_history=100)
    pks = [pk for pk, _ in store.items_missing("space-a", 100)]
    replicas = [Store(fresh_url) for _ in range(4)]
    vec = np.arange(8, dtype=np.float32) / 8
    # merge() would be select-then-insert: on PostgreSQL two replicas both insert and one hits the primary key
    assert race(4, lambda i: replicas[i].put_embeddings("space-a", pks, [vec] * len(pks))) == ["ok"] * 4
    assert store.items_missing("space-a", 100) == []
    got, vecs = store.profile(tenant, "u", "space-a", None)
    assert [it.id for it in got] == [f"i{k}" for k in range(40)] and vecs.shape == (40, 8)
    np.testing.assert_array_equal(vecs[0], vec.astype(np.float16).astype(np.float32))
    for s in (store, *replicas):
        s.close()


def test_postgresql_stores_float16_vectors_as_bytea_and_64_bit_item_ids(postgres):
    store = Store(postgres.create_database("vectors"))
    tenant = store.add_key("t", "0" * 64)
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    store.add_items(tenant, "u", [NewItem("i0", {"text": "x"}, None, {"s": vec})], max_history=10)
    with store.engine.connect() as c:
        kind, size, blob = c.execute(text("SELECT pg_typeof(vec)::text, octet_length(vec), vec "
                                          "FROM item_embeddings")).one()
        ids = c.execute(text("SELECT data_type FROM information_schema.columns WHERE column_name IN ('id', 'item_pk') "
                             "AND table_name IN ('history_items', 'item_embeddings')")).scalars()
        assert list(ids) == ["bigint", "bigint"]
    assert (kind, size) == ("bytea", 2 * 384)
    np.testing.assert_allclose(decode_vec(blob, 384), vec, atol=2e-3)
    store.close()


# ---- two real `pplug serve` processes on one database -------------------------------------------------------
@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_llama_dir, tiny_bert_dir, postgres):
    """Two `pplug serve` processes started at the same moment on one empty PostgreSQL database: (urls, db url)."""
    from pplug.resources import Resources

    run = build_runs(tmp_path_factory.mktemp("pg-runs"), tiny_llama_dir, tiny_bert_dir,
                     Resources(embedding_cache=None), tasks=("synth_topic",))["synth_topic"]
    db_url = postgres.create_database("replicas")
    procs = [spawn_server(run, db_url) for _ in range(2)]  # both create the schema at startup
    try:
        urls = [server_url(p) for p in procs]
        for u in urls:  # answered once the app is built (store opened, models loaded)
            assert httpx.get(f"{u}/healthz", timeout=120).status_code == 200
        yield urls, db_url
    finally:
        for p in procs:  # throwaway servers: no graceful shutdown to wait for
            p.kill()
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def key(replicas) -> str:
    from pplug.cli.serve_cmd import create_tenant_key

    return create_tenant_key(replicas[1], "acme")


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_replicas_started_together_on_an_empty_database_both_serve(replicas):
    urls, db_url = replicas
    store = Store(db_url)
    with store.engine.connect() as c:
        tables = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).scalars()
        assert list(tables) == ["api_keys", "history_items", "item_embeddings", "tenants", "users"]
    store.close()
    assert [httpx.get(f"{u}/healthz").json()["status"] for u in urls] == ["ok", "ok"]


def test_items_written_through_one_replica_are_used_by_the_other_at_once(replicas, key):
    (url_a, url_b), _ = replicas
    with client(url_a, key) as a, client(url_b, key) as b:
        items = [topic(0), topic(1, "music"), topic(2)]
        assert a.post("/v1/users/alice/items", json={"items": items}).status_code == 201
        assert b.get("/v1/users/alice").json()["history_size"] == 3
        ask = {"user_id": "alice", "task": "synth_topic", "input": "note: a cat"}
        from_b, from_a = b.post("/v1/generate", json=ask).json(), a.post("/v1/generate", json=ask).json()
        assert from_b["history_size"] == 3 and {e["item_id"] for e in from_b["explanation"]} <= {"i0", "i1", "i2"}
        assert (from_b["output"], from_b["explanation"]) == (from_a["output"], from_a["explanation"])
        assert b.post("/v1/users/alice/items", json={"items": [topic(3)]}).status_code == 201
        assert [it["id"] for it in a.get("/v1/users/alice/items").json()["items"]] == ["i0", "i1", "i2", "i3"]
        assert b.delete("/v1/users/alice/items/i0").json()["deleted_items"] == 1
        assert a.post("/v1/generate", json=ask).json()["history_size"] == 3


def test_concurrent_first_writes_through_both_replicas_all_succeed(replicas, key):
    urls, db_url = replicas
    writes = [(u, j) for u in range(USERS) for j in range(WRITES_PER_USER)]  # by user: first writes collide

    def worker(t: int) -> list[int]:
        start.wait()
        with client(urls[0], key) as a, client(urls[1], key) as b:
            return [(a, b)[j % 2].post(f"/v1/users/first{u}/items", json={"items": [topic(j)]}).status_code
                    for u, j in writes[t::THREADS]]

    start = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        codes = [c for cs in pool.map(worker, range(THREADS)) for c in cs]
    assert codes == [201] * len(writes)
    with client(urls[0], key) as a:
        for u in range(USERS):
            assert a.get(f"/v1/users/first{u}").json()["history_size"] == WRITES_PER_USER
    store = Store(db_url)
    with store.engine.connect() as c:
        rows = c.execute(text("SELECT count(*), count(DISTINCT external_id) FROM users "
                              "WHERE external_id LIKE 'first%'")).one()
    store.close()
    assert tuple(rows) == (USERS, USERS)


def test_url_without_driver_means_psycopg(postgres):
    from pplug.server.tables import make_engine

    engine = make_engine(postgres.url().replace("postgresql+psycopg://", "postgresql://"))
    assert engine.dialect.driver == "psycopg"
    with engine.connect() as c:
        assert c.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
