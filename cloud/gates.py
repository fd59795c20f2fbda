"""Promotion gates: a per-project TOML file, its validation, and the pure check of one candidate against it.

A candidate model version is checked, at approval and again at promotion, against every gate below; each
result names its gate, so an API error and the audit entry say which one failed. Metric gates apply to every
metric source that reported (``posted`` by a data scientist, ``federated`` pooled from hospitals' local
held-out patients, ``validation`` computed by the cloud on its synthetic set): a candidate must pass on each.

    [accuracy]
    rmse30_max_mgdl = 35.0            # absolute ceiling on RMSE@30 (mg/dL)
    rmse30_max_regression = 0.05      # at most 5 % worse than the promoted model on the same source
    clarke_ab30_min_percent = 95.0    # Clarke zones A+B at +30 min, percent of windows
    hypo_sens30_min = 0.2             # hypoglycaemia (< 70 mg/dL) detection sensitivity at +30 min
    require = ["rmse30"]              # metrics some source must have reported; the others gate when present

    [sources]
    require = ["posted"]              # sources that must have reported before approval

    [privacy]
    lineage_epsilon_max = 30.0        # sum over the version's lineage rounds of the largest round epsilon
    participant_cap = true            # no contributor of this round above its cumulative epsilon cap

    [fairness]                        # per age group (children, adolescents, adults): `cloud.fairness`
    worst_group_rmse30_max_mgdl = 40.0
    group_rmse30_gap_max_mgdl = 15.0
    worst_group_hypo_sens30_min = 0.1
    group_hypo_sens30_gap_max = 0.8
    min_group_hypo_events = 10
    require = ["validation"]

Any key may be omitted (its default applies, see `GateConfig`); set a threshold to ``false`` to switch that
gate off. Unknown sections or keys are errors, so a typo never silently disables a gate.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cloud import fairness
from cloud.fairness import FairnessConfig
from federation.errors import ConfigError
from federation.evaluation import SOURCES

DEFAULT_GATES_FILE = Path(__file__).with_name("gates.default.toml")
METRICS = ("rmse30", "clarke_ab30", "hypo_sens30")
_FIELDS = {
    "accuracy": {"rmse30_max_mgdl", "rmse30_max_regression", "clarke_ab30_min_percent", "hypo_sens30_min",
                 "require"},
    "sources": {"require"},
    "privacy": {"lineage_epsilon_max", "participant_cap"},
    "fairness": {*fairness.KEYS, "require", "sources"},
}
# the defaults of gates.default.toml's [fairness] (docs/governance.md, "Fairness gates")
DEFAULT_FAIRNESS = FairnessConfig(worst_group_rmse30_max_mgdl=40.0, group_rmse30_gap_max_mgdl=15.0,
                                  worst_group_hypo_sens30_min=0.1, group_hypo_sens30_gap_max=0.8,
                                  min_group_hypo_events=10.0, require=("validation",),
                                  sources=("validation",))


@dataclass(frozen=True)
class GateConfig:
    rmse30_max_mgdl: float | None = 35.0
    rmse30_max_regression: float | None = 0.05
    clarke_ab30_min_percent: float | None = 95.0
    hypo_sens30_min: float | None = 0.2
    require_metrics: tuple[str, ...] = ("rmse30",)
    require_sources: tuple[str, ...] = ("posted",)
    lineage_epsilon_max: float | None = 30.0
    participant_cap: bool = True
    fairness: FairnessConfig = DEFAULT_FAIRNESS

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    gate: str  # e.g. "rmse30_max"
    passed: bool
    detail: str
    source: str | None = None  # the metric source it was checked on (None: not a metric gate)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def message(self) -> str:
        kind = ("privacy" if self.gate in ("lineage_epsilon_max", "participant_epsilon_cap") else
                "fairness" if self.gate in fairness.GATES else "accuracy")
        where = f" ({self.source})" if self.source else ""
        return f"{kind} gate {self.gate}{where}: {self.detail}"


@dataclass(frozen=True)
class Candidate:
    """What the gates look at: metrics per source for the candidate and the promoted model, privacy spend."""

    version: int
    metrics: dict[str, dict[str, float]]  # source -> metrics
    promoted_version: int | None = None
    promoted_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    lineage_epsilon: float = 0.0
    lineage_rounds: tuple[int, ...] = ()
    lineage_units: tuple[str, ...] = ("patient",)  # the privacy units the lineage's updates declared
    over_cap: tuple[str, ...] = ()  # "<participant>: epsilon x > cap y (...)" lines


def _number(section: str, key: str, value: object, *, lo: float, hi: float) -> float | None:
    if value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"gates: [{section}] {key} must be a number (or false to disable), got {value!r}")
    if not lo <= float(value) <= hi:
        raise ConfigError(f"gates: [{section}] {key} = {value} is outside [{lo}, {hi}]")
    return float(value)


def _names(section: str, value: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    return fairness.name_list(value, allowed, what=f"gates: [{section}] require")


def parse_gates(doc: dict, *, where: str = "gates") -> GateConfig:
    """A GateConfig from a parsed TOML document; ConfigError naming the bad section and key."""
    unknown = set(doc) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    kw: dict = {}
    for section, keys in _FIELDS.items():
        body = doc.get(section, {})
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        extra = set(body) - keys
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)} in [{section}]; known: {sorted(keys)}")
    acc, src, priv = doc.get("accuracy", {}), doc.get("sources", {}), doc.get("privacy", {})
    limits = {"rmse30_max_mgdl": (0.0, 1000.0), "rmse30_max_regression": (0.0, 10.0),
              "clarke_ab30_min_percent": (0.0, 100.0), "hypo_sens30_min": (0.0, 1.0)}
    for key, (lo, hi) in limits.items():
        if key in acc:
            kw[key] = _number("accuracy", key, acc[key], lo=lo, hi=hi)
    if "require" in acc:
        kw["require_metrics"] = _names("accuracy", acc["require"], METRICS)
    if "require" in src:
        kw["require_sources"] = _names("sources", src["require"], SOURCES)
    if "lineage_epsilon_max" in priv:
        kw["lineage_epsilon_max"] = _number("privacy", "lineage_epsilon_max", priv["lineage_epsilon_max"],
                                            lo=0.0, hi=1e6)
    if "participant_cap" in priv:
        if not isinstance(priv["participant_cap"], bool):
            raise ConfigError(f"{where}: [privacy] participant_cap must be true or false")
        kw["participant_cap"] = priv["participant_cap"]
    if "fairness" in doc:
        given = fairness.parse(doc["fairness"], where=where)
        # omitted keys keep the shipped defaults, as in the other sections
        kw["fairness"] = FairnessConfig(**{k: getattr(given if k in doc["fairness"] else DEFAULT_FAIRNESS, k)
                                           for k in FairnessConfig.__dataclass_fields__})
    return GateConfig(**kw)


def load_gates(path: Path | None) -> GateConfig:
    """Gates from a TOML file (None: the shipped default file); ConfigError naming the file and the field."""
    path = DEFAULT_GATES_FILE if path is None else Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"gates file {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"gates file {path}: not valid TOML: {exc}") from exc
    return parse_gates(doc, where=f"gates file {path}")


def check(cfg: GateConfig, c: Candidate) -> list[GateResult]:
    """Every gate's result for the candidate (passing ones too, for the model card)."""
    out: list[GateResult] = []
    for source in cfg.require_sources:
        ok = bool(c.metrics.get(source))
        out.append(GateResult("required_sources", ok, f"{source} metrics {'present' if ok else 'missing'}",
                              source))
    for metric in cfg.require_metrics:
        have = [s for s, m in c.metrics.items() if metric in m]
        out.append(GateResult(f"{metric}_present", bool(have),
                              f"{metric} reported by {have}" if have else f"no source reported {metric}"))
    for source, m in sorted(c.metrics.items()):
        out.extend(_metric_gates(cfg, c, source, m))
        out.extend(GateResult(gate, ok, detail, source) for gate, ok, detail in fairness.check(cfg.fairness, source, m))
    if cfg.lineage_epsilon_max is not None:
        ok = c.lineage_epsilon <= cfg.lineage_epsilon_max
        unit = " or per ".join(c.lineage_units)
        out.append(GateResult("lineage_epsilon_max", ok,
                              f"lineage epsilon {c.lineage_epsilon:.4f} (sum over rounds {list(c.lineage_rounds)} of "
                              f"the largest per-round epsilon, per {unit}) {'<=' if ok else '>'} "
                              f"{cfg.lineage_epsilon_max}"))
    if cfg.participant_cap:
        out.append(GateResult("participant_epsilon_cap", not c.over_cap,
                              "; ".join(c.over_cap) if c.over_cap else "every contributor within its cap"))
    return out


