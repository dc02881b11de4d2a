"""engine.swarm.apply_all_swarm, the agent's pass on a swarm, against an in-memory swarm:
stacks applied in order (an unprepared one fails in its turn), a dry run changes nothing, a
second pass is a no-op, a gone stack is taken down, and a stop is seen between stacks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import msgspec
import pytest

from pyapply.reconciler.core.model import ServiceSpec, Stack
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.swarm import SwarmDesired, desired_swarm
from pyapply.reconciler.engine.apply import Hooks, Unprepared
from pyapply.reconciler.engine.reconcile import ApplyOptions, PassError, StackResult
from pyapply.reconciler.engine.swarm import apply_all_swarm
from pyapply.runtime.base import VolumeState
from pyapply.runtime.services import (
    ConvergeResult,
    NodeState,
    OverlayNetworkConfig,
    OverlayNetworkState,
    ServiceConfig,
    ServiceEvent,
    ServiceLogLine,
    ServiceRuntime,
    ServiceState,
    SwarmObjectConfig,
    SwarmObjectKind,
    SwarmObjectState,
    TaskState,
)


def _match(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(k in have and (v == "" or have[k] == v) for k, v in want.items())


class FakeSwarm:
    """Services that converge at once; networks and objects kept by name; calls recorded."""

    name = "swarm"

    def __init__(self) -> None:
        self.services: dict[str, ServiceState] = {}
        self.networks: dict[str, OverlayNetworkState] = {}
        self.objects: dict[str, SwarmObjectState] = {}
        self.calls: list[str] = []

    def list_services(self, labels: Mapping[str, str]) -> list[ServiceState]:
        return [s for s in self.services.values() if _match(s.labels, labels)]

    def get_service(self, name: str) -> ServiceState | None:
        return self.services.get(name)

    def create_service(self, config: ServiceConfig) -> str:
        self.calls.append(f"create {config.name}")
        n = config.replicas
        self.services[config.name] = ServiceState(
            "id-" + config.name, config.name, 1, config, config.labels, n, n
        )
        return "id-" + config.name

    def update_service(self, name: str, config: ServiceConfig, version: int) -> None:
        self.calls.append(f"update {name}")
        old = self.services[name]
        self.services[name] = msgspec.structs.replace(
            old, spec=config, labels=config.labels, version=version + 1
        )

    def remove_service(self, name: str) -> None:
        self.calls.append(f"remove {name}")
        self.services.pop(name, None)

    def pin_image(self, ref: str) -> str:
        return ref + "@sha256:" + "b" * 64

    def service_tasks(self, name: str) -> list[TaskState]:
        return []

    def service_logs(
        self, name: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[ServiceLogLine]:
        self.calls.append(f"logs {name}")
        return iter(())

    def redeploy_service(self, name: str) -> None:
        self.calls.append(f"redeploy {name}")

    def rollback_service(self, name: str) -> None:
        self.calls.append(f"rollback {name}")

    def events(self, labels: Mapping[str, str]) -> Iterator[ServiceEvent]:
        return iter(())

    def wait_converged(self, name: str, timeout_s: float) -> ConvergeResult:
        self.calls.append(f"wait {name}")
        return ConvergeResult(name, "converged", "", 0.0, 1, 1)

    def list_nodes(self) -> list[NodeState]:
        return []

    def create_object(self, kind: SwarmObjectKind, config: SwarmObjectConfig) -> str:
        self.objects[config.name] = SwarmObjectState(kind, "o", config.name, config.labels, 1)
        return "o"

    def list_objects(
        self, kind: SwarmObjectKind, labels: Mapping[str, str]
    ) -> list[SwarmObjectState]:
        return [o for o in self.objects.values() if o.kind == kind and _match(o.labels, labels)]

    def remove_object(self, kind: SwarmObjectKind, name: str) -> None:
        self.objects.pop(name, None)

    def list_node_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        return []

    def remove_node_volume(self, name: str) -> None:
        raise AssertionError("no volumes here")

    def create_overlay_network(self, config: OverlayNetworkConfig) -> str:
        self.calls.append(f"network {config.name}")
        self.networks[config.name] = OverlayNetworkState(
            "n", config.name, "overlay", "swarm", config.attachable, config.internal, config.labels
        )
        return "n"

    def list_overlay_networks(self, labels: Mapping[str, str]) -> list[OverlayNetworkState]:
        return [n for n in self.networks.values() if _match(n.labels, labels)]

    def remove_overlay_network(self, name: str) -> None:
        self.calls.append(f"remove-network {name}")
        self.networks.pop(name, None)

    def close(self) -> None:
        pass


def stack(name: str, replicas: int = 1) -> SwarmDesired:
    st = Stack(name=name, services=(ServiceSpec(name="web", image="r/x:1", replicas=replicas),))
    return desired_swarm(st, revision="r1", file_contents={}, images={"r/x:1": "r/x:1@d"})


def test_the_protocol_is_implemented() -> None:
    assert isinstance(FakeSwarm(), ServiceRuntime)


def test_apply_noop_dry_run_and_removal() -> None:
    rt = FakeSwarm()
    seen: list[StackResult] = []
    plans: list[Plan] = []

    def on_plan(plan: Plan) -> None:
        plans.append(plan)

    hooks = Hooks(on_result=seen.append, on_plan=on_plan)
    done = apply_all_swarm(rt, [stack("a"), stack("b")], ApplyOptions(), hooks=hooks)
    assert [d.stack for d in done.applied] == ["a", "b"]
    assert [r.stack for r in seen] == ["a", "b"] and all(r.ok for r in seen)
    assert rt.calls == ["create a_web", "wait a_web", "create b_web", "wait b_web"]
    assert [p.stack for p in plans] == ["a", "b"]

    rt.calls.clear()
    again = apply_all_swarm(rt, [stack("a"), stack("b")], ApplyOptions())
    assert rt.calls == [] and all(r.plan.empty and r.outcome is None for r in again.results)

    dry = apply_all_swarm(rt, [stack("a", replicas=3)], ApplyOptions(dry_run=True))
    assert rt.calls == [] and not dry.results[0].plan.empty

    gone = apply_all_swarm(rt, [stack("a")], ApplyOptions(), remove=["b"])
    assert gone.removed == ["b"]
    assert rt.calls == ["remove b_web"]
    assert sorted(rt.services) == ["a_web"]


def test_an_unprepared_stack_fails_in_its_turn_and_a_stop_between_stacks() -> None:
    rt = FakeSwarm()
    bad = Unprepared("b", PassError("secret pw: cannot read ./pw.txt"))
    with pytest.raises(PassError, match="cannot read"):
        apply_all_swarm(rt, [stack("a"), bad, stack("c")], ApplyOptions())
    assert sorted(rt.services) == ["a_web"]  # the stack before it was applied

    stops = iter([False, True])
    done = apply_all_swarm(
        rt, [stack("a"), stack("c")], ApplyOptions(), hooks=Hooks(stopping=lambda: next(stops))
    )
    assert done.stopped_before == "c" and sorted(rt.services) == ["a_web"]
