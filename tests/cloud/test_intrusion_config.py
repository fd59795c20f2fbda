"""Intrusion thresholds and the DP report policy from TOML and flags: the shipped file loads, every bad input is a
ConfigError naming the file and the field (exit 2 from `wearfed cloud serve`), flags override the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud.intrusion_config import DEFAULT_FILE, IntrusionConfig, load_config
from federation.errors import ConfigError


def test_the_shipped_file_is_the_defaults() -> None:
    assert load_config() == IntrusionConfig()
    assert DEFAULT_FILE.exists()


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "ids.toml"
    f.write_text("[detection]\nauth_failures = 4\nwindow_s = 10.0\n[dp_reports]\nnoise_floor = 0.8\n")
    cfg = load_config(f, auth_failures=None, replays=7, dp_noise_ceiling=9.0, witness_hold=True)
    assert (cfg.auth_failures, cfg.window_s, cfg.replays, cfg.witness_hold) == (4, 10.0, 7, True)
    assert (cfg.dp.noise_floor, cfg.dp.noise_ceiling) == (0.8, 9.0)


@pytest.mark.parametrize(("text", "fragment"), [
    ("[detection\n", "not valid TOML"),
    ("[alarms]\nx = 1\n", "unknown section(s) ['alarms']"),
    ("[detection]\nauth_failure = 3\n", "[detection] auth_failure is not a setting"),
    ("[detection]\nauth_failures = \"ten\"\n", "[detection] auth_failures must be a number"),
    ("[detection]\nauth_failures = true\n", "[detection] auth_failures must be a number"),
    ("[detection]\nwitness_hold = 1\n", "[detection] witness_hold must be true or false"),
    ("[detection]\nwitness_max_age_s = -1\n", "witness_max_age_s and witness_max_behind must be >= 0"),
    ("[detection]\nauth_failures = 0\n", "auth_failures must be >= 1"),
    ("[dp_reports]\nnoise_floor = 5.0\nnoise_ceiling = 1.0\n", "noise_floor <= noise_ceiling"),
    ("[dp_reports]\nmin_expected_batch = -1\n", "min_expected_batch"),
])
def test_bad_files_name_the_file_and_field(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "ids.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value) and fragment in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "nope.toml")


def test_cloud_serve_exits_2_naming_the_field(tmp_path: Path) -> None:
    f = tmp_path / "ids.toml"
    f.write_text("[detection]\nreplay = 3\n")
    done = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "serve", "--intrusion", str(f),
                           "--state-dir", str(tmp_path / "s"), "--db", f"sqlite:///{tmp_path / 'c.db'}",
                           "--dev-insecure-custodian"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"intrusion file {f}: [detection] replay is not a setting" in done.stderr
    assert "Traceback" not in done.stderr
