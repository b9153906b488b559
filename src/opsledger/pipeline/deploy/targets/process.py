"""The ``process`` target: a service version as local processes behind the weighted switch.

Layout under the state directory (``<home>/deploy/<service>/<environment>/`` by default):

- ``state.json``: what serves now (version, digest, pool, each instance's pid and port,
  and how to start that version again), written after every deploy, so a later deploy,
  even from another process, finds the running version and its switch.
- ``switch.json``, ``switch.token`` (0600), ``routes.json``: the switch's pid and address,
  its admin token, and the last routes it was given (it reloads them on a restart).
- ``releases/<version>-<digest>/``: the artifact copied out of the job's working directory
  (which the runner deletes) after checking its SHA-256 against the deployed digest, so
  what runs is exactly the artifact the release gate approved.
- ``logs/``: one log per instance and one for the switch.

Instances and the switch are started with ``os.posix_spawnp`` in a new session, not with
``subprocess.Popen``: they must outlive this process, and a ``Popen`` object for a process
we intentionally never wait for is a resource leak by Python's rules. They are stopped by
process group (SIGTERM, then SIGKILL after ``stop_timeout``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from opsledger.core import ConfigError, InvalidInput, UpstreamError
from opsledger.pipeline.deploy.config import HttpCheck, ProcessSettings
from opsledger.pipeline.deploy.switch import PoolStats, SwitchAdmin
from opsledger.pipeline.deploy.targets.base import Member, MemberGone, Running

__all__ = ["ProcessTarget", "alive", "free_port", "stop_all", "stop_pid"]

_SWITCH_START_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


def _spawn(argv: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    here = os.getcwd()
    try:
        os.chdir(cwd)  # posix_spawn has no cwd argument before Python 3.13
        return os.posix_spawnp(
            argv[0],
            list(argv),
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise InvalidInput(f"cannot start {argv[0]}: {exc}") from exc
    finally:
        os.chdir(here)
        os.close(fd)
        os.close(null)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _clean_env() -> dict[str, str]:
    """Our environment without signing keys: a deployed service never sees them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_KEY")}


