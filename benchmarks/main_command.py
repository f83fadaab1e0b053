"""Time the README's main command, ``bash tools/env.sh cdm3d generate "a red cone" -o DIR``, end to end in fresh
processes: the environment check, Python's start, imports, loading the shipped cascade, sampling, writing the
files and the preview.

    bash tools/env.sh python benchmarks/main_command.py --out benchmarks/results/main_command.json

One unrecorded run first (it warms the file cache and writes Python's bytecode caches, as any first run on a
fresh clone does), then ``--repeats`` recorded runs; the median is the figure. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red cone"


ROOT = Path(__file__).resolve().parents[1]


def one_run(out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    command = ["bash", "tools/env.sh", "cdm3d", "generate", PROMPT, "-o", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        first = one_run(Path(tmp) / "o")
        seconds = [one_run(Path(tmp) / "o") for _ in range(args.repeats)]
    report = {
        "command": f"python benchmarks/main_command.py --repeats {args.repeats} --out {args.out}",
        "what": f'bash tools/env.sh cdm3d generate "{PROMPT}" -o DIR',
        "machine": f"{platform.machine()}, {_cores()} CPU cores",
        "first_run_s": round(first, 2),
        "seconds": [round(s, 2) for s in seconds],
        "median_s": round(statistics.median(seconds), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
