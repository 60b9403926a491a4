"""Issue 10: the login cache ([auth] cache_ttl, like Dovecot's auth_cache) end to end: a
password changed or a user deleted while the server runs refuses the old password at the
very next login, whether the change comes from the CLI (which also flushes the user's cached
logins over the control socket) or from another process writing the store directly."""

from __future__ import annotations

import re

from e2e_server import PASSWORDS, Server, imap_login

from twistedmail import passwords
from twistedmail.accounts import AccountStore

ALICE = "alice@example.test"
FAILED = "[AUTHENTICATIONFAILED] Authentication failed"


def test_cli_passwd_refuses_the_cached_password_at_once(server: Server) -> None:
    """A login cached a moment ago stops working as soon as `user passwd` returns; the CLI
    flushed exactly that user's cached login (logged), and the new password works."""
    old = PASSWORDS[ALICE]
    assert imap_login(server, ALICE, old) == "OK"
    assert imap_login(server, ALICE, old) == "OK"  # from the cache
    server.cli("user", "passwd", ALICE, "--password-stdin", stdin="alice-new-pw-2\n")
    assert imap_login(server, ALICE, old) == FAILED
    assert imap_login(server, ALICE, "alice-new-pw-2") == "OK"
    log = server.log.read_text()
    # One cached login per process that served one (the two logins may land on two).
    [count] = re.findall(rf"login cache: forgot (\d+) cached login\(s\) of {re.escape(ALICE)}", log)
    assert 1 <= int(count) <= server.workers


def test_store_change_without_flush_refuses_the_cached_password(server: Server) -> None:
    """A password written to the store by another process that cannot reach the control
    socket (the CLI as another user) is seen at the next login: the cache entry holds the
    hash it was verified against."""
    old = PASSWORDS[ALICE]
    assert imap_login(server, ALICE, old) == "OK"
    store = AccountStore(server.data_dir / "accounts.sqlite3")
    try:
        store.set_password_hash(ALICE, passwords.hash_password("written-directly-3"))
    finally:
        store.close()
    assert imap_login(server, ALICE, old) == FAILED
    assert imap_login(server, ALICE, "written-directly-3") == "OK"


def test_cli_user_del_refuses_the_cached_login(server: Server) -> None:
    """A deleted user's cached login is refused at the next attempt."""
    bob = next(a for a in PASSWORDS if a != ALICE)
    assert imap_login(server, bob, PASSWORDS[bob]) == "OK"
    server.cli("user", "del", bob)
    assert imap_login(server, bob, PASSWORDS[bob]) == FAILED
