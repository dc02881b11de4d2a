"""Commands of the agent: `watch` runs it; `status`, `history`, `sync`, `rollback` and
`resume` talk to it over its UNIX socket. When no agent runs, `history` reads the sqlite
record directly, `rollback` applies the recorded revision itself (under the host lock) and
pins it for the next agent, and `resume` clears the pin; `status` and `sync` need an agent.

"No agent runs" is decided by the agent's lifetime lock (`reconciler.engine.lock.agent_lock`), not
by a socket that does not answer: while an agent holds the state root, these commands wait
(`--agent-wait`) for it to answer, and otherwise say so and exit 1; they never act behind
its back. A busy agent is asked again by the client (`AgentClient`), never taken for none.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any

import click

from pyapply.reconciler.agent.api import AgentClient, AgentError, AgentUnavailable, default_socket
from pyapply.reconciler.agent.history import (
    History,
    HistoryError,
    UnknownRevision,
    materialise,
)
from pyapply.reconciler.cli.agent_hooks import AgentHooks, hook_options
from pyapply.reconciler.cli.agent_web import WebSetup, web_options
from pyapply.reconciler.cli.common import (
    connect,
    connect_any,
    enforce,
    load_or_fail,
    locked,
    policy_or_fail,
    stack_names,
)
from pyapply.reconciler.cli.main import (
    Failure,
    age_key_option,
    err,
    fail,
    output_option,
    policy_option,
    runtime_options,
)
from pyapply.reconciler.core.redact import NO_SECRETS
from pyapply.reconciler.engine.apply import Hooks, apply_all, failed_actions
from pyapply.reconciler.engine.lock import AgentRunning, agent_holder, agent_lock
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    StackResult,
    desired_all,
    redactor_for,
    state_root,
)
from pyapply.reconciler.view.agent_text import history_lines, status_lines
from pyapply.reconciler.view.plan_text import outcome_summary, plan_text


def socket_option(fn: Any) -> Any:
    return click.option(
        "--socket",
        "socket_path",
        envvar="PYAPPLY_SOCKET",
        default=None,
        help="The agent's UNIX socket (default /run/pyapply/agent.sock). Env: PYAPPLY_SOCKET.",
    )(fn)


def _client(socket_path: str | None) -> AgentClient:
    return AgentClient(socket_path or default_socket())


def _call(
    client: AgentClient, method: str, path: str, body: Any = None, timeout: float = 30
) -> Any:
    try:
        status, doc = client.request(method, path, body, timeout=timeout)
    except AgentError as exc:
        fail(str(exc))
    if status >= 400:
        message = doc.get("error") if isinstance(doc, dict) else doc
        fail(f"agent: HTTP {status}: {message}")
    return doc


AGENT_WAIT_S = 30.0


def agent_wait_option(fn: Any) -> Any:
    return click.option(
        "--agent-wait",
        default=AGENT_WAIT_S,
        show_default=True,
        type=click.FloatRange(0, 600),
        help="Seconds to wait for an agent that runs on the state root but does not answer "
        "on the socket (starting, stopping, or on another socket) before giving up.",
    )(fn)


def _ask(
    client: AgentClient,
    method: str,
    path: str,
    root: str,
    wait_s: float,
    body: Any = None,
    timeout: float = 30,
) -> Any | None:
    """The agent's answer; None only when no agent runs on `root` (its lifetime lock is
    free), so that the caller may act itself. While an agent holds `root` but its socket
    does not answer, ask again for up to `wait_s`; then fail: never act behind its back."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return _call(client, method, path, body, timeout)
        except AgentUnavailable:
            try:
                holder = agent_holder(root)
            except OSError as exc:  # e.g. not root: then nothing could be done here either
                fail(f"no agent answers on {client.path}, and {root} cannot be read: {exc}")
            if holder is None:
                return None
            who = f"an agent (pid {holder or '?'}) runs on {root}"
            if time.monotonic() >= deadline:
                fail(
                    f"{who} but does not answer on {client.path} (waited {wait_s:g}s, "
                    "--agent-wait); not acting behind its back: try again, or give its "
                    "--socket"
                )
            if not told:
                err(f"{who}; waiting up to {wait_s:g}s for it to answer on {client.path}")
                told = True
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# watch


