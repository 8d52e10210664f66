"""`pplug serve` through its app factory on tiny models: endpoints, auth and tenant isolation, limits and
errors, micro-batching, metrics, the serve command and the load script. No sleeps, no network."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pplug.server import ServerConfig, create_app

KEY_A, KEY_B = "test-key-tenant-a", "test-key-tenant-b"
A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
LIMITS = dict(max_items_per_request=5, max_item_chars=300, max_history_items=8, max_input_chars=200,
              max_new_tokens_limit=16, max_body_bytes=20_000)
ROOT = Path(__file__).resolve().parents[1]
# a PostgreSQL database to run the endpoint tests on too (WIPED), e.g. postgresql+psycopg://postgres@127.0.0.1/pplug_test;
# unset: a database on the throwaway cluster of the `postgres` fixture
PG_URL = os.environ.get("PPLUG_TEST_POSTGRES_URL")


def build_runs(root: Path, llama: Path, bert: Path, resources, tasks=("synth_topic", "synth_title")) -> dict:
    """Tiny PPlug runs (1 training step) on synthetic data, one per task."""
    from pplug.config import RunConfig
    from pplug.runner import train_run
    from pplug.synth import SynthConfig, synthesize

    folders = synthesize(root / "data", SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=2, min_profile=3,
                                                    max_profile=5))
    runs = {}
    for task in tasks:
        cfg = RunConfig(method="pplug", data=str(folders[task]))
        cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(llama), str(bert)
        cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 1, False, 0, 1
        train_run(cfg, root / task, resources)
        runs[task] = root / task
    return runs


@pytest.fixture(scope="session")
def resources():
    from pplug.resources import Resources

    return Resources(embedding_cache=None)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_llama_dir, tiny_bert_dir, resources) -> dict[str, Path]:
    return build_runs(tmp_path_factory.mktemp("server-runs"), tiny_llama_dir, tiny_bert_dir, resources)


def make_app(db: Path | str, runs: list[Path], resources, **overrides):
    url = f"sqlite:///{db}" if isinstance(db, Path) else db
    cfg = ServerConfig(runs=[str(r) for r in runs], db_url=url, tenants={"a": KEY_A, "b": KEY_B},
                       **(LIMITS | {"batch_window_ms": 1.0} | overrides))
    return create_app(cfg, resources)


def wipe(url: str) -> None:
    from pplug.server.tables import Base, make_engine

    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory, runs, resources):
    """One app for the endpoint tests (each test uses its own user ids), on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("server-db") / "server.sqlite"
    elif PG_URL:
        db = PG_URL
        wipe(db)
    else:
        db = request.getfixturevalue("postgres").create_database("endpoints")
    with TestClient(make_app(db, list(runs.values()), resources)) as c:
        yield c


def sql(c: TestClient, query: str) -> list[tuple]:
    from sqlalchemy import text

    with c.app.state.pplug.store.engine.connect() as con:
        return [tuple(r) for r in con.execute(text(query))]


def topic(i: int, category: str = "sports") -> dict:
    return {"id": f"i{i}", "fields": {"text": f"note number {i} about the cat in the park", "category": category}}


def add(c: TestClient, user: str, items: list[dict], headers=A) -> httpx.Response:
    return c.post(f"/v1/users/{user}/items", headers=headers, json={"items": items})


def gen(c: TestClient, user: str, task: str = "synth_topic", headers=A, **kw) -> httpx.Response:
    return c.post("/v1/generate", headers=headers, json={"user_id": user, "task": task, "input": "note: a cat"} | kw)


def err(r: httpx.Response) -> dict:
    return r.json()["error"]


