"""IMAP4rev1 server (RFC 3501) over the users' Maildirs: session, account, mailbox, message."""
