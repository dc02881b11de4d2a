"""Pure parts of the native driver: the image's HEALTHCHECK as a HealthConfig, and the
name -> key map that lets a running container be renamed."""

from __future__ import annotations

from pathlib import Path

from pyapply.runtime.base import HealthConfig
from pyapply.runtime.native.driver import Names, image_health


def test_image_healthcheck_uses_dockers_defaults_for_zero() -> None:
    hc = {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000, "Retries": 0}
    assert image_health(hc) == HealthConfig(
        test=("CMD-SHELL", "true"), interval_s=2.0, timeout_s=30.0, retries=3, start_period_s=0.0
    )
    assert image_health(
        {"Test": ["CMD", "wget", "-q", "localhost"], "Timeout": 500_000_000, "StartPeriod": 10**9}
    ) == HealthConfig(
        test=("CMD", "wget", "-q", "localhost"),
        interval_s=30.0,
        timeout_s=0.5,
        retries=3,
        start_period_s=1.0,
    )


def test_no_or_disabled_image_healthcheck_is_none() -> None:
    assert image_health(None) is None
    assert image_health({}) is None
    assert image_health({"Test": ["NONE"]}) is None
    assert image_health({"Test": []}) is None


def test_names_resolve_renamed_and_shadowed_keys() -> None:
    # web-1 was created as web-1--next and renamed; web-1--next was then made again
    names = {"web-1": "web-1--next", "web-1--next": "web-1--next.a1b2c3"}
    assert Names.key_of(names, "web-1") == "web-1--next"
    assert Names.key_of(names, "web-1--next") == "web-1--next.a1b2c3"
    assert Names.key_of(names, "db-1") == "db-1"
    assert Names.name_of(names, "web-1--next") == "web-1"
    assert Names.name_of(names, "web-1--next.a1b2c3") == "web-1--next"
    assert Names.name_of(names, "db-1") == "db-1"
    # a name whose own key belongs to another container, and not in the map: nothing
    assert Names.key_of({"web-1": "web-1--next"}, "web-1--next") is None


def test_mac_follows_the_address() -> None:
    from ipaddress import IPv4Address

    from pyapply.runtime.native.network import mac_for

    assert mac_for(IPv4Address("10.89.0.2")) == "02:42:0a:59:00:02"
    assert mac_for(IPv4Address("172.16.255.1")) == "02:42:ac:10:ff:01"


def test_partial_lines_are_joined_per_stream(tmp_path: Path) -> None:
    from pyapply.runtime.native.supervise import read_log

    log = tmp_path / "ctr.log"
    log.write_bytes(
        b"2026-01-01T00:00:00Z stderr P half-\n"
        b"2026-01-01T00:00:00Z stdout F out-line\n"
        b"2026-01-01T00:00:00Z stderr F err-end\n"
    )
    assert list(read_log(log)) == [b"out-line\n", b"half-err-end\n"]
