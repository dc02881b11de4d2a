"""No manifest can crash or stall the loader (issue 17, items 7-9): every case here once hung
it, ate gigabytes or ended in a traceback. Each now gives its exact located error (or loads
cleanly) well within a time bound.

The bounds are correctness bounds against hangs, not benchmarks: measured generously, in CPU
time (the machine running the suite may be shared), they only fail when the loader does work
out of proportion to its input. pytest-timeout stops a test that hangs outright (a FIFO read
blocks without using CPU) instead of letting it stall the suite. The limits themselves live in reconciler/manifest/yamlpos.py ("Limits").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import write
from yaml.nodes import Node

from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.manifest import schema, yamlpos
from pyapply.reconciler.manifest.interpolate import parse_dotenv
from pyapply.reconciler.manifest.loader import load
from tests.unit.cpu import cpu_scale

pytestmark = pytest.mark.timeout(60)

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
# CPU seconds: far above what these take (under 1 s on the reference host), far below a
# hang (the quadratic blow-ups these guard against take minutes); scaled on a
# slower host (tests/unit/cpu.py)
BOUND_S = 5.0 * cpu_scale()

HEAD = "name: t\nservices:\n  web:\n    image: busybox\n"


@pytest.fixture(autouse=True, scope="module")
def _compiled_schema() -> None:
    """Compile the schema validators once, so that the time bounds measure loading only."""
    schema.validator("compose")
    schema.validator("stack")


@pytest.fixture(autouse=True)
def _no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Documents are validated every time, never found in a cache of valid ones."""
    monkeypatch.setenv("PYAPPLY_CACHE_DIR", str(tmp_path / "cache"))


def outcome(paths: list[str]) -> list[str]:
    """The loader's errors for `paths` (empty when it loads), checked to come in time."""
    started = time.process_time()
    try:
        load(paths, environ={})
        errors: list[str] = []
    except ManifestError as e:
        errors = [str(p) for p in e.problems]
    elapsed = time.process_time() - started
    assert elapsed < BOUND_S, f"loading took {elapsed:.2f}s"
    return errors


def one_file(here: Path, text: str, name: str = "compose.yaml") -> list[str]:
    (here / name).write_text(text)
    return outcome([name])


# ---------------------------------------------------------------------------------------------
# Item 7: stalled or blown up by one file


def test_merge_key_bomb(here: Path) -> None:
    """Each level merges the one before three times: 3^28 merges from about 600 bytes."""
    lines = ["name: t", "x-0: &0 {}"]
    lines += [f"x-{i}: &{i} {{<<: [*{i - 1}, *{i - 1}, *{i - 1}]}}" for i in range(1, 28)]
    lines += ["services: {web: {image: busybox, labels: {<<: *27}}}"]
    text = "\n".join(lines) + "\n"
    assert len(text) < 1024
    # at the list of merge sources of x-10, the first value that expands too far
    assert one_file(here, text) == [
        f"compose.yaml:12:16: aliases or merge keys expand this value past "
        f"{yamlpos.MAX_NODES} values in the file"
    ]


def test_alias_fan_out_of_one_megabyte(here: Path) -> None:
    """A thousand-item anchor referred to 250,000 times: 250 million values from 1 MB. Values
    are counted as they are parsed, before any node is built: stopped at the 100,001st."""
    text = (
        HEAD
        + "x-a: &a ["
        + ",".join(["v"] * 1000)
        + "]\nx-b: ["
        + ",".join(["*a"] * 250_000)
        + "]\n"
    )
    assert len(text) > 750_000
    before = 13  # 8 scalars, 5 collections and a thousand items come before the aliases
    first_too_many = yamlpos.MAX_NODES + 1 - 1000 - before
    assert one_file(here, text) == [
        f"compose.yaml:6:{7 + 3 * (first_too_many - 1)}: the file holds more than "
        f"{yamlpos.MAX_NODES} values: split it into several files"
    ]


def test_alias_fan_out_of_ten_levels(here: Path) -> None:
    """Ten items, ten aliases of those, ten of those...: 10^10 values from 300 bytes. x-4,
    on line 9, is the first to expand past the limit (to 111,111 values)."""
    lines = [HEAD.rstrip("\n"), "x-0: &a0 [" + ",".join(["x"] * 10) + "]"]
    lines += [f"x-{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    assert one_file(here, "\n".join(lines) + "\n") == [
        f"compose.yaml:9:6: aliases or merge keys expand this value past {yamlpos.MAX_NODES} "
        "values in the file"
    ]


