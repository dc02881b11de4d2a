"""The plain-chroot wrapper for conmon (supervise.in_root_mount): used only where "/" is not a
mount point. The wrapper itself runs end to end in tests/e2e/test_fresh_machine.py, whose
fresh system is entered as a plain chroot."""

from __future__ import annotations

import pytest

from pyapply.runtime.native import supervise


def test_a_booted_system_runs_the_command_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "root_is_mount_point", lambda: True)
    assert supervise.in_root_mount(["conmon", "-c", "x"]) == ["conmon", "-c", "x"]


def test_a_plain_chroot_wraps_it_in_a_mount_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "root_is_mount_point", lambda: False)
    cmd = supervise.in_root_mount(["conmon", "-c", "x"])
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "unchanged"]
    assert cmd[-3:] == ["conmon", "-c", "x"]  # the script execs argv[1:]
    script = cmd[cmd.index("-c") + 1]
    compile(script, "<root-mount>", "exec")  # valid Python for the interpreter it runs on


def test_this_test_host_is_booted() -> None:
    # the suite's own machine has "/" as a mount point: the wrapper is not used here
    assert supervise.root_is_mount_point()
