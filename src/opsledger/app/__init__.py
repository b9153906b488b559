"""The composition root: reads configuration and builds stores, nodes and clients."""

from opsledger.app.config import Config, load_config
from opsledger.app.home import Home, default_home
from opsledger.app.keys import load_key, load_key_from_env, write_key

__all__ = [
    "Config",
    "Home",
    "default_home",
    "load_config",
    "load_key",
    "load_key_from_env",
    "write_key",
]
