"""`pyapply image ...`: the native runtime's image store from the command line.

`build` builds a Dockerfile on the chosen runtime (either: native's own builder, or
dockerd's), through `Runtime.build_image`.

`pull`, `ls`, `rm`, `import` and `prune` act on the store of the state root (--root,
PYAPPLY_ROOT): the one `--runtime native` creates containers from. dockerd has its own store
and its own CLI, so `--runtime docker` is refused with a pointer to `docker image ...` rather
than half supported.

An image a container uses (in any state) is kept: `rm` refuses it without --force, `prune`
skips it. `rm` and `prune` hold the host lock, so an apply never loses an image between its
pull and the create of the container that needs it. Registries on loopback are reached
without TLS verification, as the store (registry.py) and dockerd do.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from pyapply.reconciler.cli.common import connect, locked
from pyapply.reconciler.cli.main import err, fail, runtime_options
from pyapply.runtime.base import BuildEvent, ContainerState, PushEvent, Runtime, RuntimeFailure

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from pyapply.runtime.native.driver import NativeRuntime
    from pyapply.runtime.native.images import ImageRecord, PullProgress

F = Callable[..., Any]


# ---------------------------------------------------------------------------------------------
# Pure helpers (formatting, argument checks)


def refusal(runtime_name: str | None, command: str, instead: str) -> str | None:
    """Why `command` cannot run on the chosen runtime (None: it can). These commands manage
    the native runtime's state, so only an explicit other runtime is refused."""
    name = runtime_name or "native"
    if name == "native":
        return None
    if name == "docker":
        return (
            f"`pyapply {command}` manages the native runtime's state root, not dockerd; "
            f"with docker, use `{instead}`"
        )
    return f"unknown runtime {name!r}; `pyapply {command}` works on the native runtime"


def short_id(image_id: str) -> str:
    """The 12 hex digits docker shows of an id or digest."""
    return image_id.partition(":")[2][:12] if ":" in image_id else image_id[:12]


def familiar(repository: str) -> str:
    """A repository as people write it: docker.io's library and host left out."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if repository.startswith(prefix):
            return repository[len(prefix) :]
    return repository


def split_ref(ref: str) -> tuple[str, str]:
    """(repository, tag) of a normalised reference, for display; a registry port is not a
    tag."""
    name, at, _ = ref.partition("@")
    colon, slash = name.rfind(":"), name.rfind("/")
    if at or colon <= slash:
        return familiar(name), "<none>"
    return familiar(name[:colon]), name[colon + 1 :]


def human_size(n: int) -> str:
    """Bytes in decimal units, three significant digits, as docker prints them."""
    if n < 1000:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        shown = f"{value:.3g}"
        if float(shown) < 1000 or unit == "TB":
            return f"{shown}{unit}"
    raise AssertionError("unreachable")


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def parse_time(text: str) -> datetime.datetime | None:
    """An image config's `created` (RFC 3339, often with nanoseconds), as aware UTC."""
    m = _TIME.match(text.strip())
    if m is None:
        return None
    base, frac, tz = m.groups()
    iso = base + (f".{frac[:6].ljust(6, '0')}" if frac else "")
    iso += "+00:00" if tz in (None, "Z") else tz
    try:
        return datetime.datetime.fromisoformat(iso).astimezone(datetime.UTC)
    except ValueError:
        return None


