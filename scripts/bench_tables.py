"""Print the markdown tables of one or more `pplug bench` output folders (for the README).

Usage: python scripts/bench_tables.py bench/news_categorize bench/news_headline ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

for folder in sys.argv[1:]:
    result = json.loads((Path(folder) / "results.json").read_text())
    cfg = result["config"]
    limits = {k: cfg[k] for k in ("limit", "train_limit", "dev_limit", "users") if cfg.get(k)}
    print(f"### {result['task']}\n")
    print(f"Limits: {limits or 'none'}; overrides: {' '.join(cfg['overrides']) or 'none'}; "
          f"torch threads per method: {cfg.get('threads') or 'default'}\n")
    print((Path(folder) / "results.md").read_text().split("\n", 2)[2])
