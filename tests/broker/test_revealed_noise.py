"""The broker can unmask a sum of fewer than ``min_clients`` inputs, so distributed DP's noise must already
be enough there (issue 13, item 13).

A real secure round with distributed DP, five workers and ``min_clients`` 5 (threshold t = 3): one leaves
before sending its masked input. The secure-aggregation machine unmasks the four others' sum (each
survivor's self-mask seed has t = 3 surviving holders among its neighbours); the coordinator then fails the
round for ``min_clients``, but the broker has seen the sum. That sum must carry the charged noise:
2 * 4 * mu >= (sigma * clip * 2^f)^2. With the noise sized for ``min_clients`` survivors (the old ledger)
it carried 4/5 of it. (The ledger sizes for t = 3, one share of margin: a seed's holders are its owner's
neighbours, so an honest broker needs t + 1 survivors; the margin covers a broker that does not follow
the protocol.)
"""

from __future__ import annotations

from typing import Any

import pytest
from support import HonestMember, run_coordinator_round

from federated.broker import secure_round
from federated.config import BrokerConfig, FederatedConfig, PrivacyConfig, SecureConfig
from federated.crypto.fixedpoint import decode_sum
from federated.protocol import Shares


def test_a_sum_below_min_clients_is_revealed_and_carries_the_charged_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    revealed: list[Any] = []
    original = secure_round.SecureRound.results

    def spy(self: secure_round.SecureRound) -> Any:
        results = original(self)
        revealed.extend(results)
        return results

    monkeypatch.setattr(secure_round.SecureRound, "results", spy)
    config = FederatedConfig(num_clients=5, clients_per_round=5, num_rounds=1, min_clients=5,
                             secure=SecureConfig(enabled=True),
                             privacy=PrivacyConfig(mode="distributed", noise_multiplier=1.0, clip=1.0),
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    workers = [HonestMember(f"w{i}", 10, 0.01 * (i + 1)) for i in range(5)]
    coordinator, _ = run_coordinator_round(list(workers), vanish_at={"w4": Shares}, config=config)
    (record,) = coordinator.history
    assert record.status == "failed" and "min_clients is 5" in (record.error or ""), record.error
    (machine, result), *_ = revealed
    assert len(result.survivors) == 4 == machine.params.threshold + 1
    _, weight = decode_sum(result.total, machine.params.frac_bits)
    assert weight == 4  # the unmasked sum of four workers' inputs, held by the broker
    ledger = coordinator.privacy
    assert ledger is not None
    charged = (ledger.sigma * ledger.clip * 2.0**machine.params.frac_bits) ** 2
    assert 2 * 4 * ledger.skellam_mu >= charged * (1 - 1e-12)
