"""Runs every benchmark in bench/ one after another (``make bench``); each prints its own ratios.

Each benchmark measures lskd against a baseline in the same run, so the ratios are what to compare
across machines; absolute times on a noisy 2-core machine are not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens of minutes)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark file stems to run (default: all)")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    failures = 0
    for script in sorted(here.glob("bench_*.py")):
        if args.only and script.stem not in args.only:
            continue
        print(f"\n=== {script.name}", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        failures += subprocess.call(cmd) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
