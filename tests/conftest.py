"""Shared fixtures: the repository's params.yaml with small overrides, and tiny in-memory data."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transferlab.params import Params, parse_params
from transferlab.strategies import METHODS

# the shared checks of the bad-input tests report what failed, as asserts in a test module do
pytest.register_assert_rewrite("tests.bad_input_helpers")

ROOT = Path(__file__).resolve().parents[1]

# Small enough that each stage takes a second or two, big enough to exercise every code path.
TINY = {
    "prepare": {"image_size": 8, "shots": 2, "target_val_per_class": 3},
    "model": {"widths": [4, 8, 8]},
    "pretrain": {"epochs": 1, "batch_size": 256},
    "transfer": {name: {"steps": 4, "batch_size": 16}
                 for name, m in METHODS.items() if "steps" in m.options.model_fields},
    "study": {"shots": [0, 2], "seeds": [0], "layer_shots": 1},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def repo_params_dict() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params_dict(**sections) -> dict:
    return merge(merge(repo_params_dict(), TINY), sections)


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(tiny_params_dict())


def make_images(n_per_class: int, num_classes: int = 4, size: int = 8, seed: int = 0):
    """Class c is a bright bar at row 2c (plus noise): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = rng.integers(0, 40, size=(len(y), 1, size, size)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 0, (2 * c) % size, :] = 255
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


@pytest.fixture
def tiny_target():
    x_train, y_train = make_images(3, seed=1)
    x_val, y_val = make_images(4, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


@pytest.fixture
def tiny_source():
    x_train, y_train = make_images(20, seed=3)
    x_val, y_val = make_images(5, seed=4)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def stage_commands() -> list[tuple[str, list[str]]]:
    """(stage script, argv) for every stage of dvc.yaml in order, the matrix expanded."""
    commands = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        keys = list(stage["foreach"]) if "foreach" in stage else [None]
        for key in keys:
            cmd = stage["do"]["cmd"].replace("${key}", key) if key else stage["cmd"]
            words = shlex.split(cmd)
            commands.append((words[1].removeprefix("stages/").removesuffix(".py"), words[2:]))
    return commands


# An S3 server for the remote tests (tests/test_dvc_s3_remote.py, tests/test_fanout.py).
KEY_ID, SECRET = "transferlab-test-key", "transferlab-test-secret-not-a-real-one"
BUCKET = "transferlab-remote"


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path):
    """An S3 API on 127.0.0.1 (a free port), with one empty bucket; the credentials in the
    environment of this test and of every `dvc` it runs, and no AWS config file read."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=url)

    def empty_bucket():  # moto keeps one store per process: another test's server saw it too
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        empty_bucket()
    try:
        yield url, s3
    finally:
        empty_bucket()
        server.stop()
