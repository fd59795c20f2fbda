"""Writes the `wearfed import` fixtures beside this file: invented people, invented values, no one's data.

One day each of a Nightscout site (entries + treatments), a Dexcom Clarity export in mmol/L, a LibreView export
(day-first dates) and a plain CSV of two patients, shaped after the formats' documentation (see the importers'
module docstrings) with the rows real exports carry besides readings: calibrations, alerts, status codes, notes,
scans, duplicate uploads, a sensor gap. Glucose is a smooth invented curve (meals as bumps), not a model of anyone.
Run: python tests/data/cgm_exports/import/make_fixtures.py  (deterministic: the committed files are its output)
"""

from __future__ import annotations

import csv
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
DAY = datetime(2024, 5, 6, tzinfo=UTC)
MEALS = ((7.5, 45), (12.5, 60), (19.0, 70))  # (hour, grams)


def glucose(hours: float, phase: float = 0.0) -> float:
    """mg/dL: 115 baseline, a slow daily wave, a bump after each meal (peak ~1 h after)."""
    g = 115 + 15 * math.sin(2 * math.pi * (hours + phase) / 24)
    for h, grams in MEALS:
        dt = hours - h
        if dt > 0:
            g += grams * 1.3 * (dt / 1.0) * math.exp(1 - dt / 1.0)
    return round(g + 4 * math.sin(hours * 7.3 + phase), 0)


