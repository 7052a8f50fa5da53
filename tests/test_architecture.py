"""The dependency direction is the architecture, checked on whole packages two ways: every import
statement in their source (function-level ones included), and what importing all their modules
really loads (transitive imports included).

    tsla_spec     imports no other project package, and no torch/web/queue/database library
    tsla_core     imports only tsla_spec of the project, and no web/queue/database library
    tsla_service  imports no torch, no core, no web framework, no api/worker/cli (numpy and Pillow,
                  yes: checking and converting uploaded data sets, tsla_service/dataset_ingest.py)
    api           never imports torch, the core or the worker
    tsla_cli      starts without torch (only `train` and `demo` load it, when they run)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"tsla_spec", "tsla_core", "tsla_service", "api", "worker", "tsla_cli", "migrations"}
TORCH = {"torch", "torchvision", "sklearn"}
NUMPY = {"numpy"}
WEB = {"fastapi", "starlette", "sse_starlette", "uvicorn", "httpx", "httpx_sse"}
QUEUE = {"celery", "kombu", "redis"}
DATABASE = {"sqlalchemy", "alembic", "psycopg"}

# package: (project packages it may import, libraries it must never load)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "tsla_spec": ({"tsla_spec"}, TORCH | NUMPY | WEB | QUEUE | DATABASE | {"fsspec"}),
    "tsla_core": ({"tsla_core", "tsla_spec"}, WEB | QUEUE | DATABASE | {"fsspec"}),
    "tsla_service": ({"tsla_service", "tsla_spec", "migrations"}, TORCH | {"fastapi", "starlette"}),
    "api": ({"api", "tsla_service", "tsla_spec"}, TORCH),
}


def imported_top_levels(package: str) -> dict[str, list[str]]:
    """{top-level module: [file:line, ...]} for every import statement in the package's source."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("package", RULES)
def test_import_statements_follow_the_dependency_direction(package: str) -> None:
    allowed_project, forbidden = RULES[package]
    imports = imported_top_levels(package)
    wrong = {name: where for name, where in imports.items() if name in PROJECT - allowed_project}
    wrong |= {name: where for name, where in imports.items() if name in forbidden}
    assert not wrong, f"{package} imports {wrong}"


def loaded_after_importing(package: str) -> set[str]:
    """Top-level modules in sys.modules after importing every module of `package` in a fresh process."""
    probe = (
        "import importlib, pkgutil, sys\n"
        f"root = importlib.import_module({package!r})\n"
        "for info in pkgutil.walk_packages(root.__path__, root.__name__ + '.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    command = [sys.executable, "-c", probe]
    return set(subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout.split())


@pytest.mark.parametrize("package", RULES)
def test_importing_a_package_loads_nothing_it_must_not(package: str) -> None:
    allowed_project, forbidden = RULES[package]
    loaded = loaded_after_importing(package)
    assert not loaded & forbidden, f"{package} loads {sorted(loaded & forbidden)}"
    assert not loaded & (PROJECT - allowed_project), f"{package} loads {sorted(loaded & PROJECT)}"


def test_the_api_app_loads_no_torch_core_or_worker() -> None:
    probe = "import sys, api.main; api.main.create_app; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    top = {name.split(".")[0] for name in loaded.split()}
    assert not top & (TORCH | {"tsla_core", "worker"}), sorted(top & (TORCH | {"tsla_core", "worker"}))


def test_cli_entry_point_does_not_import_torch() -> None:
    """`tsla jobs` and friends start fast: torch loads only for commands that train."""
    probe = "import sys, tsla_cli.main; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"


def test_the_rules_catch_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The static check sees an import inside a function (a mutation the suite must not miss)."""
    package = tmp_path / "tsla_spec"
    package.mkdir()
    (package / "leak.py").write_text("def f():\n    import torch\n    from tsla_core import loop\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert set(imported_top_levels("tsla_spec")) == {"torch", "tsla_core"}
