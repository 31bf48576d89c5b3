"""The public surface, checked both ways (like httpx's ``tests/test_exported_members.py``): every
package's ``__all__`` is sorted and names only what exists, and every public name a package's
``__init__`` binds (or a plain module defines) is in its ``__all__``. Also: the seed README's snippets
that this build supports run as written."""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PACKAGES = ["federated.protocol", "federated.broker", "federated.aggregation", "federated.data",
            "federated.models", "federated.worker", "federated.crypto", "federated.keys", "federated.attacks",
            "federated.compression", "federated.config", "federated.client", "federated.server",
            "federated.privacy", "federated.transport", "federated.communication"]
_FUTURE_FEATURE = type(__future__.annotations)


def public_names(module: ModuleType) -> set[str]:
    """The names ``module`` makes public, which its ``__all__`` must list.

    A package: everything its ``__init__`` binds, imported or defined, except submodules and
    ``from __future__`` features, plus the names it resolves lazily (a ``_HOME`` table read by a module
    ``__getattr__``, as in :mod:`federated.privacy`). A plain module: what it defines at the top level
    (``def``, ``class``, assignments); what it imports for its own use is not its surface.
    """
    if hasattr(module, "__path__"):
        names = {name for name, value in vars(module).items()
                 if not isinstance(value, (ModuleType, _FUTURE_FEATURE))}
        names |= set(getattr(module, "_HOME", {}))
    else:
        names = set()
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}
SNIPPETS = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "snippets"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda s: (not s.isupper(), s)) or exported == sorted(exported)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol} is in __all__ but missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    missing = sorted(public_names(module) - set(module.__all__))
    assert not missing, f"{name} makes these names public but leaves them out of __all__: {missing}"


def test_public_names_sees_what_a_package_binds() -> None:
    package = ModuleType("pkg")
    vars(package).update(__path__=[], annotations=__future__.annotations, os=os, Any=Any, X=1, _y=2,
                         _HOME={"lazy": "mod"})
    assert public_names(package) == {"Any", "X", "lazy"}


@pytest.mark.network  # a fresh interpreter
def test_broker_package_does_not_need_mlx() -> None:
    code = ("import sys; import federated.broker.coordinator, federated.broker.loop, federated.broker.service;"
            "assert not any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules), 'mlx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not SNIPPETS.is_dir(), reason="shared/seed/snippets is not beside this checkout")
@pytest.mark.network
@pytest.mark.parametrize("snippet", ["client_quickstart.py", "byzantine.py", "compression.py"])
def test_seed_snippet_runs_as_written(snippet: str) -> None:
    proc = subprocess.run([sys.executable, snippet], cwd=SNIPPETS, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the snippet must print its result"
