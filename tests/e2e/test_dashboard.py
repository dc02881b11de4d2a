"""The agent's dashboard and authenticated HTTP API end to end: a real `pyapply watch` with
`--http` on a real stack, driven by Debian's headless Chromium (selenium, chromedriver at
/usr/bin/chromedriver) and by plain HTTP clients over loopback.

The browser test logs in with an operator token and checks what a person sees: the states
of the overview; a container killed by hand showing as drift and then as repaired, with no
reload (the test holds the host lock meanwhile so that the drift stays on screen until it
lets the agent repair it); a new commit's revision; a rollback from the history page; the
logs followed live; a phone-width window. Screenshots of each page go to the test's
tmp_path (`screenshots/`), and with PYAPPLY_DOCS_SCREENSHOTS=1 two of them to docs/img/.
The HTTP test checks the tokens: viewer, operator, wrong, missing, rate-limited, CSRF,
read-only.

Every process started here (the agent, chromedriver and the chromium processes under it) is
ended by pid; the stack is removed by the runtime fixture's cleanup.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from pyapply.reconciler.engine.lock import host_lock
from tests.e2e.helpers import REPO_ROOT, TEST_IMAGE
from tests.e2e.runtimes import RuntimeUnderTest, free_port
from tests.e2e.test_agent import (
    AgentProc,
    Repo,
    agent_on,
    label,
    openapi_validator,
    running,
    wait_for,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OPERATOR = "op-token-e2e-0123456789abcdef"
VIEWER = "view-token-e2e-0123456789abcdef"
SECRET = "s3cret-e2e-dashboard-value"  # a stack secret's content
ENV_SECRET = "env-e2e-secret-looking-9876"  # the value of an env var named *_TOKEN


def manifest(stack: str, version: str) -> str:
    # the app prints a numbered line every half second (what the logs page follows)
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  secrets:
    tok: {{content: "{SECRET}"}}
  services:
    app:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "i=0; while true; do echo line $$i {version}; i=$$((i+1)); sleep 0.5; done"]
      init: true
      stop_grace_period: 1s
      restart: "no"
      environment: {{VERSION: "{version}", API_TOKEN: "{ENV_SECRET}"}}
      secrets: [tok]
"""


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.touch(mode=0o600)
    path.write_text(f"# dashboard tokens\noperator {OPERATOR}\nviewer {VIEWER}\n")
    return path


@pytest.fixture
def agent(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, native) as proc:
        yield proc


# ---------------------------------------------------------------------------------------------
# HTTP


