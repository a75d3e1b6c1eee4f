"""predict.py on hostile input: its peak memory and whether every input row gets its output row.

    python benchmarks/predict_memory.py runs/lstm runs/distilbert

For each run folder: one 10 MB text in a CSV (--input, --output), and 1,000,000 short lines streamed from
standard input. Each case runs predict.py in a fresh process; its peak resident memory is that process's maximum
RSS as the operating system counts it (getrusage of a helper that starts only that child).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MEASURE = """
import resource, subprocess, sys
with open(sys.argv[1], "rb") as stdin, open(sys.argv[2], "wb") as stdout:
    done = subprocess.run(sys.argv[3:], stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def measure(command, stdin, stdout):
    """(exit status, peak MiB, seconds) of command, reading stdin and writing stdout (files)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(stdin), str(stdout), *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    status, peak = map(int, done.stdout.split())
    return status, peak, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="OUT_DIRs of finished runs")
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="predict-memory-"))
    long_text = ("a wonderful film, " * 600_000)[:10_000_000]
    pd.DataFrame({"review": [long_text]}).to_csv(work / "long.csv", index=False)
    (work / "empty").write_text("")
    with open(work / "lines.txt", "w") as f:
        f.writelines(f"a good film, number {i}\n" for i in range(args.lines))
    print(f"{time.strftime('%Y-%m-%d')} | python {sys.version.split()[0]}")
    print("| run | input | exit | output rows | peak RSS | seconds |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        cases = [
            (
                "one 10 MB text (--input)",
                ["--input", str(work / "long.csv"), "--output", str(work / "out.csv")],
                work / "empty",
                lambda: len(pd.read_csv(work / "out.csv")),
            ),
            (
                f"{args.lines:,} lines (stdin)",
                ["-"],
                work / "lines.txt",
                lambda: len((work / "stdout.txt").read_text().splitlines()),
            ),
        ]
        for name, options, stdin, rows in cases:
            status, peak, seconds = measure([sys.executable, "predict.py", run, *options], stdin, work / "stdout.txt")
            print(
                f"| {Path(run).name} | {name} | {status} | {rows() if status == 0 else '-'} | {peak:,} MiB | "
                f"{seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
