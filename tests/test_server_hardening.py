"""Server hardening (issue 15): cost cap, deadlines and cancellation, fair batching, rate limits, bounded
bodies (chunked too) checked after the key, strict input, key management, replica-safe writes, metrics,
private database files, query-free logs, and OpenAI streaming with the official client. No sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from pplug.server.store import Store
from test_server import KEY_A, A, add, build_runs, err, gen, make_app, topic


@pytest.fixture(scope="module")
def resources():
    from pplug.resources import Resources

    return Resources(embedding_cache=None)


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory, tiny_llama_dir, tiny_bert_dir, resources) -> Path:
    return build_runs(tmp_path_factory.mktemp("hardening-runs"), tiny_llama_dir, tiny_bert_dir, resources,
                      tasks=("synth_topic",))["synth_topic"]


@pytest.fixture(scope="module")
def client(tmp_path_factory, topic_run, resources):
    with TestClient(make_app(tmp_path_factory.mktemp("h-db") / "h.sqlite", [topic_run], resources,
                             max_request_cost=2_000)) as c:
        yield c


def app_with(tmp_path: Path, topic_run: Path, resources, **overrides):
    return make_app(tmp_path / "x.sqlite", [topic_run], resources, **overrides)


# ---- 1. cost cap, deadline, cancellation, fairness, rate limits ---------------------------------------
def test_costly_generate_is_413_naming_the_cost_and_limit(client):
    add(client, "c1", [topic(0)])
    assert gen(client, "c1", max_new_tokens=4).status_code == 200
    r = gen(client, "c1", input="note " * 40, num_beams=8, max_new_tokens=16)
    assert r.status_code == 413 and err(r)["param"] == "input"
    assert "max_request_cost" in err(r)["message"] and "8 beams x 16 new tokens" in err(r)["message"]


def _blocked_batcher(max_batch_size: int = 1, window_ms: float = 0, **kw):
    """A batcher whose first job ('hold') blocks the model thread until ``release`` is set."""
    from pplug.server.batching import MicroBatcher

    started, release, seen = threading.Event(), threading.Event(), []

    def run(key, payloads):
        if key == "hold":
            started.set()
            release.wait(30)
        seen.append(list(payloads))
        return payloads

    return MicroBatcher(run, ThreadPoolExecutor(1), window_ms, max_batch_size, **kw), started, release, seen


def test_batches_are_fair_across_tenants():
    async def go():
        b, started, release, seen = _blocked_batcher(max_batch_size=2)
        await b.start()
        loop = asyncio.get_running_loop()
        hold = asyncio.ensure_future(b.submit("hold", "h", tenant="a"))
        assert await loop.run_in_executor(None, started.wait, 10)
        flood = [asyncio.ensure_future(b.submit("k", f"a{i}", tenant="a")) for i in range(5)]
        late = asyncio.ensure_future(b.submit("k", "b0", tenant="b"))
        await asyncio.sleep(0)  # let them enqueue (a yield, not a timed wait)
        release.set()
        await asyncio.gather(hold, late, *flood)
        await b.stop()
        return seen

    seen = asyncio.run(go())
    assert seen[1] == ["a0", "b0"]  # b's one request rides the next batch, not after a's five
    assert seen[2:] == [["a1", "a2"], ["a3", "a4"]]


def test_per_tenant_queue_cap_is_429_and_others_still_get_in():
    from pplug.server.batching import TenantQueueFull

    async def go():
        b, started, release, _ = _blocked_batcher(max_per_tenant=1)
        await b.start()
        hold = asyncio.ensure_future(b.submit("hold", "h", tenant="a"))
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        first = asyncio.ensure_future(b.submit("k", 1, tenant="a"))
        await asyncio.sleep(0)
        with pytest.raises(TenantQueueFull):
            await b.submit("k", 2, tenant="a")
        other = asyncio.ensure_future(b.submit("k", 3, tenant="b"))
        release.set()
        assert [r for r, _ in await asyncio.gather(hold, first, other)] == ["h", 1, 3]
        await b.stop()

    asyncio.run(go())


def test_deadline_drops_a_queued_job_and_stops_a_running_batch():
    from pplug.cancel import should_stop
    from pplug.server.batching import MicroBatcher

    stopped, seen = threading.Event(), []

    def run(key, payloads):
        seen.append(key)
        if key == "long":  # a generation that only ends when told to stop
            while not should_stop():
                threading.Event().wait(0.001)
            stopped.set()
        return payloads

    async def go():
        b = MicroBatcher(run, ThreadPoolExecutor(1), 0, 1)
        await b.start()
        long = asyncio.ensure_future(b.submit("long", 1, timeout=0.2))
        queued = asyncio.ensure_future(b.submit("queued", 2, timeout=0.1))
        for fut in (long, queued):
            with pytest.raises(TimeoutError):
                await fut
        assert await b.submit("after", 3) == (3, 1)
        await b.stop()

    asyncio.run(go())
    assert stopped.is_set() and seen == ["long", "after"]  # 'queued' never ran


def test_generate_listens_to_stop_when(tiny_backbone_dir):
    from pplug.backbones import BackboneConfig, PromptParts, load_backbone
    from pplug.cancel import stop_when

    bb = load_backbone(BackboneConfig(name_or_path=str(tiny_backbone_dir)))
    calls = []
    with torch.no_grad(), stop_when(lambda: calls.append(1) or True):
        bb.generate(bb.build([PromptParts(text="the cat sat on the mat")]), max_new_tokens=8)
    assert len(calls) == 1  # asked once, after the first new token, and stopped


GONE = {"/v1/generate": {"user_id": "u", "task": "synth_topic", "input": "gone"},
        "/v1/chat/completions": {"model": "synth_topic", "user": "u", "stream": True,
                                 "messages": [{"role": "user", "content": "gone"}]}}


@pytest.mark.parametrize("path", list(GONE))
def test_client_disconnect_cancels_queued_generation(tmp_path, topic_run, resources, monkeypatch, path):
    app = app_with(tmp_path, topic_run, resources, max_batch_size=1, batch_window_ms=0)
    st = app.state.pplug
    method = st.models["synth-topic"].method
    inputs, real = [], method.predict
    monkeypatch.setattr(method, "predict", lambda qs, v=None: inputs.extend(q.input for q in qs) or real(qs, v))
    release = threading.Event()

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                         headers=A) as c:
                (await c.post("/v1/users/u/items", json={"items": [topic(0)]})).raise_for_status()
                st.model_executor.submit(release.wait, 30)  # the model thread is busy
                body = json.dumps(GONE[path]).encode()
                sent, replies = [], []

                async def receive():
                    if not sent:
                        sent.append(1)
                        return {"type": "http.request", "body": body, "more_body": False}
                    return {"type": "http.disconnect"}  # the client gave up

                async def send(message):
                    replies.append(message)

                scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                         "query_string": b"", "headers": [(b"authorization", f"Bearer {KEY_A}".encode()),
                                                          (b"content-type", b"application/json")],
                         "client": ("127.0.0.1", 1), "server": ("t", 80), "scheme": "http", "http_version": "1.1",
                         "root_path": "", "state": {}}
                await app(scope, receive, send)
                release.set()
                ok = await c.post("/v1/generate", json={"user_id": "u", "task": "synth_topic", "input": "stays"})
                return replies[0]["status"], ok.status_code

    status, ok = asyncio.run(go())
    assert status == (499 if path == "/v1/generate" else 200) and ok == 200 and inputs == ["stays"]


def test_tenant_rate_limit_is_429_with_retry_after(tmp_path, topic_run, resources):
    with TestClient(app_with(tmp_path, topic_run, resources, rate_limit="3/minute")) as c:
        codes = [c.get("/v1/tasks", headers=A).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/tasks", headers=A)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60 and "rate_limit" in err(r)["message"]
        assert c.get("/v1/tasks", headers={"Authorization": "Bearer test-key-tenant-b"}).status_code == 200


def test_wrong_keys_are_throttled_per_address(tmp_path, topic_run, resources):
    with TestClient(app_with(tmp_path, topic_run, resources, auth_fail_limit="3/minute")) as c:
        bad = {"Authorization": "Bearer wrong"}
        assert [c.get("/v1/tasks", headers=bad).status_code for _ in range(4)] == [401, 401, 401, 429]
        assert "retry-after" in c.get("/v1/tasks", headers=bad).headers


# ---- 2. bodies: key first, size while streaming, item count before validation ------------------------------
def test_key_is_checked_before_the_body_is_read(client):
    chunks_read = []

    def body():
        for _ in range(50):
            chunks_read.append(1)
            yield b"x" * 1000

    r = client.post("/v1/users/u/items", content=body())  # chunked, no key
    assert r.status_code == 401 and len(chunks_read) <= 2  # the transport may pull one chunk ahead


def test_chunked_body_over_the_limit_is_413(client):
    r = client.post("/v1/users/u/items", headers=A | {"content-type": "application/json"},
                    content=iter([b'{"items": [' + b" " * 15_000, b" " * 15_000 + b"]}"]))
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "max_body_bytes" in err(r)["message"]


def test_item_count_cap_comes_before_item_validation(client):
    r = client.post("/v1/users/u/items", headers=A, json={"items": [{}] * 1000})
    assert r.status_code == 413 and "1000 items" in err(r)["message"] and err(r)["param"] == "items"


# ---- 5-7. strict input -------------------------------------------------------------------------------------
def test_user_ids_must_be_utf8_and_are_nfc_normalised(client):
    for path in ("/v1/users/a%FFb/items", "/v1/users/a%ED%A0%80b"):
        r = client.get(path, headers=A)
        assert r.status_code == 422 and "UTF-8" in err(r)["message"], path
    assert add(client, "caf\u00e9", [topic(0)]).status_code == 201
    assert client.get("/v1/users/cafe\u0301", headers=A).json()["history_size"] == 1  # decomposed = composed
    assert gen(client, "cafe\u0301").json()["user_id"] == "caf\u00e9"


@pytest.mark.parametrize("item,field", [
    ({"id": "s", "fields": {"text": "t\ud800x", "category": "food"}}, "items[0].fields.text"),
    ({"id": "n", "fields": {"text": "t", "category": "food", "score": float("nan")}}, "items[0].fields.score"),
    ({"id": "i", "fields": {"text": "t", "category": "food", "score": float("inf")}}, "items[0].fields.score"),
    ({"id": "d", "fields": {"text": "t", "category": "food"}, "date": "yesterday"}, "items[0].date"),
    ({"id": "m", "fields": {"text": "t", "category": "food"}, "date": "2021-13-01"}, "items[0].date"),
])
def test_bad_item_values_are_422(client, item, field):
    content = json.dumps({"items": [item]}, allow_nan=True).encode()  # NaN/Infinity as Python's json writes them
    r = client.post("/v1/users/strict/items", headers=A | {"content-type": "application/json"}, content=content)
    assert r.status_code == 422 and err(r)["param"] == field, r.text


def test_good_dates_and_scalars_are_kept(client):
    item = {"id": "g", "fields": {"text": "t", "category": "food", "n": 2, "x": 0.5, "b": True}, "date": "2021-11"}
    assert add(client, "good", [item]).status_code == 201
    assert client.get("/v1/users/good/items", headers=A).json()["items"][0] == item


@pytest.mark.parametrize("change,param", [({"max_new_tokens": True}, "max_new_tokens"),
                                          ({"max_new_tokens": "5"}, "max_new_tokens"),
                                          ({"num_beams": 2.0}, "num_beams"),
                                          ({"input": "a\udc00"}, "input")])
def test_generate_types_are_strict(client, change, param):
    body = {"user_id": "c1", "task": "synth_topic", "input": "note: a cat"} | change
    r = client.post("/v1/generate", headers=A | {"content-type": "application/json"}, content=json.dumps(body))
    assert r.status_code == 422 and err(r)["param"] == param, r.text


def test_offset_and_limit_are_bounded(client):
    add(client, "pager", [topic(0)])
    for q in ("offset=9223372036854775808", "offset=1000001", "limit=0", "limit=1001", "limit=true"):
        r = client.get(f"/v1/users/pager/items?{q}", headers=A)
        assert r.status_code == 422, (q, r.text)


# ---- 3. key management ------------------------------------------------------------------------------------
def test_key_management_commands(tmp_path, topic_run, resources):
    from pplug.cli.serve_cmd import manage_keys
    from pplug.errors import PPlugError

    db = tmp_path / "keys.sqlite"
    url = f"sqlite:///{db}"
    made = manage_keys(url, create_tenant="acme")
    listed = manage_keys(url, list_keys=True)
    assert [k["key_id"] for k in listed] == [made["key_id"]] and listed[0]["tenant"] == "acme"
    assert made["api_key"] not in json.dumps(listed) and listed[0]["fingerprint"].startswith("sha256:")
    for bad in ("", "x" * 300, "a b", "../x"):
        with pytest.raises(PPlugError, match="invalid tenant name"):
            manage_keys(url, create_tenant=bad)
    rotated = manage_keys(url, rotate_key=made["key_id"])
    key = {"Authorization": f"Bearer {rotated['api_key']}"}
    with TestClient(make_app(db, [topic_run], resources)) as c:
        assert c.get("/v1/tasks", headers={"Authorization": f"Bearer {made['api_key']}"}).status_code == 401
        assert add(c, "u1", [topic(0), topic(1)], headers=key).status_code == 201
        manage_keys(url, revoke_key=rotated["key_id"])
        assert c.get("/v1/tasks", headers=key).status_code == 401
    with pytest.raises(PPlugError, match="unknown key id"):
        manage_keys(url, revoke_key=rotated["key_id"])
    gone = manage_keys(url, delete_tenant="acme")
    assert gone["deleted"] == {"users": 1, "items": 2, "keys": 0}
    store = Store(url)
    with store.engine.connect() as con:
        from sqlalchemy import text

        counts = [con.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
                  for t in ("users", "history_items", "item_embeddings", "tenants")]
    store.close()
    assert counts == [0, 0, 0, 2]  # the bootstrap tenants a and b of make_app remain


def test_serve_flags_for_keys(tmp_path):
    import typer
    from typer.testing import CliRunner

    from pplug.cli.serve_cmd import register

    app = typer.Typer()
    register(app)
    app.command()(lambda: None)
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    key_id = json.loads(CliRunner().invoke(app, ["serve", "--db", url, "--create-tenant", "t1"]).output)["key_id"]
    r = CliRunner().invoke(app, ["serve", "--db", url, "--list-keys"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["key_id"] == key_id
    r = CliRunner().invoke(app, ["serve", "--db", url, "--delete-tenant", "t1"])
    assert "--yes" in str(r.exception)
    r = CliRunner().invoke(app, ["serve", "--db", url, "--delete-tenant", "t1", "--yes"])
    assert r.exit_code == 0 and json.loads(r.output)["deleted"]["keys"] == 1


# ---- 4. replicas --------------------------------------------------------------------------------------------
def test_two_replicas_on_one_database_create_users_concurrently(tmp_path, topic_run, resources):
    db = tmp_path / "shared.sqlite"
    apps = [make_app(db, [topic_run], resources), make_app(db, [topic_run], resources)]
    with TestClient(apps[0]) as c0, TestClient(apps[1]) as c1:
        start, codes = threading.Barrier(8), []

        def writer(c: TestClient, k: int) -> None:
            start.wait()
            codes.extend(add(c, f"new{u}", [topic(k)]).status_code for u in range(12))

        threads = [threading.Thread(target=writer, args=((c0, c1)[k % 2], k)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [201] * 96
        assert all(c0.get(f"/v1/users/new{u}", headers=A).json()["history_size"] == 8 for u in range(12))


# ---- 8. operations ---------------------------------------------------------------------------------------------
def test_metrics_by_method_and_optional_key(tmp_path, topic_run, resources):
    with TestClient(app_with(tmp_path, topic_run, resources, metrics_key="m-secret")) as c:
        add(c, "mu", [topic(0)])
        c.get("/v1/users/mu/items", headers=A)
        c.post("/v1/users/mu/items", headers={"Authorization": "Bearer nope"}, json={})
        assert c.get("/metrics").status_code == 401
        text = c.get("/metrics", headers={"Authorization": "Bearer m-secret"}).text
        assert 'pplug_request_seconds_count{method="GET",route="/v1/users/{user_id}/items"} 1' in text
        assert 'pplug_request_seconds_count{method="POST",route="/v1/users/{user_id}/items"} 2' in text
        assert 'pplug_requests_total{method="POST",route="/v1/users/{user_id}/items",status="401"} 1' in text


def test_database_files_are_private(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db' / 'p.sqlite'}")
    store.add_key("t", "0" * 64)
    store.close()
    files = list((tmp_path / "db").iterdir())
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files), [oct(f.stat().st_mode) for f in files]


def test_access_log_drops_query_strings():
    from pplug.server.logs import DropQueryString

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/v1/users/u/items?offset=3&token=x", "1.1", 200), None)
    assert DropQueryString().filter(record) and "?" not in record.getMessage()


# ---- 9. streaming with the official client -------------------------------------------------------------------
def test_openai_client_streaming_and_not(client):
    openai = pytest.importorskip("openai")
    add(client, "oa", [topic(0), topic(1, "music")])
    oa = openai.OpenAI(api_key=KEY_A, base_url=f"{client.base_url}/v1", http_client=client, max_retries=0)
    messages = [{"role": "user", "content": "note: a cat"}]
    plain = oa.chat.completions.create(model="synth_topic", user="oa", messages=messages, max_tokens=4)
    stream = oa.chat.completions.create(model="synth_topic", user="oa", messages=messages, max_tokens=4, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="synth_topic", user="nobody", messages=messages, stream=True)


def test_openai_stream_reports_a_failed_generation(client, monkeypatch):
    openai = pytest.importorskip("openai")
    add(client, "oa2", [topic(0)])
    method = client.app.state.pplug.models["synth-topic"].method

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(method, "predict", boom)
    oa = openai.OpenAI(api_key=KEY_A, base_url=f"{client.base_url}/v1", http_client=client, max_retries=0)
    stream = oa.chat.completions.create(model="synth_topic", user="oa2", stream=True,
                                        messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIError, match="out of memory"):
        list(stream)


def test_abuse_probe_refuses_non_loopback_urls(monkeypatch):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "abuse_probe.py"
    spec = importlib.util.spec_from_file_location("abuse_probe", path)
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "abuse_probe", probe)
    spec.loader.exec_module(probe)
    assert len(probe.PROBES) >= 14
    with pytest.raises(SystemExit) as e:
        probe.main(["--url", "http://10.1.2.3:8000", "--keys", "a,b,c,d"])
    assert e.value.code == 2
