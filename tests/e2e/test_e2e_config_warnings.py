"""check-config's warnings also reach the server's log at start (issue 9, issue 13)."""

from __future__ import annotations

from pathlib import Path

from e2e_server import Server


def test_config_warnings_are_logged_at_start(tmp_path: Path) -> None:
    """What check-config warns about (a size without a unit) is also logged when the server
    starts, for an operator who never ran check-config."""
    server = Server(tmp_path)
    text = server.config.read_text().replace('"1MiB"', "1048576")
    server.config.write_text(text)
    server.start()
    try:
        log = server.log.read_text()
    finally:
        server.stop()
    assert (
        f"config warning: {server.config}: [limits] max_message_size: 1048576 has no unit and is"
        ' read as octets; write it with one, e.g. "1MiB"'
    ) in log
