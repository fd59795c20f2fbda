"""Issue 16: every command's bad input ends in one line naming the file, line or field and exit code 2, never a
traceback (federation/cli.py's one handler); a traceback only with WEARFED_DEBUG=1 or --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation import cli
from sim.broker import free_port

T0 = 1_767_225_600  # on the 5-min grid


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    code, out, err = run(argv, capsys)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and err.startswith("wearfed: error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WEARFED_DB_URL", "WEARFED_ENROLL_TOKEN", "WEARFED_TOKEN", "WEARFED_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def csv_file(path: Path, rows: list[str], header: str = "patient,time,glucose,insulin,carbs") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def flag_refused(argv: list[str], capsys: pytest.CaptureFixture[str], flag: str, why: str) -> None:
    """argparse's refusal: usage, then one line naming the flag as the user typed it, exit 2."""
    code, out, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    assert f"error: argument {flag}: {why}" in err.splitlines()[-1], err


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--rounds", "0", "must be at least 1, got 0"), ("--devices-per-gateway", "-2", "must be at least 1"),
    ("--gateways", "x", "expected an integer"), ("--days", "nan", "must be a finite number above 0"),
    ("--accel", "0", "must be a finite number above 0")])
def test_demo_flags_are_refused_by_their_own_name(capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str,
                                                  value: str, why: str) -> None:
    flag_refused(["demo", flag, value, "--out", str(tmp_path / "d")], capsys, flag, why)
    assert not (tmp_path / "d").exists()  # refused before anything ran


@pytest.mark.parametrize("eps", ["-1", "0"])
def test_demo_ldp_epsilon_alone_is_validated_not_ignored(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         eps: str) -> None:
    flag_refused(["demo", "--ldp-epsilon", eps, "--out", str(tmp_path / "d")], capsys, "--ldp-epsilon",
                 "must be a finite number above 0")


def test_demo_ldp_epsilon_alone_applies_to_the_scenario_mechanism(tmp_path: Path) -> None:
    from sim.demo import DemoConfig

    privacy = DemoConfig(out=tmp_path, ldp_epsilon=2.0).scenario().privacy  # the default unit: per patient-day
    assert (privacy.ldp_mechanism, privacy.ldp_unit, privacy.ldp_epsilon_per_day) == ("hybrid", "patient-day", 2.0)
    assert DemoConfig(out=tmp_path).scenario().privacy.ldp_epsilon_per_day == 8.0
    event = DemoConfig(out=tmp_path, ldp_epsilon=2.0, ldp_unit="reading").scenario().privacy  # the labelled option
    assert (event.ldp_unit, event.ldp_epsilon) == ("reading", 2.0)


def test_hospital_run_on_a_missing_file_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refused(["hospital", "run", "--id", "h1", "--state-dir", str(tmp_path / "s"), "--enroll-token", "t",
             "--data", "missing.csv"], capsys, "missing.csv", "No such file")


@pytest.mark.parametrize(("db", "names"), [
    ("sqlite://relative.db", ("--db", "three slashes")),
    ("cloud.db", ("not a database URL", "sqlite:///cloud.db")),
    ("sqlite:///nonexistent.db", ("no database file", "nonexistent.db", "creates none")),
])
def test_audit_verify_refuses_bad_or_missing_databases_and_creates_none(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, db: str, names: tuple[str, ...]) -> None:
    refused(["audit", "verify", "--db", db], capsys, *names)
    assert list(tmp_path.iterdir()) == []