def ago(created: str | None, now: datetime.datetime) -> str:
    """'3 days ago' for a `created` time; '-' when unknown."""
    when = parse_time(created) if created else None
    if when is None:
        return created or "-"
    seconds = (now - when).total_seconds()
    if seconds < 1:
        return "just now"
    for unit, size in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("week", 7 * 86400),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ):
        n = int(seconds // size)
        if n >= (2 if unit in ("month", "week") else 1):
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def image_users(
    containers: Iterable[ContainerState], resolve: Callable[[str], str | None]
) -> dict[str, list[str]]:
    """Image id -> names of the containers made from it (by the id recorded at create, else
    by resolving the reference they name)."""
    out: dict[str, list[str]] = {}
    for c in containers:
        image_id = c.image_id or resolve(c.image)
        if image_id:
            out.setdefault(image_id, []).append(c.name)
    return {k: sorted(v) for k, v in out.items()}


def removes_image(ref: str, record: ImageRecord) -> bool:
    """Whether `image rm ref` takes the image itself away (and not just one of its names):
    by id, or by its only name. As with docker, an image goes with its last name (its repo
    digests go with it); removing one of several names only untags."""
    from pyapply.runtime.base import PermanentError
    from pyapply.runtime.native.reference import normalize_ref

    text = ref.strip()
    hexpart = text.removeprefix("sha256:")
    is_hex = 12 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart)
    if is_hex and record.id.removeprefix("sha256:").startswith(hexpart):
        return True
    try:
        name = normalize_ref(text)
    except PermanentError:
        return True
    if name in record.refs:
        return len(record.refs) == 1
    if name in record.repo_digests:
        return not record.refs and len(record.repo_digests) == 1
    return True


def image_rows(
    records: Iterable[ImageRecord], users: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """The `image ls -o json` document."""
    return [
        {
            "id": r.id,
            "refs": list(r.refs),
            "repo_digests": list(r.repo_digests),
            "created": r.created,
            "size": r.size,
            "os": r.os,
            "architecture": r.architecture,
            "in_use": bool(users.get(r.id)),
            "containers": list(users.get(r.id, ())),
        }
        for r in records
    ]


def image_table(rows: Sequence[Mapping[str, Any]], now: datetime.datetime) -> list[str]:
    """`image ls` as aligned columns, one line per reference (docker's layout)."""
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "IN USE")]
    for row in rows:
        users = row["containers"]
        in_use = f"yes ({len(users)})" if users else "no"
        for ref in row["refs"] or [None]:
            repo, tag = split_ref(ref) if ref else ("<none>", "<none>")
            created = ago(row["created"], now)
            table.append((repo, tag, short_id(row["id"]), created, human_size(row["size"]), in_use))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def short_digest(digest: str) -> str:
    return short_id(digest)


class _LayerKeys:
    """Which row a progress event belongs to. Downloads report the blob digest, unpacking
    the layer's diff id; the store fetches and unpacks each layer in one thread, so an
    unpack is shown on the row of the download that thread did last."""

    def __init__(self) -> None:
        self._last: dict[int, str] = {}

    def key(self, event: PullProgress) -> str:
        thread = threading.get_ident()
        if event.action in ("download", "cached"):
            self._last[thread] = event.digest
            return event.digest
        if event.action == "unpacked":
            return self._last.pop(thread, event.digest)
        return event.digest


