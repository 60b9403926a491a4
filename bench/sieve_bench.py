#!/usr/bin/env python3
"""Sieve interpreter CPU per message (run by hand; issue 12's "Speed" item).

    .venv/bin/python bench/sieve_bench.py [--rules 50] [--size 4096] [--runs 2000]

Builds a script of N rules of the kinds Roundcube and Thunderbird generate (header :contains,
address :is/:domain, :matches with variables, :regex, size, exists, fileinto with flags) where
no rule but the last matches, and a message of about --size bytes; compiles the script once
(as delivery caches it) and reports the CPU time (time.process_time) per evaluate() call, and
separately per compile.
"""

from __future__ import annotations

import argparse
import datetime
import time

from twistedmail.sieve.interpret import Envelope, evaluate
from twistedmail.sieve.validate import compile_script


def script(rules: int) -> str:
    lines = ['require ["fileinto", "imap4flags", "variables", "regex", "envelope", "subaddress"];']
    kinds = [
        'if header :contains "subject" "project-{i}" {{ fileinto "P{i}"; }}',
        'if address :is "from" "user{i}@example.com" {{ addflag "\\\\Flagged"; }}',
        'if address :domain :is "to" "list{i}.example.net" {{ fileinto "L{i}"; }}',
        'if header :matches "list-id" "*<list{i}.*>*" {{ fileinto "List-${{2}}"; }}',
        'if header :regex "subject" "^\\\\[ticket-{i}\\\\] #([0-9]+)" {{ fileinto "T${{1}}"; }}',
        'if allof (exists "x-spam-flag", header :is "x-spam-flag" "YES{i}") {{ fileinto "J"; }}',
        'if envelope :detail "to" "tag{i}" {{ fileinto :flags "$T{i}" "Tag{i}"; }}',
        'if size :over {big}M {{ fileinto "Huge{i}"; }}',
    ]
    for i in range(rules - 1):
        lines.append(kinds[i % len(kinds)].format(i=i, big=10 + i))
    lines.append('if header :contains "subject" "quarterly" { fileinto "Reports"; stop; }')
    return "\n".join(lines) + "\n"


def message(size: int) -> bytes:
    head = (
        b"Received: from mx.example.com by mail.example.org; Tue, 01 Dec 2026 08:31:00 +0000\r\n"
        b"Date: Tue, 01 Dec 2026 09:30:00 +0100\r\nFrom: The Boss <boss@example.com>\r\n"
        b"To: Me <me@example.org>\r\nCc: team@example.com\r\n"
        b"Subject: =?UTF-8?Q?Quarterly_r=C3=A9port?=\r\nMessage-ID: <q1@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    source = script(args.rules)
    data = message(args.size)
    envelope = Envelope("boss@example.com", "me@example.org")
    now = datetime.datetime.now(datetime.timezone.utc)

    start = time.process_time()
    for _ in range(200):
        compiled = compile_script(source)
    compile_cpu = (time.process_time() - start) / 200

    result = evaluate(compiled, data, envelope, now=now)
    assert result.error is None, result.error
    start = time.process_time()
    for _ in range(args.runs):
        evaluate(compiled, data, envelope, now=now)
    run_cpu = (time.process_time() - start) / args.runs
    print(f"script: {args.rules} rules, {len(source)} bytes; message: {len(data)} bytes")
    print(f"result: {result.all_actions}")
    print(f"compile: {compile_cpu * 1e3:.3f} ms CPU (once per script change)")
    print(f"evaluate: {run_cpu * 1e3:.3f} ms CPU per message")


if __name__ == "__main__":
    main()
