"""Uploaded data sets, measured side by side in one run.

    .venv/bin/python bench/datasets.py [--sizes 50,500] [--rounds 2] [--train-subset 10000]

(a) Upload: for each size (MB), an ImageFolder .tar of random-noise RGB PNGs (32x32, `--side`) (10 classes,
    a tenth of them in test/) is uploaded with the client (8 MiB chunks, `TslaClient.upload_dataset`)
    to a fresh API process (uvicorn, `api.main:create_app`, SQLite home; no worker). Reported: the
    upload's MB/s (all PATCHes but the last, which also checks and converts), the last chunk's
    time (sha256, decode, convert, store), and the API process's peak RSS (VmHWM) minus its RSS
    before the upload, and the peak of its anonymous memory (RssAnon, sampled every 20 ms: VmHWM
    also counts the converted arrays' file pages, which are written through a memory map). Goal:
    memory flat in the archive's size (both growths printed for both sizes).
(b) Training images/s: the core (`tsla_core.loop.train`, as the worker runs it) on the built-in
    `fashion-mnist` and on an uploaded copy of the same arrays (the IDX files written as an .npz,
    converted by tsla_service.dataset_ingest.ingest, read by tsla_core.uploaded), the same spec
    (preset fashion-mnist, `data.train_subset`, 1 epoch), alternating `--rounds` times, each run
    in its own process. Reported: images/s per run (`train/images_per_s`), the median of each
    and their ratio. Goal: uploaded / built-in >= 0.95.

Each run prints its numbers as it goes and a summary at the end. On a shared 2-core machine, run
it when nothing else is: (b) is CPU-bound, and the ratios are measured side by side for that reason.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsla_cli import stack  # noqa: E402
from tsla_cli.client import TslaClient  # noqa: E402

CLASSES = 10
SIDE = 32


def log(message: str) -> None:
    print(message, flush=True)


# --- (a) upload ------------------------------------------------------------------------------


def noise_png(rng: np.random.Generator, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), mode="RGB").save(buffer, "PNG")
    return buffer.getvalue()


def write_archive(path: Path, megabytes: int, side: int, seed: int = 0) -> int:
    """An ImageFolder tar of about `megabytes` MB of noise PNGs; returns the image count."""
    rng = np.random.default_rng(seed)
    target, written, count = megabytes * 1_000_000, 0, 0
    with tarfile.open(path, "w") as tar:
        while written < target:
            data = noise_png(rng, side)
            split = "test" if (count // CLASSES) % 10 == 0 else "train"
            info = tarfile.TarInfo(f"{split}/class-{count % CLASSES}/{count:07d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            written += len(data) + 512
            count += 1
    return count


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def new_token(home: Path) -> str:
    """A migrated SQLite database under `home` with one token; returns the token."""
    from tsla_service.db import session_scope
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.settings import Settings
    from tsla_service.tokens import create_token

    url = Settings(home=home).resolved_database_url
    upgrade_to_head(url)
    with session_scope(url) as session:
        return create_token(session, "bench")[1]


class AnonPeak(threading.Thread):
    """Samples a process's anonymous resident memory (RssAnon: heap, not file pages) every 20 ms
    and keeps the largest: VmHWM also counts the pages of files it maps (the converted arrays are
    written through a memory map), which the kernel reclaims at will."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid, "RssAnon"))
            self.stop.wait(0.02)


def measure_upload(archive: Path, home: Path) -> dict[str, Any]:
    """Upload `archive` to a fresh API process; MB/s, the finishing chunk's time and RSS growth."""
    port = stack.free_port()
    env = stack.service_env(TSLA_HOME=str(home), TSLA_MAX_UPLOAD_RATIO="1000")
    token = new_token(home)
    api = stack.start_process(stack.api_command("127.0.0.1", port), env, log=home / "api.log")
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_healthy(url, [api], timeout=60)
        before = rss_kib(api.pid, "VmRSS")
        before_anon = rss_kib(api.pid, "RssAnon")
        sampler = AnonPeak(api.pid)
        sampler.start()
        marks: list[tuple[float, int]] = []
        with TslaClient(url, token, timeout=600) as client:
            started = time.perf_counter()
            dataset = client.upload_dataset(
                archive, "noise", progress=lambda sent, _total: marks.append((time.perf_counter(), sent))
            )
            ended = time.perf_counter()
        peak = rss_kib(api.pid, "VmHWM")
        sampler.stop.set()
        sampler.join()
    finally:
        stack.stop_process(api)
    size = archive.stat().st_size
    last_start = max(t for t, sent in marks if sent < size)  # the last chunk was sent from here
    sent_before_last = max(sent for _t, sent in marks if sent < size)
    return {
        "bytes": size,
        "images": dataset["num_train"] + dataset["num_test"],
        "upload_mb_s": sent_before_last / 1e6 / max(1e-9, last_start - started),
        "finish_s": ended - last_start,
        "total_s": ended - started,
        "rss_before_mib": before / 1024,
        "rss_growth_mib": (peak - before) / 1024,
        "anon_growth_mib": (sampler.peak - before_anon) / 1024,
    }


# --- (b) training images/s -------------------------------------------------------------------

