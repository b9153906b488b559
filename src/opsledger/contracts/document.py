"""Contract documents: YAML in, a validated, compiled ``Contract`` out.

A contract is data, deployed by a ``contract.deployed`` transaction and immutable after:
a new version is a new deployment. Every CEL expression is compiled when the document is
parsed, so a bad expression, an unknown field of the document or a wrong type is refused
at deploy time with the document line and the reason. Shape::

    contract: release-gate          # name
    version: 1
    description: ...
    triggers: [release.requested, approval.granted]
    request: release.requested      # optional: the verdict is about the newest tx of this
                                    # type on the trigger's subject (default: the trigger)
    params: {approvals: 2}
    evidence:                       # named queries, evaluated before the trigger only
      approvals:
        type: approval.granted      # exact, or a prefix such as "scan.*"
        subject: request            # request (default) | trigger | any
        where: e.body.digest == request.body.digest   # optional CEL filter over e
        distinct: actor             # optional: keep the newest item per actor
        limit: 200                  # newest N scanned (at most 1000)
    derive:                         # optional named CEL values, in order
      valid: evidence.approvals.filter(a, a.actor != request.actor)
    requirements:
      - name: approvals
        check: size(derived.valid) >= params.approvals       # CEL bool
        cite: derived.valid          # optional CEL list of items whose ids are the evidence
        fail: "{{size(derived.valid)}} of {{params.approvals}} approvals"   # shown on fail
        pass: "approved by {{derived.valid.map(a, a.actor)}}"               # optional
    applies: trigger.body.service == params.service   # optional CEL: else no verdict
    records:                        # optional: transactions the node records after a verdict
      - {type: sla.violation, when: fail, body: {contract: "'sla'", measured: "..."}}
    jobs:                           # optional: jobs to request when triggered
      - {name: scan, run: [pip-audit, -f, json], records: scan.finished, parser: pip-audit,
         when: "size(evidence.scans) == 0", timeout: 600}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from opsledger.contracts._cel import CelError, Compiled, compile_expression
from opsledger.core import InvalidInput, canonical, sha256_hex
from opsledger.core.schema_parts import NAME_PATTERN
from opsledger.core.schemas import BODY_SCHEMAS

__all__ = [
    "MAX_EVIDENCE",
    "Contract",
    "EvidenceQuery",
    "JobRequestSpec",
    "RecordSpec",
    "Requirement",
    "Template",
    "parse_contract",
]

MAX_EVIDENCE = 1000
_TOP_KEYS = {
    "contract",
    "version",
    "description",
    "triggers",
    "request",
    "applies",
    "params",
    "evidence",
    "derive",
    "requirements",
    "jobs",
    "records",
}
_RECORD_KEYS = {"type", "when", "body"}
_EVIDENCE_KEYS = {"type", "subject", "where", "distinct", "limit"}
_REQUIREMENT_KEYS = {"name", "check", "cite", "fail", "pass"}
_JOB_KEYS = {"name", "run", "records", "parser", "when", "timeout"}
_TEMPLATE_PART = re.compile(r"\{\{(.+?)\}\}", re.DOTALL)


@dataclass(frozen=True)
class Template:
    """Text with ``{{ CEL }}`` holes: the reasons a person reads in a verdict."""

    parts: tuple[str | Compiled, ...]


@dataclass(frozen=True)
class EvidenceQuery:
    name: str
    type: str
    subject: str  # request | trigger | any
    where: Compiled | None
    distinct: str | None
    limit: int


@dataclass(frozen=True)
class Requirement:
    name: str
    check: Compiled
    cite: Compiled | None
    fail: Template
    passed: Template | None


@dataclass(frozen=True)
class JobRequestSpec:
    name: str
    run: tuple[str, ...]
    records: str | None
    parser: str | None
    when: Compiled | None
    timeout: int


@dataclass(frozen=True)
class RecordSpec:
    """A transaction the node records after a verdict (``when`` it passed, failed or
    always), its body fields computed by CEL from the same activation."""

    type: str
    when: str
    body: tuple[tuple[str, Compiled], ...]


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    description: str
    triggers: tuple[str, ...]
    request: str | None
    applies: Compiled | None
    params: dict[str, Any]
    evidence: tuple[EvidenceQuery, ...]
    derive: tuple[tuple[str, Compiled], ...]
    requirements: tuple[Requirement, ...]
    jobs: tuple[JobRequestSpec, ...]
    records: tuple[RecordSpec, ...]
    source: str = field(repr=False)

    @property
    def digest(self) -> str:
        return "sha256:" + sha256_hex(self.source.encode())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class _Loader(yaml.SafeLoader):
    """Keeps the line of every mapping and sequence so errors can name it."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = _LineDict({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    return mapping


