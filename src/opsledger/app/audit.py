"""The audit report: what was released, gated, accessed and violated in a period, with the
checkpoint and an inclusion proof for every transaction it cites.

``build_report`` gathers the data from any ``LedgerClient`` (in-process or HTTP);
``render_markdown`` and ``to_json`` only format it. Why it is built this way:

* **One snapshot.** The head is read once. Every query drops leaves at or past its log
  size and every proof is made against its checkpoint, so a ledger that grows while the
  report is gathered still yields a report that verifies against one signed note.
* **State as of the end of the period.** Releases, gates and access sessions are judged
  from what the ledger held before ``until`` (a deploy or a close after it does not
  count), so a report for a closed period says the same thing whenever it is made.
* **Read only what is needed.** Each section queries its own types in the period, in
  pages of 1000 with the leaf-index cursor. A few targeted look-ups (by subject, by id)
  fill in a release requested before the period and deployed in it, and the
  ``contract.deployed`` history (which is in force regardless of the period). Never a
  scan of every type.
* **Times are transaction timestamps** (``ts``), the field ``since``/``until`` filter
  on: ``since`` inclusive, ``until`` exclusive, ``None`` for an open end.

Terms. A release is *completed* when a successful ``deploy.finished`` to a production
environment of its artifact digest follows its request in the log (a release requested
before the period is reported when that first deploy falls in it). Otherwise its gate is
the result of its latest ``contract.verdict`` (``pass``, ``fail``, or ``none`` before any
verdict), or ``pending`` when the gate is running jobs to decide: a ``job.started`` after
that verdict (or after the request) names it or the request in its refs. Passed and
pending releases are *in delivery*; failing ones and those without a verdict, *planned*.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opsledger.client.base import LedgerClient
from opsledger.core import InvalidInput, NotFound

__all__ = [
    "PRODUCTION",
    "STILL_OPEN",
    "AccessSession",
    "AuditReport",
    "BundleRef",
    "Contract",
    "ContractDeployment",
    "Deploy",
    "LedgerState",
    "Period",
    "Proof",
    "Release",
    "Releases",
    "Requirement",
    "SlaViolation",
    "TxRef",
    "Verdict",
    "build_report",
    "with_bundle",
]

PAGE = 1000
PRODUCTION = ("production", "prod")
STILL_OPEN = "still open or interrupted"

View = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TxRef:
    """A cited transaction resolved to what it is; all ``None`` if the ledger lacks it."""

    tx_id: str
    type: str | None
    actor: str | None
    time: str | None


@dataclass(frozen=True, slots=True)
class Deploy:
    tx_id: str
    environment: str
    version: str
    strategy: str
    time: str
    actor: str


@dataclass(frozen=True, slots=True)
class Release:
    tx_id: str  # the release.requested transaction
    service: str
    version: str
    digest: str
    requested_at: str
    requested_by: str
    gate: str  # pass | fail | pending | none
    verdict: str | None  # the latest verdict's tx id
    deploy: Deploy | None  # the deploy that completed it


@dataclass(frozen=True, slots=True)
class Releases:
    completed: list[Release]
    in_delivery: list[Release]
    planned: list[Release]


@dataclass(frozen=True, slots=True)
class Requirement:
    name: str
    result: str
    reason: str
    evidence: list[TxRef]


@dataclass(frozen=True, slots=True)
class Verdict:
    tx_id: str
    contract: str
    version: int
    subject: str
    trigger: str
    release: str | None  # the release request it judged, when it judged one
    result: str
    time: str
    actor: str
    requirements: list[Requirement]


@dataclass(frozen=True, slots=True)
class AccessSession:
    session: str  # the access.opened tx id
    actor: str
    environment: str
    reason: str
    command: list[str]
    opened_at: str
    closed: str | None  # the access.closed tx id
    closed_at: str | None
    exit_code: int | None
    duration_ms: int | None
    status: str  # "closed" or STILL_OPEN


@dataclass(frozen=True, slots=True)
class SlaViolation:
    tx_id: str
    contract: str
    objective: str
    period: str
    measured: str
    target: str
    time: str
    actor: str


@dataclass(frozen=True, slots=True)
class ContractDeployment:
    tx_id: str
    version: int
    digest: str
    time: str
    actor: str


@dataclass(frozen=True, slots=True)
class Contract:
    """The version in force (the highest deployed) and every deployment, oldest first."""

    name: str
    version: int
    digest: str
    tx_id: str
    time: str
    actor: str
    deployments: list[ContractDeployment]


@dataclass(frozen=True, slots=True)
class Proof:
    """Inclusion of ``leaf`` (base64 canonical signed bytes) in the report's checkpoint."""

    leaf_index: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]
    leaf: str