@click.command()
@click.argument("path", type=click.Path(exists=True), required=False)
@click.option(
    "--repo",
    default=None,
    help="Fetch this git repository itself (https://, ssh://, user@host:path, file://) "
    "instead of watching PATH. No password in it: see --git-credentials-file.",
)
@click.option(
    "--ref",
    default=None,
    help="With --repo: the branch or tag to follow (default: the remote's default branch), "
    "or a full commit SHA to pin.",
)
@click.option(
    "--path", "subpath", default=None, help="With --repo: the manifests' directory in it."
)
@click.option(
    "--ssh-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With an ssh --repo: the deploy key (private key file).",
)
@click.option(
    "--known-hosts",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With an ssh --repo: the known_hosts file the server's key must be in.",
)
@click.option(
    "--git-credentials-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="With an https --repo: a 0600 file holding `user:password`, a token, or a "
    "git-credentials line. Else PYAPPLY_GIT_USERNAME/PYAPPLY_GIT_PASSWORD or PYAPPLY_GIT_TOKEN.",
)
@click.option(
    "--fetch-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="With --repo: seconds one fetch may take.",
)
@click.option(
    "--keep-trees",
    default=3,
    show_default=True,
    type=click.IntRange(0, 100),
    help="With --repo: old checked-out commits kept besides the current and last good one.",
)
@runtime_options
@socket_option
@policy_option
@age_key_option
@click.option("--interval", default=60.0, show_default=True, help="Resync every S seconds (±10%).")
@click.option("--debounce", default=0.5, show_default=True, help="Quiet time after file events.")
@click.option(
    "--poll",
    default=None,
    type=click.FloatRange(0.1, 86400),
    help="Fallback poll of PATH, seconds (default 10); with --repo, fetch every S seconds "
    "(default 60).",
)
@click.option(
    "--metrics", "metrics_addr", default=None, help="Serve Prometheus metrics on HOST:PORT."
)
@click.option(
    "--log-format", type=click.Choice(["plain", "json"]), default="plain", show_default=True
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Apply revisions that leave a stack that has containers with none.",
)
@click.option("--prune-volumes", is_flag=True, help="Also remove volumes no longer declared.")
@click.option("--parallel", default=8, show_default=True, help="Actions run at once.")
@click.option("--wait-timeout", default=120.0, show_default=True, help="Dependency wait, seconds.")
@click.option("--no-events", is_flag=True, help="Do not follow the runtime's events.")
@click.option(
    "--api-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=600),
    help="Seconds an API client has to send a whole request; slower ones are cut off.",
)
@click.option(
    "--progress-deadline",
    default=None,
    type=click.FloatRange(1, 86400),
    help="Roll a new revision back to the last Healthy one when its apply fails or its "
    "stacks are not Healthy within S seconds of it; pinned until a newer revision arrives.",
)
@hook_options
@web_options
@click.option("-v", "--verbose", is_flag=True, help="Debug logs.")
def watch(
    path: str | None,
    repo: str | None,
    ref: str | None,
    subpath: str | None,
    ssh_key: str | None,
    known_hosts: str | None,
    git_credentials_file: str | None,
    fetch_timeout: float,
    keep_trees: int,
    runtime_name: str | None,
    root: str | None,
    socket_path: str | None,
    policy_arg: str | None,
    interval: float,
    debounce: float,
    poll: float | None,
    metrics_addr: str | None,
    log_format: str,
    allow_empty: bool,
    prune_volumes: bool,
    parallel: int,
    wait_timeout: float,
    no_events: bool,
    api_timeout: float,
    progress_deadline: float | None,
    verbose: bool,
    http_addr: str | None,
    http_token_file: str | None,
    http_read_only: bool,
    http_cert: str | None,
    http_key: str | None,
    **hook_args: Any,
) -> None:
    """Run the GitOps agent on PATH: a directory, a git work tree or a git-sync link; or,
    with --repo, on a git repository it fetches itself."""
    import logging

    from pyapply.reconciler.agent.agent import Agent, AgentOptions
    from pyapply.reconciler.agent.api import Api
    from pyapply.reconciler.agent.logs import setup_logging
    from pyapply.reconciler.agent.sources import Source
    from pyapply.runtime.drivers import open_runtime

    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)
    if (path is None) == (repo is None):
        fail("give either PATH (a directory to watch) or --repo URL (a repository to fetch)")
    if repo is None:
        misplaced = [
            name
            for name, value in (
                ("--ref", ref),
                ("--path", subpath),
                ("--ssh-key", ssh_key),
                ("--known-hosts", known_hosts),
                ("--git-credentials-file", git_credentials_file),
            )
            if value is not None
        ]
        if misplaced:
            fail(f"{', '.join(misplaced)}: only with --repo")
    _outside_watched(
        path,
        repo,
        state_root(root),
        secrets=(
            ("--ssh-key", ssh_key),
            ("--git-credentials-file", git_credentials_file),
            ("--webhook-secret-file", hook_args.get("webhook_secret_file")),
            ("--age-key-file", _age_key_file()),
            ("--http-token-file", http_token_file),
            ("--http-key", http_key),
        ),
        anchors=(
            ("--known-hosts", known_hosts),
            ("--policy", policy_arg if policy_arg and os.path.isfile(policy_arg) else None),
            ("--http-cert", http_cert),
        ),
    )
    hooks = AgentHooks.parse(**hook_args)  # --webhook, --notify
    web = WebSetup.parse(
        http_addr=http_addr,
        http_token_file=http_token_file,
        http_read_only=http_read_only,
        http_cert=http_cert,
        http_key=http_key,
    )
    policy = policy_or_fail(policy_arg, "restricted", root, socket_path or default_socket())
    metrics = None
    if metrics_addr:
        from pyapply.reconciler.agent.metrics import Metrics

        metrics = Metrics()
        try:
            metrics.serve(metrics_addr)
        except (OSError, ValueError) as exc:
            fail(f"--metrics {metrics_addr}: {exc}")

    def rt() -> Any:
        # a swarm manager too: the agent's pass and status speak to its services
        return open_runtime(runtime_name, root=state_root(root))

    fetcher = None
    if repo is not None:
        fetcher = _git_fetcher(
            repo,
            state_root(root),
            ref=ref,
            subpath=subpath,
            poll_s=60.0 if poll is None else poll,
            timeout_s=fetch_timeout,
            keep=keep_trees,
            ssh_key=ssh_key,
            known_hosts=known_hosts,
            credentials_file=git_credentials_file,
            metrics=metrics,
        )
    options = AgentOptions(
        interval_s=interval,
        debounce_s=debounce,
        poll_s=10.0 if poll is None or fetcher is not None else poll,
        allow_empty=allow_empty,
        apply=ApplyOptions(
            prune_volumes=prune_volumes, parallelism=parallel, wait_timeout_s=wait_timeout
        ),
        runtime_events=not no_events,
        policy=policy,
        progress_deadline_s=progress_deadline,
    )
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(agent_lock(state_root(root)))  # one agent per state root
        except AgentRunning as exc:
            fail(f"{exc}: one agent per state root")
        if fetcher is not None:
            try:
                fetcher.prepare()  # under the agent lock: clears what a killed agent left
            except OSError as exc:
                fail(f"git source: cannot prepare {fetcher.base}: {exc}")
            source: Source = fetcher.source()
        else:
            assert path is not None
            source = Source.of(path)
        agent = Agent(source, state_root(root), options, rt, metrics=metrics)
        if fetcher is not None:
            agent.attach_git(fetcher)
        held.enter_context(hooks.running(agent))
        api = Api(agent, socket_path or default_socket(), rt, read_timeout_s=api_timeout)
        held.enter_context(web.running(agent, api))  # the pages; --http
        try:
            api.start()
        except OSError as exc:
            fail(f"cannot serve the API on {api.path}: {exc}")
        agent.install_signals()
        try:
            code = agent.run()
        finally:
            api.stop()
    sys.exit(code)