def test_fifo_in_a_folder(here: Path) -> None:
    write(here, {"dir/a.yaml": HEAD})
    os.mkfifo(here / "dir" / "x.yaml")
    assert outcome(["dir"]) == [
        "dir/x.yaml:1:1: not a regular file: a manifest, .env or env_file must be an ordinary file"
    ]


def test_fifo_named_with_f(here: Path) -> None:
    os.mkfifo(here / "x.yaml")
    assert outcome(["x.yaml"]) == [
        "x.yaml:1:1: not a regular file: a manifest, .env or env_file must be an ordinary file"
    ]


def test_yaml_symlink_to_dev_zero(here: Path) -> None:
    write(here, {"dir/a.yaml": HEAD})
    (here / "dir" / "x.yaml").symlink_to("/dev/zero")
    assert outcome(["dir"]) == [
        "dir/x.yaml:1:1: not a regular file: a manifest, .env or env_file must be an ordinary file"
    ]


def test_file_over_the_size_limit_is_read_no_further(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(here, {"big.yaml": HEAD + "#" * yamlpos.MAX_FILE_BYTES + "\n"})
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)
    assert outcome(["big.yaml"]) == [
        "big.yaml:1:1: the file is larger than 4 MiB, the most one may hold"
    ]
    assert sum(reads) == yamlpos.MAX_FILE_BYTES + 1


def test_file_at_the_size_limit_loads(here: Path) -> None:
    text = HEAD + "#" * (yamlpos.MAX_FILE_BYTES - len(HEAD) - 1) + "\n"
    assert len(text.encode()) == yamlpos.MAX_FILE_BYTES
    assert one_file(here, text) == []


def test_dotenv_and_env_file_must_be_regular_files(here: Path) -> None:
    write(here, {"a/compose.yaml": HEAD, "b/compose.yaml": HEAD + "    env_file: [z.env, f.env]\n"})
    os.mkfifo(here / "a" / ".env")
    os.mkfifo(here / "b" / "f.env")
    (here / "b" / "z.env").symlink_to("/dev/zero")
    sentence = "not a regular file: a manifest, .env or env_file must be an ordinary file"
    assert outcome(["a"]) == [f"a/.env:1:1: {sentence}"]
    assert outcome(["b"]) == [
        f'b/compose.yaml:5:16: services.web.env_file[0]: env file "b/z.env": {sentence}',
        f'b/compose.yaml:5:23: services.web.env_file[1]: env file "b/f.env": {sentence}',
    ]


def test_a_directory_named_dotenv_is_not_read(here: Path) -> None:
    """A virtualenv is often called .env: not meant as a file of variables."""
    write(here, {"compose.yaml": HEAD, ".env/bin/python": ""})
    assert outcome(["compose.yaml"]) == []


def test_dotenv_unterminated_quote_is_linear(here: Path) -> None:
    write(here, {"compose.yaml": HEAD, ".env": 'A="\n' + "B=1\n" * 3000})
    assert outcome(["compose.yaml"]) == ['.env:1:1: unterminated " quote']
    started = time.process_time()
    values, problems = parse_dotenv('A="\n' + "B=some value\n" * 200_000)
    assert time.process_time() - started < BOUND_S
    assert (values, [(p.line, p.message) for p in problems]) == ({}, [(1, 'unterminated " quote')])


def test_dotenv_doubling_is_bounded() -> None:
    """`A=${A}${A}` on each line doubles A: 40 lines would be 8 TB."""
    started = time.process_time()
    values, problems = parse_dotenv("A=xxxxxxxx\n" + "A=${A}${A}\n" * 40)
    assert time.process_time() - started < BOUND_S
    assert len(values["A"]) == 8 * 2**20  # line 21; line 22 would pass 16 Mi characters
    message = (
        f"A: variables expand to more than {yamlpos.MAX_EXPANDED_CHARS} characters in all "
        "(a long value used many times?)"
    )
    assert [(p.line, p.message) for p in problems] == [(line, message) for line in range(22, 42)]


