"""`fl keys`: create the broker's and the workers' key material, and enrol, list and revoke workers.

    fl keys broker --keys-dir DIR [--force]          on the broker host, once
    fl keys worker --client-id ID --out DIR [--force]  on each worker host
    fl keys enrol PUBLIC_FILE --keys-dir DIR          on the broker host, for each worker's ID.pub
    fl keys list --keys-dir DIR [--json]
    fl keys revoke ID --keys-dir DIR

Public files travel (``broker.key`` to every worker, ``ID.pub`` to the broker host); secret files
(``broker.key_secret``, ``ID.secret``, mode 0600) never leave the host that made them. The file layout and
format are described in :mod:`federated.keys`. Any key-file problem is a usage error: one message on
stderr, no traceback, exit status 2.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from federated.cli.exit_codes import CONFIG_ERROR
from federated.keys import (
    REVOKED_DIR,
    EnrolledWorker,
    KeyFileError,
    create_broker_keys,
    create_worker_keys,
    enrol_worker,
    list_enrolled,
    load_broker_public,
    load_worker_keys,
    revoke_worker,
)
from federated.protocol.errors import MalformedMessage
from federated.protocol.fields import validate_worker_id

__all__ = ["keys"]


class KeyCommandError(click.ClickException):
    """A key-file problem reported to the user: ``Error: <message>`` on stderr, exit status 2."""

    exit_code = CONFIG_ERROR


@contextmanager
def _reported() -> Iterator[None]:
    """Turn key-file and file-system failures into a one-line error and exit status 2."""
    try:
        yield
    except KeyFileError as exc:
        raise KeyCommandError(str(exc)) from None
    except OSError as exc:
        raise KeyCommandError(str(exc)) from None


def _worker_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_worker_id(value)
    except MalformedMessage as exc:
        raise click.BadParameter(str(exc)) from None


def _q(path: Path) -> str:
    return shlex.quote(str(path))


_keys_dir_option = click.option(
    "--keys-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The broker's keys directory (broker.key, broker.key_secret, enrolled/).",
)
_force_option = click.option(
    "--force", is_flag=True, help="Replace existing keys (every peer then needs the new ones).")


@click.group("keys")
def keys() -> None:
    """Create and enrol CURVE keys and worker identities; list and revoke enrolled workers."""


@keys.command("broker")
@_keys_dir_option
@_force_option
def broker_command(keys_dir: Path, force: bool) -> None:
    """Create the broker's CURVE key pair in --keys-dir."""
    with _reported():
        public_path, secret_path = create_broker_keys(keys_dir, force=force)
        public = load_broker_public(public_path)
    click.echo(f"Created the broker's CURVE key pair in {keys_dir}:")
    click.echo(f"  public  {public_path}   copy this file to every worker host")
    click.echo(f"  secret  {secret_path}   mode 0600; never leaves this host")
    click.echo(f"Broker public key: {public.decode()}")


@keys.command("worker")
@click.option("--client-id", required=True, callback=_worker_id, help="The worker's id (its --client-id).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the worker's key files.")
@_force_option
def worker_command(client_id: str, out_dir: Path, force: bool) -> None:
    """Create a worker's CURVE key pair and Ed25519 identity in --out."""
    with _reported():
        public_path, secret_path = create_worker_keys(out_dir, client_id, force=force)
        worker = load_worker_keys(secret_path)
    click.echo(f"Created key material for worker {client_id!r} in {out_dir}:")
    click.echo(f"  public  {public_path}   copy this file to the broker host and run there:")
    click.echo(f"            fl keys enrol {_q(Path(public_path.name))} --keys-dir DIR")
    click.echo(f"  secret  {secret_path}   mode 0600; stays on this worker")
    click.echo(f"Fingerprint: {worker.fingerprint}  (`fl keys enrol` prints it too: check they match)")


@keys.command("enrol")
@click.argument("public_file", type=click.Path(dir_okay=False, path_type=Path))
@_keys_dir_option
def enrol_command(public_file: Path, keys_dir: Path) -> None:
    """Enrol a worker from the PUBLIC_FILE that `fl keys worker` made, so the broker accepts it."""
    with _reported():
        entry = enrol_worker(keys_dir, public_file)
    click.echo(f"Enrolled worker {entry.worker_id!r} in {keys_dir}.")
    click.echo(f"Fingerprint: {entry.fingerprint}  (must match what `fl keys worker` printed on the worker)")


@keys.command("list")
@_keys_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line of stdout.")
def list_command(keys_dir: Path, as_json: bool) -> None:
    """The enrolled workers: id, enrolment time and key fingerprint (--json adds the public keys)."""
    with _reported():
        workers = list_enrolled(keys_dir)
    if as_json:
        click.echo(json.dumps({"keys_dir": str(keys_dir), "workers": [_as_dict(w) for w in workers]}))
        return
    console = Console()
    if not workers:
        console.print(f"No workers enrolled in {keys_dir}.", markup=False, highlight=False)
        return
    # Fits 80 columns: the 40-character CURVE keys are in --json; the fingerprint is what people compare.
    table = Table(title=str(keys_dir), box=box.SIMPLE_HEAD, title_justify="left",
                  caption=f"{len(workers)} enrolled", caption_justify="left")
    table.add_column("worker", overflow="fold")
    table.add_column("enrolled (UTC)", no_wrap=True)
    table.add_column("fingerprint", no_wrap=True)
    for w in workers:  # Text, never markup
        table.add_row(Text(w.worker_id), Text(_utc(w.enrolled_at)), Text(w.fingerprint))
    console.print(table)


@keys.command("revoke")
@click.argument("worker_id", metavar="ID", callback=_worker_id)
@_keys_dir_option
def revoke_command(worker_id: str, keys_dir: Path) -> None:
    """Withdraw worker ID's enrolment (its file moves to revoked/)."""
    with _reported():
        entry = revoke_worker(keys_dir, worker_id)
    click.echo(f"Revoked worker {entry.worker_id!r} (fingerprint {entry.fingerprint}); its key file is now "
               f"in {keys_dir / REVOKED_DIR}. A running broker refuses it once it re-reads the "
               f"enrolment.")


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def _as_dict(w: EnrolledWorker) -> dict[str, object]:
    return {"worker_id": w.worker_id, "curve_public": w.curve_public.decode(),
            "identity_public": w.identity_public.hex(), "enrolled_at": w.enrolled_at,
            "fingerprint": w.fingerprint}
