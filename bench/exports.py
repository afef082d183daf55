"""Export writers against the naive way, on 1,000,000 rows x 8 mixed columns from one generator.

Ours: `write_export` streaming the generator to CSV, JSON and ZIP. Naive baselines consume
the same generator the way most code does: collect it into a list and `json.dump` it (stdlib);
collect it into a DataFrame and call `to_csv`. Each measurement runs in a fresh subprocess so
that its peak RSS is its own. Prints seconds, MB/s of output and peak RSS, and the ratios.

    python bench/exports.py [--rows N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CASES = ["ours-csv", "ours-json", "ours-zip", "naive-csv", "naive-json"]
START = datetime(2026, 1, 1, tzinfo=UTC)


def rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows as a stage would produce them: 8 columns, one of them nested."""
    for i in range(count):
        yield {
            "id": i,
            "name": f"item-{i}",
            "price": i * 0.37,
            "quantity": i % 97,
            "active": i % 3 == 0,
            "category": ("books", "music", "video", "games")[i % 4],
            "created_at": START + timedelta(seconds=i),
            "dims": {"w": i % 10, "h": i % 7},
        }


def zip_members(count: int) -> Iterator[tuple[str, Any]]:
    batch: list[dict[str, Any]] = []
    for row in rows(count):
        batch.append(row)
        if len(batch) == 10_000:
            yield f"rows/{row['id'] // 10_000:04d}.json", batch
            batch = []
    if batch:
        yield "rows/last.json", batch


def run_case(case: str, count: int, out: Path) -> None:
    from src.services.exports import write_export

    if case == "ours-csv":
        write_export("csv", rows(count), out, 1 << 40)
    elif case == "ours-json":
        write_export("json", rows(count), out, 1 << 40)
    elif case == "ours-zip":
        write_export("zip", zip_members(count), out, 1 << 40)
    elif case == "naive-json":
        with out.open("w") as handle:
            json.dump(list(rows(count)), handle, default=str)
    elif case == "naive-csv":
        import pandas as pd

        pd.DataFrame(list(rows(count))).to_csv(out, index=False)


def child(case: str, count: int, out: Path) -> None:
    started = time.perf_counter()
    run_case(case, count, out)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "bytes": out.stat().st_size, "peak_mb": peak_mb}))


def measure(case: str, count: int, directory: Path) -> dict[str, float]:
    out = directory / f"{case}.out"
    result = subprocess.run(
        [sys.executable, __file__, "--child", case, "--rows", str(count), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    out.unlink(missing_ok=True)
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.out)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            results[case] = figures = measure(case, args.rows, Path(tmp))
            mb_s = figures["bytes"] / 1e6 / figures["seconds"]
            print(
                f"{case:11} {figures['seconds']:7.2f} s  {mb_s:7.1f} MB/s"
                f"  {figures['bytes'] / 1e6:8.1f} MB  peak RSS {figures['peak_mb']:7.1f} MB"
            )
    for fmt, target in (("csv", 1.5), ("json", 3.0)):
        ratio = results[f"naive-{fmt}"]["seconds"] / results[f"ours-{fmt}"]["seconds"]
        print(f"{fmt}: ours is {ratio:.2f}x the naive speed (target >= {target}x)")
    print("target: peak RSS <= 150 MB for every format of ours")


if __name__ == "__main__":
    main()