def test_audit_verify_without_db_creates_no_cloud_db(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refused(["audit", "verify"], capsys, "cloud.db", "no database file")
    assert not (tmp_path / "cloud.db").exists()


def test_unseal_against_an_unreachable_cloud(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shares = tmp_path / "shares.txt"
    shares.write_text("wfshare1-x\n")
    port = free_port()
    refused(["cloud", "unseal", "--url", f"http://127.0.0.1:{port}", "--token", "t", "--shares-file", str(shares)],
            capsys, f"cannot reach the cloud at http://127.0.0.1:{port}")


def test_provision_refuses_a_negative_device_count(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refused(["provision", "--out", str(tmp_path / "p"), "--gateways", "gw-1", "--devices-per-gateway", "-2"],
            capsys, "--devices-per-gateway")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(("rows", "header", "names"), [
    (None, None, ("empty file", "header")),
    ([], "patient,time,glucose,insulin,carbs", ("no data rows",)),
    ([f"p1,{T0 + 300 * i},{6.5 + i % 5 / 10:.1f},," for i in range(60)], None, (":2:", "glucose 6.5 mg/dL", "mmol")),
    ([f"p1,{T0 + 300 * i},{20 + i % 5},," for i in range(60)], None, ("look like mmol/L", "glucose_mmol")),
    ([f"p1,{T0 * 1_000_000},120,,"], None, (":2:", "time", "neither unix seconds nor unix milliseconds")),
    (["p1,2026-01-01T08:00:00,120,,"], None, (":2:", "without a UTC offset")),
    (["p1,yesterday,120,,"], None, (":2:", "not ISO 8601")),
    ([f"p1,{T0},120,,", "p1,2026-01-01T08:05:00Z,121,,"], None, (":3:", "ISO 8601", "first row's is unix seconds")),
    ([f"p1,{T0},120,,", f"p1,{T0 + 300},130,,"], None, ("0 training windows",)),
    ([f"p1,{T0},120,,"], "patient,time,glucose,bolus", (":1:", "header", "unknown bolus")),
    ([f"p1,{T0},7.1,,mmol/X"], "patient,time,glucose,carbs,unit", (":2:", "unit 'mmol/X'")),
])
def test_hospital_check_refuses_bad_files_by_file_line_and_field(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, rows: list[str] | None, header: str | None,
        names: tuple[str, ...]) -> None:
    path = tmp_path / "h.csv"
    if rows is None:
        path.write_text("")
    else:
        csv_file(path, rows, header or "patient,time,glucose,insulin,carbs")
    refused(["hospital", "check", "--data", str(path)], capsys, str(path), *names)


def _jittered_rows(n: int = 200, jitter: int = 20) -> list[str]:
    """Readings every 5 min, each a few seconds either side of the grid point, as real sensors stamp them."""
    import random

    r = random.Random(3)
    return [f"{p},{T0 + 300 * i + r.choice([-1, 1]) * r.randint(1, jitter)},{120 + (i % 30)},," for p in ("a", "b")
            for i in range(n)]


def test_hospital_check_resamples_jittered_readings_into_windows(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    from federation.windows import windows_from_series
    from gateway.clinical_csv import load_clinical_csv

    path = csv_file(tmp_path / "jitter.csv", _jittered_rows())
    # floor-binning (what hospital data got before): two readings share a bin, the next is empty, no window
    assert len(windows_from_series(load_clinical_csv(path))) < 20
    code, out, err = run(["hospital", "check", "--data", str(path)], capsys)
    assert code == 0, err
    assert "patients: 2; glucose readings: 400" in out and "unix seconds" in out and "interpolated" in out
    assert "400 readings off the grid" in out and "gaps: 0" in out
    windows = int(out.split("training windows (2 h history, +30/+60 min targets): ")[1].split()[0])
    # every grid point between each patient's first and last reading is filled: 198 to 200 points, 36 per window
    assert 2 * (198 - 36 + 1) <= windows <= 2 * (200 - 36 + 1)


@pytest.mark.parametrize(("fmt", "to_time"), [
    ("unix milliseconds", lambda t: str(t * 1000)),
    ("ISO 8601", lambda t: __import__("datetime").datetime.fromtimestamp(t, __import__("datetime").UTC)
     .isoformat().replace("+00:00", "Z")),
    ("unix seconds", lambda t: f"{t}.0"),
])
def test_time_formats_are_detected_and_named(capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str,
                                             to_time) -> None:  # noqa: ANN001
    path = csv_file(tmp_path / "t.csv", [f"p1,{to_time(T0 + 300 * i)},{100 + i % 7},," for i in range(80)])
    code, out, err = run(["hospital", "check", "--data", str(path)], capsys)
    assert code == 0, err
    assert f"time format {fmt}" in out and "training windows (2 h history, +30/+60 min targets): 45" in out


def test_declared_mmol_is_converted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.clinical_csv import read_clinical_csv

    path = csv_file(tmp_path / "m.csv", [f"p1,{T0 + 300 * i},{5.5 + i % 3}," for i in range(80)],
                    header="patient,time,glucose_mmol,carbs")
    data = read_clinical_csv(path)
    assert data.unit == "mmol/L (converted)"
    assert data.series["p1"].glucose[:3].tolist() == pytest.approx([5.5 * 18.016, 6.5 * 18.016, 7.5 * 18.016])
    per_row = csv_file(tmp_path / "u.csv", [f"p1,{T0 + 300 * i},{6.0},,,mmol/L" for i in range(80)],
                       header="patient,time,glucose,insulin,carbs,unit")
    assert read_clinical_csv(per_row).series["p1"].glucose[0] == pytest.approx(108.096)
    code, out, _err = run(["hospital", "check", "--data", str(path)], capsys)
    assert code == 0 and "glucose mmol/L (converted)" in out


def test_a_restarted_enrolled_node_needs_no_token(tmp_path: Path) -> None:
    from federation.errors import ConfigError
    from gateway.cli import _node_config

    data = csv_file(tmp_path / "d.csv", [f"p1,{T0 + 300 * i},120,," for i in range(80)])
    argv = ["hospital", "run", "--id", "h1", "--state-dir", str(tmp_path / "s"), "--data", str(data)]
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(ConfigError, match="--enroll-token .* holds no enrollment yet"):
        _node_config(args, "hospital")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "enrolled.json").write_text('{"binding": {"ckks_key_id": "x"}}')
    cfg = _node_config(cli.build_parser().parse_args(argv), "hospital")
    assert cfg.enroll_token == "" and cfg.participant_id == "h1"


def test_help_shows_defaults_roles_and_no_secret(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WEARFED_ENROLL_TOKEN", "s3cret-token-value")
    for argv, wanted in ((["cloud", "serve", "--help"], ["(default: 8080)", "(default: 127.0.0.1)"]),
                         (["hospital", "run", "--help"], ["(default: 0.05)", "(default: 10.0)", "unix milliseconds",
                                                          "mmol/L"]),
                         (["cloud", "create-user", "--help"], ["data_scientist,compliance_officer"]),
                         (["fleet", "run", "--help"], ["(default: 10)"])):
        code, out, _err = run(argv, capsys)
        flat = " ".join(out.split())
        assert code == 0 and all(w in flat for w in wanted), (argv, [w for w in wanted if w not in flat])
        assert "s3cret" not in out
    code, _out, err = run(["cloud", "create-user", "--name", "x", "--role", "boss"], capsys)
    assert code == 2 and "invalid choice: 'boss'" in err and "monitor" in err and "Traceback" not in err


def test_no_traceback_unless_debug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "verify", "--db", "sqlite://x.db"]
    assert "Traceback" not in refused(argv, capsys)
    monkeypatch.setenv("WEARFED_DEBUG", "1")
    code, _out, err = run(argv, capsys)
    assert code == 2 and "Traceback" in err and "ConfigError" in err
    monkeypatch.delenv("WEARFED_DEBUG")
    code, _out, err = run(["--debug", *argv], capsys)
    assert code == 2 and "Traceback" in err


def test_ctrl_c_is_130_and_unexpected_errors_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import gateway.cli

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    def broken(_args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway.cli, "_check_hospital", interrupted)
    assert run(["hospital", "check", "--data", "x"], capsys)[0] == 130
    monkeypatch.setattr(gateway.cli, "_check_hospital", broken)
    code, _out, err = run(["hospital", "check", "--data", "x"], capsys)
    assert code == 1 and "unexpected RuntimeError: boom" in err and "Traceback" not in err


def test_libre_3_is_one_name_for_profiles_and_sensors(capsys: pytest.CaptureFixture[str]) -> None:
    from device.profiles import load_profile
    from sim.cohort import get_sensor

    assert load_profile("libre3").name == load_profile("libre-3").name == "libre-3"
    assert get_sensor("libre3") is get_sensor("libre-3")
    code, out, _err = run(["profiles", "show", "libre3"], capsys)
    assert code == 0 and "libre-3" in out


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The real console entry (a subprocess), on a bare path given as --db."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("WEARFED_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "federation.cli", "audit", "verify", "--db", "cloud.db"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--db 'cloud.db' is not a database URL; for a SQLite file write sqlite:///cloud.db" in proc.stderr
    assert list(tmp_path.iterdir()) == []
