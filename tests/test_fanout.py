"""transferlab-fanout (issue 27): a dvc.yaml's out-of-date stages run in parallel and land in DVC
as `dvc repro` would have recorded them; failures, kills and Ctrl-C leave DVC consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dvc_helpers import git

CELL = """\
import os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
marker = f"kill-{name}"
if os.path.exists(marker):  # the test's fault: this try dies as an OOM kill would
    os.remove(marker)
    os.kill(os.getpid(), 9)
if os.path.exists(f"fail-{name}"):
    print(f"error: cell {name} cannot run: remove fail-{name}", file=sys.stderr)
    sys.exit(2)
if os.path.exists(f"slow-{name}"):  # the test edits a file while this one runs
    seconds *= 40
time.sleep(seconds)
open(f"out/{name}.txt.tmp", "w").write(name * 3)
os.replace(f"out/{name}.txt.tmp", f"out/{name}.txt")  # atomic, as the pipeline's stages
"""


def toy(tmp_path: Path, cells=("a", "b", "c", "d"), seconds: float = 0.3,
        uncached_report: bool = False) -> Path:
    """A DVC project: independent cells (a foreach over params) and a report reading them; with
    `uncached_report` the report is an output DVC does not cache (as the pipeline's metrics and
    reports are) and a summary stage reads it."""
    repo = tmp_path / "toy repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env())
    (repo / "cell.py").write_text(CELL)
    (repo / "out").mkdir()
    (repo / "params.yaml").write_text(yaml.safe_dump({"cells": list(cells), "sep": "-"}))
    summary = {"summary": {"cmd": "python -c \"open('summary.txt','w').write(open('report.txt')"
                                  ".read().upper())\"", "deps": ["report.txt"],
                           "outs": ["summary.txt"]}} if uncached_report else {}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "cell": {"foreach": "${cells}", "do": {
            "cmd": f"python cell.py ${{item}} {seconds}", "deps": ["cell.py"],
            "outs": ["out/${item}.txt"]}},
        "report": {"cmd": "python -c \"import sys; open('report.txt','w').write('${sep}'.join("
                          "open(f'out/{c}.txt').read() for c in sys.argv[1:]))\" "
                          + " ".join(cells),
                   "deps": [f"out/{c}.txt" for c in cells], "params": ["sep"],
                   "outs": [{"report.txt": {"cache": False}} if uncached_report
                            else "report.txt"]}, **summary}}, sort_keys=False))
    return repo


def env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def fanout(repo: Path, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "transferlab.fanout", "dvc.yaml", *args]
    if not wait:
        return subprocess.Popen(command, cwd=repo, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=repo, env=env(), capture_output=True, text=True)


def dvc(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def processes(fragment: str) -> list[int]:
    """Pids whose command line holds `fragment` (from /proc: no pgrep needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def outputs(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [*sorted((repo / "out").glob("*.txt")),
                                             repo / "report.txt", repo / "summary.txt",
                                             repo / "dvc.lock"]
            if p.exists()}


def test_parallel_run_records_what_a_sequential_repro_records(tmp_path):
    sequential = toy(tmp_path / "one")
    dvc(sequential, "repro")
    parallel = toy(tmp_path / "two")
    done = fanout(parallel, "--jobs", "3")
    assert done.returncode == 0, done.stderr
    assert outputs(parallel) == outputs(sequential)  # dvc.lock byte for byte included
    assert "up to date" in dvc(parallel, "status")
    assert "didn't change" in dvc(parallel, "repro", "--dry") or \
        "Running" not in dvc(parallel, "repro", "--dry")
    again = fanout(parallel, "--jobs", "3")
    assert "0 stages ran, 5 unchanged" in again.stdout


def test_a_params_edit_reruns_only_the_stages_that_read_it(tmp_path):
    repo = toy(tmp_path)
    assert fanout(repo, "--jobs", "2").returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "sep": "+"}))
    done = fanout(repo, "--jobs", "2")
    assert done.returncode == 0 and "1 stages ran, 4 unchanged" in done.stdout, done.stdout
    assert (repo / "report.txt").read_text() == "aaa+bbb+ccc+ddd"
    assert "up to date" in dvc(repo, "status")


