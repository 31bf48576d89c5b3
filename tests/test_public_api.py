"""The public surface: every package's ``__all__`` is sorted and importable, and the seed README's
snippets that this build supports run as written."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ["federated.protocol", "federated.broker", "federated.aggregation", "federated.data",
            "federated.models", "federated.worker", "federated.crypto", "federated.attacks", "federated.compression", "federated.config", "federated.client", "federated.server",
            "federated.privacy"]
SNIPPETS = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "snippets"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda s: (not s.isupper(), s)) or exported == sorted(exported)
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol} is in __all__ but missing"


def test_broker_package_does_not_need_mlx() -> None:
    code = ("import sys; import federated.broker.coordinator, federated.broker.loop, federated.broker.service;"
            "assert not any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules), 'mlx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not SNIPPETS.is_dir(), reason="shared/seed/snippets is not beside this checkout")
@pytest.mark.parametrize("snippet", ["client_quickstart.py", "byzantine.py", "compression.py"])
def test_seed_snippet_runs_as_written(snippet: str) -> None:
    proc = subprocess.run([sys.executable, snippet], cwd=SNIPPETS, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the snippet must print its result"
