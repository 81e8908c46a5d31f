"""Workers with no shared file system: `transferlab-fanout --remote NAME` (docs/scaling.md).

Each stage runs in a fresh clone on the worker's node, not in the runner's checkout: the code
comes through git, the data through the project's DVC remote, and what a stage made goes back
the same way. The runner (transferlab/fanout.py) stays the only writer of its dvc.lock files.

    runner                                  worker (a local process or a Ray task, any node)
    ------                                  ------------------------------------------------
    checks: tracked files == HEAD,          git clone URL; git checkout COMMIT
      the remote is configured              the upstream stages' dvc.lock entries written in
    pushes the outputs of upstream            (the runner's, recorded or not yet), the remote's
      stages it did not get from a worker     settings in .dvc/config.local
    sends: URL, COMMIT, the remote's        dvc pull -r NAME <upstream stages>
      settings, the upstream entries        the stage's command (PYTHONPATH = the clone, so
                                              `import transferlab` is the clone's code)
                                            dvc commit <stage>; dvc push -r NAME <stage>
    fetches the outputs by the entry's  <-- returns the stage's dvc.lock entry
      hashes, checks them out, records
      the stage as `dvc repro` would

So a worker needs git access to URL (the commit pushed there: `git push` first), the remote's
credentials in its environment (as for `dvc pull`), and this package's dependencies installed;
it writes only under its `--workdir` (a clone per stage, removed once the stage is pushed).
The stage's own output goes to `<workdir>/logs/<stage>.log` on that node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import UserError, one_line

LOCK = "dvc.lock"
# Remote settings that are credentials stay on the runner: a worker's spec is a file on its
# node, and each node reads its own credentials from its environment, as `dvc pull` does.
SECRET = re.compile(r"secret|password|token|access_key|passphrase|credential", re.IGNORECASE)


@dataclass(frozen=True)
class Sync:
    """How workers reach the repository: git `url` at `commit`, data through DVC remote
    `remote` (its settings: what `dvc remote add/modify` stored, local config included)."""
    url: str
    commit: str
    remote: str
    settings: dict
    workdir: str


def _git(root: str, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"git {' '.join(args)}: {one_line(done.stderr or done.stdout)[:200]}")
    return done.stdout.strip()


def prepare(repo, remote: str, url: str | None, workdir: str) -> Sync:
    """The runner's checks before any stage runs, each a one-line refusal: workers check out
    HEAD, so every tracked file but the dvc.lock files and the stages' outputs (the runner sends
    both) must equal it; the remote must exist; the git URL defaults to the `origin` remote's."""
    root = repo.root_dir
    try:
        commit = _git(root, "rev-parse", "--verify", "HEAD^{commit}")
    except UserError:
        raise UserError("--remote: this repository has no commit yet: workers check out a "
                        "commit (git commit, then git push)") from None
    made = [os.path.relpath(out.fs_path, root) for out in repo.index.outs]  # stages rewrite these

    def made_by_a_stage(path: str) -> bool:
        return any(path == out or path.startswith(out.rstrip("/") + "/") for out in made)

    changed = [p for p in _git(root, "diff", "--name-only", "HEAD").splitlines()
               if p and Path(p).name != LOCK and not made_by_a_stage(p)]
    if changed:
        raise UserError(f"--remote: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}"
                        " differ from the last commit, which is what workers check out: commit "
                        "(and git push) them, or run without --remote")
    if url is None:
        try:
            url = _git(root, "remote", "get-url", "origin")
        except UserError:
            raise UserError("--remote: this repository has no git remote named origin: give "
                            "the URL workers clone with --git URL") from None
    settings = dict(repo.config.get("remote", {}).get(remote) or {})
    if not settings:
        known = ", ".join(repo.config.get("remote", {})) or "none"
        raise UserError(f"--remote {remote}: no such DVC remote (configured: {known}): "
                        f"`dvc remote add {remote} URL`, or name one of them")
    shared = {k: v for k, v in settings.items() if not SECRET.search(str(k))}
    return Sync(url, commit, remote, _plain(shared), workdir)