class PlainPullProgress:
    """Progress as log lines: a layer's download at each quarter and when done, and when a
    layer is found cached, unpacked or already unpacked. Called from the store's threads."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._lock = threading.Lock()
        self._keys = _LayerKeys()
        self._quarter: dict[str, int] = {}

    def lines(self, event: PullProgress) -> list[str]:
        key = short_digest(self._keys.key(event))
        if event.action == "download":
            if not event.total:
                return [f"{key}: downloading {human_size(event.done)}"]
            if event.done >= event.total:
                return [f"{key}: downloaded {human_size(event.total)}"]
            quarter = 4 * event.done // event.total
            if quarter <= self._quarter.get(event.digest, 0):
                return []
            self._quarter[event.digest] = quarter
            return [f"{key}: downloading {human_size(event.done)} / {human_size(event.total)}"]
        if event.action == "cached":
            return [f"{key}: already downloaded"]
        if event.action == "unpacked":
            return [f"{key}: unpacked"]
        return [f"{key}: already unpacked"]

    def __call__(self, event: PullProgress) -> None:
        with self._lock:
            for line in self.lines(event):
                self.echo(line)


class RichPullProgress:
    """Progress on a terminal: a bar per layer with bytes and speed (rich)."""

    def __init__(self, progress: Progress | None = None) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.progress = progress or Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[state]}"),
        )
        self._lock = threading.Lock()
        self._keys = _LayerKeys()
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichPullProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: PullProgress) -> None:
        with self._lock:
            key = self._keys.key(event)
            task = self._tasks.get(key)
            if task is None:
                task = self.progress.add_task(
                    short_digest(key), total=event.total or None, state="waiting"
                )
                self._tasks[key] = task
            p = self.progress
            if event.action == "download":
                p.update(task, completed=event.done, total=event.total or None, state="downloading")
            elif event.action == "cached":
                p.update(task, completed=event.total, total=event.total, state="cached")
            elif event.action == "unpacked":
                total = p.tasks[task].total  # the download's total, if it had one
                p.update(task, completed=total or 0, total=total or 0, state="unpacked")
            else:
                p.update(task, completed=0, total=0, state="already unpacked")


# ---------------------------------------------------------------------------------------------
# Plumbing


def one_line(message: str) -> str:
    """The first line of an error message (some, like tarfile's, list details below it)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else message


@contextlib.contextmanager
def build_display(
    as_json: bool, title: str, lines: Callable[[BuildEvent], None]
) -> Iterator[Callable[[BuildEvent], None]]:
    """The progress callback of a build: a live view of its steps redrawn in place when
    stdout is a terminal and the output is text (reconciler/view/build_live.py), else
    `lines`, a line per event."""
    if as_json or not sys.stdout.isatty():
        yield lines
        return
    from pyapply.reconciler.view.build_live import LiveBuildView

    with LiveBuildView(title) as live:
        yield live


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Runtime and OS errors as one line for the user (exit 1), never a traceback."""
    try:
        yield
    except RuntimeFailure as e:
        fail(prefix + one_line(e.message))
    except OSError as e:
        fail(prefix + one_line(str(e)))


def open_native(
    runtime_name: str | None, root: str | None, command: str, instead: str
) -> NativeRuntime:
    """The native runtime of the state root, after refusing any other runtime."""
    problem = refusal(runtime_name, command, instead)
    if problem is not None:
        fail(problem)
    from pyapply.runtime.native.driver import NativeRuntime

    with user_errors("cannot open the state root: "):
        rt = connect("native", root)
    if not isinstance(rt, NativeRuntime):  # connect("native") makes one; this is for mypy
        fail("the native runtime is not available")
    return rt


def _users(rt: NativeRuntime) -> tuple[list[ContainerState], dict[str, list[str]]]:
    store = rt.image_store

    def resolve(ref: str) -> str | None:
        rec = store.resolve(ref)
        return rec.id if rec is not None else None

    with user_errors():
        containers = rt.list_containers({})
        return containers, image_users(containers, resolve)


def lock_timeout_option(fn: F) -> F:
    return click.option(
        "--lock-timeout",
        default=300.0,
        show_default=True,
        help="Seconds to wait for a running apply to finish.",
    )(fn)


def _fail_count(failed: int) -> None:
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Commands


@click.group("image")
def image() -> None:
    """Manage the native runtime's image store (pull, ls, rm, import, prune)."""


@image.command("pull")
@click.argument("refs", nargs=-1, required=True)
@runtime_options
def pull(refs: tuple[str, ...], runtime_name: str | None, root: str | None) -> None:
    """Pull images from their registries (layers fetched in parallel)."""
    rt = open_native(runtime_name, root, "image pull", "docker pull")
    live = sys.stdout.isatty()
    failed = 0
    for ref in refs:
        click.echo(f"pulling {ref}")
        try:
            if live:
                with RichPullProgress() as progress:
                    rec = rt.image_store.pull(ref, progress)
            else:
                rec = rt.image_store.pull(ref, PlainPullProgress(click.echo))
        except RuntimeFailure as e:
            err(f"error: {one_line(e.message)}")
            failed += 1
            continue
        except OSError as e:
            err(f"error: {ref}: {one_line(str(e))}")
            failed += 1
            continue
        click.echo(f"pulled {ref}: {short_id(rec.id)} ({human_size(rec.size)})")
    _fail_count(failed)


# -- push (any runtime: through Runtime.push_image) --------------------------------------------


def push_line(event: PushEvent) -> str:
    """One progress line of a push: a blob's fate, or the manifest's."""
    size = f" ({human_size(event.size)})" if event.size else ""
    key = short_digest(event.digest)
    words = {
        "exists": "already in the registry",
        "mounted": "mounted from another repository",
        "uploading": "uploading",
        "uploaded": "uploaded",
        "pushed": "pushed",
    }
    return f"{event.kind} {key}: {words[event.state]}{size}"


def push_event_json(event: PushEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "digest": event.digest,
        "size": event.size,
        "state": event.state,
    }


def push_each(rt: Runtime, refs: Sequence[str], *, show: bool) -> tuple[list[dict[str, Any]], int]:
    """Push `refs` one after another, with a progress line per blob when `show`; a failed
    ref is one error line and goes on to the next. Returns a document per ref (its digest
    and blobs, or its error) and the count of failures."""
    results: list[dict[str, Any]] = []
    failed = 0
    for ref in refs:
        events: list[PushEvent] = []

        def on_event(event: PushEvent, events: list[PushEvent] = events) -> None:
            events.append(event)
            if show:
                click.echo(push_line(event))

        if show:
            click.echo(f"pushing {ref}")
        try:
            pushed = rt.push_image(ref, on_event)
        except RuntimeFailure as e:
            err(f"error: {one_line(e.message)}")
            results.append({"ref": ref, "error": one_line(e.message)})
            failed += 1
            continue
        except OSError as e:
            err(f"error: {ref}: {one_line(str(e))}")
            results.append({"ref": ref, "error": one_line(str(e))})
            failed += 1
            continue
        results.append(
            {
                "ref": pushed.ref,
                "digest": pushed.digest,
                "blobs": [push_event_json(e) for e in events if e.kind != "manifest"],
            }
        )
        if show:
            click.echo(f"pushed {pushed.ref}@{pushed.digest}")
    return results, failed


@image.command("push")
@click.argument("refs", nargs=-1, required=True)
@runtime_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Progress lines, or one JSON document at the end.",
)
def push(refs: tuple[str, ...], runtime_name: str | None, root: str | None, output: str) -> None:
    """Push images to their registries: every blob first (skipped when the registry has it,
    mounted from another repository of the registry when it can), the manifest last.
    Works on both runtimes (native: the store of the state root; docker: dockerd's)."""
    rt = connect(runtime_name, root)
    results, failed = push_each(rt, refs, show=output == "text")
    if output == "json":
        click.echo(json.dumps(results, indent=2))
    _fail_count(failed)