class ProcessTarget:
    """See the module docstring. One instance per deploy."""

    def __init__(
        self,
        settings: ProcessSettings,
        *,
        service: str,
        environment: str,
        version: str,
        digest: str,
        workdir: Path,
        state_root: Path,
        http: HttpCheck | None,
        log: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.service, self.environment = service, environment
        self.version, self.digest = version, digest
        self.workdir = workdir
        self.dir = state_root / service / environment
        self.http = http
        self.log = log
        self._admin: SwitchAdmin | None = None
        self._release_dir: Path | None = None
        self._artifact: str = ""

    # -- setup -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Copy and check the artifact, and make sure the switch runs."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        release = (
            self.dir / "releases" / f"{self.version}-{self.digest.removeprefix('sha256:')[:16]}"
        )
        release.mkdir(parents=True, exist_ok=True)
        if self.settings.artifact:
            source = (self.workdir / self.settings.artifact).resolve()
            if not source.is_file():
                raise ConfigError(
                    f"target.artifact {self.settings.artifact} is not a file in {self.workdir}",
                    key="target.artifact",
                )
            found = _sha256(source)
            if found != self.digest:
                raise InvalidInput(
                    f"artifact {self.settings.artifact} has digest {found}, not the deployed "
                    f"{self.digest}: refusing to run something the gate did not approve"
                )
            copy = release / source.name
            shutil.copyfile(source, copy)
            self._artifact = str(copy)
            self._release_dir = release
        else:
            self._release_dir = self.workdir
        self._stop_leftovers()
        self._admin = self._ensure_switch()

    def _stop_leftovers(self) -> None:
        """Stop instances a crashed earlier deploy started but never handed over."""
        current = self.current()
        serving = {int(m.handle["pid"]) for m in current.members} if current else set()
        for pid in _read_launched(self.dir):
            if pid not in serving and alive(pid):
                self.log(f"stopping pid {pid}, left over by an interrupted deploy")
                stop_pid(pid, self.settings.stop_timeout_s)
        (self.dir / "launched.json").unlink(missing_ok=True)

    def _ensure_switch(self) -> SwitchAdmin:
        info_path = self.dir / "switch.json"
        token_path = self.dir / "switch.token"
        if info_path.exists() and token_path.exists():
            info = json.loads(info_path.read_text())
            admin = SwitchAdmin(info["url"], token_path.read_text().strip())
            if alive(int(info["pid"])) and admin.alive():
                return admin
        if not token_path.exists():
            token_path.touch(mode=0o600)
            token_path.write_text(secrets.token_urlsafe(24))
        host, _, port_text = self.settings.listen.rpartition(":")
        port = int(port_text)
        if port == 0 and info_path.exists():
            port = int(json.loads(info_path.read_text()).get("port", 0))
        port = port or free_port()
        url = f"http://{host}:{port}"
        argv = [
            sys.executable,
            "-m",
            "opsledger.pipeline.deploy.switch",
            "--listen",
            f"{host}:{port}",
            "--routes",
            str(self.dir / "routes.json"),
            "--token-file",
            str(token_path),
        ]
        pid = _spawn(argv, self.dir, _clean_env(), self.dir / "logs" / "switch.log")
        info_path.write_text(json.dumps({"pid": pid, "port": port, "url": url}))
        admin = SwitchAdmin(url, token_path.read_text().strip())
        deadline = time.monotonic() + _SWITCH_START_S
        while time.monotonic() < deadline:
            if admin.alive():
                self.log(f"switch listening on {url} (pid {pid})")
                return admin
            if not alive(pid):
                break
            time.sleep(0.1)
        stop_pid(pid)
        raise UpstreamError(
            f"the switch did not start on {url}: {_tail(self.dir / 'logs' / 'switch.log')}"
        )

    @property
    def switch_url(self) -> str:
        return self._switch().url

    def _switch(self) -> SwitchAdmin:
        if self._admin is None:
            raise RuntimeError("prepare() was not called")
        return self._admin

    # -- Target ------------------------------------------------------------------------
    def current(self) -> Running | None:
        path = self.dir / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        active = data.get("active")
        if not active:
            return None
        members = tuple(
            Member(
                pool=active["pool"],
                version=active["version"],
                label=f"{active['pool']}:{m['port']}",
                url=f"http://127.0.0.1:{m['port']}",
                handle={"pid": m["pid"], "port": m["port"]},
            )
            for m in active["members"]
            if alive(int(m["pid"]))
        )
        return Running(
            version=active["version"],
            digest=active["digest"],
            pool=active["pool"],
            members=members,
            extra={k: active[k] for k in ("command", "cwd", "artifact", "env") if k in active},
        )

    def _start(
        self,
        pool: str,
        *,
        version: str,
        digest: str,
        command: Sequence[str],
        cwd: Path,
        artifact: str,
        extra_env: Mapping[str, str],
    ) -> Member:
        port = free_port()
        values = {
            "port": str(port),
            "version": version,
            "pool": pool,
            "color": pool,
            "artifact": artifact,
            "digest": digest,
            "service": self.service,
            "environment": self.environment,
        }
        try:
            argv = [arg.format(**values) for arg in command]
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"target.command: unknown placeholder {exc} (known: {', '.join(values)})",
                key="target.command",
            ) from exc
        env = {
            **_clean_env(),
            **extra_env,
            "PORT": str(port),
            "OPSLEDGER_VERSION": version,
            "OPSLEDGER_COLOR": pool,
            "OPSLEDGER_DIGEST": digest,
            "OPSLEDGER_SERVICE": self.service,
            "OPSLEDGER_ENVIRONMENT": self.environment,
        }
        log = self.dir / "logs" / f"{pool}-{version}-{port}.log"
        pid = _spawn(argv, cwd, env, log)
        launched = self.dir / "launched.json"
        launched.write_text(json.dumps([*_read_launched(self.dir), pid]))
        self.log(f"started {self.service} {version} in {pool} on 127.0.0.1:{port} (pid {pid})")
        return Member(
            pool=pool,
            version=version,
            label=f"{pool}:{port}",
            url=f"http://127.0.0.1:{port}",
            handle={"pid": pid, "port": port, "log": str(log)},
        )

    def launch(self, pool: str, count: int) -> list[Member]:
        cwd = self._release_dir or self.workdir
        return [
            self._start(
                pool,
                version=self.version,
                digest=self.digest,
                command=self.settings.command,
                cwd=cwd,
                artifact=self._artifact,
                extra_env=self.settings.env,
            )
            for _ in range(count)
        ]

    def relaunch(self, running: Running, count: int) -> list[Member]:
        extra = running.extra
        return [
            self._start(
                running.pool,
                version=running.version,
                digest=running.digest,
                command=list(extra.get("command", self.settings.command)),
                cwd=Path(str(extra.get("cwd", self.workdir))),
                artifact=str(extra.get("artifact", "")),
                extra_env=dict(extra.get("env", {})),
            )
            for _ in range(count)
        ]

    def check(self, member: Member) -> str | None:
        pid = int(member.handle["pid"])
        if not alive(pid):
            tail = _tail(Path(str(member.handle.get("log", ""))))
            raise MemberGone(f"{member.label} (pid {pid}) exited" + (f": {tail}" if tail else ""))
        url = member.url or ""
        if self.http is None:
            try:
                with socket.create_connection(("127.0.0.1", int(member.handle["port"])), 1.0):
                    return None
            except OSError as exc:
                return f"{member.label} does not accept connections: {exc}"
        try:
            response = httpx.get(url + self.http.path, timeout=2.0)
        except httpx.HTTPError as exc:
            return f"GET {url}{self.http.path} failed: {exc}"
        if response.status_code != self.http.status:
            return (
                f"GET {url}{self.http.path} returned {response.status_code} "
                f"(want {self.http.status})"
            )
        if self.http.body is not None and not self.http.body.search(response.text):
            return f"GET {url}{self.http.path}: body does not match {self.http.body.pattern!r}"
        return None

    def route(self, pools: Mapping[str, tuple[int, Sequence[Member]]]) -> None:
        routes = {
            "pools": {
                name: {
                    "weight": weight,
                    "upstreams": [f"127.0.0.1:{m.handle['port']}" for m in members],
                }
                for name, (weight, members) in pools.items()
            }
        }
        (self.dir / "routes.json").write_text(json.dumps(routes))
        self._switch().set_routes(routes)
        total = sum(w for w, _ in pools.values()) or 1
        split = ", ".join(f"{n} {round(100 * w / total)}%" for n, (w, _) in pools.items())
        self.log(f"switch routes: {split}")

    def stats(self, pool: str, seconds: float) -> PoolStats | None:
        return self._switch().stats(pool, seconds)

    def probe_url(self) -> str | None:
        return self._switch().url

    def stop(self, members: Sequence[Member]) -> None:
        for m in members:
            stop_pid(int(m.handle["pid"]), self.settings.stop_timeout_s)
            self.log(f"stopped {m.label} ({m.version})")

    def save(self, running: Running | None) -> None:
        active: dict[str, Any] | None = None
        if running is not None:
            active = {
                "version": running.version,
                "digest": running.digest,
                "pool": running.pool,
                "members": [
                    {"pid": m.handle["pid"], "port": m.handle["port"]} for m in running.members
                ],
                **dict(running.extra),
            }
        path = self.dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"service": self.service, "environment": self.environment, "active": active},
                indent=2,
            )
        )
        tmp.replace(path)
        (self.dir / "launched.json").unlink(missing_ok=True)  # all handed over or stopped

    def new_extra(self) -> dict[str, Any]:
        """How to start the version being deployed again (kept in its state)."""
        return {
            "command": list(self.settings.command),
            "cwd": str(self._release_dir or self.workdir),
            "artifact": self._artifact,
            "env": dict(self.settings.env),
        }

    def rolled_back(self, reason: str) -> None:
        return None


