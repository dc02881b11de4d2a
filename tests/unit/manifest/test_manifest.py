"""Loading manifests: files and directories, YAML positions, interpolation, the schema, the
normalised model and every error message (reconciler/manifest/loader.py).

Most tests write small manifests into a temporary directory and `chdir` there, so that error
messages name `stack.yaml` exactly as a user would see them.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from support import value_paths, write

from pyapply.reconciler.core.model import (
    ConfigSpec,
    Dependency,
    FileRef,
    Healthcheck,
    Location,
    ManifestError,
    Mount,
    NetworkSpec,
    Port,
    Resources,
    SecretSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    Ulimit,
    UpdateConfig,
    VolumeSpec,
)
from pyapply.reconciler.manifest import loader as manifest
from pyapply.reconciler.manifest.loader import Loaded, load

DATA = Path(__file__).parents[1] / "data" / "manifests"
CORPUS_DEFAULT = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "compose"


def load_text(
    here: Path, text: str, env: Mapping[str, str] | None = None, name: str = "stack.yaml"
) -> Loaded:
    write(here, {name: text})
    return load([name], environ=dict(env or {}))


def errors(here: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_text(here, text, env)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def warnings(here: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    return [str(w) for w in load_text(here, text, env).warnings]


def only_stack(loaded: Loaded) -> Stack:
    assert len(loaded.stacks) == 1
    return loaded.stacks[0]


# ---------------------------------------------------------------------------------------------
# The DESIGN.md example, end to end


def test_design_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    loaded = load(["shop"], environ={})
    shop = only_stack(loaded)
    f = "shop/stack.yaml"
    assert loaded.warnings == ()
    assert loaded.files == (str(DATA / "shop" / "stack.yaml"),)
    assert shop == Stack(
        name="shop",
        services=(
            ServiceSpec(
                name="db",
                image="registry.local:5000/postgres:16",
                mounts=(Mount("volume", "/var/lib/postgresql/data", "db-data"),),
                networks=(ServiceNetwork("back"),),
                secrets=(FileRef("db-password", "/run/secrets/db-password"),),
            ),
            ServiceSpec(
                name="web",
                image="registry.local:5000/shop/web:1.4",
                environment=(("LOG_LEVEL", "info"),),
                ports=(Port(80),),
                networks=(ServiceNetwork("back"), ServiceNetwork("front")),
                depends_on=(Dependency("db", "service_healthy"),),
                healthcheck=Healthcheck(
                    ("CMD", "wget", "-q", "-O-", "http://localhost/health"), interval=5.0
                ),
                restart="unless-stopped",
                replicas=2,
                resources=Resources(memory=128 * 1024 * 1024, cpus=0.5),
                update=UpdateConfig(order="start-first", parallelism=1),
            ),
        ),
        networks=(NetworkSpec("back", internal=True), NetworkSpec("front")),
        volumes=(VolumeSpec("db-data"),),
        secrets=(SecretSpec("db-password", file=str(DATA / "shop" / "secrets" / "db-password")),),
    )
    assert shop.sources == (str(DATA / "shop" / "stack.yaml"),)
    assert shop.location == Location(f, 6, 9)
    assert shop.service("web").location == Location(f, 9, 5)
    assert shop.service("db").location == Location(f, 19, 5)
    assert shop.network("back").location == Location(f, 24, 25)
    assert shop.volume("db-data").location == Location(f, 25, 13)


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
        (Mount("volume", "/d", "data", True),),
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
        Mount("bind", "/etc/app.conf", f"{app}/conf/app.conf"),
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
# Top-level networks, volumes, configs, secrets


def test_top_level_objects(here: Path) -> None:
    write(here, {"s1.txt": "x"})
    stack = only_stack(
        load_text(
            here,
            """
            name: objs
            services:
              web: {image: img, networks: [lan, ext, legacy]}
            networks:
              lan:
                driver: bridge
                internal: true
                ipam: {config: [{subnet: 172.28.0.0/16, gateway: 172.28.0.1}]}
                labels: [tier=front, b=2]
              ext: {external: true, name: corp-lan}
              legacy: {external: {name: old-lan}}
            volumes:
              plain:
              opts: {driver_opts: {type: none, o: bind, size: 10}, labels: {a: b}}
              outside: {external: true}
              named: {name: custom}
            configs:
              c1: {content: hello}
              c2: {environment: CFG}
              c3: {external: true}
            secrets:
              s1: {file: s1.txt}
            """,
            {"CFG": "cfg"},
        )
    )
    assert stack.networks == (
        NetworkSpec("ext", external=True, external_name="corp-lan"),
        NetworkSpec(
            "lan",
            internal=True,
            subnet="172.28.0.0/16",
            gateway="172.28.0.1",
            labels=(("b", "2"), ("tier", "front")),
        ),
        NetworkSpec("legacy", external=True, external_name="old-lan"),
    )
    assert stack.volumes == (
        VolumeSpec("named", external_name="custom"),
        VolumeSpec(
            "opts",
            driver_opts=(("o", "bind"), ("size", "10"), ("type", "none")),
            labels=(("a", "b"),),
        ),
        VolumeSpec("outside", external=True),
        VolumeSpec("plain"),
    )
    assert stack.configs == (
        ConfigSpec("c1", content="hello"),
        ConfigSpec("c2", environment="CFG"),
        ConfigSpec("c3", external=True),
    )
    assert stack.secrets == (SecretSpec("s1", file=str(here / "s1.txt")),)


def test_top_level_object_errors(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web: {image: img}
        networks:
          a: {external: true, driver: bridge}
          b: {ipam: {config: [{subnet: 10.0.0.0/33, gateway: 10.1.0.1}]}}
          c: {ipam: {config: [{subnet: 10.0.0.0/24, gateway: 10.1.0.1}]}}
        volumes:
          v: {external: true, driver_opts: {a: b}}
        configs:
          none: {}
          two: {content: a, file: b}
          missing: {file: nope.txt}
          env: {environment: NOT_SET}
        """,
    ) == [
        "stack.yaml:4:23: networks.a.driver: an external network is not created by pyapply, "
        'so "driver" cannot be set',
        'stack.yaml:5:32: networks.b.ipam.config[0].subnet: "10.0.0.0/33" is not a valid subnet '
        "such as 172.20.0.0/24",
        "stack.yaml:6:54: networks.c.ipam.config[0].gateway: gateway 10.1.0.1 is outside the "
        "subnet 10.0.0.0/24",
        "stack.yaml:8:23: volumes.v.driver_opts: an external volume is not created by pyapply, "
        'so "driver_opts" cannot be set',
        'stack.yaml:10:3: configs.none: a config must set exactly one of "file", "content", '
        '"environment" or "external"',
        'stack.yaml:11:3: configs.two: a config must set exactly one of "file", "content", '
        '"environment" or "external"',
        'stack.yaml:11:27: configs.two.file: file "b" does not exist',
        'stack.yaml:12:19: configs.missing.file: file "nope.txt" does not exist',
        'stack.yaml:13:22: configs.env.environment: environment variable "NOT_SET" is not set',
    ]


