"""`transferlab-fanout`: run a dvc.yaml's out-of-date stages in parallel, on this machine's cores
or on a Ray cluster, and record each in DVC as `dvc repro` would have.

    transferlab-fanout study/dvc.yaml --jobs 2            # local processes
    transferlab-fanout study/dvc.yaml --ray auto --jobs 8 # a Ray cluster (`ray start` on each node)

DVC runs one stage at a time (`dvc repro` holds the repository lock; `dvc exp run --jobs`
parallelises whole experiments). This runner orders DVC's own stage graph and nothing more:
- the plan is every stage of the file and every stage upstream of it (DVC's graph, as
  `dvc repro FILE` takes it); a stage is looked at once every stage it depends on is resolved,
  and runs if DVC says it changed (`Stage.changed`: deps, outs, params, command), exactly the
  test `dvc repro` makes at that point. Independent stages (the study's cells) run at once,
  on the engine: it schedules, we do not;
- before a stage runs its outputs are removed (as `dvc repro` does); when it succeeds it is
  recorded in the runner's process under the repository lock: its deps and outs hashed, outs
  moved into the cache, the run-cache entry and the dvc.lock entry written (`Stage.save`,
  `Stage.commit`, `Stage.dump`: what `dvc repro` calls). Afterwards `dvc status` is clean and
  `dvc repro` does nothing;
- engines: `local` (subprocesses, `--jobs` at once, each told via TRANSFERLAB_JOBS so that
  `compute.threads: auto` takes cores / jobs threads; one GPU each, round robin, where CUDA
  devices are visible) and `ray` (a task per stage, `--cpus-per-job` CPUs and a GPU each where
  the cluster has GPUs). Workers share this repository's file system (one machine, or a shared
  mount at the same path on every node): the commands run in it, and the outputs are recorded
  from it;
- faults: a stage whose process was killed by a signal we did not send (a worker lost, an OOM
  kill) runs again, up to `--retries` times; the pipeline's stages publish atomically, so a
  killed one leaves nothing half-written, and finished stages were already recorded. A stage
  that fails (a user error: exit 2 and one line) stops the run with that line; the others are
  stopped and nothing unfinished is recorded. Ctrl-C (SIGINT) or SIGTERM stops every running
  command (and the Ray tasks) and exits 130 with DVC consistent.
Each stage's output goes to `.dvc/tmp/fanout/<stage>.log`; one line per stage is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import transferlab
from transferlab.errors import UserError, one_line, show_path

LOGS = Path(".dvc/tmp/fanout")


def killed(code: int) -> bool:
    """An exit status that says a signal stopped the command (directly, through its shell, or
    a stage's own 130 for SIGTERM/SIGINT), not that the command failed."""
    return code < 0 or code in (128 + signal.SIGKILL, 128 + signal.SIGTERM, 130)


@dataclass
class Job:
    """One stage to run: its DVC address, command, working folder and environment."""
    name: str
    cmd: str
    cwd: str
    env: dict[str, str]
    log: str
    tries: int = 0
    cpus: float | None = None  # Ray: the CPUs its task holds (threads = those, on any node)
    spec: dict | None = None  # --remote: what transferlab.workers needs to run it in a clone


@dataclass
class Done:
    name: str
    code: int  # the command's exit status; negative: the signal that killed it
    seconds: float
    error: str = ""  # the last line of its stderr, for a failure
    lock: dict | None = None  # --remote: {"entry": its dvc.lock entry, "files": its uncached outs}


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process that started it dies (Linux), so a
    killed runner or Ray worker leaves no command behind to publish after its retry."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_earlier_try(pidfile: Path) -> None:
    """A try of this job whose runner (a Ray worker) was killed can leave its command running
    (the death signal reaches only the shell): stop that process group before trying again."""
    try:
        host, pgid, started = pidfile.read_text().split()
        pgid = int(pgid)
    except (OSError, ValueError):
        return
    if host != os.uname().nodename:
        return  # on another node: deterministic and atomic, its late write is the same bytes
    if str((transferlab._proc_stat(pgid) or ("", 0, None))[2]) != started:
        return  # that process is gone (its number may be another's now)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, ValueError):
        return
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run_command(job: Job, started: Callable[[subprocess.Popen], None] | None = None) -> Done:
    """Run `job` in a new session (its process group is what stopping kills); its output to
    its log file. Used by both engines (in a Ray worker too). A folder it cannot write or a
    command it cannot start is a failure with its one line, on whichever node it ran."""
    begin = time.monotonic()
    try:
        return _run_command(job, started, begin)
    except OSError as err:
        return Done(job.name, 2, time.monotonic() - begin,
                    one_line(f"cannot run it on {os.uname().nodename}: {err}")[:500])


def _run_command(job: Job, started, begin: float) -> Done:
    pidfile = Path(job.log + ".pgid")
    _kill_earlier_try(pidfile)
    env = dict(job.env)
    if job.cpus:  # compute.threads: auto takes cores / TRANSFERLAB_JOBS on the node it lands on
        env["TRANSFERLAB_JOBS"] = str(max(1, (os.cpu_count() or 1) // max(1, int(job.cpus))))
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    cmd, result = job.cmd, None
    if job.spec is not None:  # on the node that runs it: a clone, not the runner's checkout
        from transferlab.workers import safe_name

        name = safe_name(job.spec["address"])
        spec_file = Path(job.cwd) / "specs" / f"{name}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(job.spec))
        result = Path(job.cwd) / "results" / f"{name}.json"
        cmd = f"{shlex.quote(sys.executable)} -m transferlab.workers {shlex.quote(str(spec_file))}"
    with open(job.log, "wb") as log:
        process = subprocess.Popen(cmd, shell=True, cwd=job.cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        start = (transferlab._proc_stat(process.pid) or ("", 0, 0))[2]
        pidfile.write_text(f"{os.uname().nodename} {process.pid} {start}")
        if started:
            started(process)
        code = process.wait()
    pidfile.unlink(missing_ok=True)
    error = ""
    if code:
        lines = Path(job.log).read_text(errors="replace").strip().splitlines()
        error = next((line for line in reversed(lines) if line.startswith("error: ")),
                     lines[-1] if lines else "")
    lock = None
    if result is not None and code == 0:
        lock = json.loads(result.read_text())
    return Done(job.name, code, time.monotonic() - begin, one_line(error)[:500], lock)


class LocalEngine:
    """`jobs` subprocesses at once on this machine."""

    def __init__(self, jobs: int):
        from concurrent.futures import ThreadPoolExecutor

        self.jobs = jobs
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.gpus = _visible_gpus()
        self.next_gpu = 0

    def submit(self, job: Job):
        if self.gpus:  # one GPU a job, round robin
            job.env = {**job.env, "CUDA_VISIBLE_DEVICES": self.gpus[self.next_gpu % len(self.gpus)]}
            self.next_gpu += 1

        def started(process):
            with self.lock:
                self.processes.add(process)

        return self.pool.submit(run_command, job, started)

    def wait(self, futures: dict, timeout: float) -> list:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        done, _ = wait_futures(list(futures), timeout=timeout, return_when=FIRST_COMPLETED)
        results = []
        for future in done:
            results.append((future, future.result()))
        with self.lock:
            self.processes = {p for p in self.processes if p.poll() is None}
        return results

    def stop(self) -> None:
        with self.lock:
            running = [p for p in self.processes if p.poll() is None]
        for process in running:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayEngine:
    """A Ray task per stage, on the cluster at `address` (`ray start --head` / `--address` on
    each node; `auto`: the one this machine belongs to). Ray retries a task whose worker dies."""

    def __init__(self, address: str, cpus: float, retries: int):
        self.cpus = cpus
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs the ray package: pip install -e '.[ray]'") from None
        self.ray = ray
        if address != "auto":  # ray.init waits minutes on an address where nothing listens
            import socket

            host, _, port = address.removeprefix("ray://").rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except (OSError, ValueError) as err:
                raise UserError(f"--ray {address}: no Ray cluster answers there ({err}): start "
                                "one with `ray start --head`, or give its host:port") from None
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"--ray {address}: no Ray cluster there ({one_line(str(err))[:150]}):"
                            " start one with `ray start --head`, or give its address") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        self.remote = ray.remote(num_cpus=cpus, num_gpus=1 if gpus else 0,
                                 max_retries=retries, retry_exceptions=False)(run_command)

    def submit(self, job: Job):
        job.cpus = self.cpus
        return self.remote.remote(job)

    def wait(self, futures: dict, timeout: float) -> list:
        ready, _ = self.ray.wait(list(futures), num_returns=1, timeout=timeout)
        results = []
        for ref in ready:
            try:
                results.append((ref, self.ray.get(ref)))
            except (self.ray.exceptions.WorkerCrashedError,
                    self.ray.exceptions.RayTaskError) as err:  # retries spent
                results.append((ref, Done(futures[ref].name, -signal.SIGKILL, 0.0,
                                          one_line(str(err))[:300])))
        return results

    def stop(self) -> None:
        for ref in getattr(self, "pending", []):
            self.ray.cancel(ref, force=True)
        self.ray.shutdown()


def _visible_gpus() -> list[str]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


@dataclass
class Plan:
    """The stages of a run in DVC's graph: `after[s]` are the stages `s` depends on."""
    stages: dict[str, object]  # address -> dvc Stage, in the order `dvc repro` would visit them
    after: dict[str, set[str]] = field(default_factory=dict)


def plan(repo, target: str) -> Plan:
    """Every stage of dvc.yaml file `target` and every stage upstream of them, in the order
    `dvc repro target` visits them (DVC's own plan: a post-order walk of its graph, so that
    the dvc.lock files are written in the same order and come out the same bytes)."""
    from dvc.repo.reproduce import get_active_graph, plan_repro

    graph = get_active_graph(repo.index.graph)  # edges: stage -> a stage it depends on
    wanted = [s for s in repo.index.stages if s.path_in_repo == target]
    if not wanted:
        raise UserError(f"{target}: no stage of this repository is defined there: give a "
                        "dvc.yaml of it, e.g. study/dvc.yaml")
    order = plan_repro(graph, wanted)
    nodes = set(order)
    by_name = {s.addressing: s for s in order}
    after = {s.addressing: {d.addressing for d in graph.successors(s) if d in nodes}
             for s in order}
    return Plan(by_name, after)


def record(stage) -> None:
    """What `dvc repro` does once a stage's command has succeeded (dvc.stage.Stage.run):
    hash deps and outs (and write the run-cache entry), move outs into the cache, write the
    dvc.lock entry."""
    stage.save(run_cache=True)
    stage.commit()
    stage.dump(update_pipeline=False)


def record_in_order(the_plan: Plan, outcome: dict[str, str], unrecorded: list[str],
                    every: bool = False) -> list[str]:
    """Record the stages that ran, in the plan's order, up to the first one not resolved yet
    (`every`: all that ran): a new dvc.lock then lists its entries as `dvc repro` writes them.
    Returns the stages still unrecorded."""
    rest = list(unrecorded)
    while rest and (rest[0] in outcome or every):
        name = rest.pop(0)
        if outcome.get(name) == "ran":
            record(the_plan.stages[name])
    return rest


def run(target: str, engine, jobs: int, retries: int, say=print,
        remote: tuple[str, str | None, str] | None = None) -> dict[str, str]:
    """Run `target`'s out-of-date stages on `engine`; returns {stage: ran | unchanged}.
    `remote` = (DVC remote, git URL or None for origin's, worker folder): workers clone and
    pull instead of sharing this checkout (transferlab/workers.py)."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    from transferlab import workers

    repo = Repo(".")
    sync = workers.prepare(repo, *remote) if remote else None
    from_workers: dict[str, dict] = {}  # stage -> the dvc.lock entry its worker returned
    pushed: set[str] = set()
    the_plan, unrecorded = Plan({}), []
    outcome: dict[str, str] = {}
    running: dict = {}  # engine future -> Job
    interrupted: list[int] = []

    def on_signal(signum, frame):
        interrupted.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with repo.lock:
            the_plan = plan(repo, target)
            waiting = list(the_plan.stages)
            env = {**os.environ, "TRANSFERLAB_JOBS": str(jobs)}
            env.pop("DVC_STAGE", None)
            unrecorded = list(the_plan.stages)  # recorded in plan order: the dvc.lock bytes
            while waiting or running:
                if interrupted:
                    raise KeyboardInterrupt
                for name in [n for n in waiting if the_plan.after[n] <= set(outcome)]:
                    waiting.remove(name)
                    stage = the_plan.stages[name]
                    if not stage.cmd or stage.frozen or not stage.changed():
                        outcome[name] = "unchanged"
                        continue
                    stage.remove_outs(ignore_remove=False, force=False)
                    job = Job(name, stage.cmd, str(stage.wdir), env,
                              str(Path(repo.root_dir) / LOGS / f"{name.replace('/', '_')}.log"))
                    if sync:
                        upstream = {}
                        for up in the_plan.after[name]:
                            before = the_plan.stages[up]
                            if up in from_workers:
                                upstream[up] = (workers.lock_path(before), before.name,
                                                from_workers[up])
                                continue
                            if up not in pushed:
                                workers.push_outputs(repo, before, sync.remote)
                                pushed.add(up)
                            upstream[up] = workers.lock_entry(before)
                        job.spec = workers.spec(sync, stage, upstream,
                                                [the_plan.stages[up] for up in upstream])
                        job.cwd = sync.workdir
                        job.log = str(Path(sync.workdir, "logs", workers.safe_name(name) + ".log"))
                    running[engine.submit(job)] = job
                    say(f"started  {name}")
                if not running:
                    continue
                engine.pending = list(running)
                for future, done in engine.wait(running, timeout=0.5):
                    job = running.pop(future)
                    if done.code == 0:
                        if sync:
                            workers.land(repo, the_plan.stages[job.name], done.lock, sync.remote)
                            from_workers[job.name] = done.lock["entry"]
                        outcome[job.name] = "ran"
                        say(f"finished {job.name} ({done.seconds:.0f} s)")
                        unrecorded = record_in_order(the_plan, outcome, unrecorded)
                    elif killed(done.code) and job.tries < retries:
                        job.tries += 1
                        say(f"again    {job.name}: killed by signal {-done.code} "
                            f"(try {job.tries + 1} of {retries + 1})")
                        running[engine.submit(job)] = job
                    else:
                        engine.stop()
                        why = done.error or f"exit status {done.code}"
                        raise UserError(f"stage {job.name} failed: {why.removeprefix('error: ')}"
                                        f" (its output: {show_path(os.path.relpath(job.log))}); stages that finished "
                                        "are recorded, rerun the same command after the fix")
            unrecorded = record_in_order(the_plan, outcome, unrecorded)
    except (KeyboardInterrupt, UserError, DvcException) as stopped:
        engine.stop()
        try:
            with repo.lock:  # what finished is recorded, whatever stopped the run
                record_in_order(the_plan, outcome, unrecorded, every=True)
        except DvcException:
            pass  # the repository itself is what failed: DVC's own message follows
        if isinstance(stopped, DvcException) and not isinstance(stopped, LockError):
            # a dvc.yaml that does not parse, an output DVC cannot hash: its one line
            raise UserError(f"dvc: {one_line(str(stopped))[:300]}: fix what it names, then run "
                            "this again (stages that finished are recorded)") from None
        if isinstance(stopped, KeyboardInterrupt):
            say(f"interrupted: {sum(v == 'ran' for v in outcome.values())} stages recorded, "
                f"{len(running)} stopped and not recorded")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    engine.stop()
    return outcome


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="transferlab-fanout", description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a dvc.yaml of this repository, e.g. study/dvc.yaml")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="stages at once (default: the cores)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: auto or host:port")
    ap.add_argument("--cpus-per-job", type=float, default=1.0, help="Ray: CPUs a stage takes")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs again of a stage whose process was killed (default 2)")
    ap.add_argument("--remote", metavar="NAME",
                    help="workers share no file system: each stage runs in a clone of the git "
                         "URL at HEAD and moves data through this DVC remote (transferlab/workers.py)")
    ap.add_argument("--git", metavar="URL", help="--remote: the URL workers clone (default: "
                    "this repository's origin)")
    ap.add_argument("--workdir", metavar="DIR",
                    default=os.path.join(tempfile.gettempdir(), "transferlab-fanout"),
                    help="--remote: where a worker clones, on its node (default: %(default)s)")
    args = ap.parse_args(argv)
    if not 1 <= args.jobs <= 1024:
        raise UserError(f"--jobs={args.jobs}: give 1 to 1024")
    if not 0 <= args.retries <= 100:
        raise UserError(f"--retries={args.retries}: give 0 to 100")
    if not args.workdir.strip():
        raise UserError("--workdir '': give a folder workers may write in")
    args.workdir = os.path.abspath(args.workdir)
    if (args.git or args.workdir != ap.get_default("workdir")) and not args.remote:
        raise UserError("--git and --workdir are for workers with no shared file system: add "
                        "--remote NAME (a DVC remote), or leave them out")
    if not 0 < args.cpus_per_job <= 1024:  # NaN fails too
        raise UserError(f"--cpus-per-job={args.cpus_per_job}: give a number above 0")
    target = Path(args.target)
    if target.is_dir():
        target = target / "dvc.yaml"
    if not target.is_file():
        raise UserError(f"{args.target}: no such dvc.yaml: give one of this repository, e.g. "
                        "study/dvc.yaml")
    from dvc.repo import Repo

    try:
        root = Path(Repo.find_root(str(target.parent)))
    except Exception:  # noqa: BLE001 - dvc's NotDvcRepoError and kin
        raise UserError(f"{args.target} is not inside a DVC repository: run from this "
                        "project's checkout") from None
    relative = str(target.resolve().relative_to(root.resolve()))
    os.chdir(root)
    engine = RayEngine(args.ray, args.cpus_per_job, args.retries) if args.ray \
        else LocalEngine(args.jobs)
    begin = time.monotonic()
    from dvc.lock import LockError

    try:
        outcome = run(relative, engine, args.jobs, args.retries,
                      remote=(args.remote, args.git, args.workdir) if args.remote else None)
    except KeyboardInterrupt:
        sys.exit(130)
    except LockError as err:
        engine.stop()
        why = one_line(str(err))[:120]
        raise UserError(f"another dvc command holds this repository's lock ({why}): wait for "
                        "it to finish, then run this again") from None
    ran = sum(v == "ran" for v in outcome.values())
    stale = changed_since(relative)
    state = "clean" if not stale else (
        f"NOT clean: {len(stale)} stages changed while it ran (a file they read was edited: "
        f"{', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): run it again")
    print(f"{ran} stages ran, {len(outcome) - ran} unchanged, in {time.monotonic() - begin:.0f} s"
          f" ({'ray' if args.ray else f'{args.jobs} local jobs'}); `dvc status {relative}` is "
          f"{state}")


def changed_since(target: str) -> list[str]:
    """The stages of `target` (and upstream) that `dvc status` reports changed now: each was
    looked at once, when its turn came, so a file edited after that (code, params) leaves it
    out of date although the run succeeded."""
    from dvc.repo import Repo

    with Repo() as repo:
        return sorted(repo.status(targets=[target], with_deps=True))


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    try:
        main()
    except UserError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
