"""``python -m bench NAME [--quick] [--json PATH]`` or ``python -m bench all [--quick]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.harness import BENCHMARKS, run_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", help=f"one of {', '.join(BENCHMARKS)}, or all")
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    parser.add_argument("--json", type=Path, help="where to write the JSON result")
    args = parser.parse_args(argv)
    names = BENCHMARKS if args.name == "all" else (args.name,)
    failed = []
    for name in names:
        try:
            run_one(name, quick=args.quick, json_path=args.json if len(names) == 1 else None)
        except ModuleNotFoundError as exc:
            print(f"   {name}: not available ({exc.name})", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