def _age_key_file() -> str | None:
    """--age-key-file (or SOPS_AGE_KEY_FILE), as its option's check recorded it."""
    from pyapply.reconciler.manifest import sops

    return sops.key_file()


def _outside_watched(
    path: str | None,
    repo: str | None,
    root: str,
    *,
    secrets: tuple[tuple[str, str | None], ...],
    anchors: tuple[tuple[str, str | None], ...],
) -> None:
    """Exit 1 when a key file or a file the agent trusts lies in the tree it syncs: the
    watched directory (and a git-sync link's checkout), or with --repo the agent's clones
    and work trees (and a repository on this host). A secret there would be loaded,
    logged and kept in the history as any file of the tree; a known_hosts file or a
    policy there could be changed by whoever can push. Read once, at start."""
    from pyapply.reconciler.agent.git_rules import local_path, redact_url
    from pyapply.reconciler.agent.sources import Source, inside

    if repo is None:
        assert path is not None
        trees = Source.of(path).trees()
        shown = path
    else:
        trees = [os.path.join(root, "agent", "git")]
        local = local_path(repo)
        if local is not None:
            trees.append(local)
        shown = f"checkout of --repo {redact_url(repo)}" if local is None else local
    for option, given in secrets + anchors:
        if given is None or not any(inside(given, tree) for tree in trees):
            continue
        if (option, given) in secrets:
            fail(
                f"{option} {given} is inside the watched {shown}: a secret kept in the synced "
                "tree would be applied, logged and recorded in the history like any of its "
                "files; keep it outside (e.g. in /etc/pyapply, mode 0600)"
            )
        fail(
            f"{option} {given} is inside the watched {shown}: whoever can push there could "
            "change it; keep it outside"
        )