def test_long_variable_used_many_times(here: Path) -> None:
    write(here, {".env": "BIG=" + "x" * 1_000_000 + "\n"})
    entries = [f'l{i}: "${{BIG}}"' for i in range(1000)]
    errors = one_file(here, HEAD + "    labels: {" + ", ".join(entries) + "}\n")
    # 16 labels of a million characters fit in 16 Mi; the 17th and all after it do not
    column = len("    labels: {" + ", ".join(entries[:16]) + ", l16: ") + 1
    assert errors[0] == (
        f"compose.yaml:5:{column}: services.web.labels.l16: variables expand to more than "
        f"{yamlpos.MAX_EXPANDED_CHARS} characters in all (a long value used many times?)"
    )
    assert len(errors) == 1000 - 16


def test_dotenv_quote_spanning_lines_still_works() -> None:
    text = 'A="one\nt\\"wo\nthree" # c\nB=${A}x\nC=\'x\ny\'\n'
    assert parse_dotenv(text) == (
        {"A": 'one\nt"wo\nthree', "B": 'one\nt"wo\nthreex', "C": "x\ny"},
        [],
    )


# ---------------------------------------------------------------------------------------------
# Item 8: tracebacks instead of located errors


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("deploy: {replicas: !!int 2}", []),
        ("cpus: !!float 1", []),
        (
            "deploy: {replicas: !!int abc}",
            [
                'compose.yaml:5:24: "abc" is not an integer',
                "compose.yaml:5:24: services.web.deploy.replicas: must be an integer, got a string",
            ],
        ),
        (
            "deploy: {replicas: !!int ''}",
            [
                'compose.yaml:5:24: "" is not an integer',
                "compose.yaml:5:24: services.web.deploy.replicas: must be an integer, got a string",
            ],
        ),
        (
            "cpus: !!float x",
            [
                'compose.yaml:5:11: "x" is not a number',
                'compose.yaml:5:11: services.web.cpus: must be a number of CPUs such as 0.5 or "2", '
                'got "x"',
            ],
        ),
        ("read_only: !!bool maybe", ['compose.yaml:5:16: "maybe" is not true or false']),
    ],
)
def test_explicit_tags(here: Path, field: str, expected: list[str]) -> None:
    assert one_file(here, HEAD + f"    {field}\n") == expected


def test_whole_number_floats_in_ports_and_ulimits(here: Path) -> None:
    assert one_file(here, HEAD + "    ports: [80.0]\n    ulimits: {nofile: 1.0}\n") == [
        "compose.yaml:5:13: services.web.ports[0]: must be a string, an integer or a mapping, "
        "got 80.0",
        "compose.yaml:6:23: services.web.ulimits.nofile: must be an integer or a mapping, got 1.0",
    ]


def test_host_port_of_4300_digits(here: Path) -> None:
    digits = "9" * 4300
    shown = '"' + "9" * 100 + '..." (4303 characters)'
    assert one_file(here, HEAD + f'    ports: ["{digits}:80"]\n') == [
        f"compose.yaml:5:13: services.web.ports[0]: {shown} is not a valid port mapping"
    ]
    assert one_file(here, HEAD + f"    ports: [{digits}0]\n") == [
        "compose.yaml:5:13: a number of 4301 digits is too long",
        "compose.yaml:5:13: services.web.ports[0]: "
        + '"'
        + "9" * 100
        + '..." (4301 characters) is not a valid port mapping',
    ]
    assert one_file(here, HEAD + f'    ports: [{{target: 80, published: "{digits}"}}]\n') == [
        "compose.yaml:5:13: services.web.ports[0]: published port "
        + '"'
        + "9" * 100
        + '..." (4300 characters) is not a port number or a range'
    ]


DEEP = f"nested more than {yamlpos.MAX_DEPTH} levels deep (counting what aliases and merge keys bring in)"


