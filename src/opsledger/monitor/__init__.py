"""Monitoring: probes, alert rules (PromQL, in-process), notifications, incidents,
postmortems and the public status page (issue 6).

It reaches the ledger only through ``client.base`` (a ``Recorder`` for alerts and
incidents, a ``LedgerClient`` for reading them back).
"""

from opsledger.monitor.config import MonitorConfig, Target, parse_monitor_config
from opsledger.monitor.incidents import Incident, fold_incidents
from opsledger.monitor.promql import PromQLError, evaluate, parse
from opsledger.monitor.rules import (
    DEFAULT_RULES,
    AlertEvaluator,
    export_rule_file,
    load_rule_groups,
)
from opsledger.monitor.series import SeriesStore
from opsledger.monitor.service import MonitorService

__all__ = [
    "DEFAULT_RULES",
    "AlertEvaluator",
    "Incident",
    "MonitorConfig",
    "MonitorService",
    "PromQLError",
    "SeriesStore",
    "Target",
    "evaluate",
    "export_rule_file",
    "fold_incidents",
    "load_rule_groups",
    "parse",
    "parse_monitor_config",
]