def test_default_network_is_implicit(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            services:
              a: {image: img}
              b: {image: img, networks: [default, lan]}
              c: {image: img, network_mode: none}
            networks: {lan: {}}
            """,
        )
    )
    assert [n.name for n in stack.networks] == ["default", "lan"]
    assert stack.service("c").networks == ()


def test_declared_default_network_is_kept(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            services: {a: {image: img}}
            networks: {default: {internal: true}}
            """,
        )
    )
    assert stack.networks[0].internal is True


def test_no_default_network_when_no_service_uses_it(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            services: {a: {image: img, networks: [lan]}}
            networks: {lan: {}}
            """,
        )
    )
    assert [n.name for n in stack.networks] == ["lan"]


# ---------------------------------------------------------------------------------------------
# Interpolation inside manifests


def test_dotenv_beside_the_manifest_and_environ_override(here: Path) -> None:
    write(here, {"app/.env": "TAG=from-dotenv\nPORT=8080\nREPLICAS=3\nRO=yes\n"})
    write(
        here,
        {
            "app/stack.yaml": """
                services:
                  web:
                    image: "nginx:${TAG}"
                    ports: ["${PORT}"]
                    deploy: {replicas: "${REPLICAS}"}
                    read_only: ${RO}
                    environment: {PRICE: "$$5", NESTED: "${NOPE:-${TAG}}"}
            """
        },
    )
    web = only_stack(load(["app"], environ={"PORT": "9090"})).service("web")
    assert web.image == "nginx:from-dotenv"
    assert web.ports == (Port(9090),)
    assert web.replicas == 3
    assert web.read_only is True
    assert web.environment == (("NESTED", "from-dotenv"), ("PRICE", "$5"))


def test_unset_variable_warns_once_per_file(here: Path) -> None:
    assert warnings(
        here,
        """
        services:
          web:
            image: "nginx:${TAG}"
            labels: {a: "${TAG}", b: "$OTHER"}
        """,
    ) == [
        'stack.yaml:3:12: warning: services.web.image: variable "TAG" is not set; using an '
        "empty string",
        'stack.yaml:4:30: warning: services.web.labels.b: variable "OTHER" is not set; using an '
        "empty string",
    ]


def test_required_variable_error_names_the_value(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            image: img
            environment:
              - PASSWORD=${DB_PASSWORD:?set DB_PASSWORD in .env}
            command: echo $1
        """,
    ) == [
        'stack.yaml:5:9: services.web.environment[0]: required variable "DB_PASSWORD" is not set: '
        "set DB_PASSWORD in .env",
        'stack.yaml:6:14: services.web.command: invalid interpolation "$1": write "$$" for a '
        'literal "$"',
    ]


