"""The native runtime's state files are validated on read: each kind of damage gives one
DamagedState naming the file and what to do (or, where the damage is recoverable, the
documented repair), never a KeyError or AttributeError."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import Conflict
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.health import read_document, read_status
from pyapply.runtime.native.images import ImageStore
from pyapply.runtime.native.ipam import Ipam
from pyapply.runtime.native.network import NetworkManager
from pyapply.runtime.native.statefile import (
    DamagedState,
    integer,
    ipv4_network,
    list_of,
    map_of,
    read_json,
    record,
    string,
)

# (file text, what the error says of it)
GARBAGE: list[tuple[str, str]] = [
    ("", "empty"),
    ("{garbage", "not JSON"),
    ("[]", "a list, not an object"),
    ('"x"', "a string, not an object"),
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _message(exc: pytest.ExceptionInfo[DamagedState]) -> str:
    return exc.value.message


# ---------------------------------------------------------------------------------------------
# the helper


def test_read_json_missing_is_none_and_damage_names_file_reason_and_remedy(tmp_path: Path) -> None:
    shape = record({"n": integer}, {"nets": map_of(ipv4_network)})
    assert read_json(tmp_path / "none.json", shape) is None
    path = _write(tmp_path / "f.json", '{"n": 1, "nets": {"a": "garbage"}}')
    with pytest.raises(DamagedState) as exc:
        read_json(path, shape)
    assert _message(exc) == (
        f"{path} is damaged (nets.a: 'garbage' is not a network); "
        "run `pyapply system reset` or restore it"
    )
    for text, reason in [
        ("", "empty"),
        ("[1]", "a list, not an object"),
        ('{"n": "1"}', "n: a string, not an integer"),
        ('{"n": true}', "n: a boolean, not an integer"),
        ("{}", "n: missing"),
        ("{nope", "not JSON"),
    ]:
        _write(path, text)
        with pytest.raises(DamagedState, match="damaged") as exc:
            read_json(path, shape)
        assert reason in _message(exc), (text, _message(exc))
    assert list_of(string)(["a"], "") == ["a"]


# ---------------------------------------------------------------------------------------------
# containers/<key>/state.json: recoverable (the container shows dead; apply replaces it)


def _container_dir(root: Path, name: str, labels: dict[str, str] | None) -> Path:
    cdir = root / "containers" / name
    cdir.mkdir(parents=True)
    if labels is not None:
        spec = {
            "annotations": {
                "io.pyapply.name": name,
                "io.pyapply.image": "img:1",
                "io.pyapply.labels": json.dumps(labels),
            }
        }
        _write(cdir / "config.json", json.dumps(spec))
    return cdir


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        "garbage",
        "",
        '{"id": 5, "labels": {}, "layer_dirs": [], "hostname": "h"}',
        '{"id": "x", "labels": [], "layer_dirs": [], "hostname": "h"}',
        '{"id": "x", "labels": {}, "layer_dirs": [], "hostname": "h", "ports": [{}]}',
        None,  # deleted
    ],
)
def test_damaged_container_state_shows_dead_with_its_spec_labels(
    tmp_path: Path, text: str | None
) -> None:
    cm = ContainerManager(tmp_path)
    labels = {"io.pyapply.stack": "s", "io.pyapply.service": "web"}
    cdir = _container_dir(tmp_path, "s-web-1", labels)
    if text is not None:
        _write(cdir / "state.json", text)
    state = cm.state("s-web-1")
    assert state is not None
    assert (state.status, dict(state.labels), state.image) == ("dead", labels, "img:1")
    assert [s.name for s in cm.list({"io.pyapply.stack": "s"})] == ["s-web-1"]
    assert cm.list({"io.pyapply.stack": "other"}) == []
    with pytest.raises(DamagedState, match=r"s-web-1/state\.json is damaged"):
        cm.container_pid("s-web-1")
    assert cm.peek("s-web-1") is None


def test_damaged_container_without_spec_shows_dead_and_unlabelled(tmp_path: Path) -> None:
    cm = ContainerManager(tmp_path)
    cdir = _container_dir(tmp_path, "c", None)
    _write(cdir / "config.json", "[]")
    _write(cdir / "state.json", "{}")
    state = cm.state("c")
    assert state is not None and state.status == "dead" and dict(state.labels) == {}
    assert cm.state("absent") is None


def test_image_prune_refuses_to_guess_a_damaged_containers_layers(tmp_path: Path) -> None:
    cm = ContainerManager(tmp_path)
    _write(_container_dir(tmp_path, "c", {}) / "state.json", "[]")
    with pytest.raises(DamagedState):
        cm.layer_dirs_in_use()


# ---------------------------------------------------------------------------------------------
# names.json: an error (renamed containers cannot be told from their keys)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        *GARBAGE,
        ('{"a": 1}', "a: a number, not a string"),
        ('{"a": ""}', "a: empty"),
        ('{"a": "k", "b": "k"}', "names 'a' and 'b' both point to 'k'"),
    ],
)
def test_damaged_names_json_is_an_error(tmp_path: Path, text: str, reason: str) -> None:
    rt = NativeRuntime(tmp_path)
    _write(tmp_path / "names.json", text)
    with pytest.raises(DamagedState) as exc:
        rt.get_container("s-web-1")
    assert str(tmp_path / "names.json") in _message(exc)
    assert reason in _message(exc)


def test_names_json_missing_is_empty(tmp_path: Path) -> None:
    assert NativeRuntime(tmp_path).names.load() == {}


# ---------------------------------------------------------------------------------------------
# networks/networks.json and ipam.json: an error (the kernel's objects hang off them)


def _net(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": "n1",
        "name": "s_a",
        "driver": "bridge",
        "bridge": "pab00000001",
        "internal": False,
        "labels": {},
        "subnet": "10.89.0.0/24",
        "gateway": "10.89.0.1",
        "endpoints": {},
        "ports": [],
        "guards": 1,
    }
    rec.update(over)
    return rec


def _ep(ip: str) -> dict[str, Any]:
    return {
        "ip": ip,
        "veth": "pav1",
        "netns": "/run/netns/x",
        "ifname": "eth0",
        "aliases": [],
        "default_route": True,
    }


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([], "a list, not an object"),
        ({"networks": {"s_a": _net(subnet="garbage")}}, "'garbage' is not a network"),
        ({"networks": {"s_a": _net(internal="no")}}, "internal: a string, not true or false"),
        ({"networks": {"s_a": _net(gateway="10.9.0.1")}}, "gateway 10.9.0.1 is not a host"),
        (
            {"networks": {"s_a": _net(endpoints={"x": _ep("10.89.0.2"), "y": _ep("10.89.0.2")})}},
            "x and y both hold 10.89.0.2",
        ),
        (
            {"networks": {"s_a": _net(endpoints={"x": _ep("10.89.7.2")})}},
            "x's address 10.89.7.2 is not a host address of 10.89.0.0/24",
        ),
        (
            {"networks": {"s_a": _net(), "s_b": _net(name="s_b", bridge="pab2")}},
            "the subnets of s_a and s_b overlap",
        ),
        ({"networks": {"s_a": _net(endpoints={"x": {"ip": "1"}})}}, "'1' is not an IPv4"),
        # dual-stack records
        ({"networks": {"s_a": _net(subnet6="fd00::/64")}}, "subnet6 and gateway6 go together"),
        (
            {"networks": {"s_a": _net(subnet6="fd00::/64", gateway6="fd01::1")}},
            "gateway fd01::1 is not a host address of fd00::/64",
        ),
        (
            {"networks": {"s_a": _net(subnet6="fd00::/121", gateway6="fd00::1")}},
            "IPv6 subnet fd00::/121 is smaller than 10.89.0.0/24",
        ),
        ({"networks": {"s_a": _net(subnet6="nope", gateway6="fd00::1")}}, "not an IPv6 network"),
        (
            {
                "networks": {
                    "s_a": _net(subnet6="fd00::/64", gateway6="fd00::1"),
                    "s_b": _net(
                        name="s_b",
                        bridge="pab2",
                        subnet="10.89.1.0/24",
                        gateway="10.89.1.1",
                        subnet6="fd00::/56",
                        gateway6="fd00::1",
                    ),
                }
            },
            "the subnets of s_a and s_b overlap",
        ),
    ],
)
def test_damaged_networks_json_is_an_error(tmp_path: Path, doc: Any, reason: str) -> None:
    nm = NetworkManager(tmp_path)
    path = _write(tmp_path / "networks" / "networks.json", json.dumps(doc))
    with pytest.raises(DamagedState) as exc:
        nm.list()
    assert _message(exc).startswith(f"{path} is damaged (")
    assert reason in _message(exc)


def test_a_peek_reuses_what_it_read_while_the_files_hold_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The looks of one observation read networks.json and ipam.json once each unless they
    changed (a no-op's list, faults and hosts read them several times); any change to
    either file, damage included, is read as it is."""
    nm = NetworkManager(tmp_path)
    syncs: list[bool] = []

    def no_server(dns_lock: Any, state: Any, sync_dns: bool, sync_proxy: bool) -> None:
        dns_lock.close()  # the DNS server and the proxy are left out: no process started
        syncs.append(sync_dns)

    monkeypatch.setattr(nm, "_syncs", no_server)
    doc = {"networks": {"s_a": _net(endpoints={"x": _ep("10.89.0.2")})}, "hosts_files": {}}
    _write(tmp_path / "networks" / "networks.json", json.dumps(doc))
    assert [n.containers for n in nm.list()] == [("x",)]  # the IPAM file made from it
    first = nm._peek()
    assert nm._peek() is first  # nothing changed: not parsed again
    assert [n.name for n in nm.list()] == ["s_a"]
    assert syncs == [True]  # the repair that wrote ipam.json, once
    doc["networks"]["s_a"]["endpoints"]["y"] = _ep("10.89.0.3")
    _write(tmp_path / "networks" / "networks.json", json.dumps(doc))
    assert [n.containers for n in nm.list()] == [("x", "y")]
    assert nm._peek() is not first
    _write(tmp_path / "networks" / "ipam.json", "garbage")
    with pytest.raises(DamagedState):
        nm.list()


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"networks": {"s_a": {"subnet": "garbage", "gateway": "10.89.0.1"}}}, "not a network"),
        ({"pool": "x", "networks": {}}, "pool: 'x' is not a network"),
        ({"networks": {"s_a": {"subnet": "10.89.0.0/24"}}}, "s_a.gateway: missing"),
        (
            {
                "networks": {
                    "s_a": {
                        "subnet": "10.89.0.0/24",
                        "gateway": "10.89.0.1",
                        "leases": {"x": "10.89.0.5", "y": "10.89.0.5"},
                    }
                }
            },
            "x and y both hold 10.89.0.5",
        ),
        ("garbage", "not JSON"),
    ],
)
def test_damaged_ipam_json_is_an_error(tmp_path: Path, doc: Any, reason: str) -> None:
    nm = NetworkManager(tmp_path)
    text = doc if isinstance(doc, str) else json.dumps(doc)
    path = _write(tmp_path / "networks" / "ipam.json", text)
    with pytest.raises(DamagedState) as exc:
        nm.get("s_a")
    assert str(path) in _message(exc) and reason in _message(exc)


