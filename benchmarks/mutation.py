"""Mutation check (issue 17, "Make it stay so"): remove each safeguard we claim, one at a time, in a scratch
copy of the repository, run the tests meant to guard it, and show that at least one of them fails.

The safeguards are those the README (threat model, secure aggregation, differential privacy), DESIGN.md
§5-6 and issues 13 and 17 promise. Each removal is a :class:`Mutation`: one or more exact ``(file, old text,
new text)`` replacements, so a reviewer reads precisely what was taken away. If an ``old`` text is not
found exactly once (the code moved), the script stops before running anything and names every stale
mutation: update the text, never drop the mutation silently.

How a mutation is run:

1. the tracked files of ``--ref`` (default ``HEAD``; ``--worktree`` takes the working tree's tracked and
   untracked, not ignored, files instead) are copied to a temporary directory (``git archive``);
2. **baseline**: the union of every mutation's tests runs once on the unmutated copy; a mutation any of
   whose test files fails there is an error, not run (a failure under it would prove nothing), and the
   others go on (``--no-baseline`` skips this run);
3. for each mutation: the replacements are applied, the changed files must still compile, and
   ``python -m pytest -x`` runs its tests with this interpreter (run the script with ``uv run`` and it is
   the project's virtualenv), ``PYTHONPATH`` = the copy and ``PYTHONDONTWRITEBYTECODE=1`` (no ``.pyc``
   can outlive a mutation). A small pytest plugin written into the copy stops the run (an error, not a
   kill) unless ``federated`` and every mutated module are imported from the copy and hold the new text;
   then the files are restored. Exit status 1 (a test failed) is **killed**, 0 is **survived**;
   anything else (collection error, no tests, timeout) is an **error** to look at.

Prints one JSON line, ``{"benchmark": "mutation", "ref", "mutations", "killed", "survived", "errors",
"seconds", "baseline_seconds", "results": [{"name", "status", "by", "seconds"}]}`` (``by``: the first
failing test), and a table on stderr. Exit status 0 when every mutation is killed, 1 if one survived, 2
on an error (stale text, a failing baseline, a wrong import). Usage::

    uv run python benchmarks/mutation.py [--only NAME ...] [--list] [--ref REF | --worktree] [--keep]

Why not mutmut as the gate. Issue 17 asks for a well-kept tool where it fits. mutmut 3.8.1 (current on
PyPI, December 2026) runs here (it needs ``fork``, which Linux has), but not on ``federated/crypto`` and
``federated/privacy`` within about 10 minutes of 2 cores, measured:

- all of both packages is ~4,600 mutants (5,858 before the key files left crypto). Most take 0.1 s (a
  fork, then only the tests that reach the mutated function), but any mutant whose tests run MLX hangs in
  the forked child until mutmut's CPU limit (~15 s; MLX does not survive ``fork``): all of
  ``privacy/dpsgd.py`` and ``manager.py``, and ``noise``/``ledger``/``skellam`` functions reached by
  MLX tests. After 20 minutes, 2,980 of 4,568 were done;
- leaving out ``dpsgd.py``, ``manager.py`` (MLX), ``accountant.py`` (its tests run dp-accounting's
  PLD, ~4 s a mutant: 338 mutants, ~11 minutes alone) and the MLX test files: 3,981 mutants, ~10
  CPU-minutes (20 wall minutes on this shared machine, 3,630 done), with 714 survivors (20%), most of
  them error-message wording; far too many to triage as a gate;
- covering only the crypto and privacy tests misses where most safeguards are tested (the malicious-
  broker harness, the broker's checks, the coordinator), and nothing marks which of thousands of
  mutants removes a *claimed* safeguard.

So the targeted list is the gate, and ``--mutmut`` (:func:`run_mutmut`, the scoped sweep above, by hand)
is the wide net: its survivors led to two of the mutations below (distinct signers, shares from
non-neighbours). Results and the survivors judged harmless: ``benchmarks/MUTATION.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (found exactly once) with ``new`` in ``path`` (relative to the repository)."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    """One safeguard removed: ``claim`` says what is promised and where; ``tests`` are pytest node ids or
    files, the smallest selection that should catch the removal."""

    name: str
    claim: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def _m(name: str, claim: str, path: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(name, claim, (Edit(path, old, new),), tuple(tests))


WORKER = "federated/crypto/secagg_worker.py"
BROKER = "federated/crypto/secagg_broker.py"
FLOOR = "federated/crypto/floor.py"
DECODE = "federated/broker/secure_round.py"
COORD = "federated/broker/coordinator.py"
SESSION = "federated/worker/session.py"
RUNNER = "federated/worker/runner.py"
MALICIOUS = "tests/worker/test_malicious_broker.py"
FUZZ = "tests/broker/test_secagg_fuzz.py"
BOUNDS = "tests/broker/test_sum_bounds.py"
GUARDS = "tests/crypto/test_secagg_unmask_guards.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---------------------------------------------------------------- the worker's refusals (secagg_worker)
    _m(
        "worker-share-senders",
        "issue 13 #1, DESIGN §5: a worker refuses to go on with fewer than t share senders",
        WORKER,
        "        if len(shares.senders) < self.params.threshold:\n",
        "        if False:\n",
        f"{MALICIOUS}::test_a_worker_refuses_to_mask_with_fewer_than_t_share_senders",
    ),
    _m(
        "worker-floor-in-roster",
        "issue 13 #2, DESIGN §5: the worker enforces its own floor on the broker's graph",
        WORKER,
        "        self.floor.check_graph(self.params.threshold, len(self.neighbours))\n",
        "        pass\n",
        f"{MALICIOUS}::test_a_worker_refuses_a_threshold_that_lets_both_secrets_be_rebuilt",
        f"{MALICIOUS}::test_a_worker_refuses_fewer_neighbours_than_its_minimum_degree",
    ),
    _m(
        "worker-roster-signatures",
        "README threat model: workers check the signatures on the roster",
        WORKER,
        "            verify(ident, sig, advertise_message(round_id, wid, c, s, commit))\n",
        "            pass\n",
        "tests/crypto/test_secagg_trials.py",
        MALICIOUS,
    ),
    _m(
        "worker-unmask-other-session",
        "README threat model: a request from another session is refused",
        WORKER,
        "        if session != self.session:\n",
        "        if False:\n",
        "tests/crypto/test_roster_binding.py::test_a_request_for_the_other_view_is_refused",
    ),
    _m(
        "worker-unmask-not-a-survivor",
        "README threat model: a request that names the worker itself as dropped is refused",
        WORKER,
        "        if self.worker_id not in survivors:\n",
        "        if False:\n",
        f"{GUARDS}::test_a_worker_does_not_sign_a_survivor_set_that_leaves_it_out",
    ),
    _m(
        "worker-unmask-below-t",
        "README, DESIGN §5: a request whose survivors are fewer than t is refused",
        WORKER,
        "        if len(survivors) < needed:\n",
        "        if False:\n",
        f"{MALICIOUS}::test_a_worker_refuses_to_sign_a_survivor_set_below_its_floor",
        "tests/crypto/test_secagg_trials.py",
    ),
    _m(
        "worker-unmask-signed-set",
        "issue 13 #2, DESIGN §5: unmask only for the survivor set this worker signed",
        WORKER,
        "        if tuple(request.survivors) != self.signed_survivors:\n",
        "        if False:\n",
        MALICIOUS,
    ),
    _m(
        "worker-unmask-overlap",
        "README, DESIGN §5: survivor and dropped sets that overlap are refused",
        WORKER,
        "        if survivors & dropped:\n",
        "        if False:\n",
        "tests/crypto/test_secagg_trials.py",
        MALICIOUS,
    ),
    _m(
        "worker-unmask-consistency-signatures",
        "issue 13 #2, DESIGN §5: unmask only with t valid consistency signatures over the same set",
        WORKER,
        "        self._check_signatures(request)\n",
        "        pass\n",
        f"{MALICIOUS}::test_split_survivor_sets_are_refused_by_the_consistency_check",
        MALICIOUS,
    ),
    _m(
        "worker-unmask-signature-count",
        "issue 13 #2: at least t consistency signatures",
        WORKER,
        "        if len(signers) < self.params.threshold:\n",
        "        if False:\n",
        MALICIOUS,
        "tests/crypto/test_secagg_trials.py",
    ),
    _m(
        "worker-unmask-distinct-signers",
        "issue 13 #2: t signatures from t distinct survivors (one signature repeated is one signer)",
        WORKER,
        "        if len(set(signers)) != len(signers) or not set(signers) <= set(request.survivors):\n",
        "        if not set(signers) <= set(request.survivors):\n",
        f"{GUARDS}::test_one_consistency_signature_repeated_does_not_count_as_t",
    ),
    _m(
        "worker-shares-from-non-neighbours",
        "DESIGN §5 (SecAgg+): a worker takes shares only from its neighbours",
        WORKER,
        "        if stray:\n",
        "        if False:\n",
        f"{GUARDS}::test_shares_from_a_sender_outside_the_roster_are_refused",
    ),
    _m(
        "worker-unmask-signature-verify",
        "issue 13 #2: every consistency signature must verify",
        WORKER,
        "            verify(ident, sig, message)\n",
        "                pass\n",
        MALICIOUS,
        "tests/crypto/test_secagg_trials.py",
    ),
    _m(
        "worker-unmask-one-shot",
        "README threat model: a worker answers at most one unmask request per round "
        "(the stage changes before the answer is built)",
        WORKER,
        '        self.stage = "done"  # before building the answer: a second request must never be served\n',
        "        pass\n",
        f"{GUARDS}::test_a_worker_answers_one_unmask_request_even_for_the_set_it_signed",
    ),
    _m(
        "worker-self-mask-from-os",
        "README: secrets from the OS CSPRNG (the self-mask seed b is os.urandom(32))",
        WORKER,
        "        self._b = os.urandom(32)\n",
        "        self._b = bytes(range(32))\n",
        "tests/crypto/test_randomness_sources.py",
    ),
    # ---------------------------------------------------------------- the worker's floor (floor.py)
    _m(
        "floor-2t-over-k-plus-colluders",
        "issue 13 #2, DESIGN §5: the floor 2t > k + colluders",
        FLOOR,
        "        if 2 * threshold <= degree + self.assumed_colluders:\n",
        "        if False:\n",
        f"{MALICIOUS}::test_a_worker_refuses_a_threshold_that_lets_both_secrets_be_rebuilt",
    ),
    _m(
        "floor-ignores-colluders",
        "issue 13 #2: the floor counts the colluders it assumes (--secagg-colluders)",
        FLOOR,
        "        if 2 * threshold <= degree + self.assumed_colluders:\n",
        "        if 2 * threshold <= degree:\n",
        f"{MALICIOUS}::test_a_worker_refuses_a_threshold_that_lets_both_secrets_be_rebuilt",
    ),
    _m(
        "floor-min-degree",
        "DESIGN §5: the worker enforces a minimum degree",
        FLOOR,
        "        if degree < self.min_degree:\n",
        "        if False:\n",
        f"{MALICIOUS}::test_a_worker_refuses_fewer_neighbours_than_its_minimum_degree",
    ),
    _m(
        "floor-min-survivors",
        "issue 13 #13: --secagg-min-survivors raises the fewest survivors a worker unmasks",
        FLOOR,
        "        return max(threshold, self.min_survivors)\n",
        "        return threshold\n",
        MALICIOUS,
        "tests/privacy/test_noise_sizing.py",
    ),
    # ---------------------------------------------------------------- session id and the broker's checks
    _m(
        "session-hash-roster",
        "README threat model, issue 17 #2: the session id binds the roster, so "
        "different rosters break the round",
        "federated/crypto/params.py",
        "        h.update(_lp(wid.encode()) + _lp(c) + _lp(s) + _lp(ident) + _lp(commit))\n",
        "        pass\n",
        "tests/crypto/test_roster_binding.py",
    ),
    _m(
        "broker-b-commitment",
        "issue 13 #5, README: every rebuilt seed is checked against its signed "
        "commitment, so the broker never accepts a wrong sum",
        BROKER,
        "functools.partial(_opens_commitment, self.round_id, u, self._commits[u]))",
        "lambda secret: True)",
        f"{MALICIOUS}::test_a_tampered_self_mask_share_among_exactly_t_aborts_instead_of_skewing_the_sum",
    ),
    _m(
        "broker-s-key-check",
        "secagg_broker: each rebuilt mask key is checked against its public key",
        BROKER,
        "functools.partial(_matches_public, public=s_pk_of[u]))",
        "lambda secret: True)",
        GUARDS,
    ),
    _m(
        "broker-advertise-signature",
        "DESIGN §5: signed key advertisements, checked by the broker on arrival",
        BROKER,
        "        verify(self.identities[wid], msg.signature,\n"
        "               advertise_message(self.round_id, wid, msg.c_pk, msg.s_pk, msg.b_commit))\n",
        "        pass\n",
        FUZZ,
        "tests/crypto/test_secagg_trials.py",
    ),
    _m(
        "broker-low-order-probe",
        "README threat model: keys of low order are refused on arrival",
        BROKER,
        "        x25519_shared(self._probe, msg.c_pk)  # ProtocolViolation for a low-order point\n"
        "        x25519_shared(self._probe, msg.s_pk)\n",
        "        pass\n",
        FUZZ,
    ),
    _m(
        "broker-share-in-field",
        "README threat model: shares outside the field are refused on arrival",
        BROKER,
        "                shamir.from_bytes(bytes(row))\n            except ValueError as exc:  # refused",
        "                pass\n            except ValueError as exc:  # refused",
        FUZZ,
    ),
    _m(
        "broker-unmask-share-owners",
        "secagg_broker: unmask shares only for workers the sender holds, of the right kind",
        BROKER,
        "        if set(msg.b_owners) - (peers & survivors) or set(msg.s_owners) - (peers - survivors):\n",
        "        if False:\n",
        FUZZ,
    ),
    _m(
        "broker-masked-input-shape",
        "README threat model: vectors of the wrong length or width are refused",
        BROKER,
        "        if msg.masked.shape != (self.params.vector_length,) or msg.masked.dtype != self.params.wire_dtype:\n",
        "        if False:\n",
        FUZZ,
    ),
    _m(
        "broker-share-routing",
        "DESIGN §5 (SecAgg+): a worker's shares go to exactly its neighbours",
        BROKER,
        "        if tuple(msg.recipients) != self.graph[wid]:\n",
        "        if False:\n",
        FUZZ,
        "tests/crypto/test_secagg_trials.py",
    ),
    _m(
        "shamir-coefficients-from-os",
        "README: secrets from the OS CSPRNG (Shamir coefficients from secrets)",
        "federated/crypto/shamir.py",
        "PRIME, secrets.randbelow)",
        "PRIME, lambda prime: 1)",
        "tests/crypto/test_shamir_coefficients.py",
    ),
    _m(
        "aead-nonce-from-os",
        "primitives: a fresh AES-GCM nonce from os.urandom on every call",
        "federated/crypto/primitives.py",
        "    nonce = os.urandom(NONCE_BYTES)\n",
        "    nonce = bytes(NONCE_BYTES)\n",
        "tests/crypto/test_crypto_primitives.py",
        "tests/crypto/test_randomness_sources.py",
    ),
    _m(
        "no-wrap-check",
        "README: a configuration whose sum could wrap around 2^32 is refused when it loads",
        "federated/crypto/params.py",
        "        check_no_wrap(self.n_max, float(self.clip), self.weight_cap, self.frac_bits, self.ring_bits)\n",
        "        pass\n",
        "tests/crypto/test_params_wrap.py",
    ),
    # ---------------------------------------------------------------- decoded sums (broker/secure_round.py)
    _m(
        "sum-weight-range",
        "issue 13 #3-4: the summed weight is a whole number in [n, n * weight_cap]",
        DECODE,
        "    if not (weight.is_integer() and inputs <= weight <= inputs * params.weight_cap):\n",
        "    if not weight > 0:\n",
        f"{BOUNDS}::test_distributed_dp_sum_with_a_weight_of_one_unit_is_refused",
        f"{BOUNDS}::test_a_member_claiming_131_times_the_weight_cap_is_refused",
        f"{BOUNDS}::test_a_weight_that_is_not_whole_is_refused",
    ),
    _m(
        "sum-loss-range",
        "issue 13 #3: the weighted loss of a sum is in range",
        DECODE,
        "    if not 0 <= Fraction(loss) <= loss_cap:\n",
        "    if False:\n",
        f"{BOUNDS}::test_distributed_dp_sum_with_a_weighted_loss_out_of_range_is_refused",
        f"{BOUNDS}::test_metric_sums_out_of_range_are_refused",
    ),
    _m(
        "sum-accuracy-range",
        "issue 13 #3: the weighted accuracy of a sum is in range",
        DECODE,
        "    if not 0 <= Fraction(accuracy) <= accuracy_cap:\n",
        "    if False:\n",
        f"{BOUNDS}::test_metric_sums_out_of_range_are_refused",
    ),
    _m(
        "sum-norm-bound",
        "issue 13 #3: the norm of a sum is within the clip plus rounding and the noise tail",
        DECODE,
        "    if not norm <= bound:\n",
        "    if False:\n",
        f"{BOUNDS}::test_distributed_dp_sum_with_large_data_coordinates_is_refused",
    ),
    _m(
        "bucket-shuffle-csprng",
        "issue 17 #6: buckets are shuffled with the CSPRNG",
        "federated/broker/planning.py",
        "    secrets.SystemRandom().shuffle(members)\n",
        '    __import__("random").shuffle(members)\n',
        "tests/broker/test_bucket_shuffle.py",
    ),
    # ---------------------------------------------------------------- the coordinator
    _m(
        "central-dp-planned-cohort",
        "README, issue 17 #3: central DP divides by the planned cohort size",
        "federated/privacy/central.py",
        "    return (total / planned).astype(np.float32)\n",
        "    return (total / len(updates)).astype(np.float32)\n",
        "tests/broker/test_central_dp_guard.py",
    ),
    _m(
        "central-dp-clipping",
        "README, DESIGN §6: central DP clips each update to the clip",
        "federated/privacy/central.py",
        "        clipped, norm = clip_vector(row, clip)\n",
        "        clipped, norm = row, float(np.linalg.norm(row))\n",
        "tests/broker/test_central_dp_guard.py",
    ),
    Mutation(
        "failed-round-charged",
        "README, issue 17 #4: a round is charged when it starts, so a failed "
        "round is charged too (mutation: charge only rounds that complete)",
        (
            Edit(
                "federated/broker/launch.py",
                "        rnd.epsilon = privacy.charge_round()\n",
                "        rnd.epsilon = privacy.next_round_epsilon()\n",
            ),
            Edit(
                COORD,
                "        new_weights = self.aggregator.step(self.weights, aggregate.mean)\n",
                "        if self.privacy is not None:\n            self.privacy.charge_round()\n"
                "        new_weights = self.aggregator.step(self.weights, aggregate.mean)\n",
            ),
        ),
        ("tests/broker/test_failed_round_charge.py",),
    ),
    _m(
        "min-clients-plain",
        "README: the broker never completes a round without min_clients updates",
        "federated/broker/plain_round.py",
        "        failure = too_few(survivors, self.plan.cohort, self.min_clients)\n        return Collected(",
        "        failure = None\n        return Collected(",
        "tests/broker/test_coordinator.py",
    ),
    _m(
        "min-clients-secure",
        "README: a secure round with fewer than min_clients survivors fails",
        DECODE,
        "        failure = too_few(survivors, self.plan.cohort, self.min_clients)\n        if failure is not None:",
        "        failure = None\n        if failure is not None:",
        "tests/broker/test_revealed_noise.py",
    ),
    _m(
        "round-id-burned",
        "issue 13 #6: the broker burns an interrupted round's id before any TASK leaves",
        "federated/broker/launch.py",
        '        store.set_meta("started_round", plan.round_id)\n',
        "        pass\n",
        "tests/broker/test_resume.py",
    ),
    _m(
        "identity-binding",
        "issue 13 #11, README: every message is checked against the key enrolled for that worker id",
        "federated/broker/admission.py",
        "        if enrolled is not None and enrolled.worker_id != wid:\n",
        "        if False:\n",
        "tests/broker/test_identity_binding.py",
    ),
    _m(
        "plaintext-warning",
        "README, issue 17 #6: a broker without keys warns when it listens beyond loopback",
        "federated/broker/service.py",
        '        if not config.broker.bind.startswith(("tcp://127.", "tcp://localhost:", "ipc://", "inproc://")):\n',
        "        if False:\n",
        "tests/broker/test_plaintext_warning.py",
    ),
    # ---------------------------------------------------------------- privacy
    _m(
        "skellam-poisson-split",
        "issue 13 #14: no Poisson draw asks NumPy for a mean above 1e10",
        "federated/privacy/noise.py",
        "    parts = math.ceil(mu / POISSON_EXACT_MAX)\n",
        "    parts = 1\n",
        "tests/privacy/test_skellam_range.py::test_no_draw_asks_numpy_for_more_than_1e10",
    ),
    _m(
        "noise-rng-from-os",
        "README: noise from a PCG64 generator seeded with 256 bits from the OS",
        "federated/privacy/noise.py",
        '    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))\n',
        "    return np.random.Generator(np.random.PCG64(0))\n",
        "tests/privacy/test_noise.py",
        "tests/crypto/test_randomness_sources.py",
    ),
    _m(
        "noise-sized-for-revealed-sum",
        "issue 13 #13: distributed noise is sized for the smallest sum the "
        "broker can unmask, min(t, min_clients)",
        "federated/privacy/ledger.py",
        "    return min([floor, *thresholds])\n",
        "    return floor\n",
        "tests/privacy/test_noise_sizing.py",
    ),
    _m(
        "budget-enforced",
        "README, DESIGN §6: a round whose spend would exceed the budget does not start",
        "federated/privacy/ledger.py",
        "        return self.budget is None or self.next_round_epsilon() <= self.budget\n",
        "        return True\n",
        "tests/broker/test_failed_round_charge.py::test_the_budget_counts_the_failed_round",
    ),
    # ---------------------------------------------------------------- the worker (session, runner, randomness)
    _m(
        "worker-replay-check",
        "issue 13 #6: a worker refuses a round of a run it already sent a masked input for",
        SESSION,
        "            if self.ledger.seen(run, task.round_id):\n",
        "            if False:\n",
        f"{MALICIOUS}::test_a_replayed_round_is_refused_before_any_key_or_training",
    ),
    _m(
        "worker-replay-record",
        "issue 13 #6: the (run, round) is recorded before the masked input leaves",
        SESSION,
        "        self.ledger.record(sec.run, sec.machine.round_id)\n",
        "        pass\n",
        f"{MALICIOUS}::test_a_replayed_round_is_refused_before_any_key_or_training",
    ),
    _m(
        "worker-distributed-noise-floor",
        "issue 13 #8: --dp-min-noise bounds distributed noise at the smallest "
        "sum the worker lets be unmasked",
        SESSION,
        "        if sigma < self.min_noise:\n",
        "        if False:\n",
        f"{MALICIOUS}::test_a_worker_with_a_noise_floor_refuses_distributed_noise_below_it",
    ),
    _m(
        "runner-untrusted-spec",
        "README, issue 17 #1: workers do not run code the broker names",
        RUNNER,
        "        if not isinstance(spec, str) or (spec not in BUILTIN and spec != self.trusted_spec):\n",
        "        if not isinstance(spec, str):\n",
        "tests/worker/test_runner_trust.py",
    ),
    _m(
        "runner-dpsgd-min-noise",
        "README, issue 17 #5: flworker --dp-min-noise refuses a task without enough DP-SGD noise",
        RUNNER,
        "        if self.min_noise_multiplier > 0 and not (\n",
        "        if False and not (\n",
        "tests/cli/test_worker_min_noise.py::test_runner_refuses_a_task_below_its_noise_floor_before_training",
    ),
    _m(
        "training-seed-local",
        "issue 13 #12: a real worker's training seed comes from the OS, not the task seed",
        "federated/worker/randomness.py",
        '        return int.from_bytes(os.urandom(4), "little")\n',
        "        return task_seed\n",
        f"{MALICIOUS}::test_a_real_workers_training_seed_cannot_be_computed_or_replayed_by_the_broker",
    ),
    _m(
        "local-randomness-from-os",
        "issue 13 #12: rounding and distributed noise come from the worker's OS",
        "federated/worker/randomness.py",
        "            return os.urandom(n)\n",
        "            return bytes(n)\n",
        "tests/worker/test_local_randomness.py",
    ),
    _m(
        "distributed-metrics-zeroed",
        "README: under distributed DP loss and accuracy are zeroed (un-noised, they would leak)",
        "federated/worker/secure.py",
        "        loss = accuracy = 0.0\n        evaluation = None\n",
        "        pass\n",
        "tests/privacy/test_distributed_dp.py",
    ),
    _m(
        "distributed-weight-one",
        "README, secure.py: under distributed DP a worker weighs 1 whatever weight_cap the TASK names",
        "federated/worker/secure.py",
        "        evaluation = None\n        num_samples = 1\n",
        "        evaluation = None\n",
        "tests/worker/test_distributed_weight.py",
    ),
    # ---------------------------------------------------------------- federated evaluation, data, sampling
    _m(
        "decode-evaluated-weight",
        "issue 16, secure_round.decode_round: a secure sum's evaluated weight is a whole number in [0, W]",
        DECODE,
        "    if not (evaluated.is_integer() and 0 <= evaluated <= weight):\n",
        "    if False:\n",
        f"{BOUNDS}::test_metric_sums_out_of_range_are_refused",
    ),
    _m(
        "decode-evaluation-accuracy",
        "issue 16, secure_round.decode_round: a secure sum's weighted evaluation accuracy is within [0, E]",
        DECODE,
        "    if not 0 <= Fraction(eval_accuracy) <= Fraction(evaluated) + rounding:\n",
        "    if False:\n",
        f"{BOUNDS}::test_metric_sums_out_of_range_are_refused",
    ),
    _m(
        "plain-score-bounds",
        "issue 16, records.federated_score: a plain worker's impossible scores are left out",
        "federated/broker/records.py",
        "        if not (0.0 <= accuracy <= 1.0 and loss >= 0.0 and samples >= 1 and float(samples).is_integer()\n",
        "        if False and (0.0 <= accuracy <= 1.0 and loss >= 0.0 and samples >= 1 and float(samples).is_integer()\n",
        "tests/broker/test_federated_evaluation.py",
    ),
    _m(
        "worker-data-fits-task",
        "issue 16, runner.check_data_fits: a worker refuses data its TASK's model cannot take, naming both",
        RUNNER,
        "        check_data_fits(model, x, y)\n",
        "        pass\n",
        "tests/worker/test_worker_evaluation.py",
    ),
    _m(
        "poisson-csprng",
        "issue 15, selection: Poisson samples come from the OS CSPRNG, not the broker's seeded generator",
        "federated/broker/selection.py",
        "        self._secret = secrets.SystemRandom()\n",
        "        self._secret = rng\n",
        "tests/broker/test_poisson_sampling.py",
    ),
    # ---------------------------------------------------------------- keys and the wire
    _m(
        "secret-key-file-mode",
        "README: a secret key file readable by others is refused",
        "federated/keys/format.py",
        "    if mode & 0o077:\n",
        "    if False:\n",
        "tests/keys/test_keyfiles.py",
    ),
    _m(
        "codec-non-finite",
        "README threat model: NaN/Inf tensors are refused before use",
        "federated/protocol/codec.py",
        "        if not allow_non_finite and arr.size and (\n",
        "        if False and (\n",
        "tests/protocol/test_codec.py",
    ),
    _m(
        "inflight-reused-descriptor",
        "README threat model: one connection can make the broker hold about one largest message, also on "
        "a descriptor number that a closed connection left (mutation: keep the closed one's credit)",
        "federated/broker/inflight.py",
        "        if credit > received:\n",
        "        if False:\n",
        "tests/broker/test_inflight_fd_reuse.py",
    ),
    _m(
        "shared-connection-tag-scope",
        "README threat model: a tag names a session only on the connection that drew it (mutation: the "
        "virtual route leaves out the connection)",
        "federated/protocol/multiplex.py",
        "    return route.ljust(_ROUTING_ID_MAX, b\"\\0\") + bytes([len(route)]) + tag\n",
        "    return bytes(_ROUTING_ID_MAX) + bytes([len(route)]) + tag\n",
        "tests/network/test_shared_connection.py",
    ),
)


# ------------------------------------------------------------------------------------------ scratch copy

GUARD = '''"""pytest plugin of benchmarks/mutation.py: stop unless the scratch copy's code is what is imported."""
import importlib
import json
import os
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    root = Path(os.environ["FL_MUTATION_ROOT"]).resolve()
    import federated
    where = Path(federated.__file__).resolve()
    if root not in where.parents:
        pytest.exit(f"mutation guard: federated imported from {where}, not from {root}", returncode=4)
    for module, needle in json.loads(os.environ.get("FL_MUTATION_EXPECT", "[]")):
        path = Path(importlib.import_module(module).__file__).resolve()
        if root not in path.parents or needle not in path.read_text():
            pytest.exit(f"mutation guard: {module} ({path}) is not the mutated copy", returncode=4)
