"""The stack builder: top-level networks, volumes, configs and secrets, and the checks
across a stack and across stacks: references, dependency cycles, host ports, names
(reconciler/manifest/stack.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from manifest_support import errors, load_text, only_stack, warnings
from support import write

from pyapply.reconciler.core.model import (
    ConfigSpec,
    ManifestError,
    NetworkSpec,
    SecretSpec,
    VolumeSpec,
)
from pyapply.reconciler.manifest.loader import load

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
        "such as 172.20.0.0/24 or fd00:1::/64",
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


def test_attachable_network(here: Path) -> None:
    """compose's `attachable` is kept (the swarm runtime makes the overlay network so), shown
    by config, and an error on an external network, which pyapply does not create."""
    text = """
        name: att
        services:
          web: {image: img, networks: [mesh]}
        networks:
          mesh: {driver: overlay, attachable: true}
        """
    loaded = load_text(here, text)
    [net] = only_stack(loaded).networks
    assert net.attachable and net.name == "mesh"
    assert not [w for w in map(str, loaded.warnings) if "attachable" in w]
    from pyapply.reconciler.manifest.dump import network

    assert network(net)["attachable"] is True
    [e] = errors(
        here,
        """
        name: att
        services:
          web: {image: img, networks: [mesh]}
        networks:
          mesh: {external: true, attachable: true}
        """,
    )
    assert "networks.mesh.attachable: an external network is not created by pyapply" in e
