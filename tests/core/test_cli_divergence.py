"""`tsla train` of a diverging spec: the reason on the console, exit 1, and strict-JSON rows."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_raw_spec


def no_nan(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def test_a_diverging_run_prints_the_reason_and_exits_1(tmp_path: Path) -> None:
    raw = tiny_raw_spec(
        optim={"lr": 10}, batch_size=16, schedule={"kind": "constant"}, precision="fp32", seed=1, epochs=8
    )
    raw["data"]["synthetic"]["num_train"] = 1024
    spec_file = tmp_path / "diverge.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "tsla_cli", "train", str(spec_file), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = re.search(r"error: diverged: (\S+) is (NaN|inf|-inf) at epoch (\d+)", done.stdout)
    assert found, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    key, label, epoch = found.group(1), found.group(2), int(found.group(3))

    rows = [
        json.loads(line, parse_constant=no_nan) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    diverged = next(r for r in rows if f"{r['split']}/{r['name']}" == key and r["epoch"] == epoch)
    assert diverged["value"] is None and diverged["nonfinite"] == label.lower()
    assert max(r["epoch"] for r in rows) == epoch  # nothing trained after the divergence
    # No checkpoint holds the diverged state.
    assert not (out / "checkpoints" / f"epoch-{epoch:04d}.pt").exists()
