"""opsledger: secure, continuous delivery and operations on a verifiable ledger."""

__version__ = "0.1.0"
__all__ = ["__version__"]
