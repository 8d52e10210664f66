"""Replay the abuse and fault probes of issue 15 against `pplug serve` on loopback; print expected vs observed.

Bounded: every probe sends a fixed, small number of requests with client timeouts; the whole run takes a
few minutes on a CPU. Loopback only (the server is spawned on 127.0.0.1, or --url must be a loopback URL).

    python scripts/abuse_probe.py --spawn-run RUN            # starts two replicas on one fresh SQLite file
    python scripts/abuse_probe.py --spawn-run RUN --json out.json

Prints a Markdown table (probe | expected | observed | ok) and exits 1 if any probe failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

LIMITS = ["--rate-limit", "120/minute", "--auth-fail-limit", "20/minute", "--request-timeout-s", "30",
          "--max-batch-size", "4"]
METRICS_KEY = "probe-metrics-key"  # the spawned servers' PPLUG_METRICS_KEY
Probe = Callable[["Ctx"], Awaitable[tuple[str, str, bool]]]  # -> (expected, observed, ok)
PROBES: list[tuple[str, Probe]] = []


def probe(name: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES.append((name, fn))
        return fn

    return register


class Ctx:
    """What the probes share: the replicas' URLs, four tenant keys, the database file and the server log."""

    def __init__(self, urls: list[str], keys: dict[str, str], db: Path | None, log: Path | None, pids: list[int]):
        self.urls, self.keys, self.db, self.log, self.pids = urls, keys, db, log, pids
        self.task = ""
        self.fields: list[str] = []

    def client(self, tenant: str | None = "a", replica: int = 0, timeout: float = 120) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.AsyncClient(base_url=self.urls[replica], headers=headers, timeout=timeout)

    def item(self, i: int) -> dict[str, Any]:
        return {"id": f"i{i}", "fields": {f: f"probe text {i} about sports and music" for f in self.fields}}

    def gen(self, user: str, text: str = "a short note about sports", **kw: Any) -> dict[str, Any]:
        return {"user_id": user, "task": self.task, "input": text} | kw