def test_keys_and_extension_fields_are_not_interpolated(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            x-template: {image: "${REQUIRED:?never evaluated}"}
            services:
              web:
                image: img
                x-note: "${ALSO:?not evaluated}"
                labels: {"$KEY": "$VALUE"}
            """,
            {"VALUE": "v"},
        )
    )
    assert stack.service("web").labels == (("$KEY", "v"),)


def test_dotenv_errors_name_the_file(here: Path) -> None:
    write(here, {".env": "GOOD=1\nBAD LINE\n"})
    assert errors(here, "services: {web: {image: img}}\n") == [
        '.env:2:1: "BAD LINE" is not a KEY=VALUE line'
    ]


# ---------------------------------------------------------------------------------------------
# YAML


def test_anchors_aliases_and_merge_keys(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            x-common: &common
              image: base:1
              restart: always
              environment: &env {A: "1"}
            x-more: &more
              restart: on-failure
              user: nobody
            services:
              a:
                <<: *common
              b:
                <<: [*more, *common]
                environment: *env
                labels: {x: "${V}"}
              c:
                <<: *common
                image: override:2
            """,
            {"V": "v"},
        )
    )
    assert stack.service("a").image == "base:1"
    assert stack.service("a").restart == "always"
    assert stack.service("b").restart == "on-failure"  # the earlier mapping wins
    assert stack.service("b").user == "nobody"
    assert stack.service("b").environment == (("A", "1"),)
    assert stack.service("c").image == "override:2"


def test_merged_fields_report_the_anchor_position(here: Path) -> None:
    assert errors(
        here,
        """
        x-common: &common
          image: img
          restart: sometimes
        services:
          web:
            <<: *common
        """,
    ) == [
        'stack.yaml:3:12: services.web.restart: "sometimes" is not a restart policy: use "no", '
        '"always", "on-failure", "on-failure:N" or "unless-stopped"'
    ]


def test_yaml_syntax_error(here: Path) -> None:
    (problem,) = errors(here, "services:\n  web:\n    image: [a\n    b: c\n")
    # the wording is PyYAML's (or libyaml's); the position is the one that matters
    assert problem.startswith("stack.yaml:4:6: invalid YAML: ")
    assert "flow sequence" in problem


def test_yaml_syntax_error_keeps_earlier_documents_errors(here: Path) -> None:
    text = "services: {web: {image: 1}}\n---\nfoo: [\n"
    problems = errors(here, text)
    assert problems[0] == "stack.yaml:1:25: services.web.image: must be a string, got a number"
    assert problems[1].startswith("stack.yaml:4:1: invalid YAML:")


