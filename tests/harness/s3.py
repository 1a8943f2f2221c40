"""A local S3-protocol server for the template store's bucket path: ``moto_server`` (from
``moto[server]``) as a real process on a free loopback port, since S3 itself is outside this
machine. Credentials are dummies the server accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.harness.machine import free_port, listening

START_TIMEOUT_S = 30.0
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        moto = Path(sys.executable).with_name("moto_server")
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start; see {self._log_path}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def make_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.url, region_name=ENV["AWS_REGION"])
        s3.create_bucket(Bucket=name)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def set_credentials() -> None:
    """The dummy credentials in this process's environment (boto3 reads them from there)."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
