"""No error about a secret key file quotes the secret, however the file is damaged (issue 13, item 10).

The old loader put the first 47 characters of a bad field's value into its message, so a secret key that
had lost one character (a bad copy, a truncated write) was printed almost whole to the terminal, the log
and whatever bug report the message was pasted into. Each case below damages a real secret file one way and
checks that the error names the file and the problem, and contains no 8-character run of either secret in
any encoding an eye or a grep would recognise (hex in both cases, Z85, base64 and URL-safe base64, with and
without padding).
"""

from __future__ import annotations

import base64
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from zmq.utils import z85

from federated.cli.keys import keys as keys_cli
from federated.keys import (
    KeyFileError,
    create_broker_keys,
    create_worker_keys,
    enrol_worker,
    load_broker_keys,
    load_worker_keys,
)

WINDOW = 8  # a run this long of a random key turning up in a message by chance is ~1e-10 per message


def encodings(raw: bytes) -> set[str]:
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {raw.hex(), raw.hex().upper(), z85.encode(raw).decode(), b64, b64.rstrip("="), url, url.rstrip("=")}


def secret_texts(doc: dict[str, Any]) -> set[str]:
    """Every recognisable spelling of the secrets in an intact secret file's JSON."""
    texts: set[str] = set()
    if "curve_secret" in doc:
        texts |= encodings(z85.decode(doc["curve_secret"])) | {doc["curve_secret"]}
    if "identity_secret" in doc:
        texts |= encodings(bytes.fromhex(doc["identity_secret"])) | {doc["identity_secret"]}
    return texts


def assert_quotes_no_secret(message: str, texts: set[str]) -> None:
    for text in texts:
        for i in range(len(text) - WINDOW + 1):
            assert text[i:i + WINDOW] not in message, f"secret run {text[i:i + WINDOW]!r} in: {message}"


# Each damage takes the intact JSON object and the name of one secret field and returns the file's new bytes.
Damage = Callable[[dict[str, Any], str], bytes]


def _edited(edit: Callable[[dict[str, Any], str], None]) -> Damage:
    def damage(doc: dict[str, Any], field: str) -> bytes:
        doc = dict(doc)
        edit(doc, field)
        return json.dumps(doc).encode()
    return damage


def _set(doc: dict[str, Any], key: str, value: object) -> None:
    doc[key] = value


