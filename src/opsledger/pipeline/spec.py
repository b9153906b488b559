"""Pipelines as code: a YAML file in, a validated ``PipelineSpec`` (a DAG of jobs) out.

Everything is checked when the file is loaded, before anything runs: stage names and
order, job names, ``needs`` (unknown names and cycles refused), timeouts, retries,
conditions, the matrix, evidence and the ``deploy:`` mapping (validated by
``pipeline.deploy.parse_deploy``). Every error is a ``ConfigError`` whose message reads
``file:line: field.path: reason``. Shape (see docs/pipelines.md)::

    pipeline: shop
    vars: {env: staging}                 # defaults for ${{ vars.NAME }}; --var overrides
    env: {PYTHONUNBUFFERED: "1"}         # for every job
    stages:
      build:
        jobs:
          compile:
            steps:
              - run: "make app"
                name: compile            # optional
            artifacts: ["dist/*.whl"]
            evidence: {type: build, artifact: "dist/*.whl"}
      test:
        jobs:
          unit:
            needs: [compile]
            matrix: {py: ["3.11", "3.12"]}
            steps: [{run: "tox -e py${{ matrix.py }}"}]
            env: {TARGET: "${{ vars.env }}"}
            secrets: {TOKEN: "env:GITHUB_TOKEN"}      # or file:/path
            timeout: 5m
            retries: 1
            if: "vars.env != 'prod'"
            evidence: {type: test, parser: counts}

Ordering rule: a job runs after the jobs it ``needs`` and nothing else; stages order the
file for people and bound ``needs`` (a job may only need jobs of its own or an earlier
stage), they do not add implicit edges. This keeps independent work parallel across
stages (a lint job in ``code`` need not wait for a slow ``plan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from opsledger.core import ConfigError
from opsledger.pipeline._model import (
    DEFAULT_TIMEOUT,
    SEVERITIES,
    STAGES,
    EvidenceSpec,
    JobDef,
    PipelineSpec,
    SecretRef,
    Step,
    parse_duration,
)
from opsledger.pipeline._parser import PipelineParser

__all__ = [
    "DEFAULT_TIMEOUT",
    "SEVERITIES",
    "STAGES",
    "EvidenceSpec",
    "JobDef",
    "PipelineSpec",
    "SecretRef",
    "Step",
    "load_pipeline",
    "parse_duration",
    "parse_pipeline",
]


def load_pipeline(path: Path, vars: Mapping[str, str] | None = None) -> PipelineSpec:
    """Read and validate the pipeline file at ``path``; ``vars`` override its ``vars:``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the pipeline is not UTF-8 text") from None
    spec = parse_pipeline(text, source=str(path), vars=vars)
    return PipelineSpec(
        name=spec.name,
        source=spec.source,
        digest=spec.digest,
        jobs=spec.jobs,
        stages=spec.stages,
        vars=spec.vars,
        env=spec.env,
        root=path.resolve().parent,
    )


def parse_pipeline(
    text: str, source: str = "<pipeline>", vars: Mapping[str, str] | None = None
) -> PipelineSpec:
    """Validate a pipeline given as text. ``source`` names it in errors."""
    return PipelineParser(source, dict(vars or {})).parse(text)