def nightscout() -> None:
    entries, k = [], 0
    for i in range(288):
        t = DAY + timedelta(minutes=5 * i)
        if 14 * 12 <= i < 15 * 12:  # an hour without readings (the phone out of range)
            continue
        h = i / 12
        k += 1
        entries.append({"_id": f"66380{k:019d}", "device": "xDrip-DexcomG6", "date": int(t.timestamp() * 1000),
                        "dateString": t.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "sgv": glucose(h), "direction": "Flat",
                        "type": "sgv", "noise": 1, "utcOffset": 0})
    entries.append(dict(entries[100]))  # the uploader sent one reading twice
    t = DAY + timedelta(hours=6, minutes=2)
    entries += [{"device": "xDrip-DexcomG6", "date": int(t.timestamp() * 1000), "mbg": 112, "type": "mbg"},
                {"device": "xDrip-DexcomG6", "date": int(t.timestamp() * 1000), "slope": 1000, "intercept": 0,
                 "scale": 1, "type": "cal"},
                {"device": "xDrip-DexcomG6", "date": int((t + timedelta(minutes=1)).timestamp() * 1000), "sgv": 5,
                 "type": "sgv"}]  # sgv 5: Dexcom status code SENSOR_NOT_CALIBRATED, not a reading
    entries.sort(key=lambda e: -e["date"])  # the API answers newest first
    (HERE / "ann-entries.json").write_text(json.dumps(entries, indent=1) + "\n")

    def at(hours: float) -> str:
        return (DAY + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    treatments = [
        {"eventType": "Meal Bolus", "created_at": at(7.5), "insulin": 4.5, "carbs": 45, "enteredBy": "loop"},
        {"eventType": "Meal Bolus", "created_at": at(12.5), "insulin": 6, "carbs": 60, "enteredBy": "loop"},
        {"eventType": "Meal Bolus", "created_at": at(12.5), "insulin": 6, "carbs": 60, "enteredBy": "loop"},  # twice
        {"eventType": "Meal Bolus", "created_at": at(19.0), "insulin": 7, "carbs": 70, "enteredBy": "loop"},
        {"eventType": "Correction Bolus", "created_at": at(21.25), "insulin": 1.2, "enteredBy": "loop"},
        {"eventType": "Carb Correction", "created_at": at(16.0), "carbs": 15, "enteredBy": "loop"},
        {"eventType": "Temp Basal", "created_at": at(2.0), "absolute": 0.8, "rate": 0.8, "duration": 30},
        {"eventType": "Temp Basal", "created_at": at(2.25), "absolute": 1.2, "rate": 1.2, "duration": 60},  # ends it
        {"eventType": "Temp Basal", "created_at": at(4.0), "absolute": 0, "rate": 0, "duration": 30},  # suspend
        {"eventType": "Temp Basal", "created_at": at(9.0), "percent": -50, "duration": 30},  # needs the profile
        {"eventType": "Note", "created_at": at(10.0), "notes": "walk"},
        {"eventType": "Site Change", "created_at": at(18.0)},
    ]
    (HERE / "ann-treatments.json").write_text(json.dumps(treatments, indent=1) + "\n")


CLARITY_HEADER = ["Index", "Timestamp (YYYY-MM-DDThh:mm:ss)", "Event Type", "Event Subtype", "Patient Info",
                  "Device Info", "Source Device ID", "Glucose Value (mmol/L)", "Insulin Value (u)",
                  "Carb Value (grams)", "Duration (hh:mm:ss)", "Glucose Rate of Change (mmol/L/min)",
                  "Transmitter Time (Long Integer)", "Transmitter ID"]


def clarity() -> None:
    """Local time (Europe/Berlin, CEST in May: UTC+2), mmol/L to one decimal, Low/High as text."""
    rows = [["", "FirstName", "", "Test"], ["", "LastName", "", "Person"],
            ["", "Device", "", "", "Dexcom G7 Mobile App", "Android G7"],
            ["", "Alert", "High", "", "", "Android G7", "13.3"], ["", "Alert", "Low", "", "", "Android G7", "3.9"]]
    local0 = datetime(2024, 5, 6, 0, 2, 30)
    events = []
    for i in range(288):
        if 20 * 12 <= i < 20 * 12 + 9:  # 45 min of signal loss
            continue
        t = local0 + timedelta(minutes=5 * i)
        mgdl = glucose(i / 12, phase=1.5)
        value = "Low" if i == 40 else "High" if i == 160 else f"{mgdl / 18.0182:.1f}"
        events.append([t, "EGV", "", value, "", "", str(86400 + 300 * i), "8QTEST"])
    events.append(list(events[50]))  # a repeated row
    for h, grams in MEALS:
        t = local0 + timedelta(hours=h, minutes=-2)
        events.append([t, "Insulin", "Fast-Acting", "", str(round(grams / 10, 1)), "", "", ""])
        events.append([t + timedelta(minutes=1), "Carbs", "", "", "", str(grams), "", ""])
    events.append([local0 + timedelta(hours=22), "Insulin", "Long-Acting", "", "14", "", "", ""])
    events.append([local0 + timedelta(hours=6, minutes=11), "Calibration", "", "6.2", "", "", "", "8QTEST"])
    events.append([local0 + timedelta(hours=17), "Exercise", "Medium", "", "", "", "", ""])
    events.append([local0 + timedelta(hours=3, minutes=21), "Alert", "Urgent Low Soon", "", "", "", "", ""])
    events.sort(key=lambda e: e[0])
    with open(HERE / "bob-clarity.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CLARITY_HEADER)
        index = 1
        for r in rows:
            w.writerow([index] + r + [""] * (len(CLARITY_HEADER) - 1 - len(r)))
            index += 1
        for t, kind, sub, g, ins, carbs, tx_time, tx in events:
            w.writerow([index, t.strftime("%Y-%m-%dT%H:%M:%S"), kind, sub, "", "", "Android G7", g, ins, carbs, "",
                        "", tx_time, tx])
            index += 1


LIBRE_HEADER = ["Device", "Serial Number", "Device Timestamp", "Record Type", "Historic Glucose mg/dL",
                "Scan Glucose mg/dL", "Non-numeric Rapid-Acting Insulin", "Rapid-Acting Insulin (units)",
                "Non-numeric Food", "Carbohydrates (grams)", "Carbohydrates (servings)",
                "Non-numeric Long-Acting Insulin", "Long-Acting Insulin Value (units)", "Notes",
                "Strip Glucose mg/dL", "Ketone mmol/L", "Meal Insulin (units)", "Correction Insulin (units)",
                "User Change Insulin (units)"]


def libreview() -> None:
    """Day-first local times, historic readings every 15 min, scans, insulin (type 4), food (5), notes (6)."""
    dev, serial = "FreeStyle LibreLink", "00000000-0000-4000-8000-0000000CARA0"
    local0 = datetime(2024, 5, 13, 0, 7)
    rows = []

    def row(t: datetime, record: int, **cells: str) -> None:
        r = dict.fromkeys(LIBRE_HEADER, "") | {"Device": dev, "Serial Number": serial, "Record Type": str(record),
                                               "Device Timestamp": t.strftime("%d-%m-%Y %H:%M")} | cells
        rows.append((t, record, [r[c] for c in LIBRE_HEADER]))

    for i in range(96):
        t = local0 + timedelta(minutes=15 * i)
        row(t, 0, **{"Historic Glucose mg/dL": str(int(glucose(i / 4, phase=3.0)))})
    for h in (8.1, 13.3, 21.7):
        row(local0 + timedelta(hours=h), 1, **{"Scan Glucose mg/dL": str(int(glucose(h, phase=3.0)))})
    for h, grams in MEALS:
        t = local0 + timedelta(hours=h, minutes=-5)
        row(t, 4, **{"Rapid-Acting Insulin (units)": str(grams // 10), "Meal Insulin (units)": str(grams // 10)})
        row(t + timedelta(minutes=2), 5, **{"Carbohydrates (grams)": str(grams)})
    row(local0 + timedelta(hours=22, minutes=30), 4, **{"Long-Acting Insulin Value (units)": "16"})
    row(local0 + timedelta(hours=15), 5, **{"Non-numeric Food": "Snack"})  # food without grams
    row(local0 + timedelta(hours=10), 6, Notes="ran for the bus")
    rows.sort(key=lambda r: (r[0], r[1]))
    with open(HERE / "cara-libreview.csv", "w", newline="") as fh:
        fh.write("Glucose Data,Generated on,14-05-2024 09:00 UTC,Generated by,Test Person\n")
        w = csv.writer(fh)
        w.writerow(LIBRE_HEADER)
        w.writerows(r for _, _, r in rows)


def plain() -> None:
    """Two patients, unix seconds, mg/dL, insulin and carbs columns; one impossible value (700), one repeat."""
    t0 = int(datetime(2024, 5, 20, tzinfo=UTC).timestamp())
    lines = ["patient,timestamp,glucose,insulin,carbs"]
    for who, phase in (("dan", 0.7), ("eve", 2.1)):
        for i in range(0, 12 * 8):  # 8 h every 5 min
            g = glucose(6 + i / 12, phase)
            lines.append(f"{who},{t0 + 300 * i},{700 if (who, i) == ('eve', 30) else int(g)},,")
        lines.append(f"{who},{t0 + 300 * 18 + 60},,{5 if who == 'dan' else 3.5},{50 if who == 'dan' else 35}")
    lines.append(lines[5])  # a repeated row
    (HERE / "plain-two-patients.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    nightscout()
    clarity()
    libreview()
    plain()