# ---- service, docs, auth ------------------------------------------------------------------------
def test_healthz_docs_and_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["tasks"] == ["synth_title", "synth_topic"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/users/{user_id}/items", "/v1/users/{user_id}", "/v1/generate", "/v1/chat/completions"):
        assert p in paths


@pytest.mark.parametrize("method,path", [("GET", "/v1/users/u/items"), ("POST", "/v1/generate"),
                                         ("DELETE", "/v1/users/u"), ("POST", "/v1/chat/completions"),
                                         ("GET", "/v1/tasks")])
def test_no_or_bad_key_is_401(client, method, path):
    r = client.request(method, path, json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in err(r)["message"]
    r = client.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and err(r)["message"] == "invalid API key"


def test_keys_are_stored_hashed(client):
    hashes = {h for (h,) in sql(client, "SELECT key_hash FROM api_keys")}
    assert hashlib.sha256(KEY_A.encode()).hexdigest() in hashes and KEY_A not in hashes
    url = client.app.state.pplug.config.db_url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # the file, its WAL and shm
        assert KEY_A.encode() not in raw and KEY_B.encode() not in raw


# ---- items ----------------------------------------------------------------------------------------
def test_items_add_list_delete(client):
    r = add(client, "ann", [topic(0), topic(1), {"fields": {"text": "no id", "category": "food"}}])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["item_ids"][:2] == ["i0", "i1"] and len(body["item_ids"][2]) == 32 and body["history_size"] == 3
    page = client.get("/v1/users/ann/items", headers=A, params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and [it["id"] for it in page["items"]] == ["i1", body["item_ids"][2]]
    assert page["items"][0]["fields"] == topic(1)["fields"]
    assert client.get("/v1/users/ann", headers=A).json()["history_size"] == 3
    assert client.delete("/v1/users/ann/items/i0", headers=A).json() == {"user_id": "ann", "deleted_items": 1}
    r = client.delete("/v1/users/ann/items/i0", headers=A)
    assert r.status_code == 404 and err(r)["message"] == "unknown item 'i0'" and err(r)["param"] == "item_id"
    assert client.delete("/v1/users/ann/items", headers=A).json()["deleted_items"] == 2
    assert client.get("/v1/users/ann", headers=A).json()["history_size"] == 0


def test_readding_an_id_replaces_the_item(client):
    add(client, "ben", [topic(0), topic(1)])
    r = add(client, "ben", [topic(0, "music")])
    assert r.json()["history_size"] == 2
    items = client.get("/v1/users/ben/items", headers=A).json()["items"]
    assert [it["id"] for it in items] == ["i1", "i0"] and items[1]["fields"]["category"] == "music"


def test_delete_user_removes_everything(client):
    add(client, "cat", [topic(0), topic(1)])
    assert client.delete("/v1/users/cat", headers=A).json() == {"user_id": "cat", "deleted_items": 2}
    r = client.get("/v1/users/cat/items", headers=A)
    assert r.status_code == 404 and err(r)["message"] == "unknown user 'cat'"
    assert sql(client, "SELECT COUNT(*) FROM users WHERE external_id = 'cat'") == [(0,)]
    assert sql(client, "SELECT COUNT(*) FROM item_embeddings WHERE item_pk NOT IN (SELECT id FROM history_items)") \
        == [(0,)]
    assert sql(client, "SELECT COUNT(*) FROM history_items WHERE user_id NOT IN (SELECT id FROM users)") == [(0,)]


def test_tenants_are_isolated(client):
    add(client, "dora", [topic(0), topic(1)])
    for r in (client.get("/v1/users/dora/items", headers=B), client.get("/v1/users/dora", headers=B),
              gen(client, "dora", headers=B), client.delete("/v1/users/dora", headers=B),
              client.delete("/v1/users/dora/items/i0", headers=B)):
        assert r.status_code == 404 and err(r)["message"] == "unknown user 'dora'"
    assert add(client, "dora", [topic(5)], headers=B).json()["history_size"] == 1  # B's own dora
    assert client.delete("/v1/users/dora", headers=B).status_code == 200
    assert [it["id"] for it in client.get("/v1/users/dora/items", headers=A).json()["items"]] == ["i0", "i1"]
    assert gen(client, "dora").json()["history_size"] == 2


# ---- generate -------------------------------------------------------------------------------------
def test_generate_returns_output_explanation_and_latency(client):
    add(client, "eve", [topic(i, c) for i, c in enumerate(["sports", "music", "food", "travel"])])
    r = gen(client, "eve")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "eve" and body["task"] == "synth_topic" and isinstance(body["output"], str)
    assert body["latency_ms"] > 0 and body["batch_size"] == 1 and body["history_size"] == 4
    assert body["prompt_tokens"] > 0 and 1 <= len(body["explanation"]) <= 3
    assert {e["item_id"] for e in body["explanation"]} <= {"i0", "i1", "i2", "i3"}
    weights = [e["weight"] for e in body["explanation"]]
    assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1.0001


def test_generate_uses_stored_embeddings_and_matches_direct_predict(client, monkeypatch):
    from pplug.data.records import HistoryItem, Question

    items = [topic(i, c) for i, c in enumerate(["food", "music", "food"])]
    add(client, "fay", items)
    method = client.app.state.pplug.models["synth-topic"].method
    expected = method.predict([Question("q", "note: a cat", [HistoryItem(it["id"], it["fields"]) for it in items])])[0]
    calls, real = [], method.item_vectors
    monkeypatch.setattr(method, "item_vectors", lambda its: calls.append(its) or real(its))
    body = gen(client, "fay").json()
    assert calls == []
    assert body["output"] == expected.output and body["raw"] == expected.raw
    assert body["explanation"] == expected.explanation


def test_decode_options(client):
    add(client, "gus", [topic(0)])
    assert gen(client, "gus", task="synth_title", max_new_tokens=3, num_beams=2).status_code == 200
    r = gen(client, "gus", max_new_tokens=17)
    assert r.status_code == 422 and err(r)["param"] == "max_new_tokens" and "limit 16" in err(r)["message"]
    r = gen(client, "gus", num_beams=9)
    assert r.status_code == 422 and err(r)["param"] == "num_beams"


def test_items_count_only_for_tasks_they_fit(client):
    title_only = {"id": "t0", "fields": {"text": "an article about batteries", "title": "Batteries!"}}
    assert add(client, "hal", [topic(0), title_only]).status_code == 201
    assert gen(client, "hal").json()["history_size"] == 1  # synth_topic needs category
    assert gen(client, "hal", task="synth_title").json()["history_size"] == 1  # synth_title needs title
    r = add(client, "hal", [{"id": "x", "fields": {"text": "only text"}}])
    assert r.status_code == 422 and err(r)["param"] == "items[0].fields" and "fits no served task" in err(r)["message"]


def test_unknown_user_or_task_is_404_naming_it(client):
    r = gen(client, "nobody")
    assert r.status_code == 404 and err(r) == {"type": "not_found", "message": "unknown user 'nobody'",
                                               "param": "user_id"}
    r = gen(client, "nobody", task="LaMP-9")
    assert r.status_code == 404 and "unknown task 'LaMP-9'" in err(r)["message"] and err(r)["param"] == "task"


# ---- OpenAI-compatible --------------------------------------------------------------------------------
def test_chat_completions(client):
    add(client, "ivy", [topic(0), topic(1, "music")])
    req = {"model": "synth_topic", "user": "ivy", "temperature": 0.7,
           "messages": [{"role": "system", "content": "be nice"},
                        {"role": "user", "content": [{"type": "text", "text": "note: a cat"}]}]}
    r = client.post("/v1/chat/completions", headers=A, json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "synth_topic"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] > 0 and body["pplug"]["history_size"] == 2
    assert body["choices"][0]["message"]["content"] == gen(client, "ivy").json()["output"]
    for change, param in (({"user": None}, "user"), ({"stream": "yes"}, "stream"),
                          ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
                          ({"max_tokens": 99}, "max_tokens")):
        r = client.post("/v1/chat/completions", headers=A, json=req | change)
        assert r.status_code == 422 and err(r)["param"] == param, r.text
    r = client.post("/v1/chat/completions", headers=A, json=req | {"model": "gpt-4"})
    assert r.status_code == 404 and "unknown model 'gpt-4'" in err(r)["message"]
    models = client.get("/v1/models", headers=A).json()
    assert sorted(m["id"] for m in models["data"]) == ["synth_title", "synth_topic"]
    tasks = {t["name"]: t for t in client.get("/v1/tasks", headers=A).json()}
    assert tasks["synth_topic"]["item_fields"] == ["category", "text"]


# ---- bad input --------------------------------------------------------------------------------------
def test_validation_errors_are_field_level(client):
    r = client.post("/v1/users/jo/items", headers=A, json={"items": [{"fields": {}}, {"id": "a b", "fields": 3}]})
    assert r.status_code == 422
    fields = [d["field"] for d in err(r)["details"]]
    assert fields == ["items[0].fields", "items[1].id", "items[1].fields"] and err(r)["param"] == "items[0].fields"
    r = client.post("/v1/generate", headers=A, json={"user_id": "jo", "task": "synth_topic", "extra": 1})
    assert r.status_code == 422 and {d["field"] for d in err(r)["details"]} == {"input", "extra"}
    r = client.post("/v1/generate", headers=A | {"content-type": "application/json"}, content=b'{"user_id": ')
    assert r.status_code == 422 and err(r)["param"] == "body" and "invalid JSON" in err(r)["message"]
    r = add(client, "jo", [topic(0), topic(0)])
    assert r.status_code == 422 and err(r)["param"] == "items[1].id" and "duplicate item id 'i0'" in err(r)["message"]


def test_limits_are_413_and_write_nothing(client):
    r = add(client, "kim", [topic(i) for i in range(6)])
    assert r.status_code == 413 and err(r)["param"] == "items" and "limit is 5" in err(r)["message"]
    r = add(client, "kim", [{"id": "big", "fields": {"text": "x" * 400, "category": "food"}}])
    assert r.status_code == 413 and err(r)["param"] == "items[0].fields" and "max_item_chars" in err(r)["message"]
    add(client, "kim", [topic(i) for i in range(5)])
    add(client, "kim", [topic(i) for i in range(5, 8)])
    r = add(client, "kim", [topic(8)])
    assert r.status_code == 413 and "would have 9 history items; the limit is 8" in err(r)["message"]
    assert client.get("/v1/users/kim", headers=A).json()["history_size"] == 8
    r = gen(client, "kim", input="x" * 201)
    assert r.status_code == 413 and err(r)["param"] == "input" and "limit is 200" in err(r)["message"]
    r = client.post("/v1/users/kim/items", headers=A, content=b"{" + b" " * 20_001 + b"}")
    assert r.status_code == 413 and "max_body_bytes" in err(r)["message"]


def test_server_survives_bad_requests_and_model_errors(client, monkeypatch):
    add(client, "lee", [topic(0)])
    junk = [("POST", "/v1/generate", b"[]"), ("POST", "/v1/generate", b"null"), ("POST", "/v1/users/lee/items",
             b'{"items": [{"fields": {"text": {"nested": 1}}}]}'), ("GET", "/v1/users/lee/items?limit=-1", b""),
            ("POST", "/v1/generate", '{"user_id": "lee", "task": "synth_topic", "input": "\u00e9\U0001F600"}'.encode()),
            ("PATCH", "/v1/generate", b"{}"), ("GET", "/nope", b"")]
    for method, path, content in junk:
        r = client.request(method, path, headers=A | {"content-type": "application/json"}, content=content)
        assert r.status_code < 500 and "error" in r.json() or r.status_code == 200, (path, r.text)
    method = client.app.state.pplug.models["synth-topic"].method

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(method, "predict", boom)
    r = gen(client, "lee")
    assert r.status_code == 500 and "out of memory" in err(r)["message"]
    monkeypatch.undo()
    assert gen(client, "lee").status_code == 200


def test_metrics(client):
    add(client, "max", [topic(0)])
    gen(client, "max")
    text = client.get("/metrics").text
    assert 'pplug_requests_total{method="POST",route="/v1/generate",status="200"}' in text
    assert 'pplug_request_seconds_bucket{method="POST",route="/v1/generate",le="+Inf"}' in text
    assert "pplug_batch_size_count" in text and "pplug_queue_seconds_sum" in text
    snap = client.get("/metrics", params={"format": "json"}).json()
    assert snap["batches"] >= 1 and snap["mean_batch_size"] >= 1


# ---- micro-batching -----------------------------------------------------------------------------------
async def _fire(app, users: list[str], bodies: list[dict]) -> list[httpx.Response]:
    """Write one item per user, then send ``bodies`` to /v1/generate at once (in-process, one event loop)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=A, timeout=60) as c:
            for u in users:
                (await c.post(f"/v1/users/{u}/items", json={"items": [topic(0)]})).raise_for_status()
            return await asyncio.gather(*[c.post("/v1/generate", json=b) for b in bodies])


def _predict_spy(app, monkeypatch) -> list[int]:
    method = app.state.pplug.models["synth-topic"].method
    sizes, real = [], method.predict
    monkeypatch.setattr(method, "predict", lambda qs, vectors=None: sizes.append(len(qs)) or real(qs, vectors))
    return sizes


@pytest.mark.parametrize("max_batch,expected", [(4, [4]), (1, [1, 1, 1, 1])])
def test_concurrent_requests_share_one_backbone_call(tmp_path, runs, resources, monkeypatch, max_batch, expected):
    app = make_app(tmp_path / "b.sqlite", [runs["synth_topic"]], resources, batch_window_ms=10_000,
                   max_batch_size=max_batch)
    sizes = _predict_spy(app, monkeypatch)
    users = [f"u{i}" for i in range(4)]
    rs = asyncio.run(_fire(app, users, [{"user_id": u, "task": "synth_topic", "input": "note: hi"} for u in users]))
    assert [r.status_code for r in rs] == [200] * 4
    assert sizes == expected and [r.json()["batch_size"] for r in rs] == [max_batch] * 4
    assert app.state.pplug.metrics.snapshot()["batch_size_buckets"][str(max_batch)] == len(expected)


def test_batches_group_by_decode_options(tmp_path, runs, resources, monkeypatch):
    app = make_app(tmp_path / "g.sqlite", [runs["synth_topic"]], resources, batch_window_ms=10_000, max_batch_size=4)
    sizes = _predict_spy(app, monkeypatch)
    users = [f"u{i}" for i in range(4)]
    bodies = [{"user_id": u, "task": "synth_topic", "input": "note: hi", "max_new_tokens": 2 + i % 2}
              for i, u in enumerate(users)]
    rs = asyncio.run(_fire(app, users, bodies))
    assert sorted(sizes) == [2, 2] and [r.json()["batch_size"] for r in rs] == [2] * 4


def test_batcher_survives_a_failing_batch_and_refuses_when_full():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pplug.server.batching import MicroBatcher, QueueFull

    started, release = threading.Event(), threading.Event()

    def run(key, payloads):
        if key == "bad":
            raise ValueError("bad batch")
        if key == "slow":
            started.set()
            release.wait(10)
        return [p * 2 for p in payloads]

    async def go():
        loop = asyncio.get_running_loop()
        b = MicroBatcher(run, ThreadPoolExecutor(1), window_ms=0, max_batch_size=1, max_queue=1)
        await b.start()
        with pytest.raises(ValueError, match="bad batch"):
            await b.submit("bad", 1)
        assert await b.submit("ok", 21) == (42, 1)
        first = asyncio.ensure_future(b.submit("slow", 1))
        assert await loop.run_in_executor(None, started.wait, 10)  # the worker is busy with `first`
        second = asyncio.ensure_future(b.submit("ok", 2))
        await asyncio.sleep(0)  # let `second` enqueue (a yield, not a timed wait)
        with pytest.raises(QueueFull):
            await b.submit("ok", 3)
        release.set()
        assert await first == (2, 1) and await second == (4, 1)
        await b.stop()

    asyncio.run(go())


# ---- startup backfill, the serve command, the load script -----------------------------------------------
def test_items_written_before_a_task_was_served_are_embedded_at_startup(tmp_path, runs, resources):
    db = tmp_path / "bf.sqlite"
    both = {"id": "b0", "fields": {"text": "an article", "category": "food", "title": "An Article"}}
    with TestClient(make_app(db, [runs["synth_topic"]], resources)) as c:
        assert add(c, "ned", [both]).status_code == 201
    with TestClient(make_app(db, list(runs.values()), resources)) as c:
        assert gen(c, "ned", task="synth_title").json()["history_size"] == 1


def test_serve_command_creates_tenants_and_registers(tmp_path):
    import typer
    from typer.testing import CliRunner

    from pplug.cli.serve_cmd import register
    from pplug.errors import PPlugError
    from pplug.server.auth import hash_key
    from pplug.server.store import Store

    app = typer.Typer()
    register(app)
    app.command()(lambda: None)  # a second command, so `serve` is a subcommand
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    r = CliRunner().invoke(app, ["serve", "--db", url, "--create-tenant", "acme"])
    assert r.exit_code == 0, r.output
    key = json.loads(r.output)["api_key"]
    store = Store(url)
    assert key.startswith("pplug-") and store.tenant_for(hash_key(key)) is not None
    store.close()
    r = CliRunner().invoke(app, ["serve", "--db", url])
    assert isinstance(r.exception, PPlugError) and "--run" in str(r.exception)


def test_load_script_reports_throughput_and_latency(tmp_path, runs, resources, monkeypatch):
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "scripts" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "load_test", load_test)  # dataclasses look their module up
    spec.loader.exec_module(load_test)
    app = make_app(tmp_path / "l.sqlite", [runs["synth_topic"]], resources)

    async def go():
        async with app.router.lifespan_context(app):
            cfg = load_test.LoadConfig("http://test", KEY_A, clients=2, seconds=0.3, users=2, items=2)
            return await load_test.run_load(cfg, transport=httpx.ASGITransport(app=app))

    report = asyncio.run(go())
    assert report["ok"] > 0 and report["errors"] == 0 and report["task"] == "synth_topic"
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    assert report["backbone_calls"] >= 1 and report["throughput_rps"] > 0
