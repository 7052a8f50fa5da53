"""The dependency direction is the architecture: checked on what each part really imports."""

import subprocess
import sys

import pytest

FORBIDDEN = {
    # part: modules it must never load
    "api.main": ("torch", "tsla_core", "worker"),
    "tsla_shared.models": ("torch", "fastapi", "celery", "tsla_core"),
    "tsla_shared.jobs": ("torch", "fastapi", "celery", "tsla_core"),
    "tsla_shared.spec": ("torch", "fastapi", "celery", "sqlalchemy"),
    "tsla_core.loop": ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "redis", "api", "worker"),
    "tsla_core.cli": ("fastapi", "celery", "sqlalchemy", "redis", "api", "worker"),
}


@pytest.mark.parametrize(("module", "forbidden"), FORBIDDEN.items())
def test_module_does_not_load_forbidden_parts(module: str, forbidden: tuple[str, ...]) -> None:
    probe = (
        f"import sys, {module}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}); "
        "print(','.join(bad))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "", f"{module} loads {loaded.strip()}"


def test_cli_entry_point_does_not_import_torch() -> None:
    """`tsla jobs` and friends start fast: torch loads only for commands that train."""
    probe = "import sys, tsla_cli.main; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