def _git_fetcher(
    repo: str,
    root: str,
    *,
    credentials_file: str | None,
    **options: Any,
) -> Any:
    """The fetcher of `watch --repo`, or a located error (exit 1) for a bad URL, ref, path
    or credentials."""
    from pyapply.reconciler.agent.git_rules import (
        GitSourceError,
        credentials_from_env,
        read_credentials_file,
    )
    from pyapply.reconciler.agent.git_source import GitFetcher

    try:
        credentials = (
            read_credentials_file(credentials_file, repo)
            if credentials_file is not None
            else credentials_from_env(os.environ, repo)
        )
        return GitFetcher(repo, root, credentials=credentials, **options)
    except GitSourceError as exc:
        fail(f"watch --repo: {exc}")


# ---------------------------------------------------------------------------------------------
# status / sync


def root_option(fn: Any) -> Any:
    return click.option(
        "--root", envvar="PYAPPLY_ROOT", default=None, help="State root. Env: PYAPPLY_ROOT."
    )(fn)


@click.command()
@socket_option
@root_option
@agent_wait_option
@output_option
def status(socket_path: str | None, root: str | None, agent_wait: float, output: str) -> None:
    """The agent's revision, last result, sync status and health."""
    client = _client(socket_path)
    doc = _ask(client, "GET", "/v1/status", state_root(root), agent_wait)
    if doc is None:
        fail(f"no agent runs on {state_root(root)} (nothing answers on {client.path})")
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    for line in status_lines(doc):
        click.echo(line)


@click.command()
@socket_option
@root_option
@agent_wait_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the pass.")
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0, 600, min_open=True),
    help="Seconds to wait for the pass (the agent's limit is 600).",
)
def sync(
    socket_path: str | None, root: str | None, agent_wait: float, wait: bool, timeout: float
) -> None:
    """Ask the agent for a reconcile pass now."""
    path = "/v1/sync" + (f"?wait=true&timeout={timeout:g}" if wait else "")
    client = _client(socket_path)
    doc = _ask(client, "POST", path, state_root(root), agent_wait, timeout=timeout + 10)
    if doc is None:
        fail(f"no agent runs on {state_root(root)} (nothing answers on {client.path})")
    _print_queued(doc, "sync")


def _print_queued(doc: dict[str, Any], what: str) -> None:
    result = doc.get("result")
    if result is None:
        click.echo(f"{what}: queued (pass {doc.get('pass')})")
        return
    click.echo(f"{what}: revision {result['revision']} {result['outcome']}")
    for e in result.get("errors") or []:
        err(f"  error: {e}")
    if result["outcome"] not in ("succeeded",):
        raise Failure(f"{what}: the pass {result['outcome']}")


# ---------------------------------------------------------------------------------------------
# history


def _damaged(exc: HistoryError) -> str:
    """One line for a record the CLI cannot use (it never repairs: the agent does)."""
    text = str(exc)
    if "is damaged" in text:
        return (
            f"the agent's record cannot be used: {text}; `pyapply watch` moves a damaged "
            "database aside and starts a new one"
        )
    return f"the agent's record cannot be used: {text}"


