"""Helpers shared by the tests, importable from any test as ``support`` (pytest's ``pythonpath`` puts tests/
on the path). Fixtures stay in conftest.py files; nothing here is a test.

- ``codec``: frames as bytes, messages through the real codec
- ``processes``: free ports, child processes in groups of their own, killed whole
- ``broker``: settings for a ``flbroker`` process, a real broker loop on a thread
- ``simulate``: ``fl`` as a user runs it, and its ``--json`` result
- ``coordinator``: the round state machine driven by hand with a fake clock
- ``workers``: scripted secure-aggregation workers against a coordinator in memory
- ``sessions``: real worker sessions driven without sockets
- ``loops``: worker loops against hand-made brokers
"""

from .broker import BrokerThread, CurveClientKeys, broker_config, enrolled_workers
from .codec import frames_of, round_trip, through_codec, wire
from .coordinator import (
    HARNESS_BROKER,
    HARNESS_T0,
    CoordinatorHarness,
    FakeClock,
    decoded,
    harness_config,
    harness_weights,
    of_type,
    tasked,
)
from .loops import LOOP_WEIGHTS, HandRouter, loop_client, loop_fit, run_loop
from .processes import BIN, LONGEST_WAIT_S, Proc, free_port, kill_group, run_in_group
from .sessions import (
    SESSION_SIZE,
    SESSION_WEIGHTS,
    fit_with,
    secagg_params,
    secure_task,
    sends,
    train_now,
    worker_session,
)
from .simulate import FL, FL_TIMEOUT_S, fl_json, last_json, run_fl, simulate_json
from .workers import (
    SECURE_WEIGHTS,
    HonestMember,
    SecureFakeWorker,
    run_coordinator_round,
    secure_round_config,
)

__all__ = [
    "BIN",
    "FL",
    "FL_TIMEOUT_S",
    "HARNESS_BROKER",
    "HARNESS_T0",
    "LONGEST_WAIT_S",
    "LOOP_WEIGHTS",
    "SECURE_WEIGHTS",
    "SESSION_SIZE",
    "SESSION_WEIGHTS",
    "BrokerThread",
    "CoordinatorHarness",
    "CurveClientKeys",
    "FakeClock",
    "HandRouter",
    "HonestMember",
    "Proc",
    "SecureFakeWorker",
    "broker_config",
    "decoded",
    "enrolled_workers",
    "fit_with",
    "fl_json",
    "frames_of",
    "free_port",
    "harness_config",
    "harness_weights",
    "kill_group",
    "last_json",
    "loop_client",
    "loop_fit",
    "of_type",
    "round_trip",
    "run_coordinator_round",
    "run_fl",
    "run_in_group",
    "run_loop",
    "secagg_params",
    "secure_round_config",
    "secure_task",
    "sends",
    "simulate_json",
    "tasked",
    "through_codec",
    "train_now",
    "wire",
    "worker_session",
]
