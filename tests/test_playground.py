"""The playground page of `pplug serve` and the API it needs: the page and its headers, ``GET /v1/users``,
and ``persona`` on ``/v1/generate`` (own / none / another user's) through the in-process test client; then
the page itself in a real headless Chromium against `pplug serve` on loopback (screenshots under
test-artifacts/playground/). Tiny models, no network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pplug.data.records import HistoryItem, Question
from pplug.server.playground import FILES, STATIC
from test_server import ROOT, A, B, add, build_runs, err, gen, make_app, topic


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
    for name, kind in (("app.js", "text/javascript"), ("api.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/playground/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 1000
    r = client.get("/playground/app.py")
    assert r.status_code == 404 and "no playground file 'app.py'" in err(r)["message"]
    assert "/playground" not in client.get("/openapi.json").json()["paths"]


def test_assets_are_self_contained():
    """No CDN, no inline script or style (the CSP forbids them), the key never in a URL or the console."""
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(FILES)
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text() + (STATIC / "api.js").read_text()
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


# ---- the page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium) -------------
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("PPLUG_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "playground"


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"PLAYGROUND BROWSER TEST SKIPPED: missing {', '.join(missing)}; run `make browser-deps` (as root)"
        warnings.warn(reason, stacklevel=2)
        print(reason, file=sys.stderr)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    """`pplug serve` in a subprocess on a free loopback port with the tiny runs; yields (url, key, log path)."""
    from pplug.cli.serve_cmd import create_tenant_key

    runs, _ = served
    tmp = tmp_path_factory.mktemp("pg-serve")
    db = f"sqlite:///{tmp / 'serve.sqlite'}"
    key = create_tenant_key(db, "demo")
    log_path = tmp / "serve.log"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                        "PPLUG_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pplug.cli.serve_cmd", "--db", db, "--host", "127.0.0.1", "--port", "0",
           "--threads", "1", "--batch-window-ms", "20",
           "--max-input-chars", "200", *[a for r in runs.values() for a in ("--run", str(r))]]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            first = proc.stdout.readline()  # {"url": ..., "db": ...}: printed once the socket is bound
            assert first, f"pplug serve exited: {log_path.read_text()[-2000:]}"
            url = json.loads(first)["url"]
            deadline = time.monotonic() + 180  # bounded wait for the models to load
            while True:
                assert proc.poll() is None, f"pplug serve exited: {log_path.read_text()[-2000:]}"
                try:
                    if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "pplug serve did not answer /healthz within 180 s"
                time.sleep(0.2)
            yield url, key, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser(server):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="pplug-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver, name: str, width: int = 1280) -> Path:
    """A full-page screenshot (the window grown to the page height) under test-artifacts/playground/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(width, 1000)
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height + 120, 600), 6000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _wait(driver, condition, what: str, seconds: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the page re-renders lists, so an element found a moment ago may be gone: look again
        return WebDriverWait(driver, seconds, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))
    except TimeoutException:
        _shot(driver, "timeout")
        notice = driver.find_element("id", "notice").text
        raise AssertionError(f"waited {seconds} s for {what}; notice on the page: {notice!r}") from None


def _notice(driver, *parts: str) -> str:
    _wait(driver, lambda d: all(p in d.find_element("id", "notice").text for p in parts), f"a notice with {parts}")
    return driver.find_element("id", "notice").text