def test_a_file_edited_during_the_run_is_reported_not_called_clean(tmp_path):
    """Each stage is looked at once: cells a-d, unchanged when the run starts, are out of date
    once cell.py is edited while the new cell e runs. The run succeeds, and its last line says
    that `dvc status` is not clean and names them, instead of claiming it is."""
    repo = toy(tmp_path, seconds=0.1)
    assert fanout(repo, "--jobs", "2").returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "cells": [*params["cells"], "e"]}))
    (repo / "slow-e").write_text("")
    run = fanout(repo, "--jobs", "2", wait=False)
    deadline = time.monotonic() + 60
    while not processes("cell.py e 0.1") and time.monotonic() < deadline:
        time.sleep(0.1)
    (repo / "cell.py").write_text(CELL + "# edited while e runs\n")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "is NOT clean: 4 stages changed while it ran" in out and "cell@a" in out, out
    assert "cell@a" in dvc(repo, "status")


def test_a_failing_stage_stops_the_run_with_its_line_and_records_the_others(tmp_path):
    repo = toy(tmp_path, seconds=0.1)
    (repo / "fail-c").write_text("")
    done = fanout(repo, "--jobs", "1")
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: stage cell@c failed: cell c cannot run: remove fail-c"), err
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"cell@a", "cell@b"} <= set(lock) and "cell@c" not in lock and "report" not in lock
    (repo / "fail-c").unlink()
    done = fanout(repo, "--jobs", "2")
    assert done.returncode == 0 and "ran" in done.stdout
    assert "cell@a" not in done.stdout.split("stages ran")[0].replace("0 stages", "")  # not redone
    assert "up to date" in dvc(repo, "status")


