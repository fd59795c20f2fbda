"""The composition root: build every unit of the cloud from its settings, wired by constructor arguments.

    Store ─┬─ Access                      users, bearer tokens, P(role, action)
           ├─ Participants                enrollment (pinned binding), signatures, caps, alerts
           ├─ Approvals                   two-person rules
           ├─ Registry                    model versions, signed releases
           ├─ KeyCustody                  public context, unsealing
           ├─ EvaluationSources           posted / federated / validation scores
           ├─ DriftMonitor                telemetry drift
           ├─ Aggregation                 worker: sum, decrypt, register (off the request path)
           ├─ Rounds, Submissions         the round state machine up to aggregation
           ├─ Regions                     region relays: enrollment, signed aggregates, audits of their inputs
           ├─ SecureAggregation           masking sub-phases of collecting; unmasking after decryption
           ├─ SecAggMessages              participants' signed secure-aggregation messages and views
           ├─ Gatekeeper, Promotion       gates, approval, promotion, rollback
           ├─ Ledgers, LogProofs          audit and privacy ledgers, alerts; checkpoints and proofs
           ├─ Intrusion                   detection rules, locks, quarantine, intrusion alerts (signals from
           │                              Guard, Access, Participants, Submissions); lifting a lock: Approvals
           ├─ IntrusionReports            containments nodes carried out (a device's broker login revoked)
           ├─ Witnesses                   nodes' acknowledged checkpoint checks; alerts on updates without them
           └─ ReleaseArtifacts            signed TFLite releases (hooked on promotion)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cloud import custody
from cloud.access import Access
from cloud.aggregation import Aggregation
from cloud.approvals import Approvals
from cloud.audit import AuditLog, LogKeySource
from cloud.consent import ConsentLedger
from cloud.custodian import Custodian
from cloud.drift import DEFAULT_MIN_READINGS, DEFAULT_MIN_REFERENCE_HOURS, DEFAULT_THRESHOLD, DriftConfig
from cloud.drift_monitor import DriftMonitor
from cloud.engine import make_engine, make_sessionmaker
from cloud.evaluations import EvaluationSources, ValidationSet
from cloud.explainer import Explainer
from cloud.gatekeeper import Gatekeeper
from cloud.gates import load_gates
from cloud.intrusion import Intrusion
from cloud.intrusion_config import IntrusionConfig
from cloud.intrusion_reports import IntrusionReports
from cloud.keys import KeyCustody
from cloud.ledgers import Ledgers
from cloud.log_proofs import LogProofs
from cloud.participants import Participants
from cloud.promotion import Promotion
from cloud.region_audits import DEFAULT_AUDIT_RATE
from cloud.regions import Regions
from cloud.registry import Registry
from cloud.releases import ReleaseArtifacts
from cloud.rounds import Rounds
from cloud.secagg import SecureAggregation
from cloud.secagg_messages import SecAggMessages
from cloud.store import Store
from cloud.submissions import Submissions
from cloud.throttle import Limits
from cloud.witnesses import Witnesses
from federation.enrollment import make_binding
from federation.limits import DEFAULT_MIN_CONTRIBUTORS
from federation.signing import load_or_create_key, public_key_b64


@dataclass(frozen=True)
class CloudSettings:
    db_url: str
    state_dir: Path
    admin_token: str | None = None  # bootstraps the user "admin" on first start (WEARFED_ADMIN_TOKEN)
    compliance_token: str | None = None  # bootstraps the user "compliance" on first start (WEARFED_COMPLIANCE_TOKEN)
    min_contributors: int = DEFAULT_MIN_CONTRIBUTORS  # distinct contributors every round needs (floor 3)
    dev_insecure_custodian: bool = False
    model_seed: int = 0
    tick_seconds: float = 0.5
    epsilon_cap: float | None = None
    rmse_tolerance: float | None = None  # overrides the gates file's [accuracy] rmse30_max_regression
    gates_file: Path | None = None  # promotion gates TOML (cloud/gates.py); None: cloud/gates.default.toml
    validation_file: Path | None = None  # synthetic validation set (.npz, federation/evaluation.py)
    drift_threshold: float = DEFAULT_THRESHOLD  # KL nats (cloud/drift.py)
    drift_min_readings: int = DEFAULT_MIN_READINGS
    drift_min_reference_hours: float = DEFAULT_MIN_REFERENCE_HOURS
    warm_exporter: bool = False  # import litert-torch in the export child at start-up (`cloud serve` does)
    log_key: LogKeySource | None = None  # the audit log's signing key; None: state_dir/audit-log-key.pem
    limits: Limits = Limits()  # rate limits, lockout, failure summaries (cloud/ratelimit.py, cloud/throttle.py)
    intrusion: IntrusionConfig = IntrusionConfig()  # detection thresholds and DP report policy (cloud/intrusion.py)
    region_audit_rate: float = DEFAULT_AUDIT_RATE  # share of region aggregates whose inputs are audited (cloud.regions)


@dataclass(frozen=True)
class Cloud:
    store: Store
    access: Access
    participants: Participants
    approvals: Approvals
    registry: Registry
    keys: KeyCustody
    evaluations: EvaluationSources
    drift: DriftMonitor
    consent: ConsentLedger
    aggregation: Aggregation
    rounds: Rounds
    secagg: SecureAggregation
    secagg_messages: SecAggMessages
    submissions: Submissions
    regions: Regions
    gatekeeper: Gatekeeper
    promotion: Promotion
    ledgers: Ledgers
    releases: ReleaseArtifacts
    log: LogProofs
    intrusion: Intrusion
    intrusion_reports: IntrusionReports
    witnesses: Witnesses
    explainer: Explainer | None = None  # attributions of each version on the validation cohort (cloud.explainer)

    def tick(self) -> None:
        """Close rounds past their deadline, and queue any round a crash left in aggregation or decryption."""
        self.rounds.tick()
        self.secagg.tick()
        for rid in self.rounds.unclosed():  # all answered before a crash: close now
            self.rounds.maybe_close(rid)
        self.aggregation.resume()

    def close(self) -> None:
        self.aggregation.stop()
        if self.explainer is not None:
            self.explainer.stop()
        self.releases.close()
        self.intrusion.close()


def _custody(settings: CloudSettings) -> tuple[Custodian | None, custody.Sealed | None, bytes]:
    if settings.dev_insecure_custodian:
        custodian = Custodian.dev_unsealed(settings.state_dir)
        return custodian, None, custodian.public_context_bytes
    sealed, public = custody.load_sealed(settings.state_dir), custody.load_public(settings.state_dir)
    if custody.key_id_of(public) != sealed.key_id:  # a swapped public context would let its owner read every update
        raise custody.CustodyError(f"the public context under {custody.custody_dir(settings.state_dir)} has key id "
                                   f"{custody.key_id_of(public)}, the sealed secret is for {sealed.key_id}: "
                                   "refusing to serve a context the custodians cannot decrypt")
    return None, sealed, public


def assemble(settings: CloudSettings) -> Cloud:
    gates = load_gates(settings.gates_file)
    if settings.rmse_tolerance is not None:
        gates = dataclasses.replace(gates, rmse30_max_regression=settings.rmse_tolerance)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    custodian, sealed, public = _custody(settings)
    store = Store(make_sessionmaker(make_engine(settings.db_url)), AuditLog.from_source(settings.state_dir,
                                                                                         settings.log_key))
    registry = Registry(store, release_key=load_or_create_key(settings.state_dir / "release-key.pem"))
    keys = KeyCustody(store, public_context_bytes=public, custodian=custodian, sealed=sealed)
    binding = make_binding(public_context=public, ctx=keys.public_context, audit_log_key=store.audit.public_key_b64,
                           release_key=public_key_b64(registry.release_key))
    participants = Participants(store, binding=binding, epsilon_cap=settings.epsilon_cap)
    intrusion = Intrusion(store, settings.intrusion)
    participants.intrusion = intrusion
    access = Access(store)
    access.intrusion = intrusion
    validation = ValidationSet.load(settings.validation_file) if settings.validation_file else None
    evaluations = EvaluationSources(store, participants, validation=validation)
    drift = DriftMonitor(store, participants, DriftConfig(threshold=settings.drift_threshold,
                                                          min_readings=settings.drift_min_readings,
                                                          min_reference_hours=settings.drift_min_reference_hours))
    log = LogProofs(store)
    aggregation = Aggregation(store, registry, keys, evaluations, drift, log=log)
    explainer = Explainer(store, validation)
    aggregation.explain = explainer.schedule
    keys.on_unseal.append(aggregation.resume)
    secagg = SecureAggregation(store, participants, schedule_aggregation=aggregation.schedule)
    aggregation.unmask = secagg.unmask
    rounds = Rounds(store, secagg=secagg, progress=aggregation.progress, min_contributors=settings.min_contributors)
    gatekeeper = Gatekeeper(store, evaluations, gates, explainer=explainer)
    promotion = Promotion(store, registry, evaluations, gatekeeper)
    releases = ReleaseArtifacts(store, registry, settings.state_dir / "releases", warm=settings.warm_exporter)
    promotion.release_hooks.append(releases.on_change)
    promotion.release_hooks.append(drift.on_release)  # reports that waited for a reference are scored
    approvals = Approvals(store, participants)
    approvals.intrusion = intrusion
    submissions = Submissions(store, participants, rounds, keys, secagg, intrusion)
    regions = Regions(store, participants, rounds, keys, submissions, audit_rate=settings.region_audit_rate)
    approvals.regions = regions
    cloud = Cloud(store=store, access=access, participants=participants,
                  approvals=approvals, registry=registry, keys=keys,
                  evaluations=evaluations, drift=drift, consent=ConsentLedger(store, participants),
                  aggregation=aggregation, rounds=rounds, secagg=secagg,
                  secagg_messages=SecAggMessages(store, participants, secagg),
                  submissions=submissions,
                  regions=regions,
                  gatekeeper=gatekeeper, promotion=promotion, ledgers=Ledgers(store, participants, log=log),
                  releases=releases, log=log, explainer=explainer, intrusion=intrusion,
                  intrusion_reports=IntrusionReports(store, participants),
                  witnesses=Witnesses(store, participants, settings.intrusion))
    registry.ensure_initial_model(settings.model_seed)
    evaluations.validate_all()  # the cloud's own validation scores for any version that lacks them
    secagg.resume_after_restart()  # phases that timed out while this process was down get one more window
    explainer.schedule_missing()  # and its explanations (in the explainer's thread)
    cloud.access.bootstrap("admin", "admin", settings.admin_token)
    cloud.access.bootstrap("compliance", "compliance_officer", settings.compliance_token)
    return cloud
