"""The ``opsledger`` command line: one module per command group, thin by design.

Each command parses its options, calls one function of ``opsledger.app`` or a ledger
client, and renders the result through the consoles it is given (``_state.Consoles``);
errors travel up to the single handler in ``main``.
"""

from opsledger.cli.main import app, main

__all__ = ["app", "main"]
