"""A property-based fuzzer of the loader (Hypothesis): whatever the manifests, `load` either
loads them or raises ManifestError whose every problem is located, and it answers within a
time bound. Never another exception, never a hang.

The documents are made structure-aware: compose files (sometimes pyapply/v1 Stacks) whose
services hold the fields pyapply reads, with values of the right shape or of any other
(huge and whole-number floats, NaN, strings of digits, nested `${...}`), rendered as YAML
by a renderer that picks flow or block style, quoting, tags, anchors, aliases and merge keys
as it goes; some texts are then mutated byte by byte; `.env` and env files come with them,
and sometimes a FIFO or a link to /dev/zero where a manifest is expected.

Runs are bounded and repeatable: derandomized, no example database, a deadline per example,
and a fixed number of examples (1,010) sized to take about 20 s together. PYAPPLY_FUZZ_SCALE=N runs
N times as many (a longer campaign); run with `-s` to see the figures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.manifest import schema
from pyapply.reconciler.manifest.loader import load
from tests.unit.cpu import cpu_scale

pytestmark = pytest.mark.timeout(600)

SCALE = int(os.environ.get("PYAPPLY_FUZZ_SCALE", "1"))
# CPU seconds per example (examples take milliseconds, a hang for ever); CPU time, since the
# machine may be shared. Hypothesis's deadline, in wall-clock time, is set looser for that
# reason, and pytest-timeout ends a run blocked without using CPU (a FIFO read).
BOUND_S = 5.0 * cpu_scale()  # seconds (tests/unit/cpu.py: scaled on a slower host)
PYAPPLY = str(Path(sys.executable).parent / "pyapply")
LOCATED = re.compile(r"^[^\n:]+:\d+:\d+: \S")

ENVIRON = {"A": "a", "B": "80", "EMPTY": "", "N": "100000000000", "U": "", "HOME": "/home/u"}

STATS = {"cases": 0, "loaded": 0, "rejected": 0, "tracebacks": 0, "hangs": 0, "slowest_s": 0.0}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=BOUND_S * 5),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(autouse=True, scope="module")
def _setup() -> Any:
    """Schemas compiled up front (so the deadline measures loading), and no cache of valid
    documents shared with anything else."""
    with tempfile.TemporaryDirectory() as cache:
        old = os.environ.get("PYAPPLY_CACHE_DIR")
        os.environ["PYAPPLY_CACHE_DIR"] = cache
        schema.validator("compose")
        schema.validator("stack")
        yield
        if old is None:
            os.environ.pop("PYAPPLY_CACHE_DIR", None)
        else:
            os.environ["PYAPPLY_CACHE_DIR"] = old
    print(
        f"\nloader fuzz: {STATS['cases']} cases, {STATS['loaded']} loaded, "
        f"{STATS['rejected']} rejected with located errors, {STATS['tracebacks']} other "
        f"exceptions, {STATS['hangs']} over {BOUND_S}s; slowest {STATS['slowest_s']:.3f}s"
    )


# ---------------------------------------------------------------------------------------------
# Values

NAMES = st.sampled_from(["web", "db", "a", "b", "web", "db", "x-ext", "Web", "w eb", "", "0"])
VAR = st.sampled_from(["A", "B", "EMPTY", "N", "U", "UNSET", "1X", ""])
OPS = st.sampled_from([":-", "-", ":?", "?", ":+", "+", "", "!", ":"])

ODD_STRINGS = [
    "80",
    "80:80",
    "127.0.0.1:8080:80/udp",
    "[::1]:80:80",
    "8000-8010:80-90",
    "1-65535",
    "1-65535:1-65535/udp",
    "9" * 4300 + ":80",
    "²",
    "٣:80",
    "1e11",
    "1.0e+11",
    "0x1F",
    "0o17",
    "012",
    "1_000",
    "nan",
    ".nan",
    "inf",
    "-.inf",
    "yes",
    "~",
    "128m",
    "9" * 400 + "g",
    "1m30s",
    "9" * 400 + "s",
    "0.5",
    "-1",
    "db-data:/var/lib/data:ro",
    "/etc/passwd:/x",
    "./a.env",
    "a.env",
    ".env",
    "../../etc/shadow",
    "CMD-SHELL",
    "host-gateway",
    "x=1",
    "$$",
    "$",
    "${",
    "${}",
    "${A",
    "$A$B",
    "#",
    "\\",
    "'",
    '"',
    "\t",
    "\x00",
    "\ufeff",
    "é",
]


@st.composite
def interpolations(draw: st.DrawFn) -> str:
    """`${VAR<op>...}`, nested up to past the loader's limit of 64."""
    depth = draw(st.sampled_from([0, 1, 2, 3, 10, 63, 64, 65, 200]))
    inner = draw(st.sampled_from(["x", "", "$A", "$$", "80", "${B}", "}", "{"]))
    for _ in range(depth):
        inner = "${" + draw(VAR) + draw(OPS) + inner + "}"
    return draw(st.sampled_from(["", "a", "80:"])) + inner