def test_ipam_never_hands_out_an_address_live_in_the_kernel() -> None:
    ipam = Ipam()
    ipam.allocate_subnet("n")
    live = [IPv4Address("10.89.0.2"), IPv4Address("10.89.0.3")]
    assert ipam.lease("n", "a", live=live) == IPv4Address("10.89.0.4")
    with pytest.raises(Conflict, match="in use in the kernel"):
        ipam.lease("n", "b", "10.89.0.3", live=live)
    # a container keeps its own lease, whatever answers there
    assert ipam.lease("n", "a", live=[IPv4Address("10.89.0.4")]) == IPv4Address("10.89.0.4")


# ---------------------------------------------------------------------------------------------
# images/index.json: an error (which references name which image cannot be guessed)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        *GARBAGE,
        ('{"refs": {"a:1": "sha256:x"}, "images": {}}', "refs.a:1: no image sha256:x"),
        ('{"images": {"sha256:x": {"id": 3}}}', "images.sha256:x.id: a number"),
        ('{"images": {"sha256:x": {"id": "sha256:y"}}}', "the record is of sha256:y"),
        ('{"images": {"sha256:x": {"id": "sha256:x", "config": {"Env": 1}}}}', "Env"),
    ],
)
def test_damaged_image_index_is_an_error(tmp_path: Path, text: str, reason: str) -> None:
    store = ImageStore(str(tmp_path))
    path = _write(tmp_path / "images" / "index.json", text)
    for call in (store.list, lambda: store.resolve("busybox")):
        with pytest.raises(DamagedState) as exc:
            call()
        assert str(path) in _message(exc) and reason in _message(exc)


