"""Seconds per optimizer step and per predicted question for PPlug config variants, timed interleaved.

Usage:
    python scripts/step_bench.py --data DIR --out step_bench.json [--threads 1] [--steps 6] [--questions 24] \\
        --base plug.n_persona_tokens=4 --base decode.classify=rank \\
        --variants today= after=plug.placement=after_text \
        "fast=plug.placement=after_text,plug.train_input_encoder=false"

The first variant is the reference for the speedup columns. See docs/speed.md.
"""

from __future__ import annotations

import argparse

import torch

from pplug.step_bench import StepBenchConfig, markdown, run_step_bench, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=section.field=value,... (NAME= = base)")
    ap.add_argument("--base", action="append", default=[], help="section.field=value for every variant")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--onboard-users", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1, help="uses of each training question among the steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = StepBenchConfig(data=a.data, variants=a.variants, base=a.base, steps=a.steps, warmup=a.warmup,
                          questions=a.questions, rounds=a.rounds, split=a.split, onboard_users=a.onboard_users,
                          repeat=a.repeat)
    result = run_step_bench(cfg)
    print(markdown(result))
    if a.out:
        write(result, a.out)


if __name__ == "__main__":
    main()
