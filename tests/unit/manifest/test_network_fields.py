"""network_mode, expose and container_name as the Compose Specification has them, loaded
into the model and rendered back by `config` (reconciler/manifest/service.py, stack.py,
dump.py); the policy sees the host's namespace asked for (policy_rules.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from manifest_support import errors, load_text, only_stack, warnings

from pyapply.reconciler.core.model import Dependency, Port
from pyapply.reconciler.manifest import dump, policy
from pyapply.reconciler.manifest.loader import load


def test_network_modes_are_kept(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            name: stack
            services:
              host: {image: img, network_mode: host}
              none: {image: img, network_mode: none}
              side: {image: img, network_mode: "service:web"}
              other: {image: img, network_mode: "container:some-db"}
              web: {image: img}
            """,
        )
    )
    modes = {s.name: (s.network_mode, s.networks) for s in stack.services}
    assert modes["host"] == ("host", ())
    assert modes["none"] == ("none", ())
    assert modes["side"] == ("service:web", ())
    assert modes["other"] == ("container:some-db", ())
    assert modes["web"][0] is None and [n.name for n in modes["web"][1]] == ["default"]
    side = stack.service("side")
    assert side.network_peer() == "web"
    # the order after web is the plan's (reconciler/core/plan.py), not a depends_on
    assert side.depends_on == ()
    assert stack.service("other").network_peer() is None


def test_a_network_mode_it_does_not_run_warns_and_means_no_network(here: Path) -> None:
    text = "name: stack\nservices:\n  a: {image: img, network_mode: bridge}\n"
    assert warnings(here, text) == [
        'stack.yaml:3:19: warning: services.a.network_mode: "network_mode: bridge" is not '
        "supported; the service is not attached to any network"
    ]
    assert only_stack(load_text(here, text)).service("a").network_mode == "none"


def test_network_mode_mistakes_are_located(here: Path) -> None:
    assert errors(
        here,
        """
        name: stack
        services:
          a:
            image: img
            network_mode: service:b
            ports: ["80"]
          b:
            image: img
            network_mode: service:a
          c:
            image: img
            network_mode: service:webb
          d:
            image: img
            network_mode: service:d
          e:
            image: img
            network_mode: "container:"
          f:
            image: img
            network_mode: host
            networks: [x]
          g:
            image: img
            network_mode: host
            ports: [{target: 80, published: 8080}]
          k:
            image: img
            network_mode: none
            ports: ["127.0.0.1:80:80"]
          web: {image: img}
        networks:
          x: {}
        """,
    ) == [
        "stack.yaml:5:19: services.a.network_mode: dependency cycle: a -> b -> a",
        'stack.yaml:6:13: services.a.ports[0]: "ports" conflicts with "network_mode: '
        'service:b": the ports are those of service "b": publish them there',
        'stack.yaml:12:19: services.c.network_mode: "network_mode: service:webb" names an '
        'unknown service (did you mean "web"?)',
        'stack.yaml:15:19: services.d.network_mode: service "d" cannot join its own network '
        "namespace",
        'stack.yaml:18:19: services.e.network_mode: "network_mode: container:" needs a name '
        'after "container:"',
        'stack.yaml:21:5: services.f.network_mode: "network_mode" cannot be used together with '
        '"networks"',
        'stack.yaml:26:13: services.g.ports[0]: "ports" conflicts with "network_mode: host": the '
        "container listens on the host's ports directly",
        'stack.yaml:30:13: services.k.ports[0]: "ports" conflicts with "network_mode: none": a '
        "container without a network has no port to publish",
    ]


def test_container_name_is_kept_for_one_replica(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            "name: stack\nservices:\n  db: {image: img, container_name: My.db_1-x}\n",
        )
    )
    assert stack.service("db").container_name == "My.db_1-x"


def test_container_name_mistakes_are_located(here: Path) -> None:
    assert errors(
        here,
        """
        name: stack
        services:
          g: {image: img, container_name: "bad name"}
          h: {image: img, container_name: twice, deploy: {replicas: 2}}
          i: {image: img, container_name: same}
          j: {image: img, container_name: same}
        """,
    ) == [
        'stack.yaml:3:35: services.g.container_name: invalid container name "bad name": use '
        'letters, digits, "_", "." and "-", starting with a letter or digit, at most 120 '
        "characters",
        'stack.yaml:4:35: services.h.container_name: "container_name" names one container, but '
        "the service runs 2 replicas: leave it out or run one replica",
        'stack.yaml:6:35: services.j.container_name: container name "same" is also given to '
        'service "i" at stack.yaml:5:35',
    ]


def test_container_names_are_unique_across_stacks(here: Path) -> None:
    (here / "a.yaml").write_text("name: one\nservices:\n  x: {image: img, container_name: c}\n")
    (here / "b.yaml").write_text("name: two\nservices:\n  y: {image: img, container_name: c}\n")
    with pytest.raises(Exception) as info:
        load(["a.yaml", "b.yaml"], environ={})
    assert str(info.value) == (
        'b.yaml:3:35: services.y.container_name: container name "c" is also given to service '
        '"x" at a.yaml:3:35'
    )


