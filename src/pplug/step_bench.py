"""The step benchmark: seconds per optimizer step and per predicted question for PPlug config variants.

Every variant is built in ONE process on shared frozen resources and timed interleaved (step i of
every variant before step i+1 of any), on the same training examples and the same questions, so
ratios between variants are fair even when other jobs share the CPU. Absolute seconds are not
comparable across runs. Peak RSS is sampled in a background thread while each variant runs.

    variant spec: ``name=section.field=value,section.field=value`` (``name=`` alone = the base config);
    ``bench.packed_options=false`` runs that variant with the previous option scoring (one row per option).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pplug.config import config_from_spec
from pplug.data import load_split, resolve_task
from pplug.errors import PPlugError
from pplug.training import bucketed


@dataclass
class StepBenchConfig:
    data: str  # the task folder (train + an evaluation split)
    variants: list[str]  # "name=overrides" specs; the first one is the reference for the ratios
    base: list[str] = field(default_factory=list)  # section.field=value applied to every variant first
    steps: int = 6  # measured optimizer steps per variant
    warmup: int = 1  # unmeasured steps per variant first (allocator, caches, first-call overheads)
    batch_size: int = 8  # training examples per step
    questions: int = 24  # predicted questions (timed as one predict() call per round)
    rounds: int = 2  # interleaved prediction rounds (the mean is reported)
    split: str = "dev"  # split of the predicted questions
    onboard_users: int = 32  # users for the onboarding measurement (0 = skip)
    seed: int = 0  # picks the training examples
    repeat: int = 1  # each training question appears this many times among the steps (augment_copies + 1 per
    # epoch in real training), so the per-question frozen KV memo (train.kv_memo_mb) is exercised as in fit()


class RssSampler:
    """Peak resident set size (MB) of this process while a block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.current_mb())

    def __enter__(self) -> RssSampler:
        self.peak = self.current_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_mb())


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``name=a.b=1,c.d=x`` -> (name, [a.b=1, c.d=x])."""
    name, sep, sets = spec.partition("=")
    if not sep or not name:
        raise PPlugError(f"variant '{spec}': write NAME=section.field=value,... (NAME= for the base config)")
    return name, [s for s in sets.split(",") if s]


def _timed(fn: Callable[[], Any], rss: dict[str, float], name: str) -> float:
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        fn()
        secs = time.perf_counter() - t0
    rss[name] = max(rss.get(name, 0.0), sampler.peak)
    return secs


def run_step_bench(cfg: StepBenchConfig, resources=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build every variant, time training steps and prediction interleaved, and measure onboarding.

    Returns:
        {"config": ..., "variants": {name: {...}}, "onboard": {...}} (seconds, MB, ratios to the first variant).
    """
    from pplug.methods.pplug import Example, PPlugMethod
    from pplug.resources import Resources

    resources = resources or Resources()
    task = resolve_task(cfg.data)
    train = load_split(cfg.data, "train", task)
    evals = load_split(cfg.data, cfg.split, task).questions[: cfg.questions]
    n_ex = (cfg.steps + cfg.warmup) * cfg.batch_size
    pool = random.Random(cfg.seed).sample(train.questions, min(-(-n_ex // cfg.repeat), len(train.questions)))
    examples = [Example(q, train.gold(q)) for q in pool] * cfg.repeat
    random.Random(cfg.seed).shuffle(examples)
    examples = examples[:n_ex]
    methods: dict[str, PPlugMethod] = {}
    packed: dict[str, bool] = {}
    for spec in cfg.variants:
        name, sets = parse_variant(spec)
        packed[name] = "bench.packed_options=false" not in sets
        sets = [s for s in sets if not s.startswith("bench.")]
        run = config_from_spec("pplug", cfg.data, [*cfg.base, *sets])
        run.task = task  # PPlugMethod fills the per-kind defaults from it
        run.train.progress = False
        methods[name] = PPlugMethod(run, resources)
        methods[name].prime(pool + list(evals))

    opts = {n: torch.optim.AdamW([p for p in m.trainable.parameters() if p.requires_grad], lr=m.config.train.lr)
            for n, m in methods.items()}
    batches = {}
    for n, m in methods.items():
        order = list(range(len(examples)))
        if (m.config.train.bucket or 0) > 0:
            lengths = [len(e.question.input) for e in examples]
            groups = bucketed(order, lengths, cfg.batch_size, m.config.train.bucket, cfg.seed)
        else:
            groups = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        batches[n] = [[examples[j] for j in g] for g in groups]

    from pplug.backbones.kv_reuse import FrozenRows

    # one frozen-KV memo per variant (the variants share one backbone object), capped as in fit()
    memos = {n: FrozenRows(m.config.train.kv_memo_mb * 2**20) for n, m in methods.items()}

    def step(n: str, batch: list) -> None:
        m = methods[n]
        if hasattr(m.backbone, "frozen_rows"):
            m.backbone.frozen_rows = memos[n]
        m.trainable.train()
        m._loss(batch).backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.trainable.parameters() if p.requires_grad], 1.0)
        opts[n].step()
        opts[n].zero_grad(set_to_none=True)

    train_rss: dict[str, float] = {}
    step_times: dict[str, list[float]] = {n: [] for n in methods}
    for i in range(cfg.warmup + cfg.steps):
        for n in methods:
            secs = _timed(lambda n=n, i=i: step(n, batches[n][i]), train_rss, n)
            if i >= cfg.warmup:
                step_times[n].append(secs)
        log(f"[step {i + 1}/{cfg.warmup + cfg.steps}] " + ", ".join(
            f"{n} {step_times[n][-1]:.2f}s" for n in methods if step_times[n] and i >= cfg.warmup))
    for m in methods.values():  # prediction runs without the memo, as after fit()
        if hasattr(m.backbone, "frozen_rows"):
            m.backbone.frozen_rows = FrozenRows()
    memos.clear()
    pred_rss: dict[str, float] = {}
    pred_times: dict[str, list[float]] = {n: [] for n in methods}
    outputs: dict[str, list[str]] = {}
    for n, m in methods.items():
        _set_packed(m, packed[n])
        m.predict(evals[:2])  # warm-up
    for r in range(cfg.rounds):
        for n, m in methods.items():
            _set_packed(m, packed[n])
            holder: dict[str, Any] = {}
            secs = _timed(lambda m=m, h=holder: h.setdefault("p", m.predict(evals)), pred_rss, n)
            pred_times[n].append(secs / max(1, len(evals)))
            outputs[n] = [p.raw for p in holder["p"]]
        log(f"[predict round {r + 1}/{cfg.rounds}] " + ", ".join(f"{n} {pred_times[n][-1]:.3f}s/q" for n in methods))
    first = next(iter(methods))
    rows: dict[str, Any] = {}
    tok = next(iter(methods.values())).backbone.tokenizer
    for n, m in methods.items():
        step_s = sum(step_times[n]) / max(1, len(step_times[n]))
        q_s = sum(pred_times[n]) / max(1, len(pred_times[n]))
        new_tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs[n]) / max(1, len(evals))
        rows[n] = {"overrides": parse_variant(next(s for s in cfg.variants if parse_variant(s)[0] == n))[1],
                   "step_s": round(step_s, 3), "step_times": [round(t, 3) for t in step_times[n]],
                   "question_s": round(q_s, 4), "new_tokens_per_question": round(new_tokens, 2),
                   "train_peak_rss_mb": round(train_rss.get(n, 0.0), 1),
                   "predict_peak_rss_mb": round(pred_rss.get(n, 0.0), 1),
                   "trainable_parameters": m.n_trainable()}
    for r in rows.values():
        r["step_speedup"] = round(rows[first]["step_s"] / max(r["step_s"], 1e-9), 2)
        r["question_speedup"] = round(rows[first]["question_s"] / max(r["question_s"], 1e-9), 2)
    result = {"config": cfg.__dict__, "task": task, "threads": torch.get_num_threads(), "variants": rows}
    if cfg.onboard_users > 0:
        result["onboard"] = onboard_bench(methods[first], train.questions, cfg.onboard_users)
    return result