def test_duplicate_key(here: Path) -> None:
    assert errors(here, "services:\n  web:\n    image: a\n    image: b\n") == [
        'stack.yaml:4:5: duplicate key "image" (first written at line 3)'
    ]


def test_unsupported_tag(here: Path) -> None:
    assert errors(here, "services:\n  web:\n    image: !vault abc\n") == [
        'stack.yaml:3:12: unsupported YAML tag "!vault"'
    ]


def test_not_utf8(here: Path) -> None:
    (here / "stack.yaml").write_bytes(b"services:\n  web: {image: \xff}\n")
    with pytest.raises(ManifestError) as info:
        load(["stack.yaml"], environ={})
    assert [str(p) for p in info.value.problems] == ["stack.yaml:2:1: the file is not UTF-8 text"]


# ---------------------------------------------------------------------------------------------
# Documents, names, files and directories


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: pyapply/v2\nkind: Stack\n",
            'stack.yaml:1:13: apiVersion: unknown apiVersion "pyapply/v2": this pyapply reads '
            '"pyapply/v1"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Deployment\n",
            'stack.yaml:2:7: kind: unknown kind "Deployment": pyapply/v1 defines only "Stack"',
        ),
        (
            "apiVersion: pyapply/v1\nmetadata: {name: x}\n",
            'stack.yaml:1:1: missing "kind": a pyapply/v1 document is "kind: Stack"',
        ),
        (
            "kind: Stack\nmetadata: {name: x}\n",
            'stack.yaml:1:1: not a pyapply manifest: expected "apiVersion: pyapply/v1" and '
            '"kind: Stack", or a compose file with top-level "services"',
        ),
        ("- a\n- b\n", "stack.yaml:1:1: a manifest document must be a mapping, got a list"),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: Shop}\nspec: {}\n",
            'stack.yaml:3:18: metadata.name: invalid stack name "Shop": use lower-case letters, '
            'digits, "_" and "-", starting with a letter or digit',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {}\nspec: {}\n",
            'stack.yaml:3:1: metadata: missing required field "name"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: a}\n",
            'stack.yaml:1:1: missing required field "spec"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: a}\nspec: {services: []}\n",
            "stack.yaml:4:8: spec.services: must be a mapping or empty, got a list",
        ),
        (
            "name: My App\nservices: {}\n",
            'stack.yaml:1:7: name: invalid stack name "My App": use lower-case letters, digits, '
            '"_" and "-", starting with a letter or digit',
        ),
    ],
)
def test_document_errors(here: Path, text: str, message: str) -> None:
    assert errors(here, text) == [message]


def test_stack_document_and_version_key(here: Path) -> None:
    loaded = load_text(
        here,
        """
        apiVersion: pyapply/v1
        kind: Stack
        x-owner: team-a
        metadata: {name: shop}
        spec:
          services: {web: {image: img}}
        """,
    )
    assert only_stack(loaded).name == "shop"
    assert only_stack(load_text(here, "version: '3.8'\nname: v\nservices: {}\n")).name == "v"


def test_empty_services_and_sections(here: Path) -> None:
    stack = only_stack(load_text(here, "name: e\nservices:\nnetworks:\nvolumes:\n"))
    assert stack == Stack("e")


@pytest.mark.parametrize(
    ("directory", "env", "expected"),
    [
        ("My Project.v2", {}, "myprojectv2"),
        ("plain", {"COMPOSE_PROJECT_NAME": "from-env"}, "from-env"),
        ("__Under_", {}, "under_"),
    ],
)
def test_compose_stack_named_by_directory(
    here: Path, directory: str, env: dict[str, str], expected: str
) -> None:
    write(here, {f"{directory}/compose.yaml": "services: {web: {image: img}}\n"})
    assert only_stack(load([directory], environ=env)).name == expected


def test_compose_name_key_beats_environment(here: Path) -> None:
    write(here, {"d/compose.yaml": "name: named\nservices: {}\n"})
    assert only_stack(load(["d"], environ={"COMPOSE_PROJECT_NAME": "env"})).name == "named"