@pytest.mark.parametrize("levels", [500, 1000, 100_000])
def test_deep_nesting(here: Path, levels: int) -> None:
    """Located at the first value past the limit, level 65 (the document is level 1), while
    parsing, before any node is built. libyaml has a limit of its own, 1,000 levels, which
    its scanner meets first in a flow list that deep (it reads ahead): located too."""
    over = yamlpos.MAX_DEPTH + 1
    flow = HEAD + "    x-a: " + "[" * levels + "]" * levels + "\n"  # the first "[" is level 4
    assert one_file(here, flow) == [
        f"compose.yaml:5:{10 + over - 4}: {DEEP}"
        if levels < 1000
        else "compose.yaml:5:1007: invalid YAML: exceeded maximum nesting depth "
        "(while increasing flow level)"
    ]
    mapping = HEAD + "x-a: " + "{a: " * levels + "1" + "}" * levels + "\n"  # "{" is level 2
    assert one_file(here, mapping) == [f"compose.yaml:5:{6 + 4 * (over - 2)}: {DEEP}"]
    block = HEAD + "x-a:\n  " + "- " * levels + "x\n"
    assert one_file(here, block) == [f"compose.yaml:6:{3 + 2 * (over - 2)}: {DEEP}"]


def test_nesting_at_the_limit_loads(here: Path) -> None:
    levels = yamlpos.MAX_DEPTH - 4  # x-a sits 1 level down; the document is 1 level itself
    text = HEAD + "x-a: " + "[" * levels + "]" * levels + "\n"
    assert one_file(here, text) == []


def test_alias_chain_of_500(here: Path) -> None:
    """x-62 is the first to go too deep, through its alias of x-61 (located at that anchor:
    x-61 is written on line 66)."""
    lines = [HEAD.rstrip("\n"), "x-0: &a0 [1]"]
    lines += [f"x-{i}: &a{i} [*a{i - 1}]" for i in range(1, 500)]
    assert one_file(here, "\n".join(lines) + "\n") == [f"compose.yaml:66:7: {DEEP}"]


def test_merge_key_chain_of_500(here: Path) -> None:
    lines = [HEAD.rstrip("\n"), "x-0: &a0 {k0: 1}"]
    lines += [f"x-{i}: &a{i} {{<<: *a{i - 1}, k{i}: 1}}" for i in range(1, 500)]
    assert one_file(here, "\n".join(lines) + "\n") == [f"compose.yaml:66:7: {DEEP}"]


def test_interpolation_nested_500_deep(here: Path) -> None:
    image = "${U:-" * 500 + "busybox" + "}" * 500
    assert one_file(here, f'name: t\nservices: {{web: {{image: "{image}"}}}}\n') == [
        "compose.yaml:2:25: services.web.image: invalid interpolation: more than "
        f'{yamlpos.MAX_DEPTH} levels of "${{...}}" inside one another'
    ]
    fine = "${U:-" * 10 + "busybox" + "}" * 10
    assert one_file(here, f'name: t\nservices: {{web: {{image: "{fine}"}}}}\n') == []


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_extends_chain_of_1000_services_loads(here: Path, order: str) -> None:
    n = 1000
    lines = ["name: t", "services:", f"  s{n - 1}: {{image: busybox}}"]
    links = [f"  s{i}: {{extends: s{i + 1}}}" for i in range(n - 1)]
    lines += reversed(links) if order == "forward" else links
    (here / "compose.yaml").write_text("\n".join(lines) + "\n")
    started = time.process_time()
    loaded = load(["compose.yaml"], environ={})
    assert time.process_time() - started < 3 * BOUND_S  # 1,000 services: the largest case here
    assert len(loaded.stacks[0].services) == n
    assert {s.image for s in loaded.stacks[0].services} == {"busybox"}


def test_extends_cycle_of_500_services(here: Path) -> None:
    lines = ["name: t", "services:"]
    lines += [f"  s{i}: {{image: busybox, extends: s{(i + 1) % 500}}}" for i in range(500)]
    # resolving s0 stops at s64, s65 at s129, ...: each chain cut where it gets too long
    assert one_file(here, "\n".join(lines) + "\n") == [
        f"compose.yaml:{3 + end}:{23 + len(str(end))}: services.s{end}.extends: extends chain "
        f"of more than {yamlpos.MAX_DEPTH} services: s{i} -> s{i + 1} -> s{i + 2} -> ... -> s{end}"
        for i in range(0, 455, 65)
        for end in [i + 64]
    ]


