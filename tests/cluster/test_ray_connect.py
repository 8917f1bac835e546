"""Which Ray a run joins. With no address it starts its own (never the cluster that the last `ray start`
recorded in /tmp/ray/ray_current_cluster, which may be dead: Ray then retries it for minutes); `auto`
joins the running one on purpose, and a dead or missing one is an error in seconds.

The dead head here is a real `ray start --head` killed with SIGKILL, so that its ray_current_cluster
file still names it. Its Ray temp folder is moved with RAY_TMPDIR (Ray's own setting for where /tmp/ray
lies), for the head and for the runs below: the machine's /tmp/ray, and the clusters of other tests and
sessions, are never touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.train import check_ray_address, connect_ray
from tests.cluster.conftest import RAY, REPO, free_port, wait_for


def _answers(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _pids_of(root: str | None, group: int | None = None) -> list[int]:
    """Processes whose command line names `root` (every Ray process of a temp folder does), or in `group`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            in_group = group is not None and os.getpgid(int(entry.name)) == group
        except (OSError, ProcessLookupError):
            continue
        if (root is not None and root.encode() in command) or in_group:
            pids.append(int(entry.name))
    return pids


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def dead_head():
    """A Ray head killed with SIGKILL (no `ray stop`): its recorded address, and the environment of a run
    on this machine that sees that record (RAY_TMPDIR) and has no RAY_ADDRESS."""
    root = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=root, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", DS_ACCELERATOR="cpu")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
         "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(REPO))
    record = Path(root) / "ray" / "ray_current_cluster"
    try:
        wait_for(lambda: head.poll() is not None or (record.is_file() and _answers(record.read_text().strip())),
                 120, "ray head")
        assert head.poll() is None, "ray start --head exited"
        address = record.read_text().strip()
        _kill(_pids_of(root, head.pid))  # the head dies at once, every process of it, and no `ray stop`
        head.wait(10)
        wait_for(lambda: not _pids_of(root, head.pid), 10, "the head's processes gone")
        assert record.read_text().strip() == address and not _answers(address)
        yield {"address": address, "record": str(record), "env": env}
    finally:
        _kill(_pids_of(root, head.pid))  # also the own Ray a run below started in that folder
        shutil.rmtree(root, ignore_errors=True)


def _train(env, stores, tmp_path, *overrides, timeout=90):
    """A `python -m cluster.train` run of a tiny stage II: exit code, stdout, stderr, seconds it took."""
    command = [sys.executable, "-m", "cluster.train", "--config", "configs/debug/stage2.yaml", "--no-register"]
    for item in (f"data.store={stores['sr']}", f"run.storage_path={tmp_path / 'runs'}",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "cluster.num_workers=1", "train.max_steps=2",
                 *overrides):
        command += ["--set", item]
    start = time.monotonic()
    driver = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        out, err = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)  # it ignored SIGTERM while Ray retried the dead head
        out, err = driver.communicate()
        pytest.fail(f"cluster.train still running after {timeout} s:\n{err[-3000:]}")
    finally:
        _kill(_pids_of(None, driver.pid))  # leftovers of its process group, if any
    return driver.returncode, out, err, time.monotonic() - start


def _logged_at(err: str, text: str) -> float:
    """The wall-clock time of the first log line of stderr that holds `text`."""
    from datetime import datetime

    line = next(line for line in err.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.mark.slow
def test_a_dead_head_neither_hangs_nor_is_joined(dead_head, cluster_stores, tmp_path):
    # No address: the run starts its own Ray at once, trains and exits, the dead record notwithstanding.
    # (Ray retried the dead head for over 4 minutes here. The whole run takes 40-80 s on 2 shared cores:
    # Ray, a Train controller and a worker start; the time to its own Ray is what the defect was about.)
    started = time.time()
    code, out, err, elapsed = _train(dead_head["env"], cluster_stores, tmp_path, timeout=180)
    assert code == 0, err[-3000:]
    assert "trained sr to step 2" in out
    assert _logged_at(err, "Ray: started an own local instance") - started < 60, err[-3000:]
    assert "Failed to connect to GCS" not in err

    # `auto` means the recorded cluster: it is dead, and says so before anything starts.
    (tmp_path / "auto").mkdir()
    code, out, err, elapsed = _train(dead_head["env"], cluster_stores, tmp_path / "auto", "cluster.address=auto")
    assert code == 2, err[-3000:]
    assert f"the Ray cluster {dead_head['address']} recorded in {dead_head['record']} does not answer" in err
    assert "Traceback" not in err and elapsed < 30, f"{elapsed:.0f} s"
    assert not (tmp_path / "auto" / "runs").exists() and not (tmp_path / "auto" / "mlflow.db").exists()


@pytest.mark.slow
def test_ray_address_auto_in_the_environment_checks_the_record(dead_head, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", dead_head["env"]["RAY_TMPDIR"])
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    start = time.monotonic()
    with pytest.raises(ValueError, match="does not answer"):
        check_ray_address(None)
    assert time.monotonic() - start < 10


def test_auto_with_no_cluster_is_an_error(tmp_path, monkeypatch):
    import ray._private.services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # nothing recorded
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.services, "find_gcs_addresses", frozenset)  # and no Ray process here
    with pytest.raises(ValueError, match="cluster.address auto: no Ray cluster runs on this machine"):
        check_ray_address("auto")


@pytest.mark.parametrize("configured,environment,expected", [
    (None, None, "local"),  # an own instance, whatever /tmp/ray/ray_current_cluster says
    (None, "auto", "auto"),
    ("auto", None, "auto"),
    ("10.0.0.5:6379", None, "10.0.0.5:6379"),
    (None, "10.0.0.5:6379", "10.0.0.5:6379"),
    ("10.0.0.6:6379", "10.0.0.5:6379", "10.0.0.6:6379"),
])
def test_the_address_ray_init_gets(monkeypatch, configured, environment, expected):
    import ray

    import cluster.train

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **_: calls.append(address))
    monkeypatch.setattr(cluster.train, "check_ray_address", lambda address: None)  # probes: tested above
    if environment:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    connect_ray(configured)
    assert calls == [expected]