# ---------------------------------------------------------------------------------------------
# volumes/<name>/meta.json and health.json: recoverable


@pytest.mark.parametrize("text", ["[]", "{}", '{"labels": []}', "garbage"])
def test_damaged_volume_meta_shows_missing_and_create_repairs_it(tmp_path: Path, text: str) -> None:
    from pyapply.runtime.base import VolumeConfig

    rt = NativeRuntime(tmp_path)
    rt.create_volume(VolumeConfig(name="s_data", labels={"io.pyapply.stack": "s"}))
    (tmp_path / "volumes" / "s_data" / "_data" / "kept").write_text("data")
    _write(tmp_path / "volumes" / "s_data" / "meta.json", text)
    assert rt.get_volume("s_data") is None
    assert rt.list_volumes({}) == []
    rt.create_volume(VolumeConfig(name="s_data", labels={"io.pyapply.stack": "s"}))
    got = rt.get_volume("s_data")
    assert got is not None and dict(got.labels) == {"io.pyapply.stack": "s"}
    assert (tmp_path / "volumes" / "s_data" / "_data" / "kept").read_text() == "data"


@pytest.mark.parametrize("text", ["[]", "{}", '{"status": 1}', "garbage", ""])
def test_damaged_health_file_reads_as_no_result_yet(tmp_path: Path, text: str) -> None:
    _write(tmp_path / "health.json", text)
    assert read_document(tmp_path) is None
    assert read_status(tmp_path) is None
    _write(tmp_path / "health.json", '{"status": "healthy", "failing_streak": 0, "log": []}')
    assert read_status(tmp_path) == "healthy"


