"""``opsledger exec``: recorded production access, against a real home and real processes.

In-process runs (CliRunner) cover the policy and what is recorded; the real executable
covers what needs a process of its own: signals, and a terminal handed to the command.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from opsledger.app import Home, write_key
from opsledger.app.access import AccessPolicy, EnvironmentPolicy, parse_policy
from opsledger.cli import app
from opsledger.client.local import LocalClient
from opsledger.core import ConfigError, PrivateKey, Subject

EXE = Path(sys.executable).parent / "opsledger"
PY = sys.executable
DIGEST = "sha256:" + "cd" * 32
PROD_OPERATOR = {"environments": {"prod": {"role": "operator"}}}
PROD_CHANGE = {
    "ticket_pattern": "^CHG-[0-9]+$",
    "environments": {"prod": {"role": "operator", "require_change": True}},
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never pick up a developer's ledger or keys from the environment."""
    for name in list(os.environ):
        if name.startswith("OPSLEDGER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with an operator ``op`` and a developer ``dev`` (built once: init is slow)."""
    path = tmp_path_factory.mktemp("template") / "home"
    home = Home(path)
    home.init()
    client = home.client()
    signer = home.signer()
    try:
        for actor, role in (("op", "operator"), ("dev", "developer")):
            key = PrivateKey.generate()
            body = {"actor": actor, "public_key": key.public_key.b64, "roles": [role]}
            client.submit(signer.sign("identity.key_added", Subject("actor", actor), body))
            home.write_key(actor, key)
    finally:
        client.close()
    return path


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "home"
    shutil.copytree(template, dest)
    return dest


def configure(home: Path, access: dict[str, Any]) -> None:
    config = home / "opsledger.yaml"
    data = yaml.safe_load(config.read_text())
    data["access"] = access
    config.write_text(yaml.safe_dump(data))


def transactions(home: Path) -> list[dict[str, Any]]:
    node = Home(home).open_node(writable=False)
    try:
        return LocalClient(node).list_transactions({"limit": 1000})
    finally:
        node.close()


def sessions(home: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each ``access.opened`` view with the ``access.closed`` view that names it."""
    views = transactions(home)
    closes = {
        v["transaction"]["body"]["session"]: v
        for v in views
        if v["transaction"]["type"] == "access.closed"
    }
    return [(v, closes[v["tx_id"]]) for v in views if v["transaction"]["type"] == "access.opened"]


def only_session(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    found = sessions(home)
    assert len(found) == 1, found
    return found[0]


def cli(home: Path, *args: str) -> Result:
    result = CliRunner().invoke(app, ["--home", str(home), "exec", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def refused(home: Path, *args: str) -> str:
    """Run, expect a refusal (exit 2, one error line, nothing recorded); return the line."""
    before = len(transactions(home))
    result = cli(home, *args)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert result.stdout == ""
    assert len(transactions(home)) == before
    return lines[0].removeprefix("error: ")


def py(code: str) -> list[str]:
    return ["--", PY, "-c", code]


def record_verdict(home: Path, digest: str, result: str, contract: str = "release-gate") -> str:
    """A ``contract.verdict`` about ``artifact:<digest>``, signed by the node."""
    h = Home(home)
    client = h.client()
    try:
        subject = Subject("artifact", digest)
        trigger = client.submit(h.signer().sign("note", subject, {"text": "release request"}))
        body = {
            "contract": contract,
            "version": 1,
            "trigger": trigger.tx_id,
            "result": result,
            "requirements": [
                {"name": "build", "result": result, "reason": "", "evidence": [trigger.tx_id]}
            ],
        }
        signer = h.signer(h.config().node)
        return client.submit(signer.sign("contract.verdict", subject, body, [trigger.tx_id])).tx_id
    finally:
        client.close()


# -- what a session records ------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_exit_status_passes_through_and_the_output_is_hashed(home: Path, code: int) -> None:
    printed = b"hello \xff\x00 world\n" * 100
    result = cli(
        home,
        "--env",
        "prod",
        "--reason",
        "check disk",
        *py(f"import sys; sys.stdout.buffer.write({printed!r}); sys.exit({code})"),
    )
    assert result.exit_code == code, result.stderr
    assert result.stdout_bytes == printed
    opened, closed = only_session(home)
    body = opened["transaction"]["body"]
    assert body["environment"] == "prod" and body["reason"] == "check disk"
    assert body["command"][0] == PY and body["host"]
    assert opened["transaction"]["actor"] == "admin"
    close = closed["transaction"]["body"]
    assert close["exit_code"] == code
    assert close["output_digest"] == "sha256:" + hashlib.sha256(printed).hexdigest()
    assert close["output_bytes"] == len(printed)
    assert isinstance(close["duration_ms"], int)
    assert closed["transaction"]["refs"] == [opened["tx_id"]]
    assert opened["leaf_index"] < closed["leaf_index"]


def test_streams_are_copied_to_their_own_side_and_hashed_in_order(home: Path) -> None:
    code = (
        "import sys, time; sys.stdout.write('out\\n'); sys.stdout.flush(); time.sleep(0.2);"
        " sys.stderr.write('err\\n')"
    )
    result = cli(home, "--env", "dev", "--reason", "r", "--json", *py(code))
    assert result.exit_code == 0
    assert result.stdout == "out\n"
    lines = result.stderr.splitlines()
    assert "err" in lines
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["event"] for e in events] == ["access.opened", "access.closed"]
    _, closed = only_session(home)
    digest = "sha256:" + hashlib.sha256(b"out\nerr\n").hexdigest()
    assert closed["transaction"]["body"]["output_digest"] == digest == events[1]["output_digest"]
    assert events[1]["session"] == events[0]["tx_id"]


def test_the_session_is_on_the_ledger_before_the_command_runs(home: Path, tmp_path: Path) -> None:
    """The command itself looks its session up with ``opsledger show``."""
    seen = tmp_path / "seen.json"
    script = '"$0" --home "$1" show "$OPSLEDGER_ACCESS_SESSION" --json > "$2"'
    result = cli(
        home,
        "--env",
        "prod",
        "--reason",
        "r",
        "--",
        "sh",
        "-c",
        script,
        str(EXE),
        str(home),
        str(seen),
    )
    assert result.exit_code == 0, result.stderr
    opened, closed = only_session(home)
    view = json.loads(seen.read_text())
    assert view["tx_id"] == opened["tx_id"]
    assert view["transaction"]["type"] == "access.opened"
    assert opened["leaf_index"] < closed["leaf_index"]


def test_the_signing_key_does_not_reach_the_command(home: Path, tmp_path: Path) -> None:
    key = (home / "keys" / "op.key").read_text().strip()
    result = CliRunner().invoke(
        app,
        [
            *("--home", str(home), "exec", "--env", "dev", "--reason", "r", "--as", "op"),
            *py("import os; print(os.environ.get('OPSLEDGER_KEY', 'absent'))"),
        ],
        env={"OPSLEDGER_KEY": key},
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "absent\n"
    opened, _ = only_session(home)
    assert opened["transaction"]["actor"] == "op"


def test_a_command_that_cannot_start_is_recorded_as_127(home: Path) -> None:
    result = cli(home, "--env", "prod", "--reason", "r", "--", "no-such-command-here")
    assert result.exit_code == 127
    assert "error: cannot start 'no-such-command-here'" in result.stderr
    _, closed = only_session(home)
    body = closed["transaction"]["body"]
    assert body["exit_code"] == 127
    assert body["output_digest"] == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_options_end_at_the_command(home: Path) -> None:
    """Without ``--``, the command's own options are not taken for ours."""
    result = cli(home, "--env", "dev", "--reason", "r", PY, "-c", "print('x')", "--json")
    assert result.exit_code == 0, result.stderr
    opened, _ = only_session(home)
    assert opened["transaction"]["body"]["command"][-1] == "--json"


# -- policy ------------------------------------------------------------------------------


def test_a_role_is_required_where_configured(home: Path, tmp_path: Path) -> None:
    configure(home, PROD_OPERATOR)
    marker = tmp_path / "ran"
    touch = py(f"open({str(marker)!r}, 'w').close()")
    line = refused(home, "--env", "prod", "--reason", "r", "--as", "dev", *touch)
    assert line == "access to prod needs the operator role; dev has developer"
    assert not marker.exists()
    assert cli(home, "--env", "prod", "--reason", "r", "--as", "op", *touch).exit_code == 0
    assert marker.exists()
    assert cli(home, "--env", "prod", "--reason", "r", *touch).exit_code == 0  # admin may
    assert len(sessions(home)) == 2


def test_environments_not_listed_need_nothing_but_the_ledger_still_checks_roles(
    home: Path,
) -> None:
    configure(home, PROD_CHANGE)
    assert cli(home, "--env", "staging", "--reason", "r", "--as", "op", *py("pass")).exit_code == 0
    line = refused(home, "--env", "staging", "--reason", "r", "--as", "dev", *py("pass"))
    assert "access.opened" in line


def test_a_change_is_required_where_configured(home: Path) -> None:
    configure(home, PROD_CHANGE)
    line = refused(home, "--env", "prod", "--reason", "r", "--as", "op", *py("pass"))
    assert "needs --change" in line and "^CHG-[0-9]+$" in line
    line = refused(
        home, "--env", "prod", "--reason", "r", "--as", "op", "--change", "FOO-1", *py("pass")
    )
    assert "'FOO-1' is not approved for prod" in line
    line = refused(
        home, "--env", "prod", "--reason", "r", "--as", "op", "--change", "CHG-1x", *py("pass")
    )
    assert "is not approved" in line


def test_a_ticket_matching_the_pattern_is_an_approved_change(home: Path) -> None:
    configure(home, PROD_CHANGE)
    args = ("--env", "prod", "--reason", "r", "--as", "op", "--change", "CHG-42")
    assert cli(home, *args, *py("pass")).exit_code == 0
    opened, _ = only_session(home)
    body = opened["transaction"]["body"]
    assert body["change"] == "CHG-42" and body["change_approval"] == "ticket"


@pytest.mark.parametrize("form", ["artifact:" + DIGEST, DIGEST])
def test_a_digest_with_a_passing_release_gate_verdict_is_an_approved_change(
    home: Path, form: str
) -> None:
    configure(home, PROD_CHANGE)
    args = ("--env", "prod", "--reason", "r", "--as", "op", "--change", form)
    assert "no release-gate verdict" in refused(home, *args, *py("pass"))
    verdict = record_verdict(home, DIGEST, "pass")
    record_verdict(home, DIGEST, "fail", contract="other")  # newer, but not the gate
    assert cli(home, *args, *py("pass")).exit_code == 0
    opened, _ = only_session(home)
    assert opened["transaction"]["refs"] == [verdict]
    assert opened["transaction"]["body"]["change_approval"] == "release-gate"


def test_the_newest_release_gate_verdict_decides(home: Path) -> None:
    configure(home, PROD_CHANGE)
    record_verdict(home, DIGEST, "pass")
    failing = record_verdict(home, DIGEST, "fail")
    line = refused(
        home, "--env", "prod", "--reason", "r", "--as", "op", "--change", DIGEST, *py("pass")
    )
    assert f"newest release-gate verdict ({failing[:12]}) is fail" in line


def test_bad_requests_are_refused_before_anything_is_recorded(home: Path) -> None:
    assert "--reason" in refused(home, "--env", "prod", "--reason", " ", *py("pass"))
    assert "--env" in refused(home, "--env", "pr od", "--reason", "r", *py("pass"))
    assert "argument 2 is empty" in refused(home, "--env", "prod", "--reason", "r", PY, "-c", "")


def test_an_unknown_config_key_is_named(home: Path) -> None:
    configure(home, {"environments": {"prod": {"role": "operator", "xyz": 1}}})
    line = refused(home, "--env", "prod", "--reason", "r", *py("pass"))
    assert line.endswith("unknown key access.environments.prod.xyz")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"nope": 1}, "access.nope"),
        ({"environments": []}, "access.environments"),
        ({"environments": {"prod": "operator"}}, "access.environments.prod"),
        ({"environments": {"prod": {"require_change": "yes"}}}, "prod.require_change"),
        ({"environments": {"prod": {"role": 3}}}, "access.environments.prod.role"),
        ({"ticket_pattern": "(["}, "access.ticket_pattern"),
        ({"environments": {"prod": {"ticket_pattern": ""}}}, "prod.ticket_pattern"),
    ],
)
def test_policy_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(section)
    assert key in caught.value.message
    assert str(caught.value.details["key"]).endswith(key)