@image.command("ls")
@runtime_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def ls(runtime_name: str | None, root: str | None, output: str) -> None:
    """List the images: references, id, age, size, and whether containers use them."""
    rt = open_native(runtime_name, root, "image ls", "docker image ls")
    with user_errors():
        records = rt.image_store.list()
    _, users = _users(rt)
    rows = image_rows(records, users)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    now = datetime.datetime.now(datetime.UTC)
    for line in image_table(rows, now):
        click.echo(line)


image.add_command(ls, name="list")


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--force",
    "-f",
    is_flag=True,
    help="Remove even images that containers use (they keep running on its layers).",
)
@runtime_options
@lock_timeout_option
def rm(
    refs: tuple[str, ...],
    force: bool,
    runtime_name: str | None,
    root: str | None,
    lock_timeout: float,
) -> None:
    """Remove references (by name, id or name@digest); an image goes with its last one,
    and with it the blobs and layers no other image or container needs."""
    rt = open_native(runtime_name, root, "image rm", "docker image rm")
    store = rt.image_store
    failed = 0
    with locked(str(rt.root), lock_timeout):
        _, users = _users(rt)
        with user_errors():
            # a container still runs on its layers after `rm --force`: they stay (until prune)
            in_use = rt.containers.layer_dirs_in_use()
        for ref in refs:
            with user_errors():
                rec = store.resolve(ref)
            if rec is None:
                err(f"error: no such image: {ref}")
                failed += 1
                continue
            names = users.get(rec.id, [])
            whole = removes_image(ref, rec)
            if whole and names and not force:
                err(
                    f"error: image {ref} is in use by container{'s' if len(names) > 1 else ''} "
                    f"{', '.join(names)}; remove {'them' if len(names) > 1 else 'it'} first, "
                    "or use --force"
                )
                failed += 1
                continue
            with user_errors():
                # by id when the image goes: its repo digests go too, as with docker
                store.remove(rec.id if whole else ref, keep_layers=in_use)
                after = store.resolve(rec.id)
            kept = set(after.refs) | set(after.repo_digests) if after else set()
            for gone in sorted({*rec.refs, *rec.repo_digests} - kept):
                click.echo(f"untagged: {gone}")
            if after is None:
                click.echo(f"deleted: {rec.id}")
                if names:
                    err(
                        f"warning: {', '.join(names)} still use its layers; `image prune` "
                        "refuses to run until they are removed"
                    )
    _fail_count(failed)


