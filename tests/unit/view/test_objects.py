"""The `pyapply get` views (`view.objects`): the JSON document and the text table."""

from __future__ import annotations

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import Observed
from pyapply.reconciler.view.objects import stack_doc, stack_lines
from pyapply.runtime.base import ContainerState, NetworkState, PortBinding, VolumeState


def test_a_stack_as_document_and_table() -> None:
    labels = {identity.SERVICE: "web", identity.REPLICA: "1", identity.REVISION: "r1"}
    observed = Observed(
        containers=(
            ContainerState(
                "c2", "st-web-1", "img:1", "sha256:i", labels, "running",
                ports=(PortBinding(80, "tcp", "127.0.0.1", 8080), PortBinding(53, "udp")),
            ),
            ContainerState("c1", "st-job-1", "img:1", "sha256:i", {}, "exited", exit_code=3),
            ContainerState("c3", "st-try-1", "img:1", "sha256:i", {}, "exited", exit_code=1,
                           restart_count=2, restart_gave_up=True),
            ContainerState("c4", "st-up-1", "img:1", "sha256:i", {}, "running", restart_count=1),
        ),
        networks=(NetworkState("n1", "st_default", "bridge", True, {}),),
        volumes=(VolumeState("st_data", "local", {}),),
    )  # fmt: skip
    doc = stack_doc("st", observed)
    names = [c["name"] for c in doc["containers"]]
    assert names == ["st-job-1", "st-try-1", "st-up-1", "st-web-1"]
    web = doc["containers"][3]
    assert web["ports"] == ["127.0.0.1:8080:80/tcp", "53/udp"]
    assert (web["service"], web["replica"], web["revision"]) == ("web", "1", "r1")
    assert doc["containers"][0]["exit_code"] == 3 and web["exit_code"] is None
    assert (doc["containers"][1]["restarts"], doc["containers"][1]["gave_up"]) == (2, True)
    assert (web["restarts"], web["gave_up"]) == (0, False)
    assert doc["networks"] == [{"name": "st_default", "driver": "bridge", "internal": True}]
    assert stack_lines(doc) == [
        "stack st",
        "  NAME      SERVICE  STATE                                 HEALTH  IMAGE  PORTS",
        "  st-job-1           exited (3)                            -       img:1",
        "  st-try-1           exited (1), gave up after 2 restarts  -       img:1",
        "  st-up-1            running, 1 restart                    -       img:1",
        "  st-web-1  web      running                               -       img:1  "
        "127.0.0.1:8080:80/tcp, 53/udp",
        "  network st_default (bridge, internal)",
        "  volume st_data",
    ]