def test_compose_project_name_from_dotenv(here: Path) -> None:
    write(here, {"d/compose.yaml": "services: {}\n", "d/.env": "COMPOSE_PROJECT_NAME=dotenv\n"})
    assert only_stack(load(["d"], environ={})).name == "dotenv"


def test_directory_that_cannot_name_a_stack(here: Path) -> None:
    write(here, {"___/compose.yaml": "services: {}\n"})
    with pytest.raises(ManifestError) as info:
        load(["___"], environ={})
    assert [str(p) for p in info.value.problems] == [
        '___/compose.yaml:1:1: cannot name the stack after its directory "___": add a top-level '
        '"name:"'
    ]


def test_directory_loading_multi_document_and_skipping(here: Path) -> None:
    write(
        here,
        {
            "tree/b/stacks.yml": """
                apiVersion: pyapply/v1
                kind: Stack
                metadata: {name: two}
                spec: {services: {web: {image: img}}}
                ---
                # an empty document is skipped
                ---
                apiVersion: pyapply/v1
                kind: Stack
                metadata: {name: one}
                spec: {}
            """,
            "tree/a/app/compose.yaml": "services: {api: {image: img}}\n",
            "tree/.hidden/x.yaml": "not: [valid",
            "tree/a/.secret.yaml": "not: [valid",
            "tree/a/.env": "X=1\n",
            "tree/a/notes.txt": "not: [yaml",
            "tree/c/empty.yaml": "# nothing here\n",
        },
    )
    loaded = load(["tree"], environ={})
    assert [s.name for s in loaded.stacks] == ["app", "one", "two"]
    assert loaded.files == tuple(
        str(here / "tree" / f) for f in ("a/app/compose.yaml", "b/stacks.yml", "c/empty.yaml")
    )
    assert loaded.stacks[1].location == Location("tree/b/stacks.yml", 10, 18)
    assert loaded.stacks[2].sources == (str(here / "tree" / "b" / "stacks.yml"),)


def test_content_digest(here: Path) -> None:
    write(here, {"d/a.yaml": "services: {}\nname: a\n", "d/b.yaml": "services: {}\nname: b\n"})
    first = load(["d"], environ={})
    expected = hashlib.sha256()
    for name in ("a", "b"):
        path = str(here / "d" / f"{name}.yaml")
        content = (here / "d" / f"{name}.yaml").read_bytes()
        expected.update(f"{path}\0{len(content)}\0".encode() + content)
    assert first.content_digest == expected.hexdigest()
    # the same files named twice, in another order: same result
    again = load(["d/b.yaml", "d", str(here / "d" / "a.yaml")], environ={})
    assert again.content_digest == first.content_digest
    assert again.files == first.files
    (here / "d" / "b.yaml").write_text("services: {}\nname: bb\n")
    assert load(["d"], environ={}).content_digest != first.content_digest


def test_missing_paths_and_empty_directories(here: Path) -> None:
    (here / "empty").mkdir()
    write(here, {"ok.yaml": "services: {web: {image: img}}\nname: ok\n"})
    with pytest.raises(ManifestError) as info:
        load(["nope.yaml", "empty", "ok.yaml", "also/missing"], environ={})
    assert [str(p) for p in info.value.problems] == [
        "also/missing: no such file or directory",
        "nope.yaml: no such file or directory",
    ]
    loaded = load(["empty", "ok.yaml"], environ={})
    assert [str(w) for w in loaded.warnings] == [
        "warning: empty: no *.yaml or *.yml files in this directory"
    ]


def test_duplicate_stack_names(here: Path) -> None:
    write(
        here,
        {
            "a.yaml": "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: shop}\nspec: {}\n",
            "b/shop/compose.yaml": "services: {}\n",
        },
    )
    with pytest.raises(ManifestError) as info:
        load(["a.yaml", "b"], environ={})
    assert [str(p) for p in info.value.problems] == [
        'b/shop/compose.yaml:1:1: stack "shop" is declared twice, here and at a.yaml:3:18'
    ]


def test_duplicate_stack_names_in_one_file(here: Path) -> None:
    text = "name: x\nservices: {}\n---\nname: x\nservices: {}\n"
    assert errors(here, text) == [
        'stack.yaml:4:7: name: stack "x" is declared twice, here and at stack.yaml:1:7'
    ]