SCALARS = st.one_of(
    st.integers(),
    st.sampled_from([0, 1, -1, 5, 80, 65535, 65536, 1000, 1001, 10**11, 2**63, 10**30]),
    st.floats(),
    st.sampled_from([5.0, 80.0, 0.5, 1e11, float("nan"), float("inf"), -float("inf")]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    interpolations(),
)

ANY = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(NAMES, st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)


def field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right shape, sometimes any value at all."""
    return st.one_of(plausible, plausible, plausible, plausible, plausible, ANY)


PORT = st.one_of(st.integers(-1, 70000), st.sampled_from(ODD_STRINGS[:14]), interpolations())
SERVICE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "image": field(st.sampled_from(["busybox", "registry.local:5000/a/b:1", "", "${IMAGE}"])),
    "command": field(st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=3))),
    "ports": field(
        st.lists(
            st.one_of(
                PORT,
                st.fixed_dictionaries(
                    {"target": PORT},
                    optional={"published": PORT, "host_ip": SCALARS, "protocol": SCALARS},
                ),
            ),
            max_size=3,
        )
    ),
    "environment": field(
        st.one_of(
            st.dictionaries(VAR, SCALARS, max_size=3),
            st.lists(st.sampled_from(["A=1", "B", "C=${A}", "=x"]), max_size=3),
        )
    ),
    "env_file": field(
        st.one_of(
            st.sampled_from(["a.env", ".env", "missing.env", "fifo.env", "zero.env"]),
            st.lists(
                st.one_of(
                    st.sampled_from(["a.env", "fifo.env"]),
                    st.fixed_dictionaries({"path": st.sampled_from(["a.env", "missing.env"])}),
                ),
                max_size=2,
            ),
        )
    ),
    "deploy": field(
        st.fixed_dictionaries(
            {},
            optional={
                "replicas": SCALARS,
                "resources": st.fixed_dictionaries(
                    {},
                    optional={
                        "limits": st.fixed_dictionaries(
                            {}, optional={"cpus": SCALARS, "memory": SCALARS, "pids": SCALARS}
                        )
                    },
                ),
                "update_config": st.fixed_dictionaries(
                    {}, optional={"parallelism": SCALARS, "order": SCALARS}
                ),
                "restart_policy": st.fixed_dictionaries({}, optional={"max_attempts": SCALARS}),
            },
        )
    ),
    "scale": SCALARS,
    "cpus": SCALARS,
    "mem_limit": SCALARS,
    "pids_limit": SCALARS,
    "ulimits": field(
        st.dictionaries(
            st.sampled_from(["nofile", "nproc", "x"]),
            st.one_of(SCALARS, st.fixed_dictionaries({"soft": SCALARS, "hard": SCALARS})),
            max_size=2,
        )
    ),
    "healthcheck": field(
        st.fixed_dictionaries(
            {},
            optional={
                "test": st.one_of(SCALARS, st.lists(st.sampled_from(["CMD", "true"]), max_size=2)),
                "interval": SCALARS,
                "retries": SCALARS,
                "disable": SCALARS,
            },
        )
    ),
    "volumes": field(
        st.lists(
            st.one_of(
                SCALARS,
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["volume", "bind", "tmpfs", "x"]), "target": SCALARS},
                    optional={"source": SCALARS, "read_only": SCALARS},
                ),
            ),
            max_size=2,
        )
    ),
    "networks": field(st.one_of(st.lists(NAMES, max_size=2), st.dictionaries(NAMES, ANY))),
    "depends_on": field(
        st.one_of(
            st.lists(NAMES, max_size=2),
            st.dictionaries(NAMES, st.fixed_dictionaries({"condition": SCALARS}), max_size=2),
        )
    ),
    "extends": field(
        st.one_of(
            NAMES,
            st.fixed_dictionaries(
                {"service": NAMES}, optional={"file": st.sampled_from(["b.yaml", "x", "fifo"])}
            ),
        )
    ),
    "labels": field(st.dictionaries(NAMES, SCALARS, max_size=2)),
    "restart": field(st.sampled_from(["always", "no", "on-failure:3", "unless-stopped", "x"])),
    "stop_grace_period": SCALARS,
    "tmpfs": field(st.sampled_from(["/run", "/run:size=" + "9" * 300 + "m", "run"])),
    "extra_hosts": field(st.lists(st.sampled_from(["h:1.2.3.4", "h:host-gateway", "h"]))),
    "secrets": field(st.lists(st.one_of(NAMES, st.fixed_dictionaries({"source": NAMES})))),
    "profiles": field(st.lists(NAMES, max_size=2)),
    "user": SCALARS,
    "logging": ANY,
    "expose": ANY,
}


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = st.one_of(*[st.sampled_from(["web", "db", "a", "b"])] * 7, NAMES)
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        keys = draw(st.lists(st.sampled_from(sorted(SERVICE_FIELDS)), max_size=4, unique=True))
        svc: dict[str, Any] = {"image": "busybox"}
        for key in keys:
            svc[key] = draw(SERVICE_FIELDS[key])
        if draw(st.integers(0, 9)) == 5:
            svc = draw(ANY)
        out[name] = svc
    return out


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {"services": draw(services())}
    if draw(st.booleans()):
        doc["name"] = draw(st.one_of(st.just("t"), SCALARS))
    for section in ("networks", "volumes", "secrets", "configs"):
        if draw(st.integers(0, 4)) == 2:
            doc[section] = draw(
                st.dictionaries(
                    NAMES,
                    st.one_of(
                        st.none(),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "external": SCALARS,
                                "file": st.sampled_from(["a.env", "fifo.env", "/etc/shadow"]),
                                "internal": SCALARS,
                            },
                        ),
                        ANY,
                    ),
                    max_size=2,
                )
            )
    if draw(st.integers(0, 5)) == 3:
        doc["include"] = draw(st.lists(st.sampled_from(["b.yaml", "fifo", "zero.yaml", "x"])))
    if draw(st.integers(0, 5)) == 3:
        return {"apiVersion": "pyapply/v1", "kind": "Stack", "metadata": {"name": "t"}, "spec": doc}
    if draw(st.integers(0, 20)) == 10:
        return draw(ANY)
    return doc


# ---------------------------------------------------------------------------------------------
# YAML with random syntax

TAGS = ["!!int", "!!float", "!!str", "!!bool", "!!null", "!reset", "!override", "!!binary", "!x"]
PLAIN = re.compile(r"[A-Za-z0-9_./+-][A-Za-z0-9_./:+ -]*")


def quote(text: str) -> str:
    """A double-quoted YAML scalar. JSON's escapes are YAML's, but YAML has no surrogate
    pairs: what is not printable is escaped one character at a time, the rest left as is."""
    return "".join(
        c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        for c in json.dumps(text, ensure_ascii=False)
    )


class Renderer:
    """Writes a value as YAML, drawing each stylistic choice from Hypothesis."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.anchors: list[str] = []  # anchors of nodes written in full
        self.open: list[str] = []  # anchors of nodes being written (an alias makes a loop)

    def chance(self, one_in: int) -> bool:
        # the middle value: Hypothesis favours the ends of a range (and shrinks towards 0)
        return self.draw(st.integers(0, one_in - 1)) == one_in // 2

    def prefix(self, value: Any) -> tuple[str, str]:
        """An anchor and/or a tag before a node, sometimes; and the anchor's name ("" if
        none), to pass to `done` once the node is written."""
        out = name = ""
        if (isinstance(value, dict | list) and self.chance(4)) or self.chance(30):
            name = f"a{len(self.anchors) + len(self.open)}"
            self.open.append(name)
            out += f"&{name} "
        if self.chance(60):
            out += self.draw(st.sampled_from(TAGS)) + " "
        return out, name

    def done(self, name: str) -> None:
        if name:
            self.open.remove(name)
            self.anchors.append(name)

    def pick(self) -> str | None:
        """An anchor to refer to: mostly of a finished node, rarely of an enclosing one."""
        pool = self.open if self.open and self.chance(15) else self.anchors
        return self.draw(st.sampled_from(pool)) if pool else None

    def alias(self) -> str | None:
        name = self.pick() if self.chance(12) else None
        return "*" + name if name else None

    def scalar(self, value: Any) -> str:
        if value is None:
            return self.draw(st.sampled_from(["null", "~", ""]))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            if value != value:
                return ".nan"
            if value in (float("inf"), -float("inf")):
                return ".inf" if value > 0 else "-.inf"
            return repr(value)
        if isinstance(value, int):
            return str(value) if abs(value) < 10**4000 else "1"
        text = str(value)
        if PLAIN.fullmatch(text) and not text.endswith(" ") and self.chance(2):
            return text
        if text.isprintable() and "'" not in text and self.chance(3):
            return f"'{text}'"
        return quote(text)

    def flow(self, value: Any) -> str:
        alias = self.alias()
        if alias:
            return alias
        pre, name = self.prefix(value)
        if isinstance(value, dict):
            merge = self.pick() if self.chance(8) else None
            items = [f"<<: *{merge}"] if merge else []
            items += [f"{self.key(k)}: {self.flow(v)}" for k, v in value.items()]
            out = pre + "{" + ", ".join(items) + "}"
        elif isinstance(value, list):
            out = pre + "[" + ", ".join(self.flow(v) for v in value) + "]"
        else:
            out = pre + self.scalar(value)
        self.done(name)
        return out

    def key(self, key: Any) -> str:
        text = str(key)
        return text if PLAIN.fullmatch(text) and ":" not in text else quote(text)

    def block(self, value: Any, indent: int) -> list[str]:
        """Lines of a block mapping or sequence at `indent` spaces."""
        pad = " " * indent
        lines: list[str] = []
        if isinstance(value, dict):
            for k, v in value.items():
                lines += self.entry(f"{pad}{self.key(k)}:", v, indent)
            merge = self.pick() if self.chance(10) else None
            if merge:
                lines.append(f"{pad}<<: *{merge}")
        else:
            for v in value:
                lines += self.entry(f"{pad}-", v, indent)
        return lines

    def entry(self, head: str, value: Any, indent: int) -> list[str]:
        if isinstance(value, dict | list) and value and self.chance(2):
            pre, name = self.prefix(value)
            lines = [f"{head} {pre}".rstrip(), *self.block(value, indent + 2)]
            self.done(name)
            return lines
        return [f"{head} {self.flow(value)}"]

    def document(self, value: Any) -> str:
        if isinstance(value, dict) and value and not self.chance(5):
            return "\n".join(self.block(value, 0)) + "\n"
        return self.flow(value) + "\n"


MUTATIONS = "[]{}:,-&*!|>'\"#%@`\n\t ${}?<"


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """The text with a few random edits: inserted YAML punctuation, cut spans, repeated lines."""
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            text = text[:at] + draw(st.text(MUTATIONS, min_size=1, max_size=3)) + text[at:]
        elif kind == 1:
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
    return text


@st.composite
def dotenvs(draw: st.DrawFn) -> str:
    line = st.one_of(
        st.sampled_from(
            [
                "A=1",
                "export B='x'",
                'C="multi',
                'line"',
                "D=${A:-${B}}",
                "E=${UNSET:?no}",
                'F="\\"esc\\n"',
                "G='unterminated",
                "# comment",
                "=x",
                "H",
                "I=a #c",
                "J=${",
                "K=$$",
                "A=${A}${A}${A}${A}",
            ]
        ),
        st.text(max_size=15),
        interpolations().map(lambda s: "L=" + s),
    )
    return "\n".join(draw(st.lists(line, max_size=8))) + "\n"


# ---------------------------------------------------------------------------------------------
# The properties


def special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "dir":
        path.mkdir()


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    """Files to write: path -> text, or "fifo"/"zero"/"dir" for special files. A compose
    project in app/, and beside it x.yaml (read as a manifest of its own, since only a
    directory holding a compose file is read as a project and nothing else)."""
    files: dict[str, Any] = {}
    renderer = Renderer(draw)
    text = renderer.document(draw(documents()))
    if draw(st.integers(0, 3)) == 2:
        text = draw(mutated(text))
    files["app/compose.yaml"] = text
    if draw(st.integers(0, 3)) == 2:
        files["app/b.yaml"] = Renderer(draw).document({"services": draw(services())})
    if draw(st.booleans()):
        files["app/.env"] = draw(dotenvs())
    if draw(st.booleans()):
        files["app/a.env"] = draw(dotenvs())
    files["app/fifo.env"] = "fifo"
    files["app/zero.env"] = "zero"
    odd = draw(st.sampled_from(["", "fifo", "zero", "dir", "text"]))
    if odd == "text":
        files["x.yaml"] = Renderer(draw).document(draw(documents()))
    elif odd:
        files["x.yaml"] = odd
    return files


def write_tree(root: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if content in ("fifo", "zero", "dir"):
            special(root / name, content)
        else:
            (root / name).write_text(content, encoding="utf-8", errors="surrogatepass")


def check_load(files: dict[str, Any]) -> list[str]:
    """The property: a clean load, or only located errors; in time. Returns the errors."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root, files)
        started = time.process_time()
        try:
            load([str(root)], environ=dict(ENVIRON))
            errors: list[str] = []
        except ManifestError as e:
            unlocated = [str(p) for p in e.problems if p.location is None]
            assert not unlocated, unlocated
            errors = [str(p) for p in e.problems]
            assert errors
        except Exception:
            STATS["tracebacks"] += 1
            raise
        finally:
            STATS["cases"] += 1
        elapsed = time.process_time() - started
    STATS["loaded" if not errors else "rejected"] += 1
    STATS["slowest_s"] = max(STATS["slowest_s"], elapsed)
    STATS["hangs"] += elapsed >= BOUND_S
    assert elapsed < BOUND_S, f"{elapsed:.2f}s"
    return errors


@fuzz_settings(600)
@given(trees())
def test_fuzz_compose_trees(files: dict[str, Any]) -> None:
    check_load(files)


@fuzz_settings(200)
@given(st.text(MUTATIONS + "abk0123456789", max_size=300))
def test_fuzz_raw_yaml(text: str) -> None:
    """Text made mostly of YAML's punctuation: the parser's error paths."""
    check_load({"compose.yaml": text})


@fuzz_settings(150)
@given(dotenvs(), st.sampled_from(["${A}", "${D:-x}", "${L:-${E}}", "$K"]))
def test_fuzz_dotenv(env: str, image: str) -> None:
    check_load({".env": env, "compose.yaml": f'name: t\nservices: {{web: {{image: "{image}"}}}}\n'})


# ---------------------------------------------------------------------------------------------
# The same through the command line, on a sample


def test_command_line_on_a_sample(tmp_path: Path) -> None:
    """`pyapply validate -f`: exit 1, a located first line, no traceback, for ten cases
    the loader rejects in-process (gathered here by Hypothesis, derandomized)."""
    sample: list[dict[str, Any]] = []

    @fuzz_settings(60)
    @given(trees())
    def collect(files: dict[str, Any]) -> None:
        if check_load(files) and len(sample) < 10:
            sample.append(files)

    collect()
    assert len(sample) == 10, "too few rejected cases collected"
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
    env = {**os.environ, **ENVIRON, "PYAPPLY_CACHE_DIR": str(tmp_path / "cache")}
    for i, files in enumerate(sample):
        root = tmp_path / f"case{i}"
        root.mkdir()
        write_tree(root, files)
        out = run(
            [PYAPPLY, "validate", "-f", root.name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        first = out.stderr.splitlines()[0] if out.stderr else ""
        assert out.returncode == 1, (files, out)
        assert LOCATED.match(first) and first.startswith(f"case{i}/"), (files, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout, (files, out.stderr)
