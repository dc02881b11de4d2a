"""reconciler.core.swarm: named volumes (labelled per node through the service spec, removed
by `down --volumes` only, after the services) and attachable overlay networks."""

from __future__ import annotations

import msgspec
from test_swarm_plan import IMAGE, PINNED, desired, observed_from, stack

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import Mount, NetworkSpec, Stack, VolumeSpec
from pyapply.reconciler.core.swarm import actions_text, build_plan, desired_swarm, teardown_swarm
from pyapply.runtime.base import VolumeState
from pyapply.runtime.services import STACK_NAMESPACE_LABEL


def with_volume() -> Stack:
    st = stack()
    web = msgspec.structs.replace(st.services[0], mounts=(Mount("volume", "/data", "data"),))
    return msgspec.structs.replace(
        st,
        services=(web,),
        volumes=(VolumeSpec("data", labels=(("tier", "db"),)),),
        networks=(NetworkSpec("back", driver="overlay", attachable=True),),
    )


def test_volume_labels_and_attachable() -> None:
    st = with_volume()
    contents = {("config", "conf"): b"level=1", ("secret", "pw"): b"hunter2"}
    d = desired_swarm(st, revision="r1", file_contents=contents, images={IMAGE: PINNED})
    [svc] = d.services
    assert [m.source for m in svc.config.mounts] == ["s_data"]
    assert svc.config.volume_labels == (
        (
            "s_data",
            (
                (STACK_NAMESPACE_LABEL, "s"),
                (identity.STACK, "s"),
                (identity.VOLUME, "data"),
                ("tier", "db"),
            ),
        ),
    )
    [net] = d.networks
    assert net.attachable
    # a different attachable is a different network (its spec hash)
    plain = desired(stack()).networks[0]
    assert plain.labels[identity.SPEC_HASH] != net.labels[identity.SPEC_HASH]


def test_down_removes_volumes_only_when_observed_and_after_the_services() -> None:
    d = desired(stack())
    obs = observed_from(d)
    assert "remove_volume" not in actions_text(build_plan(None, "s", teardown_swarm(obs)))
    vol = VolumeState("s_data", "local", {identity.STACK: "s"})
    with_vol = msgspec.structs.replace(obs, volumes=(vol,))
    text = actions_text(build_plan(None, "s", teardown_swarm(with_vol)))
    assert text.splitlines()[0] == "#1 remove_service s_web (down) after -"
    assert text.splitlines()[-1] == "#5 remove_volume s_data (down (--volumes)) after #1"
