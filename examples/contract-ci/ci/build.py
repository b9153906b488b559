"""Compile every contract in ``contracts/`` with the vyper package into ``build/<Name>.json``
(ABI, bytecode, compiler version, SHA-256 of the source). This is the pipeline's ``compile``
job; the JSON files are its artifacts, so their digests go on the ledger.

    python ci/build.py [--out build]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chain import BUILD, CONTRACTS, compile_contract, write_artifact
from vyper.exceptions import VyperException  # type: ignore[import-untyped]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUILD, help="output folder (default: build)")
    args = parser.parse_args(argv)
    sources = sorted(CONTRACTS.glob("*.vy"))
    if not sources:
        print(f"error: no .vy files in {CONTRACTS}", file=sys.stderr)
        return 2
    failed = 0
    for path in sources:
        try:
            artifact = compile_contract(path)
        except VyperException as exc:
            print(f"FAIL {path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        target = write_artifact(artifact, args.out)
        size = (len(artifact.bytecode) - 2) // 2
        print(f"ok   {path.name} -> {target.name} ({size} bytes, {artifact.compiler})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
