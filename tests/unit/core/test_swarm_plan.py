"""reconciler.core.swarm: Stack -> swarm objects, the diff against a swarm, the plan (golden
text: one action a line, `#n op target (reason) after #deps`)."""

from __future__ import annotations

import msgspec
import pytest

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import (
    ConfigSpec,
    Deploy,
    FileRef,
    NetworkSpec,
    Port,
    RollPolicy,
    SecretSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
)
from pyapply.reconciler.core.swarm import (
    SwarmDesired,
    SwarmObserved,
    actions_text,
    build_plan,
    desired_swarm,
    diff_swarm,
    object_name,
    teardown_swarm,
)
from pyapply.runtime.services import (
    STACK_NAMESPACE_LABEL,
    OverlayNetworkState,
    ServiceState,
    SwarmObjectState,
    UpdateStatus,
)

IMAGE = "reg:5000/app:1"
PINNED = IMAGE + "@sha256:" + "a" * 64


def stack(conf: str = "level=1", replicas: int = 2) -> Stack:
    web = ServiceSpec(
        name="web",
        image=IMAGE,
        environment=(("MODE", "one"),),
        ports=(Port(8080, 80, mode="host"),),
        networks=(ServiceNetwork("back"),),
        replicas=replicas,
        configs=(FileRef("conf", "/etc/app.conf"),),
        secrets=(FileRef("pw", "/run/secrets/pw"),),
        deploy=Deploy(
            endpoint_mode="dnsrr",
            constraints=("node.role==manager",),
            update=RollPolicy(failure_action="rollback", monitor=2.0),
        ),
    )
    return Stack(
        name="s",
        services=(web,),
        networks=(NetworkSpec("back", driver="overlay"),),
        configs=(ConfigSpec("conf", content=conf),),
        secrets=(SecretSpec("pw", content="hunter2"),),
    )


def desired(st: Stack) -> SwarmDesired:
    contents = {("config", "conf"): b"", ("secret", "pw"): b"hunter2"}
    contents[("config", "conf")] = (st.configs[0].content or "").encode()
    return desired_swarm(st, revision="r1", file_contents=contents, images={IMAGE: PINNED})


def observed_from(d: SwarmDesired, **service_fields: object) -> SwarmObserved:
    """The swarm as `d` left it (every object there, every task running)."""
    services = []
    for ds in d.services:
        spec = msgspec.structs.replace(ds.config, **service_fields)  # type: ignore[arg-type]
        services.append(
            ServiceState(
                id="id-" + ds.key,
                name=ds.config.name,
                version=7,
                spec=spec,
                labels=ds.config.labels,
                desired_tasks=ds.config.replicas,
                running_tasks=ds.config.replicas,
            )
        )
    nets = tuple(
        OverlayNetworkState("n", n.name, "overlay", "swarm", False, False, n.labels)
        for n in d.networks
    )
    objs = {
        kind: tuple(
            SwarmObjectState(kind, "o", o.config.name, o.config.labels, 1)
            for o in d.objects
            if o.kind == kind
        )
        for kind in ("config", "secret")
    }
    return SwarmObserved(tuple(services), nets, objs["config"], objs["secret"])


def plan_of(d: SwarmDesired, obs: SwarmObserved) -> str:
    versions = {s.name: s.version for s in obs.services}
    return actions_text(build_plan(d, d.stack, diff_swarm(d, obs), versions))


def test_desired_objects_are_named_and_labelled_as_docker_stack_does() -> None:
    d = desired(stack())
    [svc] = d.services
    c = svc.config
    assert c.name == "s_web" and c.image == PINNED and c.replicas == 2
    assert c.labels[STACK_NAMESPACE_LABEL] == "s" and c.labels[identity.STACK] == "s"
    assert c.labels[identity.SERVICE] == "web" and c.labels[identity.SPEC_HASH] == svc.spec_hash
    assert c.container_labels[STACK_NAMESPACE_LABEL] == "s"
    assert [n.network for n in c.networks] == ["s_back"] and c.networks[0].aliases == ("web",)
    assert c.endpoint_mode == "dnsrr" and c.placement.constraints == ("node.role==manager",)
    assert c.update_config.failure_action == "rollback" and c.update_config.monitor_s == 2.0
    assert [(p.target, p.published, p.mode) for p in c.ports] == [(8080, 80, "host")]
    conf = object_name("s", "conf", b"level=1")
    assert [r.name for r in c.configs] == [conf] and c.secrets[0].target == "pw"
    assert [n.name for n in d.networks] == ["s_back"]
    assert {o.config.name for o in d.objects} == {conf, object_name("s", "pw", b"hunter2")}


def test_the_same_stack_twice_is_no_change() -> None:
    d = desired(stack())
    result = diff_swarm(d, observed_from(d))
    assert result.changes == () and result.errors == ()
    # a new revision alone updates nothing
    again = desired_swarm(
        stack(),
        revision="r2",
        file_contents={("config", "conf"): b"level=1", ("secret", "pw"): b"hunter2"},
        images={IMAGE: PINNED},
    )
    assert diff_swarm(again, observed_from(d)).changes == ()


