"""twistedmail: a complete mail server for small domains in one Twisted process."""

__version__ = "0.1.0"
