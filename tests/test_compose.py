"""The production stack's docker-compose.yml and Dockerfile, checked without a Docker engine.

`docker-compose config -q` validates the file against Compose's own schema (Debian's
docker-compose 1.29 here); the rest parses the YAML and checks the wiring the stack relies on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tsla_cli import stack
from tsla_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CHECKPOINTS_DIR = "/var/lib/tsla/checkpoints"
SERVICES = {"postgres", "redis", "migrate", "api", "worker", "cpu-worker"}
WORKERS = ("worker", "cpu-worker")
APP_SERVICES = ("migrate", "api", *WORKERS)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """`depends_on` as {service: condition}; the short list form means `service_started`."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """The service's volumes as {target: (source, read_only)}, short or long syntax."""
    mounts: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, bool(mode) and "ro" in mode[0].split(","))
        else:
            mounts[volume["target"]] = (volume.get("source", ""), bool(volume.get("read_only", False)))
    return mounts


def test_docker_compose_config_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stdout}\n{result.stderr}"


def test_services_exist(compose: dict[str, Any]) -> None:
    missing = SERVICES - set(compose["services"])
    assert not missing, missing


def test_worker_reserves_an_nvidia_gpu_and_the_cpu_worker_none(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [device for device in devices if device.get("driver") == "nvidia"]
    assert any(d.get("count") == 1 and "gpu" in d.get("capabilities", []) for d in nvidia), devices
    assert "deploy" not in compose["services"]["cpu-worker"]


def test_api_and_worker_share_the_checkpoints_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _mounts(services["api"])[CHECKPOINTS_DIR][0] == "checkpoints"
    for name in WORKERS:
        assert _mounts(services[name])[CHECKPOINTS_DIR] == ("checkpoints", False), "workers write them"
    assert "checkpoints" in compose["volumes"], "a named volume, declared at the top level"
    for name in ("api", *WORKERS):
        assert services[name]["environment"]["TSLA_STORAGE_URL"] == CHECKPOINTS_DIR


def test_datasets_are_mounted_read_only(compose: dict[str, Any]) -> None:
    for name in ("api", *WORKERS):
        service = compose["services"][name]
        assert _mounts(service)["/data"] == ("datasets", True)
        assert service["environment"]["TSLA_DATA_ROOT"] == "/data"


def test_every_long_running_service_is_health_checked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":
            continue
        has_check = "healthcheck" in service and not service["healthcheck"].get("disable", False)
        waits_for_healthy = "service_healthy" in _depends_on(service).values()
        assert has_check or waits_for_healthy, f"{name}: no healthcheck and no healthy dependency"


def test_migration_runs_once_before_api_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no", "the string 'no': a bare `no` is YAML's false"
    assert _depends_on(migrate) == {"postgres": "service_healthy"}
    for name in ("api", *WORKERS):
        deps = _depends_on(services[name])
        assert deps["migrate"] == "service_completed_successfully", name
        assert deps["redis"] == "service_healthy", name
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1, "one application image"
    environments = [services[name]["environment"] for name in APP_SERVICES]
    assert all(env == environments[0] for env in environments)
    assert environments[0]["TSLA_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environments[0]["TSLA_BROKER_URL"].startswith("redis://redis:6379/")


def test_dockerfile_copies_every_installed_package() -> None:
    """A package added to pyproject.toml but not copied into the image would fail to import there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE)
        for source in line.split()[:-1]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not (copied & ignored), "the build context must keep what the Dockerfile copies"


def test_compose_runs_the_launchers_command_lines(compose: dict[str, Any]) -> None:
    """The processes of the stack are started one way everywhere: tsla_cli/stack.py's commands."""
    services = compose["services"]
    assert services["migrate"]["command"] == stack.migrate_command(python="python")
    assert services["api"]["command"] == stack.api_command("0.0.0.0", 8000, python="python")
    assert services["worker"]["command"] == stack.worker_command(["gpu"], python="python")
    assert services["cpu-worker"]["command"] == stack.worker_command(["cpu"], python="python")


def test_each_queue_has_a_worker_and_jobs_go_by_device(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings the services read list exactly the queues the workers consume; CUDA jobs go to
    the GPU worker's, CPU jobs to the CPU worker's (tsla_service/queues.py)."""
    for name, value in compose["services"]["api"]["environment"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    consumed = {}
    for name in WORKERS:
        command = compose["services"][name]["command"]
        consumed[name] = command[command.index("--queues") + 1].split(",")
    assert sorted(settings.queues) == sorted(queue for queues in consumed.values() for queue in queues)
    assert settings.device_queues == {"cuda": "gpu", "cpu": "cpu"}
    assert consumed == {"worker": ["gpu"], "cpu-worker": ["cpu"]}
    assert settings.queues[0] == "gpu", "`auto` jobs, by the first queue, go to the GPU worker"