def test_create_golden() -> None:
    d = desired(stack())
    conf, pw = object_name("s", "conf", b"level=1"), object_name("s", "pw", b"hunter2")
    assert plan_of(d, SwarmObserved()).splitlines() == [
        "#1 create_overlay s_back (not found) after -",
        f"#2 create_object {conf} (config conf: not found) after -",
        f"#3 create_object {pw} (secret pw: not found) after -",
        "#4 create_service s_web (not found) after #1,#2,#3",
        "#5 wait_service s_web (not found) after #4",
    ]


@pytest.mark.parametrize(
    ("case", "fields", "reason", "shown"),
    [
        (
            "replicas by hand",
            {"replicas": 5},
            "changed out of band",
            [("replicas", 5, 2)],
        ),
        (
            "env added by hand",
            {"env": ("EXTRA=1", "MODE=one")},
            "changed out of band",
            [("env.EXTRA", "1", None)],
        ),
        (
            "update policy by hand",
            {
                "update_config": msgspec.structs.replace(
                    desired(stack()).services[0].config.update_config, parallelism=3
                )
            },
            "changed out of band",
            [("update_config.parallelism", 3, 1)],
        ),
    ],
)
def test_out_of_band_field_changes(
    case: str, fields: dict[str, object], reason: str, shown: list[tuple[str, object, object]]
) -> None:
    d = desired(stack())
    [ch] = diff_swarm(d, observed_from(d, **fields)).changes
    assert (ch.kind, ch.object, ch.name, ch.reason) == ("update", "service", "s_web", reason), case
    assert [(f.field, f.old, f.new) for f in ch.fields] == shown, case


def test_field_change_golden() -> None:
    before = desired(stack(replicas=2))
    after = desired(stack(replicas=3))
    result = diff_swarm(after, observed_from(before))
    [ch] = result.changes
    assert ch.reason == "the manifest changed"
    assert [(f.field, f.old, f.new) for f in ch.fields] == [
        ("labels.io.pyapply.spec-hash", before.services[0].spec_hash, after.services[0].spec_hash),
        ("replicas", 2, 3),
    ]
    plan = build_plan(after, "s", result, {"s_web": 7})
    assert actions_text(plan).splitlines() == [
        "#1 update_service s_web (the manifest changed) after -",
        "#2 wait_service s_web (the manifest changed) after #1",
    ]
    assert plan.actions[0].version == 7


def test_config_rotation_golden() -> None:
    before = desired(stack(conf="level=1"))
    after = desired(stack(conf="level=2"))
    old, new = object_name("s", "conf", b"level=1"), object_name("s", "conf", b"level=2")
    assert old != new
    assert plan_of(after, observed_from(before)).splitlines() == [
        f"#1 create_object {new} (config conf: not found) after -",
        "#2 update_service s_web (the manifest changed) after #1",
        "#3 wait_service s_web (the manifest changed) after #2",
        f"#4 remove_object {old} (replaced or no longer declared) after #3",
    ]


def test_prune_golden() -> None:
    d = desired(stack())
    obs = observed_from(d)
    gone = SwarmDesired("s", "r1", (), (), ())
    assert plan_of(gone, obs).splitlines() == [
        "#1 remove_service s_web (not in the manifests) after -",
        f"#2 remove_object {object_name('s', 'conf', b'level=1')} (replaced or no longer "
        "declared) after #1",
        f"#3 remove_object {object_name('s', 'pw', b'hunter2')} (replaced or no longer "
        "declared) after #1",
        "#4 remove_overlay s_back (not in the manifests) after #1",
    ]
    down = build_plan(None, "s", teardown_swarm(obs))
    assert [a.op for a in down.actions] == [
        "remove_service",
        "remove_object",
        "remove_object",
        "remove_overlay",
    ]


@pytest.mark.parametrize(
    ("running", "update", "reason"),
    [
        (1, None, "1/2 tasks running"),
        (2, UpdateStatus("paused", "task failed"), "its update is paused: task failed"),
        (2, UpdateStatus("updating"), None),
        (2, UpdateStatus("completed"), None),
    ],
)
def test_runtime_drift(running: int, update: UpdateStatus | None, reason: str | None) -> None:
    d = desired(stack())
    obs = observed_from(d)
    svc = msgspec.structs.replace(obs.services[0], running_tasks=running, update=update)
    changes = diff_swarm(d, msgspec.structs.replace(obs, services=(svc,))).changes
    if reason is None:
        assert changes == ()
    else:
        [ch] = changes
        assert (ch.kind, ch.reason) == ("repair", reason)


def test_a_rolled_back_update_is_said() -> None:
    before, after = desired(stack(replicas=2)), desired(stack(replicas=3))
    obs = observed_from(before)
    svc = msgspec.structs.replace(
        obs.services[0], update=UpdateStatus("rollback_completed", "update rolled back")
    )
    [ch] = diff_swarm(after, msgspec.structs.replace(obs, services=(svc,))).changes
    assert ch.reason == "the manifest changed; the last update was rolled back: update rolled back"


def test_a_changed_network_is_an_error_not_a_removal() -> None:
    d = desired(stack())
    obs = observed_from(d)
    net = msgspec.structs.replace(obs.networks[0], labels={identity.SPEC_HASH: "other"})
    result = diff_swarm(d, msgspec.structs.replace(obs, networks=(net,)))
    assert result.changes == ()
    assert result.errors and "cannot be changed in place" in result.errors[0]