def _middle(value: str, char: str) -> str:
    return value[:len(value) // 2] + char + value[len(value) // 2 + 1:]


DAMAGES: dict[str, Damage] = {
    "one character short": _edited(lambda d, f: _set(d, f, d[f][:-1])),
    "one character long": _edited(lambda d, f: _set(d, f, d[f] + d[f][0])),
    "first character lost": _edited(lambda d, f: _set(d, f, d[f][1:])),
    "a character outside the alphabet": _edited(lambda d, f: _set(d, f, _middle(d[f], "~" if f == "identity_secret"
                                                                                 else " "))),
    "a Z85 group beyond 2^32 or bad hex": _edited(lambda d, f: _set(d, f, "#####" + d[f][5:] if f == "curve_secret"
                                                                    else "zz" + d[f][2:])),
    "wrapped in a list": _edited(lambda d, f: _set(d, f, [d[f]])),
    "wrapped in an object": _edited(lambda d, f: _set(d, f, {"key": d[f]})),
    "doubled": _edited(lambda d, f: _set(d, f, d[f] * 2)),
    "with spaces around": _edited(lambda d, f: _set(d, f, f"  {d[f]} ")),
    "moved to worker_id": _edited(lambda d, f: _set(d, "worker_id", d.pop(f))),
    "moved to format": _edited(lambda d, f: _set(d, "format", d.pop(f))),
    "moved to kind": _edited(lambda d, f: _set(d, "kind", d.pop(f))),
    "moved to curve_public": _edited(lambda d, f: _set(d, "curve_public", d.pop(f))),
    "moved to identity_public": _edited(lambda d, f: _set(d, "identity_public", d.pop(f))),
    "file cut inside the secret": lambda d, f: (t := json.dumps(d).encode())[:t.index(d[f].encode()) + 20],
    "a non-UTF-8 byte inside the secret": lambda d, f: json.dumps(d).encode().replace(
        d[f].encode(), _middle(d[f], "\x00").encode().replace(b"\x00", b"\xff")),
    "a control character inside the secret": lambda d, f: json.dumps(d).encode().replace(
        d[f].encode(), _middle(d[f], "\x00").encode().replace(b"\x00", b"\x01")),
}


def _worker_secret(tmp_path: Path) -> Path:
    return create_worker_keys(tmp_path / "worker", "alice")[1]


def _broker_secret(tmp_path: Path) -> Path:
    return create_broker_keys(tmp_path / "broker")[1]


CASES = [(make, load, field, damage)
         for make, load, fields in [(_worker_secret, load_worker_keys, ("curve_secret", "identity_secret")),
                                    (_broker_secret, load_broker_keys, ("curve_secret",))]
         for field in fields for damage in DAMAGES
         if not (field == "curve_secret" and make is _broker_secret and "identity_public" in damage)]


@pytest.mark.parametrize(("make", "load", "field", "damage"), CASES,
                         ids=[f"{m.__name__.strip('_')}-{f}-{d.replace(' ', '_')}" for m, _, f, d in CASES])
def test_a_damaged_secret_file_is_refused_without_quoting_the_secret(
        tmp_path: Path, make: Callable[[Path], Path], load: Callable[[Path], object], field: str,
        damage: str) -> None:
    path = make(tmp_path)
    doc = json.loads(path.read_text())
    path.write_bytes(DAMAGES[damage](doc, field))  # keeps the file's 0600 mode
    with pytest.raises(KeyFileError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message  # it names the file...
    assert "create the" in message  # ...and says how to fix it
    # The whole traceback too: it would show a chained __cause__ or __context__ (say, a decoder's error).
    assert_quotes_no_secret("".join(traceback.format_exception(caught.value)), secret_texts(doc))


@pytest.mark.parametrize(("damage", "says"), [
    ("one character short", "got a string of 39 characters"),
    ("wrapped in a list", "got a JSON list"),
    ("file cut inside the secret", "not JSON"),
    ("a non-UTF-8 byte inside the secret", "not UTF-8"),
    ("moved to kind", "has kind a string of 40 characters"),
])
def test_the_error_still_says_what_is_wrong(tmp_path: Path, damage: str, says: str) -> None:
    path = _worker_secret(tmp_path)
    path.write_bytes(DAMAGES[damage](json.loads(path.read_text()), "curve_secret"))
    with pytest.raises(KeyFileError, match=says.replace(" ", r"\s")):
        load_worker_keys(path)


def test_public_files_still_quote_a_bad_value(tmp_path: Path) -> None:
    """Public keys are not secret, and quoting them helps find a bad copy."""
    public_path, _ = create_worker_keys(tmp_path / "worker", "alice")
    doc = json.loads(public_path.read_text())
    doc["curve_public"] = doc["curve_public"][:-1]
    public_path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="got '") as caught:
        enrol_worker(create_broker_keys(tmp_path / "broker")[0].parent, public_path)
    assert doc["curve_public"][:20] in str(caught.value)


def _cli(*args: object) -> Any:
    return CliRunner().invoke(keys_cli, [str(a) for a in args], env={"COLUMNS": "200"})


def test_fl_keys_never_prints_a_secret(tmp_path: Path) -> None:
    """What `fl keys` prints, on success and when handed a secret file (intact or damaged) by mistake."""
    broker_dir, worker_dir = tmp_path / "broker", tmp_path / "worker"
    outputs = [_cli("broker", "--keys-dir", broker_dir), _cli("worker", "--client-id", "alice", "--out", worker_dir)]
    assert all(r.exit_code == 0 for r in outputs)
    secret_file = worker_dir / "alice.secret"
    doc = json.loads(secret_file.read_text())
    texts = secret_texts(doc) | secret_texts(json.loads((broker_dir / "broker.key_secret").read_text()))
    outputs.append(_cli("enrol", secret_file, "--keys-dir", broker_dir))  # the secret file, not alice.pub
    assert outputs[-1].exit_code == 2 and "secret key file" in outputs[-1].output
    for damage in ("one character short", "moved to kind", "moved to format", "file cut inside the secret"):
        secret_file.write_bytes(DAMAGES[damage](doc, "curve_secret"))
        outputs.append(_cli("enrol", secret_file, "--keys-dir", broker_dir))
        assert outputs[-1].exit_code == 2 and str(secret_file) in outputs[-1].output
    for result in outputs:
        assert_quotes_no_secret(result.output, texts)
