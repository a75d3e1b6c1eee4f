"""The benchmark scripts run end to end on a tiny model and tiny data and print their tables. Their timings are
not checked here (that is what the scripts are for); only that every variant runs and reports sane numbers."""

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import make_reviews, write_csv

from textclf.parallel import auto_precision, cpu_bf16, cpu_name

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table(stdout):
    """The rows of the printed Markdown tables, as lists of cells (headers and rules left out)."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("| ")]
    return [row for row in rows if row[0] not in ("tool", "variant", "precisions", "run")]


def test_vs_trainer_prints_all_tools_with_their_accuracy(tiny_model, tmp_path):
    data = write_csv(make_reviews(160, seed=4), tmp_path / "reviews.csv")
    common = [
        "--model-name",
        tiny_model,
        "--data",
        data,
        "--train-size",
        96,
        "--valid-size",
        16,
        "--test-size",
        48,
        "--max-length",
        32,
    ]
    rows = {
        row[0]: row[1:]
        for row in table(
            run(BENCHMARKS / "vs_trainer.py", *common, "--seeds", 1, 2, "--precision", "bf16", cwd=tmp_path)
        )
    }
    assert set(rows) == {"ours: train_distilbert.py", "HF Trainer", "reference-style loop", "bare step (the floor)"}
    for name, (runs, seconds, tokens_per_second, speed, accuracy) in rows.items():
        assert runs == ("1" if name in ("reference-style loop", "bare step (the floor)") else "2")
        assert float(seconds.split()[0]) >= 0 and float(tokens_per_second.replace(",", "")) > 0
        assert re.fullmatch(r"\d+\.\d\dx", speed)
        if name == "bare step (the floor)":
            assert accuracy == "–"
        else:
            assert 0 <= float(accuracy.split()[0]) <= 1
    assert rows["HF Trainer"][3] == "1.00x"

    padding = run(BENCHMARKS / "vs_trainer.py", *common, "--padding", cwd=tmp_path)
    ours, theirs = map(float, re.search(r"padding ([\d.]+)% ours .* ([\d.]+)% the Trainer", padding).groups())
    assert 0 <= ours <= theirs < 100  # 96 reviews: ours sorts all of them, LengthGroupedSampler 16 at a time


def test_benchmark_prints_both_tables(tmp_path):
    stdout = run(
        BENCHMARKS / "benchmark.py",
        "--data",
        tmp_path / "absent.csv.gz",
        "--steps",
        1,
        "--lstm-steps",
        1,
        "--warmup",
        0,
        cwd=tmp_path,
    )
    assert "synthetic" in stdout
    rows = table(stdout)
    assert len(rows) >= 4 and all(re.search(r"\d+\.\d\dx", " ".join(cells)) for cells in rows)


def tiny_run(tmp_path, model, script="train_distilbert.py"):
    """A finished run of script on synthetic reviews, and its CSV."""
    data = write_csv(make_reviews(300, seed=5), tmp_path / "reviews.csv")
    extra = (
        ["--model-name", model, "--max-length", 48]
        if script == "train_distilbert.py"
        else ["--vocab-size", 60, "--hidden-dim", 16]
    )
    run(
        BENCHMARKS.parent / script,
        "--data-url",
        data,
        "--data-dir",
        tmp_path / "data",
        "--train-size",
        200,
        "--valid-size",
        50,
        "--test-size",
        50,
        "--epochs",
        1,
        "--out-dir",
        tmp_path / script,
        *extra,
    )
    return tmp_path / script, data


def test_vs_pipeline_prints_both_rows_with_their_agreement(tiny_model, tmp_path):
    run_dir, data = tiny_run(tmp_path, tiny_model)
    rows = table(run(BENCHMARKS / "vs_pipeline.py", run_dir, data, "--limit", 100, "--repeats", 1))
    assert [row[0].split(":")[0] for row in rows] == [
        "defaults",
        "both fp32",
        "both fp32, pipeline given cleaned texts",
    ]
    assert rows[1][0] == "both fp32: predict.py fp32, pipeline float32"
    for _, ours, theirs, speed, same in rows:
        assert float(ours.replace(",", "")) > 0 and float(theirs.replace(",", "")) > 0
        assert re.fullmatch(r"\d+\.\d\dx", speed) and 0 <= float(same.rstrip("%")) <= 100


def test_predict_memory_counts_every_row_of_both_inputs(tmp_path):
    run_dir, _ = tiny_run(tmp_path, None, "train_lstm_baseline.py")
    rows = table(run(BENCHMARKS / "predict_memory.py", run_dir, "--lines", 1_000))
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("one 10 MB text (--input)", "0", "1"),
        ("1,000 lines (stdin)", "0", "1000"),
    ]
    assert all(int(row[4].split()[0].replace(",", "")) > 0 for row in rows)


def test_gpu_check_runs_every_check_on_a_cpu(tiny_model, tmp_path):
    """benchmarks/gpu_check.py --device cpu: the checks a GPU box gets (COMPILE aside: minutes on a CPU) in each
    precision the CPU computes natively, each passed, the CPU named by its model, and the table as JSON where --results
    says; --model-name and --data relative to where it is started."""
    shutil.copytree(tiny_model, tmp_path / "model")
    write_csv(make_reviews(600, seed=4), tmp_path / "reviews.csv")
    stdout = run(
        BENCHMARKS / "gpu_check.py",
        "--device",
        "cpu",
        "--model-name",
        "model",
        "--data",
        "reviews.csv",
        "--max-length",
        32,
        "--no-compile",
        "--results",
        tmp_path / "results",
        cwd=tmp_path,
    )
    rows = {row[0]: row[1:] for row in table(stdout) if row[0] != "check"}
    auto = auto_precision(torch.device("cpu"))[0]
    native = ["bf16", "fp32"] if cpu_bf16() else ["fp32"]  # fp16 (and bf16 without AVX512-BF16) is emulated
    assert list(rows) == [
        *(f"train_distilbert.py {p}" for p in native),
        "train_lstm_baseline.py",
        f"train_distilbert.py {auto}, LoRA rank 16",
        "4-bit base (LOAD_IN_4BIT)",
        f"train_distilbert.py {auto}: SIGTERM, --resume",
        "torchrun x 2, --device cpu: SIGTERM, --resume",
        f"predict.py on the {auto} run",
    ]
    assert all(passed == "yes" for passed, *_ in rows.values())
    assert rows["4-bit base (LOAD_IN_4BIT)"][3].startswith("not run: needs CUDA")
    assert "identical to the uninterrupted run's" in rows[list(rows)[len(native) + 3]][3]  # one process: the same bits
    speeds = [speed for check, (_, speed, *_) in rows.items() if not check.startswith(("4-bit", "predict"))]
    assert all(float(speed) > 0 for speed in speeds)
    assert f"\n{cpu_name() or platform.machine()} | {', '.join(native)} checked |" in stdout
    saved = json.loads(next((tmp_path / "results").glob("gpu-check_*.json")).read_text())
    assert [row["check"] for row in saved["rows"]] == list(rows) and saved["torch"] == torch.__version__


def test_gpu_check_shows_a_failed_checks_error_line_not_torchruns_report():
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_check

    checks = gpu_check.Checks(type("Args", (), {"data": "x", "device": "cpu"})(), Path("/nonexistent"))
    report = "error: the machines read different data\n[W] torchrun: ChildFailedError\n  exitcode: 1\nRoot Cause"
    checks.add("torchrun x 2", False, done=subprocess.CompletedProcess([], 1, "", report))
    assert checks.rows[-1]["note"] == "exit 1: error: the machines read different data"
