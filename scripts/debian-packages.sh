#!/usr/bin/env bash
# Installs Debian packages the tests or benchmarks run as real components, when their
# command is missing. Usage: scripts/debian-packages.sh COMMAND:PACKAGE ...
# Idempotent (nothing to do when every command is on PATH). Needs root or sudo and
# Debian's package index; prints what to run by hand when it cannot install.
set -euo pipefail

missing=()
for pair in "$@"; do
    command_name="${pair%%:*}"
    package="${pair#*:}"
    command -v "$command_name" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
# one package can provide several commands
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: missing ${missing[*]}; install them with: apt-get install ${missing[*]}" >&2
        exit 2
    fi
    SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
