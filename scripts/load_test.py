"""Bounded load test of a running ``pplug serve`` on loopback: N concurrent clients for S seconds.

Prints JSON: throughput, p50/p95 latency, error count and the server's mean batch size.

    python scripts/load_test.py --url http://127.0.0.1:8000 --key KEY --clients 8 --seconds 10
    python scripts/load_test.py --spawn-run RUN --clients 8 --seconds 10   # starts the server twice:
                                                                            # batching on, then off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

WORDS = ("the cat sat on the mat and the dog ran in the park researchers tested a new battery design that "
         "charges in minutes sports music science travel food politics").split()


@dataclass
class LoadConfig:
    url: str  # server base URL
    key: str  # tenant API key
    clients: int = 8  # concurrent clients, each sending one request at a time
    seconds: float = 10.0  # sending stops after this; in-flight requests finish (bounded by timeout)
    users: int = 32  # distinct users (each gets history items first)
    items: int = 8  # history items per user
    task: str | None = None  # served task (default: the first)
    timeout: float = 60.0  # per-request timeout in seconds
    seed: int = 0


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    samples: list[str] = field(default_factory=list)  # a few error messages


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


async def setup_users(client: httpx.AsyncClient, cfg: LoadConfig, task: dict[str, Any]) -> None:
    """Give every load-test user ``cfg.items`` history items with the task's fields."""
    rng = random.Random(cfg.seed)
    for u in range(cfg.users):
        items = [{"id": f"it{i}", "fields": {f: _text(rng, 8) for f in task["item_fields"]}}
                 for i in range(cfg.items)]
        r = await client.post(f"/v1/users/load-{u}/items", json={"items": items})
        r.raise_for_status()


async def _client(client: httpx.AsyncClient, cfg: LoadConfig, task: str, deadline: float, seed: int,
                  tally: Tally) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        body = {"user_id": f"load-{rng.randrange(cfg.users)}", "task": task, "input": f"note: {_text(rng, 16)}"}
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/generate", json=body)
            ok, msg = r.status_code == 200, f"{r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            ok, msg = False, f"{type(e).__name__}: {e}"
        if ok:
            tally.latencies.append(time.perf_counter() - t0)
        else:
            tally.errors += 1
            if len(tally.samples) < 5:
                tally.samples.append(msg)


async def run_load(cfg: LoadConfig, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """Set up users, run the clients for ``cfg.seconds``, return the report (``transport``: tests)."""
    limits = httpx.Limits(max_connections=cfg.clients + 1, max_keepalive_connections=cfg.clients + 1)
    headers = {"Authorization": f"Bearer {cfg.key}"}
    async with httpx.AsyncClient(base_url=cfg.url, headers=headers, timeout=cfg.timeout, limits=limits,
                                 transport=transport) as client:
        tasks = (await client.get("/v1/tasks")).raise_for_status().json()
        task = next((t for t in tasks if cfg.task in (None, t["name"])), None)
        if task is None:
            raise SystemExit(f"task '{cfg.task}' is not served; served: {[t['name'] for t in tasks]}")
        await setup_users(client, cfg, task)
        before = (await client.get("/metrics", params={"format": "json"})).json()
        tally = Tally()
        t0 = time.perf_counter()
        await asyncio.gather(*[_client(client, cfg, task["name"], t0 + cfg.seconds, cfg.seed + 1 + i, tally)
                               for i in range(cfg.clients)])
        wall = time.perf_counter() - t0
        after = (await client.get("/metrics", params={"format": "json"})).json()
    batches = after["batches"] - before["batches"]
    lat = [x * 1000 for x in tally.latencies]
    return {"clients": cfg.clients, "seconds": round(wall, 2), "task": task["name"],
            "requests": len(lat) + tally.errors, "ok": len(lat), "errors": tally.errors,
            "throughput_rps": round(len(lat) / wall, 2),
            "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                           "mean": round(sum(lat) / len(lat), 1), "max": round(max(lat), 1)} if lat else None,
            "backbone_calls": batches,
            "mean_batch_size": round((after["batched_requests"] - before["batched_requests"]) / max(1, batches), 2),
            "error_samples": tally.samples}


def spawn(run: list[str], db_url: str, window_ms: float, max_batch: int, threads: int | None,
          extra: list[str]) -> tuple[subprocess.Popen, str]:
    """Start ``pplug serve`` on a free loopback port; returns the process and its URL (it may still be loading:
    connections wait in the listen backlog)."""
    cmd = [sys.executable, "-m", "pplug.cli.serve_cmd", "--db", db_url, "--host", "127.0.0.1", "--port", "0",
           "--batch-window-ms", str(window_ms), "--max-batch-size", str(max_batch), "--log-level", "warning",
           *[a for r in run for a in ("--run", r)], *extra]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.wait(timeout=30)
        raise SystemExit(f"the server did not start (exit code {proc.returncode})")
    return proc, json.loads(line)["url"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn the server with batching on, then off, run the same load on each, and compare."""
    from pplug.cli.serve_cmd import create_tenant_key

    out: dict[str, Any] = {}
    modes = {"batching_on": (args.batch_window_ms, args.max_batch_size), "batching_off": (0.0, 1)}
    with tempfile.TemporaryDirectory(prefix="pplug-load-") as tmp:
        for name, (window, max_batch) in modes.items():
            db = f"sqlite:///{Path(tmp) / (name + '.sqlite')}"
            key = create_tenant_key(db, "load-test")
            proc, url = spawn(args.spawn_run, db, window, max_batch, args.threads, [])
            try:
                httpx.get(f"{url}/healthz", timeout=300).raise_for_status()  # waits while the model loads
                cfg = LoadConfig(url, key, args.clients, args.seconds, args.users, args.items, args.task, args.timeout)
                out[name] = asyncio.run(run_load(cfg)) | {"batch_window_ms": window, "max_batch_size": max_batch}
            finally:
                stop(proc)
    on, off = out["batching_on"]["throughput_rps"], out["batching_off"]["throughput_rps"]
    out["throughput_ratio_on_over_off"] = round(on / off, 2) if off else None
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="Base URL of a running server.")
    p.add_argument("--key", default=os.environ.get("PPLUG_API_KEY"), help="Tenant API key (or $PPLUG_API_KEY).")
    p.add_argument("--spawn-run", action="append", help="Start the server on this run (repeatable), twice: "
                                                        "batching on, then off, and compare.")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--items", type=int, default=8, help="History items per user.")
    p.add_argument("--task", default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="Per-request timeout (s).")
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="--spawn-run: window when batching is on.")
    p.add_argument("--max-batch-size", type=int, default=8, help="--spawn-run: batch size when batching is on.")
    p.add_argument("--threads", type=int, default=None, help="--spawn-run: torch threads of the server.")
    args = p.parse_args(argv)
    if args.spawn_run:
        report = compare(args)
    elif args.url and args.key:
        report = asyncio.run(run_load(LoadConfig(args.url, args.key, args.clients, args.seconds, args.users,
                                                 args.items, args.task, args.timeout)))
    else:
        p.error("give --url and --key, or --spawn-run RUN")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
