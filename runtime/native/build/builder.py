"""The native builder: a Dockerfile's stages built step by step into the native image store.

Each step that changes files runs against an overlay of its stage's layers: RUN in a
container made by the native runtime's own ContainerManager (runc under conmon, overlayfs,
Docker's default seccomp profile and capabilities, the image's user, env and workdir), COPY,
ADD and WORKDIR by this process in an overlay mounted in the build's scratch dir
(workspace.py). The overlay's upper dir is the step's change; it becomes a reproducible layer
tar (layertar.py), stored as a blob whose digest is its diff_id, and the upper dir itself,
unmounted, becomes the layer's directory for the next step (the tar is not unpacked again).

Network of a RUN: the host's network namespace (joined by path, like `docker build
--network host`). It is the simplest way to give a build the network access builds have,
and it needs no bridge, veth or NAT rule that a killed build could leave behind. What it
costs: a RUN can reach services on the host's loopback; it cannot change the host's network
(no CAP_NET_ADMIN, as in any service container).

Cache (cache.py): every step has a key chained from its parent's; a step whose key is known
and whose layer is still stored executes nothing (BuildEvent "cached"). `no_cache` skips the
lookups (and still records the new keys); `pull` refreshes the base images first.

The image is committed and tagged only when every step has succeeded; the temporary
containers, mounts and directories go in every case (and what a killed build left, with the
next build). The image's `created` and every timestamp are SOURCE_DATE_EPOCH (0 unless
given), so a rebuild of the same inputs is the same image id: nothing to recreate.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pyapply.runtime.base import (
    BuildConfig,
    BuildEvent,
    BuildFailed,
    BuildProgress,
    BuildResult,
    ContainerConfig,
    PermanentError,
    RuntimeFailure,
)
from pyapply.runtime.native import rootfs
from pyapply.runtime.native.build import cache as cachemod
from pyapply.runtime.native.build import dockerignore, layertar, parse, state
from pyapply.runtime.native.build.copying import CopyStep, base_layers
from pyapply.runtime.native.build.fsops import make_dirs
from pyapply.runtime.native.build.mounts import RunMounts, mount_flags
from pyapply.runtime.native.build.parse import Dockerfile, Instruction, Stage
from pyapply.runtime.native.build.state import StageState
from pyapply.runtime.native.build.workspace import Workspace
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.native.images import ImageStore
from pyapply.runtime.native.reference import host_platform, normalize_ref
from pyapply.runtime.native.supervise import LOG_FILE, conmon_pid, read_exit, read_log
from pyapply.runtime.statefs import atomic_write, private_dir, rmtree

TAIL_LINES = 20
EventState = Literal["running", "cached", "done", "failed", "output"]
BUILD_LABEL = "io.pyapply.build"
_METADATA = frozenset(
    {
        "ENV", "LABEL", "MAINTAINER", "USER", "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT",
        "HEALTHCHECK", "STOPSIGNAL", "SHELL", "ONBUILD",
    }
)  # fmt: skip


def read_dockerfile(config: BuildConfig) -> tuple[str, str]:
    """(text, name for messages) of the build's Dockerfile; a missing context or file is a
    BuildFailed that says which."""
    ctx = config.context
    if not os.path.isdir(ctx):
        what = "is not a directory" if os.path.exists(ctx) else "does not exist"
        raise BuildFailed(f"build context {ctx} {what}")
    if config.dockerfile_inline is not None:
        return config.dockerfile_inline, "Dockerfile"
    rel = config.dockerfile or "Dockerfile"
    path = rel if os.path.isabs(rel) else os.path.join(ctx, rel)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), os.path.basename(rel)
    except FileNotFoundError:
        raise BuildFailed(f"no Dockerfile at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BuildFailed(f"cannot read {path}: {e}") from None


def platform_args() -> dict[str, str]:
    """BuildKit's automatic platform args (the host's: builds are native only)."""
    p = host_platform()
    out = {
        "TARGETPLATFORM": str(p),
        "TARGETOS": p.os,
        "TARGETARCH": p.architecture,
        "TARGETVARIANT": p.variant or "",
    }
    out.update({k.replace("TARGET", "BUILD"): v for k, v in out.items()})
    return out


def build_epoch(args: dict[str, str]) -> int:
    """The time every timestamp is clamped to: SOURCE_DATE_EPOCH (build arg, then
    environment), else 0, so that the same inputs give the same layers and image id."""
    raw = args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH") or "0"
    if not raw.isdigit():
        raise BuildFailed(f"SOURCE_DATE_EPOCH must be a number of seconds, not {raw!r}")
    return int(raw)


class Builder:
    """One build in one state root."""

    def __init__(
        self,
        store: ImageStore,
        containers: ContainerManager,
        root: Path,
        config: BuildConfig,
        progress: BuildProgress | None,
    ) -> None:
        self.store = store
        self.containers = containers
        self.config = config
        self.progress = progress
        self.build_dir = root / "build"
        private_dir(self.build_dir)
        self.cache = cachemod.LayerCache(str(self.build_dir))
        self.args = dict(config.args)
        self.epoch = build_epoch(self.args)
        self.proxies = {k: v for k, v in self.args.items() if k in state.PROXY_ARGS}
        self.step = 0
        self.total = 0
        self.cached = 0
        self.workspace = Workspace(self.build_dir, containers)
        self.tmp = self.workspace.dir
        self.stages: dict[int, StageState] = {}
        self.triggers: dict[int, int] = {}  # stage index -> ONBUILD triggers counted ahead
        self.df: Dockerfile | None = None
        self.meta: dict[str, str] = {}
        self.context_matcher = dockerignore.Matcher(())

    # -- events --------------------------------------------------------------------------

    def emit(self, ins: str, st: EventState, *, line: str = "", seconds: float = 0.0) -> None:
        if self.progress is not None:
            self.progress(BuildEvent(self.step, self.total, ins, st, line, seconds))

    # -- the whole build -----------------------------------------------------------------

    def run(self) -> BuildResult:
        for tag in self.config.tags:
            try:
                normalize_ref(tag)
            except PermanentError as e:
                raise BuildFailed(f"invalid tag {tag!r}: {e}") from None
        text, name = read_dockerfile(self.config)
        df = parse.parse_text(text, name)
        self.df = df
        ignore = os.path.join(self.config.context, ".dockerignore")
        with contextlib.suppress(FileNotFoundError), open(ignore, encoding="utf-8") as f:
            self.context_matcher = dockerignore.Matcher.from_text(f.read())
        self.meta = self._meta_args(df)
        target = self._target(df)
        needed = self._needed(df, target)
        self.triggers = {i: self._known_triggers(df.stages[i]) for i in needed}
        self.total = sum(1 + len(df.stages[i].instructions) + self.triggers[i] for i in needed)
        with self.workspace, self.store.building():
            for i in needed:
                self.stages[i] = self._build_stage(df.stages[i])
            final = self.stages[target.index]
            p = host_platform()
            platform = {"architecture": p.architecture, "os": p.os}
            if p.variant:
                platform["variant"] = p.variant
            body = state.image_config_json(
                final, platform=platform, epoch=self.epoch, labels=dict(self.config.labels)
            )
            record = self.store.commit_built(body, final.diff_ids, self.config.tags)
        return BuildResult(
            image_id=record.id, tags=tuple(self.config.tags), steps=self.step, cached=self.cached
        )

    def _meta_args(self, df: Dockerfile) -> dict[str, str]:
        values = platform_args()
        for ins in df.meta_args:
            where = f"{df.name}:{ins.line}"
            for k, v in state.declare_arg(ins, self.args, values, values, where, df.escape):
                if v is not None:
                    values[k] = v
        return values

    def _target(self, df: Dockerfile) -> Stage:
        if self.config.target is None:
            return df.stages[-1]
        found = df.stage(self.config.target)
        if found is None:
            raise BuildFailed(f"target stage {self.config.target!r} not found in {df.name}")
        return found

    def _base_ref(self, stage: Stage) -> str:
        where = f"{self._df().name}:{stage.line}"
        tmp = self._scratch_state()
        return tmp.expand(stage.base, where)

    def _from_ref(self, ins: Instruction) -> str | None:
        raw = ins.flag("from")
        if raw is None:
            return None
        tmp = self._scratch_state()
        return tmp.expand(raw, f"{self._df().name}:{ins.line}")

    def _needed(self, df: Dockerfile, target: Stage) -> list[int]:
        """The stages the target depends on (FROM a stage, COPY --from a stage), in order."""
        need: set[int] = set()
        todo = [target.index]
        while todo:
            i = todo.pop()
            if i in need:
                continue
            need.add(i)
            stage = df.stages[i]
            refs = [self._base_ref(stage)]
            refs += [r for ins in stage.instructions if (r := self._from_ref(ins)) is not None]
            for ref in refs:
                dep = df.stage(ref)
                if dep is not None and dep.index < i:
                    todo.append(dep.index)
                elif dep is not None and dep.index >= i and ref.lower() == dep.name:
                    where = f"{df.name}:{stage.line}"
                    raise BuildFailed(
                        f"{where}: stage {ref!r} is used before it is defined", where=where
                    )
        return sorted(need)

    def _known_triggers(self, stage: Stage) -> int:
        """How many ONBUILD triggers a stage's base image (if already stored) brings, so
        that the step count shown from the start is right; a base still to be pulled adds
        its triggers to the count when it arrives."""
        ref = self._base_ref(stage)
        if self._df().stage(ref) is not None or ref.lower() == "scratch" or self.config.pull:
            return 0
        record = self.store.resolve(ref)
        if record is None:
            return 0
        return len(self.store.config_document(record).get("config", {}).get("OnBuild") or [])

    def _scratch_state(self) -> StageState:
        """A state for expanding what comes before a stage (FROM's image, --from) with the
        global ARGs."""
        return StageState(name=None, base_id="", args=self.meta, escape=self._df().escape)

    def _df(self) -> Dockerfile:
        assert self.df is not None
        return self.df

    # -- stages --------------------------------------------------------------------------

    def _build_stage(self, stage: Stage) -> StageState:
        df = self._df()
        assert stage.from_instruction is not None
        self.step += 1
        label = stage.from_instruction.text
        self.emit(label, "running")
        t0 = time.monotonic()
        st = self._from(stage)
        self.emit(label, "done", seconds=time.monotonic() - t0)
        instructions = list(stage.instructions)
        if st.onbuild_from_base:
            triggers = [
                parse.parse_trigger(t, f"{df.name}:{stage.line}") for t in st.onbuild_from_base
            ]
            self.total += len(triggers) - self.triggers.get(stage.index, 0)
            instructions = triggers + instructions
            st.onbuild_from_base = []
        for ins in instructions:
            self.step += 1
            self._instruction(ins, st)
        return st

    def _from(self, stage: Stage) -> StageState:
        df = self._df()
        where = f"{df.name}:{stage.line}"
        if stage.platform is not None:
            want = self._scratch_state().expand(stage.platform, where)
            host = host_platform()
            if want not in (str(host), f"{host.os}/{host.architecture}"):
                raise BuildFailed(
                    f"{where}: FROM --platform={want}: this builder builds for the host's "
                    f"platform only ({host})",
                    where=where,
                )
        ref = self._base_ref(stage)
        dep = df.stage(ref)
        if dep is not None and dep.index < stage.index:
            st = self.stages[dep.index].fork(stage.name)
            st.onbuild_from_base = []
            return st
        if ref.lower() == "scratch":
            return StageState(
                name=stage.name,
                base_id="",
                key=cachemod.step_key("", "scratch"),
                escape=df.escape,
            )
        record = None if self.config.pull else self.store.resolve(ref)
        if record is None:
            try:
                record = self.store.pull(ref)
            except RuntimeFailure as e:
                raise BuildFailed(f"{where}: base image {ref}: {e}", where=where) from None
        base_layers(self.store, record, where)
        doc = self.store.config_document(record)
        cfg = dict(doc.get("config") or {})
        triggers = [str(t) for t in cfg.pop("OnBuild", None) or []]
        return StageState(
            name=stage.name,
            base_id=record.id,
            diff_ids=list(record.diff_ids),
            config=cfg,
            history=list(doc.get("history") or []),
            key=cachemod.step_key(record.id, "FROM"),
            shell=tuple(cfg.get("Shell") or state.DEFAULT_SHELL),
            onbuild_from_base=triggers,
            escape=df.escape,
        )

    # -- one instruction -----------------------------------------------------------------

    def _instruction(self, ins: Instruction, st: StageState) -> None:
        where = f"{self._df().name}:{ins.line}"
        label = ins.text
        t0 = time.monotonic()
        self.emit(label, "running")
        try:
            cached = self._dispatch(ins, st, where)
        except BuildFailed as e:
            if e.step is None:
                e.step = label
            if e.where is None:
                e.where = where
            self.emit(label, "failed", seconds=time.monotonic() - t0)
            raise
        if cached:
            self.cached += 1
        self.emit(label, "cached" if cached else "done", seconds=time.monotonic() - t0)

    def _dispatch(self, ins: Instruction, st: StageState, where: str) -> bool:
        """Apply `ins` to `st`; whether it was answered from the cache."""
        c = ins.cmd
        if c == "ARG":
            env = st.expansion_env()
            for k, v in state.declare_arg(ins, self.args, self.meta, env, where, st.escape):
                if v is not None:
                    st.args[k] = v
                else:
                    st.args.pop(k, None)
            st.key = cachemod.step_key(st.key, ins.original, args=st.args)
            return False
        if c in _METADATA:
            state.apply_metadata(ins, st, where)
            st.add_history(ins.text, self.epoch, empty=True)
            st.key = cachemod.step_key(st.key, ins.original, expanded=_config_text(st))
            return False
        if c == "WORKDIR":
            path = st.resolve_path(st.expand(" ".join(ins.value), where))
            st.config["WorkingDir"] = path
            key = cachemod.step_key(st.key, ins.original, expanded=path)
            return self._layer_step(st, key, ins.text, lambda root: _mkdir(root, path))
        if c == "RUN":
            return self._run(ins, st, where)
        if c in ("COPY", "ADD"):
            step = CopyStep(self, ins, st, where)
            return self._layer_step(st, step.key(), ins.text, step.apply, cleanup=step.close)
        raise BuildFailed(f"{where}: {c} is not supported", where=where)

    # -- layers --------------------------------------------------------------------------

    def lower_dirs(self, st: StageState) -> list[str]:
        """The stage's layer directories, base first (an empty one for scratch)."""
        dirs = []
        for d in st.diff_ids:
            if not self.store.has_layer(d):
                raise BuildFailed(f"layer {d} of the stage is missing from the store")
            dirs.append(self.store.layer_dir(d))
        if not dirs:
            empty = self.tmp / "empty"
            empty.mkdir(mode=0o755, exist_ok=True)
            dirs.append(str(empty))
        return dirs

    def _cached(self, st: StageState, key: str, created_by: str) -> bool:
        if self.config.no_cache:
            return False
        entry = self.cache.get(key)
        if entry is None or (entry.diff_id is not None and not self.store.has_layer(entry.diff_id)):
            return False
        self._append(st, key, entry.diff_id, created_by)
        return True

    def _append(self, st: StageState, key: str, diff_id: str | None, created_by: str) -> None:
        if diff_id is not None:
            st.diff_ids.append(diff_id)
        st.add_history(created_by, self.epoch, empty=diff_id is None)
        st.key = key

    def _commit_upper(self, st: StageState, key: str, upper: Path, created_by: str) -> None:
        tar = self.tmp / f"layer-{secrets.token_hex(4)}.tar"
        with open(tar, "wb") as out:
            count = layertar.write_layer(str(upper), out, self.epoch, clamp=True)
        # the upper dir (unmounted by now) becomes the layer's directory: no unpacking of
        # the tar again, and nothing to delete file by file afterwards
        diff_id = self.store.add_layer(str(tar), str(upper)) if count else None
        tar.unlink()
        self.cache.put(key, cachemod.Entry(diff_id))
        self._append(st, key, diff_id, created_by)

    def mounted(self, lowers: list[str]) -> contextlib.AbstractContextManager[Path]:
        """An overlay of `lowers` with a fresh upper dir, mounted while in the block."""
        return _mounted(self.tmp / f"ovl-{secrets.token_hex(4)}", lowers)

    def _layer_step(
        self,
        st: StageState,
        key: str,
        created_by: str,
        apply: Callable[[str], None],
        cleanup: Callable[[], None] | None = None,
    ) -> bool:
        """A file-changing step done by us in an overlay (COPY, ADD, WORKDIR)."""
        try:
            if self._cached(st, key, created_by):
                return True
            work = self.tmp / f"step-{self.step}"
            with _mounted(work, self.lower_dirs(st)) as root:
                apply(str(root))
            self._commit_upper(st, key, work / "upper", created_by)
            rmtree(work)
            return False
        finally:
            if cleanup is not None:
                cleanup()

    # -- RUN -----------------------------------------------------------------------------

    def _run(self, ins: Instruction, st: StageState, where: str) -> bool:
        for flag in ins.flags:
            if flag.startswith("--mount="):
                continue
            if flag not in ("--network=default", "--network=host", "--network=none"):
                raise BuildFailed(
                    f"{where}: RUN {flag} is not supported by this builder", where=where
                )
        # the host's network namespace; --network=none: a new one with loopback only
        netns: str | None = f"/proc/{os.getpid()}/ns/net"
        if ins.flag("network") == "none":
            netns = None
        argv = run_argv(ins, st)
        mounts = RunMounts(self, mount_flags(ins.flags), st, where)
        key = cachemod.step_key(st.key, ins.original, args=st.args, extra=mounts.key_parts())
        created_by = ins.text if not ins.heredocs else ins.original.strip()
        if self._cached(st, key, created_by):
            return True
        try:
            self._run_container(ins, st, where, argv, netns, mounts, key, created_by)
        finally:
            mounts.close()
        return False

    def _run_container(
        self,
        ins: Instruction,
        st: StageState,
        where: str,
        argv: list[str],
        netns: str | None,
        mounts: RunMounts,
        key: str,
        created_by: str,
    ) -> None:
        lowers = self.lower_dirs(st)
        name = self.workspace.container_name()
        config = ContainerConfig(
            name=name,
            image=self.config.tags[0] if self.config.tags else "build",
            labels={BUILD_LABEL: "1"},
            command=tuple(argv),
            entrypoint=(),
            env=tuple(st.run_env(self.proxies)),
            user=str(st.config.get("User") or "") or None,
            working_dir=st.workdir(),
            mounts=mounts.open(),
        )
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            try:
                self.containers.check_host(config)
                self.containers.create(config, lowers, None, netns_path=netns)
                if netns is not None:
                    _host_resolv_conf(self.containers.dir(name))
                self.containers.start(name)
            except RuntimeFailure as e:
                raise BuildFailed(f"{where}: cannot run the step: {e}", where=where) from None
            cdir = self.containers.dir(name)
            for raw in read_log(cdir / LOG_FILE, follow=True, done=lambda: _ended(cdir), poll=0.02):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                self.emit(ins.text, "output", line=line)
            rec = read_exit(cdir)
            code = rec.code if rec is not None else None
            if code != 0:
                shown = "unknown" if code is None else str(code)
                raise BuildFailed(
                    f"{where}: {ins.text} failed with exit code {shown}",
                    where=where,
                    exit_code=code,
                    tail=tuple(tail),
                )
            upper = cdir / "upper"
            rootfs.unmount(cdir / "rootfs")  # the process is gone; its upper dir is the layer
            layertar.drop_mount_stubs(str(upper), lowers, mounts.targets())
            self._commit_upper(st, key, upper, created_by)
        finally:
            with contextlib.suppress(RuntimeFailure):
                self.containers.remove(name)


def run_argv(ins: Instruction, st: StageState) -> list[str]:
    """What a RUN executes. The exec form as is; the shell form in the stage's shell. A
    heredoc alone (`RUN <<EOF`) is the script itself; a command with heredocs gets them
    back, as the shell reads heredocs itself."""
    if ins.json:
        return list(ins.value)
    command = " ".join(ins.value)
    if ins.heredocs:
        only = (
            len(ins.heredocs) == 1
            and command.strip().lstrip("<-").strip("'\"") == ins.heredocs[0].name
        )
        if only:
            script = ins.heredocs[0].body()
            if script.startswith("#!"):
                interpreter = script.splitlines()[0][2:].split()
                return [*interpreter, "-c", script.split("\n", 1)[1] if "\n" in script else ""]
            return [*st.shell, script]
        body = command + "\n" + "".join(f"{h.content}{h.name}\n" for h in ins.heredocs)
        return [*st.shell, body]
    return [*st.shell, command]


def _host_resolv_conf(cdir: Path) -> None:
    """In the host's network namespace the host's resolver is reachable, loopback ones
    (systemd-resolved's 127.0.0.53) included: a RUN gets the host's resolv.conf as it is,
    as `docker build --network host` does, instead of the loopback-free copy a container
    on a network of its own gets."""
    with contextlib.suppress(OSError):
        atomic_write(cdir / "resolv.conf", Path("/etc/resolv.conf").read_text(), 0o644)


def _ended(cdir: Path) -> bool:
    """Whether a RUN container's process has ended (conmon wrote the exit code after the
    last of its output), or its conmon is gone."""
    return read_exit(cdir) is not None or conmon_pid(cdir) is None


def _config_text(st: StageState) -> str:
    return json.dumps([st.config, list(st.shell)], sort_keys=True, default=str)


def _mkdir(root: str, path: str) -> None:
    make_dirs(root, path)


@contextlib.contextmanager
def _mounted(work: Path, lowers: list[str]) -> Iterator[Path]:
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = work / "rootfs"
    rootfs.mount_overlay(lowers, work / "upper", work / "work", target)
    try:
        yield target
    finally:
        rootfs.unmount(target)
