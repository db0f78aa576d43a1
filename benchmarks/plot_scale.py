"""Redraw scale.py's timeline picture, and its growth table, from saved runs: no engine.

Sizes run separately (100 and 300 in one run, 1000 in another) go into one
picture, one panel a size, and one growth table, as a run of all sizes
would have printed them.

    python benchmarks/plot_scale.py scale-100-300.json scale-1000.json --out docs/scale-timeline.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# scale.py is this script's neighbour, not a package module.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", metavar="JSON", help="scale.py --json files")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG")
    parser.add_argument("--table", action="store_true", help="also print the growth table")
    args = parser.parse_args(argv)
    runs = scale.load_runs(args.json)
    scale.plot_timelines(runs, args.out)
    if args.table:
        print(scale.growth_table(runs))
    print(f"picture written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
