"""The service builder: every syntax form of a service field -> the model, host paths
resolved against the manifest, env files, and the warnings for what pyapply does not do
(reconciler/manifest/service.py, lifecycle.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from manifest_support import errors, load_text, only_stack, warnings
from support import write

from pyapply.reconciler.core.model import (
    ConfigSpec,
    Dependency,
    FileRef,
    Healthcheck,
    Mount,
    Port,
    Resources,
    ServiceNetwork,
    Ulimit,
    UpdateConfig,
)
from pyapply.reconciler.manifest.loader import load

# ---------------------------------------------------------------------------------------------
# Service syntax forms -> model

SERVICE_DOC = """\
name: t
services:
  svc:
    image: img
{body}
  other:
    image: img
networks:
  front: {{}}
  back:
    ipam: {{config: [{{subnet: 10.1.0.0/16}}]}}
volumes:
  data: {{}}
configs:
  cfg: {{content: hello}}
secrets:
  pw: {{content: hunter2}}
"""

MB = 1024 * 1024

SERVICE_CASES: list[tuple[str, str, str, Any]] = [
    # (id, service fields, ServiceSpec attribute, expected value)
    ("command-string", "command: echo 'a b' c", "command", ("echo", "a b", "c")),
    ("command-list", "command: [echo, 'a b', 3]", "command", ("echo", "a b", "3")),
    ("command-null", "command: null", "command", None),
    ("entrypoint-string", 'entrypoint: /bin/sh -c "x y"', "entrypoint", ("/bin/sh", "-c", "x y")),
    ("entrypoint-empty-list", "entrypoint: []", "entrypoint", ()),
    (
        "environment-map",
        "environment: {B: 2, A: x, T: true, F: false, Z: 1.5}",
        "environment",
        (("A", "x"), ("B", "2"), ("F", "false"), ("T", "true"), ("Z", "1.5")),
    ),
    (
        "environment-list",
        "environment: [A=1, B=x=y, C=, FROM_ENV, NOT_SET]",
        "environment",
        (("A", "1"), ("B", "x=y"), ("C", ""), ("FROM_ENV", "env")),
    ),
    (
        "environment-null-from-env",
        "environment: {FROM_ENV: null, NOT_SET: ~, E: ''}",
        "environment",
        (("E", ""), ("FROM_ENV", "env")),
    ),
    (
        "environment-yes-stays-yes",
        "environment: {Y: yes, N: no, O: on}",
        "environment",
        (("N", "no"), ("O", "on"), ("Y", "yes")),
    ),
    ("ports-bare", 'ports: ["80"]', "ports", (Port(80),)),
    ("ports-int", "ports: [80]", "ports", (Port(80),)),
    ("ports-mapped", 'ports: ["8080:80"]', "ports", (Port(80, 8080),)),
    ("ports-unquoted-base60-trap", "ports: [22:22]", "ports", (Port(22, 22),)),
    ("ports-host-ip", 'ports: ["127.0.0.1:8080:80"]', "ports", (Port(80, 8080, "127.0.0.1"),)),
    (
        "ports-host-ip-ephemeral",
        'ports: ["127.0.0.1::80"]',
        "ports",
        (Port(80, None, "127.0.0.1"),),
    ),
    ("ports-udp", 'ports: ["8080:80/udp"]', "ports", (Port(80, 8080, "", "udp"),)),
    ("ports-upper-protocol", 'ports: ["53/UDP"]', "ports", (Port(53, None, "", "udp"),)),
    ("ports-ipv6", 'ports: ["[::1]:8080:80"]', "ports", (Port(80, 8080, "::1"),)),
    ("ports-ipv6-ephemeral", 'ports: ["[::1]::80"]', "ports", (Port(80, None, "::1"),)),
    (
        "ports-range",
        'ports: ["8000-8001:80-81"]',
        "ports",
        (Port(80, 8000), Port(81, 8001)),
    ),
    ("ports-target-range", 'ports: ["3000-3001"]', "ports", (Port(3000), Port(3001))),
    (
        "ports-long",
        "ports: [{target: 80, published: '8080', host_ip: 127.0.0.1, protocol: udp, mode: host}]",
        "ports",
        (Port(80, 8080, "127.0.0.1", "udp", "host"),),
    ),
    (
        "ports-long-int-published",
        "ports: [{target: 80, published: 8080}]",
        "ports",
        (Port(80, 8080),),
    ),
    ("ports-long-ephemeral", "ports: [{target: 80}]", "ports", (Port(80),)),
    (
        "volumes-named",
        'volumes: ["data:/var/data:ro", "data:/other/"]',
        "mounts",
        (Mount("volume", "/var/data", "data", True), Mount("volume", "/other", "data")),
    ),
    ("volumes-anonymous", 'volumes: ["/cache"]', "mounts", (Mount("volume", "/cache"),)),
    (
        "volumes-bind-absolute",
        'volumes: ["/etc/x:/x:rw"]',
        "mounts",
        (Mount("bind", "/x", "/etc/x"),),
    ),
    ("volumes-home", 'volumes: ["~/x:/x"]', "mounts", (Mount("bind", "/x", "/home/u/x"),)),
    (
        "volumes-long-volume",
        "volumes: [{type: volume, source: data, target: /d, read_only: true, volume: {nocopy: true}}]",
        "mounts",
        (Mount("volume", "/d", "data", True, nocopy=True),),
    ),
    (
        "volumes-long-anonymous",
        "volumes: [{type: volume, target: /d}]",
        "mounts",
        (Mount("volume", "/d"),),
    ),
    (
        "volumes-long-bind",
        "volumes: [{type: bind, source: /srv, target: /srv, bind: {create_host_path: true}}]",
        "mounts",
        (Mount("bind", "/srv", "/srv"),),
    ),
    (
        "volumes-long-tmpfs",
        "volumes: [{type: tmpfs, target: /t, tmpfs: {size: 64m, mode: 01777}}]",
        "mounts",
        (Mount("tmpfs", "/t", tmpfs_size=64 * MB, tmpfs_mode=0o1777),),
    ),
    ("tmpfs-string", "tmpfs: /run", "mounts", (Mount("tmpfs", "/run"),)),
    (
        "tmpfs-list",
        'tmpfs: ["/run:size=64m,mode=1777,noexec", /tmp]',
        "mounts",
        (Mount("tmpfs", "/run", tmpfs_size=64 * MB, tmpfs_mode=0o1777), Mount("tmpfs", "/tmp")),
    ),
    (
        "mounts-volumes-then-tmpfs",
        'volumes: ["/a"]\ntmpfs: /b',
        "mounts",
        (Mount("volume", "/a"), Mount("tmpfs", "/b")),
    ),
    ("networks-default", "", "networks", (ServiceNetwork("default"),)),
    ("networks-empty-list", "networks: []", "networks", (ServiceNetwork("default"),)),
    (
        "networks-list-sorted",
        "networks: [front, back]",
        "networks",
        (ServiceNetwork("back"), ServiceNetwork("front")),
    ),
    (
        "networks-map",
        "networks: {front: null, back: {aliases: [b2, b1, b1], ipv4_address: 10.1.0.5}}",
        "networks",
        (ServiceNetwork("back", ("b1", "b2"), "10.1.0.5"), ServiceNetwork("front")),
    ),
    ("network-mode-none", "network_mode: none", "networks", ()),
    ("depends-list", "depends_on: [other]", "depends_on", (Dependency("other"),)),
    (
        "depends-map",
        "depends_on: {other: {condition: service_completed_successfully, required: false, "
        "restart: true}}",
        "depends_on",
        (Dependency("other", "service_completed_successfully", False, True),),
    ),
    (
        "healthcheck-string",
        "healthcheck: {test: curl -f localhost, interval: 1m30s, timeout: 500ms, "
        "start_period: 1h, retries: 5}",
        "healthcheck",
        Healthcheck(("CMD-SHELL", "curl -f localhost"), 90.0, 0.5, 5, 3600.0),
    ),
    (
        "healthcheck-cmd",
        'healthcheck: {test: ["CMD", "true"]}',
        "healthcheck",
        Healthcheck(("CMD", "true")),
    ),
    (
        "healthcheck-cmd-shell",
        'healthcheck: {test: ["CMD-SHELL", "exit 0"], interval: 1.5s}',
        "healthcheck",
        Healthcheck(("CMD-SHELL", "exit 0"), interval=1.5),
    ),
    (
        "healthcheck-none",
        'healthcheck: {test: ["NONE"]}',
        "healthcheck",
        Healthcheck(("NONE",), disable=True),
    ),
    (
        "healthcheck-disable",
        "healthcheck: {disable: true, test: x}",
        "healthcheck",
        Healthcheck(("NONE",), disable=True),
    ),
    (
        "healthcheck-no-test",
        "healthcheck: {interval: 10s}",
        "healthcheck",
        Healthcheck((), interval=10.0),
    ),
    ("restart-default", "", "restart", "no"),
    ("restart-quoted-no", 'restart: "no"', "restart", "no"),
    ("restart-unquoted-no", "restart: no", "restart", "no"),
    ("restart-false", "restart: false", "restart", "no"),
    ("restart-always", "restart: always", "restart", "always"),
    ("restart-on-failure-n", "restart: on-failure:3", "restart", "on-failure:3"),
    (
        "restart-deploy-policy",
        "deploy: {restart_policy: {condition: on-failure, max_attempts: 2}}",
        "restart",
        "on-failure:2",
    ),
    ("restart-deploy-any", "deploy: {restart_policy: {condition: any}}", "restart", "always"),
    ("replicas-deploy", "deploy: {replicas: 3}", "replicas", 3),
    ("replicas-scale", "scale: 2", "replicas", 2),
    ("replicas-zero", "deploy: {replicas: 0}", "replicas", 0),
    (
        "limits-deploy",
        "deploy: {resources: {limits: {memory: 1g, cpus: 1.5, pids: 100}}}",
        "resources",
        Resources(1024 * MB, 1.5, 100),
    ),
    (
        "limits-memory-upper",
        'deploy: {resources: {limits: {memory: "512M"}}}',
        "resources",
        Resources(512 * MB),
    ),
    (
        "limits-memory-bytes",
        "deploy: {resources: {limits: {memory: 1048576}}}",
        "resources",
        Resources(MB),
    ),
    (
        "limits-memory-decimal",
        "deploy: {resources: {limits: {memory: 1.5G}}}",
        "resources",
        Resources(1536 * MB),
    ),
    ("limits-memory-unit-suffix", "mem_limit: 2MiB", "resources", Resources(2 * MB)),
    (
        "limits-legacy",
        'mem_limit: 128m\ncpus: "0.25"\npids_limit: 50',
        "resources",
        Resources(128 * MB, 0.25, 50),
    ),
    ("limits-pids-unlimited", "pids_limit: -1", "resources", Resources()),
    (
        "update-config",
        "deploy: {update_config: {order: start-first, parallelism: 0, delay: 10s}}",
        "update",
        UpdateConfig("start-first", 0, 10.0),
    ),
    ("labels-map", "labels: {b: 2, a: x, e: null}", "labels", (("a", "x"), ("b", "2"), ("e", ""))),
    (
        "labels-list",
        'labels: ["b=2", "a=x=y", "c"]',
        "labels",
        (("a", "x=y"), ("b", "2"), ("c", "")),
    ),
    ("user-int", "user: 1000", "user", "1000"),
    ("user-string", 'user: "1000:1000"', "user", "1000:1000"),
    ("working-dir", "working_dir: /app", "working_dir", "/app"),
    ("hostname", "hostname: web1", "hostname", "web1"),
    (
        "cap-add",
        "cap_add: [net_admin, CAP_SYS_TIME, NET_ADMIN]",
        "cap_add",
        ("NET_ADMIN", "SYS_TIME"),
    ),
    ("cap-drop", "cap_drop: [ALL]", "cap_drop", ("ALL",)),
    ("read-only", "read_only: true", "read_only", True),
    ("stop-signal", "stop_signal: SIGINT", "stop_signal", "SIGINT"),
    ("stop-grace", "stop_grace_period: 1m", "stop_grace_period", 60.0),
    ("init", "init: true", "init", True),
    (
        "ulimits",
        "ulimits: {nproc: 65535, nofile: {soft: 20000, hard: 40000}}",
        "ulimits",
        (Ulimit("nofile", 20000, 40000), Ulimit("nproc", 65535, 65535)),
    ),
    ("configs-short", "configs: [cfg]", "configs", (FileRef("cfg", "/cfg"),)),
    (
        "configs-long",
        "configs: [{source: cfg, target: /etc/app.conf, uid: 1000, gid: '1000', mode: 0440}]",
        "configs",
        (FileRef("cfg", "/etc/app.conf", 0o440, "1000", "1000"),),
    ),
    (
        "configs-relative-target",
        "configs: [{source: cfg, target: app.conf}]",
        "configs",
        (FileRef("cfg", "/app.conf"),),
    ),
    ("secrets-short", "secrets: [pw]", "secrets", (FileRef("pw", "/run/secrets/pw"),)),
    (
        "secrets-long",
        'secrets: [{source: pw, target: db-pass, mode: "0400"}]',
        "secrets",
        (FileRef("pw", "/run/secrets/db-pass", 0o400),),
    ),
    ("pull-policy", "pull_policy: always", "pull_policy", "always"),
    ("pull-policy-if-not-present", "pull_policy: if_not_present", "pull_policy", "missing"),
    ("extension-fields-ignored", "x-note: anything\nx-other: {a: 1}", "image", "img"),
]


@pytest.mark.parametrize(
    ("body", "attribute", "expected"),
    [
        pytest.param(body, attribute, expected, id=id_)
        for id_, body, attribute, expected in SERVICE_CASES
    ],
)
def test_service_syntax(here: Path, body: str, attribute: str, expected: Any) -> None:
    text = SERVICE_DOC.format(body=textwrap.indent(body, "    ") if body else "")
    stack = only_stack(load_text(here, text, {"FROM_ENV": "env", "HOME": "/home/u"}))
    assert getattr(stack.service("svc"), attribute) == expected


def test_relative_paths_resolve_against_the_manifest(here: Path) -> None:
    write(
        here,
        {
            "app/stack.yaml": """
                services:
                  web:
                    image: img
                    volumes:
                      - ./html:/usr/share/html:ro
                      - ../shared:/shared
                      - .:/code
                      - {type: bind, source: conf/app.conf, target: /etc/app.conf}
                    env_file: app.env
                configs:
                  cfg: {file: conf/app.conf}
            """,
            "app/app.env": "FROM_FILE=1\n",
            "app/conf/app.conf": "x=1\n",
        },
    )
    stack = only_stack(load(["app/stack.yaml"], environ={}))
    app = str(here / "app")
    assert stack.name == "app"
    assert stack.service("web").mounts == (
        Mount("bind", "/usr/share/html", f"{app}/html", read_only=True),
        Mount("bind", "/shared", str(here / "shared")),
        Mount("bind", "/code", app),
        Mount("bind", "/etc/app.conf", f"{app}/conf/app.conf", create_host_path=False),
    )
    assert stack.service("web").environment == (("FROM_FILE", "1"),)
    assert stack.configs == (ConfigSpec("cfg", file=f"{app}/conf/app.conf"),)


def test_env_file_order_and_environment_override(here: Path) -> None:
    write(
        here,
        {
            "one.env": "A=one\nB=one\n# comment\nexport C='c $x'\n",
            "two.env": "B=two\nD=${OUTER}\n",
        },
    )
    stack = only_stack(
        load_text(
            here,
            """
            services:
              web:
                image: img
                env_file: [one.env, {path: two.env}, {path: missing.env, required: false}]
                environment: {A: from-environment}
            """,
            {"OUTER": "outer"},
        )
    )
    assert stack.service("web").environment == (
        ("A", "from-environment"),
        ("B", "two"),
        ("C", "c $x"),
        ("D", "outer"),
    )


def test_env_file_problems(here: Path) -> None:
    write(here, {"bad.env": "OK=1\nthis is not\n"})
    assert errors(
        here,
        """
        services:
          web:
            image: img
            env_file: [bad.env, nope.env]
        """,
    ) == [
        'bad.env:2:1: "this is not" is not a KEY=VALUE line',
        'stack.yaml:4:25: services.web.env_file[1]: env file "nope.env" does not exist',
    ]


# ---------------------------------------------------------------------------------------------
# Warnings for what pyapply does not do


def test_unsupported_fields_warn(here: Path) -> None:
    assert warnings(
        here,
        """
        name: stack
        services:
          built:
            build: .
          both:
            build: {context: .}
            image: mine:1
            privileged: true
            network_mode: bridge
            mem_limit: 64m
            deploy: {resources: {limits: {memory: 128m}}, placement: {}, replicas: 2}
            scale: 3
          net:
            image: img
            networks: {lan: {ipv6_address: "::1"}}
        networks:
          lan: {driver: overlay}
        """,
    ) == [
        'stack.yaml:9:5: warning: services.both.network_mode: "network_mode: bridge" is not '
        "supported; the service is not attached to any network",
        "stack.yaml:10:5: warning: services.both.mem_limit: conflicts with "
        "deploy.resources.limits.memory, which is used",
        "stack.yaml:11:51: warning: services.both.deploy.placement: placement is used by the "
        "swarm runtime only; the runtimes of one host ignore it",
        "stack.yaml:12:5: warning: services.both.scale: conflicts with deploy.replicas (2), "
        "which is used",
        'stack.yaml:15:22: warning: services.net.networks.lan.ipv6_address: "ipv6_address" is '
        "not supported and is ignored",
        'stack.yaml:17:17: warning: networks.lan.driver: network driver "overlay" is not '
        'supported; only "bridge" is',
    ]


def test_logging_options_rotate_the_log(here: Path) -> None:
    loaded = load_text(
        here,
        """
        name: stack
        services:
          app:
            image: img
            logging: {driver: json-file, options: {max-size: 10m, max-file: "3"}}
          other:
            image: img
            logging: {driver: syslog, options: {max-size: 1024, tag: x}}
        """,
    )
    app, other = sorted(only_stack(loaded).services, key=lambda s: s.name)
    assert (app.log_max_size, app.log_max_files) == (10 * 1024 * 1024, 3)
    assert (other.log_max_size, other.log_max_files) == (1024, None)
    assert [str(w) for w in loaded.warnings] == [
        'stack.yaml:8:23: warning: services.other.logging.driver: logging driver "syslog" is '
        "not supported; json-file is used",
        'stack.yaml:8:57: warning: services.other.logging.options.tag: logging option "tag" is '
        "not supported",
    ]
    assert errors(
        here,
        """
        name: stack
        services:
          app:
            image: img
            logging: {options: {max-size: lots, max-file: 0}}
        """,
    ) == [
        'stack.yaml:5:35: services.app.logging.options.max-size: must be a size such as "128m" '
        'or "1g", got "lots"',
        "stack.yaml:5:51: services.app.logging.options.max-file: must be at least 1, got 0",
    ]


def test_extra_hosts_forms_and_errors(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            name: stack
            services:
              a:
                image: img
                extra_hosts: ["db.example:10.1.2.3", "gw=host-gateway", "v6:[::1]"]
              b:
                image: img
                extra_hosts: {db.example: 10.1.2.3, multi: [10.0.0.1, 10.0.0.2]}
            """,
        )
    )
    a, b = sorted(stack.services, key=lambda s: s.name)
    assert a.extra_hosts == (("db.example", "10.1.2.3"), ("gw", "host-gateway"), ("v6", "::1"))
    assert b.extra_hosts == (
        ("db.example", "10.1.2.3"),
        ("multi", "10.0.0.1"),
        ("multi", "10.0.0.2"),
    )
    assert errors(
        here,
        """
        name: stack
        services:
          a:
            image: img
            extra_hosts: ["db.example:not-an-ip", "no-address"]
        """,
    ) == [
        'stack.yaml:5:19: services.a.extra_hosts[0]: "not-an-ip" is not an IP address (in the '
        "entry for db.example)",
        'stack.yaml:5:43: services.a.extra_hosts[1]: must be "host:ip" with a host name, got '
        '"no-address"',
    ]