def _rows(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#items tbody tr')].map(r => r.dataset.item)")


PARSE = """const [text, done] = arguments;
import("/playground/api.js").then((m) => {
  try { done(m.parseItems(text)); } catch (e) { done("error: " + e.message); }
});"""


def test_pasted_items_parse_in_the_browser(server, browser):
    """The paste box's formats, parsed by the page's own module in the browser."""
    browser.get(server[0] + "/playground")
    item = {"id": "x", "fields": {"text": "t", "category": "c"}}
    for pasted, expected in (
            (json.dumps([item]), [item]),
            (json.dumps({"items": [item]}), [item]),
            (json.dumps(item), [item]),
            ('{"id": 3, "text": "t", "category": "c", "date": "2024"}\n\n{"text": "u", "category": "d"}',
             [{"id": "3", "fields": {"text": "t", "category": "c"}, "date": "2024"},
              {"fields": {"text": "u", "category": "d"}}]),
            ("", "error: Nothing to add: paste JSON or JSONL items, or load a file."),
            ("[]", "error: The pasted list is empty."),
            ('{"text": "t"}\nnot json', "error: Line 2 is not valid JSON"),
            ("[1]", "error: Item 1 is not a JSON object.")):
        got = browser.execute_async_script(PARSE, pasted)
        assert got == expected if isinstance(expected, list) else got.startswith(expected), (pasted, got)


def test_playground_in_a_real_browser(server, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    url, key, log_path = server
    d, by_id = browser, (lambda i: browser.find_element("id", i))
    d.get(url + "/")
    assert d.current_url == url + "/playground" and d.title == "pplug playground"
    active = lambda: d.switch_to.active_element  # noqa: E731
    d.find_element("tag name", "body").send_keys(Keys.TAB)  # keyboard: the skip link, then the key form
    assert active().text == "Skip to generate"
    for expected in ("key", "connect", "forget"):
        active().send_keys(Keys.TAB)
        assert active().get_attribute("id") == expected

    # a wrong key: a clear message, and the key is not kept
    by_id("key").send_keys("pplug-not-a-real-key", Keys.ENTER)
    text = _notice(d, "Error 401", "rejected the API key", "invalid API key")
    assert by_id("conn").text == "not connected" and "pplug-not-a-real-key" not in text
    assert d.execute_script("return sessionStorage.length") == 0
    _shot(d, "wrong-key")

    # the right key, typed and submitted with the keyboard
    by_id("key").send_keys(key, Keys.ENTER)
    _wait(d, lambda d: by_id("conn").text == "connected: 2 task(s)", "the connection")
    assert d.execute_script("return sessionStorage.getItem('pplug.apiKey')") == key
    assert d.execute_script("return localStorage.length") == 0 and key not in d.current_url
    assert by_id("key").get_attribute("value") == ""
    Select(by_id("task")).select_by_value("synth_topic")

    # users: create ann, one item through the form, four pasted as JSONL; bob from a pasted JSON list
    by_id("new-user").send_keys("ann", Keys.ENTER)
    _notice(d, "'ann' is saved on the server when you add her first history item")
    fields = {a.get_attribute("data-field"): a for a in d.find_elements("css selector", "#item-fields textarea")}
    assert sorted(fields) == ["category", "text"]
    fields["text"].send_keys("note about the match the team won in the park")
    fields["category"].send_keys("sports")
    by_id("item-id").send_keys("form0")
    d.find_element("css selector", "#item-form button[type=submit]").click()
    _wait(d, lambda d: _rows(d) == ["form0"], "the item written through the form")
    d.find_element("css selector", "#bulk-form").find_element("xpath", "..").find_element("tag name", "summary").click()
    jsonl = "\n".join(json.dumps({"id": f"p{i}", "text": f"note {i} on the cup final and the team", "category": c})
                      for i, c in enumerate(["sports", "sports", "music", "sports"]))
    by_id("bulk").send_keys(jsonl)
    d.find_element("css selector", "#bulk-form button[type=submit]").click()
    _wait(d, lambda d: _rows(d) == ["form0", "p0", "p1", "p2", "p3"], "the pasted JSONL items")
    _notice(d, "Added 4 item(s) to 'ann': 5 in her history")
    by_id("new-user").send_keys("bob", Keys.ENTER)
    bob = {"id": "q7", "input": "...", "profile": [{"id": f"b{i}", "date": f"2024-01-0{i + 1}", "category": "food",
                                                     "text": f"recipe {i} with rice and beans"} for i in range(3)]}
    by_id("bulk").send_keys(json.dumps(bob))  # a LaMP question: its profile items
    d.find_element("css selector", "#bulk-form button[type=submit]").click()
    _wait(d, lambda d: _rows(d) == ["b0", "b1", "b2"], "bob's pasted LaMP profile")
    assert "2024-01-02" in by_id("items").text

    # back to ann with the keyboard; delete one of her items
    ann = d.find_element("css selector", "button.user[data-user=ann]")
    d.execute_script("arguments[0].focus()", ann)
    d.switch_to.active_element.send_keys(Keys.ENTER)
    pressed = "return document.querySelector('button.user[aria-pressed=true]').dataset.user"
    _wait(d, lambda d: _rows(d) == ["form0", "p0", "p1", "p2", "p3"] and d.execute_script(pressed) == "ann",
          "ann's history")
    d.find_element("css selector", "#items tr[data-item=p2] button").click()
    _wait(d, lambda d: _rows(d) == ["form0", "p0", "p1", "p3"], "the deleted item to go")
    users = "return [...document.querySelectorAll('#user-list button')].map(b => b.textContent)"
    _wait(d, lambda d: d.execute_script(users) == ["ann (4 items)", "bob (3 items)"], "the users' new sizes")
    assert Select(by_id("other")).first_selected_option.get_attribute("value") == "bob"

    # generate: Ctrl+Enter in the input; own persona, no persona and bob's persona side by side
    by_id("input").send_keys("note: the final match of the cup", Keys.CONTROL, Keys.ENTER)
    _wait(d, lambda d: all(d.find_elements("css selector", f"#out-{c} .output") for c in ("own", "none", "other")),
          "the three outputs")
    own, none, other = (by_id(f"out-{c}") for c in ("own", "none", "other"))
    assert "Own persona: ann" in own.text and "Persona of bob" in other.text and "No persona" in none.text
    for card, n in ((own, 4), (none, 0), (other, 3)):
        assert re.search(rf"server [\d.]+ ms · round trip \d+ ms · batch of \d+ · {n} history item", card.text)
    bars = own.find_elements("css selector", ".bar-row")
    assert 1 <= len(bars) <= 3 and not none.find_elements("css selector", ".bar-row")
    for row in bars:
        assert row.find_element("css selector", ".bar-id").text in {"form0", "p0", "p1", "p3"}
        assert row.find_element("css selector", ".bar").size["width"] > 0
        assert "team" in row.find_element("css selector", ".bar-text").text  # the item, readable
    assert {r.find_element("css selector", ".bar-id").text for r in other.find_elements("css selector", ".bar-row")} \
        <= {"b0", "b1", "b2"}
    assert by_id("notice").is_displayed() is False
    _wait(d, lambda d: "/v1/generate" in by_id("metrics-table").text, "the generate route in the metrics")
    _shot(d, "generated")
    _shot(d, "generated-narrow", width=400)
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
        "the page scrolls sideways at 400 px"
    d.set_window_size(1280, 1000)

    # an API error becomes a readable message on the page (and in the failing cards)
    by_id("input").send_keys(" and more" * 30)  # past the server's --max-input-chars 200
    by_id("gen-button").click()
    _notice(d, "Error 413: input has", "the limit is 200 (max_input_chars)")
    _wait(d, lambda d: "max_input_chars" in by_id("out-own").text, "the error in the own-persona card")

    # forgetting the key: API calls say to paste one
    by_id("forget").click()
    assert d.execute_script("return sessionStorage.length") == 0
    by_id("refresh-users").click()
    _notice(d, "Paste your API key above and press Connect first.")
    by_id("refresh-metrics").click()
    _wait(d, lambda d: "Metrics unavailable: Paste your API key" in by_id("metrics-error").text, "the metrics error")
    assert key not in log_path.read_text()  # no secret in the server's log



def test_user_list_offset_is_bounded(client):
    """GET /v1/users refuses offsets past max_list_offset (2**63 used to overflow SQLite) like the item list."""
    for q in ("offset=9223372036854775808", "offset=1000001", "limit=0", "limit=true"):
        r = client.get(f"/v1/users?{q}", headers=A)
        assert r.status_code == 422, (q, r.text)
