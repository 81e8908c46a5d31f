"""A real object-store remote: DVC's S3 plugin (`dvc-s3`) against an S3 server (moto) that the
test starts on 127.0.0.1. Push a full run, clone, pull: the clone is up to date, nothing reruns.

Credentials come from the environment only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as for
real S3); the endpoint goes to the git-ignored .dvc/config.local, so nothing of the remote's
access is ever in git. Needs the `test` extra (dvc-s3, moto[server]); skipped without it.
"""

from __future__ import annotations

import pytest

from tests.dvc_helpers import dvc, fully_run_project, git, ran

pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed: pip install -e '.[test]'")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

from tests.conftest import BUCKET, KEY_ID, SECRET  # noqa: E402  the server: conftest.s3_endpoint


def use_s3(repo, endpoint: str) -> None:
    """What a user does: a remote named s3 in .dvc/config.local (git-ignored), made the default."""
    dvc(repo, "remote", "add", "--local", "--default", "s3", f"s3://{BUCKET}/transferlab")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", endpoint)


@pytest.mark.slow
def test_push_to_s3_clone_pull_leaves_nothing_to_run(tmp_path_factory, s3_endpoint):
    endpoint, s3 = s3_endpoint
    repo = fully_run_project(tmp_path_factory.mktemp("pushed"))
    use_s3(repo, endpoint)
    pushed = dvc(repo, "push")
    objects = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert "pushed" in pushed and objects, pushed
    assert all(o["Key"].startswith("transferlab/") for o in objects)

    clone = tmp_path_factory.mktemp("clone") / "transferlab"
    git(clone.parent, "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "source.safetensors").exists(), "outputs come from the remote"
    use_s3(clone, endpoint)
    dvc(clone, "pull")

    assert (clone / "models" / "source.safetensors").is_file()
    assert (clone / "models" / "source.safetensors").read_bytes() == \
        (repo / "models" / "source.safetensors").read_bytes()
    status = dvc(clone, "status", "dvc.yaml")
    assert "up to date" in status, status
    cloud = dvc(clone, "status", "--cloud", "dvc.yaml")  # every cached output is in the bucket
    assert "up to date" in cloud.lower() or "cache and remote" in cloud.lower(), cloud
    output = dvc(clone, "repro")
    assert ran(output) == [], output
    assert git(clone, "status", "--porcelain") == ""
    # the remote's access lives in the environment and config.local, never in a tracked file
    assert _grep_tracked(clone, (KEY_ID, SECRET, endpoint)) == []
    assert KEY_ID not in (clone / ".dvc" / "config.local").read_text()


def _grep_tracked(repo, needles) -> list[str]:
    """Tracked files of `repo` that contain any of `needles`."""
    hits = []
    for name in git(repo, "ls-files").splitlines():
        text = (repo / name).read_bytes()
        if any(n.encode() in text for n in needles):
            hits.append(name)
    return hits