def test_policy_defaults() -> None:
    policy = parse_policy(
        {
            "ticket_pattern": "^CHG-[0-9]+$",
            "environments": {
                "prod": {"role": ["operator", "sre"], "require_change": True},
                "stage": {"ticket_pattern": "^T-[0-9]+$"},
                "dev": None,
            },
        }
    )
    prod = policy.for_environment("prod")
    assert prod.roles == ("operator", "sre") and prod.require_change
    assert prod.ticket_pattern is not None and prod.ticket_pattern.pattern == "^CHG-[0-9]+$"
    stage = policy.for_environment("stage")
    assert stage.ticket_pattern is not None and stage.ticket_pattern.pattern == "^T-[0-9]+$"
    dev = policy.for_environment("dev")
    assert dev.roles == () and not dev.require_change
    assert policy.for_environment("elsewhere") == EnvironmentPolicy()
    assert parse_policy({}) == AccessPolicy()


# -- the real executable: signals and terminals ------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_forwarded_and_the_close_still_recorded(
    home: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [
            *(str(EXE), "--home", str(home), "exec", "--env", "prod", "--reason", "r", "--"),
            *("sh", "-c", 'echo started; touch "$0"; exec sleep 30', str(started)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        _wait_for(started, proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert out == b"started\n"
    _, closed = only_session(home)
    body = closed["transaction"]["body"]
    assert body["exit_code"] == 128 + signum
    assert body["signal"] == signum.name
    assert body["output_digest"] == "sha256:" + hashlib.sha256(b"started\n").hexdigest()
    assert isinstance(body["duration_ms"], int)


def _reap(pid: int, timeout: float = 5) -> int:
    """The exit status of ``pid``, killed if it has not ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def test_an_interactive_command_gets_the_terminal(home: Path) -> None:
    """The command runs in its own process group; on a terminal it must be the foreground
    group, or its first read would stop it (SIGTTIN) and the session would hang. Ctrl-C
    typed at the terminal then reaches the command, and the close is still recorded."""
    import pty

    code = "name = input('name? '); print('hello', name, flush=True); import time; time.sleep(30)"
    argv = [str(EXE), "--home", str(home), "exec", "--env", "dev", "--reason", "r", *py(code)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        try:
            os.execve(argv[0], argv, _env())
        finally:
            os._exit(127)
    output = b""
    replies = [(b"name? ", b"ops\n"), (b"hello ops", b"\x03")]  # \x03: Ctrl-C
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: every process holding the terminal has gone
                    break
                if not chunk:
                    break
                output += chunk
            if replies and replies[0][0] in output:
                os.write(fd, replies.pop(0)[1])
    finally:
        status = _reap(pid)
        os.close(fd)
    assert not replies, output
    assert os.waitstatus_to_exitcode(status) == 130, output
    _, closed = only_session(home)
    body = closed["transaction"]["body"]
    assert body["exit_code"] == 130 and body["signal"] == "SIGINT"


def test_the_ssh_gate_records_the_original_command(home: Path, tmp_path: Path) -> None:
    """``examples/ssh/opsledger-ssh-gate`` as sshd would run it for ``ssh host 'CMD'``."""
    user = getpass.getuser()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._@-]{0,63}", user):
        pytest.skip(f"the user name {user!r} is not a valid actor name")
    h = Home(home)
    client = h.client()
    try:
        key = PrivateKey.generate()
        body = {"actor": user, "public_key": key.public_key.b64, "roles": ["operator"]}
        client.submit(h.signer().sign("identity.key_added", Subject("actor", user), body))
    finally:
        client.close()
    write_key(tmp_path / "keys" / f"{user}.key", key)
    conf = tmp_path / "gate.conf"
    conf.write_text(
        f"OPSLEDGER_HOME={home}\nOPSLEDGER_BIN={EXE}\nOPSLEDGER_GATE_KEYS={tmp_path / 'keys'}\n"
    )
    gate = Path(__file__).resolve().parents[2] / "examples" / "ssh" / "opsledger-ssh-gate"
    command = "echo 'a  b' | tr a z"
    env = {
        **_env(),
        "HOME": str(tmp_path),
        "SHELL": "/bin/sh",
        "SSH_ORIGINAL_COMMAND": command,
        "OPSLEDGER_REASON": "check the pipe",
        "OPSLEDGER_STORE": "sqlite:////nowhere.db",  # a client-sent setting is dropped
    }

    def gate_run(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["sh", str(gate), str(conf)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )

    done = gate_run(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"z  b\n"
    opened, closed = only_session(home)
    tx = opened["transaction"]
    assert tx["actor"] == user
    assert tx["body"]["command"] == ["/bin/sh", "-c", command]
    assert tx["body"]["reason"] == "check the pipe"
    assert closed["transaction"]["body"]["exit_code"] == 0

    del env["OPSLEDGER_REASON"]
    refused_run = gate_run(env)
    assert refused_run.returncode == 2
    assert b"needs a reason" in refused_run.stderr
    assert len(sessions(home)) == 1
