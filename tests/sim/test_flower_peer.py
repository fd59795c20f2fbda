"""bench.flower_scale at tiny size: wearfed's three round variants compute FedAvg of the same clients (and refuse a
tampered submission), and, in the bench venv (`make bench-venv`: flwr[simulation] cannot join .venv), the whole bench
runs Flower and wearfed side by side, prints its lines, and both systems produce the same first-round model."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.crypto import Sink, post, submission_body
from bench.peer_task import weighted_mean, write_clients
from bench.wearfed_round import Federation, ckks_round, collect_submissions, timed_rounds, train_all
from federation import ckks, model
from federation.errors import WearfedError

ROOT = Path(__file__).resolve().parents[2]
BENCH_PYTHON = Path(os.environ.get("WEARFED_BENCH_PYTHON", ROOT / ".venv-bench" / "bin" / "python"))
NUMBER = r"([0-9.]+(?:e-?[0-9]+)?)"


@pytest.fixture(scope="module")
def federation_parts(tmp_path_factory):  # noqa: ANN001, ANN201
    data_dir = tmp_path_factory.mktemp("clients")
    write_clients(data_dir, 2, devices=2, days=0.5)
    secret = ckks.new_secret_context()
    public = ckks.load_context(ckks.public_bytes(secret))
    sink = Sink(keep=True)
    with httpx.Client(base_url=sink.url, timeout=60) as http, ThreadPoolExecutor(1) as pool:
        yield Federation(2, sink, http, public, secret), pool, str(data_dir)
    sink.server.should_exit = True


def test_wearfed_variants_compute_fedavg_of_the_trained_clients(federation_parts) -> None:  # noqa: ANN001
    fed, pool, data_dir = federation_parts
    base = model.init_weights(seed=0).astype(np.float32)
    seconds, models, detail = timed_rounds(fed, pool, base, data_dir, epochs=1, seed=3)
    want = weighted_mean(detail["trained"])
    assert set(seconds) == {"plain", "ckks", "masked"} and all(s > 0 for s in seconds.values())
    assert np.max(np.abs(want - base)) > 1e-4  # the clients trained
    np.testing.assert_allclose(models["plain"], want, atol=1e-6)
    np.testing.assert_allclose(models["ckks"], want, atol=1e-4)  # CKKS precision
    np.testing.assert_allclose(models["masked"], want, atol=1e-4)
    again = train_all(pool, 2, base, data_dir, 1, seed=3)  # simulation mode is reproducible: the check is meaningful
    for (w1, n1), (w2, n2) in zip(detail["trained"], again, strict=True):
        assert n1 == n2 and np.array_equal(w1, w2)


def test_aggregator_refuses_a_tampered_or_unsigned_submission(federation_parts) -> None:  # noqa: ANN001
    fed, pool, data_dir = federation_parts
    base = model.init_weights(seed=0).astype(np.float32)
    trained = train_all(pool, 2, base, data_dir, 1, seed=4)
    blob = ckks.encrypt(fed.public, ckks.weighted_update(trained[0][0] - base, trained[0][1]))
    body = submission_body(fed.keys[0], blob, trained[0][1])
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 1
    body["ciphertext"] = base64.b64encode(bytes(flipped)).decode()
    post(fed.http, body)
    post(fed.http, submission_body(fed.keys[0], blob, trained[1][1]))  # signed by the wrong participant
    with pytest.raises(RuntimeError, match="digest"):
        collect_submissions(fed, encrypted=True)
    for key, (w, n) in zip(reversed(fed.keys), trained, strict=True):  # each signed by the other participant
        post(fed.http, submission_body(key, ckks.encrypt(fed.public, ckks.weighted_update(w - base, n)), n))
    with pytest.raises(WearfedError):
        collect_submissions(fed, encrypted=True)
    assert fed.sink.received == []
    ckks_round(fed, base, trained)  # honest submissions still aggregate afterwards


needs_bench_venv = pytest.mark.skipif(
    not BENCH_PYTHON.exists(), reason=f"no bench venv at {BENCH_PYTHON} (make bench-venv): Flower's simulation engine "
    "pins ray/protobuf/fastapi versions that clash with the main venv")

# Run in the bench venv: two real clients' DP-SGD updates, as the replies Flower's FedAvg receives in a round. Outside
# a run Flower's Message needs the task identity its runtime sets (flwr.supercore.task_identity), set here by hand.
FEDAVG_CHECK = """
import json, sys, tempfile
import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from bench.flower_round import TimedFedAvg
from bench.peer_task import local_update, weighted_mean, write_clients
from federation import model

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
d = tempfile.mkdtemp()
write_clients(d, 2, devices=2, days=0.5)
base = model.init_weights(seed=0).astype(np.float32)
trained = [(local_update(k, base, d, 1, seed=5)[0], n) for k, n in enumerate((1, 3))]  # unequal weights
strategy = TimedFedAvg(2)
replies = [Message(content=RecordDict({"arrays": ArrayRecord([w]), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=Message(content=RecordDict({}), dst_node_id=k + 1, message_type=MessageType.TRAIN))
           for k, (w, n) in enumerate(trained)]
arrays, _ = strategy.aggregate_train(1, replies)
got = arrays.to_numpy_ndarrays()[0].astype(np.float64)
unweighted = (trained[0][0].astype(np.float64) + trained[1][0]) / 2
print(json.dumps({"diff": float(np.max(np.abs(got - weighted_mean(trained)))), "recorded": strategy.diffs[0],
                  "from_unweighted": float(np.max(np.abs(got - unweighted))),
                  "moved": float(np.max(np.abs(got - base)))}))
"""


@needs_bench_venv
def test_flower_fedavg_is_the_weighted_mean_wearfed_computes() -> None:
    out = subprocess.run([str(BENCH_PYTHON), "-c", FEDAVG_CHECK], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["diff"] < 1e-6 and r["recorded"] < 1e-6  # Flower's FedAvg = bench.peer_task.weighted_mean (= wearfed's)
    assert r["from_unweighted"] > 1e-5 and r["moved"] > 1e-4  # the weights and the training both mattered


@pytest.mark.slow  # 129-144 s here at load 6-11 (4 Ray starts, each with its actors' torch imports)
@needs_bench_venv
def test_flower_scale_runs_both_systems_on_the_same_task() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "1"}
    out = subprocess.run([str(BENCH_PYTHON), "-m", "bench.flower_scale", "--sizes", "3,4", "--reps", "1",
                          "--devices", "2", "--days", "0.5", "--epochs", "1", "--workers", "1", "--seeded", "--secagg"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for n in (3, 4):
        row = [ln for ln in lines if ln.startswith(f"flower_scale: clients={n} ")]
        assert len(row) == 1, out.stdout
        fields = ("flower_round_s", "wearfed_plain_s", "wearfed_ckks_s", "wearfed_masked_s", "ratio_plain",
                  "ratio_ckks", "ratio_masked")
        m = re.fullmatch(rf"flower_scale: clients={n} " + " ".join(f"{f}={NUMBER}" for f in fields), row[0])
        assert m, row[0]
        v = dict(zip(fields, map(float, m.groups()), strict=True))
        assert all(x > 0 for x in v.values())
        assert v["ratio_masked"] == pytest.approx(v["wearfed_masked_s"] / v["flower_round_s"], rel=0.02, abs=0.006)
        check = next(ln for ln in lines if ln.startswith(f"fedavg_check: clients={n} "))
        diffs = {k: float(x) for k, x in re.findall(rf"(\w+_diff)={NUMBER}", check)}
        assert set(diffs) == {"flower_fedavg_diff", "wearfed_plain_diff", "wearfed_ckks_diff", "wearfed_masked_diff",
                              "flower_vs_wearfed_diff"}
        assert diffs["flower_fedavg_diff"] < 1e-6 and diffs["wearfed_plain_diff"] < 1e-6
        assert diffs["flower_vs_wearfed_diff"] < 1e-6  # both systems computed the same model from the same clients
        assert diffs["wearfed_ckks_diff"] < 1e-4 and diffs["wearfed_masked_diff"] < 1e-4
        sa = re.fullmatch(rf"flower_secagg: clients={n} flower_secagg_round_s={NUMBER} wearfed_masked_s={NUMBER} "
                          rf"ratio_masked_over_secagg={NUMBER} secagg_vs_wearfed_max_abs_diff={NUMBER}",
                          next(ln for ln in lines if ln.startswith(f"flower_secagg: clients={n} ")))
        assert sa and float(sa[1]) > 0 and float(sa[2]) > 0
        assert float(sa[4]) < 5e-3  # SecAgg+'s quantisation, magnified by max_weight / num_examples (1000 / 2)
    assert re.search(rf"^flower_scale_growth: sizes=4/3 flower={NUMBER} wearfed_plain={NUMBER}", out.stdout, re.M)
