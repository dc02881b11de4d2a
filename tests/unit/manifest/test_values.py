"""Value syntax: every malformed duration, size, port, volume, tmpfs, mode ... is one
located sentence (reconciler/manifest/values.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from manifest_support import errors

# ---------------------------------------------------------------------------------------------
# Value syntax errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ('ports: ["80:80:80"]', 'ports[0]: "80:80:80" is not a valid port mapping'),
        ('ports: ["a:80"]', 'ports[0]: "a:80" is not a valid port mapping'),
        ('ports: ["1:2:3:4"]', 'ports[0]: "1:2:3:4" is not a valid port mapping'),
        ('ports: ["[::1:80:80"]', 'ports[0]: "[::1:80:80" is not a valid port mapping'),
        (
            'ports: ["80/xtp"]',
            'ports[0]: "80/xtp" is not a valid port mapping: the protocol must be tcp, udp or sctp',
        ),
        (
            'ports: ["70000:80"]',
            'ports[0]: "70000:80" is not a valid port mapping: port 70000 is out of range '
            "(1-65535)",
        ),
        ("ports: [0]", "ports[0]: port 0 is out of range (1-65535)"),
        (
            'ports: ["8000-8002:80-81"]',
            'ports[0]: "8000-8002:80-81" is not a valid port mapping: the host and container '
            "ranges must have the same length",
        ),
        (
            'ports: ["81-80"]',
            'ports[0]: "81-80" is not a valid port mapping: the range 81-80 is backwards',
        ),
        (
            "ports: [{target: 80, published: 8080-x}]",
            'ports[0]: published port "8080-x" is not a port number or a range',
        ),
        (
            "ports: [{target: 80, host_ip: localhost}]",
            'ports[0]: host_ip "localhost" is not an IP address',
        ),
        (
            'volumes: ["data:rel"]',
            'volumes[0]: "data:rel" is not a valid volume: the container path "rel" must be '
            "absolute",
        ),
        (
            'volumes: ["a:b:c:d"]',
            'volumes[0]: "a:b:c:d" is not a valid volume: expected SOURCE:TARGET[:MODE] or TARGET',
        ),
        (
            'volumes: ["/a:/b:rx"]',
            'volumes[0]: "/a:/b:rx" is not a valid volume: unknown option "rx"',
        ),
        (
            'volumes: ["/a:/b:ro,rw"]',
            'volumes[0]: "/a:/b:ro,rw" is not a valid volume: it says both "ro" and "rw"',
        ),
        (
            'volumes: ["data/sub:/b"]',
            'volumes[0]: "data/sub:/b" is not a valid volume: "data/sub" is not a volume name; '
            'write "./data/sub" for a path relative to the manifest',
        ),
        ("volumes: [{type: bind, target: /b}]", 'volumes[0]: a bind mount needs "source"'),
        (
            "volumes: [{type: npipe, target: /b}]",
            'volumes[0].type: must be one of "volume", "bind", "tmpfs" or "image", got "npipe"',
        ),
        (
            'tmpfs: ["/run:size=big"]',
            'tmpfs[0]: must be a size such as "128m" or "1g", got "big"',
        ),
        (
            'tmpfs: ["/run:exotic"]',
            'tmpfs[0]: "/run:exotic" is not a valid tmpfs: unknown option "exotic"',
        ),
        (
            "healthcheck: {test: [curl, x]}",
            'healthcheck.test[0]: a test list must start with "CMD", "CMD-SHELL" or "NONE"',
        ),
        (
            'healthcheck: {test: ["CMD-SHELL", a, b]}',
            'healthcheck.test: takes exactly one command line after "CMD-SHELL"',
        ),
        (
            "healthcheck: {test: [CMD]}",
            'healthcheck.test: needs a command after "CMD"',
        ),
        (
            "healthcheck: {test: x, interval: 5}",
            'healthcheck.interval: must be a duration such as "30s", "1m30s" or "500ms", got 5',
        ),
        (
            "stop_grace_period: 10 seconds",
            'stop_grace_period: must be a duration such as "30s", "1m30s" or "500ms", got '
            '"10 seconds"',
        ),
        (
            "restart: true",
            'restart: true is not a restart policy: use "no", "always", "on-failure", '
            '"on-failure:N" or "unless-stopped"',
        ),
        (
            "restart: on-failure:x",
            'restart: "on-failure:x" is not a restart policy: use "no", "always", "on-failure", '
            '"on-failure:N" or "unless-stopped"',
        ),
        (
            "mem_limit: 12q",
            'mem_limit: must be a size such as "128m" or "1g", got "12q"',
        ),
        ('cpus: "half"', 'cpus: must be a number of CPUs such as 0.5 or "2", got "half"'),
        ("cpus: 0", "cpus: must be more than 0, got 0"),
        (
            "command: echo 'unclosed",
            'command: cannot split "echo \'unclosed" into words: no closing quotation',
        ),
        ('environment: ["=x"]', 'environment[0]: "=x" is not of the form KEY=value'),
        ('labels: ["=x"]', 'labels[0]: "=x" is not a label of the form KEY=value'),
        (
            "ulimits: {nofile: {soft: 10, hard: 5}}",
            "ulimits.nofile: the soft limit (10) is above the hard limit (5)",
        ),
        (
            'secrets: [{source: pw, mode: "0999"}]',
            'secrets[0].mode: must be an octal file mode such as "0440", got "0999"',
        ),
        (
            "networks: {lan: {ipv4_address: 10.0.0.300}}",
            'networks.lan.ipv4_address: "10.0.0.300" is not an IPv4 address',
        ),
        (
            "networks: {lan: {ipv4_address: 10.9.0.1}}",
            'networks.lan.ipv4_address: 10.9.0.1 is outside the subnet 10.1.0.0/16 of network "lan"',
        ),
        (
            "networks: [lan]\nnetwork_mode: host",
            'network_mode: "network_mode" cannot be used together with "networks"',
        ),
        ("extends: {service: x}", 'extends: service "web" extends "x", which is not defined'),
        ("networks: [lan, lan]", 'networks[1]: network "lan" is listed twice'),
    ],
)
def test_value_errors(here: Path, fields: str, message: str) -> None:
    text = (
        "name: t\nservices:\n  web:\n    image: img\n"
        + textwrap.indent(fields, "    ")
        + "\nnetworks: {lan: {ipam: {config: [{subnet: 10.1.0.0/16}]}}}\n"
        + "secrets: {pw: {content: x}}\n"
    )
    problems = errors(here, text)
    assert [p.split(": ", 1)[1] for p in problems] == ["services.web." + message]
