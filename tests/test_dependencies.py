"""The supply chain, checked without a network: every distribution that installing
``shoprank[test]`` brings in has an exact pin in constraints.txt, every package the three
packages import is declared, and every audit exception gives its reason."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"indexer", "reranker", "plugin", "bench", "tests", "triton_models"}
#: The installer itself: the image or ``python3 -m venv`` brings it, `pip install` does not.
UNPINNED = {"pip"}
#: Imported only by ``shoprank tune``, which tells the user to install the ``tune`` extra.
TUNING_ONLY = {"datasets"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    """The ``[project]`` table."""
    with (REPO / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line is a comment or name==version."""
    pinned: dict[str, str] = {}
    for number, raw in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt:{number}: {raw!r} is not an exact name==version pin"
        name = canonical(match[1])
        assert name not in pinned, f"constraints.txt:{number}: {match[1]} is pinned twice"
        pinned[name] = match[2]
    return pinned


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether a requirement holds here (this Python, this platform) for the requested extras."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def dependency_tree(roots: Iterable[Requirement]) -> tuple[set[str], set[str]]:
    """Walk the installed distributions' requirements from ``roots``, markers evaluated.

    Returns the canonical names the tree needs and those among them that are not installed.
    """
    needed: set[str] = set()
    missing: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [(requirement, frozenset[str]()) for requirement in roots]
    while queue:
        requirement, parent_extras = queue.pop()
        if not applies(requirement, parent_extras):
            continue
        name = canonical(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        needed.add(name)
        try:
            requires = metadata.distribution(requirement.name).requires or []
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        queue += [(Requirement(line), frozenset(requirement.extras)) for line in requires]
    return needed, missing


def test_constraints_pin_every_distribution_the_install_brings_in() -> None:
    project = pyproject()
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    needed, missing = dependency_tree(Requirement(line) for line in declared)
    assert not missing, (
        f"not installed, so their own dependencies cannot be checked: {sorted(missing)}; "
        "run: pip install -c constraints.txt -e '.[test]'"
    )
    unpinned = needed - set(pins()) - UNPINNED
    assert not unpinned, f"add an exact pin to constraints.txt for: {sorted(unpinned)}"


def test_every_declared_requirement_is_pinned_inside_its_range() -> None:
    pinned = pins()
    project = pyproject()
    extras = project["optional-dependencies"].values()
    for line in [*project["dependencies"], *(line for group in extras for line in group)]:
        requirement = Requirement(line)
        name = canonical(requirement.name)
        assert name in pinned, f"{requirement.name} is declared but not pinned"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"the pin {requirement.name}=={pinned[name]} is outside the declared {requirement}"
        )


def third_party_imports(package: str) -> set[str]:
    """Top-level names of the modules a package imports, its own and the stdlib's left out."""
    roots: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots - PROJECT - set(sys.stdlib_module_names)


def test_every_package_the_code_imports_is_a_core_dependency() -> None:
    project = pyproject()
    core = {canonical(Requirement(line).name) for line in project["dependencies"]}
    distributions = metadata.packages_distributions()
    undeclared: dict[str, str] = {}
    for package in ("indexer", "reranker", "plugin"):
        for module in third_party_imports(package):
            names = {canonical(name) for name in distributions.get(module, [module])}
            if not names & (core | TUNING_ONLY):
                undeclared[module] = f"{package}/ imports it; declare {sorted(names)}"
    assert not undeclared, undeclared


def test_every_audit_exception_says_why() -> None:
    for number, raw in enumerate((REPO / ".ci/audit-exceptions.txt").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vulnerability, _, reason = line.partition(" ")
        assert re.fullmatch(r"[A-Z]+-[\w-]+", vulnerability), f"line {number}: {raw!r}"
        assert len(reason.strip()) > 20, f"line {number}: {vulnerability} needs its reason"
