"""`assay keys`: make, list and revoke API keys, straight in the database.

Meant for the operator who holds DATABASE_URL: the first key of a deployment
can only be made this way.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys

from app import auth, ids, validation
from app.errors import BadUserInput
from app.settings import Settings
from app.store import api_keys as key_store
from app.store import db

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(required=True, metavar="ACTION")

    create = actions.add_parser(
        "create", help="make a key; it is printed once, alone on the last line")
    create.add_argument("--workspace", required=True,
                        help="the workspace it acts in (created if need be)")
    create.add_argument("--role", choices=auth.ROLES, default="editor",
                        help="viewer: read and follow; editor: also create, run"
                        " and delete; admin: also manage keys (default: editor)")
    create.add_argument("--name", help="a label, to tell keys apart")
    create.add_argument("--expires-in-days", type=_positive_days, metavar="DAYS",
                        help="the key stops working after this many days")
    create.set_defaults(action=_create)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--workspace", help="only this workspace's keys")
    listing.set_defaults(action=_list)

    revoke = actions.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("key_id", type=_key_id, metavar="ID",
                        help="the key's id, as `assay keys list` shows it"
                        " (key_12, or just 12)")
    revoke.set_defaults(action=_revoke)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the action; the database's schema has been checked already."""
    pool = await db.create_pool(settings, max_size=2, application_name="assay-keys")
    try:
        return await args.action(args, pool)
    finally:
        await pool.close()


async def _create(args: argparse.Namespace, pool) -> int:
    try:
        workspace = validation.text(args.workspace, "--workspace", required=True,
                                    max_length=validation.MAX_NAME_LENGTH)
        name = validation.text(args.name, "--name",
                               max_length=validation.MAX_NAME_LENGTH)
    except BadUserInput as exc:
        print(f"assay keys create: {exc.message}", file=sys.stderr)
        return 2
    expires_at = None
    if args.expires_in_days is not None:
        expires_at = (datetime.datetime.now(datetime.UTC)
                      + datetime.timedelta(days=args.expires_in_days))

    row, key = await auth.create_key(pool, workspace, args.role, name=name,
                                     expires_at=expires_at)
    log.info("API key %s made for workspace %r with role %s", row.id, workspace,
             row.role)
    expiry = (f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at
              else "never expires")
    print(f"Made {_shown(row.id)} for workspace {workspace!r}: role {row.role},"
          f" {expiry}.")
    print("It is shown only now; keep it somewhere safe:")
    print(key)
    return 0


async def _list(args: argparse.Namespace, pool) -> int:
    rows = await key_store.list_keys(pool, args.workspace)
    now = datetime.datetime.now(datetime.UTC)
    lines = [("ID", "WORKSPACE", "ROLE", "NAME", "KEY", "CREATED", "EXPIRES",
              "STATUS")]
    for row in rows:
        lines.append((
            _shown(row.id), row.workspace, row.role, row.name or "-",
            f"{row.key_start}…", f"{row.created_at:%Y-%m-%d %H:%M}",
            f"{row.expires_at:%Y-%m-%d %H:%M}" if row.expires_at else "never",
            row.status(now)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths))
              .rstrip())
    return 0


async def _revoke(args: argparse.Namespace, pool) -> int:
    row = await key_store.revoke_key(pool, args.key_id)
    if row is None:
        print(f"assay keys revoke: no key with id {_shown(args.key_id)}",
              file=sys.stderr)
        return 1
    log.info("API key %s of workspace %r revoked", row.id, row.workspace)
    print(f"{_shown(row.id)} of workspace {row.workspace!r} is revoked"
          f" (since {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC).")
    return 0


def _shown(key_id: int) -> str:
    # The id the API uses too (revokeApiKey).
    return ids.encode(ids.Kind.API_KEY, key_id)


def _key_id(text: str) -> int:
    text = text.strip()
    try:
        return ids.decode(ids.Kind.API_KEY,
                          f"key_{text}" if text.isdigit() else text, field="ID")
    except BadUserInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = 0.0
    if not 0 < days < 365_000:
        raise argparse.ArgumentTypeError(f"must be a number of days above 0,"
                                         f" got {text!r}")
    return days
