"""The value syntax of manifest fields: durations, sizes, ports, volumes, tmpfs, modes, ids.

Each parser takes a value as written (after interpolation) and returns what it means, or
raises `Bad` with the sentence to report at the field; none of them knows where the value
was written. The small helpers that put values into those sentences (`show`, `kind_of`,
`suggest`, `join_or`) live here too, for every module of the loader.
"""

from __future__ import annotations

import ipaddress
import json
import math
import posixpath
import re
from collections.abc import Sequence
from typing import Any

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.model import Mount, Port

OBJECT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


class Bad(PyapplyError):
    """A value is wrong; the message is the sentence to report."""


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        if len(value) > 200:  # a message names the value; it need not repeat a whole file
            return (
                json.dumps(value[:100], ensure_ascii=False)[:-1] + f'..." ({len(value)} characters)'
            )
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def kind_of(value: Any) -> str:
    """What kind of value this is, for "got ..." in messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def scalar_str(value: Any) -> str:
    """Compose's stringification of environment and label values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def suggest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean "x"?)' for the closest of `choices`, or ""."""
    import difflib  # only for a mistake: a manifest that loads never pays for it

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def join_or(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: Any) -> float:
    """Go's duration syntax in seconds: "1m30s" -> 90.0, "500ms" -> 0.5; raises Bad."""
    hint = 'must be a duration such as "30s", "1m30s" or "500ms"'
    if isinstance(value, bool) or not isinstance(value, str):
        raise Bad(f"{hint}, got {show(value)}")
    text = value.strip()
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise Bad(f"{hint}, got {show(value)}")
    if total > _MAX_SECONDS:  # Go's durations are int64 nanoseconds; float("9"*400) is inf
        raise Bad(f"must be at most about 292 years, got {show(value)}")
    return total


_MAX_SECONDS = (2**63 - 1) / 1e9
_MAX_BYTES = 2**63 - 1  # sizes are int64 for docker and the kernel


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: Any) -> int:
    """128m -> 134217728 (binary multipliers, like docker); a bare number is bytes."""
    if isinstance(value, bool):
        raise Bad(f'must be a size such as "128m" or "1g", got {show(value)}')
    if isinstance(value, int):
        if value < 0:
            raise Bad(f"must not be negative, got {value}")
        size = value
    else:
        m = _SIZE.fullmatch(str(value).strip())
        if not m:
            raise Bad(f'must be a size such as "128m" or "1g", got {show(value)}')
        number = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
        if number > _MAX_BYTES:  # also inf, from a long string of digits
            raise Bad(f"must be at most 8 EiB, got {show(value)}")
        size = int(number)
    if size > _MAX_BYTES:
        raise Bad(f"must be at most 8 EiB, got {show(value)}")
    return size


def parse_host_ip(host: str, ip: str) -> tuple[str, str]:
    """An extra_hosts entry: a host name and an IP address (or docker's "host-gateway")."""
    if not ip or not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", host):
        raise Bad(f'must be "host:ip" with a host name, got {show(f"{host}:{ip}" if ip else host)}')
    ip = ip.strip().removeprefix("[").removesuffix("]")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise Bad(f"{show(ip)} is not an IP address (in the entry for {host})") from None
    return host, ip


def parse_count(value: Any) -> int:
    """A positive whole number, as an int or a string ("3")."""
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value).strip()):
        raise Bad(f"must be a whole number such as 3, got {show(value)}")
    if int(value) < 1:
        raise Bad(f"must be at least 1, got {int(value)}")
    return int(value)


def parse_id(value: Any) -> str:
    """A numeric user or group id ("1000" or 1000): names would have to be looked up in
    the image, which the host-side file cannot do."""
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value).strip()):
        raise Bad(f"must be a numeric id such as 1000, got {show(value)}")
    return str(value).strip()


def parse_mode(value: Any) -> int:
    """0440 (YAML reads a leading 0 as octal), "0440", "440" or "0o440" -> 0o440."""
    if isinstance(value, bool):
        raise Bad(f'must be a file mode such as "0440", got {show(value)}')
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]+", text):
            raise Bad(f'must be an octal file mode such as "0440", got {show(value)}')
        mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise Bad(f"must be a file mode between 0 and 07777, got {oct(mode)[2:]}")
    return mode


PROTOCOLS = ("tcp", "udp", "sctp")
BIND_OPTIONS = {
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "cached",
    "delegated",
    "consistent",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
}
TMPFS_FLAGS = {"ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev"}


def parse_cpus(value: Any) -> float:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise Bad(f'must be a number of CPUs such as 0.5 or "2", got {show(value)}') from None
    if not math.isfinite(cpus):  # "nan" and "inf" are floats to Python
        raise Bad(f'must be a number of CPUs such as 0.5 or "2", got {show(value)}')
    if cpus <= 0:
        raise Bad(f"must be more than 0, got {show(value)}")
    return cpus


def parse_pids(value: Any) -> int | None:
    # docker's convention: 0 or -1 mean "no limit"
    return value if isinstance(value, int) and value > 0 else None


def container_path(target: str, whole: str, what: str = "") -> str:
    """A container path; `what` ("volume", "tmpfs") names the short syntax it came from."""
    if not target.startswith("/"):
        prefix = f"{show(whole)} is not a valid {what}: " if what else ""
        raise Bad(f'{prefix}the container path "{target}" must be absolute')
    return posixpath.normpath(target)