# ---------------------------------------------------------------------------------------------
# Schema errors, in words


def test_schema_errors_in_words(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            imagee: nginx
            image: 5
            ports: "80:80"
            pull_policy: sometimes
            deploy: {replicas: -1, update_config: {order: sideways}}
            healthcheck: {retries: "many"}
            read_only: maybe
            depends_on: {db: {condition: started}}
            networks: {front: [x]}
          db: []
        """,
    ) == [
        'stack.yaml:3:5: services.web.imagee: unknown field "imagee" (did you mean "image"?)',
        "stack.yaml:4:12: services.web.image: must be a string, got a number",
        "stack.yaml:5:12: services.web.ports: must be a list, got a string",
        'stack.yaml:6:18: services.web.pull_policy: must be one of "missing", "always", "never", '
        '"build" or "if_not_present", got "sometimes"',
        "stack.yaml:7:24: services.web.deploy.replicas: must be at least 0, got -1",
        'stack.yaml:7:51: services.web.deploy.update_config.order: must be one of "stop-first" '
        'or "start-first", got "sideways"',
        "stack.yaml:8:28: services.web.healthcheck.retries: must be an integer, got a string",
        "stack.yaml:9:16: services.web.read_only: must be true or false, got a string",
        'stack.yaml:10:34: services.web.depends_on.db.condition: must be one of "service_started", '
        '"service_healthy" or "service_completed_successfully", got "started"',
        "stack.yaml:11:16: services.web.networks.front: must be a mapping or empty, got a list",
        "stack.yaml:12:3: services.db: must be a mapping, got a list",
    ]


def test_missing_image_and_long_form_required_fields(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            ports: [{published: 80}]
            volumes: [{target: /x}]
        """,
    ) == [
        'stack.yaml:2:3: services.web: missing required field "image"',
        'stack.yaml:3:13: services.web.ports[0]: missing required field "target"',
        'stack.yaml:4:15: services.web.volumes[0]: missing required field "type"',
    ]


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
            "ports: [{target: 80, published: 8080-8081}]",
            'ports[0]: published port "8080-8081" is not a single port number',
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
            'volumes[0].type: must be one of "volume", "bind" or "tmpfs", got "npipe"',
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


# ---------------------------------------------------------------------------------------------
# References, cycles, host ports


def test_unknown_references(here: Path) -> None:
    assert errors(
        here,
        """
        apiVersion: pyapply/v1
        kind: Stack
        metadata: {name: refs}
        spec:
          services:
            web:
              image: img
              depends_on: [dbb, cache]
              networks: [frontt]
              volumes: ["dataa:/d", "/anon", "./bind:/b", {type: volume, source: other, target: /o}]
              configs: [cfg]
              secrets: [{source: pw}]
            dbb-not-a-service-name-but-fine: {image: img}
            cache: {image: img, depends_on: {ghost: {required: false}}}
          networks: {front: {}}
          volumes: {data: {}}
        """,
    ) == [
        'stack.yaml:8:20: spec.services.web.depends_on[0]: depends on unknown service "dbb"',
        'stack.yaml:9:18: spec.services.web.networks[0]: network "frontt" is not declared under '
        '"spec.networks" (did you mean "front"?)',
        'stack.yaml:10:17: spec.services.web.volumes[0]: volume "dataa" is not declared under '
        '"spec.volumes" (did you mean "data"?)',
        'stack.yaml:10:74: spec.services.web.volumes[3].source: volume "other" is not declared '
        'under "spec.volumes"',
        'stack.yaml:11:17: spec.services.web.configs[0]: config "cfg" is not declared under '
        '"spec.configs"',
        'stack.yaml:12:26: spec.services.web.secrets[0].source: secret "pw" is not declared '
        'under "spec.secrets"',
    ]


def test_not_required_unknown_dependency_is_a_warning(here: Path) -> None:
    assert warnings(
        here, "services:\n  a: {image: i, depends_on: {ghost: {required: false}}}\n"
    ) == [
        "stack.yaml:2:30: warning: services.a.depends_on.ghost: depends on unknown service "
        '"ghost" (not required, so ignored)'
    ]