def _plain(value):
    """The remote's settings as JSON can carry them (DVC's config holds bools, ints, strs)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


def lock_entry(stage) -> tuple[str, str, dict] | None:
    """(lock file relative to the repository, stage name, its entry as DVC writes it, from the
    hashes the loaded stage holds) for a pipeline stage; None for a `.dvc` file (git carries
    its hashes)."""
    from dvc.stage.serialize import to_single_stage_lockfile

    if getattr(stage, "is_data_source", False) or stage.cmd is None:
        return None
    return lock_path(stage), stage.name, to_single_stage_lockfile(stage)


def lock_path(stage) -> str:
    return os.path.relpath(Path(stage.dvcfile.path).with_name(LOCK), stage.repo.root_dir)


def _objects(odb, stage) -> list:
    """The objects of a stage's cached outputs: a directory's listing (its `.dir` object, read
    from `odb`) and every file in it; DVC's transfer moves only the objects it is given."""
    from dvc_data.hashfile.tree import Tree

    objects = []
    for out in stage.outs:
        if out.use_cache and out.hash_info:
            objects.append(out.hash_info)
            if out.hash_info.isdir:
                objects.extend(oid for _, _, oid in Tree.load(odb, out.hash_info))
    return objects


def push_outputs(repo, stage, remote: str) -> None:
    """Put the outputs of a stage the runner holds (unchanged, or a `.dvc` file's) on the
    remote, so that a worker can pull them; what the remote has already is skipped."""
    try:
        objects = _objects(repo.cache.local, stage)
    except (OSError, ValueError) as err:  # a .dir object missing from this cache
        raise UserError(f"--remote {remote}: the outputs of {stage.addressing} are not in this "
                        f"cache ({one_line(str(err))[:120]}): `dvc pull {stage.addressing}` or "
                        "`dvc repro` it first") from None
    if objects:
        try:
            result = repo.cloud.push(objects, remote=remote)
        except Exception as err:  # noqa: BLE001 - each storage plugin raises its own
            raise UserError(f"--remote {remote}: pushing the outputs of {stage.addressing} "
                            f"failed ({type(err).__name__}: {one_line(str(err))[:200]}): check the "
                            f"remote's settings and credentials (`dvc push -r {remote}` here)"
                            ) from None
        if result.failed:
            raise UserError(f"--remote {remote}: could not push the outputs of {stage.addressing}"
                            f" ({len(result.failed)} objects missing from this cache): "
                            f"`dvc pull {stage.addressing}` or `dvc repro` it first")


def _read_files(root: Path, outs: list[str]) -> dict[str, str]:
    """{path: base64 bytes} of every file of the outputs DVC does not cache (`cache: false`:
    metrics, reports, plots, small and git-tracked): they never reach the remote, so they travel
    back with the result."""
    import base64

    files = {}
    for out in outs:
        path = root / out
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[str(file.relative_to(root))] = base64.b64encode(file.read_bytes()).decode()
    return files


def _write_files(root: Path, outs: list[str], files: dict[str, str]) -> None:
    """The uncached outputs a worker sent, written whole: each output built beside its place
    and moved in, the earlier one removed (as `dvc repro` removes outputs before a run)."""
    import base64

    for out in outs:
        target = root / out
        staged = target.with_name(f".{target.name}.fanout-tmp")
        shutil.rmtree(staged, ignore_errors=True)
        staged.unlink(missing_ok=True)
        mine = {name: data for name, data in files.items()
                if name == out or name.startswith(out.rstrip("/") + "/")}
        for name, data in mine.items():
            file = staged if name == out else staged / os.path.relpath(name, out)
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(base64.b64decode(data))
        if not mine:
            continue  # the command did not make it: DVC's own check names it when recording
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)


def land(repo, stage, result: dict, remote: str) -> None:
    """A worker's result into this checkout: the stage's cached outputs fetched from the remote
    by the hashes of its dvc.lock entry and checked out, the uncached ones written from the
    result; then fanout records it as any stage."""
    from dvc.stage.loader import StageLoader

    _write_files(Path(repo.root_dir), [os.path.relpath(out.fs_path, repo.root_dir)
                                       for out in stage.outs if not out.use_cache],
                 result["files"])
    StageLoader.fill_from_lock(stage, result["entry"])
    try:
        objects = _objects(repo.cloud.get_remote_odb(remote, "pull"), stage)
        fetched = repo.cloud.pull(objects, remote=remote)
    except Exception as err:  # noqa: BLE001 - each storage plugin raises its own (botocore, ...)
        raise UserError(f"stage {stage.addressing}: fetching its outputs from remote {remote} "
                        f"failed ({type(err).__name__}: {one_line(str(err))[:200]}): check the "
                        f"remote's settings and credentials (`dvc pull -r {remote}` here)") from None
    if fetched.failed:
        raise UserError(f"stage {stage.addressing}: its worker's outputs are not on remote "
                        f"{remote} ({len(fetched.failed)} objects missing): run it again")
    for out in stage.outs:
        if out.use_cache:
            out.checkout()


