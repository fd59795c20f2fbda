"""Reading Mosquitto's log (`gateway.broker_log`) and what a revocation changes at the gateway (`gateway.acl_watch`):
the denial line as Mosquitto 2.0.11 writes it, malformed and huge lines, bytes that are not UTF-8, rotation and
truncation of the file, and a revoked device's readings refused by the real ingest path (SQLite store)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.acl_watch import AclWatch, AclWatchConfig, Revocations
from gateway.broker_log import LogTail, parse_denial
from gateway.ingest import handle_message
from gateway.registry import DeviceRegistry
from gateway.store import ReadingStore
from tests.gateway.test_validation import DEV, NOW, TOPIC, payload

# copied from a running Debian mosquitto 2.0.11 (log_type all, default and custom timestamps)
DENIED = "1796398325: Denied PUBLISH from gw-1-dev001 (d0, q1, r0, m1, 'wearfed/v1/gw-1/gw-1-dev002/readings', ... " \
         "(1 bytes))"
DENIED_ISO = "2026-12-04T15:29:15: Denied PUBLISH from gw-1-dev001 (d0, q0, r0, m0, 'wearfed/v1/x', ... (120 bytes))"


def test_the_denial_line_and_nothing_else() -> None:
    d = parse_denial(DENIED + "\n")
    assert (d.client, d.topic, d.payload_bytes) == ("gw-1-dev001", "wearfed/v1/gw-1/gw-1-dev002/readings", 1)
    assert parse_denial(DENIED_ISO).payload_bytes == 120
    for line in ["1796398325: Received PUBLISH from gw-1-dev001 (d0, q1, r0, m1, 'a', ... (1 bytes))",
                 "1796398325: Denied PUBLISH from gw-1-dev001 (d0, q1, r0, m1, 'a', ... (1 bytes)",  # cut short
                 "1796398325: Denied PUBLISH from  (d0, q1, r0, m1, 'a', ... (1 bytes))",  # no client
                 "1796398325: Denied PUBLISH from x (d9, q1, r0, m1, 'a', ... (1 bytes))",
                 "Denied PUBLISH from " + "x" * 300 + " (d0, q1, r0, m1, 'a', ... (1 bytes))",
                 "", "\x00\xff garbage", "1796398325: Client <unknown> disconnected, not authorised."]:
        assert parse_denial(line) is None, line


def test_tail_survives_garbage_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    log.write_text("old line before the watcher\n" + DENIED + "\n")
    tail = LogTail(log, max_line=1024)
    assert tail.read_lines() == []  # what was logged before the start is history
    with open(log, "ab") as fh:
        fh.write(b"x" * 5000 + b"\n")  # over-long: dropped whole
        fh.write(b"\xff\xfe not utf-8 \x00\n")
        fh.write(b"y" * 3000)  # over-long and still being written: dropped across calls
    lines = tail.read_lines()
    assert len(lines) == 1 and "not utf-8" in lines[0]
    with open(log, "ab") as fh:
        fh.write(b"y" * 3000 + b"\n" + DENIED.encode() + b"\n" + b"partial")
    assert tail.read_lines() == [DENIED]  # the partial line waits for its newline
    assert tail.long_lines_dropped == 2
    with open(log, "ab") as fh:
        fh.write(b" line\n")
    assert tail.read_lines() == ["partial line"]

    with open(log, "ab") as fh:  # rotation: what was appended before the rename is still read, then the new file
        fh.write(b"last of the old file\n")
    os.rename(log, tmp_path / "mosquitto.log.1")
    log.write_text("first of the new file\n")
    assert tail.read_lines() == ["last of the old file", "first of the new file"]
    assert tail.rotations == 1

    with open(log, "r+b") as fh:  # copytruncate
        fh.truncate(0)
    with open(log, "ab") as fh:
        fh.write(b"after truncation\n")
    assert tail.read_lines() == ["after truncation"] and tail.truncations == 1

    log.unlink()  # gone (between a rotation's rename and the broker's reopen): nothing, no error
    assert tail.read_lines() == []
    log.write_text(DENIED + "\n")
    assert tail.read_lines() == [DENIED]
    tail.close()


def test_a_missing_log_is_watched_once_it_appears(tmp_path: Path) -> None:
    tail = LogTail(tmp_path / "later.log")
    assert tail.read_lines() == []
    (tmp_path / "later.log").write_text(DENIED + "\n")
    assert tail.read_lines() == [DENIED]


def test_a_revoked_device_is_refused_by_the_ingest_until_lifted(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "readings.sqlite")
    revoked = Revocations(tmp_path)
    registry = DeviceRegistry(None, revoked=revoked)
    ok = handle_message(store, "gw-1", TOPIC, payload("laplace", 1.0, [120.0]), registry=registry, now=NOW)
    assert ok == "stored"
    revoked.add(DEV, {"rule": "acl_denials", "at": "2026-12-04T15:29:15+00:00", "count": 5})
    refused = handle_message(store, "gw-1", TOPIC, payload("laplace", 1.0, [121.0], seq0=10), registry=registry,
                             now=NOW)
    assert refused.startswith(f"rejected: device {DEV} is revoked by intrusion response (acl_denials"), refused
    assert (store.counts()["ingested"], store.counts()["rejected"]) == (1, 1)
    assert Revocations(tmp_path).reason(DEV) is not None  # persisted: a restarted gateway refuses it too
    (tmp_path / "revoked-devices.json").unlink()  # lifted by the operator
    assert revoked.reason(DEV) is None
    store.close()


def test_the_watch_counts_per_device_and_spares_the_gateways_own_logins(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    log.write_text("")
    passwd = tmp_path / "passwd"
    passwd.write_text("gw-1-dev001:$7$101$salt$hash\ngw-1-dev002:$7$101$salt$hash\ngateway-gw-1:$7$101$s$h\n")
    passwd.chmod(0o600)
    watch = AclWatch("gw-1", tmp_path, AclWatchConfig(log_file=log, passwd_file=passwd, denials=3),
                     registry=DeviceRegistry(None), revocations=Revocations(tmp_path))

    def deny(client: str, n: int) -> None:
        with open(log, "a") as fh:
            fh.writelines(DENIED.replace("gw-1-dev001", client) + "\n" for _ in range(n))

    deny("gw-1-dev002", 2)
    deny("gateway-gw-1", 5)  # the gateway's own login: a configuration fault, logged, never revoked
    deny("gw-2-dev001", 5)  # another gateway's device on a shared broker: its gateway's business
    assert watch.poll() == []
    deny("gw-1-dev001", 3)
    [report] = watch.poll()
    assert (report["subject"], report["count"], report["threshold"]) == ("gw-1-dev001", 3, 3)
    assert report["actions"][0] == f"broker login gw-1-dev001 revoked in {passwd}"
    assert "no pid file configured" in report["actions"][1]
    lines = passwd.read_text().splitlines()
    assert lines[0].startswith("# revoked by wearfed intrusion response")
    assert lines[0].endswith(" gw-1-dev001:$7$101$salt$hash")
    assert lines[1:] == ["gw-1-dev002:$7$101$salt$hash", "gateway-gw-1:$7$101$s$h"]
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert [r["report_id"] for r in watch.pending_reports()] == [report["report_id"]]
    watch.report_sent(report["report_id"])
    assert watch.pending_reports() == []
    assert watch.status()["acl_watch"]["denials_not_ours"] == 10


def test_without_a_password_file_or_a_good_pid_the_report_says_what_was_not_done(tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    log.write_text("")
    (tmp_path / "pid").write_text("not a pid\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("gw-1-dev002:$7$101$salt$hash\n")
    alone = AclWatch("gw-1", tmp_path / "a", AclWatchConfig(log_file=log, denials=1),
                     registry=DeviceRegistry(None), revocations=Revocations(tmp_path / "a"))
    bad_pid = AclWatch("gw-1", tmp_path / "b", AclWatchConfig(log_file=log, passwd_file=passwd,
                                                               pid_file=tmp_path / "pid", denials=1),
                       registry=DeviceRegistry(None), revocations=Revocations(tmp_path / "b"))
    with open(log, "a") as fh:
        fh.write(DENIED.replace("gw-1-dev001", "gw-1-dev002") + "\n")
    [a] = alone.poll()
    assert a["actions"] == ["broker login not revoked: no password file configured (--broker-passwd-file)",
                            "the gateway accepts none of its readings"]
    [b] = bad_pid.poll()
    assert b["actions"][0].startswith("broker login gw-1-dev002 revoked") and "broker NOT reloaded" in b["actions"][1]
    assert alone.revocations.reason("gw-1-dev002") and bad_pid.revocations.reason("gw-1-dev002")
