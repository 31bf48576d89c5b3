"""Key files: the broker's CURVE key pair, each worker's CURVE key pair and Ed25519 identity, and the
broker's record of which workers are enrolled.

Layout::

    <broker keys dir>/                      created 0700
        broker.key                          broker-public: the CURVE key every worker pins (copy it to them)
        broker.key_secret                   broker-secret, mode 0600: never leaves the broker host
        enrolled/<worker_id>.pub            worker-public + "enrolled_at", one per enrolled worker
        revoked/<worker_id>.<unix ms>.pub   revoked workers, moved here for the record; never read back

    <worker dir>/                           created 0700
        <worker_id>.pub                     worker-public: copy it to the broker host, then `fl keys enrol`
        <worker_id>.secret                  worker-secret, mode 0600: stays on the worker

One module per concept:

- ``format``: the file format (strict JSON, four kinds), parsing and checks, durable 0600 writes, and
  :class:`KeyFileError`, whose messages name the file, the field and the fix and never quote a secret
- ``broker``: the broker's keys (``create_broker_keys``, ``load_broker_keys``, ``load_broker_public``)
- ``worker``: a worker's keys and fingerprint (``create_worker_keys``, ``load_worker_keys``)
- ``enrolment``: ``enrol_worker``, ``revoke_worker``, ``list_enrolled`` and :class:`Enrolment`, the running
  broker's view (also its pyzmq CURVE credentials provider)

Layer (DESIGN §2): above ``crypto`` and ``protocol``, which it imports (with :mod:`federated.durable`);
``crypto`` never imports it.
"""

from __future__ import annotations

from federated.keys.broker import (
    BROKER_PUBLIC,
    BROKER_SECRET,
    BrokerKeys,
    create_broker_keys,
    load_broker_keys,
    load_broker_public,
)
from federated.keys.enrolment import (
    ENROLLED_DIR,
    REVOKED_DIR,
    EnrolledWorker,
    Enrolment,
    enrol_worker,
    list_enrolled,
    revoke_worker,
)
from federated.keys.format import FORMAT, KeyFileError, check_secret_mode
from federated.keys.worker import WorkerKeys, create_worker_keys, fingerprint, load_worker_keys

__all__ = [
    "BROKER_PUBLIC",
    "BROKER_SECRET",
    "ENROLLED_DIR",
    "FORMAT",
    "REVOKED_DIR",
    "BrokerKeys",
    "EnrolledWorker",
    "Enrolment",
    "KeyFileError",
    "WorkerKeys",
    "check_secret_mode",
    "create_broker_keys",
    "create_worker_keys",
    "enrol_worker",
    "fingerprint",
    "list_enrolled",
    "load_broker_keys",
    "load_broker_public",
    "load_worker_keys",
    "revoke_worker",
]
