"""Two replicas on one host (issue 14 item 6): the second one's metrics address is taken.

It must exit with one line naming the setting and the fix, exit code 7, no traceback, and
leave the first replica serving. Per-replica ports: the systemd template unit
dispatcher@PORT.service.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from support.daemon import daemon_env
from support.net import LOOPBACK, reserved_port

from dispatcher.errors import ExitCode

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
MAIN_UNIT = SYSTEMD / "webhook-dispatcher.service"
TEMPLATE = SYSTEMD / "dispatcher@.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _directives(unit: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value, in order."""
    seen: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        seen.setdefault(f"{section}.{key}", []).append(value)
    return seen


async def test_second_replica_on_the_same_metrics_address_exits_with_one_line(
    db_dsn: str, daemon_factory
) -> None:
    address = f"{LOOPBACK}:{reserved_port()}"
    env = daemon_env(db_dsn, DISPATCHER_METRICS_ADDRESS=address)
    first = daemon_factory({**env, "DISPATCHER_INSTANCE_NAME": "replica-1"})
    await first.wait_for_log("ready", timeout=60)

    second = daemon_factory({**env, "DISPATCHER_INSTANCE_NAME": "replica-2"})
    code = await second.wait_exit(60)
    assert code == ExitCode.ADDRESS_UNAVAILABLE and int(code) == 7

    text = second.text()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("dispatcher: error:")]
    assert errors == [
        f"dispatcher: error: cannot listen on DISPATCHER_METRICS_ADDRESS {address}: already in "
        "use (another replica on this host? give each replica its own port, e.g. the systemd "
        "template unit dispatcher@.service; docs/operations.md)"
    ], text
    assert second.events("ready") == []

    # The first replica is unharmed and still answers on that address.
    assert first.is_running()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address}/metrics") as resp,
    ):
        assert resp.status == 200
        assert "dispatcher_ready 1.0" in await resp.text()
    first.terminate()
    assert await first.wait_exit(30) == ExitCode.OK


def _template_env(instance: str) -> dict[str, str]:
    """The DISPATCHER_* variables dispatcher@INSTANCE.service sets, specifiers expanded."""
    env: dict[str, str] = {}
    for value in _directives(TEMPLATE)["Service.Environment"]:
        for pair in value.split():
            key, _, val = pair.partition("=")
            if key.startswith("DISPATCHER_"):
                env[key] = val.replace("%i", instance).replace("%H", socket.gethostname())
    return env


def test_template_unit_is_the_hardened_unit_with_a_port_per_instance() -> None:
    template, main = _directives(TEMPLATE), _directives(MAIN_UNIT)
    differ = {k for k in template.keys() | main.keys() if template.get(k) != main.get(k)}
    assert differ == {"Unit.Description", "Service.Environment", "Service.SyslogIdentifier"}
    assert _template_env("9465") == {
        "DISPATCHER_METRICS_ADDRESS": "127.0.0.1:9465",
        "DISPATCHER_INSTANCE_NAME": f"{socket.gethostname()}-9465",
    }


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_template_unit_verifies(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    exe = shutil.which("dispatcher") or str(Path(sys.executable).with_name("dispatcher"))
    text = TEMPLATE.read_text().replace(
        "ExecStart=/opt/webhook-dispatcher/bin/dispatcher", f"ExecStart={exe}"
    )
    assert exe in text
    (tmp_path / TEMPLATE.name).write_text(text)
    instance = tmp_path / "dispatcher@9464.service"
    instance.symlink_to(TEMPLATE.name)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "dispatcher@" in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert ours == [], "\n".join(ours)


async def test_replicas_configured_by_the_template_unit_both_become_ready(
    db_dsn: str, daemon_factory
) -> None:
    ports = [reserved_port(), reserved_port()]
    daemons = [daemon_factory(daemon_env(db_dsn, **_template_env(str(port)))) for port in ports]
    for daemon in daemons:
        await daemon.wait_for_log("ready", timeout=60)
    async with aiohttp.ClientSession() as session:
        for port in ports:
            async with session.get(f"http://{LOOPBACK}:{port}/readyz") as resp:
                assert resp.status == 200, await resp.text()
