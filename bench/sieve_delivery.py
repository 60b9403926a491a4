#!/usr/bin/env python3
"""Delivery CPU with and without a Sieve script (run by hand; issue 12's "Speed" item).

    .venv/bin/python bench/sieve_delivery.py [--rules 50] [--size 4096] [--rounds 15]
        [--per-round 40]

Delivers a message of about --size bytes with L{twistedmail.delivery.LocalDelivery} (the
real store, Maildir writes with fsync, the script cache), in the calling thread, to two
users: one without a script, one whose active script has --rules rules of the kinds
Roundcube and Thunderbird generate (bench/sieve_bench.py's; the last one files the message
into "Reports").  Each round delivers --per-round messages to each user, alternating, and
measures the CPU time (time.process_time: user + system, so fsync's kernel work counts) per
delivery; the table gives the median over the rounds.  The goal: at most +1 ms CPU.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sieve_bench import message, script  # noqa: E402

from twistedmail.accounts import AccountStore  # noqa: E402
from twistedmail.address import Mailbox  # noqa: E402
from twistedmail.delivery import LocalDelivery  # noqa: E402
from twistedmail.maildir import ChangeNotifier, UserMaildir, make_maildir  # noqa: E402
from twistedmail.sieve.store import SieveStore  # noqa: E402


async def run_here(f: Callable[..., Any], *args: Any) -> Any:
    return f(*args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=40)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sieve-delivery-bench-"))
    try:
        store = AccountStore(base / "accounts.sqlite3")
        store.add_user("plain@example.org", "x")
        store.add_user("me@example.org", "x")
        mail_dir = base / "mail"
        home = mail_dir / "example.org" / "me"
        make_maildir(home)
        UserMaildir(home).create("Reports")
        scripts = SieveStore(home)
        source = script(args.rules).encode()
        scripts.put("rules", source)
        scripts.activate("rules")
        delivery = LocalDelivery(store, mail_dir, ChangeNotifier(), run_here)
        data = message(args.size)
        sender = Mailbox.parse("boss@example.com")
        plain, scripted = Mailbox.parse("plain@example.org"), Mailbox.parse("me@example.org")

        def deliver(user: Mailbox) -> float:
            start = time.process_time()
            step = delivery.deliver_all(sender, [user], data)
            try:
                step.send(None)  # nothing waits: the "thread" is this one, no quota, no queue
            except StopIteration:
                return time.process_time() - start
            raise AssertionError("delivery did not finish at once")

        deliver(plain), deliver(scripted)  # warm: compile and cache the script
        rounds: dict[str, list[float]] = {"no script": [], f"{args.rules}-rule script": []}
        for _ in range(args.rounds):
            totals = [0.0, 0.0]
            for _ in range(args.per_round):
                totals[0] += deliver(plain)
                totals[1] += deliver(scripted)
            for values, total in zip(rounds.values(), totals, strict=True):
                values.append(total / args.per_round)
        filed = sum(1 for _ in (home / ".Reports" / "new").iterdir())
        assert filed == 1 + args.rounds * args.per_round, filed  # the script did run
        print(
            f"message {len(data)} bytes; script {args.rules} rules, {len(source)} bytes;"
            f" {args.rounds} rounds x {args.per_round} deliveries per user"
        )
        print("| delivery to | CPU per message (median of rounds) | min round | max round |")
        print("| --- | --- | --- | --- |")
        medians = []
        for name, values in rounds.items():
            medians.append(statistics.median(values))
            print(
                f"| {name} | {medians[-1] * 1e3:.3f} ms | {min(values) * 1e3:.3f} ms"
                f" | {max(values) * 1e3:.3f} ms |"
            )
        print(f"| difference | {(medians[1] - medians[0]) * 1e3:+.3f} ms | | |")
        store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