def test_include_chain_deeper_than_the_limit(here: Path) -> None:
    files = {"compose.yaml": "name: t\ninclude: [i1.yaml]\nservices: {web: {image: busybox}}\n"}
    for i in range(1, 100):
        files[f"i{i}.yaml"] = f"include: [i{i + 1}.yaml]\nservices: {{s{i}: {{image: busybox}}}}\n"
    files["i100.yaml"] = "services: {s100: {image: busybox}}\n"
    write(here, files)
    assert outcome(["compose.yaml"]) == [
        f"i{yamlpos.MAX_DEPTH - 1}.yaml:1:11: include[0]: includes nested more than "
        f"{yamlpos.MAX_DEPTH} files deep"
    ]


def test_port_ranges_count_against_the_bound_on_values(here: Path) -> None:
    """A range is as many ports as it spans: 3,000 entries of "1-65535" are 196 million
    ports from 30 KB. Found by reading the loader for what else expands."""
    ports = ",".join(['"1-65535"'] * 3000)
    assert one_file(here, HEAD + f"    ports: [{ports}]\n") == [
        "compose.yaml:5:23: services.web.ports[1]: port ranges here bring the ports published "
        f"by these manifests past {yamlpos.MAX_NODES}"
    ]


def test_many_host_addresses_for_one_port_stay_linear(here: Path) -> None:
    """Each published port is looked up among those before it, not compared with each."""
    ports = ",".join(f'"127.0.{i // 250}.{i % 250}:80:80"' for i in range(30_000))
    assert one_file(here, HEAD + f"    ports: [{ports}]\n") == []
    clash = '["127.0.0.1:1:80", "127.0.0.1:2:80", "0.0.0.0:1:80", "127.0.0.2:2:80", "2:80"]'
    assert one_file(here, HEAD + f"    ports: {clash}\n") == [
        "compose.yaml:5:49: services.web.ports[2]: host port 0.0.0.0:1/tcp is already "
        'published by service "web" at compose.yaml:5:13',
        "compose.yaml:5:83: services.web.ports[4]: host port 2/tcp is already published by "
        'service "web" at compose.yaml:5:31',
    ]


def test_extends_copies_count_against_the_bound_on_values(here: Path) -> None:
    """Each `extends` copies its base: 2,000 values extended 200 times are 400,000."""
    env = ", ".join(f"K{i}: v" for i in range(2000))
    lines = ["name: t", "services:", f"  base: {{image: busybox, environment: {{{env}}}}}"]
    lines += [f"  s{i}: {{extends: base}}" for i in range(200)]
    (here / "compose.yaml").write_text("\n".join(lines) + "\n")
    started = time.process_time()
    with pytest.raises(ManifestError) as info:
        load(["compose.yaml"], environ={})
    # 100,000 values go through the whole loader before the bound: more than the others here
    assert time.process_time() - started < 5 * BOUND_S
    errors = [str(p) for p in info.value.problems]
    # s0..s47 fit; s48's copy goes past; it and every later one keep no base (so no image)
    assert errors == sorted(
        [
            f"compose.yaml:52:9: services.s48.extends: what extends copies here brings the "
            f"compose project past {yamlpos.MAX_NODES} values",
            *(
                f'compose.yaml:{4 + i}:3: services.s{i}: missing required field "image"'
                for i in range(48, 200)
            ),
        ],
        key=lambda e: [int(n) for n in e.split(":")[1:3]],
    )


def test_one_file_included_many_times_is_read_until_the_bound(here: Path) -> None:
    env = ", ".join(f"K{i}: v" for i in range(5000))
    write(
        here,
        {
            "b.yaml": f"services: {{b: {{image: busybox, environment: {{{env}}}}}}}\n",
            "compose.yaml": "name: t\ninclude: ["
            + ", ".join(["b.yaml"] * 1000)
            + "]\nservices: {web: {image: busybox}}\n",
        },
    )
    started = time.process_time()
    # the spec: a file included again is loaded once (14-include.md), so one read of 5,000
    # values, not 1,000
    loaded = load(["compose.yaml"], environ={})
    assert time.process_time() - started < BOUND_S
    assert sorted(s.name for s in loaded.stacks[0].services) == ["b", "web"]