def short_volume(text: str) -> Mount:
    """Short syntax "SOURCE:TARGET[:MODE]" or "TARGET": a named volume, an anonymous one
    (no source), or a bind mount whose source is the host path as written (starting with
    "/", "." or "~"; the caller resolves it)."""
    parts = text.split(":")
    if len(parts) > 3 or not all(parts):
        raise Bad(f"{show(text)} is not a valid volume: expected SOURCE:TARGET[:MODE] or TARGET")
    if len(parts) == 1:
        return Mount(type="volume", target=container_path(parts[0], text, "volume"))
    source, target = parts[0], container_path(parts[1], text, "volume")
    options = parts[2].split(",") if len(parts) == 3 else []
    unknown = [o for o in options if o not in BIND_OPTIONS]
    if unknown:
        raise Bad(f"{show(text)} is not a valid volume: unknown option {show(unknown[0])}")
    if "ro" in options and "rw" in options:
        raise Bad(f'{show(text)} is not a valid volume: it says both "ro" and "rw"')
    read_only = "ro" in options
    if source.startswith(("/", ".", "~")):
        return Mount(type="bind", target=target, source=source, read_only=read_only)
    if not OBJECT_NAME.fullmatch(source):
        raise Bad(
            f"{show(text)} is not a valid volume: {show(source)} is not a volume name; "
            f'write "./{source}" for a path relative to the manifest'
        )
    return Mount(type="volume", target=target, source=source, read_only=read_only)


def parse_tmpfs(text: str) -> Mount:
    target, _, opts = text.partition(":")
    size = mode = None
    read_only = False
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if key == "size" and eq:
            size = parse_size(value)
        elif key == "mode" and eq:
            mode = parse_mode(value)
        elif key in ("uid", "gid") and eq:
            continue
        elif opt in TMPFS_FLAGS:
            read_only = read_only or opt == "ro"
        else:
            raise Bad(f"{show(text)} is not a valid tmpfs: unknown option {show(opt)}")
    return Mount(
        type="tmpfs",
        target=container_path(target, text, "tmpfs"),
        read_only=read_only,
        tmpfs_size=size,
        tmpfs_mode=mode,
    )


_PORT_DIGITS = re.compile(r"[0-9]{1,6}")
_PORT_RANGE = re.compile(r"[0-9]{1,6}-[0-9]{1,6}")


def port_range(text: str, whole: str, allow_zero: bool) -> list[int]:
    first, dash, last = text.partition("-")
    # ASCII digits only (str.isdigit() accepts "²"), and few of them (int() refuses 4,301)
    if not _PORT_DIGITS.fullmatch(first) or (dash and not _PORT_DIGITS.fullmatch(last)):
        raise Bad(f"{show(whole)} is not a valid port mapping")
    lo, hi = int(first), int(last) if dash else int(first)
    for n in (lo, hi):
        if not (0 if allow_zero else 1) <= n <= 65535:
            raise Bad(
                f"{show(whole)} is not a valid port mapping: port {n} is out of range (1-65535)"
            )
    if hi < lo:
        raise Bad(f"{show(whole)} is not a valid port mapping: the range {text} is backwards")
    return list(range(lo, hi + 1))


def short_ports(item: str) -> list[Port]:
    """Short syntax "[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]", with ranges (a host range
    for one container port keeps the range: `Port.published_last`) and IPv6 host addresses
    with or without brackets."""
    whole = item
    text = item.strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise Bad(
                f"{show(whole)} is not a valid port mapping: the protocol must be tcp, udp or sctp"
            )
    host_ip = ""
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else ""
        parts = rest[1:].split(":") if rest.startswith(":") else []
        if len(parts) != 2:
            raise Bad(f"{show(whole)} is not a valid port mapping")
        host_ip = text[1:end]
        published, target = parts
    else:
        parts = text.split(":")
        if len(parts) == 1:
            published, target = "", parts[0]
        elif len(parts) == 2:
            published, target = parts
        else:
            # an IPv6 host address may be written without brackets ("::1:6000:6000"): the
            # last two parts are the ports, everything before them the address
            host_ip, published, target = ":".join(parts[:-2]), parts[-2], parts[-1]
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise Bad(f"{show(whole)} is not a valid port mapping") from None
    targets = port_range(target, whole, allow_zero=False)
    if not published:
        return [Port(t, None, host_ip, protocol) for t in targets]
    hosts = port_range(published, whole, allow_zero=True)
    if len(targets) == 1 and len(hosts) > 1:
        # "8000-9000:80": one container port published on a port of the host range
        return [Port(targets[0], hosts[0] or None, host_ip, protocol, published_last=hosts[-1])]
    if len(hosts) != len(targets):
        raise Bad(
            f"{show(whole)} is not a valid port mapping: the host and container ranges "
            "must have the same length"
        )
    return [Port(t, h or None, host_ip, protocol) for h, t in zip(hosts, targets, strict=True)]


def long_port(item: dict[str, Any]) -> Port:
    published = item.get("published")
    last: int | None = None
    if isinstance(published, str):
        text = published.strip()
        if not text:
            published = None
        elif _PORT_DIGITS.fullmatch(text):
            published = int(text)
        elif _PORT_RANGE.fullmatch(text):
            # a host range ("8000-9000"): the container port is published on one of them
            hosts = port_range(text, text, allow_zero=False)
            published, last = hosts[0], hosts[-1]
        else:
            raise Bad(f"published port {show(published)} is not a port number or a range")
    if published is not None and not 0 <= published <= 65535:
        raise Bad(f"published port {published} is out of range (1-65535)")
    host_ip = item.get("host_ip", "")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise Bad(f"host_ip {show(host_ip)} is not an IP address") from None
    protocol = str(item.get("protocol", "tcp")).lower()
    if protocol not in PROTOCOLS:
        raise Bad(f"protocol {show(protocol)} is not one of tcp, udp or sctp")
    return Port(
        target=item["target"],
        published=published or None,
        host_ip=host_ip,
        protocol=protocol,
        mode="host" if item.get("mode") == "host" else "ingress",
        published_last=last if last != published else None,
    )
