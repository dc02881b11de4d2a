"""The Docker Swarm driver: `runtime.services.ServiceRuntime` over a swarm manager's Engine API.

It talks to a manager's dockerd the way `runtime.docker` talks to a daemon, and reuses its
transport and error rules: reads over a UNIX socket go through `EngineHTTP` (the fast
keep-alive reader), everything else through the Docker SDK's low-level APIClient ($DOCKER_HOST
respected); every failure is translated once, at `_boundary`, by `runtime.docker.errors`,
plus the few answers only a swarm gives (an update out of sequence, a node that is not a
manager).

What it writes and reads back is decided by `runtime.swarm.spec` (ServiceConfig <->
ServiceSpec) and `runtime.swarm.observe` (states, convergence).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from pyapply.runtime.base import (
    Conflict,
    NotFound,
    PermanentError,
    RuntimeFailure,
    TransientError,
    VolumeState,
    same_owner,
)
from pyapply.runtime.docker.driver import sdk_client, unix_socket_path
from pyapply.runtime.docker.engine import EngineError, EngineHTTP
from pyapply.runtime.docker.errors import translatable_errors, translate
from pyapply.runtime.docker.normalise import label_filters, labels_match
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
from pyapply.runtime.swarm.observe import (
    convergence,
    node_state,
    object_state,
    overlay_network_state,
    service_state,
    task_state,
)
from pyapply.runtime.swarm.spec import service_spec

__all__ = ["SwarmRuntime"]

JSON = Mapping[str, Any]
_DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_POLL_S = 0.5
# how long `remove_overlay_network` waits for the manager to drop a removed network
_NETWORK_GONE_S = 20.0
# How long a global service may have no task before that means "no node is eligible" (the
# orchestrator makes a new service's tasks within milliseconds).
_GLOBAL_GRACE_S = 3.0
_OBJECT_PATHS = {"config": "/configs", "secret": "/secrets"}
# Container event attributes that are not labels.
_CONTAINER_ATTRS = frozenset(("name", "image", "exitCode", "signal", "execID", "container"))


class SwarmRuntime:
    """A `ServiceRuntime` driving a swarm manager. `base_url` defaults to $DOCKER_HOST (with
    $DOCKER_TLS_VERIFY / $DOCKER_CERT_PATH), else the local UNIX socket; the connection is
    made on first use (an unreachable daemon is `Unavailable` from the first call)."""

    name = "swarm"

    def __init__(self, base_url: str | None = None, timeout: float = 60) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._daemon = base_url or os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET
        self._socket_path = unix_socket_path(self._daemon)
        self._client: Any = None
        self._engine: EngineHTTP | None = None
        self._lock = threading.Lock()

    # -----------------------------------------------------------------------------------------
    # The boundary

    def _api(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = sdk_client(self._base_url, self._timeout)
            return self._client.api

    @contextmanager
    def _boundary(self, action: str) -> Iterator[None]:
        try:
            yield
        except RuntimeFailure as e:
            failure = _swarm_failure(e, action)
            if failure is e:
                raise
            raise failure from e
        except Exception as e:
            if not isinstance(e, translatable_errors()):
                raise
            raise _swarm_failure(translate(e, action, self._daemon), action) from e

    def _get(self, action: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        with self._boundary(action):
            if self._socket_path is not None:
                with self._lock:
                    if self._engine is None:
                        self._engine = EngineHTTP(self._socket_path, timeout=self._timeout)
                    engine = self._engine
                return engine.get(path, params)
            api = self._api()
            return api._result(api._get(api._url(path), params=params), json=True)

    def _get_many(self, requests: Sequence[tuple[str, str, Mapping[str, str] | None]]) -> list[Any]:
        """GET each (action, path, params) and return the answers in order; the first
        failure is raised, translated for its action. Over a UNIX socket the requests are
        pipelined on one kept-alive connection (one round trip instead of one each, which
        is most of what a no-op apply waits for); otherwise they are made in turn."""
        if self._socket_path is None or len(requests) < 2:
            return [self._get(action, path, params) for action, path, params in requests]
        with self._lock:
            if self._engine is None:
                self._engine = EngineHTTP(self._socket_path, timeout=self._timeout)
            engine = self._engine
        paths = [path + ("?" + urllib.parse.urlencode(p) if p else "") for _, path, p in requests]
        with self._boundary(requests[0][0]):
            answers = engine.get_all(paths)
        out: list[Any] = []
        for (action, _, _), answer in zip(requests, answers, strict=False):
            if isinstance(answer, EngineError):  # answers end at a failure
                raise _swarm_failure(translate(answer, action, self._daemon), action) from answer
            out.append(answer)
        return out

    def _post(
        self, action: str, path: str, body: JSON, params: Mapping[str, str] | None = None
    ) -> Any:
        with self._boundary(action):
            api = self._api()
            answer = api._post_json(api._url(path), data=dict(body), params=params)
            return api._result(answer, json=True)

    def _delete(self, action: str, path: str) -> None:
        """DELETE; an object already gone is success."""
        with suppress(NotFound), self._boundary(action):
            api = self._api()
            api._raise_for_status(api._delete(api._url(path)))

    # -----------------------------------------------------------------------------------------
    # Lookups

    def _service_json(self, name: str) -> JSON | None:
        try:
            return dict(self._get(f"inspect service {name}", f"/services/{_q(name)}"))
        except NotFound:
            return None

    def _tasks_json(self, service_ids: Sequence[str]) -> list[JSON]:
        if not service_ids:
            return []
        filters = json.dumps({"service": list(service_ids)})
        return list(self._get("list tasks", "/tasks", {"filters": filters}) or [])

    def _hostnames(self) -> dict[str, str]:
        return {n.id: n.hostname for n in self.list_nodes()}

    def _network_names(self) -> dict[str, str]:
        nets = self._get("list networks", "/networks") or []
        return {str(n.get("Id")): str(n.get("Name")) for n in nets}

    def _object_ids(self, kind: SwarmObjectKind, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        filters = json.dumps({"name": list(names)})
        found = self._get(f"list {kind}s", _OBJECT_PATHS[kind], {"filters": filters}) or []
        wanted = set(names)
        out = {}
        for info in found:  # the name filter matches prefixes
            name = str((info.get("Spec") or {}).get("Name"))
            if name in wanted:
                out[name] = str(info.get("ID"))
        return out

    def _spec(self, config: ServiceConfig) -> dict[str, Any]:
        config_ids = self._object_ids("config", [r.name for r in config.configs])
        secret_ids = self._object_ids("secret", [r.name for r in config.secrets])
        for kind, refs, ids in (
            ("config", config.configs, config_ids),
            ("secret", config.secrets, secret_ids),
        ):
            missing = sorted({r.name for r in refs} - set(ids))
            if missing:
                raise NotFound(
                    f"swarm: service {config.name} refers to {kind} {', '.join(missing)}, "
                    "which does not exist"
                )
        return service_spec(config, config_ids=config_ids, secret_ids=secret_ids)

    # -----------------------------------------------------------------------------------------
    # Services

    def list_services(self, labels: Mapping[str, str]) -> list[ServiceState]:
        params = {"status": "true"}
        filters = label_filters(labels)
        if filters:
            params["filters"] = json.dumps(filters)
        services = list(self._get("list services", "/services", params) or [])
        if not services:
            return []
        # the tasks, the network names and the node names in one pipelined round trip
        ids = [str(s.get("ID")) for s in services]
        tasks, nets, nodes = self._get_many(
            [
                ("list tasks", "/tasks", {"filters": json.dumps({"service": ids})}),
                ("list networks", "/networks", None),
                ("list nodes", "/nodes", None),
            ]
        )
        by_service: dict[str, list[JSON]] = {}
        for t in tasks or []:
            by_service.setdefault(str(t.get("ServiceID")), []).append(t)
        networks = {str(n.get("Id")): str(n.get("Name")) for n in nets or []}
        hostnames = {n.id: n.hostname for n in (node_state(n) for n in nodes or [])}
        return sorted(
            (
                service_state(
                    s,
                    by_service.get(str(s.get("ID")), []),
                    network_names=networks,
                    hostnames=hostnames,
                )
                for s in services
            ),
            key=lambda s: s.name,
        )

    def get_service(self, name: str) -> ServiceState | None:
        info = self._service_json(name)
        if info is None:
            return None
        tasks = self._tasks_json([str(info.get("ID"))])
        return service_state(
            info, tasks, network_names=self._network_names(), hostnames=self._hostnames()
        )

    def create_service(self, config: ServiceConfig) -> str:
        spec = self._spec(config)
        try:
            answer = self._post(f"create service {config.name}", "/services/create", spec)
        except Conflict:
            info = self._service_json(config.name)
            if info is None:
                raise
            have = (info.get("Spec") or {}).get("Labels")
            if not same_owner(config.labels, have):
                raise Conflict(
                    f"swarm: cannot create service {config.name}: a service of that name "
                    "exists and is not this one (other labels)"
                ) from None
            return str(info.get("ID"))
        return str(answer.get("ID"))

    def update_service(self, name: str, config: ServiceConfig, version: int) -> None:
        current = self._service_json(name)
        if current is None:
            raise NotFound(f"swarm: cannot update service {name}: it does not exist")
        spec = self._spec(config)
        # ForceUpdate is the swarm's redeploy counter: carried over, since a different value
        # (even a lower one) replaces every task.
        force = ((current.get("Spec") or {}).get("TaskTemplate") or {}).get("ForceUpdate")
        if force:
            spec["TaskTemplate"]["ForceUpdate"] = force
        self._post(
            f"update service {name}",
            f"/services/{_q(str(current.get('ID')))}/update",
            spec,
            {"version": str(version)},
        )

    def remove_service(self, name: str) -> None:
        self._delete(f"remove service {name}", f"/services/{_q(name)}")

    def pin_image(self, ref: str) -> str:
        if "@sha256:" in ref:
            return ref
        # The manager's dockerd asks the registry (what `docker service create` does to pin).
        info = self._get(
            f"resolve image {ref}", f"/distribution/{urllib.parse.quote(ref, safe='/:')}/json"
        )
        digest = str((info.get("Descriptor") or {}).get("digest") or "")
        if not digest.startswith("sha256:"):
            raise PermanentError(f"swarm: cannot resolve image {ref}: the registry gave no digest")
        return f"{ref}@{digest}"

    def service_tasks(self, name: str) -> list[TaskState]:
        info = self._service_json(name)
        if info is None:
            raise NotFound(f"swarm: cannot list the tasks of service {name}: it does not exist")
        template = (info.get("Spec") or {}).get("TaskTemplate")
        hostnames = self._hostnames()
        tasks = [task_state(t, template, hostnames) for t in self._tasks_json([str(info["ID"])])]
        return sorted(tasks, key=lambda t: (t.slot or 0, t.node, t.timestamp or ""))

    def service_logs(
        self, name: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[ServiceLogLine]:
        info = self._service_json(name)
        if info is None:
            raise NotFound(f"swarm: cannot read the logs of service {name}: it does not exist")
        action = f"read logs of service {name}"
        container = ((info.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec")
        tty = bool((container or {}).get("TTY"))
        params = {
            # details: each line starts with the task's ids, which is how a line is told
            # to be of this or that replica (what `docker service logs` does)
            "details": True,
            "follow": follow,
            "stdout": True,
            "stderr": True,
            "timestamps": False,
            "tail": "all" if tail is None else str(tail),
        }
        with self._boundary(action):
            api = self._api()
            # no read timeout while following: a quiet service is not a dead daemon
            answer = api._get(
                api._url("/services/{0}/logs", str(info.get("ID"))),
                params=params,
                stream=True,
                timeout=None if follow else self._timeout,
            )
            chunks = api._get_result_tty(True, answer, tty)
        return _log_lines(self._iterate(action, chunks))

    def _iterate(self, action: str, stream: Any) -> Iterator[Any]:
        """Iterate an SDK stream with errors translated, closing it however iteration ends."""
        try:
            with self._boundary(action):
                yield from stream
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                with suppress(*translatable_errors()):
                    close()

    def _update_raw(self, name: str, action: str, change: str, **params: str) -> None:
        """POST the service's current spec back with `params` (the Engine's way to ask for a
        rollback), after `change` edits it ("force": bump the redeploy counter)."""
        info = self._service_json(name)
        if info is None:
            raise NotFound(f"swarm: cannot {action}: service {name} does not exist")
        spec = dict(info.get("Spec") or {})
        if change == "force":
            template = dict(spec.get("TaskTemplate") or {})
            template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
            spec["TaskTemplate"] = template
        version = str(((info.get("Version") or {}).get("Index")) or 0)
        self._post(
            action,
            f"/services/{_q(str(info.get('ID')))}/update",
            spec,
            {"version": version, **params},
        )

    def redeploy_service(self, name: str) -> None:
        self._update_raw(name, f"redeploy service {name}", "force")

    def rollback_service(self, name: str) -> None:
        info = self._service_json(name)
        if info is not None and not info.get("PreviousSpec"):
            raise PermanentError(
                f"swarm: cannot roll back service {name}: it has no previous spec (it was "
                "never updated)"
            )
        self._update_raw(name, f"roll back service {name}", "", rollback="previous")

    def events(self, labels: Mapping[str, str]) -> Iterator[ServiceEvent]:
        """dockerd puts labels on container events only; a service's, network's, config's
        or secret's are looked up by id (once) and remembered, so that its removal is still
        told to be of the stack. The objects that exist when the stream opens are listed
        after subscribing, so nothing made in between is missed."""
        action = "watch swarm events"
        kinds = ["service", "container", "network", "config", "secret"]
        with self._boundary(action):
            api = self._api()
            stream = api.events(decode=True, filters={"type": kinds})
        try:
            known: dict[str, tuple[str, Mapping[str, str]]] = {}
            for svc in self._get("list services", "/services") or []:
                spec = svc.get("Spec") or {}
                known[str(svc.get("ID"))] = (str(spec.get("Name")), dict(spec.get("Labels") or {}))
            for n in self.list_overlay_networks({}):
                known[n.id] = (n.name, n.labels)
            for kind in ("config", "secret"):
                for o in self.list_objects(kind, {}):  # type: ignore[arg-type]
                    known[o.id] = (o.name, o.labels)
        except BaseException:
            with suppress(*translatable_errors()):
                stream.close()
            raise
        return self._events(self._iterate(action, stream), labels, known)

    def _events(
        self,
        raw_events: Iterator[Any],
        labels: Mapping[str, str],
        known: dict[str, tuple[str, Mapping[str, str]]],
    ) -> Iterator[ServiceEvent]:
        paths = {"service": "/services", "network": "/networks", **_OBJECT_PATHS}
        for raw in raw_events:
            if not isinstance(raw, dict):
                continue
            kind = str(raw.get("Type") or "")
            action = str(raw.get("Action") or "").split(":", 1)[0].strip()
            actor = raw.get("Actor") or {}
            attrs: dict[str, str] = dict(actor.get("Attributes") or {})
            oid = str(actor.get("ID") or "")
            if kind == "container":
                if action.startswith("exec_") or action in ("attach", "detach", "resize", "top"):
                    continue
                own = {k: v for k, v in attrs.items() if k not in _CONTAINER_ATTRS}
                # a task's container carries the swarm's labels, not its service's: those
                # are the service's, found by its id
                service = known.get(own.get("com.docker.swarm.service.id", ""))
                merged = {**(service[1] if service else {}), **own}
                if labels_match(merged, labels):
                    name = own.get("com.docker.swarm.task.name") or attrs.get("name", oid)
                    yield ServiceEvent("container", action, name, merged)
                continue
            if kind not in paths:
                continue
            if oid not in known and action != "remove":
                with suppress(RuntimeFailure):
                    info = self._get(f"inspect {kind} {oid}", f"{paths[kind]}/{_q(oid)}")
                    spec = info.get("Spec") or info  # networks have no Spec
                    known[oid] = (str(spec.get("Name")), dict(spec.get("Labels") or {}))
            name, have = known.get(oid, (attrs.get("name", oid), {}))
            if not labels_match(have, labels):
                continue
            detail = ""
            if "updatestate.new" in attrs:
                old = attrs.get("updatestate.old") or "-"
                detail = f"{old} -> {attrs['updatestate.new']}"
            elif "replicas.new" in attrs:
                detail = f"replicas {attrs.get('replicas.old') or '-'} -> {attrs['replicas.new']}"
            yield ServiceEvent(kind, action, name, have, detail)  # type: ignore[arg-type]

    def wait_converged(self, name: str, timeout_s: float) -> ConvergeResult:
        start = time.monotonic()
        deadline = start + timeout_s
        message, running, desired = "", 0, 0
        while True:
            info = self._service_json(name)
            elapsed = time.monotonic() - start
            if info is None:
                return ConvergeResult(name, "missing", "the service does not exist", elapsed)
            outcome, message, running, desired = convergence(
                info, self._tasks_json([str(info.get("ID"))])
            )
            if outcome is not None:
                return ConvergeResult(name, outcome, message, elapsed, running, desired)
            if message == "no task yet" and elapsed >= _GLOBAL_GRACE_S:
                # a global service still without a task: no node is eligible for it
                return ConvergeResult(name, "converged", "no eligible node", elapsed, 0, 0)
            if time.monotonic() >= deadline:
                return ConvergeResult(name, "timed_out", message, elapsed, running, desired)
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    # -----------------------------------------------------------------------------------------
    # Nodes

    def list_nodes(self) -> list[NodeState]:
        nodes = self._get("list nodes", "/nodes") or []
        return sorted((node_state(n) for n in nodes), key=lambda n: (n.hostname, n.id))

    # -----------------------------------------------------------------------------------------
    # Configs and secrets

    def create_object(self, kind: SwarmObjectKind, config: SwarmObjectConfig) -> str:
        body = {
            "Name": config.name,
            "Labels": dict(config.labels),
            "Data": base64.b64encode(config.data).decode("ascii"),
        }
        path = _OBJECT_PATHS[kind]
        try:
            answer = self._post(f"create {kind} {config.name}", f"{path}/create", body)
        except Conflict:
            found = [o for o in self.list_objects(kind, {}) if o.name == config.name]
            if not found:
                raise
            if not same_owner(config.labels, found[0].labels):
                raise Conflict(
                    f"swarm: cannot create {kind} {config.name}: one of that name exists and "
                    "is not this one (other labels)"
                ) from None
            return found[0].id
        return str(answer.get("ID"))

    def list_objects(
        self, kind: SwarmObjectKind, labels: Mapping[str, str]
    ) -> list[SwarmObjectState]:
        filters = label_filters(labels)
        params = {"filters": json.dumps(filters)} if filters else None
        found = self._get(f"list {kind}s", _OBJECT_PATHS[kind], params) or []
        return sorted((object_state(kind, o) for o in found), key=lambda o: o.name)

    def remove_object(self, kind: SwarmObjectKind, name: str) -> None:
        self._delete(f"remove {kind} {name}", f"{_OBJECT_PATHS[kind]}/{_q(name)}")

    # -----------------------------------------------------------------------------------------
    # Overlay networks

    def create_overlay_network(self, config: OverlayNetworkConfig) -> str:
        body: dict[str, Any] = {
            "Name": config.name,
            "Driver": config.driver,
            "Attachable": config.attachable,
            "Internal": config.internal,
            "Labels": dict(config.labels),
            "CheckDuplicate": True,
        }
        if config.subnet:
            pool = {"Subnet": config.subnet}
            if config.gateway:
                pool["Gateway"] = config.gateway
            body["IPAM"] = {"Driver": "default", "Config": [pool]}
        try:
            answer = self._post(f"create network {config.name}", "/networks/create", body)
        except Conflict:
            found = [n for n in self.list_overlay_networks({}) if n.name == config.name]
            if not found:
                raise
            if not same_owner(config.labels, found[0].labels):
                raise Conflict(
                    f"swarm: cannot create network {config.name}: one of that name exists "
                    "and is not this one (other labels)"
                ) from None
            return found[0].id
        return str(answer.get("Id"))

    def list_overlay_networks(self, labels: Mapping[str, str]) -> list[OverlayNetworkState]:
        filters: dict[str, list[str]] = {"scope": ["swarm"], **label_filters(labels)}
        found = self._get("list networks", "/networks", {"filters": json.dumps(filters)}) or []
        return sorted((overlay_network_state(n) for n in found), key=lambda n: n.name)

    def list_node_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        filters = label_filters(labels)
        params = {"filters": json.dumps(filters)} if filters else None
        found = (self._get("list volumes", "/volumes", params) or {}).get("Volumes") or []
        return sorted(
            (
                VolumeState(
                    name=str(v.get("Name") or ""),
                    driver=str(v.get("Driver") or ""),
                    labels=dict(v.get("Labels") or {}),
                    mountpoint=str(v.get("Mountpoint") or ""),
                )
                for v in found
            ),
            key=lambda v: v.name,
        )

    def remove_node_volume(self, name: str) -> None:
        try:
            self._delete(f"remove volume {name}", f"/volumes/{_q(name)}")
        except Conflict as e:
            # a removed service's containers let go of it a few seconds later: retry
            raise TransientError(e.message) from e

    def remove_overlay_network(self, name: str) -> None:
        try:
            self._delete(f"remove network {name}", f"/networks/{_q(name)}")
        except Conflict as e:
            # A removed service's tasks leave the network a few seconds later: retry.
            if "attached" in e.message or "active endpoints" in e.message:
                raise TransientError(e.message) from e
            raise
        # The manager drops it a moment after answering; until then it is still listed, and
        # an apply right after `down` would plan on it and fail on "network not found".
        deadline = time.monotonic() + _NETWORK_GONE_S
        while time.monotonic() < deadline:
            try:
                self._get(f"inspect network {name}", f"/networks/{_q(name)}")
            except NotFound:
                return
            time.sleep(_POLL_S)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        if client is not None:
            with suppress(*translatable_errors()):
                client.close()


def _log_lines(chunks: Iterator[bytes]) -> Iterator[ServiceLogLine]:
    """Re-cut the log stream into lines and split off each line's details ("key=value,...
    " before the text): the task id is `com.docker.swarm.task.id`."""
    buffer = b""
    try:
        for chunk in chunks:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield _log_line(line + b"\n")
        if buffer:
            yield _log_line(buffer)
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()