def test_many_distinct_includes_are_read_until_the_bound(here: Path) -> None:
    env = ", ".join(f"K{i}: v" for i in range(5000))
    files = {
        f"b{i}.yaml": f"services: {{b{i}: {{image: busybox, environment: {{{env}}}}}}}\n"
        for i in range(40)
    }
    files["compose.yaml"] = (
        "name: t\ninclude: [" + ", ".join(files) + "]\nservices: {web: {image: busybox}}\n"
    )
    write(here, files)
    started = time.process_time()
    with pytest.raises(ManifestError) as info:
        load(["compose.yaml"], environ={})
    assert time.process_time() - started < 5 * BOUND_S
    errors = [str(p) for p in info.value.problems]
    assert errors and all(
        e.endswith(
            "with the files read before it, this file brings the compose project past "
            f"{yamlpos.MAX_NODES} values"
        )
        for e in errors
    )


# ---------------------------------------------------------------------------------------------
# Item 9: whole-number floats, NaN and infinity, absurd replica counts


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (
            "pids_limit: 5.0",
            "compose.yaml:5:17: services.web.pids_limit: must be an integer, got 5.0",
        ),
        (
            "deploy: {replicas: 2.0}",
            "compose.yaml:5:24: services.web.deploy.replicas: must be an integer, got 2.0",
        ),
        (
            "cpus: .nan",
            "compose.yaml:5:11: services.web.cpus: must be a string or a number, got .nan: "
            "NaN and infinity are not numbers a manifest can use",
        ),
        (
            "cpus: .inf",
            "compose.yaml:5:11: services.web.cpus: must be a string or a number, got .inf: "
            "NaN and infinity are not numbers a manifest can use",
        ),
        (
            "deploy: {resources: {limits: {cpus: -.inf}}}",
            "compose.yaml:5:41: services.web.deploy.resources.limits.cpus: must be a string or a "
            "number, got -.inf: NaN and infinity are not numbers a manifest can use",
        ),
        (
            'cpus: "nan"',
            'compose.yaml:5:11: services.web.cpus: must be a number of CPUs such as 0.5 or "2", '
            'got "nan"',
        ),
        (
            "environment: {A: .nan}",
            "compose.yaml:5:22: services.web.environment.A: must be a string, a number, a boolean "
            "or empty, got .nan: NaN and infinity are not numbers a manifest can use",
        ),
        (
            "deploy: {replicas: 1e11}",  # YAML 1.1, as libyaml reads it: a string
            "compose.yaml:5:24: services.web.deploy.replicas: must be an integer, got a string",
        ),
        (
            "deploy: {replicas: 100000000000}",
            "compose.yaml:5:24: services.web.deploy.replicas: must be at most 1000, "
            "got 100000000000",
        ),
        (
            'deploy: {replicas: "${N:-100000000000}"}',
            "compose.yaml:5:24: services.web.deploy.replicas: must be at most 1000, "
            "got 100000000000",
        ),
        ("scale: 1001", "compose.yaml:5:12: services.web.scale: must be at most 1000, got 1001"),
        (
            'mem_limit: "' + "9" * 400 + 'g"',
            "compose.yaml:5:16: services.web.mem_limit: must be at most 8 EiB, got "
            + '"'
            + "9" * 100
            + '..." (401 characters)',
        ),
        (
            'stop_grace_period: "' + "9" * 400 + 's"',
            "compose.yaml:5:24: services.web.stop_grace_period: must be at most about 292 years, "
            'got "' + "9" * 100 + '..." (401 characters)',
        ),
    ],
)
def test_numbers(here: Path, field: str, expected: str) -> None:
    errors = one_file(here, HEAD + f"    {field}\n")
    assert errors[0] == expected, errors


def test_numbers_that_stay_valid(here: Path) -> None:
    text = HEAD + (
        "    deploy: {replicas: 1000, resources: {limits: {cpus: 1.5, pids: 5}}}\n"
        "    pids_limit: 5\n    ulimits: {nofile: {soft: 10, hard: 20}}\n"
        "    environment: {A: 1.5, B: 2}\n"
    )
    assert one_file(here, text) == []
    svc = load(["compose.yaml"], environ={}).stacks[0].services[0]
    assert svc.replicas == 1000
    assert svc.resources.pids == 5


# ---------------------------------------------------------------------------------------------
# Through the command line: exit 1, a located first line, no traceback


