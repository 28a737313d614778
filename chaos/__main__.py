"""`python -m chaos [--quick]`: see chaos/__init__.py."""

import argparse
import os
import sys
import time

from bench import env
from chaos import processes, scenarios
from chaos.report import table, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") == "1",
                        help="shorter phases (about four minutes in all)")  # fmt: skip
    parser.add_argument("--only", default="", help="comma-separated scenarios to run after "
                        f"the load: {','.join(scenarios.FAULTS)}")  # fmt: skip
    args = parser.parse_args(argv)
    only = [name for name in args.only.split(",") if name] or list(scenarios.FAULTS)
    began = time.monotonic()
    processes.HERE.mkdir(parents=True, exist_ok=True)
    stack = scenarios.Stack(quick=args.quick)
    results = []
    try:
        stack.open()
        results = scenarios.run_all(stack, only)
    finally:
        stack.close()
    meta = {
        "mode": "quick" if args.quick else "full",
        "seconds": round(time.monotonic() - began, 1),
        "machine": env.machine(),
        "settings": stack.settings,
    }
    print()
    print(table(results))
    path = write_json(results, meta)
    passed = bool(results) and all(s.passed for s in results)
    print(f"\n{meta['mode']} run, {meta['seconds']} s -> {path}: "
          f"{'every scenario passed' if passed else 'FAILED'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
