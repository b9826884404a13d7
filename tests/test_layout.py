"""The layout's two promises, checked from the source: imports only go down the layers, and each
``dvc.yaml`` stage depends on every ``fkp`` module its command runs (else a change there would leave
a stale model or metric that ``dvc status`` calls up to date).

Static (``ast``), so it costs no TensorFlow import and sees imports inside functions too.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fkp"

#: modules that cannot change what a stage writes, so they are not deps: how a file is written
#: (atomic), what a failure says (errors, safety), how quiet the libraries are (quiet, envvars), and
#: where a result is recorded in MLflow rather than what it is (tracking; register lists the registry)
NOT_OUTPUT_AFFECTING = ("fkp.errors", "fkp.atomic", "fkp.quiet", "fkp.envvars", "fkp.safety", "fkp.tracking")

#: layer -> the layers it must not import (``fkp.cli`` and ``flows/`` sit on top and may import all)
FORBIDDEN = {
    "fkp.core": (
        "fkp.tracking",
        "fkp.stages",
        "fkp.serving",
        "fkp.orchestration",
        "fkp.cli",
        "fkp.synthetic",
    ),
    "fkp.synthetic": ("fkp.tracking", "fkp.stages", "fkp.serving", "fkp.orchestration", "fkp.cli"),
    "fkp.tracking": ("fkp.stages", "fkp.serving", "fkp.orchestration", "fkp.cli"),
    "fkp.stages": ("fkp.orchestration", "fkp.cli"),
    "fkp.serving": ("fkp.stages", "fkp.orchestration", "fkp.cli"),
    "fkp.orchestration": ("fkp.core", "fkp.stages", "fkp.serving", "fkp.cli"),
}


def module_path(module: str) -> Path:
    base = ROOT / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _resolve(name: str) -> str | None:
    """``name`` if it is a module of the package, its package if it names an attribute, else None."""
    while name.startswith("fkp"):
        if module_path(name).exists():
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_in(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(m for m in map(_resolve, names) if m)
    return found


@cache
def imports_of(module: str) -> frozenset[str]:
    """The ``fkp`` modules ``module`` imports anywhere in its file, and the packages above them."""
    found = _imports_in(ast.parse(module_path(module).read_text()))
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    found.discard(module)
    return frozenset(found)


def closure(start: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imports_of(module))
    return seen


def handler_imports(subcommand: str) -> set[str]:
    """What ``fkp <subcommand>``'s handler in ``fkp/cli.py`` imports: the code the stage runs."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    handler = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == f"cmd_{subcommand}"
    )
    return _imports_in(handler)


def stage_modules(cmd: str) -> set[str]:
    match = re.match(r"fkp (\w+)", cmd)
    assert match, f"stage command {cmd!r} is not an fkp subcommand"
    modules = closure(handler_imports(match.group(1)))
    return {m for m in modules if not m.startswith(NOT_OUTPUT_AFFECTING) and has_code(m)}


def has_code(module: str) -> bool:
    """False for a package's ``__init__`` that only documents it (no function or class of its own)."""
    path = module_path(module)
    if path.name != "__init__.py":
        return True
    return any(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in ast.parse(path.read_text()).body)


def covered(module: str, deps: list[str]) -> bool:
    path = module_path(module).relative_to(ROOT).as_posix()
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_deps(stage: dict) -> list[str]:
    deps = [str(dep) for dep in stage.get("deps", [])]
    return sorted(
        module_path(m).relative_to(ROOT).as_posix()
        for m in stage_modules(stage["cmd"])
        if not covered(m, deps)
    )


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(dvc_stages()))
def test_each_stage_depends_on_every_module_it_runs(name):
    stage = dvc_stages()[name]
    assert missing_deps(stage) == [], f"dvc.yaml stage '{name}' runs these modules but does not list them"


def test_the_check_fails_when_a_dep_is_removed():
    stage = dict(dvc_stages()["train"])
    stage["deps"] = [dep for dep in stage["deps"] if dep != "fkp/core/images.py"]
    assert missing_deps(stage) == ["fkp/core/images.py"]


def test_the_check_sees_imports_inside_functions():
    # evaluate's handler imports the stage lazily, and the stage imports the predictor inside a function
    assert "fkp.core.predictor" in stage_modules("fkp evaluate")
    assert "fkp.core.predictor" in stage_modules("fkp predict --data x")


def _all_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    )


def test_imports_only_go_down_the_layers():
    wrong = [
        f"{module} imports {imported}"
        for module in _all_modules()
        for layer, forbidden in FORBIDDEN.items()
        if module == layer or module.startswith(layer + ".")
        for imported in imports_of(module)
        if imported.startswith(forbidden)
    ]
    assert wrong == []


def test_the_stage_handover_paths_are_the_ones_dvc_yaml_names():
    from fkp.stages import handover

    named = {
        str(entry if isinstance(entry, str) else next(iter(entry)))
        for stage in dvc_stages().values()
        for kind in ("deps", "outs", "metrics", "plots")
        for entry in stage.get(kind, [])
    }
    paths = [value for name, value in vars(handover).items() if name.isupper() and isinstance(value, Path)]
    unnamed = [str(p) for p in paths if not any(n == str(p) or n.startswith(f"{p}/") for n in named)]
    assert paths and unnamed == []