def _set_packed(method, on: bool) -> None:
    if hasattr(method.backbone, "packed_options"):
        method.backbone.packed_options = on


def onboard_bench(method, questions, users: int) -> dict[str, Any]:
    """Users per second when onboarding ``users`` users one encoder call each vs one call over all of them,
    and the per-user state (item vectors) in float32 and float16. The cache is bypassed (fresh users)."""
    by_user: dict[str, list] = {}
    for q in questions:
        if len(q.profile) >= len(by_user.get(q.user_key, [])):
            by_user[q.user_key] = method._items(q.profile)
    profiles = [[method.task.render_item(it) for it in items] for items in list(by_user.values())[:users]]
    encoder = method.history_encoder.encoder
    encoder.encode(profiles[0][:4])  # warm-up
    t0 = time.perf_counter()
    one = [encoder.encode(texts) for texts in profiles]
    per_user_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat = encoder.encode([t for texts in profiles for t in texts])
    batched_s = time.perf_counter() - t0
    many = list(torch.split(flat, [len(t) for t in profiles]))
    max_diff = max(float((a - b).abs().max()) for a, b in zip(one, many, strict=True) if len(a))
    items = sum(len(t) for t in profiles) / max(1, len(profiles))
    return {"users": len(profiles), "items_per_user": round(items, 1),
            "users_per_s_one_by_one": round(len(profiles) / per_user_s, 2),
            "users_per_s_batched": round(len(profiles) / batched_s, 2),
            "batched_vs_one_by_one_max_abs_diff": max_diff,
            "state_bytes_per_user_float32": int(items * encoder.dim * 4),
            "state_bytes_per_user_float16": int(items * encoder.dim * 2)}


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (one row per variant)."""
    lines = ["| variant | s/step | speedup | s/question | speedup | new tok/q | train RSS MB | predict RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in result["variants"].items():
        lines.append(f"| {n} | {r['step_s']:.2f} | {r['step_speedup']:.2f}x | {r['question_s']:.3f} | "
                     f"{r['question_speedup']:.2f}x | {r['new_tokens_per_question']:.1f} | "
                     f"{r['train_peak_rss_mb']:.0f} | {r['predict_peak_rss_mb']:.0f} |")
    if "onboard" in result:
        o = result["onboard"]
        lines.append(f"\nOnboarding {o['users']} users ({o['items_per_user']} items each): "
                     f"{o['users_per_s_one_by_one']} users/s one by one, {o['users_per_s_batched']} users/s batched; "
                     f"state {o['state_bytes_per_user_float32']} B/user float32, "
                     f"{o['state_bytes_per_user_float16']} B/user float16.")
    return "\n".join(lines)


def write(result: dict[str, Any], out: str | Path) -> None:
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
