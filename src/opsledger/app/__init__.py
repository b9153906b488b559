"""The composition root: reads configuration and builds stores, nodes and clients."""

from opsledger.app.bundle import export_bundle, verify_bundle, verify_home_store
from opsledger.app.config import Config, load_config
from opsledger.app.home import Home, default_home
from opsledger.app.keys import key_path, load_key, load_key_from_env, write_key
from opsledger.app.recorder import BackgroundRecorder
from opsledger.app.snapshot import fork_home, import_bundle
from opsledger.app.webhooks import GithubWebhook, load_github_webhook

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