@pytest.mark.parametrize(
    ("deps", "expected"),
    [
        (
            {"a": ["b"], "b": ["a"]},
            ["services.a.depends_on[0]: dependency cycle: a -> b -> a"],
        ),
        (
            {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]},
            ["services.a.depends_on[0]: dependency cycle: a -> b -> c -> a"],
        ),
        ({"a": ["a"]}, ["services.a.depends_on[0]: dependency cycle: a -> a"]),
        (
            {"a": ["b", "c"], "b": ["a"], "c": ["a"]},
            [
                "services.a.depends_on[0]: dependency cycle: a -> b -> a",
                "services.a.depends_on[1]: dependency cycle: a -> c -> a",
            ],
        ),
        ({"a": ["b", "c"], "b": ["c"], "c": []}, []),
    ],
)
def test_dependency_cycles(here: Path, deps: dict[str, list[str]], expected: list[str]) -> None:
    services = {name: {"image": "img", "depends_on": d} for name, d in deps.items()}
    text = yaml.safe_dump({"services": services}, sort_keys=True)
    if not expected:
        load_text(here, text)
        return
    assert [p.split(": ", 1)[1] for p in errors(here, text)] == expected


def test_depends_on_cycle_exact_location(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          a:
            image: img
            depends_on: {b: {condition: service_healthy}}
          b:
            image: img
            depends_on: [a]
        """,
    ) == ["stack.yaml:4:18: services.a.depends_on.b: dependency cycle: a -> b -> a"]


def test_host_port_conflicts(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          a:
            image: img
            ports: ["8080:80", "127.0.0.1:9000:90", "53:53/udp"]
          b:
            image: img
            ports:
              - "8080:81"
              - "127.0.0.2:9000:90"
              - "0.0.0.0:9000:91"
              - "53:53/tcp"
              - target: 1
                published: 8080
                protocol: udp
          c:
            image: img
            deploy: {replicas: 2}
            ports: ["7000:70", "70", "127.0.0.1::71"]
        """,
    ) == [
        "stack.yaml:8:9: services.b.ports[0]: host port 8080/tcp is already published by service "
        '"a" at stack.yaml:4:13',
        "stack.yaml:10:9: services.b.ports[2]: host port 0.0.0.0:9000/tcp is already published by "
        'service "a" at stack.yaml:4:24',
        'stack.yaml:18:13: services.c.ports[0]: service "c" runs 2 replicas, which cannot all '
        "publish host port 7000/tcp: leave the host port out or run one replica",
    ]


def test_host_port_conflicts_across_stacks(here: Path) -> None:
    write(
        here,
        {
            "one/compose.yaml": "services: {web: {image: img, ports: ['80:80']}}\n",
            "two/compose.yaml": "services: {api: {image: img, ports: ['[::]:80:8080']}}\n",
        },
    )
    with pytest.raises(ManifestError) as info:
        load(["one", "two"], environ={})
    assert [str(p) for p in info.value.problems] == [
        "two/compose.yaml:1:38: services.api.ports[0]: host port :::80/tcp is already published "
        'by service "web" of stack "one" at one/compose.yaml:1:38'
    ]


