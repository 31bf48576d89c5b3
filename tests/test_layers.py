"""The import layers of DESIGN §2, read from the source with ``ast``.

Every ``import`` in every module of ``federated/`` counts, including imports inside functions and under
``if TYPE_CHECKING:``: a layer rule is about what a module is allowed to know, not about when it loads it.
The rules checked, as they stand in the code:

- ``federated.protocol`` imports nothing else of the package;
- ``federated.crypto`` imports only ``federated.protocol`` (and itself);
- ``federated.keys`` imports only ``federated.crypto``, ``federated.protocol`` and ``federated.durable`` (the
  durable-write helper it shares with the broker's store);
- nothing below ``broker``/``worker`` (protocol, crypto, keys, aggregation, privacy, compression, models,
  data) imports ``federated.broker``, ``federated.worker`` or ``federated.cli``;
- no circles: neither between subpackages (top-level modules such as ``federated.config`` count as one
  each) nor between modules, inside a subpackage or across.

``from package import name`` is an import of ``package.name`` when that is a module (Python imports the
submodule, it does not need the package's ``__init__`` to define it), and of ``package`` otherwise.
Names built at run time (``importlib.import_module``, a user's ``"module:factory"``) are not seen.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "federated"

#: Subpackages below the I/O drivers.
LOWER = ("protocol", "crypto", "keys", "aggregation", "privacy", "compression", "models", "data")
UPPER = ("broker", "worker", "cli")

#: (importing module, imported module) pairs that break a rule today, each with the reason it is allowed
#: for now. Empty: keep it so.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``federated/a/b.py`` -> ``federated.a.b``; ``federated/a/__init__.py`` -> ``federated.a``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, source: str, *, is_package: bool, modules: Iterable[str]) -> set[str]:
    """The package's modules that the module ``name`` (with ``source``) imports, anywhere in its body.

    Each import is resolved to the longest name in ``modules`` that it names (``federated.crypto.params``
    for ``from federated.crypto.params import X``; ``federated.crypto.shamir`` for ``from federated.crypto
    import shamir``). Imports from outside the package are dropped.
    """
    known = set(modules)
    top = name.split(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == top or target.startswith(top + "."):
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    found.add(resolved)
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    return {name: imports_of(name, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py",
                             modules=modules)
            for name, path in modules.items()}


def unit(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``federated.crypto.params`` ->
    ``federated.crypto``; ``federated.config`` -> itself."""
    return ".".join(module.split(".")[:2])


def circle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One circle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        found: list[str] = exc.args[1]
        return found[::-1]  # graphlib lists it against the edges' direction
    return None


MODULES = discover()
GRAPH = import_graph(MODULES)


def _edges(importer_unit: str) -> list[tuple[str, str]]:
    return sorted((m, d) for m, deps in GRAPH.items() if unit(m) == importer_unit for d in deps
                  if (m, d) not in KNOWN_EXCEPTIONS)


# --- the scanner itself ----------------------------------------------------------------------------------

def test_the_scanner_sees_every_kind_of_import() -> None:
    modules = ["pkg", "pkg.a", "pkg.a.x", "pkg.a.y", "pkg.b", "pkg.b.z"]
    source = """
import os
import pkg.b.z as zed
from . import y
from ..b import z
from pkg.a.x import helper
from pkg.b import something_in_init
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from pkg.b.z import T

def late():
    from pkg import a
"""
    found = imports_of("pkg.a.mod", source, is_package=False, modules=[*modules, "pkg.a.mod"])
    assert found == {"pkg.b.z", "pkg.a.y", "pkg.a.x", "pkg.b", "pkg.a"}
    # In a package's __init__, "." is the package itself.
    assert imports_of("pkg.a", "from . import x\nfrom .y import f", is_package=True, modules=modules) == {
        "pkg.a.x", "pkg.a.y"}


def test_circle_finds_a_circle_and_its_order() -> None:
    assert circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    found = circle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    assert found is not None and found[0] == found[-1] and set(found) == {"a", "b", "c"}
    for here, there in itertools.pairwise(found):
        assert there in {"a": {"b"}, "b": {"c"}, "c": {"a"}}[here]


def test_the_scan_covers_the_package() -> None:
    assert len(MODULES) > 50
    assert any(unit(d) == "federated.protocol" for d in GRAPH["federated.broker.coordinator"])
    assert "federated.aggregation.rule" in GRAPH["federated.aggregation.robust"]


# --- the rules ------------------------------------------------------------------------------------------

def test_protocol_imports_nothing_else_of_the_package() -> None:
    bad = [(m, d) for m, d in _edges("federated.protocol") if unit(d) != "federated.protocol"]
    assert not bad, f"federated.protocol is the bottom layer; these imports reach above it: {bad}"


def test_crypto_imports_only_protocol() -> None:
    allowed = {"federated.crypto", "federated.protocol"}
    bad = [(m, d) for m, d in _edges("federated.crypto") if unit(d) not in allowed]
    assert not bad, f"federated.crypto may import only federated.protocol: {bad}"


def test_keys_imports_only_crypto_protocol_and_durable() -> None:
    allowed = {"federated.keys", "federated.crypto", "federated.protocol", "federated.durable"}
    bad = [(m, d) for m, d in _edges("federated.keys") if unit(d) not in allowed]
    assert _edges("federated.keys"), "federated.keys is missing or imports nothing: is the scan looking at it?"
    assert not bad, f"federated.keys may import only crypto, protocol and durable: {bad}"


def test_durable_imports_nothing_of_the_package() -> None:
    bad = _edges("federated.durable")
    assert not bad, f"federated.durable sits below every layer, so it imports none of them: {bad}"


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_do_not_import_broker_worker_or_cli(layer: str) -> None:
    upper = {f"federated.{name}" for name in UPPER}
    bad = [(m, d) for m, d in _edges(f"federated.{layer}") if unit(d) in upper]
    assert not bad, f"federated.{layer} is below broker/worker/cli but imports them: {bad}"


def test_no_circle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for m, d in ((m, d) for m, deps in GRAPH.items() for d in deps if (m, d) not in KNOWN_EXCEPTIONS):
        graph.setdefault(unit(m), set())
        if unit(d) != unit(m):
            graph[unit(m)].add(unit(d))
    found = circle(graph)
    witnesses = [] if found is None else [
        (m, d) for a, b in itertools.pairwise(found) for m, deps in GRAPH.items() for d in deps
        if unit(m) == a and unit(d) == b]
    assert found is None, f"subpackages import each other in a circle {' -> '.join(found)}; via {witnesses}"


def test_no_circle_between_modules() -> None:
    graph = {m: {d for d in deps if (m, d) not in KNOWN_EXCEPTIONS} for m, deps in GRAPH.items()}
    found = circle(graph)
    assert found is None, f"modules import each other in a circle: {' -> '.join(found or [])}"
