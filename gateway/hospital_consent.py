"""A hospital node's side of consent: patients who withdrew are excluded from everything the node derives from its
clinical data, and the withdrawal is reported to the cloud's audit ledger (counts only).

The clinical CSV is the hospital's own record (its retention is the hospital's EHR policy, not wearfed's); what the
node derives from it (training and held-out windows, in memory) is rebuilt without the patient as soon as
`wearfed hospital withdraw` has written the tombstone. The node keeps only pseudonyms (`federation.consent.pseudonym`,
keyed by ``<state-dir>/consent.secret``) in ``withdrawn-patients.json`` and the reports it owes the cloud in
``consent-reports.json`` until acknowledged; neither names the patient.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from federation.consent import IRREVERSIBLE, pseudonym
from federation.errors import ConfigError, SchemaError
from federation.runtime import atomic_write_bytes, atomic_write_json
from federation.series import PatientSeries
from federation.windows import windows_from_series

WITHDRAWN = "withdrawn-patients.json"
REPORTS = "consent-reports.json"
SECRET = "consent.secret"


def read_ids(path: Path) -> list[str]:
    """Patient ids, one per line ('#' comments); SchemaError naming the line of a bad one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    ids = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > 128 or "," in line:
            raise SchemaError(f"{path}:{n}: {line[:40]!r} is not a patient id")
        ids.append(line)
    return ids


class HospitalConsent:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.dir = state_dir
        secret = state_dir / SECRET
        if not secret.exists():
            atomic_write_bytes(secret, secrets.token_bytes(32), mode=0o600)
        self.secret = secret.read_bytes()
        if len(self.secret) != 32:
            raise ConfigError(f"{secret} must hold 32 bytes, found {len(self.secret)}")

    def withdrawn(self) -> set[str]:
        path = self.dir / WITHDRAWN
        return set(json.loads(path.read_text())["pseudonyms"]) if path.exists() else set()

    def mtime(self) -> int:
        path = self.dir / WITHDRAWN
        return path.stat().st_mtime_ns if path.exists() else 0

    def keep(self, series: dict[str, PatientSeries]) -> dict[str, PatientSeries]:
        gone = self.withdrawn()
        return {p: s for p, s in series.items() if pseudonym(self.secret, p) not in gone}

    def withdraw(self, patients: list[str], series: dict[str, PatientSeries], *, now: float | None = None) -> dict:
        """Tombstone each patient and queue a report with what is no longer derived (counts); returns a summary."""
        now = time.time() if now is None else now
        gone = self.withdrawn()
        reports = self._reports()
        done, already, unknown = 0, 0, 0
        for p in patients:
            name = pseudonym(self.secret, p)
            if name in gone:
                already += 1
                continue
            if p not in series:
                unknown += 1  # still tombstoned: a later data file with this patient excludes them too
            s = series.get(p)
            n_rows = 0 if s is None else len(s.times) + len(s.insulin_times) + len(s.carb_times)
            n_windows = 0 if s is None else len(windows_from_series({p: s}, resampled=True))
            gone.add(name)
            rid = secrets.token_hex(16)
            reports.append({"sent": False, "body": {
                "report_id": rid, "kind": "withdrawal", "at": now, "subject": name, "subject_kind": "patient",
                "deleted": {"rows": n_rows, "windows": n_windows}, "irreversible": IRREVERSIBLE}})
            done += 1
        atomic_write_json(self.dir / WITHDRAWN, {"pseudonyms": sorted(gone)})
        atomic_write_json(self.dir / REPORTS, reports)
        return {"withdrawn": done, "already": already, "not_in_data": unknown}

    def _reports(self) -> list[dict]:
        path = self.dir / REPORTS
        return json.loads(path.read_text()) if path.exists() else []

    # the interface gateway.consent.send_reports expects of a store
    def pending_reports(self) -> list[dict]:
        return [r["body"] for r in self._reports() if not r["sent"]]

    def report_sent(self, report_id: str) -> None:
        reports = self._reports()
        for r in reports:
            if r["body"]["report_id"] == report_id:
                r["sent"] = True
        atomic_write_json(self.dir / REPORTS, reports)