class Http:
    """Requests to the agent's --http listener over loopback."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        finally:
            conn.close()

    def bearer(self, method: str, path: str, token: str) -> tuple[int, dict[str, str], str]:
        return self.request(method, path, headers={"Authorization": f"Bearer {token}"})

    def login(self, token: str) -> tuple[int, dict[str, str], str]:
        return self.request(
            "POST",
            "/login",
            body=urlencode({"token": token}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def session(self, token: str) -> str:
        status, headers, _ = self.login(token)
        assert status == 303, status
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        return cookie.split(";")[0]


def test_http_api_tokens_roles_csrf_rate_limit_and_read_only(
    tmp_path: Path, runtime: RuntimeUnderTest
) -> None:
    agent = AgentProc(tmp_path, runtime)
    try:
        _http_checks(agent, runtime, tmp_path)
    finally:
        with contextlib.suppress(AssertionError):
            agent.stop(timeout=30)
        print(f"--- agent log ({agent.log}):\n{agent.logs()}")


def _http_checks(agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    stack, obs = runtime.stack, runtime.observe
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": manifest(stack, "1")}, "one")
    port = free_port()
    tokens = token_file(tmp_path)
    agent.start(
        repo.path, "--interval", "600", "--http", f"127.0.0.1:{port}",
        "--http-token-file", str(tokens),
    )  # fmt: skip
    app = f"{stack}-app-1"
    wait_for("applied", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    wait_for(
        "the pass over",
        lambda: agent.api("GET", "/v1/status")["last_result"]["outcome"] == "succeeded",
    )
    h = Http(port)

    # nothing without a token, and nothing but the refusal
    for path in ("/v1/status", "/v1/history", f"/v1/stacks/{stack}", "/metrics"):
        status, headers, text = h.request("GET", path)
        assert status == 401, (path, status)
        assert json.loads(text) == {
            "error": "authentication required: Authorization: Bearer <token>"
        }
        assert headers["www-authenticate"].startswith("Bearer")
    status, headers, text = h.request("GET", "/")
    assert status == 401 and stack not in text and 'action="/login"' in text
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert name in headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"

    # a viewer reads, an operator acts; both through the same API as the socket's
    status, _, text = h.bearer("GET", "/v1/status", VIEWER)
    doc = json.loads(text)
    assert status == 200 and doc["revision"]["applied"] == sha1[:12]
    assert doc["stacks"][0]["sync"] == "Synced"
    openapi_validator("Status").validate(doc)
    status, _, text = h.bearer("GET", f"/v1/stacks/{stack}", VIEWER)
    detail = json.loads(text)
    assert status == 200 and detail["services"][0]["replicas"][0]["state"] == "running"
    openapi_validator("StackDetail").validate(detail)
    assert SECRET not in text and ENV_SECRET not in text
    before = agent.api("GET", "/v1/status")["last_result"]["started"]
    status, _, text = h.bearer("POST", "/v1/sync", VIEWER)
    assert status == 403 and "may only read" in text
    time.sleep(1)
    assert agent.api("GET", "/v1/status")["last_result"]["started"] == before  # no pass
    status, _, text = h.bearer("POST", "/v1/sync?wait=true", OPERATOR)
    assert status == 200 and json.loads(text)["result"]["outcome"] == "succeeded"

    # a viewer's session cannot act either, even with its own CSRF token
    cookie = h.session(VIEWER)
    status, _, page = h.request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and stack in page and "/confirm/sync" not in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert csrf is not None  # the log-out form
    form = urlencode({"csrf": csrf.group(1)}).encode()
    post = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = h.request("POST", "/actions/sync", headers=post, body=form)
    assert status == 403
    status, _, _ = h.request("GET", "/confirm/sync", headers={"Cookie": cookie})
    assert status == 403
    # an operator's session without the CSRF token, or from another site: refused
    op = h.session(OPERATOR)
    status, _, page = h.request("GET", "/", headers={"Cookie": op})
    op_csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert op_csrf is not None
    post_op = {"Cookie": op, "Content-Type": "application/x-www-form-urlencoded"}
    bad = urlencode({"csrf": "0" * 64}).encode()
    assert h.request("POST", "/actions/sync", headers=post_op, body=bad)[0] == 403
    good = urlencode({"csrf": op_csrf.group(1)}).encode()
    evil = {**post_op, "Origin": "http://evil.example"}
    assert h.request("POST", "/actions/sync", headers=evil, body=good)[0] == 403
    assert h.request("POST", "/actions/sync", headers=post_op, body=good)[0] == 303
    # a session cookie never carries the API's actions
    assert h.request("POST", "/v1/sync", headers={"Cookie": op})[0] == 403

    # wrong tokens: 401 and nothing else, then 429 for that address
    status, _, text = h.bearer("GET", "/v1/status", "wrong-token-0123456789")
    assert status == 401 and sha1[:12] not in text and stack not in text
    status, _, text = h.login("wrong-token-0123456789")
    assert status == 401 and stack not in text
    for _ in range(3):
        h.login("wrong-token-0123456789")
    status, headers, _ = h.login(OPERATOR)  # even the right one, for now
    assert status == 429 and int(headers["retry-after"]) >= 1
    status, headers, _ = h.bearer("GET", "/v1/status", OPERATOR)
    assert status == 429

    # --http-read-only: actions hidden and refused, reading goes on
    assert agent.stop() == 0
    agent.start(
        repo.path, "--interval", "600", "--http", f"127.0.0.1:{port}",
        "--http-token-file", str(tokens), "--http-read-only",
    )  # fmt: skip
    status, _, text = h.bearer("POST", "/v1/sync", OPERATOR)
    assert status == 403 and "read-only" in text
    op = h.session(OPERATOR)
    status, _, page = h.request("GET", "/", headers={"Cookie": op})
    assert status == 200 and "/confirm/sync" not in page and "(read-only)" in page
    assert h.request("GET", "/confirm/sync", headers={"Cookie": op})[0] == 403
    status, _, text = h.bearer("GET", "/v1/history", VIEWER)
    assert status == 200 and json.loads(text)["passes"]
    assert SECRET not in agent.logs() and OPERATOR not in agent.logs()
    assert agent.stop() == 0


# ---------------------------------------------------------------------------------------------
# The browser


def _children(pid: int) -> list[int]:
    """Every process below `pid` (by /proc's parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[Any]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path / "chromium-profile"
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, port=free_port(), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid if service.process is not None else None
    started = _children(driver_pid) if driver_pid else []
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        # whatever quit() left: the pids this test started, and only those
        for pid in [*started, *([driver_pid] if driver_pid else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(stable(lambda: driver.find_element(By.CSS_SELECTOR, css).text))


def stable(act: Any) -> Any:
    """`act()`, again when a live update swapped the element it found out of the page
    (a stale element), a few times."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return act()
        except StaleElementReferenceException:
            time.sleep(0.1)
    return act()


def click(driver: Any, by: str, what: str) -> None:
    stable(lambda: driver.find_element(by, what).click())


def test_the_dashboard_in_a_browser(
    agent: AgentProc, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    stack, obs = native.stack, native.observe
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": manifest(stack, "1")}, "first: one replica")
    port = free_port()
    agent.start(
        repo.path, "--interval", "600", "--http", f"127.0.0.1:{port}",
        "--http-token-file", str(token_file(tmp_path)),
    )  # fmt: skip
    app = f"{stack}-app-1"
    wait_for("applied", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    base = f"http://127.0.0.1:{port}"
    row = f'tr[data-stack="{stack}"]'

    with chromium(tmp_path) as driver:
        driver.set_page_load_timeout(30)

        def shot(name: str) -> Path:
            path = shots / f"{name}.png"
            assert driver.save_screenshot(str(path)), name
            return path

        def no_secret() -> None:
            source = driver.page_source
            assert SECRET not in source and ENV_SECRET not in source
            assert OPERATOR not in source and VIEWER not in source

        # a wrong token is refused, and shows nothing of the agent
        driver.get(base + "/")
        assert driver.find_element(By.ID, "token")
        assert stack not in driver.page_source
        driver.find_element(By.ID, "token").send_keys("wrong-token-0123456789")
        click(driver, By.CSS_SELECTOR, "form.login button")
        wait_for("refused", lambda: "Wrong token." in driver.page_source)
        assert stack not in driver.page_source
        shot("login-refused")

        # an operator logs in once
        driver.find_element(By.ID, "token").send_keys(OPERATOR)
        click(driver, By.CSS_SELECTOR, "form.login button")
        wait_for("the overview", lambda: stack in driver.page_source)
        assert text_of(driver, f"{row} [data-col=sync]") == "\u2713 Synced"
        assert text_of(driver, f"{row} [data-col=health]") == "\u2713 Healthy"
        assert text_of(driver, "[data-revision]") == sha1[:12]
        assert text_of(driver, "[data-subject]") == "first: one replica"
        assert "1 Healthy" in text_of(driver, row)
        wait_for("live updates on", lambda: "on" in text_of(driver, "#live"))
        no_secret()
        overview = shot("overview")

        # a container killed by hand: drift, then repaired, with no reload. The host lock
        # held here keeps the agent's repair waiting until the drift was seen.
        driver.execute_script("window.__same_page = 'yes';")
        with host_lock(str(native.root), timeout_s=30):
            native.kill(app)
            wait_for(
                "the drift shown",
                lambda: "OutOfSync" in text_of(driver, f"{row} [data-col=sync]"),
                timeout=15,
            )
            assert "Synced" not in text_of(driver, f"{row} [data-col=sync]")
            shot("overview-drift")
        wait_for(
            "the repair shown",
            lambda: text_of(driver, f"{row} [data-col=sync]") == "\u2713 Synced",
            timeout=30,
        )
        assert driver.execute_script("return window.__same_page;") == "yes"
        assert running(obs, app)

        # a new commit shows its revision, still without a reload
        sha2 = repo.commit({"stack.yaml": manifest(stack, "2")}, "second: version 2")
        wait_for(
            "the new revision shown",
            lambda: text_of(driver, "[data-revision]") == sha2[:12],
            timeout=30,
        )
        assert text_of(driver, "[data-subject]") == "second: version 2"
        assert driver.execute_script("return window.__same_page;") == "yes"
        wait_for("two applied", lambda: label(obs, app) == sha2[:12])

        # the stack page: replicas, image, drift in words
        click(driver, By.LINK_TEXT, stack)
        wait_for("the stack page", lambda: "Services" in driver.page_source)
        replica = text_of(driver, f'tr[data-replica="{app}"]')
        assert "running" in replica and TEST_IMAGE.split(":")[0] in replica
        assert "None: the live state matches the manifests." in text_of(driver, "[data-drift]")
        no_secret()
        stack_shot = shot("stack")

        # the logs, followed live
        click(driver, By.PARTIAL_LINK_TEXT, "Logs")
        wait_for("the logs page", lambda: "Logs of app" in driver.page_source)

        def last_number() -> int:
            numbers = re.findall(r"line (\d+) 2", text_of(driver, f'pre[data-log="{app}"]'))
            return int(numbers[-1]) if numbers else -1

        first = wait_for("log lines", lambda: last_number() + 1) - 1
        wait_for("new log lines", lambda: last_number() >= first + 3, timeout=15)
        shown = [
            int(n) for n in re.findall(r"line (\d+) 2", text_of(driver, f'pre[data-log="{app}"]'))
        ]
        assert shown == list(range(shown[0], shown[0] + len(shown))), shown  # none lost
        no_secret()
        shot("logs")

        # the history page; a rollback to the first revision from there
        click(driver, By.LINK_TEXT, "History")
        wait_for("the history", lambda: "History" in driver.title)
        assert "second: version 2" in driver.page_source
        shot("history")
        click(driver, By.PARTIAL_LINK_TEXT, f"Roll back to {sha1[:7]}")
        wait_for("the confirmation", lambda: driver.title.startswith("Roll back"))
        shot("confirm-rollback")
        click(driver, By.CSS_SELECTOR, "button.primary")
        wait_for("rolled back", lambda: label(obs, app) == sha1[:12], timeout=30)
        driver.get(base + "/")
        wait_for(
            "the pin shown",
            lambda: (
                text_of(driver, "[data-revision]") == sha1[:12]
                and "manual rollback" in driver.page_source
            ),
            timeout=15,
        )
        assert "Resume following the source" in driver.page_source
        no_secret()

        # a pass (the newest: the rollback's) opens to its plan, as `diff` printed it
        driver.get(base + "/history")
        click(driver, By.CSS_SELECTOR, "tr[data-pass] th a")
        wait_for("a pass", lambda: driver.title.startswith("Pass "))
        assert "Outcome" in driver.page_source
        plan = text_of(driver, "pre.plan")
        assert f"stack {stack}" in plan and "recreate" in plan and "plan:" in plan, plan
        no_secret()
        shot("pass")

        # a phone's width: no sideways scrolling of the page, states still in words
        driver.set_window_size(390, 844)
        driver.get(base + "/")
        wait_for("the overview", lambda: stack in driver.page_source)
        width = driver.execute_script("return document.documentElement.scrollWidth;")
        inner = driver.execute_script("return window.innerWidth;")
        assert width <= inner, (width, inner)
        assert "Synced" in text_of(driver, f"{row} [data-col=sync]")
        shot("overview-phone")

        # keyboard: the first Tab lands on the skip link, which is visible when focused
        driver.find_element(By.TAG_NAME, "body").send_keys("\ue004")  # Tab
        focused = driver.switch_to.active_element
        assert focused.text == "Skip to content"

        # log out; a viewer logs in: no action offered, none allowed
        driver.set_window_size(1280, 900)
        passes = len(agent.history())
        click(driver, By.CSS_SELECTOR, "header form button")
        wait_for("logged out", lambda: driver.title.startswith("Log in"))
        driver.find_element(By.ID, "token").send_keys(VIEWER)
        click(driver, By.CSS_SELECTOR, "form.login button")
        wait_for("the viewer's overview", lambda: "signed in as viewer" in driver.page_source)
        assert "Sync now" not in driver.page_source and "Resume" not in driver.page_source
        driver.get(base + "/confirm/sync")
        assert "Not allowed" in driver.page_source
        assert not driver.find_elements(By.CSS_SELECTOR, "main form")  # no confirm form
        driver.get(base + "/history")
        assert "Roll back" not in driver.page_source
        shot("history-viewer")
        time.sleep(0.5)
        assert len(agent.history()) == passes  # nothing was triggered

    if os.environ.get("PYAPPLY_DOCS_SCREENSHOTS") == "1":
        docs = REPO_ROOT / "docs" / "img"
        docs.mkdir(exist_ok=True)
        shutil.copy(overview, docs / "dashboard-overview.png")
        shutil.copy(stack_shot, docs / "dashboard-stack.png")
    assert agent.stop() == 0


# ---------------------------------------------------------------------------------------------
# TLS, event streams, bad options


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def open_stream(port: int, token: str, context: Any = None) -> Any:
    """A raw connection asking for /events; returns the socket after the answer's head."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def read_until(sock: Any, marker: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {got[-300:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}; got {got[-300:]!r}")
        got += chunk
    return got


def test_tls_event_streams_within_their_budget_and_bad_options(
    agent: AgentProc, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    import ssl

    stack, obs = native.stack, native.observe
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": manifest(stack, "1")}, "one")
    tokens = token_file(tmp_path)
    port = free_port()

    # options that cannot be used: exit 1 with one located line, nothing started
    loose = tmp_path / "loose"
    loose.write_text(f"operator {OPERATOR}\n")
    os.chmod(loose, 0o644)
    short = tmp_path / "short"
    short.touch(mode=0o600)
    short.write_text(f"viewer {VIEWER}\n  operator tooshort\n")
    inside = repo.path / "tokens"
    inside.touch(mode=0o600)
    inside.write_text(f"operator {OPERATOR}\n")
    listen = ["--http", f"127.0.0.1:{port}"]
    for args, expected in (
        ([*listen], "--http needs --http-token-file"),
        ([*listen, "--http-token-file", str(loose)], "mode 0644"),
        ([*listen, "--http-token-file", str(short)], f"{short}:2:12: the token is 8 characters"),
        ([*listen, "--http-token-file", str(inside)], "is inside the watched"),
        (["--http-read-only"], "--http-read-only: only with --http"),
        ([*listen, "--http-token-file", str(tokens), "--http-cert", str(tokens)], "go together"),
    ):
        out = agent.cli("watch", str(repo.path), *args, ok=False)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert expected in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and OPERATOR not in out.stderr
    inside.unlink()

    cert, key = self_signed(tmp_path)
    agent.start(
        repo.path, "--interval", "600", *listen, "--http-token-file", str(tokens),
        "--http-cert", str(cert), "--http-key", str(key),
    )  # fmt: skip
    app = f"{stack}-app-1"
    wait_for("applied", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    context = ssl.create_default_context(cafile=str(cert))

    def https(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Any:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    status, headers, body = https("GET", "/v1/status", {"Authorization": f"Bearer {VIEWER}"})
    assert status == 200 and json.loads(body)["http"]["tls"] is True
    assert headers["strict-transport-security"].startswith("max-age=")
    status, headers, _ = https(
        "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
        urlencode({"token": OPERATOR}).encode(),
    )  # fmt: skip
    assert status == 303 and "; Secure" in headers["set-cookie"]
    # TLS older than 1.2 is refused; plain HTTP gets no answer of the agent's
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(cert))
    with warnings.catch_warnings():  # (TLS 1.1 is deprecated: that is the point)
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        open_stream(port, VIEWER, old).close()
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/v1/status")
        plain.getresponse()
    plain.close()

    # event streams: eight at once, the ninth refused, the API's slots untouched
    streams = [open_stream(port, VIEWER, context) for _ in range(8)]
    try:
        for s in streams:
            head = read_until(s, b"event: hello", 10)
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        ninth = open_stream(port, VIEWER, context)
        assert read_until(ninth, b"\r\n\r\n", 10).startswith(b"HTTP/1.1 503")
        ninth.close()
        for _ in range(40):  # more than the listener's 32 connection slots, one by one
            status, _, _ = https(
                "GET", "/v1/history?limit=1", {"Authorization": f"Bearer {VIEWER}"}
            )
            assert status == 200
        # a pass tells every stream within a second of its end
        status, _, _ = https("POST", "/v1/sync?wait=true", {"Authorization": f"Bearer {OPERATOR}"})
        assert status == 200
        ended = time.monotonic()
        for s in streams:
            read_until(s, b"event: change", 1.0)
        assert time.monotonic() - ended < 1.5
        # the agent stops: the streams end
        assert agent.stop() == 0
        for s in streams:
            s.settimeout(10)
            while s.recv(4096):
                pass
    finally:
        for s in streams:
            s.close()