def _read_launched(state_dir: Path) -> list[int]:
    """Pids started by a deploy that has not saved its state yet (crash recovery)."""
    try:
        return [int(p) for p in json.loads((state_dir / "launched.json").read_text())]
    except (OSError, ValueError, TypeError):
        return []


def stop_all(state_dir: Path) -> list[str]:
    """Stop every instance and the switch recorded under ``state_dir`` (one service and
    environment); returns what was stopped. Used by ``opsledger deploy down`` and tests."""
    stopped: list[str] = []
    state = state_dir / "state.json"
    if state.exists():
        active = json.loads(state.read_text()).get("active") or {}
        for m in active.get("members", []):
            if alive(int(m["pid"])):
                stop_pid(int(m["pid"]))
                stopped.append(f"{active.get('pool')}:{m['port']}")
        state.unlink()
    for pid in _read_launched(state_dir):
        if alive(pid):
            stop_pid(pid)
            stopped.append(f"pid {pid}")
    (state_dir / "launched.json").unlink(missing_ok=True)
    switch = state_dir / "switch.json"
    if switch.exists():
        pid = int(json.loads(switch.read_text())["pid"])
        if alive(pid):
            stop_pid(pid)
            stopped.append(f"switch (pid {pid})")
        switch.unlink()
    return stopped
