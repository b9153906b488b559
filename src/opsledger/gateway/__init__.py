"""The JSON-RPC gateway in front of blockchain nodes (issue 5).

It reaches the ledger only through ``client.base`` (a ``Recorder``). Entry points:
``parse_config`` (the ``gateway`` section), ``Gateway`` (everything that serves one config)
and ``server.build_app``/``server.serve`` (the HTTP and WebSocket front). See
docs/gateway.md.
"""

from opsledger.gateway.config import GatewayConfig, parse_config
from opsledger.gateway.service import Gateway

__all__ = ["Gateway", "GatewayConfig", "parse_config"]
