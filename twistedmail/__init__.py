"""twistedmail: a complete mail server for small domains in one Twisted process."""

import importlib.metadata

__version__ = "0.1.0"  # keep equal to [project] version in pyproject.toml


def version() -> str:
    """The installed distribution's version (package metadata), else L{__version__} (a
    source tree that was never installed)."""
    try:
        return importlib.metadata.version("twistedmail")
    except importlib.metadata.PackageNotFoundError:
        return __version__
