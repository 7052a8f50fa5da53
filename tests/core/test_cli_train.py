"""`tsla train` as a user runs it: real digits data, a real process, files on disk."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tsla_core import evaluate_checkpoint

# The main job of Part 1, exactly as the issue writes it.
MAIN_JOB = (
    "train",
    "--preset",
    "digits",
    "--method",
    "tsla",
    "--switch-epoch",
    "6",
    "--epochs",
    "10",
    "--seed",
    "0",
)


def tsla(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tsla_cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_digits_tsla_run_learns_and_switches_at_epoch_6(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = tsla(*MAIN_JOB, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "epoch  10/10" in done.stdout
    rows = read_metrics(out)
    assert {"epoch", "split", "name", "value", "stage"} <= set(rows[0])
    stages = {row["epoch"]: row["stage"] for row in rows}
    assert stages == {e: "smooth" if e < 6 else "onehot" for e in range(10)}
    final = {f"{row['split']}/{row['name']}": row["value"] for row in rows if row["epoch"] == 9}
    assert final["test/top1"] >= 95.0  # chance is 10%
    assert final["val/top1"] >= 90.0  # 144 held-out training images: coarser steps
    assert {"train/ce", "train/grad_var", "train/grad_norm_sq", "val/loss", "val/top5"} <= set(final)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert "epoch-0009.pt" in checkpoints
    reproduced = evaluate_checkpoint(out / "checkpoints" / "epoch-0009.pt", Path("unused"))
    assert reproduced["test/top1"] == pytest.approx(final["test/top1"])
    assert reproduced["val/top1"] == pytest.approx(final["val/top1"])
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["name"] == "digits" and len(run["dataset"]["sha256"]) == 64
    assert (run["dataset"]["num_train"], run["dataset"]["num_val"], run["dataset"]["num_test"]) == (
        1293,
        144,
        360,
    )
    assert run["device"] == "cpu" and run["torch_version"] and run["tsla_version"]

    again = tsla(*MAIN_JOB, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert len(read_metrics(out)) == len(rows)


@pytest.mark.slow
def test_teacher_prior_run_from_a_checkpoint_file(tmp_path: Path) -> None:
    teacher_out = tmp_path / "teacher"
    assert (
        tsla(
            "train", "--preset", "digits", "--method", "baseline", "--epochs", "3", "--out", str(teacher_out)
        ).returncode
        == 0
    )
    teacher = teacher_out / "checkpoints" / "epoch-0002.pt"
    student_out = tmp_path / "student"
    done = tsla(
        "train",
        "--preset",
        "digits",
        "--method",
        "tsla-pre",
        "--switch-epoch",
        "2",
        "--epochs",
        "3",
        "--teacher",
        str(teacher),
        "--set",
        "smoothing.temperature=2",
        "--out",
        str(student_out),
    )
    assert done.returncode == 0, done.stderr
    assert "teacher prior from" in done.stdout
    stages = {row["epoch"]: row["stage"] for row in read_metrics(student_out)}
    assert stages == {0: "smooth", 1: "smooth", 2: "onehot"}


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    done = tsla("train", "--preset", "digits", "--epochs", "-3", "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert "epochs" in done.stdout
    done = tsla("train", "--preset", "digits", "--set", "optim.nope=1", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "optim.nope" in done.stdout
    done = tsla(
        "train",
        "--preset",
        "digits",
        "--method",
        "lsr-pre",
        "--teacher",
        str(tmp_path / "none.pt"),
        "--out",
        str(tmp_path / "y"),
    )
    assert done.returncode == 2 and "does not exist" in done.stdout
    assert not (tmp_path / "x").exists()
