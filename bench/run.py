"""Every benchmark, one after another; prints each figure with what it is
compared with, and writes them all to bench/results.json.

    .venv/bin/python bench/run.py            # the full run
    .venv/bin/python bench/run.py --quick    # a reduced run, for CI
    .venv/bin/python bench/run.py --only pipeline,api

Each benchmark is a module of this folder with `async def run(quick) ->
dict[str, float]`, and also runs alone (`python bench/pipeline.py`). Run them
on a quiet machine: the figures are only as steady as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

# In the order they run; names of modules of this folder.
BENCHMARKS = ["pipeline", "progress_latency", "import_copy", "api", "memory",
              "scale_out", "rate_limit"]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced version of each, for CI")
    parser.add_argument("--only", help="comma-separated benchmarks to run")
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else BENCHMARKS
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)};"
                     f" there are {', '.join(BENCHMARKS)}")

    # Figures of benchmarks not run this time are kept from earlier runs;
    # "runs" says when and how each was last measured.
    figures = _earlier_figures(args.output)
    figures.update(machine=platform.platform(), cpus=_cpu_count())
    speed_s = _machine_speed_s()
    print(f"machine speed: a 10-million-step Python loop takes {speed_s:.2f} s"
          " (the same machine on another day can differ several times over;"
          " compare figures only with this)", flush=True)
    runs = figures.setdefault("runs", {})
    failed = []
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n{name}: {module.__doc__.splitlines()[0]}", flush=True)
        started = time.perf_counter()
        try:
            figures.update(await module.run(args.quick))
        except Exception as exc:  # one broken benchmark must not hide the rest
            print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
        else:
            runs[name] = {"quick": args.quick,
                          "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "machine_loop_s": round(speed_s, 2)}
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)

    args.output.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nFigures written to {args.output}")
    if failed:
        print(f"Failed: {', '.join(failed)}")
        return 1
    return 0


def _earlier_figures(path: Path) -> dict:
    """The figures a previous run wrote, if `path` holds any."""
    if not path.is_file():
        return {}
    try:
        figures = json.loads(path.read_text())
    except ValueError:
        figures = None
    if not isinstance(figures, dict):
        print(f"{path} holds no figures; starting afresh", flush=True)
        return {}
    return figures


def _machine_speed_s() -> float:
    """Seconds a plain Python loop of ten million steps takes here now: a
    figure measured on a slower day reads next to this one."""
    started = time.perf_counter()
    total = 0
    for step in range(10_000_000):
        total += step
    return time.perf_counter() - started


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
