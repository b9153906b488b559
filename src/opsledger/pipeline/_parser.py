"""The pipeline file's validator: loaded YAML (with lines) in, ``PipelineSpec`` out.

Every check names ``file:line: field.path: reason``. Private: ``spec.parse_pipeline`` is
the entry point.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

from opsledger.core import ConfigError
from opsledger.pipeline._model import (
    DEFAULT_TIMEOUT,
    MAX_MATRIX,
    MAX_RETRIES,
    SEVERITIES,
    STAGES,
    EvidenceSpec,
    JobDef,
    PipelineSpec,
    SecretRef,
    Step,
    find_cycle,
    parse_duration,
)
from opsledger.pipeline._yaml import (
    LineDict,
    LineList,
    line_of,
    load_yaml,
    scalar_text,
    to_plain,
)
from opsledger.pipeline.conditions import parse_condition

__all__ = ["PipelineParser"]

_TOP_KEYS = {"pipeline", "description", "vars", "env", "stages"}
_STAGE_KEYS = {"jobs", "description"}
_JOB_KEYS = {
    "steps",
    "needs",
    "env",
    "secrets",
    "timeout",
    "retries",
    "if",
    "matrix",
    "artifacts",
    "evidence",
    "deploy",
    "description",
}
_STEP_KEYS = {"run", "name"}
_EVIDENCE_KEYS = {"type", "parser", "artifact", "name", "fail_on"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def value_env_name(kind: str, name: str) -> str:
    """The environment variable a ``run:`` command reads ``vars.NAME``/``matrix.NAME`` from."""
    return f"OPSLEDGER_{kind.upper().rstrip('S')}_{name.upper().replace('-', '_')}"


_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXPR = re.compile(r"\$\{\{(.*?)\}\}")
_REF = re.compile(r"^\s*(vars|matrix)\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")


class PipelineParser:
    def __init__(self, source: str, overrides: dict[str, str]) -> None:
        self.source = source
        self.overrides = overrides
        self.vars: dict[str, str] = {}

    def err(self, line: int | None, path: str, reason: str) -> ConfigError:
        where = f"{self.source}:{line}" if line is not None else self.source
        return ConfigError(f"{where}: {path}: {reason}", key=path)

    # -- the document --
    def parse(self, text: str) -> PipelineSpec:
        doc = load_yaml(text, self.source)
        if not isinstance(doc, LineDict):
            raise self.err(1, "pipeline", "the file must be a mapping with pipeline: and stages:")
        self.keys(doc, _TOP_KEYS, "")
        name = doc.get("pipeline")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.err(line_of(doc, "pipeline"), "pipeline", "a name like shop is required")
        self.vars = self.string_map(doc, "vars", "vars", _VAR_NAME, substitute=False)
        for key, value in self.overrides.items():
            if not _VAR_NAME.match(key):
                raise ConfigError(f"--var {key}: a name of letters, digits, _ and -", key=key)
            self.vars[key] = value
        env = self.string_map(doc, "env", "env", _ENV_NAME)
        stages = doc.get("stages")
        if not isinstance(stages, LineDict) or not stages:
            raise self.err(line_of(doc, "stages"), "stages", "a mapping of stages is required")
        jobs: dict[str, JobDef] = {}
        stage_of: dict[str, str] = {}
        last = -1
        for stage, body in stages.items():
            line = line_of(stages, stage)
            if stage not in STAGES:
                raise self.err(
                    line, f"stages.{stage}", f"unknown stage (known, in order: {', '.join(STAGES)})"
                )
            if STAGES.index(stage) < last:
                raise self.err(
                    line, f"stages.{stage}", f"out of order (the order is {' → '.join(STAGES)})"
                )
            last = STAGES.index(stage)
            path = f"stages.{stage}"
            if not isinstance(body, LineDict):
                raise self.err(line, path, "a mapping with jobs: is required")
            self.keys(body, _STAGE_KEYS, path)
            raw_jobs = body.get("jobs")
            if not isinstance(raw_jobs, LineDict) or not raw_jobs:
                raise self.err(line_of(body, "jobs"), f"{path}.jobs", "a mapping of jobs")
            for job_name, raw in raw_jobs.items():
                jline = line_of(raw_jobs, job_name)
                jpath = f"{path}.jobs.{job_name}"
                if not _NAME.match(job_name):
                    raise self.err(jline, jpath, "a job name is letters, digits, ., _ and -")
                if job_name in stage_of:
                    raise self.err(jline, jpath, f"a job {job_name} is already defined")
                stage_of[job_name] = stage
                for job in self.job(job_name, stage, raw, jline, jpath):
                    jobs[job.name] = job
        jobs = self.resolve_needs(jobs, stage_of)
        # run: commands read vars through the environment (see substitute)
        values = {value_env_name("vars", k): v for k, v in self.vars.items()}
        return PipelineSpec(
            name=name,
            source=self.source,
            digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
            jobs=jobs,
            stages=tuple(stages),
            vars=dict(self.vars),
            env={**values, **env},
        )

    def keys(self, mapping: LineDict, allowed: set[str], path: str) -> None:
        for key in mapping:
            if key not in allowed:
                raise self.err(
                    line_of(mapping, key),
                    f"{path}.{key}" if path else key,
                    f"unknown key (allowed: {', '.join(sorted(allowed))})",
                )

    def substitute(
        self,
        value: str,
        line: int | None,
        path: str,
        matrix: Mapping[str, str] | None = None,
        *,
        env_refs: bool = False,
    ) -> str:
        """``${{ vars.X }}`` / ``${{ matrix.X }}`` replaced by their values; with
        ``env_refs`` (a ``run:`` command) by a reference to an environment variable that
        holds the value instead, so a value (a branch name from ``--var``, say) is data to
        the shell and can never run as code."""

        def one(match: re.Match[str]) -> str:
            ref = _REF.match(match.group(1))
            if ref is None:
                raise self.err(
                    line, path, f"cannot read {match.group(0)!r} (use vars.NAME or matrix.NAME)"
                )
            kind, name = ref.groups()
            table = self.vars if kind == "vars" else (matrix or {})
            if name not in table:
                raise self.err(line, path, f"unknown {kind}.{name}")
            if env_refs:
                return "${" + value_env_name(kind, name) + "}"
            return table[name]

        return _EXPR.sub(one, value)

    def string_map(
        self,
        mapping: LineDict,
        key: str,
        path: str,
        names: re.Pattern[str],
        *,
        substitute: bool = True,
        matrix: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        raw = mapping.get(key)
        if raw is None:
            return {}
        if not isinstance(raw, LineDict):
            raise self.err(line_of(mapping, key), path, "a mapping of NAME: value is required")
        result: dict[str, str] = {}
        for name, value in raw.items():
            line = line_of(raw, name)
            if not names.match(name):
                raise self.err(line, f"{path}.{name}", "not a valid name")
            if isinstance(value, LineDict | LineList) or value is None:
                raise self.err(line, f"{path}.{name}", "a text value is required")
            text = scalar_text(value)
            result[name] = (
                self.substitute(text, line, f"{path}.{name}", matrix) if substitute else text
            )
        return result

    # -- jobs --
    def job(self, name: str, stage: str, raw: Any, line: int | None, path: str) -> list[JobDef]:
        if not isinstance(raw, LineDict):
            raise self.err(line, path, "a job is a mapping with steps:")
        self.keys(raw, _JOB_KEYS, path)
        combos = self.matrix(raw, path)
        jobs = []
        for combo in combos:
            full = (
                name if not combo else f"{name}[{','.join(f'{k}={v}' for k, v in combo.items())}]"
            )
            jobs.append(
                self.one_job(
                    name=full, base=name, stage=stage, raw=raw, line=line, path=path, matrix=combo
                )
            )
        return jobs

    def matrix(self, raw: LineDict, path: str) -> list[dict[str, str]]:
        matrix = raw.get("matrix")
        if matrix is None:
            return [{}]
        mpath = f"{path}.matrix"
        if not isinstance(matrix, LineDict) or not matrix:
            raise self.err(line_of(raw, "matrix"), mpath, "a mapping of NAME: [values]")
        axes: list[list[tuple[str, str]]] = []
        for key, values in matrix.items():
            kline = line_of(matrix, key)
            if not _VAR_NAME.match(key):
                raise self.err(kline, f"{mpath}.{key}", "not a valid name")
            if not isinstance(values, LineList) or not values:
                raise self.err(kline, f"{mpath}.{key}", "a non-empty list of values")
            texts = []
            for i, value in enumerate(values):
                if isinstance(value, LineDict | LineList) or value is None:
                    raise self.err(line_of(values, i), f"{mpath}.{key}[{i}]", "a text value")
                texts.append(self.substitute(scalar_text(value), kline, f"{mpath}.{key}"))
            if len(set(texts)) != len(texts):
                raise self.err(kline, f"{mpath}.{key}", "values must be distinct")
            axes.append([(key, t) for t in texts])
        total = 1
        for axis in axes:
            total *= len(axis)
        if total > MAX_MATRIX:
            raise self.err(line_of(raw, "matrix"), mpath, f"more than {MAX_MATRIX} combinations")
        return [dict(combo) for combo in product(*axes)]

    def one_job(
        self,
        *,
        name: str,
        base: str,
        stage: str,
        raw: LineDict,
        line: int | None,
        path: str,
        matrix: dict[str, str],
    ) -> JobDef:
        steps = self.steps(raw, path, matrix)
        needs = self.string_list(raw, "needs", f"{path}.needs", matrix=matrix)
        env = {
            **{value_env_name("matrix", k): v for k, v in (matrix or {}).items()},
            **self.string_map(raw, "env", f"{path}.env", _ENV_NAME, matrix=matrix),
        }
        secrets = self.secrets(raw, path)
        timeout = DEFAULT_TIMEOUT
        if "timeout" in raw:
            timeout = parse_duration(
                raw["timeout"], f"{self.source}:{line_of(raw, 'timeout')}: {path}.timeout"
            )
        retries = raw.get("retries", 0)
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or not 0 <= retries <= MAX_RETRIES
        ):
            raise self.err(
                line_of(raw, "retries"), f"{path}.retries", f"an integer 0..{MAX_RETRIES}"
            )
        condition = None
        if "if" in raw:
            cond = raw["if"]
            where = f"{self.source}:{line_of(raw, 'if')}: {path}.if"
            if isinstance(cond, bool):
                cond = "true" if cond else "false"
            if not isinstance(cond, str):
                raise ConfigError(f"{where}: a condition (text) is required", key=f"{path}.if")
            known = frozenset({f"vars.{k}" for k in self.vars} | {f"matrix.{k}" for k in matrix})
            condition = parse_condition(cond, where, known)
        artifacts = self.string_list(raw, "artifacts", f"{path}.artifacts", matrix=matrix)
        for i, pattern in enumerate(artifacts):
            if pattern.startswith("/") or ".." in Path(pattern).parts:
                raise self.err(
                    line_of(raw.get("artifacts"), i),
                    f"{path}.artifacts[{i}]",
                    "a path inside the job's directory (relative, no ..)",
                )
        evidence = self.evidence(raw, path, artifacts, matrix)
        deploy = self.deploy(raw, path, matrix)
        return JobDef(
            name=name,
            stage=stage,
            steps=steps,
            needs=tuple(needs),
            env=env,
            secrets=secrets,
            timeout=timeout,
            retries=retries,
            condition=condition,
            matrix=matrix,
            artifacts=tuple(artifacts),
            evidence=evidence,
            deploy=deploy,
            base=base,
            line=line or 0,
        )

    def steps(self, raw: LineDict, path: str, matrix: dict[str, str]) -> tuple[Step, ...]:
        steps = raw.get("steps")
        spath = f"{path}.steps"
        if steps is None and "deploy" in raw:
            return ()
        if not isinstance(steps, LineList) or not steps:
            raise self.err(line_of(raw, "steps"), spath, 'a list of steps (- run: "cmd")')
        result = []
        for i, item in enumerate(steps):
            sline = line_of(steps, i)
            step = item
            if isinstance(item, str):  # "- make test" is accepted as "- run: make test"
                step = LineDict({"run": item})
                step.line, step.key_lines = sline or 0, {"run": sline or 0}
            if not isinstance(step, LineDict):
                raise self.err(sline, f"{spath}[{i}]", "a step is a mapping with run:")
            self.keys(step, _STEP_KEYS, f"{spath}[{i}]")
            run = step.get("run")
            if not isinstance(run, str) or not run.strip():
                raise self.err(line_of(step, "run"), f"{spath}[{i}].run", "a shell command")
            step_name = step.get("name", f"step {i + 1}")
            if not isinstance(step_name, str) or not step_name:
                raise self.err(line_of(step, "name"), f"{spath}[{i}].name", "text")
            cmd = self.substitute(
                run, line_of(step, "run"), f"{spath}[{i}].run", matrix, env_refs=True
            )
            result.append(Step(cmd, step_name))
        return tuple(result)

    def string_list(
        self, raw: LineDict, key: str, path: str, *, matrix: dict[str, str]
    ) -> list[str]:
        value = raw.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value_list: list[Any] = [value]
            lines: list[int | None] = [line_of(raw, key)]
        elif isinstance(value, LineList):
            value_list = list(value)
            lines = [line_of(value, i) for i in range(len(value))]
        else:
            raise self.err(line_of(raw, key), path, "a list of names")
        result = []
        for i, item in enumerate(value_list):
            if not isinstance(item, str) or not item:
                raise self.err(lines[i], f"{path}[{i}]", "text is required")
            text = self.substitute(item, lines[i], f"{path}[{i}]", matrix)
            if text in result:
                raise self.err(lines[i], f"{path}[{i}]", f"{text} is listed twice")
            result.append(text)
        return result

    def secrets(self, raw: LineDict, path: str) -> dict[str, SecretRef]:
        table = self.string_map(raw, "secrets", f"{path}.secrets", _ENV_NAME, substitute=False)
        result = {}
        secrets_map = raw.get("secrets")
        for name, ref in table.items():
            source, _, target = ref.partition(":")
            if source not in ("env", "file") or not target:
                raise self.err(
                    line_of(secrets_map, name),
                    f"{path}.secrets.{name}",
                    "a reference env:VARIABLE or file:/path (never the value itself)",
                )
            result[name] = SecretRef("env" if source == "env" else "file", target)
        return result

    def evidence(
        self, raw: LineDict, path: str, artifacts: list[str], matrix: dict[str, str]
    ) -> EvidenceSpec | None:
        ev = raw.get("evidence")
        if ev is None:
            return None
        epath = f"{path}.evidence"
        if isinstance(ev, str):
            ev = LineDict({"type": ev})
            ev.line, ev.key_lines = line_of(raw, "evidence") or 0, {}
        if not isinstance(ev, LineDict):
            raise self.err(line_of(raw, "evidence"), epath, "a mapping with type:")
        self.keys(ev, _EVIDENCE_KEYS, epath)
        kind = ev.get("type")
        if kind not in ("build", "test", "scan"):
            raise self.err(line_of(ev, "type"), f"{epath}.type", "one of build, test, scan")
        fields: dict[str, str | None] = {}
        for key in ("parser", "artifact", "name", "fail_on"):
            value = ev.get(key)
            if value is not None and not isinstance(value, str):
                raise self.err(line_of(ev, key), f"{epath}.{key}", "text is required")
            fields[key] = (
                self.substitute(value, line_of(ev, key), f"{epath}.{key}", matrix)
                if value
                else None
            )
        parser = fields["parser"]
        if kind == "build":
            if parser is not None:
                raise self.err(line_of(ev, "parser"), f"{epath}.parser", "a build has no parser")
            if not artifacts:
                raise self.err(line_of(ev), epath, "build evidence needs the job's artifacts:")
            if fields["artifact"] is None:
                if len(artifacts) != 1:
                    raise self.err(
                        line_of(ev), f"{epath}.artifact", "name which artifact was built"
                    )
                fields["artifact"] = artifacts[0]
            elif fields["artifact"] not in artifacts:
                raise self.err(
                    line_of(ev, "artifact"),
                    f"{epath}.artifact",
                    "must be one of the job's artifacts",
                )
        else:
            allowed = ("counts", "exit-code") if kind == "test" else ("bandit", "pip-audit")
            if parser is None:
                parser = allowed[0]
            if parser not in allowed:
                raise self.err(
                    line_of(ev, "parser"), f"{epath}.parser", f"one of {', '.join(allowed)}"
                )
        if fields["fail_on"] is not None and (
            kind != "scan" or fields["fail_on"] not in SEVERITIES
        ):
            raise self.err(
                line_of(ev, "fail_on"),
                f"{epath}.fail_on",
                f"only for scans: one of {', '.join(SEVERITIES)}",
            )
        return EvidenceSpec(
            type=kind,
            parser=parser,
            artifact=fields["artifact"],
            name=fields["name"],
            fail_on=fields["fail_on"],
        )

    def deploy(self, raw: LineDict, path: str, matrix: dict[str, str]) -> Any:
        if "deploy" not in raw:
            return None
        value = raw["deploy"]
        line = line_of(raw, "deploy")
        if not isinstance(value, LineDict):
            raise self.err(line, f"{path}.deploy", "a mapping is required")
        from opsledger.pipeline.deploy import parse_deploy

        try:
            plain = to_plain(
                value, lambda text: self.substitute(text, line, f"{path}.deploy", matrix)
            )
            return parse_deploy(plain, where=f"{self.source}:{line}")
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise self.err(line, f"{path}.deploy", str(exc)) from None

    def resolve_needs(self, jobs: dict[str, JobDef], stage_of: dict[str, str]) -> dict[str, JobDef]:
        """Needs name base jobs (all their matrix expansions) or one expansion; a job may
        need jobs of its own stage or earlier ones; cycles are refused."""
        by_base: dict[str, list[str]] = {}
        for job in jobs.values():
            by_base.setdefault(job.base, []).append(job.name)
        resolved: dict[str, JobDef] = {}
        for job in jobs.values():
            path = f"stages.{job.stage}.jobs.{job.base}.needs"
            expanded: list[str] = []
            for need in job.needs:
                targets = by_base.get(need) or ([need] if need in jobs else [])
                if not targets:
                    raise self.err(job.line, path, f"unknown job {need}")
                for target in targets:
                    target_stage = jobs[target].stage
                    if STAGES.index(target_stage) > STAGES.index(job.stage):
                        raise self.err(
                            job.line, path, f"{need} is in a later stage ({target_stage})"
                        )
                    if target == job.name or jobs[target].base == job.base:
                        raise self.err(job.line, path, f"{job.base} cannot need itself")
                    if target not in expanded:
                        expanded.append(target)
            resolved[job.name] = replace(job, needs=tuple(expanded))
        cycle = find_cycle(resolved)
        if cycle:
            job = resolved[cycle[0]]
            raise self.err(
                job.line,
                f"stages.{job.stage}.jobs.{job.base}.needs",
                f"a cycle: {' → '.join(cycle)}",
            )
        return resolved