@click.command()
@socket_option
@click.option("--root", envvar="PYAPPLY_ROOT", default=None, help="State root. Env: PYAPPLY_ROOT.")
@click.option(
    "--limit", "-n", default=20, show_default=True, type=click.IntRange(0, 5000), help="Passes."
)
@click.option(
    "--revision",
    default=None,
    help="Only passes of this revision: its id, or an unambiguous prefix of 7+ hex digits.",
)
@output_option
def history(
    socket_path: str | None, root: str | None, limit: int, revision: str | None, output: str
) -> None:
    """The agent's recorded passes (from the agent, else from the state root's sqlite)."""
    records: list[dict[str, Any]]
    query = f"/v1/history?limit={limit}" + (f"&revision={revision}" if revision else "")
    try:
        records = _call(_client(socket_path), "GET", query)["passes"]
    except AgentUnavailable:
        db = os.path.join(state_root(root), "history.db")
        if not os.path.exists(db):
            fail(f"no agent answers and there is no history in {db}")
        try:
            records = [r.to_json() for r in History(state_root(root)).passes(limit, revision)]
        except HistoryError as exc:
            fail(_damaged(exc))
        except UnknownRevision as exc:
            fail(str(exc))
        records = NO_SECRETS.value(records)  # a record of an earlier version: URL passwords
    if output == "json":
        click.echo(json.dumps({"passes": records}, indent=2))
        return
    for line in history_lines(records):
        click.echo(line)


# ---------------------------------------------------------------------------------------------
# rollback / resume


@click.command()
@click.argument("revision", required=False)
@socket_option
@runtime_options
@age_key_option
@agent_wait_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the pass.")
@click.option("--lock-timeout", default=300.0, show_default=True)
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    type=click.Path(),
    help="Swarm, without REVISION: manifest naming the stack to roll back.",
)
@click.option(
    "--stack", "stacks", multiple=True, help="Swarm, without REVISION: the stack to roll back."
)
@click.option(
    "--service",
    "services",
    multiple=True,
    help="Swarm, without REVISION: only these services (default: every one of the stack).",
)
@click.option(
    "--wait-timeout",
    default=120.0,
    show_default=True,
    help="Swarm, without REVISION: seconds to wait for the services to roll back.",
)
def rollback(
    revision: str | None,
    socket_path: str | None,
    runtime_name: str | None,
    root: str | None,
    agent_wait: float,
    wait: bool,
    lock_timeout: float,
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    services: tuple[str, ...],
    wait_timeout: float,
) -> None:
    """Apply REVISION's recorded manifests and pin the agent there until `pyapply resume`.
    REVISION is an id or an unambiguous prefix of at least 7 hex digits.

    On swarm without REVISION (`--runtime swarm --stack NAME`, or -f): put each service of
    the stack back to its previous spec, with Swarm's own rollback (`docker service
    rollback`), as its rollback_config says."""
    if revision is None:
        _swarm_rollback(
            files, stacks, services, socket_path, runtime_name, root, agent_wait, wait_timeout
        )
        return
    if files or stacks or services:
        fail(
            "rollback REVISION applies a whole recorded revision: -f, --stack and --service "
            "are for a swarm rollback to the previous spec, without REVISION"
        )
    client = _client(socket_path)
    doc = _ask(
        client,
        "POST",
        "/v1/rollback" + ("?wait=true" if wait else ""),
        state_root(root),
        agent_wait,
        {"revision": revision},
        timeout=660,
    )
    if doc is None:  # no agent runs on the state root
        _rollback_here(revision, runtime_name, root, lock_timeout)
        return
    click.echo(f"pinned to {doc['revision']} (until `pyapply resume`)")
    _print_queued(doc, "rollback")


