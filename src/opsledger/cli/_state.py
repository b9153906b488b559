"""What every command needs: the home, the two consoles, and how to reach the ledger.

The consoles are created once per invocation by the root callback, or injected by a
caller (tests pass ``obj=Consoles(...)`` to the runner), so commands never build their own
output and render to whatever they are given.

Commands reach the ledger through two context managers: ``reader`` for queries and
``writer`` for submissions. They differ because only one process may write a home (it
holds ``node.lock``): a reader opens the store read-only and never takes the lock, so
``opsledger log`` works while another process records; both talk HTTP to a running
``opsledger serve`` when there is one.

``opsledger.app.home`` (stores, the ledger node) is imported when a command first asks
for the home, not when the root command loads: ``--help`` never needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from opsledger.app.home import Home
    from opsledger.client.base import LedgerClient

__all__ = ["Consoles", "State", "get_state"]

PIPED_WIDTH = 200


@dataclass(frozen=True, slots=True)
class Consoles:
    """Where output goes: ``out`` for data (stdout), ``err`` for messages and progress."""

    out: Console
    err: Console

    @classmethod
    def default(cls) -> Consoles:
        # file=None: Rich looks sys.stdout/sys.stderr up at write time, so a test runner
        # that swaps them still captures everything.
        out = Console(highlight=False)
        if not out.is_terminal:
            # Piped tables are read by grep and people with wide windows, not wrapped
            # to Rich's 80-column default.
            out.width = PIPED_WIDTH
        return cls(out=out, err=Console(stderr=True, highlight=False))


@dataclass(slots=True)
class State:
    home_path: Path
    verbose: bool
    consoles: Consoles

    @property
    def out(self) -> Console:
        return self.consoles.out

    @property
    def err(self) -> Console:
        return self.consoles.err

    @property
    def home(self) -> Home:
        from opsledger.app.home import Home

        return Home(self.home_path)

    @contextlib.contextmanager
    def reader(self) -> Iterator[LedgerClient]:
        """A client for queries: HTTP to a running server, else a read-only local node."""
        home = self.home
        if home.server_url():
            client = home.client()
            try:
                yield client
            finally:
                client.close()
            return
        from opsledger.client.local import LocalClient

        node = home.open_node(writable=False)
        try:
            yield LocalClient(node)
        finally:
            node.close()  # also closes its store

    @contextlib.contextmanager
    def writer(self) -> Iterator[LedgerClient]:
        """A client that can submit: HTTP to a running server, else the local node."""
        client = self.home.client()
        try:
            yield client
        finally:
            client.close()


def get_state(ctx: typer.Context) -> State:
    """The invocation's ``State``, made by the root callback."""
    state = ctx.find_object(State)
    if state is None:  # only when a command is invoked without the root group
        raise typer.BadParameter("opsledger commands must be run through the opsledger group")
    return state