async def timed(coro: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = await coro
    return r, time.perf_counter() - t0


# ---- 1. one tenant must not freeze generation for everyone -------------------------------------------
@probe("8,000-char input x 8 beams x 256 tokens")
async def costly(ctx: Ctx) -> tuple[str, str, bool]:
    async with ctx.client() as c:
        r, s = await timed(c.post("/v1/generate", json=ctx.gen("pa", "word " * 1600, num_beams=8, max_new_tokens=256)))
    return "413 at once (max_request_cost)", f"{r.status_code} in {s:.2f} s", r.status_code == 413 and s < 2


@probe("B's small request while A runs an 8,000-char, 48-token one")
async def heavy_and_small(ctx: Ctx) -> tuple[str, str, bool]:
    async with ctx.client("a") as a, ctx.client("b") as b:
        alone = (await timed(b.post("/v1/generate", json=ctx.gen("pb"))))[1]
        heavy = asyncio.ensure_future(timed(a.post("/v1/generate", json=ctx.gen("pa", "word " * 1600,
                                                                                 max_new_tokens=48))))
        await asyncio.sleep(0.3)
        small, s_small = await timed(b.post("/v1/generate", json=ctx.gen("pb")))
        big, s_big = await heavy
    return ("B waits at most A's one batch", f"A {big.status_code} in {s_big:.1f} s; B {small.status_code} in "
            f"{s_small:.1f} s (alone {alone:.1f} s)", small.status_code == 200 and s_small <= s_big + 2 * alone + 0.5)


@probe("A floods 12 requests, then B sends 1 (batches of 4)")
async def fairness(ctx: Ctx) -> tuple[str, str, bool]:
    order: list[str] = []

    async def one(c: httpx.AsyncClient, who: str, user: str) -> None:
        (await c.post("/v1/generate", json=ctx.gen(user, max_new_tokens=8))).raise_for_status()
        order.append(who)

    async with ctx.client("a") as a, ctx.client("b") as b:
        flood = [asyncio.ensure_future(one(a, "A", "pa")) for _ in range(12)]
        await asyncio.sleep(0.2)
        await asyncio.gather(one(b, "B", "pb"), *flood)
    rank = order.index("B") + 1
    return "B in the 2nd batch (done <= 8th), not last", f"B done {rank} of 13", rank <= 8


@probe("4 clients give up after 0.5 s while the model is busy")
async def disconnects(ctx: Ctx) -> tuple[str, str, bool]:
    async with ctx.client("a") as a:
        stats = {"format": "json"}
        mkey = {"Authorization": f"Bearer {METRICS_KEY}"}
        before = (await a.get("/metrics", params=stats, headers=mkey)).json()["batched_requests"]
        busy = asyncio.ensure_future(a.post("/v1/generate", json=ctx.gen("pa", "word " * 1600, max_new_tokens=48)))
        await asyncio.sleep(0.3)
        async with ctx.client("b", timeout=0.5) as quick:
            gave_up = await asyncio.gather(*[quick.post("/v1/generate", json=ctx.gen("pb")) for _ in range(4)],
                                           return_exceptions=True)
        await busy
        (await a.post("/v1/generate", json=ctx.gen("pa"))).raise_for_status()
        ran = (await a.get("/metrics", params=stats, headers=mkey)).json()["batched_requests"] - before
    timeouts = sum(isinstance(g, httpx.TimeoutException) for g in gave_up)
    return "the 4 never run (2 generations)", f"{timeouts} gave up; {ran} generations ran", timeouts == 4 and ran == 2


@probe("200 wrong keys from one address")
async def wrong_keys(ctx: Ctx) -> tuple[str, str, bool]:
    async with httpx.AsyncClient(base_url=ctx.urls[0], headers={"Authorization": "Bearer wrong"}) as c:
        codes = [(await c.get("/v1/tasks")).status_code for _ in range(200)]
    first = codes.index(429) + 1 if 429 in codes else None
    return "429 + Retry-After after 20", f"first 429 at #{first}; {codes.count(401)} x 401", first == 21


@probe("150 valid requests in a row (tenant C)")
async def rate_limit(ctx: Ctx) -> tuple[str, str, bool]:
    async with ctx.client("c") as c, ctx.client("b") as b:
        rs = [await c.get("/v1/tasks") for _ in range(150)]
        other = (await b.get("/v1/tasks")).status_code
    codes = [r.status_code for r in rs]
    first = codes.index(429) + 1 if 429 in codes else None
    retry = rs[first - 1].headers.get("retry-after") if first else None
    return ("429 after 120, Retry-After; B unaffected", f"first 429 at #{first}, Retry-After {retry} s; B {other}",
            first == 121 and retry is not None and other == 200)


# ---- 2. bodies -------------------------------------------------------------------------------------------
async def _chunked(ctx: Ctx, tenant: str | None, chunks: int, chunk: bytes) -> tuple[str, float]:
    sent = [0]

    async def body():
        for _ in range(chunks):
            sent[0] += len(chunk)
            yield chunk

    t0 = time.perf_counter()
    try:
        async with ctx.client(tenant, timeout=30) as c:
            r = await c.post("/v1/users/pbig/items", content=body(), headers={"content-type": "application/json"})
        out = str(r.status_code)
    except httpx.HTTPError as e:
        out = f"closed ({type(e).__name__})"
    return f"{out} after {sent[0] / 1e6:.1f} MB sent", time.perf_counter() - t0


@probe("50 MB chunked body, no key")
async def chunked_no_key(ctx: Ctx) -> tuple[str, str, bool]:
    out, s = await _chunked(ctx, None, 50, b" " * 1_000_000)
    return "401 before the body is read", f"{out}, {s:.2f} s", out.startswith("401") and s < 2


@probe("26 MB chunked body of 400k items, with key")
async def chunked_items(ctx: Ctx) -> tuple[str, str, bool]:
    items = b'{"items": [' + b",".join([b'{"fields": {"text": "x"}}'] * 400_000) + b"]}"
    parts = [items[i:i + 65536] for i in range(0, len(items), 65536)]

    async def send() -> tuple[str, float]:
        t0 = time.perf_counter()

        async def body():
            for p in parts:
                yield p

        try:
            async with ctx.client("a", timeout=60) as c:
                r = await c.post("/v1/users/pbig/items", content=body(), headers={"content-type": "application/json"})
            return str(r.status_code), time.perf_counter() - t0
        except httpx.HTTPError as e:
            return f"closed ({type(e).__name__})", time.perf_counter() - t0

    async def health() -> float:
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=ctx.urls[0]) as h:
            return max([(await timed(h.get("/healthz")))[1] for _ in range(5)])

    import psutil

    before = psutil.Process(ctx.pids[0]).memory_info().rss if ctx.pids else 0
    (status, s), worst = await asyncio.gather(send(), health())
    rss = ""
    if ctx.pids:
        rss = f", server RSS {(psutil.Process(ctx.pids[0]).memory_info().rss - before) / 2**20:+.0f} MiB"
    return ("413 early; /healthz stays fast", f"{status} in {s:.2f} s; /healthz max {worst * 1000:.0f} ms{rss}",
            status.startswith(("413", "closed")) and worst < 0.5)


