"""Helpers for tests: slow, obviously-correct reference implementations and fixtures.

Nothing in ``opsledger`` proper imports this package (the import contracts forbid it for
``core``); it ships in the wheel so other projects' tests can check against the same
references.
"""

__all__: list[str] = []
