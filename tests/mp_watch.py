"""``python mp_watch.py LOG_DIR RUN_DIR pplug-args...``: run the pplug CLI while recording every write this
process makes under RUN_DIR into ``LOG_DIR/rank<RANK>.json`` (for torchrun: which ranks wrote the run folder).

Writes are seen through Python's audit hooks (open for writing, mkdir, rename/replace, remove, rmtree, chmod)
and through ``safetensors.torch.save_file``, which writes from Rust; it is wrapped before pplug or peft import it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod")


def main() -> None:
    log_dir, root, argv = Path(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3:]
    writes: list[list[str]] = []

    def record(event: str, path) -> None:
        if isinstance(path, str | bytes | os.PathLike) and os.path.realpath(os.fsdecode(path)).startswith(root):
            writes.append([event, os.fsdecode(path)])

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & WRITE_FLAGS):
                record(event, path)
        elif event == "os.mkdir" and isinstance(args[0], str | bytes | os.PathLike) and os.path.isdir(args[0]):
            return  # mkdir(exist_ok=True) of a folder that exists: changes nothing
        elif event in EVENTS:
            record(event, args[0])

    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        record("save_file", filename)
        return real_save(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = save_file
    sys.addaudithook(hook)
    from pplug.cli import main as pplug_main

    try:
        pplug_main(argv)
    finally:
        (log_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main()