@dataclass(frozen=True, slots=True)
class Period:
    since: str | None
    until: str | None


@dataclass(frozen=True, slots=True)
class LedgerState:
    genesis_hash: str
    origin: str
    checkpoint: str  # the signed note every proof is against
    head: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BundleRef:
    file: str
    verify_command: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    period: Period
    ledger: LedgerState
    releases: Releases
    verdicts: list[Verdict]
    access_sessions: list[AccessSession]
    sla_violations: list[SlaViolation]
    contracts: list[Contract]
    proofs: dict[str, Proof]
    bundle: BundleRef | None = None


# -- reading ------------------------------------------------------------------------


class _Reader:
    """Typed, paged reads cut at the snapshot's log size; remembers what it saw (for the
    proofs' leaf bytes) and what the report cites."""

    def __init__(self, client: LedgerClient, size: int) -> None:
        self.client = client
        self.size = size
        self.views: dict[str, View] = {}
        self.cited: dict[str, None] = {}

    def scan(
        self,
        tx_type: str,
        *,
        since: str | None = None,
        until: str | None = None,
        subject: str | None = None,
        order: str = "asc",
    ) -> Iterator[View]:
        cursor: int | None = None
        while True:
            page = self.client.list_transactions(
                {
                    "type": tx_type,
                    "subject": subject,
                    "since": since,
                    "until": until,
                    "after": cursor,
                    "limit": PAGE,
                    "order": order,
                }
            )
            for view in page:
                if view["leaf_index"] < self.size:
                    self.views[view["tx_id"]] = view
                    yield view
                elif order == "asc":
                    return  # the rest is past the snapshot too
            if len(page) < PAGE:
                return
            cursor = int(page[-1]["leaf_index"])

    def get(self, tx_id: str) -> View | None:
        if tx_id not in self.views:
            try:
                view = self.client.get_transaction(tx_id)
            except NotFound:
                return None
            if view["leaf_index"] >= self.size:
                return None
            self.views[tx_id] = view
        return self.views[tx_id]

    def cite(self, *tx_ids: str | None) -> None:
        for tx_id in tx_ids:
            if tx_id is not None and self.get(tx_id) is not None:
                self.cited[tx_id] = None


def _tx(view: View) -> dict[str, Any]:
    tx: dict[str, Any] = view["transaction"]
    return tx


def _body(view: View) -> dict[str, Any]:
    body: dict[str, Any] = _tx(view)["body"]
    return body


def _subject(view: View) -> str:
    subject = _tx(view)["subject"]
    return f"{subject['kind']}:{subject['id']}"


def _ref(r: _Reader, tx_id: str) -> TxRef:
    view = r.get(tx_id)
    if view is None:
        return TxRef(tx_id, None, None, None)
    tx = _tx(view)
    return TxRef(tx_id, tx["type"], tx["actor"], tx["ts"])


# -- gathering ----------------------------------------------------------------------


def build_report(
    client: LedgerClient,
    *,
    since: str | None = None,
    until: str | None = None,
    production: Sequence[str] = PRODUCTION,
) -> AuditReport:
    """Gather the report for ``[since, until)`` (normalised ``ts`` strings or ``None``)."""
    if since is not None and until is not None and since >= until:
        raise InvalidInput("--since must be before --until", field="since")
    head = client.head()
    size = int(head["log_size"])
    r = _Reader(client, size)
    prod = frozenset(production)
    releases, verdicts = _releases(r, since, until, prod)
    report = AuditReport(
        period=Period(since, until),
        ledger=LedgerState(
            genesis_hash=head["genesis_hash"],
            origin=head["origin"],
            checkpoint=client.checkpoint(size),
            head={k: head[k] for k in ("height", "log_size", "log_root", "block_hash", "time")},
        ),
        releases=releases,
        verdicts=verdicts,
        access_sessions=_access_sessions(r, since, until, prod),
        sla_violations=_sla_violations(r, since, until),
        contracts=_contracts(r, until),
        proofs={},
    )
    return dataclasses.replace(report, proofs=_proofs(r))


