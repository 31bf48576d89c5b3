"""The public surface of federated.data stays explicit and sorted."""

from __future__ import annotations

import federated.data


def test_all_is_sorted_and_resolves() -> None:
    names = federated.data.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for name in names:
        assert getattr(federated.data, name) is not None


def test_data_error_is_a_value_error() -> None:
    assert issubclass(federated.data.DataError, ValueError)