'''


def make_scratch(ref: str | None) -> tuple[Path, str]:
    """A temporary copy of the repository's tracked files at ``ref`` (``None``: the working tree).
    Returns (directory, a description of what was copied)."""
    scratch = Path(tempfile.mkdtemp(prefix="fl-mutation-"))
    if ref is None:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout
        for name in filter(None, listed.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, scratch / name)
        described = "worktree"
    else:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha], stdout=subprocess.PIPE)
        assert archive.stdout is not None
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(scratch, filter="data")
        if archive.wait() != 0:
            raise SystemExit(f"git archive {sha} failed")
        described = sha
    (scratch / "_mutation_guard.py").write_text(GUARD)
    return scratch, described


def stale_edits(scratch: Path, mutations: Sequence[Mutation]) -> list[str]:
    """Every edit whose ``old`` text is not found exactly once (the code moved): name, file and count."""
    problems = []
    for mutation in mutations:
        for test in mutation.tests:
            if not (scratch / test.split("::")[0]).is_file():
                problems.append(f"{mutation.name}: test file {test.split('::')[0]} is missing")
        for edit in mutation.edits:
            path = scratch / edit.path
            count = path.read_text().count(edit.old) if path.is_file() else -1
            if count != 1:
                where = "file missing" if count < 0 else f"old text found {count} times"
                problems.append(f"{mutation.name}: {edit.path}: {where}: {edit.old.strip()[:80]!r}")
    return problems


def _module_of(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def run_tests(
    scratch: Path,
    tests: Sequence[str],
    expect: Sequence[tuple[str, str]],
    timeout_s: float,
    stop_first: bool = True,
) -> tuple[int | None, str, float]:
    """``python -m pytest [-x]`` on ``tests`` in ``scratch``; (exit code or None on timeout, output, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(scratch), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "FL_MUTATION_ROOT": str(scratch),
        "FL_MUTATION_EXPECT": json.dumps(list(expect)),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *(["-x"] if stop_first else ["--continue-on-collection-errors"]),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "_mutation_guard",
        *tests,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out, time.monotonic() - start


def _failures(output: str) -> list[str]:
    """The node ids (or files, for a collection error) pytest's summary lists as FAILED or ERROR (not
    captured log lines, which also start with ERROR)."""
    return [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (tests/\S+)", output, re.MULTILINE)]


def _first_failure(output: str) -> str:
    return next(iter(_failures(output)), "")


def run_mutation(scratch: Path, mutation: Mutation, timeout_s: float) -> dict[str, object]:
    """Apply ``mutation`` to ``scratch``, run its tests, restore the files; its result."""
    originals = {edit.path: (scratch / edit.path).read_text() for edit in mutation.edits}
    try:
        # What the guard looks for in each mutated module: the new text with some of its surroundings,
        # which only the mutated file holds (also for a deletion).
        expect = []
        for edit in mutation.edits:
            path = scratch / edit.path
            before, after = path.read_text().split(edit.old, 1)
            path.write_text(before + edit.new + after)
            if edit.path.startswith("federated/"):
                expect.append((_module_of(edit.path), before[-40:] + edit.new + after[:40]))
        for name in originals:  # a mutation must change behaviour, not break the syntax
            compile((scratch / name).read_text(), name, "exec")
        code, out, seconds = run_tests(scratch, mutation.tests, expect, timeout_s)
    finally:
        for name, text in originals.items():
            (scratch / name).write_text(text)
    status = {1: "killed", 0: "survived"}.get(code, "error") if code is not None else "error"
    result: dict[str, object] = {
        "name": mutation.name,
        "status": status,
        "by": _first_failure(out),
        "seconds": round(seconds, 1),
    }
    if status == "error":
        result["detail"] = ("timeout" if code is None else f"pytest exit {code}: ") + out[-1500:]
    return result


# ------------------------------------------------------------------------------------------ mutmut


def run_mutmut(scratch: Path, max_children: int) -> int:
    """The wide sweep (by hand, not the gate): mutmut 3.8.1 over ``federated/crypto`` and
    ``federated/privacy`` in the scratch copy, less ``dpsgd.py`` and ``manager.py`` (MLX hangs in a forked
    child) and ``accountant.py`` (dp-accounting's slow tests), with the crypto, privacy and
    malicious-broker tests less those that run MLX. About 4,000 mutants, ~10 CPU-minutes. mutmut comes
    through ``uv run --with`` (nothing is added to the project); prints its summary and the survivors
    (``mutmut results``; ``mutmut show NAME`` in the kept copy, with ``--keep``, shows one).
    """
    ignored = [
        "test_dpsgd.py",
        "test_manager.py",
        "test_manager_accounting.py",
        "test_record_steps_match.py",
        "test_privacy_api.py",
    ]
    config = {
        "source_paths": ["federated"],
        "only_mutate": ["federated/crypto/*", "federated/privacy/*"],
        "do_not_mutate": [
            f"federated/privacy/{name}" for name in ("dpsgd.py", "manager.py", "accountant.py", "__init__.py")
        ]
        + ["federated/crypto/__init__.py"],
        "pytest_add_cli_args_test_selection": [
            "tests/crypto",
            "tests/privacy",
            "tests/worker/test_malicious_broker.py",
        ],
        "pytest_add_cli_args": [
            "-m",
            "not slow and not network",
            "-p",
            "no:cacheprovider",
            "-q",
            *(f"--ignore=tests/privacy/{name}" for name in ignored),
        ],
    }
    with (scratch / "pyproject.toml").open("a") as f:
        f.write(
            "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
        )
    base = ["uv", "run", "--project", str(ROOT), "--no-sync", "--with", "mutmut==3.8.1", "mutmut"]
    run = subprocess.run([*base, "run", "--max-children", str(max_children)], cwd=scratch, check=False)
    subprocess.run([*base, "results"], cwd=scratch, check=False)
    return run.returncode


# ------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ref", default="HEAD", help="commit to copy (default HEAD)")
    source.add_argument("--worktree", action="store_true", help="copy the working tree instead of a commit")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only these mutations"
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of all tests")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--mutmut", action="store_true", help="run mutmut's wide sweep instead (by hand)")
    parser.add_argument("--max-children", type=int, default=2, help="mutmut's parallel children (default 2)")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("mutation names must be unique")
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        raise SystemExit(f"unknown mutations: {', '.join(unknown)}")
    mutations = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:38} {m.claim}\n{'':38} tests: {' '.join(m.tests)}")
        return 0

    start = time.monotonic()
    scratch, ref = make_scratch(None if args.worktree else args.ref)
    try:
        if args.mutmut:
            return run_mutmut(scratch, args.max_children)
        stale = stale_edits(scratch, mutations)
        if stale:
            print(
                "mutation check: these old texts are not found exactly once (the code moved; update them):\n  "
                + "\n  ".join(stale),
                file=sys.stderr,
            )
            return 2
        baseline_s, broken = 0.0, set[str]()
        if not args.no_baseline:
            union = list(dict.fromkeys(t for m in mutations for t in m.tests))
            code, out, baseline_s = run_tests(scratch, union, [], args.timeout * 4, stop_first=False)
            broken = {f.split("::")[0] for f in _failures(out)}
            if code not in (0, 1) or (code == 1 and not broken):
                print(
                    f"mutation check: the baseline run failed (exit {code}):\n{out[-3000:]}", file=sys.stderr
                )
                return 2
            if broken:
                print(
                    "mutation check: failing without any mutation (their mutations are not run): "
                    + ", ".join(sorted(broken)),
                    file=sys.stderr,
                )
        results = []
        for mutation in mutations:
            unusable = sorted({t.split("::")[0] for t in mutation.tests} & broken)
            if unusable:
                result: dict[str, object] = {
                    "name": mutation.name,
                    "status": "error",
                    "by": "",
                    "seconds": 0.0,
                    "detail": f"fails unmutated: {', '.join(unusable)}",
                }
            else:
                result = run_mutation(scratch, mutation, args.timeout)
            results.append(result)
            print(
                f"  {result['status']:8} {mutation.name:38} {result['seconds']:6.1f} s  {result['by']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.keep:
            print(f"scratch copy kept at {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    killed = [r for r in results if r["status"] == "killed"]
    survived = [str(r["name"]) for r in results if r["status"] == "survived"]
    errors = [str(r["name"]) for r in results if r["status"] == "error"]
    print(f"\n{'mutation':38} {'status':9} {'s':>6}  killed by\n{'-' * 100}", file=sys.stderr)
    for r in results:
        print(f"{r['name']!s:38} {r['status']!s:9} {r['seconds']!s:>6}  {r['by']}", file=sys.stderr)
        if "detail" in r:
            print(f"    {r['detail']}", file=sys.stderr)
    print(
        f"{'-' * 100}\n{len(killed)}/{len(results)} killed; survived: {', '.join(survived) or 'none'}; "
        f"errors: {', '.join(errors) or 'none'}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "benchmark": "mutation",
                "ref": ref,
                "mutations": len(results),
                "killed": len(killed),
                "survived": survived,
                "errors": errors,
                "seconds": round(time.monotonic() - start, 1),
                "baseline_seconds": round(baseline_s, 1),
                "results": results,
            }
        ),
        flush=True,
    )
    return 2 if errors else 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
