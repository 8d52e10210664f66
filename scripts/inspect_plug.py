"""Print what a trained PPlug run learned in its scalar knobs: aggregator temperature and soft-token gains.

Usage: python scripts/inspect_plug.py RUN [RUN ...]   (RUN = a pplug run folder with model.safetensors)
Soft-token norm = gain * the backbone's mean token-embedding norm when plug.normalize_soft is on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

for run in map(Path, sys.argv[1:]):
    if not (run / "model.safetensors").is_file():
        print(f"{run}: no model.safetensors (not a trained pplug run)")
        continue
    state = load_file(str(run / "model.safetensors"))
    plug = json.loads((run / "config.json").read_text())["plug"]
    tau = state["plug.log_tau"].exp().item()
    gains = ", ".join(f"{g:.3f}" for g in state["plug.gain"].tolist())
    print(f"{run}: temperature {tau:.4f} (init {plug['temperature']}), gains [{gains}] "
          f"(init {plug.get('gain_init', 1.0)}), normalize_soft={plug['normalize_soft']}, "
          f"persona tokens={plug['n_persona_tokens']}, trained input encoder={plug['train_input_encoder']}")
