"""What a stage has become so far: its layers, its image config, its args and shell; and the
metadata instructions (ENV, ARG, LABEL, USER, WORKDIR's path, EXPOSE, VOLUME, CMD,
ENTRYPOINT, HEALTHCHECK, STOPSIGNAL, SHELL, ONBUILD, MAINTAINER) applied to it. Pure: the
builder (builder.py) does the file system work and calls these for the rest.

The image config follows the OCI image spec (and Docker's extensions: Healthcheck, OnBuild,
Shell), written with sorted keys so that the same build gives the same config digest.
"""

from __future__ import annotations

import copy
import datetime
import json
import posixpath
import re
from typing import Any

import msgspec

from pyapply.runtime.base import BuildFailed
from pyapply.runtime.native.build import words
from pyapply.runtime.native.build.parse import Instruction

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Docker's predefined args: usable with --build-arg without an ARG line, kept out of the
# image's history and of the cache key.
PROXY_ARGS = frozenset(
    {
        "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
        "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
    }
)  # fmt: skip
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def duration_ns(text: str, where: str) -> int:
    """A Go duration ("30s", "1m30s", "100ms") in nanoseconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise BuildFailed(f"{where}: invalid duration {text!r}", where=where)
    return int(total)


def iso_time(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StageState(msgspec.Struct):
    """A stage being built."""

    name: str | None
    base_id: str  # the base image id, "" for scratch, else "stage:<n>"
    diff_ids: list[str] = msgspec.field(default_factory=list)
    config: dict[str, Any] = msgspec.field(default_factory=dict)  # the OCI "config" object
    history: list[dict[str, Any]] = msgspec.field(default_factory=list)
    args: dict[str, str] = msgspec.field(
        default_factory=dict
    )  # declared in this stage, with values
    key: str = ""  # the cache chain's last key
    shell: tuple[str, ...] = DEFAULT_SHELL
    onbuild_from_base: list[str] = msgspec.field(default_factory=list)
    escape: str = "\\"  # the Dockerfile's escape character (`# escape=`)

    def fork(self, name: str | None) -> StageState:
        """A new stage built FROM this one."""
        return StageState(
            name=name,
            base_id=self.base_id,
            diff_ids=list(self.diff_ids),
            # "_" keys are this stage's bookkeeping (a CMD seen, the author), not inherited
            config={k: v for k, v in copy.deepcopy(self.config).items() if not k.startswith("_")},
            history=copy.deepcopy(self.history),
            key=self.key,
            shell=tuple(self.config.get("Shell") or DEFAULT_SHELL),
            onbuild_from_base=list(self.config.get("OnBuild") or []),
            escape=self.escape,
        )

    # -- the environment a step sees -----------------------------------------------------

    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def expansion_env(self) -> dict[str, str]:
        """What `$VAR` expands to in an instruction: args, then ENV over them."""
        return {**self.args, **self.env_map()}

    def run_env(self, proxies: dict[str, str]) -> list[str]:
        """The environment of a RUN: ENV, plus args (and proxy args) ENV does not set."""
        env = self.env_map()
        extra = {k: v for k, v in {**proxies, **self.args}.items() if k not in env}
        merged = [*(self.config.get("Env") or []), *(f"{k}={v}" for k, v in sorted(extra.items()))]
        if not any(e.startswith("PATH=") for e in merged):
            merged.insert(0, f"PATH={DEFAULT_PATH}")
        return merged

    def expand(self, text: str, where: str) -> str:
        try:
            return words.process(text, self.expansion_env(), escape=self.escape)
        except words.WordError as e:
            raise BuildFailed(f"{where}: {e}", where=where) from None

    def set_env(self, key: str, value: str) -> None:
        env = [e for e in self.config.get("Env") or [] if e.partition("=")[0] != key]
        env.append(f"{key}={value}")
        self.config["Env"] = env

    def workdir(self) -> str:
        return str(self.config.get("WorkingDir") or "/")

    def resolve_path(self, path: str) -> str:
        """An instruction's path, relative ones against WORKDIR."""
        joined = path if path.startswith("/") else posixpath.join(self.workdir(), path)
        cleaned = posixpath.normpath(joined)
        if path.endswith("/") and not cleaned.endswith("/"):
            cleaned += "/"
        return cleaned

    def add_history(self, created_by: str, epoch: int, empty: bool) -> None:
        entry: dict[str, Any] = {"created": iso_time(epoch), "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        self.history.append(entry)


def _pairs(ins: Instruction, state: StageState, where: str) -> list[tuple[str, str]]:
    """ENV/LABEL's key-value pairs (the parser flattens them), quotes and $VARs processed."""
    vals = list(ins.value)
    if len(vals) % 2:
        raise BuildFailed(f"{where}: {ins.cmd} needs key=value pairs", where=where)
    out = []
    for i in range(0, len(vals), 2):
        key = state.expand(vals[i], where)
        if not key:
            raise BuildFailed(f"{where}: {ins.cmd} names an empty key", where=where)
        out.append((key, state.expand(vals[i + 1], where)))
    return out


def _command(ins: Instruction, state: StageState) -> list[str]:
    """CMD/ENTRYPOINT: the exec form as is, the shell form wrapped in the stage's shell."""
    if ins.json:
        return list(ins.value)
    return [*state.shell, " ".join(ins.value)]


def _healthcheck(ins: Instruction, state: StageState, where: str) -> dict[str, Any]:
    vals = list(ins.value)
    kind = vals[0].upper() if vals else ""
    if kind == "NONE":
        if len(vals) > 1 or ins.flags:
            raise BuildFailed(f"{where}: HEALTHCHECK NONE takes no arguments", where=where)
        return {"Test": ["NONE"]}
    if kind != "CMD" or len(vals) < 2:
        raise BuildFailed(f"{where}: HEALTHCHECK needs CMD <command> or NONE", where=where)
    test = ["CMD", *vals[1:]] if ins.json else ["CMD-SHELL", " ".join(vals[1:])]
    hc: dict[str, Any] = {"Test": test}
    names = {
        "interval": "Interval",
        "timeout": "Timeout",
        "start-period": "StartPeriod",
        "start-interval": "StartInterval",
    }
    for flag in ins.flag_names():
        if flag not in (*names, "retries"):
            raise BuildFailed(f"{where}: HEALTHCHECK does not take --{flag}", where=where)
    for flag, key in names.items():
        value = ins.flag(flag)
        if value is not None:
            hc[key] = duration_ns(state.expand(value, where), where)
    retries = ins.flag("retries")
    if retries is not None:
        if not retries.isdigit():
            raise BuildFailed(f"{where}: --retries must be a number", where=where)
        hc["Retries"] = int(retries)
    return hc


def apply_metadata(ins: Instruction, state: StageState, where: str) -> None:
    """Apply a metadata instruction (no file system change) to `state`."""
    c = ins.cmd
    cfg = state.config
    if c == "ENV":
        for k, v in _pairs(ins, state, where):
            state.set_env(k, v)
    elif c == "LABEL":
        labels = dict(cfg.get("Labels") or {})
        labels.update(_pairs(ins, state, where))
        cfg["Labels"] = labels
    elif c == "MAINTAINER":
        state.config.setdefault("_author", " ".join(ins.value))
    elif c == "USER":
        cfg["User"] = state.expand(" ".join(ins.value), where)
    elif c == "EXPOSE":
        ports = dict(cfg.get("ExposedPorts") or {})
        for raw in ins.value:
            p = state.expand(raw, where)
            port, _, proto = p.partition("/")
            if not port.replace("-", "").isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                raise BuildFailed(f"{where}: invalid port {p!r}", where=where)
            ports[f"{port}/{proto or 'tcp'}"] = {}
        cfg["ExposedPorts"] = ports
    elif c == "VOLUME":
        vols = dict(cfg.get("Volumes") or {})
        for raw in ins.value:
            v = state.expand(raw, where)
            if v:
                vols[v] = {}
        cfg["Volumes"] = vols
    elif c == "CMD":
        cfg["Cmd"] = _command(ins, state)
        state.config["_cmd_set"] = True
    elif c == "ENTRYPOINT":
        cfg["Entrypoint"] = _command(ins, state)
        if not state.config.get("_cmd_set"):
            cfg["Cmd"] = None  # Docker: a new ENTRYPOINT drops the CMD inherited from the base
    elif c == "HEALTHCHECK":
        cfg["Healthcheck"] = _healthcheck(ins, state, where)
    elif c == "STOPSIGNAL":
        cfg["StopSignal"] = state.expand(ins.value[0], where)
    elif c == "SHELL":
        if not ins.json or not ins.value:
            raise BuildFailed(
                f'{where}: SHELL needs the JSON form, e.g. SHELL ["/bin/sh", "-c"]', where=where
            )
        state.shell = tuple(ins.value)
        cfg["Shell"] = list(ins.value)
    elif c == "ONBUILD":
        trigger = ins.original.split(None, 1)[1] if " " in ins.original else ""
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger.strip()]
    else:  # pragma: no cover - the builder dispatches only the above here
        raise BuildFailed(f"{where}: {c} is not a metadata instruction", where=where)


