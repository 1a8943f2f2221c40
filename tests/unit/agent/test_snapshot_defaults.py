"""A host-local (gVisor) snapshot keeps its source's template defaults, which a chain carries for
every other sandbox: without them a fork of a sandbox whose template says ``USER user`` ran its
commands as root in ``/root`` (session 30). A memory snapshot's start command is not run again:
it is running in the image already."""

from __future__ import annotations

from warren import ids
from warren.agent.chain import TemplateConfig
from warren.agent.create import check_request
from warren.agent.sandbox_runtime import take_snapshot_defaults
from warren.agent.snapshot_export import snapshot_defaults

TEAM = "00000000-0000-0000-0000-0000000000aa"
TEMPLATE = "00000000-0000-0000-0000-0000000000bb"
SOURCE = TemplateConfig(
    env={"LANG": "C.UTF-8", "MODE": "template"},
    workdir="/home/user",
    user="user",
    start_cmd="python3 -m http.server 8000",
    ready_cmd="curl -s localhost:8000",
    ready_timeout_sec=30,
).to_record()


def test_a_memory_snapshot_keeps_user_workdir_and_env_not_its_start() -> None:
    kept = snapshot_defaults(SOURCE, memory=True)
    assert (kept["user"], kept["workdir"], kept["env"]) == ("user", "/home/user", SOURCE["env"])
    assert (kept["start_cmd"], kept["ready_cmd"], kept["ready_timeout_sec"]) == ("", "", 0)
    # A filesystem snapshot boots a new guest on the files: its template starts again.
    assert snapshot_defaults(SOURCE, memory=False) == SOURCE


def _create_from(recorded: object, env: dict[str, str]) -> tuple[TemplateConfig, dict[str, str]]:
    req = check_request(
        sandbox_id=ids.new_id(ids.Kind.SANDBOX)[1], team_id=TEAM, template_id=TEMPLATE, template="snap",
        vcpus=1, memory_mb=256, disk_size_mb=0, timeout_sec=0, internet=False, env=env, egress_allow=[],
    )  # fmt: skip
    take_snapshot_defaults(req, recorded)
    return req.config, req.env


def test_a_create_from_the_snapshot_takes_them_and_its_own_env_wins() -> None:
    config, env = _create_from(SOURCE, {"MODE": "create"})
    assert (config.user, config.workdir, config.start_cmd) == ("user", "/home/user", SOURCE["start_cmd"])
    assert env == {"LANG": "C.UTF-8", "MODE": "create"}
    # A snapshot from before the defaults were kept: the create's config stays empty.
    assert _create_from(None, {"MODE": "create"}) == (TemplateConfig(), {"MODE": "create"})