def test_expose_is_kept_as_written_and_checked(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            "name: stack\nservices:\n  a: {image: img, expose: ['80', 81, 8000-8010/udp, 53/UDP]}\n",
        )
    )
    assert stack.service("a").expose == ("80", "81", "8000-8010/udp", "53/UDP")
    assert errors(
        here,
        "name: stack\nservices:\n  a: {image: img, expose: [x, 9-1, 70000, 5/icmp, '']}\n",
    ) == [
        'stack.yaml:3:28: services.a.expose[0]: "x" is not a port, a range or either with /tcp, '
        "/udp or /sctp",
        'stack.yaml:3:31: services.a.expose[1]: "9-1" is not a port range within 1-65535',
        "stack.yaml:3:36: services.a.expose[2]: 70000 is not a port range within 1-65535",
        'stack.yaml:3:43: services.a.expose[3]: "5/icmp" is not a port, a range or either with '
        "/tcp, /udp or /sctp",
        'stack.yaml:3:51: services.a.expose[4]: "" is not a port, a range or either with /tcp, '
        "/udp or /sctp",
    ]


def test_config_renders_the_fields_in_compose_shape(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            name: stack
            services:
              web:
                image: img
                container_name: front
                expose: [80, "9000-9001/udp"]
                ports: ["127.0.0.1:8000-8002:80-82", {target: 90, published: "9000-9002"}]
              side: {image: img, network_mode: "service:web"}
              host: {image: img, network_mode: host}
            """,
        )
    )
    services = {s.name: dump.service(s) for s in stack.services}
    web = services["web"]
    assert web["container_name"] == "front"
    assert web["expose"] == ["80", "9000-9001/udp"]  # a list of strings, as compose prints
    assert [p["published"] for p in web["ports"]] == [8000, 8001, 8002, "9000-9002"]
    assert services["side"]["network_mode"] == "service:web"
    assert "networks" not in services["side"]
    assert services["host"]["network_mode"] == "host"
    # and what `config` prints loads back into the same model
    (here / "again").mkdir()
    (here / "again" / "compose.yaml").write_text(
        json.dumps({"name": "stack", "services": services})
    )
    again = only_stack(load(["again"], environ={}))
    assert again.services == stack.services


def test_host_port_range_of_one_container_port_keeps_its_range(here: Path) -> None:
    stack = only_stack(
        load_text(here, "name: s\nservices:\n  a: {image: img, ports: ['8000-8002:80']}\n")
    )
    assert stack.service("a").ports == (Port(80, 8000, published_last=8002),)


def test_the_policy_sees_the_host_network_asked_for(here: Path) -> None:
    loaded = load_text(
        here,
        """
        name: stack
        services:
          a: {image: img, network_mode: host}
          b: {image: img, network_mode: "container:other"}
          c: {image: img, network_mode: "service:a"}
        """,
    )
    found = policy.check(loaded, policy.builtin("restricted"))
    assert [str(f) for f in found] == [
        'stack.yaml:3:33: services.a.network_mode: "network_mode: host" shares the host\'s '
        'network namespace with the container; the policy denies this (rule "host_namespaces")',
        'stack.yaml:4:33: services.b.network_mode: "network_mode: container:other" joins the '
        "network namespace of a container that may be outside the stack; the policy denies "
        'this (rule "host_namespaces")',
    ]


def test_a_dependency_written_on_the_peer_is_not_doubled(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            name: stack
            services:
              side:
                image: img
                network_mode: "service:web"
                depends_on: {web: {condition: service_healthy}}
              web: {image: img}
            """,
        )
    )
    assert stack.service("side").depends_on == (Dependency("web", "service_healthy"),)


def test_replicas_share_a_host_range_of_one_container_port(here: Path) -> None:
    text = "name: s\nservices:\n  a: {image: img, ports: ['8000-8001:80'], scale: %d}\n"
    assert only_stack(load_text(here, text % 2)).service("a").replicas == 2
    assert errors(here, text % 3) == [
        'stack.yaml:3:27: services.a.ports[0]: service "a" runs 3 replicas, which cannot all '
        "publish host port 8000-8001/tcp: leave the host port out or run one replica"
    ]


def test_a_container_name_may_not_be_another_replicas_name(here: Path) -> None:
    assert errors(
        here,
        """
        name: s
        services:
          a: {image: img, container_name: s-b-2}
          b: {image: img, scale: 2}
          c: {image: img, container_name: s-b-3}
        """,
    ) == [
        'stack.yaml:3:35: services.a.container_name: container name "s-b-2" is the name of '
        'replica 2 of service "b"'
    ]


def test_a_joiner_takes_the_host_name_and_hosts_of_the_namespace(here: Path) -> None:
    assert errors(
        here,
        """
        name: s
        services:
          a: {image: img, network_mode: "service:b", hostname: a, extra_hosts: ["x:1.2.3.4"]}
          b: {image: img}
        """,
    ) == [
        'stack.yaml:3:46: services.a.hostname: "hostname" conflicts with "network_mode: '
        'service:b": the container has the host name and /etc/hosts of the namespace it joins',
        'stack.yaml:3:59: services.a.extra_hosts: "extra_hosts" conflicts with "network_mode: '
        'service:b": the container has the host name and /etc/hosts of the namespace it joins',
    ]


def test_joining_a_service_of_a_disabled_profile_is_an_error(here: Path) -> None:
    (here / "p").mkdir()
    (here / "p" / "compose.yaml").write_text(
        "services:\n  side: {image: img, network_mode: 'service:web'}\n"
        "  web: {image: img, profiles: [x]}\n"
    )
    with pytest.raises(Exception) as info:
        load(["p"], environ={})
    assert str(info.value) == (
        'p/compose.yaml:2:36: services.side.network_mode: service "side" joins the network '
        'namespace of "web", which is not enabled: enable its profile (x) with --profile or '
        "COMPOSE_PROFILES"
    )
    loaded = load(["p"], environ={}, profiles=["x"])
    assert only_stack(loaded).service("side").network_mode == "service:web"
