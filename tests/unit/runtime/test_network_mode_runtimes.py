"""The pure parts of network_mode, expose and host port ranges in the two runtimes: the
Docker payloads both ways (runtime/docker/normalise.py, driver._create_args) and a joiner
left in a namespace dockerd replaced; native's OCI namespaces for the host's network, its
range-aware port matching, and the /etc files of a container in the host's namespace."""

from __future__ import annotations

from typing import Any

import pytest

from pyapply.runtime.base import ContainerConfig, ContainerState, PortBinding
from pyapply.runtime.docker import normalise
from pyapply.runtime.docker.driver import DockerRuntime
from pyapply.runtime.native import containers, network, oci

# -- docker ------------------------------------------------------------------------------


def test_a_host_port_range_goes_to_docker_as_a_range_and_comes_back() -> None:
    ports = (
        PortBinding(80, "tcp", "127.0.0.1", 8000, host_port_last=8002),
        PortBinding(81, "udp", "", 9000),
        PortBinding(82),
    )
    payload = normalise.port_bindings(ports)
    assert payload == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000-8002"}],
        "81/udp": [{"HostIp": "", "HostPort": "9000"}],
        "82/tcp": [{"HostIp": "", "HostPort": ""}],
    }
    assert normalise.ports_from_bindings(payload) == normalise.sort_ports(list(ports))
    # a range of one port is that port
    assert normalise.ports_from_bindings({"80/tcp": [{"HostPort": "8000-8000"}]}) == (
        PortBinding(80, "tcp", "", 8000),
    )


def test_expose_becomes_exposed_ports() -> None:
    assert normalise.exposed_ports(("80/tcp", "53/udp", "7-9/tcp")) == [
        (80, "tcp"),
        (53, "udp"),
        (7, "tcp"),
        (8, "tcp"),
        (9, "tcp"),
    ]
    assert len(normalise.exposed_ports(("1-65535/tcp",))) == normalise.MAX_EXPOSED


def test_the_joined_container_is_read_from_network_mode() -> None:
    assert normalise.joined_id({"NetworkMode": "container:abc123"}) == "abc123"
    for mode in ("host", "none", "bridge", "shop_back", "", None):
        assert normalise.joined_id({"NetworkMode": mode}) is None


class _Api:
    """What _create_args calls of the SDK's APIClient, recording the host config."""

    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        return kw

    def create_networking_config(self, endpoints: dict[str, Any]) -> dict[str, Any]:
        return {"EndpointsConfig": endpoints}

    def create_endpoint_config(self, **kw: Any) -> dict[str, Any]:
        return kw


@pytest.mark.parametrize("mode", ["host", "none", "container:front-door"])
def test_docker_is_asked_for_the_network_mode(mode: str) -> None:
    driver = DockerRuntime.__new__(DockerRuntime)
    args = driver._create_args(
        _Api(), ContainerConfig(name="c", image="img", network_mode=mode, expose=("80/tcp",))
    )
    assert args["host_config"]["network_mode"] == mode
    assert args["networking_config"] is None
    assert args["ports"] == [(80, "tcp")]


def _state(name: str, cid: str, started: str, joined: str | None = None) -> ContainerState:
    return ContainerState(
        id=cid,
        name=name,
        image="img",
        image_id="",
        labels={},
        status="running",
        started_at=started,
        joined=joined,
    )


def test_a_joiner_of_a_namespace_started_again_after_it_has_a_fault() -> None:
    web = _state("web", "w1", "2026-01-02T10:00:05.5Z")
    before = _state("side", "s1", "2026-01-02T10:00:05.123456789Z", joined="w1")
    after = _state("side", "s1", "2026-01-02T10:00:06Z", joined="w1")
    out = {s.name: s for s in normalise.stale_namespaces([web, before])}
    assert [(f.reason, f.fix) for f in out["side"].faults] == [
        (
            "the container whose network namespace it joins (web) was started again after it",
            "restart",
        )
    ]
    assert out["web"].faults == ()
    assert all(not s.faults for s in normalise.stale_namespaces([web, after]))
    # a peer outside the listing, or no start time: nothing is known, nothing reported
    assert all(not s.faults for s in normalise.stale_namespaces([before]))


# -- native ------------------------------------------------------------------------------


def _inputs(**kw: Any) -> oci.SpecInputs:
    etc = oci.EtcFiles(hosts="/c/hosts", hostname="/c/hostname", resolv_conf="/c/resolv.conf")
    return oci.SpecInputs(
        container_id="0" * 64, rootfs="/c/rootfs", etc_files=etc, image=oci.ImageConfig(), **kw
    )


def test_the_hosts_network_has_no_namespace_of_its_own() -> None:
    config = ContainerConfig(name="c", image="img", command=("sh",))
    kinds = [n["type"] for n in oci.build_spec(config, _inputs())["linux"]["namespaces"]]
    assert kinds == ["pid", "ipc", "uts", "mount", "network"]
    host = oci.build_spec(config, _inputs(host_network=True))["linux"]["namespaces"]
    assert [n["type"] for n in host] == ["pid", "ipc", "uts", "mount"]
    joined = oci.build_spec(config, _inputs(netns_path="/run/netns/x"))["linux"]["namespaces"]
    assert joined[-1] == {"type": "network", "path": "/run/netns/x"}


def test_a_published_port_matches_a_request_for_a_range() -> None:
    asked = PortBinding(80, "tcp", "127.0.0.1", 8000, host_port_last=8002)
    for port, same in ((7999, False), (8000, True), (8002, True), (8003, False)):
        assert network._same_port(PortBinding(80, "tcp", "127.0.0.1", port), asked) is same
    single = PortBinding(80, "tcp", "127.0.0.1", 8000)
    assert network._same_port(PortBinding(80, "tcp", "127.0.0.1", 8000), single)
    assert not network._same_port(PortBinding(80, "tcp", "127.0.0.1", 8001), single)
    # the requested range is kept in the state, and read back
    assert network._binding(network._binding_json(asked)) == asked


def test_the_first_free_port_of_a_range_is_taken() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = held.getsockname()[1]
        asked = PortBinding(80, "tcp", "127.0.0.1", taken, host_port_last=taken + 2)
        candidates = [taken, taken + 1, taken + 2]
        # the bound one is skipped, and so is one another root publishes
        got = network._first_free(asked, candidates, {("tcp", taken + 1)}, "tcp")
        assert got == taken + 2
        with pytest.raises(network.Conflict, match="already published or taken"):
            network._first_free(asked, candidates, {("tcp", taken + n) for n in (1, 2)}, "tcp")
        # one port asked for: the bind's own error says why
        with pytest.raises(network.Conflict, match=f"127.0.0.1:{taken}/tcp is taken"):
            network._first_free(PortBinding(80, "tcp", "127.0.0.1", taken), [taken], (), "tcp")


def test_a_container_on_the_hosts_network_has_the_hosts_etc_files() -> None:
    hosts, resolv = containers.host_etc(["db.local:10.0.0.5", "me:host-gateway"])
    assert hosts.endswith("10.0.0.5\tdb.local\n127.0.0.1\tme\n")
    assert "localhost" in hosts
    assert resolv.strip()