@image.command("import")
@click.argument("path")
@click.option(
    "--ref",
    default=None,
    help="Name the imported image (required for a plain rootfs tarball).",
)
@runtime_options
def import_(path: str, ref: str | None, runtime_name: str | None, root: str | None) -> None:
    """Import a `docker save` archive, an OCI layout (directory or tar) or, with --ref, a
    root file system tarball (optionally compressed) as a one-layer image."""
    rt = open_native(runtime_name, root, "image import", "docker load / docker import")
    with user_errors():
        records = rt.image_store.import_archive(path, ref)
    for rec in records:
        names = ", ".join(rec.refs) or "(no name)"
        click.echo(f"imported {names}: {short_id(rec.id)} ({human_size(rec.size)})")


@image.command("prune")
@runtime_options
@lock_timeout_option
def prune(runtime_name: str | None, root: str | None, lock_timeout: float) -> None:
    """Remove every image no container of the state root uses, with the blobs and layers
    only they needed."""
    rt = open_native(runtime_name, root, "image prune", "docker image prune")
    store = rt.image_store
    with locked(str(rt.root), lock_timeout):
        containers, users = _users(rt)
        with user_errors():
            before = {r.id: r for r in store.list()}
        # a container whose image was removed with --force still runs on its layers, which
        # a prune would delete: refuse rather than break it
        orphans = sorted(c.name for c in containers if c.image_id and c.image_id not in before)
        if orphans:
            fail(
                f"container{'s' if len(orphans) > 1 else ''} {', '.join(orphans)} "
                "use layers of images removed with --force, which prune would delete; "
                "remove those containers (or pull their images again) first"
            )
        in_use = set(users) | {c.image for c in containers if c.image}
        with user_errors():
            removed = store.prune(in_use)
    for image_id in removed:
        rec = before.get(image_id)
        names = ", ".join(rec.refs) if rec is not None and rec.refs else "(no name)"
        click.echo(f"deleted: {short_id(image_id)} {names}")
    n = len(removed)
    click.echo(f"{n} image{'s' if n != 1 else ''} removed" if n else "nothing to prune")