def test_invalid_names(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          "-web": {image: img}
          "we b": {image: img}
          ok.name_1-x: {image: img}
        volumes:
          "bad/vol": {}
        """,
    ) == [
        'stack.yaml:2:3: services.-web: invalid service name "-web": use letters, digits, '
        '"_", "." and "-", starting with a letter or digit',
        'stack.yaml:3:3: services["we b"]: invalid service name "we b": use letters, digits, '
        '"_", "." and "-", starting with a letter or digit',
        'stack.yaml:6:3: volumes["bad/vol"]: invalid volume name "bad/vol": use letters, digits, '
        '"_", "." and "-", starting with a letter or digit',
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
            container_name: fixed
            privileged: true
            network_mode: host
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
        'stack.yaml:4:5: warning: services.built.build: "build" is not supported; without '
        '"image" the service runs "stack-built", which must already exist',
        'stack.yaml:6:5: warning: services.both.build: "build" is not supported; the image '
        '"mine:1" is used as it is',
        'stack.yaml:8:5: warning: services.both.container_name: "container_name" is not '
        "supported and is ignored: pyapply names containers <stack>-<service>-<n>",
        'stack.yaml:9:5: warning: services.both.privileged: "privileged" is not supported and is '
        "ignored",
        'stack.yaml:10:5: warning: services.both.network_mode: "network_mode: host" is not '
        "supported; the service is not attached to any network",
        "stack.yaml:11:5: warning: services.both.mem_limit: conflicts with "
        "deploy.resources.limits.memory, which is used",
        "stack.yaml:12:51: warning: services.both.deploy.placement: placement is used by the "
        "swarm runtime only; the runtimes of one host ignore it",
        "stack.yaml:13:5: warning: services.both.scale: conflicts with deploy.replicas (2), "
        "which is used",
        'stack.yaml:16:22: warning: services.net.networks.lan.ipv6_address: "ipv6_address" is '
        "not supported and is ignored",
        'stack.yaml:18:17: warning: networks.lan.driver: network driver "overlay" is not '
        'supported; only "bridge" is',
    ]


# ---------------------------------------------------------------------------------------------
# Schemas


def test_schemas_are_valid_and_packaged() -> None:
    for name in ("stack", "compose"):
        text = (resources.files("pyapply.schemas") / "v1" / f"{name}.schema.json").read_text()
        Draft202012Validator.check_schema(json.loads(text))
        assert manifest.schema(name) == json.loads(text)


def test_compose_schema_validates_a_plain_compose_file() -> None:
    compose = manifest.schema("compose")
    stack = manifest.schema("stack")
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (stack, compose)]
    )
    validator = Draft202012Validator(compose, registry=registry)
    assert validator.is_valid({"services": {"web": {"image": "img", "x-a": 1}}, "x-top": 2})
    assert not validator.is_valid({"services": {"web": {"image": "img", "imagee": 1}}})
    assert not validator.is_valid({"apiVersion": "pyapply/v1"})


# ---------------------------------------------------------------------------------------------
# The compose corpus: every real-world file loads (warnings allowed, no errors)


def _corpus() -> Path | None:
    root = Path(os.environ.get("PYAPPLY_CORPUS", CORPUS_DEFAULT))
    return root if (root / "awesome-compose").is_dir() else None


def test_compose_corpus_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _corpus()
    if root is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the compose corpus is missing ({CORPUS_DEFAULT}); set PYAPPLY_CORPUS")
        pytest.skip(f"no compose corpus at {CORPUS_DEFAULT} (set PYAPPLY_CORPUS)")
    monkeypatch.chdir(root)
    projects = sorted(p.name for p in (root / "awesome-compose").iterdir() if p.is_dir())
    assert len(projects) > 30
    for project in projects:
        loaded = load([f"awesome-compose/{project}"], environ={"HOME": "/home/u"})
        stack = only_stack(loaded)
        assert stack.services, project
        for warning in loaded.warnings:
            assert warning.location is not None and warning.path, warning


# ---------------------------------------------------------------------------------------------
# Robustness: whatever shape a value has, loading ends in a model or a ManifestError


def test_any_value_of_the_wrong_shape_is_reported_not_crashed(here: Path) -> None:
    base = yaml.safe_load((DATA / "rich" / "compose.yaml").read_text())
    replacements: list[Any] = [None, 7, "x", [], {}, True, ["x"], {"x": None}]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    (here / "app").mkdir()
    paths = value_paths(base)
    assert len(paths) > 100
    for n, path in enumerate(paths):
        # one shape per value, cycling through the list, keeps the test fast
        for replacement in (replacements[n % len(replacements)],):
            doc = json.loads(json.dumps(base))
            node = doc
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = replacement
            (here / "app" / "compose.yaml").write_text(yaml.dump(doc, Dumper=dumper))
            try:
                load(["app"], environ={})
            except ManifestError as e:
                assert e.problems
                assert all(p.location is not None for p in e.problems), e


def test_rich_example_loads() -> None:
    loaded = load([str(DATA / "rich")], environ={})
    stack = only_stack(loaded)
    assert [s.name for s in stack.services] == ["api", "cache", "db", "web"]
    assert loaded.warnings == ()


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