class _LineDict(dict[str, Any]):
    line: int = 0
    key_lines: dict[str, int]


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(mapping: Any, key: str | None = None) -> int | None:
    if not isinstance(mapping, _LineDict):
        return None
    if key is not None and key in getattr(mapping, "key_lines", {}):
        return mapping.key_lines[key]
    return mapping.line


def _err(message: str, line: int | None) -> CelError:
    where = f"line {line}: " if line is not None and not message.startswith("line ") else ""
    return CelError(f"{where}{message}", line=line)


def _check_keys(mapping: dict[str, Any], allowed: set[str], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise _err(
                f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})",
                _line(mapping, key),
            )


def _cel(mapping: Any, key: str, expected: str, what: str) -> Compiled:
    value = mapping.get(key)
    line = _line(mapping, key)
    if not isinstance(value, str) or not value.strip():
        raise _err(f"{what}.{key} must be a CEL expression (a string)", line)
    return compile_expression(value.strip(), expected, where=f"{what}.{key}", line=line)


def _template(mapping: Any, key: str, what: str) -> Template | None:
    value = mapping.get(key)
    if value is None:
        return None
    line = _line(mapping, key)
    if not isinstance(value, str):
        raise _err(f"{what}.{key} must be text", line)
    parts: list[str | Compiled] = []
    position = 0
    for match in _TEMPLATE_PART.finditer(value):
        parts.append(value[position : match.start()])
        parts.append(
            compile_expression(match.group(1).strip(), "any", where=f"{what}.{key}", line=line)
        )
        position = match.end()
    parts.append(value[position:])
    return Template(tuple(p for p in parts if p != ""))


def _known_type(value: Any, line: int | None, what: str) -> str:
    if not isinstance(value, str):
        raise _err(f"{what} must be a transaction type", line)
    if value.endswith(".*"):
        prefix = value[:-1]
        if not any(t.startswith(prefix) for t in BODY_SCHEMAS):
            raise _err(f"{what}: no transaction type matches {value!r}", line)
        return value
    if value not in BODY_SCHEMAS:
        raise _err(f"{what}: unknown transaction type {value!r}", line)
    return value