def spec(sync: Sync, stage, upstream: dict[str, tuple[str, str, dict] | None],
         upstream_stages: list) -> dict:
    """What a worker needs to run `stage`: the sync, the stage's address, lock file and command
    folder, the upstream stages with the entries their outputs are pulled by, and the files of
    their uncached outputs (this checkout's: git's may be older, the remote has none)."""
    locks: dict[str, dict] = {}
    for entry in upstream.values():
        if entry:
            locks.setdefault(entry[0], {})[entry[1]] = entry[2]
    root = Path(stage.repo.root_dir)
    uncached = [os.path.relpath(out.fs_path, root) for up in upstream_stages for out in up.outs
                if not out.use_cache]
    return {"url": sync.url, "commit": sync.commit, "remote": sync.remote,
            "settings": sync.settings, "address": stage.addressing, "name": stage.name,
            "lock": lock_path(stage), "cmd": stage.cmd,
            "wdir": os.path.relpath(stage.wdir, stage.repo.root_dir),
            "outs": [os.path.relpath(out.fs_path, stage.repo.root_dir) for out in stage.outs],
            "uncached": [os.path.relpath(out.fs_path, stage.repo.root_dir)
                         for out in stage.outs if not out.use_cache],
            "upstream": sorted(upstream), "locks": locks,
            "inputs": uncached, "files": _read_files(root, uncached)}


def safe_name(name: str) -> str:
    """A stage address as a file name (its log, spec and result on the worker's node)."""
    return "".join(c if c.isalnum() or c in "@-_." else "_" for c in name)


def work(job_spec: dict, workdir: Path) -> int:
    """The worker's side, in this process's folder `workdir`: returns the exit status (the
    command's own when it failed, so that a kill reads as a kill); the dvc.lock entry of the
    stage goes to `<workdir>/results/<stage>.json`."""
    import yaml

    name = safe_name(job_spec["address"])
    clone = workdir / "clones" / name
    result = workdir / "results" / f"{name}.json"
    result.unlink(missing_ok=True)
    shutil.rmtree(clone, ignore_errors=True)
    clone.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def step(*args: str, what: str) -> None:
        done = subprocess.run(list(args), cwd=clone if clone.exists() else workdir, env=env,
                              stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(done.stderr)
        if done.returncode:
            lines = done.stderr.strip().splitlines()
            why = next((line for line in reversed(lines) if line.startswith("ERROR")),
                       lines[-1] if lines else f"exit status {done.returncode}")
            raise UserError(f"{what}: {one_line(why)[:300]}")

    dvc = (sys.executable, "-m", "dvc")
    step("git", "clone", "--quiet", "--no-checkout", job_spec["url"], str(clone),
         what=f"git clone {job_spec['url']}")
    try:
        step("git", "checkout", "--quiet", "--detach", job_spec["commit"], what="git checkout")
    except UserError:
        raise UserError(f"commit {job_spec['commit'][:12]} is not at {job_spec['url']}: "
                        "git push it there, then run again") from None
    for relative, entries in job_spec["locks"].items():
        path = clone / relative
        data = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
        data.setdefault("schema", "2.0")
        data.setdefault("stages", {}).update(entries)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    _write_files(clone, job_spec["inputs"], job_spec["files"])
    from dvc.config import Config

    with Config(dvc_dir=str(clone / ".dvc")).edit("local") as config:
        config["remote"][job_spec["remote"]] = job_spec["settings"]
    if job_spec["upstream"]:
        step(*dvc, "pull", "-r", job_spec["remote"], *job_spec["upstream"],
             what=f"dvc pull of the stages {job_spec['address']} depends on")
    for out in job_spec["outs"]:  # as in the runner's checkout, where they existed before
        (clone / out).parent.mkdir(parents=True, exist_ok=True)
    env_cmd = {**env, "PYTHONPATH": os.pathsep.join(
        [str(clone), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = subprocess.run(job_spec["cmd"], shell=True, cwd=clone / job_spec["wdir"],
                          env=env_cmd).returncode
    if code:
        return code if code > 0 else 128 - code
    step(*dvc, "commit", "--force", job_spec["address"], what="dvc commit")
    step(*dvc, "push", "-r", job_spec["remote"], job_spec["address"],
         what=f"dvc push -r {job_spec['remote']}")
    entry = (yaml.safe_load((clone / job_spec["lock"]).read_text()) or {}
             ).get("stages", {}).get(job_spec["name"])
    if entry is None:
        raise UserError(f"dvc commit wrote no dvc.lock entry for {job_spec['address']}")
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"entry": entry, "files": _read_files(clone, job_spec["uncached"])}))
    shutil.rmtree(clone, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    """`python -m transferlab.workers SPEC.json`: what fanout runs on a worker (the spec is
    written beside the job's log by fanout.run_command, on the node that runs it)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0])
    try:
        code = work(json.loads(path.read_text()), path.parent.parent)
    except UserError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