# ---- 4-7. replicas and strict input ------------------------------------------------------------------------
@probe("160 concurrent first writes via 2 replicas")
async def replicas(ctx: Ctx) -> tuple[str, str, bool]:
    if len(ctx.urls) < 2:
        return "0 errors", "skipped (one replica)", True
    async with ctx.client("d", 0) as r0, ctx.client("d", 1) as r1:
        rs = await asyncio.gather(*[(r0, r1)[k % 2].post(f"/v1/users/rep{k // 2}/items",
                                                         json={"items": [ctx.item(k % 2)]}) for k in range(160)])
    bad = [r.status_code for r in rs if r.status_code != 201]
    return "160 x 201", f"{160 - len(bad)} x 201, errors {bad[:3]}", not bad


async def _status(ctx: Ctx, method: str, path: str, **kw: Any) -> int:
    async with ctx.client("a") as c:
        return (await c.request(method, path, **kw)).status_code


@probe("user ids a%FFb and a%FEb")
async def utf8(ctx: Ctx) -> tuple[str, str, bool]:
    codes = [await _status(ctx, "POST", f"/v1/users/{u}/items", json={"items": [ctx.item(0)]})
             for u in ("a%FFb", "a%FEb")]
    return "422, 422", f"{codes[0]}, {codes[1]}", codes == [422, 422]


@probe("lone surrogate; offset=2^63; NaN; date 'yesterday'; max_new_tokens true / \"5\"")
async def strict(ctx: Ctx) -> tuple[str, str, bool]:
    it = ctx.item(0)
    raw = {"content-type": "application/json"}
    bodies = [json.dumps({"items": [it | {"fields": {f: "t\ud800x" for f in ctx.fields}}]}),
              json.dumps({"items": [it | {"fields": {**it["fields"], "score": float("nan")}}]}),
              json.dumps({"items": [it | {"date": "yesterday"}]})]
    codes = [await _status(ctx, "POST", "/v1/users/pstrict/items", content=b, headers=raw) for b in bodies]
    codes.append(await _status(ctx, "GET", "/v1/users/pa/items?offset=9223372036854775808"))
    for v in (True, "5"):
        codes.append(await _status(ctx, "POST", "/v1/generate", json=ctx.gen("pa", max_new_tokens=v)))
    return "6 x 422", ", ".join(map(str, codes)), codes == [422] * 6


# ---- 8-9. operations and streaming ---------------------------------------------------------------------------
@probe("/metrics without the metrics key")
async def metrics(ctx: Ctx) -> tuple[str, str, bool]:
    async with httpx.AsyncClient(base_url=ctx.urls[0]) as c:
        code = (await c.get("/metrics")).status_code
    return "401", str(code), code == 401


@probe("database file mode; query string in the access log")
async def files(ctx: Ctx) -> tuple[str, str, bool]:
    if ctx.db is None or ctx.log is None:
        return "0600; absent", "skipped (--url)", True
    await _status(ctx, "GET", "/v1/users/pa/items?limit=1&secret=s3cr3t")
    mode = oct(ctx.db.stat().st_mode & 0o777)
    leaked = "s3cr3t" in ctx.log.read_text(errors="replace")
    return "0o600; absent", f"{mode}; {'present' if leaked else 'absent'}", mode == "0o600" and not leaked


