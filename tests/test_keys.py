"""API keys: made by `assay keys`, shown once, kept only as digests, and
checked against revocation and expiry."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid

import pytest

from app import auth
from app.store import api_keys as key_store
from tests.factories import unique
from tests.test_cli import assay


def keys(settings, *args: str):
    return assay("keys", *args, env={"DATABASE_URL": settings.database_url})


async def test_a_new_key_is_printed_once_on_the_last_line_and_stored_as_a_digest(
        settings, pool):
    workspace = unique("team")
    run = keys(settings, "create", "--workspace", workspace, "--role", "viewer",
               "--name", "ci")

    assert run.returncode == 0, run.stderr
    key = run.stdout.strip().splitlines()[-1]
    assert key.startswith("assay_") and len(key) == 49
    stored = await pool.fetchrow(
        "SELECT k.*, w.name AS workspace FROM api_keys k JOIN workspaces w"
        " ON w.id = k.workspace_id WHERE k.key_digest = $1",
        hashlib.sha256(key.encode()).hexdigest())
    assert stored["workspace"] == workspace and stored["role"] == "viewer"
    assert key not in str(dict(stored))
    assert key.startswith(stored["key_start"]) and len(stored["key_start"]) < 16
    caller = await auth.authenticate(pool, key)
    assert (caller.workspace, caller.role) == (workspace, "viewer")


async def test_listing_shows_keys_without_the_keys_themselves(settings):
    workspace = unique("listed")
    made = keys(settings, "create", "--workspace", workspace, "--role", "admin",
                "--expires-in-days", "3")
    key = made.stdout.strip().splitlines()[-1]

    listing = keys(settings, "list", "--workspace", workspace)

    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.strip().splitlines()
    assert header.split()[:3] == ["ID", "WORKSPACE", "ROLE"]
    assert workspace in row and "admin" in row and "active" in row
    assert key not in listing.stdout and key[:12] in listing.stdout


async def test_revoked_expired_and_unknown_keys_authenticate_no_one(settings, pool):
    workspace = unique("gone")
    revoked_row, revoked = await auth.create_key(pool, workspace, "editor")
    _, expired = await auth.create_key(
        pool, workspace, "editor",
        expires_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    _, good = await auth.create_key(pool, workspace, "editor")

    run = keys(settings, "revoke", str(revoked_row.id))
    again = keys(settings, "revoke", f"key_{revoked_row.id}")

    assert run.returncode == 0 and again.returncode == 0, run.stderr
    assert f"key_{revoked_row.id} of workspace" in run.stdout
    for key, reason in [(revoked, "the API key has been revoked"),
                        (expired, "the API key has expired"),
                        (good[:-1] + ("A" if good[-1] != "A" else "B"),
                         "the API key is not valid"),
                        ("", "the API key is not valid")]:
        with pytest.raises(auth.KeyRefused, match=reason):
            await auth.authenticate(pool, key)
    assert (await auth.authenticate(pool, good)).workspace == workspace


@pytest.mark.parametrize("args, message", [
    (["create", "--workspace", "   "], "--workspace: must not be empty"),
    (["create", "--workspace", "x", "--role", "owner"], "invalid choice: 'owner'"),
    (["create", "--workspace", "x", "--expires-in-days", "0"],
     "must be a number of days above 0"),
    (["create"], "the following arguments are required: --workspace"),
    (["revoke", "987654321"], "no key with id key_987654321"),
    (["revoke", "ts_1"], "'ts_1' is not a valid"),
], ids=["blank-workspace", "unknown-role", "zero-days", "no-workspace",
        "unknown-key", "not-a-key-id"])
def test_bad_key_commands_say_what_is_wrong(settings, args, message):
    run = keys(settings, *args)

    assert run.returncode in (1, 2)
    assert message in run.stderr


async def test_recent_keys_spare_the_lookup_until_they_are_old_or_revoked(pool):
    workspace = f"recent-{uuid.uuid4().hex[:8]}"
    row, key = await auth.create_key(pool, workspace, "viewer")
    now = [0.0]
    recent = auth.RecentKeys(max_age_s=5, clock=lambda: now[0])

    first = await auth.authenticate(pool, key, recent)
    await key_store.revoke_key(pool, row.id)
    # Within max_age_s the row read a moment ago stands for the key...
    now[0] = 5.0
    assert await auth.authenticate(pool, key, recent) == first
    # ...then it is read again, and found revoked.
    now[0] = 5.1
    with pytest.raises(auth.KeyRefused, match="revoked"):
        await auth.authenticate(pool, key, recent)

    # Forgetting a key (revoked through the API) reads it again at once.
    other_row, other = await auth.create_key(pool, workspace, "viewer")
    await auth.authenticate(pool, other, recent)
    await key_store.revoke_key(pool, other_row.id)
    recent.forget(other_row.id)
    with pytest.raises(auth.KeyRefused, match="revoked"):
        await auth.authenticate(pool, other, recent)

    # Expiry needs no reading at all.
    ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.3)
    _, expiring = await auth.create_key(pool, workspace, "viewer", expires_at=ends)
    await auth.authenticate(pool, expiring, recent)
    await asyncio.sleep(0.4)
    with pytest.raises(auth.KeyRefused, match="expired"):
        await auth.authenticate(pool, expiring, recent)


async def test_a_key_revoked_while_it_is_being_read_is_not_remembered(
        pool, monkeypatch):
    row, key = await auth.create_key(pool, f"race-{uuid.uuid4().hex[:8]}",
                                     "viewer")
    recent = auth.RecentKeys(max_age_s=60)
    read_key = key_store.key_by_digest

    async def read_while_revoked(*args):
        found = await read_key(*args)  # still active when read...
        await key_store.revoke_key(pool, row.id)
        recent.forget(row.id)  # ...revoked through the API meanwhile
        return found

    monkeypatch.setattr(key_store, "key_by_digest", read_while_revoked)
    await auth.authenticate(pool, key, recent)
    monkeypatch.setattr(key_store, "key_by_digest", read_key)

    with pytest.raises(auth.KeyRefused, match="revoked"):
        await auth.authenticate(pool, key, recent)


def test_recent_keys_hold_at_most_their_limit_oldest_out_first():
    recent = auth.RecentKeys(max_age_s=60, max_keys=2)
    rows = [object(), object(), object()]
    for number, row in enumerate(rows):
        recent.remember(f"digest {number}", row)

    assert [recent.get(f"digest {n}") for n in range(3)] == [None, *rows[1:]]
