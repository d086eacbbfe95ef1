"""The architecture, checked: which package may import which, and nothing private across.

The layers (see docs/architecture.md), bottom first:

* the root modules (``types``, ``errors``, ``_context``, ``_concurrency``, ...): shared by
  everyone, importing no package at run time;
* ``statestore``, ``providers``, ``tools``, ``telemetry`` (listeners turning the root
  ``events`` into spans, metrics and logs): independent of each other;
* ``prompt`` (token counting, trimming, summaries through a provider);
* ``pipeline`` (the onion and its middleware), which composes all of the above;
* ``cli``, the chatbot on top.

A package never imports another package's private module (``promptkit_async.x._y``): what
two packages share lives at the root or is exported by its package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import promptkit_async

ROOT = Path(promptkit_async.__file__).parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())

#: Which packages each package may import (directly). Change it deliberately.
ALLOWED: dict[str, set[str]] = {
    "statestore": set(),
    "providers": set(),
    "tools": set(),
    "telemetry": set(),
    "prompt": {"providers"},
    "pipeline": {"prompt", "providers", "statestore", "tools"},
    "cli": {"pipeline", "prompt", "providers", "statestore", "telemetry", "tools"},
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """Every ``promptkit_async`` module ``module`` imports, and whether only for typing."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            # ``from pkg import name`` names a module only when such a module exists.
            found = [n for n in names if _is_module(n)] or [target]
        elif isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        else:
            continue
        for name in found:
            if name.split(".")[0] == "promptkit_async":
                yield name, id(node) in typing_only


def _is_module(name: str) -> bool:
    parts = name.split(".")[1:]
    return bool(parts) and (
        ROOT.joinpath(*parts).with_suffix(".py").exists() or ROOT.joinpath(*parts).is_dir()
    )


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else None


def test_every_package_is_placed_in_a_layer() -> None:
    assert set(PACKAGES) == set(ALLOWED), "add new packages to ALLOWED (and the docs)"


def test_packages_import_only_the_layers_below_them() -> None:
    wrong = []
    for module, path in _modules():
        source = _package(module)
        for target, _ in _imports(module, path):
            dest = _package(target)
            if source and dest and dest != source and dest not in ALLOWED[source]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_package_imports_another_packages_private_module() -> None:
    wrong = []
    for module, path in _modules():
        for target, _ in _imports(module, path):
            dest = _package(target)
            private = any(p.startswith("_") for p in target.split(".")[2:])
            if dest and dest != _package(module) and private:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_root_modules_import_no_package_at_run_time() -> None:
    wrong = []
    for module, path in _modules():
        if _package(module) or module in ("promptkit_async", "promptkit_async.__main__"):
            continue  # the top-level re-exports and the entry point sit above everything
        for target, typing_only in _imports(module, path):
            if _package(target) and not typing_only:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_allowed_graph_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def visit(name: str) -> None:
        seen[name] = 1  # on the current path
        for dest in ALLOWED[name]:
            assert seen.get(dest) != 1, f"cycle through {name} -> {dest}"
            if dest not in seen:
                visit(dest)
        seen[name] = 2

    for name in ALLOWED:
        if name not in seen:
            visit(name)


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    """The checker itself: a private cross-package import is found."""
    fake = tmp_path / "m.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\nfrom ...tools._runner import run_tool_calls\n"
        "if TYPE_CHECKING:\n    from ...statestore import base\n"
    )
    found = list(_imports("promptkit_async.pipeline.middleware.m", fake))
    assert found == [
        ("promptkit_async.tools._runner", False),
        ("promptkit_async.statestore.base", True),
    ]