def _is_prod_success(view: View, prod: frozenset[str]) -> bool:
    body = _body(view)
    return body.get("environment") in prod and body.get("status") == "success"


def _releases(
    r: _Reader, since: str | None, until: str | None, prod: frozenset[str]
) -> tuple[Releases, list[Verdict]]:
    requests = {v["tx_id"]: v for v in r.scan("release.requested", since=since, until=until)}
    deploys: dict[str, list[View]] = {}
    for view in r.scan("deploy.finished", since=since, until=until):
        if _is_prod_success(view, prod):
            deploys.setdefault(_body(view)["digest"], []).append(view)
    earlier = _requested_before(r, requests, deploys, since, prod)
    everything = {**earlier, **requests}

    verdict_views = {v["tx_id"]: v for v in r.scan("contract.verdict", since=since, until=until)}
    for digest in {_body(v)["digest"] for v in earlier.values()}:
        for view in r.scan("contract.verdict", subject=f"artifact:{digest}", until=until):
            verdict_views.setdefault(view["tx_id"], view)
    judged = {tx_id: _judged_release(view, everything) for tx_id, view in verdict_views.items()}
    ordered = sorted(verdict_views.values(), key=lambda v: v["leaf_index"])
    latest: dict[str, View] = {}
    for view in ordered:
        release_id = judged[view["tx_id"]]
        if release_id is not None:
            latest[release_id] = view  # log order: the last one wins
    done: dict[str, View] = {}
    for tx_id, req in everything.items():
        deploy = next(
            (
                d
                for d in deploys.get(_body(req)["digest"], [])
                if d["leaf_index"] > req["leaf_index"]
            ),
            None,
        )
        if deploy is not None:
            done[tx_id] = deploy
    waiting = {
        tx_id: latest.get(tx_id)
        for tx_id in requests
        if tx_id not in done and _result(latest.get(tx_id)) != "pass"
    }
    running = _gates_running(r, requests, waiting, until)

    completed, in_delivery, planned = [], [], []
    for req in sorted(everything.values(), key=lambda v: v["leaf_index"]):
        tx_id, body = req["tx_id"], _body(req)
        verdict, deploy = latest.get(tx_id), done.get(tx_id)
        gate = "pending" if tx_id in running else _result(verdict)
        release = Release(
            tx_id=tx_id,
            service=body["service"],
            version=body["version"],
            digest=body["digest"],
            requested_at=_tx(req)["ts"],
            requested_by=_tx(req)["actor"],
            gate=gate,
            verdict=verdict["tx_id"] if verdict is not None else None,
            deploy=_deploy(deploy) if deploy is not None else None,
        )
        r.cite(tx_id, release.verdict, deploy["tx_id"] if deploy is not None else None)
        if deploy is not None:
            completed.append(release)
        elif gate in ("pass", "pending"):
            in_delivery.append(release)
        else:
            planned.append(release)

    verdicts = [
        _verdict(r, view, judged[view["tx_id"]] or _request_of(r, view))
        for view in ordered
        if _in(view, since, until) or judged[view["tx_id"]] in everything
    ]
    return Releases(completed, in_delivery, planned), verdicts


def _in(view: View, since: str | None, until: str | None) -> bool:
    ts = _tx(view)["ts"]
    return (since is None or ts >= since) and (until is None or ts < until)


