"""How different are the personas a trained PPlug run gives different users? No generation, plug only.

For the first N questions of a split, the run's plug computes each question's persona soft tokens (its user's
own history, input-aware weights) and, before projection, the weighted history vector ``sum_i w_i e_i``. Printed
for both: the mean cosine between the vectors of questions of *different* users (1.0 = every user gets the same
persona) and the between-user spread, the mean distance to the mean vector relative to the mean's norm.
A persona that barely varies across users cannot carry the user to the frozen LLM, whatever the history holds.

Usage: python scripts/persona_spread.py RUN --data DIR [--split dev] [--limit 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import torch

from pplug.data import load_split
from pplug.runner import load_run


def spread(x: torch.Tensor, users: list[str]) -> dict[str, float]:
    """Mean cosine between rows of different users and the relative spread around the mean row."""
    unit = torch.nn.functional.normalize(x, dim=-1)
    cos = unit @ unit.T
    other = torch.tensor([[a != b for b in users] for a in users])
    mean = x.mean(dim=0)
    rel = (x - mean).norm(dim=-1).mean() / mean.norm().clamp_min(1e-9)
    return {"cosine_between_users": float(cos[other].mean()), "relative_spread": float(rel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    config, method = load_run(a.run)
    if not hasattr(method, "plug"):
        raise SystemExit(f"error: {a.run} is a {config.method} run, not a PPlug run")
    questions = load_split(a.data, a.split, method.task.name).limit(a.limit).questions
    n_inst = int(method.plug.config.use_instruction)
    personas, pooled = [], []
    with torch.no_grad():
        for s in range(0, len(questions), 8):
            batch = questions[s:s + 8]
            profiles = [method._items(q.profile) for q in batch]
            hist, mask = method._history(profiles)
            out = method.plug(method._queries(batch), hist, mask)
            personas.append(out.soft[:, n_inst:].flatten(1).float().cpu())
            pooled.append(torch.einsum("bn,bnd->bd", out.weights, hist).float().cpu())
    users = [q.user_key for q in questions]
    result = {"run": a.run, "split": a.split, "questions": len(questions), "users": len(set(users)),
              "weighted history vector": spread(torch.cat(pooled), users),
              "persona tokens": spread(torch.cat(personas), users)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
