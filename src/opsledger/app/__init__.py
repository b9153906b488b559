"""The composition root: reads configuration and builds stores, nodes and clients.

Names load on first use (PEP 562 ``__getattr__``): ``import opsledger.app`` (which every
CLI command does) must not import what only some commands need (NATS, web3, uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsledger.core.lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from opsledger.app.bundle import export_bundle, verify_bundle, verify_home_store
    from opsledger.app.config import Config, load_config
    from opsledger.app.home import Home, default_home
    from opsledger.app.keys import key_path, load_key, load_key_from_env, write_key
    from opsledger.app.recorder import BackgroundRecorder
    from opsledger.app.snapshot import fork_home, import_bundle
    from opsledger.app.webhooks import GithubWebhook, load_github_webhook

# name -> the submodule that defines it
_EXPORTS = {
    "BackgroundRecorder": "recorder",
    "Config": "config",
    "GithubWebhook": "webhooks",
    "Home": "home",
    "default_home": "home",
    "export_bundle": "bundle",
    "fork_home": "snapshot",
    "import_bundle": "snapshot",
    "key_path": "keys",
    "load_config": "config",
    "load_github_webhook": "webhooks",
    "load_key": "keys",
    "load_key_from_env": "keys",
    "verify_bundle": "bundle",
    "verify_home_store": "bundle",
    "write_key": "keys",
}

__all__ = [
    "BackgroundRecorder",
    "Config",
    "GithubWebhook",
    "Home",
    "default_home",
    "export_bundle",
    "fork_home",
    "import_bundle",
    "key_path",
    "load_config",
    "load_github_webhook",
    "load_key",
    "load_key_from_env",
    "verify_bundle",
    "verify_home_store",
    "write_key",
]


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