TRAIN_CHILD = """
import json, sys
from pathlib import Path
from tsla_core.loop import Hooks, train
from tsla_spec.spec import build_spec
spec = build_spec(json.loads(sys.argv[1]))
uploaded = Path(sys.argv[3]) if sys.argv[3] != "-" else None
rates = []
def on_metrics(rows):
    rates.extend(r.value for r in rows if r.split == "train" and r.name == "images_per_s")
train(spec, Path(sys.argv[2]), Path("data"), Hooks(on_metrics=on_metrics), uploaded=uploaded)
print(json.dumps({"images_per_s": rates[-1]}))
"""


def uploaded_fashion_copy(folder: Path) -> Path:
    """The built-in Fashion-MNIST arrays as an .npz, converted as an upload is; the canonical folder."""
    from tsla_core.readers import FASHION_MNIST_DEBIAN_DIR, read_fashion_mnist
    from tsla_service.dataset_ingest import IngestLimits, ingest

    train, test = (read_fashion_mnist(FASHION_MNIST_DEBIAN_DIR, train=flag) for flag in (True, False))
    npz = folder / "fashion.npz"
    np.savez(
        npz, x_train=train.images[:, 0], y_train=train.labels, x_test=test.images[:, 0], y_test=test.labels
    )
    canonical = folder / "canonical"
    ingest(npz, canonical, IngestLimits())
    return canonical


def train_rate(spec: dict[str, Any], scratch: Path, uploaded: Path | None) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    command = [sys.executable, "-c", TRAIN_CHILD, json.dumps(spec), str(out), str(uploaded or "-")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])


def measure_training(rounds: int, subset: int, scratch: Path) -> dict[str, Any]:
    canonical = uploaded_fashion_copy(scratch)
    base: dict[str, Any] = {"preset": "fashion-mnist", "epochs": 1, "data": {"train_subset": subset}}
    base |= {"device": "cpu", "smoothing": {"method": "lsr"}}  # one epoch: no room for a switch
    base["grad_variance"] = {"enabled": False}
    uploaded_spec = {**base, "data": {**base["data"], "name": "fashion-copy"}}
    rates: dict[str, list[float]] = {"builtin": [], "uploaded": []}
    for index in range(rounds):
        order = ("builtin", "uploaded") if index % 2 == 0 else ("uploaded", "builtin")
        for kind in order:
            rate = train_rate(
                base if kind == "builtin" else uploaded_spec,
                scratch,
                canonical if kind == "uploaded" else None,
            )
            rates[kind].append(rate)
            log(f"(b) round {index + 1}: {kind} {rate:.0f} images/s")
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    return {"rates": rates, "median": median, "ratio": median["uploaded"] / median["builtin"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="50,500", help="archive sizes in MB for (a)")
    parser.add_argument("--rounds", type=int, default=2, help="(b) runs per data set")
    parser.add_argument("--train-subset", type=int, default=10_000, help="(b) training images")
    parser.add_argument("--only", default="a,b")
    parser.add_argument(
        "--side", type=int, default=SIDE, help="(a) image side in pixels (fewer, larger files)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsla-bench-datasets-") as tmp:
        scratch = Path(tmp)
        uploads: list[dict[str, Any]] = []
        if "a" in args.only:
            for megabytes in (int(m) for m in args.sizes.split(",")):
                archive = scratch / f"noise-{megabytes}.tar"
                count = write_archive(archive, megabytes, args.side)
                log(f"(a) wrote {archive.name}: {archive.stat().st_size / 1e6:.0f} MB, {count:,} images")
                result = measure_upload(archive, scratch / f"home-{megabytes}")
                uploads.append(result)
                log(f"(a) {json.dumps(result)}")
                archive.unlink()
        training = measure_training(args.rounds, args.train_subset, scratch) if "b" in args.only else None
    side = f"{args.side}x{args.side}"
    print(
        f"\n(a) upload of an ImageFolder tar of {side} RGB noise PNGs, 8 MiB chunks, to a fresh API process"
    )
    header = ("MB", "images", "upload MB/s", "last chunk s", "total s", "VmHWM +MiB", "RssAnon +MiB")
    print(" ".join(f"{name:>13}" for name in header))
    for row in uploads:
        values = (row["bytes"] / 1e6, row["images"], row["upload_mb_s"], row["finish_s"], row["total_s"])
        print(
            " ".join(f"{value:13.1f}" for value in (*values, row["rss_growth_mib"], row["anon_growth_mib"]))
        )
    if len(uploads) >= 2:
        for key, what in (("rss_growth_mib", "peak RSS (VmHWM)"), ("anon_growth_mib", "peak anonymous RSS")):
            growth = [row[key] for row in uploads]
            print(f"{what} growth, largest/smallest archive: {growth[-1] / max(1e-9, growth[0]):.2f}")
    if training is not None:
        print(
            f"\n(b) training images/s, fashion-mnist preset, train_subset {args.train_subset}, 1 epoch, CPU"
        )
        for kind, values in training["rates"].items():
            print(f"{kind:9} {' '.join(f'{v:.0f}' for v in values)}  median {training['median'][kind]:.0f}")
        print(f"ratio uploaded/built-in: {training['ratio']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
