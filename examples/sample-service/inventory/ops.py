"""Operational helpers. PLANTED VULNERABILITY: see README.md; do not copy."""

from __future__ import annotations

import subprocess


def ping_host(host: str) -> int:
    cmd = "ping -c 1 " + host
    return subprocess.call(cmd, shell=True)  # planted: command injection (bandit B602)
