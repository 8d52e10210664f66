"""Durability of `pplug serve`: SIGKILL the server process during a stream of history writes, restart the server
on the same database (a SQLite file; a database of the throwaway PostgreSQL cluster), and check that every
acknowledged item is there (and every write is all-or-nothing).

The killed server is a real `pplug serve` process; the restarted one is built in this process by the same app
factory (a cold open of the database the killed process left, without paying a second interpreter start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

WRITE_SECONDS = 3.0  # the stream runs at most this long before the kill
KILL_AFTER_ACKS = 40  # ... or is killed once this many writes were acknowledged
ITEMS_PER_WRITE = 3
WRITERS = 2


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory, tiny_llama_dir, tiny_bert_dir) -> Path:
    from pplug.config import RunConfig
    from pplug.resources import Resources
    from pplug.runner import train_run
    from pplug.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("durability-run")
    data = synthesize(root / "data", SynthConfig(n_train_users=4, n_dev_users=2, n_test_users=2, min_profile=3,
                                                 max_profile=5))["synth_topic"]
    cfg = RunConfig(method="pplug", data=str(data))
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = str(tiny_llama_dir), str(tiny_bert_dir)
    cfg.train.max_steps, cfg.train.progress, cfg.train.augment_copies, cfg.train.dev_limit = 1, False, 0, 1
    train_run(cfg, root / "run", Resources(embedding_cache=None))
    return root / "run"


def spawn_server(run: Path, db_url: str) -> subprocess.Popen:
    """Start `pplug serve` on a free loopback port without waiting for it (see ``server_url``)."""
    cmd = [sys.executable, "-m", "pplug.cli.serve_cmd", "--run", str(run), "--db", db_url, "--port", "0",
           "--threads", "1", "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def server_url(proc: subprocess.Popen) -> str:
    """The URL a spawned server prints first; its socket listens before the model loads, so requests wait."""
    line = proc.stdout.readline()
    assert line, f"server did not start (exit code {proc.wait(timeout=30)})"
    return json.loads(line)["url"]


class Writer(threading.Thread):
    """Streams writes of ITEMS_PER_WRITE items for one user until the connection breaks or ``stop`` is set."""

    def __init__(self, url: str, key: str, user: str, acked: list[list[str]], sent: list[list[str]],
                 enough: threading.Event, stop: threading.Event, t0: list[float]):
        super().__init__(daemon=True)
        self.url, self.key, self.user, self.acked, self.sent = url, key, user, acked, sent
        self.enough, self.stop, self.t0 = enough, stop, t0

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as c:
            for seq in range(100_000):
                if self.stop.is_set():
                    return
                ids = [f"{self.user}-{seq}-{k}" for k in range(ITEMS_PER_WRITE)]
                items = [{"id": i, "fields": {"text": f"note {i} about the park", "category": "food"}} for i in ids]
                self.sent.append(ids)
                try:
                    r = c.post(f"/v1/users/{self.user}/items", json={"items": items})
                except httpx.HTTPError:
                    return  # the server died mid-request: this write was not acknowledged
                if r.status_code != 201:
                    return
                self.acked.append(ids)
                self.t0[0] = self.t0[0] or time.monotonic()
                if len(self.acked) >= KILL_AFTER_ACKS or time.monotonic() - self.t0[0] >= WRITE_SECONDS:
                    self.enough.set()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_acknowledged_writes_survive_sigkill(request, tmp_path, topic_run, db):
    from fastapi.testclient import TestClient

    from pplug.cli.serve_cmd import create_tenant_key
    from pplug.resources import Resources
    from pplug.server import ServerConfig, create_app

    db_url = (f"sqlite:///{tmp_path / 'durable.sqlite'}" if db == "sqlite"
              else request.getfixturevalue("postgres").create_database("durable"))
    key = create_tenant_key(db_url, "acme")
    acked: list[list[str]] = []  # list.append is atomic: shared by the writers
    sent: list[list[str]] = []
    enough, stop, t0 = threading.Event(), threading.Event(), [0.0]
    proc = spawn_server(topic_run, db_url)
    url = server_url(proc)
    try:
        writers = [Writer(url, key, f"user{w}", acked, sent, enough, stop, t0) for w in range(WRITERS)]
        for w in writers:
            w.start()
        assert enough.wait(timeout=120), "no writes were acknowledged"
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writers are still sending
        assert proc.wait(timeout=30) == -signal.SIGKILL
        stop.set()
        for w in writers:
            w.join(timeout=30)
            assert not w.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stored: set[str] = set()
    app = create_app(ServerConfig(runs=[str(topic_run)], db_url=db_url), Resources(embedding_cache=None))
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        for w in range(WRITERS):
            r = c.get(f"/v1/users/user{w}/items", params={"limit": 1000})
            assert r.status_code == 200, r.text
            stored |= {it["id"] for it in r.json()["items"]}
        assert c.post("/v1/generate", json={"user_id": "user0", "task": "synth_topic",
                                            "input": "note: hi"}).status_code == 200
    acked_ids = {i for ids in acked for i in ids}
    assert len(acked) >= 2 and acked_ids <= stored, f"lost acknowledged items: {sorted(acked_ids - stored)[:5]}"
    for ids in sent:  # a write is all or nothing
        assert len(set(ids) & stored) in (0, len(ids))
    assert stored <= {i for ids in sent for i in ids}
