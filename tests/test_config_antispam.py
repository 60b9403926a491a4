"""C{[antispam]} in the config file: defaults, values, and one-line errors naming the key."""

from __future__ import annotations

import pytest

from twistedmail.config import AntispamConfig, ConfigError, parse_config


def test_defaults_are_off() -> None:
    """No filter, no lists, no greeting pause unless configured."""
    assert parse_config({}, None).antispam == AntispamConfig()
    assert AntispamConfig().rspamd == "" and AntispamConfig().greet_pause == 0


def test_values() -> None:
    """Every key read; zones normalised; greet_pause as a duration."""
    config = parse_config(
        {
            "antispam": {
                "rspamd": "http://127.0.0.1:11333",
                "rspamd_controller": "http://127.0.0.1:11334/",
                "rspamd_password": "secret",
                "timeout": 5,
                "check_submission": True,
                "dnsbl": ["Zen.Spamhaus.org."],
                "dnswl": ["list.dnswl.org"],
                "greet_pause": "3s",
            }
        },
        None,
    ).antispam
    assert config == AntispamConfig(
        rspamd="http://127.0.0.1:11333",
        rspamd_controller="http://127.0.0.1:11334/",
        rspamd_password="secret",
        timeout=5,
        check_submission=True,
        dnsbl=("zen.spamhaus.org",),
        dnswl=("list.dnswl.org",),
        greet_pause=3,
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rspamd": "127.0.0.1:11333"}, "[antispam] rspamd"),
        ({"rspamd_controller": "ftp://x"}, "[antispam] rspamd_controller"),
        ({"timeout": 0}, "[antispam] timeout: must be a positive integer"),
        ({"check_submission": "yes"}, "[antispam] check_submission: must be true or false"),
        ({"dnsbl": "zen.spamhaus.org"}, "[antispam] dnsbl: must be a list of zones"),
        ({"dnswl": ["bad zone!"]}, "[antispam] dnswl"),
        ({"greet_pause": "soon"}, "[antispam] greet_pause"),
        ({"rbl": []}, "[antispam] rbl: unknown key"),
        ({"smtp_messages_per_ip_hour": -1}, "[antispam] smtp_messages_per_ip_hour"),
    ],
)
def test_errors(section: dict[str, object], message: str) -> None:
    """A bad value: one ConfigError naming the file and the key."""
    with pytest.raises(ConfigError) as e:
        parse_config({"antispam": section}, None)
    assert str(e.value).startswith(f"built-in defaults: {message}")
