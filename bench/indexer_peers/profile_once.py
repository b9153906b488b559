"""Profile an in-process ``--once`` backfill of the cached benchmark chain (no CLI start-up).

.venv/bin/python bench/indexer_peers/profile_once.py [--quick] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer_peers.chain import FULL, QUICK, ensure_chain, start_node
from indexer_peers.opsledger_run import write_config
from opsledger.indexer.config import load_file
from opsledger.indexer.service import IndexerService


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--initial-range", type=int, help="override the chain's initial_range")
    args = parser.parse_args()
    info = ensure_chain(Path("bench/results"), QUICK if args.quick else FULL)
    node = start_node(info)
    try:
        for run in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                path = write_config(Path(tmp), node.url, info.nft, info.token, info.deploy_block)
                config = load_file(path)
                if args.initial_range:
                    chains = tuple(
                        dataclasses.replace(c, initial_range=args.initial_range)
                        for c in config.chains
                    )
                    config = dataclasses.replace(config, chains=chains)
                service = IndexerService(config, with_metrics=False)  # as `index --once`
                profiler = cProfile.Profile() if args.profile and run == 0 else None
                started = time.perf_counter()
                cpu = time.process_time()
                if profiler:
                    profiler.enable()
                asyncio.run(service.run(once=True))
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu
                print(f"run {run}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