def _metric_gates(cfg: GateConfig, c: Candidate, source: str, m: dict[str, float]) -> list[GateResult]:
    out = []
    rmse = m.get("rmse30")
    if rmse is not None and cfg.rmse30_max_mgdl is not None:
        ok = rmse <= cfg.rmse30_max_mgdl
        out.append(GateResult("rmse30_max", ok, f"rmse30 {rmse:.3f} {'<=' if ok else '>'} {cfg.rmse30_max_mgdl} "
                                                f"mg/dL", source))
    old = c.promoted_metrics.get(source, {}).get("rmse30")
    if rmse is not None and old is not None and cfg.rmse30_max_regression is not None:
        limit = old * (1 + cfg.rmse30_max_regression)
        ok = rmse <= limit
        out.append(GateResult("rmse30_regression", ok,
                              f"rmse30 {rmse:.3f} {'within' if ok else 'regresses beyond'} {limit:.3f} (promoted "
                              f"v{c.promoted_version} {old:.3f} + {cfg.rmse30_max_regression:.0%})", source))
    ab = m.get("clarke_ab30")
    if ab is not None and cfg.clarke_ab30_min_percent is not None:
        ok = 100 * ab >= cfg.clarke_ab30_min_percent
        out.append(GateResult("clarke_ab30_min", ok, f"Clarke A+B {100 * ab:.2f} % {'>=' if ok else '<'} "
                                                     f"{cfg.clarke_ab30_min_percent} %", source))
    sens = m.get("hypo_sens30")
    if sens is not None and cfg.hypo_sens30_min is not None:
        ok = sens >= cfg.hypo_sens30_min
        out.append(GateResult("hypo_sens30_min", ok, f"hypo sensitivity {sens:.3f} {'>=' if ok else '<'} "
                                                     f"{cfg.hypo_sens30_min}", source))
    return out


def failures(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.passed]