def _build_args(items: Sequence[str]) -> dict[str, str]:
    """--build-arg K=V (a bare K takes the value of the environment variable K, as docker
    does; unset, it is left out)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            fail(f"--build-arg {item!r}: expected KEY=VALUE")
        if eq:
            out[key] = value
        elif key in os.environ:
            out[key] = os.environ[key]
    return out


def _build_secrets(items: Sequence[str]) -> dict[str, bytes]:
    """--secret id=ID,src=FILE (or source=FILE, or env=VAR), as docker build takes it: the
    contents by id, read here (a missing file is an error naming it, never its content)."""
    out: dict[str, bytes] = {}
    for item in items:
        fields = dict(f.partition("=")[::2] for f in item.split(",") if f)
        sid = fields.pop("id", "")
        kind = fields.pop("type", "")
        src = fields.pop("src", None) or fields.pop("source", None)
        env = fields.pop("env", None)
        if not sid or fields or kind not in ("", "file", "env") or (src is None) == (env is None):
            fail(
                f"--secret {item!r}: expected id=ID,src=FILE or id=ID,env=VAR"
                + (f" (unknown {', '.join(sorted(fields))})" if fields else "")
            )
        if env is not None:
            if env not in os.environ:
                fail(f"--secret id={sid}: the environment variable {env} is not set")
            out[sid] = os.environ[env].encode("utf-8", "surrogateescape")
            continue
        assert src is not None
        try:
            with open(os.path.expanduser(src), "rb") as f:
                out[sid] = f.read()
        except OSError as e:
            fail(f"--secret id={sid}: cannot read {src}: {e.strerror}")
    return out


@image.command("build")
@click.argument("context")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image (repeatable).")
@click.option(
    "-f",
    "--file",
    "dockerfile",
    default=None,
    help="The Dockerfile (default CONTEXT/Dockerfile); relative to here, else to CONTEXT.",
)
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE (repeatable).")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    help="id=ID,src=FILE or id=ID,env=VAR: a secret for RUN --mount=type=secret (repeatable).",
)
@click.option("--target", default=None, help="Stage to build (default: the last).")
@click.option("--no-cache", is_flag=True, help="Do not use the layer cache.")
@click.option("--pull", is_flag=True, help="Pull the base images even if present.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: progress on stderr, the result (or the error) as JSON on stdout.",
)
@runtime_options
def build(
    context: str,
    tags: tuple[str, ...],
    dockerfile: str | None,
    build_args: tuple[str, ...],
    secrets: tuple[str, ...],
    target: str | None,
    no_cache: bool,
    pull: bool,
    output: str,
    runtime_name: str | None,
    root: str | None,
) -> None:
    """Build an image from a Dockerfile in CONTEXT, step by step with a layer cache."""
    from pyapply.reconciler.view import build_progress as view
    from pyapply.runtime.base import BuildConfig, BuildFailed

    if dockerfile is not None and not os.path.isabs(dockerfile) and os.path.exists(dockerfile):
        # as with docker build, -f is relative to the current directory (else to CONTEXT)
        dockerfile = os.path.abspath(dockerfile)
    config = BuildConfig(
        context=context,
        dockerfile=dockerfile,
        tags=tags,
        args=_build_args(build_args),
        target=target,
        no_cache=no_cache,
        pull=pull,
        secrets=_build_secrets(secrets),
    )
    as_json = output == "json"

    def show(event: BuildEvent) -> None:
        click.echo(view.event_line(event), err=as_json)

    rt = connect(runtime_name, root)
    try:
        with build_display(as_json, f"build {' '.join(tags) or context}", show) as progress:
            result = rt.build_image(config, progress)
    except BuildFailed as e:
        if as_json:
            click.echo(json.dumps(view.failure_json(e), indent=2))
        for line in view.failure_lines(e):
            err(line)
        fail(one_line(str(e)))
    except RuntimeFailure as e:
        fail(one_line(e.message))
    except OSError as e:
        fail(one_line(str(e)))
    finally:
        with contextlib.suppress(Exception):
            rt.close()
    if as_json:
        click.echo(json.dumps(view.result_json(result), indent=2))
    else:
        for line in view.result_lines(result):
            click.echo(line)
