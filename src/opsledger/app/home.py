"""A ledger home directory and how to open what lives in it.

Layout (``--home``, default ``$OPSLEDGER_HOME`` or ``./.opsledger``)::

    opsledger.yaml   configuration (store URL, node and admin names, API address)
    ledger.db        the SQLite store (embedded default)
    keys/<actor>.key private keys, mode 0600, directory 0700
    node.lock        held by the one process that writes (flock)
    serve.json       where a running ``opsledger serve`` listens

Only one process writes a ledger: it holds ``node.lock``. When ``opsledger serve`` holds
it, other commands talk to that server over HTTP instead of opening the store.

What only a writer needs (the services attached to a writable node, which pull in NATS,
web3 and friends; the built-in contracts) is imported inside the methods that use it, so
a read-only command such as ``opsledger log`` does not pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from opsledger.app.config import Config, load_config, write_config
from opsledger.app.keys import key_path, load_key, load_key_from_env, write_key
from opsledger.client.base import LedgerClient, Signer, submit_signed
from opsledger.core import (
    ConfigError,
    InvalidInput,
    NotFound,
    PrivateKey,
    Receipt,
    SignatureChecker,
    Subject,
)
from opsledger.ledger import ContractRule, ContractRunner, LedgerNode, create_genesis
from opsledger.ledger.results import JobResultRule
from opsledger.ledger.sigpool import ProcessSignatureChecker
from opsledger.ordering import InProcessOrderer
from opsledger.store import LedgerStore, open_store

if TYPE_CHECKING:
    from opsledger.app.recorder import BackgroundRecorder

__all__ = ["Home", "default_home"]


def default_home() -> Path:
    return Path(os.environ.get("OPSLEDGER_HOME") or ".opsledger")


@dataclass
class Home:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "opsledger.yaml"

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def serve_path(self) -> Path:
        return self.path / "serve.json"

    def exists(self) -> bool:
        return self.config_path.exists()

    def config(self) -> Config:
        if not self.exists():
            raise NotFound(f"no ledger at {self.path}: run `opsledger init` first")
        config = load_config(self.config_path)
        return dataclasses.replace(config, store=self.resolve_store(config.store))

    def default_store(self) -> str:
        return self.resolve_store(None)

    def resolve_store(self, store: str | None) -> str:
        """The store URL with the default (``ledger.db`` in the home) and relative SQLite
        paths resolved against the home directory, never the working directory."""
        if not store:
            return f"sqlite:///{(self.path / 'ledger.db').resolve()}"
        if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
            relative = store.removeprefix("sqlite:///")
            return f"sqlite:///{(self.path / relative).resolve()}"
        return store

    # -- creation --
    def init(
        self,
        *,
        admin: str = "admin",
        node: str = "node",
        store: str | None = None,
        builtin_contracts: bool = True,
    ) -> dict[str, Any]:
        """Create the home: keys, config, genesis, and (by default) the built-in contracts
        deployed with their defaults by the admin."""
        if self.exists():
            raise InvalidInput(f"{self.path} already holds a ledger")
        created = not self.path.exists()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = Config(store=store, node=node, admin=admin)
        admin_key, node_key = PrivateKey.generate(), PrivateKey.generate()
        resolved = dataclasses.replace(config, store=self.resolve_store(store))
        try:
            with self.open_store(resolved) as st:
                genesis = create_genesis(
                    st, admin_name=admin, admin_key=admin_key, node_name=node, node_key=node_key
                )
        except BaseException:
            if created:  # leave nothing behind for a bad --store
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        write_key(key_path(self.keys_dir, admin), admin_key)
        write_key(key_path(self.keys_dir, node), node_key)
        write_config(self.config_path, config)
        contracts: list[dict[str, Any]] = []
        if builtin_contracts:
            from opsledger.app.contracts import deploy_builtins
            from opsledger.client.local import LocalClient

            ledger_node = self.open_node()
            try:
                contracts = deploy_builtins(
                    LocalClient(ledger_node),
                    Signer(admin, admin_key, ledger=ledger_node.checkpoint_origin),
                )
            finally:
                ledger_node.close()
        return {
            "home": str(self.path),
            "genesis_hash": genesis,
            "admin": admin,
            "node": node,
            "admin_key_id": admin_key.key_id,
            "node_key_id": node_key.key_id,
            "contracts": contracts,
        }

    # -- keys --
    def write_key(self, actor: str, key: PrivateKey, *, overwrite: bool = False) -> Path:
        path = key_path(self.keys_dir, actor)
        write_key(path, key, overwrite=overwrite)
        return path

    def load_key(self, actor: str) -> PrivateKey:
        return load_key(key_path(self.keys_dir, actor))

    def add_actor(
        self,
        actor: str,
        roles: list[str],
        *,
        kind: str = "person",
        as_actor: str | None = None,
    ) -> tuple[PrivateKey, Receipt]:
        """Make ``actor``'s key (a 0600 file in the home) and record
        ``identity.key_added``, signed by ``as_actor`` (default: the admin). The key file
        is removed again if the ledger refuses the actor, so a failed attempt leaves no
        key behind."""
        path = key_path(self.keys_dir, actor)
        if path.exists():
            raise InvalidInput(
                f"key file {path} already exists; use `keys rotate {actor}`", field="actor"
            )
        key = PrivateKey.generate()
        signer = self.signer(as_actor)
        body = {"actor": actor, "public_key": key.public_key.b64, "roles": roles, "kind": kind}
        stx = signer.sign("identity.key_added", Subject("actor", actor), body)
        write_key(path, key)
        try:
            client = self.client()
            try:
                receipt = submit_signed(client, signer, stx)
            finally:
                client.close()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return key, receipt

    def signer(self, actor: str | None = None) -> Signer:
        """The signer for ``actor`` (default: the admin made by ``init``). A key in the
        environment (``OPSLEDGER_KEY``/``OPSLEDGER_KEY_FILE``) wins over the key file, so
        CI can sign as its service identity without a key on disk."""
        env_key = load_key_from_env()
        name = actor or os.environ.get("OPSLEDGER_ACTOR") or self.config().admin
        key = env_key if env_key is not None else self.load_key(name)
        return Signer(name, key, ledger=self.ledger_id())

    def ledger_id(self) -> str:
        """What transactions for this ledger must name in ``ledger``: its checkpoint
        origin (a fork's own origin), from a running server or the store's metadata."""
        url = self.server_url()
        if url:
            from opsledger.client.http import HttpClient

            client = HttpClient(url)
            try:
                return str(client.head()["ledger"])
            finally:
                client.close()
        with self.open_store() as store:
            origin = store.get_meta("fork_origin") or store.get_meta("origin")
        if origin is None:
            raise NotFound(f"no ledger at {self.path}: run `opsledger init` first")
        return str(origin)

    # -- opening --
    @contextlib.contextmanager
    def open_store(self, config: Config | None = None) -> Any:
        url = (config or self.config()).store
        assert url is not None  # Home.config resolves the default
        st: LedgerStore = open_store(url)
        try:
            yield st
        finally:
            st.close()

    def open_node(
        self, *, writable: bool = True, checker: SignatureChecker | None = None
    ) -> LedgerNode:
        """Open the node; ``writable`` takes the writer lock and starts the committer."""
        config = self.config()
        lock = self._take_lock() if writable else None
        store = open_store(self.resolve_store(config.store))
        # Ingest verifies in the shared verifier process (see ledger.sigpool); a
        # read-only node checks nothing on the write path.
        own_checker = checker or ProcessSignatureChecker()

        def release() -> None:
            store.close()
            if lock is not None:
                lock.close()

        contracts = ContractRule()
        try:
            node = LedgerNode(
                store,
                node_key=self.load_key(config.node) if writable else None,
                rules=[contracts, JobResultRule()],
                orderer=InProcessOrderer(
                    max_batch=config.block_max_txs, max_wait=config.block_max_wait_ms / 1000
                ),
                checker=own_checker,
                on_close=release,
            )
        except BaseException:
            release()
            raise
        if writable:
            from opsledger.app.services import attach_services

            node.start()
            node_key = self.load_key(config.node)
            runner = ContractRunner(
                node, contracts, Signer(config.node, node_key, ledger=node.checkpoint_origin)
            )
            try:
                attach_services(self, node, runner)
            except BaseException:
                node.close()
                raise
            node.attach(runner.start())
        return node

    def _take_lock(self, wait: float = 10.0) -> IO[str]:
        """Take the writer lock, waiting up to ``wait`` seconds: two CLI writers started
        together take turns instead of one failing. A running server fails fast."""
        handle = (self.path / "node.lock").open("a")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() >= deadline or self.server_url():
                    handle.close()
                    raise ConfigError(
                        f"another opsledger process is writing {self.path}"
                        " (is `opsledger serve` running?)"
                    ) from None
                time.sleep(0.05)

    def server_url(self) -> str | None:
        """The URL of a running ``opsledger serve`` for this home, if its lock is held.

        Probes with a shared lock on a read-only handle, so users who may not write the
        home (an SSH gate's operators) can still find the server. ``OPSLEDGER_SERVER``
        names a remote server instead (CI runners, which have no home of their own)."""
        remote = os.environ.get("OPSLEDGER_SERVER")
        if remote:
            return remote.rstrip("/")
        if not self.serve_path.exists():
            return None
        try:
            info = json.loads(self.serve_path.read_text())
            handle = (self.path / "node.lock").open("r")
        except (OSError, ValueError):
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return str(info.get("url"))  # held: the server is alive
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None  # stale file from a dead server
        finally:
            handle.close()

    def recorder(self, actor: str | None = None) -> BackgroundRecorder:
        """A recorder for a long-running service: it never holds the writer lock for
        longer than one batch, so other writers (the CLI, ``serve``) keep working."""
        from opsledger.app.recorder import BackgroundRecorder

        return BackgroundRecorder(self.client, self.signer(actor))

    def client(self) -> LedgerClient:
        """A client for this home: HTTP to a running server, else an in-process node."""
        url = self.server_url()
        if url:
            from opsledger.client.http import HttpClient

            return HttpClient(url)
        from opsledger.client.local import LocalClient

        return LocalClient(self.open_node())
