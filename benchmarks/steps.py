"""A benchmark step: one ``edge-calib`` CLI call whose parsed JSON result is stored with its
provenance (the exact command, the commit it ran, the machine), and skipped when stored.

Shared by ``digits.py``, ``calibrators.py`` and ``camvid.py``; paths in stored commands are
relative to the project root where they lie under it, so records carry no machine's layout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edge_calib.core.provenance import capture, git_commit  # noqa: E402


def common_arguments(work: str) -> argparse.ArgumentParser:
    """--data-root and --work, for every benchmark subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", default=os.environ.get(
        "EDGE_CALIB_DATA", str(ROOT.parent / "shared" / "data")))
    common.add_argument("--work", default=str(ROOT / "runs" / work))
    return common


def relative(arg: str) -> str:
    """An absolute path under the project root (or beside it) as a relative one."""
    for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
        if arg.startswith(str(base) + os.sep):
            return prefix + arg[len(str(base)) + 1:]
    return arg


class Step:
    """One CLI call whose parsed JSON output is stored with its provenance."""

    def __init__(self, folder: Path, data_root: str):
        self.folder, self.data_root = folder, data_root
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, args: list[str]) -> dict:
        path = self.folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())["result"]
        command = ["edge-calib", *[relative(str(a)) for a in args]]
        if "--data-root" not in args and args[0] not in ("export", "build-engine", "bench", "run"):
            command += ["--data-root", relative(self.data_root)]
        print(f"[{name}] {shlex.join(command)}", file=sys.stderr, flush=True)
        sha, dirty = git_commit(ROOT)  # the code this step runs, read before it starts
        started = time.time()
        proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"step {name} failed (exit {proc.returncode}); rerun to resume")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        write_record(path, name, shlex.join(command), (sha, dirty), started, result)
        return result


def write_record(path: Path, name: str, command: str, code: tuple[str, bool], started: float,
                 result) -> None:
    """A step's result with its provenance (command, commit read before it started, duration,
    machine), written atomically."""
    record = {"step": name, "command": command, "commit": code[0],
              "uncommitted_changes": code[1], "seconds": round(time.time() - started, 1),
              "finished": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "result": result}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def machine() -> dict:
    """The machine a step ran on (the steps' subprocesses run torch with its defaults)."""
    env = capture()
    try:
        import torch

        env |= {"torch_threads": torch.get_num_threads(),
                "gpu": env.get("gpu") or (torch.cuda.get_device_name(0)
                                          if torch.cuda.is_available() else None)}
    except ImportError:
        pass
    return {k: env.get(k) for k in ("cpu", "cores", "gpu", "torch_threads", "python", "versions")}
