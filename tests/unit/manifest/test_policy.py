"""The policy (reconciler/manifest/policy.py): every rule allowed and denied, located findings, the
built-in policies, policy files and their located errors, and the loader's file guard.

Each test writes a small manifest into a scratch working directory (`here`), loads it with
the real loader and checks it, so that findings name `stack.yaml:line:col` as a user sees
them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support import write

from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.manifest import policy as pol
from pyapply.reconciler.manifest.loader import load
from pyapply.reconciler.manifest.policy import (
    Finding,
    Policy,
    PolicyError,
    RuleSetting,
    check,
    load_policy,
)

RESTRICTED = pol.builtin("restricted")
WARN = pol.builtin("warn")


def stack(service: str, extra: str = "") -> str:
    """A Stack document with one service `web` whose fields are `service` (indented 6)."""
    body = "".join(f"      {line}\n" for line in service.strip("\n").splitlines())
    return (
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: shop}\nspec:\n  services:\n"
        f"    web:\n      image: busybox:1\n{body}{extra}"
    )


def findings(
    here: Path, text: str, policy: Policy = RESTRICTED, files: Mapping[str, str] | None = None
) -> list[str]:
    write(here, {"stack.yaml": text, **(files or {})})
    loaded = load(["stack.yaml"], environ={}, file_guard=policy.file_guard())
    return [str(f) for f in check(loaded, policy)]


def only(policy: Policy, rule: str, setting: RuleSetting) -> Policy:
    """`policy` with every rule allowed except `rule`."""
    rules = {name: RuleSetting("allow") for name in policy.rules}
    return Policy("test", {**rules, rule: setting}, policy.protected)


def test_a_plain_stack_has_no_findings(here: Path) -> None:
    text = stack('command: ["sleep", "1"]\nvolumes: ["data:/data", "./conf:/conf:ro"]')
    text += "  volumes: {data: {}}\n"
    assert findings(here, text) == []


# ---------------------------------------------------------------------------------------------
# Each rule


def test_privileged(here: Path) -> None:
    assert findings(here, stack("privileged: true")) == [
        "stack.yaml:8:7: spec.services.web.privileged: a privileged container has every "
        'capability and the host\'s devices; the policy denies this (rule "privileged")'
    ]
    assert findings(here, stack("privileged: false")) == []
    # a service exempted by name
    exempt = only(RESTRICTED, "privileged", RuleSetting("deny", services=("shop/*",)))
    assert findings(here, stack("privileged: true"), exempt) == []


def test_privileged_hooks_are_asks(here: Path) -> None:
    got = findings(here, stack("post_start: [{command: x, privileged: true}, {command: y}]"))
    assert got == [
        "stack.yaml:8:33: spec.services.web.post_start[0].privileged: a privileged post_start "
        'hook runs with every capability; the policy denies this (rule "privileged")'
    ]


def test_host_namespaces(here: Path) -> None:
    text = stack(
        "network_mode: host\npid: host\nipc: host\nuts: host\nuserns_mode: host\ncgroup: host"
    )
    got = findings(here, text)
    assert [g.split(": ", 2)[1] for g in got] == [
        f"spec.services.web.{f}"
        for f in ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
    ]
    assert got[0] == (
        'stack.yaml:8:21: spec.services.web.network_mode: "network_mode: host" shares the '
        "host's network namespace with the container; the policy denies this "
        '(rule "host_namespaces")'
    )
    allow_net = only(RESTRICTED, "host_namespaces", RuleSetting("deny", ("network",)))
    assert len(findings(here, text, allow_net)) == 5
    # other values than host are not asks
    db = "    db:\n      image: busybox:1\n      ipc: shareable\n"
    assert findings(here, stack("pid: service:db\nipc: service:db\nnetwork_mode: none", db)) == []
    # a namespace of any container of the host is
    got = findings(here, stack("pid: container:monitor"))
    assert got == [
        'stack.yaml:8:12: spec.services.web.pid: "pid: container:monitor" joins the process '
        "namespace of a container that may be outside the stack; the policy denies this "
        '(rule "host_namespaces")'
    ]
    allow = only(RESTRICTED, "host_namespaces", RuleSetting("deny", ("container",)))
    assert findings(here, stack("pid: container:monitor"), allow) == []


def test_devices(here: Path) -> None:
    text = stack(
        'devices: ["/dev/null:/dev/xnull", {source: /dev/zero, target: /dev/xvda}]\n'
        'device_cgroup_rules: ["c *:* rmw"]\ngpus: all'
    )
    got = findings(here, text)
    assert got[0].startswith("stack.yaml:8:17: spec.services.web.devices[0]: device ")
    assert '"/dev/zero" gives the container a host device' in got[1]
    assert "stack.yaml:9:29: spec.services.web.device_cgroup_rules[0]" in got[2]
    assert got[3].startswith("stack.yaml:10:7: spec.services.web.gpus:")
    fuse = only(RESTRICTED, "devices", RuleSetting("deny", ("/dev/null",)))
    assert len(findings(here, text, fuse)) == 3


def test_cap_add(here: Path) -> None:
    text = stack("cap_add: [NET_ADMIN, cap_sys_admin, ALL]\ncap_drop: [ALL]")
    got = findings(here, text)
    assert got == [
        "stack.yaml:8:17: spec.services.web.cap_add[0]: cap_add gives the container capability "
        'NET_ADMIN; the policy denies this (rule "cap_add")',
        "stack.yaml:8:28: spec.services.web.cap_add[1]: cap_add gives the container capability "
        'SYS_ADMIN; the policy denies this (rule "cap_add")',
        'stack.yaml:8:43: spec.services.web.cap_add[2]: cap_add "ALL" gives the container '
        'every capability; the policy denies this (rule "cap_add")',
    ]
    some = only(RESTRICTED, "cap_add", RuleSetting("deny", ("CAP_NET_ADMIN", "sys_admin")))
    assert [g.split(": ")[1] for g in findings(here, text, some)] == [
        "spec.services.web.cap_add[2]"
    ]


def test_bind_mounts_outside_the_manifest_directory(here: Path) -> None:
    (here / "data").mkdir()
    text = stack(
        "volumes:\n"
        "  - ./data:/data\n"
        "  - /srv/app:/app\n"
        "  - ../elsewhere:/x\n"
        "  - {type: bind, source: /etc, target: /hostetc}\n"
        "  - {type: bind, source: ./data, target: /d2}"
    )
    got = findings(here, text)
    rule = only(RESTRICTED, "bind_mounts", RuleSetting("deny"))
    assert findings(here, text, rule) == [g for g in got if "bind_mounts" in g]
    assert [g for g in got if "bind_mounts" in g] == [
        'stack.yaml:10:11: spec.services.web.volumes[1]: bind mount of "/srv/app" is outside '
        'the manifest\'s directory; the policy denies this (rule "bind_mounts")',
        'stack.yaml:11:11: spec.services.web.volumes[2]: bind mount of "../elsewhere" '
        f"(resolved: {here.parent}/elsewhere) is outside the manifest's directory; the policy "
        'denies this (rule "bind_mounts")',
        'stack.yaml:12:32: spec.services.web.volumes[3].source: bind mount of "/etc" is '
        'outside the manifest\'s directory; the policy denies this (rule "bind_mounts")',
    ]
    assert findings(here, stack('volumes_from: ["container:docker-proxy", "db"]'), rule) == [
        'stack.yaml:8:22: spec.services.web.volumes_from[0]: "volumes_from: '
        'container:docker-proxy" mounts what another container of the host mounts; the policy '
        'denies this (rule "bind_mounts")'
    ]
    srv = only(RESTRICTED, "bind_mounts", RuleSetting("deny", ("/srv", str(here.parent))))
    assert [g.split(": ")[1] for g in findings(here, text, srv)] == [
        "spec.services.web.volumes[3].source"
    ]


def test_a_symlink_inside_the_manifest_directory_is_resolved(here: Path) -> None:
    os.symlink("/etc", here / "innocent")
    os.symlink("/etc/hostname", here / "hostname")
    text = stack("volumes: [./innocent:/x]\nsecrets: [s]", "  secrets: {s: {file: ./hostname}}\n")
    got = findings(here, text)
    assert got == [
        'stack.yaml:8:17: spec.services.web.volumes[0]: bind mount of "./innocent" '
        "(resolved: /etc) is outside the manifest's directory; the policy denies this "
        '(rule "bind_mounts")',
        'stack.yaml:10:23: spec.secrets.s.file: secret file "./hostname" (resolved: '
        "/etc/hostname) is outside the manifest's directory; the policy denies this "
        '(rule "outside_files")',
    ]


def test_sensitive_paths(here: Path) -> None:
    text = stack(
        "volumes:\n"
        "  - /var/run/docker.sock:/var/run/docker.sock\n"
        "  - /:/host\n"
        "  - /run:/run\n"
        "  - /var/lib/pyapply/images:/images\n"
        "use_api_socket: true"
    )
    rule = only(RESTRICTED, "sensitive_paths", RuleSetting("deny"))
    got = findings(here, text, rule)
    sock = os.path.realpath("/var/run/docker.sock")
    assert got[0] == (
        'stack.yaml:9:11: spec.services.web.volumes[0]: bind mount of "/var/run/docker.sock"'
        + (f" (resolved: {sock})" if sock != "/var/run/docker.sock" else "")
        + f" exposes the Docker socket ({sock}); the policy denies this "
        '(rule "sensitive_paths")'
    )
    assert 'bind mount of "/" exposes a directory holding the Docker socket' in got[1]
    assert "volumes[2]: bind mount of" in got[2] and "a directory holding" in got[2]
    assert "a path inside pyapply's state root (/var/lib/pyapply)" in got[3]
    assert got[4].startswith(
        'stack.yaml:13:7: spec.services.web.use_api_socket: "use_api_socket" gives'
    )
    # the state root a command runs with, and a policy file's paths, are protected too
    mine = rule.protecting({str(here / "state"): "pyapply's state root"})
    (here / "state").mkdir()
    got = findings(here, stack("volumes: [./state/x:/x]"), mine)
    assert got == [
        'stack.yaml:8:17: spec.services.web.volumes[0]: bind mount of "./state/x" (resolved: '
        f"{here}/state/x) exposes a path inside pyapply's state root ({here}/state); the policy denies this "
        '(rule "sensitive_paths")'
    ]
    # a manifest that itself lives under a protected directory (the agent's copy of a
    # rolled back revision is under the state root) may bind its own files, nothing more
    copy = rule.protecting({str(here.parent): "pyapply's state root"})
    (here / "data").mkdir()
    assert findings(here, stack("volumes: [./data:/data]"), copy) == []
    assert len(findings(here, stack(f"volumes: ['{here.parent}/other:/o']"), copy)) == 1
    # allowed by exact path
    allowed = only(RESTRICTED, "sensitive_paths", RuleSetting("deny", ("/run",)))
    assert len(findings(here, stack("volumes: [/run:/run]"), allowed)) == 0


def test_a_volume_binding_a_host_directory_is_a_bind(here: Path) -> None:
    text = stack(
        "volumes: [etc:/etc2]",
        "  volumes:\n    etc:\n      driver_opts: {type: none, o: bind, device: /etc}\n",
    )
    rule = only(RESTRICTED, "bind_mounts", RuleSetting("deny"))
    assert findings(here, text, rule) == [
        'stack.yaml:11:50: spec.volumes.etc.driver_opts.device: bind mount of "/etc" is '
        'outside the manifest\'s directory; the policy denies this (rule "bind_mounts")'
    ]


def test_outside_files(here: Path) -> None:
    write(here, {"secrets/ok": "x", "app.env": "A=1\n"})
    text = stack(
        "env_file: [app.env, /etc/hostname]\nsecrets: [ok, bad]\nconfigs: [c]",
        "  secrets:\n    ok: {file: ./secrets/ok}\n    bad: {file: /etc/hostname}\n"
        "  configs:\n    c: {file: /etc/hosts}\n",
    )
    got = findings(here, text)
    assert got == [
        'stack.yaml:8:27: spec.services.web.env_file[1]: env file "/etc/hostname" is outside '
        'the manifest\'s directory; the policy denies this (rule "outside_files")',
        'stack.yaml:13:17: spec.secrets.bad.file: secret file "/etc/hostname" is outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")',
        'stack.yaml:15:15: spec.configs.c.file: config file "/etc/hosts" is outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")',
    ]
    etc = only(RESTRICTED, "outside_files", RuleSetting("deny", ("/etc",)))
    assert findings(here, text, etc) == []
    # STACK/* skips the stack's own asks (its secrets' files) as well as its services'
    shop = only(RESTRICTED, "outside_files", RuleSetting("deny", services=("sh*/*",)))
    assert findings(here, text, shop) == []
    web = only(RESTRICTED, "outside_files", RuleSetting("deny", services=("shop/web",)))
    assert [g.split(": ")[1] for g in findings(here, text, web)] == [
        "spec.secrets.bad.file",
        "spec.configs.c.file",
    ]


def test_a_denied_env_file_is_never_read(here: Path) -> None:
    """Its content cannot reach a message (a parse error quotes lines), a log or a container."""
    secret = here.parent / f"{here.name}-secret"
    secret.write_text("TOPSECRET line without equals\nPASSWORD=hunter2\n")
    text = stack(f"env_file: [{secret}]")
    write(here, {"stack.yaml": text})
    # without a guard the loader reads it, and its error message quotes it
    with pytest.raises(Exception, match="TOPSECRET"):
        load(["stack.yaml"], environ={})
    loaded = load(["stack.yaml"], environ={}, file_guard=RESTRICTED.file_guard())
    assert loaded.stacks[0].services[0].environment == ()
    got = [str(f) for f in check(loaded, RESTRICTED)]
    assert len(got) == 1 and "env_file[0]" in got[0] and "TOPSECRET" not in got[0]
    # warn reads it (by hand, the user's own files) but never quotes it: the bad line is
    # located, its text is not shown
    with pytest.raises(ManifestError) as info:
        load(["stack.yaml"], environ={}, file_guard=WARN.file_guard())
    assert [str(p) for p in info.value.problems] == [
        f"{secret}:1:1: cannot be read as KEY=VALUE (the line is not shown: the file is "
        "outside the manifest's directory)"
    ]
    secret.write_text("PASSWORD=hunter2\n")
    loaded = load(["stack.yaml"], environ={}, file_guard=WARN.file_guard())
    assert loaded.stacks[0].services[0].environment == (("PASSWORD", "hunter2"),)
    assert "warning" in str(check(loaded, WARN)[0])
    # an env file inside the manifest's directory is read as before, errors quoted
    write(here, {"app.env": "not valid here\n", "stack.yaml": stack("env_file: [app.env]")})
    with pytest.raises(ManifestError, match='"not valid here" is not a KEY=VALUE line'):
        load(["stack.yaml"], environ={}, file_guard=RESTRICTED.file_guard())


def test_an_include_env_file_outside_its_directory(here: Path) -> None:
    secret = here.parent / f"{here.name}-inc.env"
    secret.write_text("TAG=1\n")
    write(
        here,
        {
            "compose.yaml": f"include:\n  - path: sub/compose.yaml\n    env_file: {secret}\n",
            "sub/compose.yaml": "services:\n  web:\n    image: busybox:${TAG:-0}\n",
        },
    )
    with pytest.raises(ManifestError) as info:
        load([str(here)], environ={}, file_guard=RESTRICTED.file_guard())
    assert [str(p) for p in info.value.problems] == [
        f"{secret}: the env file of an include is outside its directory; the policy denies "
        "reading it"
    ]
    loaded = load([str(here)], environ={}, file_guard=WARN.file_guard())
    assert loaded.stacks[0].services[0].image == "busybox:1"
    assert [str(w) for w in loaded.warnings] == [
        f"warning: {secret}: the env file of an include is outside its directory"
    ]


def test_a_dotenv_symlinked_out_of_the_directory(here: Path) -> None:
    secret = here.parent / f"{here.name}-dotenv"
    secret.write_text("TAG=1\n")
    os.symlink(secret, here / ".env")
    text = stack("environment: {T: '${TAG:-none}'}")
    write(here, {"stack.yaml": text})
    loaded = load(["stack.yaml"], environ={}, file_guard=RESTRICTED.file_guard())
    assert loaded.stacks[0].services[0].environment == (("T", "none"),)  # not read
    assert [str(f) for f in check(loaded, RESTRICTED)] == [
        f'stack.yaml:1:1: the ".env" beside the manifest resolves to "{secret}", outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")'
    ]
    assert findings(here, text, WARN)[0].startswith('stack.yaml:1:1: warning: the ".env"')


def test_security_opt(here: Path) -> None:
    write(here, {"profile.json": '{"defaultAction": "SCMP_ACT_ERRNO"}'})
    text = stack(
        "security_opt:\n"
        "  - seccomp=unconfined\n"
        "  - apparmor=unconfined\n"
        "  - label:disable\n"
        "  - systempaths=unconfined\n"
        "  - no-new-privileges=false\n"
        "  - no-new-privileges:true\n"
        "  - apparmor=my-profile"
    )
    rule = only(RESTRICTED, "security_opt", RuleSetting("deny"))
    got = findings(here, text, rule)
    assert got[0] == (
        'stack.yaml:9:11: spec.services.web.security_opt[0]: "seccomp=unconfined" turns the '
        'seccomp filter off; the policy denies this (rule "security_opt")'
    )
    assert [g.split(": ")[1] for g in got] == [
        f"spec.services.web.security_opt[{i}]" for i in range(5)
    ]
    allowed = only(
        RESTRICTED, "security_opt", RuleSetting("deny", ("seccomp:unconfined", "label=disable"))
    )
    assert len(findings(here, text, allowed)) == 3
    # a profile of one's own (seccomp may be given once per service)
    custom = findings(here, stack("security_opt: ['seccomp:./profile.json']"), rule)
    assert len(custom) == 1 and "replaces the default seccomp profile" in custom[0]
    # a seccomp profile is a host file: outside the directory it is an outside file too
    elsewhere = here.parent / f"{here.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "p.json").write_text('{"defaultAction": "SCMP_ACT_ERRNO"}')
    outside = stack(f"security_opt: ['seccomp={elsewhere}/p.json']")
    files = only(RESTRICTED, "outside_files", RuleSetting("deny"))
    assert f'seccomp profile "{elsewhere}/p.json" is outside' in findings(here, outside, files)[0]


def test_unpinned_images_is_opt_in(here: Path) -> None:
    text = stack("")
    assert findings(here, text) == []
    assert findings(here, text, WARN) == []
    rule = only(RESTRICTED, "unpinned_images", RuleSetting("deny"))
    assert findings(here, text, rule) == [
        'stack.yaml:7:14: spec.services.web.image: image "busybox:1" is not pinned by digest '
        '(NAME@sha256:...); the policy denies this (rule "unpinned_images")'
    ]
    pinned = text.replace("busybox:1", "busybox@sha256:" + "a" * 64)
    assert findings(here, pinned, rule) == []
    local = only(RESTRICTED, "unpinned_images", RuleSetting("deny", ("busybox:*",)))
    assert findings(here, text, local) == []


def test_warn_reports_the_same_asks_as_warnings(here: Path) -> None:
    text = stack("privileged: true\ncap_add: [NET_ADMIN]")
    assert findings(here, text, WARN) == [
        "stack.yaml:8:7: warning: spec.services.web.privileged: a privileged container has "
        'every capability and the host\'s devices (policy rule "privileged")',
        "stack.yaml:9:17: warning: spec.services.web.cap_add[0]: cap_add gives the container "
        'capability NET_ADMIN (policy rule "cap_add")',
    ]


def test_compose_files_merged_name_the_file_each_ask_is_in(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": "services:\n  web:\n    image: busybox:1\n",
            "compose.override.yaml": "services:\n  web:\n    cap_add: [SYS_ADMIN]\n    pid: host\n",
        },
    )
    loaded = load([str(here)], environ={})
    got = [str(f) for f in check(loaded, RESTRICTED)]
    assert got == [
        f"{here}/compose.override.yaml:3:15: services.web.cap_add[0]: cap_add gives the "
        'container capability SYS_ADMIN; the policy denies this (rule "cap_add")',
        f'{here}/compose.override.yaml:4:10: services.web.pid: "pid: host" shares the host\'s '
        'process namespace with the container; the policy denies this (rule "host_namespaces")',
    ]


def test_findings_as_json(here: Path) -> None:
    write(here, {"stack.yaml": stack("privileged: true")})
    found = check(load(["stack.yaml"], environ={}), RESTRICTED)
    assert [f.to_json() for f in found] == [
        {
            "rule": "privileged",
            "action": "deny",
            "severity": "error",
            "stack": "shop",
            "service": "web",
            "message": "a privileged container has every capability and the host's devices; "
            'the policy denies this (rule "privileged")',
            "path": "spec.services.web.privileged",
            "file": "stack.yaml",
            "line": 8,
            "column": 7,
        }
    ]
    plan_schema = json.loads(
        (Path(__file__).parents[3] / "schemas" / "v1" / "plan.schema.json").read_text()
    )
    doc = {"drift": False, "stacks": [], "findings": [f.to_json() for f in found]}
    Draft202012Validator(plan_schema).validate(doc)
    assert isinstance(found[0], Finding)


# ---------------------------------------------------------------------------------------------
# Policy files


def policy_file(here: Path, text: str, name: str = "policy.yaml") -> Policy:
    write(here, {name: text})
    return load_policy(name)


def policy_errors(here: Path, text: str, name: str = "policy.yaml") -> list[str]:
    write(here, {name: text})
    with pytest.raises(PolicyError) as info:
        load_policy(name)
    return [str(p) for p in info.value.problems]


def test_a_policy_file_sets_rules_lists_and_the_default(here: Path) -> None:
    policy = policy_file(
        here,
        """
        apiVersion: pyapply/v1
        kind: Policy
        enforcement: warn
        rules:
          privileged: deny
          cap_add: {action: deny, allow: [NET_BIND_SERVICE]}
          bind_mounts: {allow: [/srv]}
          unpinned_images: {action: warn, allow: ["registry.local:5000/*"]}
        protected_paths: [/run/my.sock]
        """,
    )
    assert policy.rules["privileged"] == RuleSetting("deny")
    assert policy.rules["cap_add"] == RuleSetting("deny", ("NET_BIND_SERVICE",))
    assert policy.rules["bind_mounts"] == RuleSetting("warn", ("/srv",))
    assert policy.rules["devices"] == RuleSetting("warn")  # the enforcement default
    assert policy.rules["unpinned_images"].action == "warn"
    assert policy.protected["/run/my.sock"] == "a path the policy protects"
    text = stack("privileged: true\ncap_add: [NET_BIND_SERVICE, NET_ADMIN]\nvolumes: [/run:/r]")
    write(here, {"stack.yaml": text})
    got = check(load(["stack.yaml"], environ={}), policy)
    assert [(f.rule, f.action, f.path) for f in got] == [
        ("unpinned_images", "warn", "spec.services.web.image"),
        ("privileged", "deny", "spec.services.web.privileged"),
        ("cap_add", "deny", "spec.services.web.cap_add[1]"),
        ("sensitive_paths", "warn", "spec.services.web.volumes[0]"),
        ("bind_mounts", "warn", "spec.services.web.volumes[0]"),
    ]
    # unpinned_images stays opt-in when only `enforcement` is given
    quiet = policy_file(here, "apiVersion: pyapply/v1\nkind: Policy\nenforcement: deny\n")
    assert quiet.rules["unpinned_images"].action == "allow"
    assert quiet.rules["privileged"].action == "deny"


def test_a_policy_file_in_json(here: Path) -> None:
    doc = {"apiVersion": "pyapply/v1", "kind": "Policy", "rules": {"devices": "allow"}}
    policy = policy_file(here, json.dumps(doc, indent=2), "policy.json")
    assert policy.rules["devices"].action == "allow"
    assert policy.rules["privileged"].action == "deny"


def test_policy_file_errors_are_located(here: Path) -> None:
    assert policy_errors(
        here,
        """
        apiVersion: pyapply/v1
        kind: Policy
        enforcement: dny
        rules:
          privileged: {action: deny, allw: []}
          cap_add: {allow: [NET_BIND_SERVCE]}
          bind_mounts: {allow: [srv]}
          host_namespaces: {allow: [net]}
          frob: deny
          devices: 3
        """,
    ) == [
        'policy.yaml:3:14: enforcement: must be one of "allow", "warn" or "deny", got "dny"',
        'policy.yaml:5:30: rules.privileged.allw: unknown field "allw" (did you mean "allow"?)',
        'policy.yaml:6:21: rules.cap_add.allow[0]: "NET_BIND_SERVCE" is not a Linux capability '
        '(did you mean "NET_BIND_SERVICE"?)',
        'policy.yaml:7:25: rules.bind_mounts.allow[0]: must be an absolute path, got "srv"',
        'policy.yaml:8:29: rules.host_namespaces.allow[0]: must be one of "network", "pid", '
        '"ipc", "uts", "userns", "cgroup" or "container", got "net"',
        'policy.yaml:9:3: rules.frob: unknown field "frob"',
        "policy.yaml:10:12: rules.devices: must be a string or a mapping, got a number",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: Policy\n", 'policy.yaml:1:1: missing required field "apiVersion"'),
        ("apiVersion: pyapply/v1\nkind: Stack\n", 'policy.yaml:2:7: kind: must be "Policy"'),
        ("a: [1\n", "policy.yaml:2:1: invalid YAML"),
        ("[1]\n", "policy.yaml:1:1: must be a mapping, got a list"),
        ("apiVersion: pyapply/v1\nkind: Policy\n---\nx: 1\n", "policy.yaml:4:1: a policy"),
        ("", "a policy file holds exactly one document"),
        (
            "apiVersion: pyapply/v1\nkind: Policy\nrules: {devices: {services: [web]}}\n",
            'rules.devices.services[0]: must be STACK/SERVICE, got "web"',
        ),
    ],
)
def test_more_policy_file_errors(here: Path, text: str, expected: str) -> None:
    got = policy_errors(here, text)
    assert any(expected in g for g in got), got


def test_an_unreadable_policy_file(here: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy("missing.yaml")
    assert str(info.value) == "missing.yaml: cannot read the policy: No such file or directory"
    write(here, {"big.yaml": "x" * ((1 << 20) + 1)})
    with pytest.raises(PolicyError, match="at most 1 MiB"):
        load_policy("big.yaml")
    os.mkfifo(here / "fifo.yaml")  # would block a plain open() forever
    with pytest.raises(PolicyError, match=r"fifo\.yaml: a policy must be a regular file"):
        load_policy("fifo.yaml")
    with pytest.raises(PolicyError, match="a policy must be a regular file"):
        load_policy("/dev/zero")
    write(here, {"deep.yaml": "[" * 5000 + "]" * 5000})
    with pytest.raises(PolicyError):
        load_policy("deep.yaml")


def test_the_schema_ships_and_names_every_rule() -> None:
    schema: dict[str, Any] = pol.schema()
    Draft202012Validator.check_schema(schema)
    assert sorted(schema["properties"]["rules"]["properties"]) == sorted(r.name for r in pol.RULES)
    assert RESTRICTED.rules.keys() == WARN.rules.keys() == {r.name for r in pol.RULES}
    # the README's table documents every rule
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    assert all(f"| `{r.name}` |" in readme for r in pol.RULES)


def test_a_thousand_services_are_checked_well_under_a_second(here: Path) -> None:
    services = "".join(
        f"    s{i}:\n      image: busybox:1\n      cap_add: [NET_ADMIN]\n"
        f'      volumes: ["./d{i}:/d", "/srv/x{i}:/x"]\n'
        for i in range(1000)
    )
    text = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: big}\nspec:\n  services:\n"
    write(here, {"stack.yaml": text + services})
    loaded = load(["stack.yaml"], environ={})
    started = time.perf_counter()
    found = check(loaded, RESTRICTED)
    took = time.perf_counter() - started
    assert len(found) == 2000 and took < 1.0, took


def test_the_example_policy_loads() -> None:
    example = Path(__file__).parents[3] / "contrib" / "policy" / "policy.yaml"
    policy = load_policy(str(example))
    assert policy.rules["host_namespaces"] == RuleSetting("deny", ("network",))
    assert policy.rules["devices"] == RuleSetting("deny", (), ("monitoring/node-exporter",))
    assert policy.protected["/run/vault.sock"] == "a path the policy protects"
