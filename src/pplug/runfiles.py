"""Run-folder files: which weights a method needs, consistent file modes, copying a folder's contents.

A finished run folder holds ``config.json``, the method's trainable weights (never the backbone),
``train_report.json`` and ``eval_{split}.json``/``preds_{split}.json``; ``checkpoint/`` (resume state)
only while training runs or with ``--keep-checkpoint``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# what each method kind must find in its run folder before any model is loaded
WEIGHTS = {"pplug": "model.safetensors", "pplug-rag": "model.safetensors",
           "task-lora": "task_lora/adapter_model.safetensors", "task-lora-rag": "task_lora/adapter_model.safetensors",
           "oppu": "task_lora/adapter_model.safetensors", "oppu-rag": "task_lora/adapter_model.safetensors"}


def missing_weights(method: str, run_dir: str | Path) -> Path | None:
    """The weights file ``method`` needs that ``run_dir`` lacks, or None (training-free methods need none)."""
    need = WEIGHTS.get(method)
    path = Path(run_dir) / need if need else None
    return path if path is not None and not path.is_file() else None


def file_mode() -> int:
    """The mode a plain new file gets under the current umask (e.g. 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def normalize_modes(folder: str | Path) -> None:
    """Give every file under ``folder`` the umask's plain-file mode (some writers create 0600 temp files)."""
    mode = file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)


def copy_tree(source: Path, target: Path) -> None:
    """Copy a folder's contents into ``target`` (a no-op when both are the same folder)."""
    if source.is_dir() and source.resolve() != target.resolve():
        shutil.copytree(source, target, dirs_exist_ok=True)