def _log_line(raw: bytes) -> ServiceLogLine:
    details, sep, text = raw.partition(b" ")
    if not sep or b"=" not in details:
        return ServiceLogLine("", raw)
    task = ""
    for pair in details.split(b","):
        key, _, value = pair.partition(b"=")
        if key == b"com.docker.swarm.task.id":
            task = value.decode("ascii", "replace")
    return ServiceLogLine(task, text)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _swarm_failure(failure: RuntimeFailure, action: str) -> RuntimeFailure:
    """The answers only a swarm gives, reclassified; the rest as `runtime.docker.errors` says."""
    low = failure.message.lower()
    if "update out of sequence" in low:
        return Conflict(
            f"swarm: cannot {action}: the service changed since it was read "
            f"(observe it again): {failure.message}"
        )
    if "not a swarm manager" in low:
        return PermanentError(
            f"swarm: cannot {action}: the Docker daemon at this address is not a swarm "
            f"manager (docker swarm init, or point DOCKER_HOST at a manager): {failure.message}"
        )
    if "already exists" in low or "name conflicts" in low:
        return failure if isinstance(failure, Conflict) else Conflict(failure.message)
    return failure


if TYPE_CHECKING:  # mypy checks that the driver is a ServiceRuntime
    _conforms: type[ServiceRuntime] = SwarmRuntime
