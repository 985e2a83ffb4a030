"""A real S3-compatible server for the object-store tests: moto's, as its own process.

``make test-s3`` builds ``.venv-moto`` (moto[server] and boto3, kept out of the project's
lock) and points ``PATHGEN_MOTO_PYTHON`` at its interpreter. The server enforces request
signing (IAM authentication on, after the few unauthenticated calls that create the test's
user), so wrong credentials really are refused; started in-process, deltalake's history()
hung (FACTS.md), hence the subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REGION = "us-east-1"
# IAM calls the setup makes before authentication starts: create_user, put_user_policy,
# create_access_key.
SETUP_CALLS = 3
SETUP = """
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="pathgen")
iam.put_user_policy(UserName="pathgen", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="pathgen")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
for bucket in sys.argv[2:]:
    s3.create_bucket(Bucket=bucket)
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    python: str

    def env(self, root: str) -> dict[str, str]:
        """The environment a user sets to put the lakehouse at ``root`` on this server."""
        return {
            "PATHGEN_LAKEHOUSE": root,
            "PATHGEN_S3_ENDPOINT": self.endpoint,
            "PATHGEN_S3_ALLOW_HTTP": "1",
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
        }

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (through boto3 in the moto venv)."""
        script = (
            "import sys, boto3\n"
            "s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2],"
            " aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])\n"
            "pages = s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[5], Prefix=sys.argv[6])\n"
            "for page in pages:\n"
            "    for item in page.get('Contents', []): print(item['Key'])\n"
        )
        out = subprocess.run(
            [
                self.python,
                "-c",
                script,
                self.endpoint,
                self.region,
                self.access_key_id,
                self.secret_access_key,
                bucket,
                prefix,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.split()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    python = os.environ.get("PATHGEN_MOTO_PYTHON")
    if not python:
        pytest.fail("PATHGEN_MOTO_PYTHON is not set: run these tests with `make test-s3`")
    server_bin = Path(python).with_name("moto_server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [str(server_bin), "-H", "127.0.0.1", "-p", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        setup = subprocess.run(
            [python, "-c", SETUP, endpoint, "lake", "lake2"],
            check=True,
            capture_output=True,
            text=True,
        )
        keys = json.loads(setup.stdout.strip().splitlines()[-1])
        yield S3Server(endpoint, keys["id"], keys["secret"], REGION, python)
    finally:
        process.terminate()
        process.wait(timeout=30)