@probe("chat completions with stream: true")
async def stream(ctx: Ctx) -> tuple[str, str, bool]:
    body = {"model": ctx.task, "user": "pa", "stream": True, "messages": [{"role": "user", "content": "a note"}]}
    async with ctx.client("a") as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
    kind = r.headers.get("content-type", "").split(";")[0]
    return ("200 text/event-stream, ends [DONE]", f"{r.status_code} {kind}, {len(lines)} events, last "
            f"{lines[-1][6:] if lines else None}", r.status_code == 200 and lines[-1] == "data: [DONE]")


# ---- driver -------------------------------------------------------------------------------------------------------
async def run_probes(ctx: Ctx, only: list[str] | None) -> list[dict[str, Any]]:
    async with ctx.client("a") as c:
        task = (await c.get("/v1/tasks")).raise_for_status().json()[0]
    ctx.task, ctx.fields = task["name"], task["item_fields"]
    for tenant, user in (("a", "pa"), ("b", "pb")):
        async with ctx.client(tenant) as c:
            r = await c.post(f"/v1/users/{user}/items", json={"items": [ctx.item(i) for i in range(4)]})
            r.raise_for_status()
    rows = []
    for name, fn in PROBES:
        if only and fn.__name__ not in only:
            continue
        t0 = time.perf_counter()
        try:
            expected, observed, ok = await fn(ctx)
        except Exception as e:  # a probe that crashes is a failed probe, not a crashed script
            expected, observed, ok = "-", f"probe error: {type(e).__name__}: {e}", False
        rows.append({"probe": name, "expected": expected, "observed": observed, "ok": ok,
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"{'ok ' if ok else 'BAD'} {name}: {observed}", file=sys.stderr)
    return rows


def spawn(runs: list[str], db_url: str, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "pplug.cli.serve_cmd", "--db", db_url, "--host", "127.0.0.1", "--port", "0",
           "--log-level", "info", *[a for r in runs for a in ("--run", r)], *LIMITS, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True,
                            env=os.environ | {"PPLUG_METRICS_KEY": METRICS_KEY})
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        raise SystemExit(f"the server did not start (exit code {proc.wait(timeout=30)}); see {log}")
    return proc, json.loads(line)["url"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spawn-run", action="append", help="Run folder to serve (repeatable); spawns 2 replicas.")
    p.add_argument("--url", help="A running server on loopback instead (needs --keys A,B,C,D).")
    p.add_argument("--keys", help="Four tenant keys, comma-separated (with --url).")
    p.add_argument("--only", action="append", help="Run only this probe (function name; repeatable).")
    p.add_argument("--json", type=Path, help="Also write the rows here.")
    args = p.parse_args(argv)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="pplug-abuse-") as tmp:
        if args.spawn_run:
            from pplug.cli.serve_cmd import create_tenant_key

            db, log = Path(tmp) / "abuse.sqlite", Path(tmp) / "server.log"
            url = f"sqlite:///{db}"
            keys = {t: create_tenant_key(url, f"probe-{t}") for t in "abcd"}
            urls = []
            for _ in range(2):
                proc, u = spawn(args.spawn_run, url, log, [])
                procs.append(proc)
                urls.append(u)
            for u in urls:
                httpx.get(f"{u}/healthz", timeout=300).raise_for_status()  # waits while the model loads
            ctx = Ctx(urls, keys, db, log, [pr.pid for pr in procs])
        elif args.url and args.keys:
            host = httpx.URL(args.url).host
            if host not in ("127.0.0.1", "localhost", "::1"):
                p.error("--url must be a loopback address")
            ctx = Ctx([args.url], dict(zip("abcd", args.keys.split(","), strict=True)), None, None, [])
        else:
            p.error("give --spawn-run RUN, or --url URL --keys A,B,C,D")
        try:
            rows = asyncio.run(run_probes(ctx, args.only))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    print("| probe | expected | observed | ok |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['probe']} | {r['expected']} | {r['observed']} | {'yes' if r['ok'] else '**no**'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