def _requested_before(
    r: _Reader,
    requests: dict[str, View],
    deploys: dict[str, list[View]],
    since: str | None,
    prod: frozenset[str],
) -> dict[str, View]:
    """Releases requested before the period whose first production deploy is in it.

    For each digest deployed in the period without an in-period request before the
    deploy: the latest earlier request of that artifact, unless a successful production
    deploy of it already happened between that request and the period (it was completed
    then, and belongs to that period's report)."""
    found: dict[str, View] = {}
    if since is None:
        return found  # every request is in the period
    for digest, views in deploys.items():
        first = views[0]["leaf_index"]
        if any(_body(q)["digest"] == digest and q["leaf_index"] < first for q in requests.values()):
            continue
        request = next(
            (
                q
                for q in r.scan(
                    "release.requested", subject=f"artifact:{digest}", until=since, order="desc"
                )
                if _body(q)["digest"] == digest and q["leaf_index"] < first
            ),
            None,
        )
        if request is None:
            continue
        already = any(
            _is_prod_success(d, prod)
            and _body(d)["digest"] == digest
            and d["leaf_index"] > request["leaf_index"]
            for d in r.scan("deploy.finished", since=_tx(request)["ts"], until=since)
        )
        if not already:
            found[request["tx_id"]] = request
    return found


def _judged_release(verdict: View, requests: dict[str, View]) -> str | None:
    """The release request a verdict judged: its ``request`` (the engine records it),
    trigger or a ref when that is a known request; else the latest earlier request of
    the same artifact."""
    body = _body(verdict)
    for tx_id in (body.get("request"), body.get("trigger"), *_tx(verdict).get("refs", ())):
        if tx_id in requests:
            return str(tx_id)
    subject = _subject(verdict)
    before = [
        q
        for q in requests.values()
        if _subject(q) == subject and q["leaf_index"] < verdict["leaf_index"]
    ]
    return max(before, key=lambda q: q["leaf_index"])["tx_id"] if before else None


def _result(verdict: View | None) -> str:
    return "none" if verdict is None else str(_body(verdict)["result"])


def _request_of(r: _Reader, verdict: View) -> str | None:
    """The release request a verdict names, when the report does not list that release
    (a gate re-run in the period for a release requested before it)."""
    request = _body(verdict).get("request")
    view = r.get(request) if isinstance(request, str) else None
    if view is None or _tx(view)["type"] != "release.requested":
        return None
    r.cite(view["tx_id"])
    return str(view["tx_id"])


def _gates_running(
    r: _Reader, requests: dict[str, View], waiting: dict[str, View | None], until: str | None
) -> set[str]:
    """The requests among ``waiting`` (not deployed, gate not passed; with their latest
    verdict) whose gate is running jobs: a ``job.started`` after that verdict refs it or
    the request. Asked only when some request waits, from the earliest of them on."""
    if not waiting:
        return set()
    anchors: dict[str, tuple[str, int]] = {}  # a ref that marks a job as this gate's
    for tx_id, verdict in waiting.items():
        after = verdict["leaf_index"] if verdict is not None else requests[tx_id]["leaf_index"]
        anchors[tx_id] = (tx_id, after)
        if verdict is not None:
            anchors[verdict["tx_id"]] = (tx_id, after)
    since = min(_tx(requests[tx_id])["ts"] for tx_id in waiting)
    running: set[str] = set()
    for job in r.scan("job.started", since=since, until=until):
        for ref in _tx(job).get("refs", ()):
            if ref in anchors and job["leaf_index"] > anchors[ref][1]:
                running.add(anchors[ref][0])
    return running


def _deploy(view: View) -> Deploy:
    body, tx = _body(view), _tx(view)
    return Deploy(
        tx_id=view["tx_id"],
        environment=body["environment"],
        version=body["version"],
        strategy=body["strategy"],
        time=tx["ts"],
        actor=tx["actor"],
    )


def _verdict(r: _Reader, view: View, release: str | None) -> Verdict:
    body, tx = _body(view), _tx(view)
    requirements = []
    for req in body.get("requirements", []):
        evidence = [_ref(r, tx_id) for tx_id in req.get("evidence", [])]
        r.cite(*req.get("evidence", []))
        requirements.append(Requirement(req["name"], req["result"], req["reason"], evidence))
    r.cite(view["tx_id"], body["trigger"])
    return Verdict(
        tx_id=view["tx_id"],
        contract=body["contract"],
        version=body["version"],
        subject=_subject(view),
        trigger=body["trigger"],
        release=release,
        result=body["result"],
        time=tx["ts"],
        actor=tx["actor"],
        requirements=requirements,
    )