def test_a_health_result_landing_during_the_removal_is_removed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper writes health.json after checking the container runs; a removal that began
    in between meets it as a directory that is not empty, and deletes again."""
    import errno

    from pyapply.runtime.native import containers as cmod
    from pyapply.runtime.statefs import rmtree as real

    cdir = tmp_path / "c1"
    cdir.mkdir()
    (cdir / "config.json").write_text("{}")
    calls = []

    def landing_once(path: Any) -> None:
        calls.append(Path(path))
        real(path)
        if len(calls) == 1:  # the keeper's write lands right after the first pass
            cdir.mkdir(exist_ok=True)
            (cdir / "health.json").write_text("{}")
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(cdir))

    monkeypatch.setattr(cmod, "rmtree", landing_once)
    cmod._delete_settled(cdir)
    assert not cdir.exists() and len(calls) == 2


def test_a_deferred_sync_runs_on_after_the_transaction_and_settle_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_locked(defer_sync=True)` (a create's attach) returns before the DNS sync ends;
    `settle` waits for it and raises what it raised; a later transaction's sync waits for
    the DNS lock, so the syncs run in the order of the saves."""
    import threading
    import time

    from pyapply.runtime.base import PermanentError

    nm = NetworkManager(tmp_path)
    release = threading.Event()
    tags: dict[int, str] = {}
    order: list[str] = []

    def sync(st: Any) -> None:
        tag = tags[id(st)]
        if tag == "first":
            release.wait(10)
        order.append(tag)
        if tag == "first":
            raise PermanentError("no DNS server")

    def transaction(tag: str, defer: bool) -> None:
        with nm._locked(defer_sync=defer) as st:
            tags[id(st)] = tag
            st.dns_due = True  # a sync is due, as after an attach

    monkeypatch.setattr(nm, "_sync_dns", sync)
    monkeypatch.setattr(nm, "_sync_proxy", lambda st: None)
    transaction("first", True)
    assert order == []  # the transaction is over; its sync still runs
    later = threading.Thread(target=transaction, args=("second", False))
    later.start()
    time.sleep(0.2)
    assert order == []  # the second sync waits for the first's DNS lock
    release.set()
    with pytest.raises(PermanentError, match="no DNS server"):
        nm.settle()
    later.join(10)
    assert order == ["first", "second"]
    nm.settle()  # nothing left


# ---------------------------------------------------------------------------------------------
# creates overlap: the containers dir's lock is held only while a name is claimed


def test_a_create_does_not_wait_for_another_ones_slow_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's create is held inside its overlay mount; B's whole create runs meanwhile. While
    A is half made, its dir (no state.json yet) reads as no container, not as a damaged
    one, and A's start waits for it (the dir's lock)."""
    import threading

    from pyapply.runtime.base import ContainerConfig
    from pyapply.runtime.native import containers, rootfs

    cm = ContainerManager(tmp_path / "root")
    layer = tmp_path / "layer"
    layer.mkdir()
    inside, release = threading.Event(), threading.Event()

    def mount(layers: Any, upper: Path, work: Path, target: Path) -> None:
        for d in (upper, work, target):
            Path(d).mkdir(exist_ok=True)
        if Path(target).parent.name == "a":
            inside.set()
            assert release.wait(20)

    monkeypatch.setattr(rootfs, "mount_overlay", mount)
    monkeypatch.setattr(containers, "host_nameservers", lambda: ["127.0.0.53"])
    made: dict[str, str] = {}
    errors: list[BaseException] = []

    def create(name: str) -> None:
        try:
            config = ContainerConfig(name=name, image="img:1", command=("sleep", "1"))
            made[name] = cm.create(config, [layer])
        except BaseException as e:
            errors.append(e)

    a = threading.Thread(target=create, args=("a",))
    a.start()
    try:
        assert inside.wait(20)
        create("b")  # in this thread, while a's create holds its place
        assert not errors, errors
        assert "b" in made and "a" not in made
        assert (tmp_path / "root/containers/a").is_dir()
        assert cm.state("a") is None  # being made: not a damaged container
        assert containers._lock_held(tmp_path / "root/containers/a")
    finally:
        release.set()
        a.join(20)
    assert not errors, errors
    assert cm.state("a") is not None and made["a"] != made["b"]
    assert not containers._lock_held(tmp_path / "root/containers/a")
