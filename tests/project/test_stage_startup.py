"""Stage start-up (stages/_common.py): a stage process ends when the `dvc repro` that started it
ends or is killed, instead of going on alone and writing into data/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import _tinyrepo as T

CHILD = """
import sys, time
sys.path.insert(0, {stages!r})
import _common
_common.stop_with_parent("train")
print("ready", flush=True)
time.sleep(60)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, text=True)
print(child.pid, flush=True)
child.stdout.readline()  # the child is ready
print("go", flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stage_stops_when_its_parent_is_killed(sig):
    child = CHILD.format(stages=str(T.REPO / "stages"))
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(child=child)], stdout=subprocess.PIPE,
                              text=True, env=T.env())
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "go"
        assert _alive(pid)
        parent.send_signal(sig)
        parent.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the stage process outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()


FULL_DISK = """
import sys
sys.path.insert(0, {stages!r})
import _common

def main(p):
    with open("/dev/full", "w") as f:  # every write fails with ENOSPC, as on a full disk
        f.write("x" * 100000)

_common.run("stamps", main)
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_one_line_not_a_traceback():
    res = subprocess.run([sys.executable, "-c", FULL_DISK.format(stages=str(T.REPO / "stages"))],
                         capture_output=True, text=True, env=T.env(), timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("[stamps] disk full (no space left on device): free space"), res.stderr
    assert "Traceback" not in res.stderr