CLI_CASES: dict[str, Callable[[Path], str]] = {}


def cli_case(fn: Callable[[Path], str]) -> Callable[[Path], str]:
    CLI_CASES[fn.__name__] = fn
    return fn


@cli_case
def fifo(d: Path) -> str:
    os.mkfifo(d / "x.yaml")
    return "m/x.yaml:1:1: not a regular file"


@cli_case
def merge_bomb(d: Path) -> str:
    lines = ["name: t", "x-0: &0 {}"]
    lines += [f"x-{i}: &{i} {{<<: [*{i - 1}, *{i - 1}, *{i - 1}]}}" for i in range(1, 28)]
    lines += ["services: {web: {image: busybox, labels: {<<: *27}}}"]
    (d / "compose.yaml").write_text("\n".join(lines) + "\n")
    return "m/compose.yaml:12:16: aliases or merge keys expand this value past"


@cli_case
def deep(d: Path) -> str:
    (d / "compose.yaml").write_text(HEAD + "    x-a: " + "[" * 800 + "]" * 800 + "\n")
    return f"m/compose.yaml:5:{10 + yamlpos.MAX_DEPTH - 3}: nested more than"


@cli_case
def cpus_nan(d: Path) -> str:
    (d / "compose.yaml").write_text(HEAD + "    cpus: .nan\n")
    return "m/compose.yaml:5:11: services.web.cpus: must be a string or a number, got .nan"


@pytest.mark.parametrize(
    ("case", "command"),
    [(case, "validate") for case in sorted(CLI_CASES)]
    + [
        (case, command)
        for case in ("cpus_nan", "fifo")
        for command in ("diff", "apply --runtime native", "apply --runtime docker")
    ],
)
def test_command_line(tmp_path: Path, case: str, command: str) -> None:
    """`diff` and `apply` load before they look at any runtime, so a bad manifest never
    reaches one: `apply` with `cpus: .nan` once crashed there."""
    work = tmp_path / "m"
    work.mkdir()
    first_line = CLI_CASES[case](work)
    env = {
        **os.environ,
        "PYAPPLY_CACHE_DIR": str(tmp_path / "cache"),
        "PYAPPLY_ROOT": str(tmp_path / "root"),
        "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}",  # never reached
    }
    out = subprocess.run(
        [PYAPPLY, *command.split(), "-f", "m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1, out
    assert out.stderr.startswith(first_line), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "root").exists()  # nothing touched, not even the state root


# ---------------------------------------------------------------------------------------------
# The scan's counts stand in for `_over_limits` on documents without aliases


SHAPES = [
    HEAD,
    "a: 1\n---\nb: [1, 2, {c: 3}]\n---\n- x\n- y: z\n",
    "base: &b {image: busybox, env: {A: 1}}\nweb:\n  <<: {image: other}\n  ports: [80, 81]\n",
    "? [complex, key]\n: value\nplain: ~\nempty:\nnested: [[[1]], {a: {b: [2]}}]\n",
    "x: &a [1, 2]\ny: *a\n---\nz: 1\n",  # the first document has an alias, the second not
    "!reset null\n",
    "",
]


def _documents(text: str) -> list[Node]:
    loader = yamlpos._Loader(text)
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes
    finally:
        loader.dispose()


def _texts() -> list[str]:
    from tests.unit.manifest.test_compose import corpus, corpus_projects

    root = corpus()
    assert root is not None
    repo = Path(__file__).resolve().parents[3]
    files = [f for p in corpus_projects(root) for f in sorted(p.rglob("*.y*ml"))]
    files += sorted((repo / "manifests").rglob("*.y*ml"))
    assert len(files) > 40
    return [*SHAPES, *(f.read_text() for f in files)]


def test_the_scan_counts_what_over_limits_counts_for_documents_without_aliases() -> None:
    checked = 0
    for text in _texts():
        over, plain = yamlpos._scan(text)
        assert over is None
        for index, node in enumerate(_documents(text)):
            has_alias = "*" in text and index not in plain
            if index in plain:
                found, size = yamlpos._over_limits(node, yamlpos.MAX_NODES)
                assert found is None
                assert plain[index] == size, (text[:80], index)
                checked += 1
            else:
                assert has_alias, (text[:80], index)
    assert checked > 40
