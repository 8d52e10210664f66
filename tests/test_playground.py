"""The playground page of `pplug serve` and the API it needs: the page and its headers, ``GET /v1/users``,
and ``persona`` on ``/v1/generate`` (own / none / another user's). The browser test lives in
test_playground_browser.py. Tiny models, in-process test client, no network."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from pplug.data.records import HistoryItem, Question
from pplug.server.playground import FILES, STATIC
from test_server import A, B, add, build_runs, err, gen, make_app, topic


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """Tiny PPlug runs (synth_topic, synth_title) and the frozen resources they were built on."""
    from pplug.resources import Resources

    resources = Resources(embedding_cache=None)
    return build_runs(tmp_path_factory.mktemp("pg-runs"), tiny_llama_dir, tiny_bert_dir, resources), resources


@pytest.fixture(scope="module")
def client(tmp_path_factory, served):
    runs, resources = served
    with TestClient(make_app(tmp_path_factory.mktemp("pg") / "pg.sqlite", list(runs.values()), resources)) as c:
        yield c


def test_root_redirects_to_the_page_served_with_strict_headers(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/playground"
    r = client.get("/playground")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "form-action 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/playground/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 1000
    r = client.get("/playground/app.py")
    assert r.status_code == 404 and "no playground file 'app.py'" in err(r)["message"]
    assert "/playground" not in client.get("/openapi.json").json()["paths"]


def test_assets_are_self_contained():
    """No CDN, no inline script or style (the CSP forbids them), the key never in a URL or the console."""
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(FILES)
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text()
    for text in (html, js, (STATIC / "style.css").read_text()):
        assert not re.search(r"(src|href)=\"(https?:)?//", text) and "@import" not in text
    assert "<script>" not in html and " style=" not in html and "onclick" not in html
    assert "localStorage." not in js and "console." not in js and ".innerHTML" not in js
    assert js.count("sessionStorage.setItem") == 1 and 'method="post"' in html and 'method="get"' not in html


def test_list_users_is_per_tenant_and_paged(client):
    for u in ("lu1", "lu2", "lu3"):
        add(client, u, [topic(i) for i in range(int(u[-1]))])
    add(client, "lu-b", [topic(0)], headers=B)
    body = client.get("/v1/users", headers=A).json()
    mine = [u for u in body["users"] if u["user_id"].startswith("lu")]
    assert [(u["user_id"], u["history_size"]) for u in mine] == [("lu1", 1), ("lu2", 2), ("lu3", 3)]
    assert body["total"] == len(body["users"]) and all(u["created_at"] for u in mine)
    page = client.get("/v1/users", headers=A, params={"limit": 1, "offset": body["total"] - 1}).json()
    assert [u["user_id"] for u in page["users"]] == ["lu3"] and page["limit"] == 1
    assert [u["user_id"] for u in client.get("/v1/users", headers=B).json()["users"]] == ["lu-b"]
    assert client.get("/v1/users").status_code == 401


def test_generate_with_no_persona_or_another_users(client):
    ann = [topic(i, c) for i, c in enumerate(["sports", "music", "sports"])]
    bob = [{"id": f"b{i}", "fields": {"text": f"recipe {i} with rice", "category": "food"}} for i in range(2)]
    add(client, "ann", ann)
    add(client, "bob", bob)
    own, none, other = (gen(client, "ann", persona=p).json() for p in ("own", "none", "user:bob"))
    assert own["persona"] == "own" and own["history_size"] == 3
    assert {e["item_id"] for e in own["explanation"]} <= {"i0", "i1", "i2"}
    assert none["persona"] == "none" and none["history_size"] == 0 and none["explanation"] == []
    method = client.app.state.pplug.models["synth-topic"].method
    assert none["output"] == method.predict([Question("q", "note: a cat", [])])[0].output
    assert other["history_size"] == 2 and {e["item_id"] for e in other["explanation"]} <= {"b0", "b1"}
    bobs = gen(client, "bob").json()
    assert (other["output"], other["explanation"]) == (bobs["output"], bobs["explanation"])
    expected = method.predict([Question("q", "note: a cat", [HistoryItem(b["id"], b["fields"]) for b in bob])])[0]
    assert other["output"] == expected.output
    r = gen(client, "ann", persona="user:nobody")
    assert r.status_code == 404 and err(r) == {"type": "not_found", "message": "unknown user 'nobody'",
                                               "param": "persona"}
    r = gen(client, "nobody", persona="none")
    assert r.status_code == 404 and err(r)["param"] == "user_id"
    for bad in ("mine", "user:", "user:a b"):
        r = gen(client, "ann", persona=bad)
        assert r.status_code == 422 and err(r)["param"] == "persona", bad
    r = gen(client, "bob", headers=B, persona="user:ann")  # another tenant's user is unknown
    assert r.status_code == 404
