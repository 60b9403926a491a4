"""Sieve mail filtering (RFC 5228) and its extensions, verified against Pigeonhole.

L{validate.compile_script} parses (L{grammar}) and checks a script into an immutable
L{validate.Script}; L{interpret.evaluate} runs it on one message (L{message}: the parsed
message and envelope; L{match}: comparators and match types) and returns the actions
(L{actions}); L{store} keeps a user's scripts in Pigeonhole's layout.  No protocol code is
imported here.
"""