def _access_sessions(
    r: _Reader, since: str | None, until: str | None, prod: frozenset[str]
) -> list[AccessSession]:
    """Production sessions opened in the period, and those opened before it and closed
    in it; each paired with its first ``access.closed`` before ``until``."""
    opened = {
        v["tx_id"]: v
        for v in r.scan("access.opened", since=since, until=until)
        if _body(v)["environment"] in prod
    }
    closes: dict[str, View] = {}
    for view in r.scan("access.closed", since=since, until=until):
        closes.setdefault(_body(view)["session"], view)
    for session in closes.keys() - opened.keys():
        before = r.get(session)  # opened before the period, closed in it
        if (
            before is not None
            and _tx(before)["type"] == "access.opened"
            and _body(before)["environment"] in prod
        ):
            opened[session] = before
    sessions = []
    for view in sorted(opened.values(), key=lambda v: v["leaf_index"]):
        body, tx = _body(view), _tx(view)
        close = closes.get(view["tx_id"])
        closed_body = _body(close) if close is not None else {}
        sessions.append(
            AccessSession(
                session=view["tx_id"],
                actor=tx["actor"],
                environment=body["environment"],
                reason=body["reason"],
                command=list(body["command"]),
                opened_at=tx["ts"],
                closed=close["tx_id"] if close is not None else None,
                closed_at=_tx(close)["ts"] if close is not None else None,
                exit_code=closed_body.get("exit_code"),
                duration_ms=closed_body.get("duration_ms"),
                status="closed" if close is not None else STILL_OPEN,
            )
        )
        r.cite(view["tx_id"], close["tx_id"] if close is not None else None)
    return sessions


def _sla_violations(r: _Reader, since: str | None, until: str | None) -> list[SlaViolation]:
    found = []
    for view in r.scan("sla.violation", since=since, until=until):
        body, tx = _body(view), _tx(view)
        found.append(
            SlaViolation(
                tx_id=view["tx_id"],
                contract=body["contract"],
                objective=body["objective"],
                period=body["period"],
                measured=body["measured"],
                target=body["target"],
                time=tx["ts"],
                actor=tx["actor"],
            )
        )
        r.cite(view["tx_id"])
    return found


def _contracts(r: _Reader, until: str | None) -> list[Contract]:
    """Every deployment before ``until`` (a contract stays in force from its deployment
    on, whenever that was); the highest version of each name is the one in force."""
    by_name: dict[str, list[ContractDeployment]] = {}
    for view in r.scan("contract.deployed", until=until):
        body, tx = _body(view), _tx(view)
        by_name.setdefault(body["name"], []).append(
            ContractDeployment(
                view["tx_id"], body["version"], body["digest"], tx["ts"], tx["actor"]
            )
        )
        r.cite(view["tx_id"])
    contracts = []
    for name in sorted(by_name):
        deployments = by_name[name]  # log order, so the last of equal versions wins
        current = max(reversed(deployments), key=lambda d: d.version)
        contracts.append(
            Contract(
                name=name,
                version=current.version,
                digest=current.digest,
                tx_id=current.tx_id,
                time=current.time,
                actor=current.actor,
                deployments=deployments,
            )
        )
    return contracts


def _proofs(r: _Reader) -> dict[str, Proof]:
    proofs = []
    for tx_id in r.cited:
        proof = r.client.inclusion_proof(tx_id, r.size)
        view = r.views[tx_id]
        proofs.append(
            (
                tx_id,
                Proof(
                    leaf_index=int(proof["leaf_index"]),
                    tree_size=int(proof["tree_size"]),
                    leaf_hash=proof["leaf_hash"],
                    hashes=list(proof["hashes"]),
                    leaf=view["leaf"],
                ),
            )
        )
    return dict(sorted(proofs, key=lambda item: item[1].leaf_index))


def with_bundle(report: AuditReport, file: str) -> AuditReport:
    """The report naming the bundle written beside it and the command that checks it."""
    command = shlex.join(
        ["opsledger", "verify", "--bundle", file, "--genesis", report.ledger.genesis_hash]
    )
    return dataclasses.replace(report, bundle=BundleRef(file, command))