def _swarm_rollback(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    services: tuple[str, ...],
    socket_path: str | None,
    runtime_name: str | None,
    root: str | None,
    agent_wait: float,
    wait_timeout: float,
) -> None:
    """`rollback` without a revision: Swarm's own rollback of each service to its previous
    spec. Refused where it would not last or does not exist: under a running agent (its
    next resync would apply the manifests again) and on the runtimes of one host (which
    keep no previous spec: roll back to a revision there)."""
    from pyapply.reconciler.cli import swarm
    from pyapply.runtime.drivers import runs_services

    if not files and not stacks:
        fail(
            "name the REVISION to roll back to (`pyapply history` lists them), or, on swarm, "
            "the stack whose services go back to their previous spec (--stack NAME or -f)"
        )
    names = stack_names(files, stacks, runtime_name=runtime_name)
    rt = connect_any(runtime_name, root)
    if not runs_services(rt):
        rt.close()
        fail(
            f"runtime {rt.name} keeps no previous spec of a service to roll back to: name the "
            "REVISION to roll back to (`pyapply history` lists them)"
        )
    root_dir = state_root(root)
    client = _client(socket_path)
    if _ask(client, "GET", "/v1/status", root_dir, agent_wait) is not None:
        fail(
            f"an agent answers on {client.path}: it would apply the manifests again on its "
            "next resync, undoing a rollback of the services; roll back to a revision "
            "instead (`pyapply rollback REV` pins the agent there)"
        )
    try:
        swarm.rollback(rt, names, services, wait_timeout=wait_timeout)
    finally:
        rt.close()


def _rollback_here(
    revision: str, runtime_name: str | None, root: str | None, lock_timeout: float
) -> None:
    root_dir = state_root(root)
    rt = connect(
        runtime_name,
        root_dir,
        swarm="without an agent, rollback REVISION runs on the runtimes of one host only: "
        "run the agent on the manager (`pyapply watch DIR --runtime swarm`), or put the "
        "services back to their previous spec (`pyapply rollback --runtime swarm --stack "
        "NAME`)",
    )
    try:
        hist = History(root_dir)
        full, subject, files = hist.revision_files(revision)
    except UnknownRevision as exc:
        fail(str(exc))
    except HistoryError as exc:
        fail(_damaged(exc))
    err(f"no agent runs on {root_dir}: applying {full} here and pinning it for the next agent")
    directory = tempfile.mkdtemp(prefix="rollback-", dir=root_dir)
    try:
        materialise(files, directory)
        # by hand, as `apply`: the policy warns (the agent checks its own when it answers)
        policy = policy_or_fail(None, "warn", root_dir)
        loaded = load_or_fail([directory], policy=policy)
        enforce(loaded, policy, "text")
        wanted = desired_all(loaded, revision=full, root=root_dir)
        redactor = redactor_for(wanted)
        try:
            pid = hist.begin(full, redactor.text(subject), "rollback(cli)")
        except HistoryError as exc:
            fail(_damaged(exc))
        errors: list[str] = []

        def shown(result: StackResult) -> None:
            errors.extend(result.plan.errors)
            if result.outcome is not None:
                click.echo(f"stack {result.stack}: {outcome_summary(result.outcome)}")
                errors.extend(failed_actions(result.outcome))

        apply_all(
            rt,
            wanted,
            ApplyOptions(),
            root=root_dir,
            lock=locked(root_dir, lock_timeout),
            hooks=Hooks(on_plan=lambda p: click.echo(plan_text(p, redactor)), on_result=shown),
        )
        errors = redactor.value(errors)
        try:
            hist.finish(pid, "failed" if errors else "succeeded", {}, errors)
            hist.pin(full, "manual")
        except HistoryError as exc:
            fail(_damaged(exc) + " (the rollback itself was applied)")
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    click.echo(f"pinned to {full} (until `pyapply resume`)")
    if errors:
        fail("rollback: " + "; ".join(errors))


@click.command()
@socket_option
@root_option
@agent_wait_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the pass.")
def resume(socket_path: str | None, root: str | None, agent_wait: float, wait: bool) -> None:
    """Unpin the agent: follow the source again."""
    doc = _ask(
        _client(socket_path),
        "POST",
        "/v1/resume" + ("?wait=true" if wait else ""),
        state_root(root),
        agent_wait,
        timeout=660,
    )
    if doc is None:  # no agent runs on the state root
        try:
            History(state_root(root)).pin(None)
        except HistoryError as exc:
            fail(_damaged(exc))
        click.echo("no agent runs: unpinned; the next agent follows the source")
        return
    _print_queued(doc, "resume")