def declare_arg(
    ins: Instruction,
    build_args: dict[str, str],
    defaults: dict[str, str],
    env: dict[str, str],
    where: str,
    escape: str = "\\",
) -> list[tuple[str, str | None]]:
    """ARG NAME[=default] ...: (name, value) pairs, value None when neither --build-arg nor
    a default (nor, inside a stage, the global ARG's value in `defaults`) gives one."""
    out: list[tuple[str, str | None]] = []
    for raw in ins.value:
        name, eq, default = raw.partition("=")
        if not name or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise BuildFailed(f"{where}: invalid ARG name {name!r}", where=where)
        value: str | None
        if name in build_args:
            value = build_args[name]
        elif eq:
            try:
                value = words.process(default, env, escape=escape)
            except words.WordError as e:
                raise BuildFailed(f"{where}: {e}", where=where) from None
        else:
            value = defaults.get(name)
        out.append((name, value))
    return out


def image_config_json(
    state: StageState,
    *,
    platform: dict[str, str],
    epoch: int,
    labels: dict[str, str],
) -> bytes:
    """The final OCI image config document of `state`, canonical (sorted keys, compact)."""
    cfg = {k: v for k, v in state.config.items() if not k.startswith("_")}
    if labels:
        cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
    cfg = {k: v for k, v in cfg.items() if v not in (None, {}, [])}
    doc: dict[str, Any] = {
        **platform,
        "created": iso_time(epoch),
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(state.diff_ids)},
        "history": state.history,
    }
    author = state.config.get("_author")
    if author:
        doc["author"] = author
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
