"""``pplug bench``: every method side by side on one data folder, quality and cost in one table.

``run`` orchestrates (one subprocess per method, logs, heuristics), ``worker`` runs one method, ``report``
writes ``results.{json,md,png}``, ``targets`` computes the verdicts from the rows.
"""

from pplug.bench.report import plain_spec_dir, spec_dir
from pplug.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "plain_spec_dir", "run_bench", "spec_dir"]