def parse_contract(source: str) -> Contract:
    """Parse, validate and compile a contract document; ``CelError`` (an ``InvalidInput``)
    names the line and the reason for anything wrong."""
    try:
        doc = yaml.load(source, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise _err(f"not valid YAML: {getattr(exc, 'problem', exc)}", line) from None
    if not isinstance(doc, dict):
        raise _err("a contract is a YAML mapping", 1)
    _check_keys(doc, _TOP_KEYS, "the contract")
    name = doc.get("contract")
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise _err("contract: a name like release-gate is required", _line(doc, "contract"))
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _err("version: a positive integer is required", _line(doc, "version"))
    triggers = doc.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        raise _err("triggers: a list of transaction types is required", _line(doc, "triggers"))
    trigger_types = tuple(_known_type(t, _line(doc, "triggers"), "triggers") for t in triggers)
    request = doc.get("request")
    if request is not None:
        request = _known_type(request, _line(doc, "request"), "request")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise _err("params must be a mapping", _line(doc, "params"))
    try:
        canonical(_plain(params))  # JSON values only: a YAML date or set is not one
    except InvalidInput as exc:
        raise _err(
            f"params must hold JSON values only: {exc.message}", _line(doc, "params")
        ) from None
    evidence = _parse_evidence(doc)
    derive_doc = doc.get("derive") or {}
    if not isinstance(derive_doc, dict):
        raise _err("derive must be a mapping of name: CEL expression", _line(doc, "derive"))
    derive = tuple((key, _cel(derive_doc, key, "any", "derive")) for key in derive_doc)
    requirements = _parse_requirements(doc)
    jobs = _parse_jobs(doc)
    records = _parse_records(doc)
    applies = _cel(doc, "applies", "bool", "contract") if "applies" in doc else None
    return Contract(
        name=name,
        version=version,
        description=str(doc.get("description") or ""),
        triggers=trigger_types,
        request=request,
        applies=applies,
        params=_plain(params),
        evidence=evidence,
        derive=derive,
        requirements=requirements,
        jobs=jobs,
        records=records,
        source=source,
    )


def _plain(value: Any) -> Any:
    """Plain dicts and lists (the loader's line-tracking mappings are not CEL values)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _parse_evidence(doc: dict[str, Any]) -> tuple[EvidenceQuery, ...]:
    section = doc.get("evidence") or {}
    if not isinstance(section, dict):
        raise _err("evidence must be a mapping of name: query", _line(doc, "evidence"))
    queries = []
    for name, spec in section.items():
        what = f"evidence.{name}"
        if not isinstance(spec, dict):
            raise _err(f"{what} must be a mapping", _line(section, name))
        _check_keys(spec, _EVIDENCE_KEYS, what)
        subject = spec.get("subject", "request")
        if subject not in ("request", "trigger", "any"):
            raise _err(f"{what}.subject must be request, trigger or any", _line(spec, "subject"))
        limit = spec.get("limit", 200)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_EVIDENCE:
            raise _err(f"{what}.limit must be 1..{MAX_EVIDENCE}", _line(spec, "limit"))
        distinct = spec.get("distinct")
        if distinct not in (None, "actor"):
            raise _err(f"{what}.distinct can only be actor", _line(spec, "distinct"))
        where = None
        if "where" in spec:
            line = _line(spec, "where")
            text = str(spec["where"]).strip()
            compile_expression(text, "bool", where=f"{what}.where", line=line)  # its own errors
            where = compile_expression(
                f"candidates.filter(e, {text})", "list", where=f"{what}.where", line=line
            )
        queries.append(
            EvidenceQuery(
                name=str(name),
                type=_known_type(spec.get("type"), _line(spec, "type"), f"{what}.type"),
                subject=subject,
                where=where,
                distinct=distinct,
                limit=limit,
            )
        )
    return tuple(queries)


def _parse_requirements(doc: dict[str, Any]) -> tuple[Requirement, ...]:
    section = doc.get("requirements")
    if not isinstance(section, list) or not section:
        raise _err("requirements: a list is required", _line(doc, "requirements"))
    requirements = []
    seen: set[str] = set()
    for spec in section:
        if not isinstance(spec, dict):
            raise _err("each requirement is a mapping", _line(doc, "requirements"))
        _check_keys(spec, _REQUIREMENT_KEYS, "a requirement")
        name = spec.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise _err("each requirement needs a unique name", _line(spec, "name"))
        seen.add(name)
        what = f"requirements.{name}"
        fail = _template(spec, "fail", what) or Template((f"{name} is not met",))
        requirements.append(
            Requirement(
                name=name,
                check=_cel(spec, "check", "bool", what),
                cite=_cel(spec, "cite", "list", what) if "cite" in spec else None,
                fail=fail,
                passed=_template(spec, "pass", what),
            )
        )
    return tuple(requirements)


def _parse_jobs(doc: dict[str, Any]) -> tuple[JobRequestSpec, ...]:
    section = doc.get("jobs") or []
    if not isinstance(section, list):
        raise _err("jobs must be a list", _line(doc, "jobs"))
    jobs = []
    for spec in section:
        if not isinstance(spec, dict):
            raise _err("each job is a mapping", _line(doc, "jobs"))
        _check_keys(spec, _JOB_KEYS, "a job")
        name = spec.get("name")
        run = spec.get("run")
        if not isinstance(name, str) or not name:
            raise _err("each job needs a name", _line(spec))
        if not isinstance(run, list) or not run or not all(isinstance(a, str) for a in run):
            raise _err(
                f"jobs.{name}.run must be a command as a list of strings", _line(spec, "run")
            )
        records = spec.get("records")
        if records not in (None, "scan.finished", "test.finished"):
            raise _err(
                f"jobs.{name}.records must be scan.finished or test.finished",
                _line(spec, "records"),
            )
        timeout = spec.get("timeout", 600)
        if not isinstance(timeout, int) or timeout < 1:
            raise _err(
                f"jobs.{name}.timeout must be seconds (a positive integer)", _line(spec, "timeout")
            )
        jobs.append(
            JobRequestSpec(
                name=name,
                run=tuple(run),
                records=records,
                parser=spec.get("parser"),
                when=_cel(spec, "when", "bool", f"jobs.{name}") if "when" in spec else None,
                timeout=timeout,
            )
        )
    return tuple(jobs)


def _parse_records(doc: dict[str, Any]) -> tuple[RecordSpec, ...]:
    section = doc.get("records") or []
    if not isinstance(section, list):
        raise _err("records must be a list", _line(doc, "records"))
    records = []
    for spec in section:
        if not isinstance(spec, dict):
            raise _err("each record is a mapping", _line(doc, "records"))
        _check_keys(spec, _RECORD_KEYS, "a record")
        tx_type = _known_type(spec.get("type"), _line(spec, "type"), "records.type")
        when = spec.get("when", "fail")
        if when not in ("pass", "fail", "always"):
            raise _err("records.when must be pass, fail or always", _line(spec, "when"))
        body = spec.get("body") or {}
        if not isinstance(body, dict) or not body:
            raise _err(
                f"records.{tx_type}.body must map fields to CEL expressions", _line(spec, "body")
            )
        fields = tuple(
            (str(key), _cel(body, key, "any", f"records.{tx_type}.body")) for key in body
        )
        records.append(RecordSpec(type=tx_type, when=when, body=fields))
    return tuple(records)