def test_a_killed_command_runs_again_and_the_run_completes(tmp_path):
    repo = toy(tmp_path, seconds=0.1)
    (repo / "kill-b").write_text("")
    done = fanout(repo, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert "again    cell@b: killed by signal" in done.stdout
    assert (repo / "out/b.txt").read_text() == "bbb"
    assert "up to date" in dvc(repo, "status")


def test_retries_zero_reports_the_kill(tmp_path):
    repo = toy(tmp_path, seconds=0.1)
    (repo / "kill-a").write_text("")
    done = fanout(repo, "--jobs", "2", "--retries", "0")
    assert done.returncode == 2 and "stage cell@a failed" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_every_command_and_leaves_dvc_consistent(tmp_path, signum):
    repo = toy(tmp_path, seconds=30)
    runner = fanout(repo, "--jobs", "4", wait=False)
    deadline = time.monotonic() + 60
    while not list((repo / ".dvc/tmp/fanout").glob("*.pgid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    begin = time.monotonic()
    runner.send_signal(signum)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert time.monotonic() - begin < 20  # the 30 s cells were stopped, not waited for
    assert "interrupted: 0 stages recorded, 4 stopped" in out
    def in_repo(pid):
        try:
            return Path(f"/proc/{pid}/cwd").resolve() == repo.resolve()
        except OSError:
            return False

    assert not any(in_repo(pid) for pid in processes("cell.py"))
    assert not list((repo / "out").glob("*.txt")) and not (repo / "dvc.lock").exists()
    assert "changed" in dvc(repo, "status") or "modified" in dvc(repo, "status") or \
        "up to date" not in dvc(repo, "status")


@pytest.mark.parametrize("args, fragment", [
    (["--jobs", "0"], "--jobs=0: give 1 to 1024"),
    (["--retries", "-1"], "--retries=-1"),
    (["--cpus-per-job", "nan"], "--cpus-per-job=nan"),
])
def test_bad_arguments_are_one_line(tmp_path, args, fragment):
    repo = toy(tmp_path)
    done = fanout(repo, *args)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {done.stderr.strip()[7:]}"
    assert fragment in done.stderr and "\n" not in done.stderr.strip()


def test_a_target_that_is_no_dvc_yaml_is_one_line(tmp_path):
    repo = toy(tmp_path)
    done = subprocess.run([sys.executable, "-m", "transferlab.fanout", "nowhere/dvc.yaml"],
                          cwd=repo, env=env(), capture_output=True, text=True)
    assert done.returncode == 2 and "no such dvc.yaml" in done.stderr
    (repo / "empty.yaml").write_text("stages: {}\n")
    outside = subprocess.run([sys.executable, "-m", "transferlab.fanout", str(tmp_path)],
                             cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert outside.returncode == 2 and "\n" not in outside.stderr.strip()


def test_a_second_runner_is_refused_by_dvcs_lock(tmp_path):
    repo = toy(tmp_path, seconds=5)
    first = fanout(repo, "--jobs", "1", wait=False)
    deadline = time.monotonic() + 60
    while not list((repo / ".dvc/tmp/fanout").glob("*.pgid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = fanout(repo, "--jobs", "1")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert second.returncode != 0 and "lock" in (second.stderr + second.stdout).lower()


def test_a_ray_address_where_nothing_listens_is_one_line(tmp_path):
    pytest.importorskip("ray")
    repo = toy(tmp_path)
    done = fanout(repo, "--ray", "127.0.0.1:1")
    assert done.returncode == 2 and "no Ray cluster answers there" in done.stderr
    assert "\n" not in done.stderr.strip()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """Two Ray nodes on 127.0.0.1 (`ray start --head`, then a second `ray start` joining it),
    one CPU each; stopped at the end of the module."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    ray = str(Path(sys.executable).parent / "ray")
    ray_env = {**env(), "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}"], check=True, capture_output=True, env=ray_env)
    try:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"],
                       check=True, capture_output=True, env=ray_env)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=ray_env)


@pytest.mark.slow
def test_a_ray_cluster_of_two_nodes_records_what_a_sequential_repro_records(tmp_path,
                                                                            ray_cluster):
    sequential = toy(tmp_path / "one")
    dvc(sequential, "repro")
    on_ray = toy(tmp_path / "two")
    done = fanout(on_ray, "--ray", ray_cluster)
    assert done.returncode == 0, done.stderr
    assert outputs(on_ray) == outputs(sequential)
    assert "up to date" in dvc(on_ray, "status")


@pytest.mark.slow
def test_killing_a_ray_worker_mid_run_still_completes_with_the_same_outputs(tmp_path,
                                                                           ray_cluster):
    sequential = toy(tmp_path / "one", seconds=3)
    dvc(sequential, "repro")
    on_ray = toy(tmp_path / "two", seconds=3)
    runner = fanout(on_ray, "--ray", ray_cluster, wait=False)
    deadline = time.monotonic() + 120
    while not list((on_ray / ".dvc/tmp/fanout").glob("*.pgid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    workers = processes("ray::run_command")
    assert workers, "no Ray worker was running a stage"
    os.kill(workers[0], signal.SIGKILL)
    out, err = runner.communicate(timeout=180)
    assert runner.returncode == 0, err
    assert outputs(on_ray) == outputs(sequential)
    assert "up to date" in dvc(on_ray, "status")


@pytest.mark.slow
def test_the_study_by_fanout_has_the_bytes_of_a_sequential_repro(tmp_path):
    """The real study/dvc.yaml on tiny params (2 seeds x 2 budgets, the layer grid, the
    reports), from one fully run default pipeline, every output the same bytes and every
    dvc.lock entry the same: `dvc repro study/dvc.yaml` in one copy,
    `transferlab-fanout --jobs 2` in another, each stage with the same torch threads
    (TRANSFERLAB_JOBS=2: a thread count changes float sums, which is not what is tested)."""
    from tests.dvc_helpers import env as project_env
    from tests.dvc_helpers import fully_run_project, read_params, write_params

    copies = {}
    for name in ("sequential", "fanout"):
        repo = fully_run_project(tmp_path / name)
        params = read_params(repo)
        params["study"]["seeds"] = [0, 1]
        write_params(repo, params)
        copies[name] = repo
    jobs = {**project_env(copies["sequential"]), "TRANSFERLAB_JOBS": "2"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "study/dvc.yaml"],
                          cwd=copies["sequential"], env=jobs, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "transferlab.fanout", "study/dvc.yaml",
                           "--jobs", "2"], cwd=copies["fanout"],
                          env=project_env(copies["fanout"]), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9 stages ran" in done.stdout  # check_params, 4 cells, 2 layer grids, 2 reports

    def study(repo):
        return {p.relative_to(repo): p.read_bytes() for p in sorted((repo / "study").rglob("*"))
                if p.is_file() and p.name != "dvc.lock"}

    def lock(repo):
        return yaml.safe_load((repo / "study/dvc.lock").read_text())

    assert study(copies["fanout"]) == study(copies["sequential"])
    # the same entries; their order in a new lock file is the order DVC visits stages, which
    # for a subgraph under half its graph follows a set's, so Python's hash seed (it moved
    # between two sequential runs here): not the runner's to match byte for byte
    assert lock(copies["fanout"]) == lock(copies["sequential"])
    for repo in copies.values():
        assert "up to date" in dvc(repo, "status", "study/dvc.yaml")


def test_a_dvc_yaml_that_does_not_parse_is_one_line(tmp_path):
    """Any of the repository's dvc.yaml files: DVC reads them all to build its graph."""
    repo = toy(tmp_path)
    (repo / "elsewhere").mkdir()
    (repo / "elsewhere/dvc.yaml").write_text("stages:\n  a: [\n")
    done = fanout(repo, "--jobs", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("error: dvc: unable to read: 'elsewhere/dvc.yaml'")
    assert "\n" not in done.stderr.strip()


def shared_nothing(tmp_path: Path, seconds: float = 0.3) -> tuple[Path, Path]:
    """The toy, committed and pushed to a bare git repository (its origin), with a DVC remote
    in a folder named in .dvc/config.local (what workers must be sent, not find in git)."""
    repo = toy(tmp_path, seconds=seconds, uncached_report=True)
    git(repo, "config", "user.email", "test@example.com")  # no global identity needed
    git(repo, "config", "user.name", "transferlab tests")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "toy")
    origin = tmp_path / "origin repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(origin)], check=True)
    git(repo, "remote", "add", "origin", str(origin))
    dvc(repo, "remote", "add", "--local", "store", str(tmp_path / "dvc store"))
    return repo, tmp_path / "work dir"


def test_workers_with_no_shared_file_system_clone_pull_and_push(tmp_path):
    """--remote: every stage runs in its own clone (git) and its data moves through the DVC
    remote; the runner's checkout ends as a sequential `dvc repro` leaves it, byte for byte."""
    sequential = toy(tmp_path / "one", uncached_report=True)
    dvc(sequential, "repro")
    repo, work = shared_nothing(tmp_path / "two")
    done = fanout(repo, "--jobs", "2", "--remote", "store", "--workdir", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs(repo) == outputs(sequential)  # dvc.lock included
    assert "up to date" in dvc(repo, "status")
    assert "in sync" in dvc(repo, "status", "--cloud", "-r", "store")  # all pushed
    assert {p.name for p in (work / "logs").iterdir()} >= {"cell@a.log", "report.log"}
    assert not list((work / "clones").iterdir())  # each clone removed once pushed
    assert "0 stages ran, 6 unchanged" in fanout(repo, "--remote", "store", "--workdir",
                                                 str(work)).stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "sep": "+"}))
    git(repo, "commit", "-qam", "sep +")
    git(repo, "push", "-q", "origin", "HEAD")
    done = fanout(repo, "--remote", "store", "--workdir", str(work))
    assert "2 stages ran, 4 unchanged" in done.stdout, done.stdout + done.stderr
    # the cells came from the remote, the uncached report back with the worker's result, and
    # the summary's worker read this report (git has none, the remote neither)
    assert (repo / "report.txt").read_text() == "aaa+bbb+ccc+ddd"
    assert (repo / "summary.txt").read_text() == "AAA+BBB+CCC+DDD"


@pytest.mark.parametrize("case, fragment", [
    ("dirty", "params.yaml differ from the last commit, which is what workers check out"),
    ("no origin", "no git remote named origin: give the URL workers clone with --git URL"),
    ("unknown remote", "--remote elsewhere: no such DVC remote (configured: store)"),
    ("not pushed", "is not at "),
    ("git alone", "--git and --workdir are for workers with no shared file system"),
])
def test_workers_that_could_not_reach_the_repository_are_refused_in_one_line(tmp_path, case,
                                                                              fragment):
    repo, work = shared_nothing(tmp_path, seconds=0.1)
    args = ["--remote", "store", "--workdir", str(work)]
    if case == "dirty":
        (repo / "params.yaml").write_text(yaml.safe_dump({"cells": list("abcd"), "sep": "+"}))
    elif case == "no origin":
        git(repo, "remote", "remove", "origin")
    elif case == "unknown remote":
        args[1] = "elsewhere"
    elif case == "not pushed":
        (repo / "notes.txt").write_text("not pushed")
        git(repo, "add", "notes.txt")
        git(repo, "commit", "-qm", "local only")
    elif case == "git alone":
        args = ["--git", str(tmp_path)]
    done = fanout(repo, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert fragment in done.stderr and "\n" not in done.stderr.strip(), done.stderr
    assert "Traceback" not in done.stderr
    if case == "not pushed":
        assert "git push it there" in done.stderr
    assert not (repo / "dvc.lock").exists()  # nothing recorded


@pytest.mark.slow
def test_ray_workers_with_no_shared_file_system_record_what_a_sequential_repro_records(
        tmp_path, ray_cluster):
    sequential = toy(tmp_path / "one", uncached_report=True)
    dvc(sequential, "repro")
    repo, work = shared_nothing(tmp_path / "two")
    done = fanout(repo, "--ray", ray_cluster, "--remote", "store", "--workdir", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs(repo) == outputs(sequential)
    assert "up to date" in dvc(repo, "status")


@pytest.mark.slow
def test_workers_move_data_through_an_s3_remote(tmp_path, s3_endpoint):
    """The same through DVC's S3 plugin against an S3 server on 127.0.0.1 (moto): the remote's
    endpoint is only in the runner's .dvc/config.local, its credentials in the environment."""
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed: pip install -e '.[test]'")
    from tests.conftest import BUCKET

    url, s3 = s3_endpoint
    sequential = toy(tmp_path / "one", uncached_report=True)
    dvc(sequential, "repro")
    repo, work = shared_nothing(tmp_path / "two")
    dvc(repo, "remote", "add", "--local", "s3", f"s3://{BUCKET}/fanout")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", url)
    for key in ("access_key_id", "secret_access_key"):  # moto takes any; the runner uses these
        dvc(repo, "remote", "modify", "--local", "s3", key, f"only-the-runner-has-its-{key}")
    done = fanout(repo, "--jobs", "2", "--remote", "s3", "--workdir", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs(repo) == outputs(sequential)
    assert "up to date" in dvc(repo, "status")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) >= 4  # 4 cells
    specs = [p.read_text() for p in (work / "specs").iterdir()]  # what reached the workers
    assert specs and url in specs[0] and not any("only-the-runner" in t for t in specs)
