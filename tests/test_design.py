"""docs/design.md's "What may import what" table is the package's real import graph (no unit imports more)."""

from __future__ import annotations

import ast
import re

from tests import REPO

PACKAGE = REPO / "openmatch"


def allowed_imports() -> dict[str, set[str]]:
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## What may import what") :]
    section = section[: section.index("\n## ", 3)]
    table = {}
    rows = re.findall(r"^\| `openmatch\.(\w+)` \| (.*?) \|$", section, flags=re.M)
    for unit, allowed in rows:
        table[unit] = set(re.findall(r"`(\w+)`", allowed.split("(")[0]))
    for unit, allowed in rows:
        if allowed.startswith("every unit above"):
            table[unit] = set(table) - {unit}
    return table


def unit_of(module: str) -> str:
    """``openmatch.dataset.records`` -> ``dataset``; ``openmatch.api`` -> ``api``."""
    return module.split(".")[1]


def imports_of(path) -> set[str]:
    """Every ``openmatch.*`` module imported anywhere in ``path`` (functions included)."""
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.split(".")[0] == "openmatch":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "openmatch")
    return {name for name in found if name.count(".") >= 1}


def test_every_unit_is_in_the_table():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    units.discard("__init__")
    assert units == set(allowed_imports())


def test_units_import_only_what_the_table_allows():
    table = allowed_imports()
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target in imports_of(path):
            other = unit_of(target)
            if other != unit and other not in table[unit]:
                violations.append(f"{path.relative_to(REPO)} imports {target} ({unit} may import {sorted(table[unit])})")
    assert not violations, "\n".join(violations)


def test_no_driver_imports_another_driver():
    drivers = {p.stem for p in (PACKAGE / "driver").glob("*.py")} - {"__init__"}
    for path in (PACKAGE / "driver").glob("*.py"):
        for target in imports_of(path):
            parts = target.split(".")
            assert not (parts[:2] == ["openmatch", "driver"] and len(parts) > 2 and parts[2] in drivers and parts[2] != path.stem), (
                f"{path.name} imports {target}"
            )


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself: a module of the evaluation unit importing the trainer is reported."""
    fake = PACKAGE / "evaluation" / "_design_probe.py"
    fake.write_text("from ..trainer import DRTrainer\n", encoding="utf-8")
    try:
        try:
            test_units_import_only_what_the_table_allows()
        except AssertionError as err:
            assert "evaluation/_design_probe.py imports openmatch.trainer" in str(err)
        else:
            raise AssertionError("the import check missed evaluation -> trainer")
    finally:
        fake.unlink()
