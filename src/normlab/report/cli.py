"""``normlab-report SWEEP_DIR``: write ``report.md`` and its figures for a sweep."""

from __future__ import annotations

import argparse
import sys
import time

from normlab.errors import UserError
from normlab.report.build import build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="normlab-report",
        description="Report on a sweep: accuracy, percentile, gradient-norm and learning-rate stability "
        "figures, and a table per group of runs (grouped by every override except the seed).",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a multirun directory (hydra.sweep.dir)")
    parser.add_argument("--target", type=float, default=None, help="accuracy target (default: the runs' own, else 0.9)")
    parser.add_argument(
        "--layer", default=None, help="hidden layer of the percentile figure, e.g. layer2 (default: the last)"
    )
    parser.add_argument("--out", default=None, help="where report.md and figures/ go (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    if args.target is not None and not 0 < args.target <= 1:
        parser.error(f"--target={args.target}: must be an accuracy in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        report = build_report(args.sweep_dir, target=args.target, layer=args.layer, out_dir=args.out)
    except UserError as e:
        print(f"normlab-report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --out (or the sweep directory) on a read-only or full file system
        where = e.filename or args.out or args.sweep_dir
        print(
            f"normlab-report: error: cannot write {where}: {e.strerror}; pass --out <a writable folder>",
            file=sys.stderr,
        )
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.status_counts().items()))
    print(
        f"normlab-report: {len(report.runs)} runs ({counts}) in {len(report.groups)} groups, "
        f"{len(report.figures)} figures, {time.perf_counter() - start:.1f} s"
    )
    print(f"  report   {report.path.resolve()}")
    for note in report.notes:
        print(f"  note     {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
