"""Benchmark: the forecaster on a device, LiteRT (exported .tflite) vs. torch, single-window latency and size.

One run, both contenders measured the same way: the forecaster is fitted briefly (non-private, full-batch
Adam, 800 epochs, on windows of 20 virtual patients x 2 days other than the validation ones), exported with
litert-torch exactly as the cloud does (`cloud.tflite_export.export_checked`: agreement check < 0.1 mg/dL and
calibration on the packaged validation windows), then each runtime forecasts one window at a time,
``--repeats`` times, one thread each (torch.set_num_threads(1); LiteRT num_threads=1). Latency is the median
wall time per window. Sizes: the .tflite file vs. the float32 weights and the torch state_dict as
`torch.save` writes it.

Run: ``python -m bench.device_inference [--repeats 5000]``
Also: ``python -m bench.device_inference --write-validation cloud/data/validation_windows.npz`` writes the
packaged validation windows (held-out UVA/Padova patients of `sim.evaluate.heldout_set`, 9 patients x 1 day),
and ``--write-test-model tests/data/releases`` the checked-in test model (fitted weights, .tflite, calibration).
Also timed: the device's feature computation for one window (`device.inference.AlertMonitor.window`, from a day
of readings, basal deliveries and boluses). Last line: ``device_inference: tflite_bytes=<n> litert_us=<t>
torch_us=<t> features_us=<t> max_abs_diff=<mg/dL>``
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np

from cloud import tflite_export
from federation import model
from federation.litert import TFLiteForecaster


def write_validation(path: Path, *, patients: int = 9, days: float = 1.0, seed: int = 0) -> None:
    from sim.evaluate import heldout_set

    data = heldout_set(source="uva-padova", patients=patients, days=days, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=np.round(data.x, 1).astype(np.float32), y=np.round(data.y_cgm, 1).astype(np.float32))
    print(f"wrote {len(data.x)} windows of {data.patients} held-out patients to {path} ({path.stat().st_size} B)")


def fit(*, seed: int = 7, epochs: int = 800) -> np.ndarray:
    """A briefly fitted forecaster (training patients, not the validation ones)."""
    import torch

    from sim.evaluate import heldout_set

    data = heldout_set(source="uva-padova", patients=20, days=2.0, seed=seed)
    torch.manual_seed(seed)
    net = model.to_torch(model.init_weights(seed=seed))
    x = torch.tensor(model.normalise_inputs(data.x))
    y = torch.tensor(model.normalise(data.y_cgm))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    return model.from_torch(net)


def write_test_model(directory: Path) -> None:
    """forecaster.npy (fitted float32 weights), forecaster.tflite and calibration.json, as the cloud exports them."""
    import json

    weights = fit()
    x, y = tflite_export.load_validation()
    ex = tflite_export.export_checked(weights, x, y)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "forecaster.npy", weights)
    (directory / "forecaster.tflite").write_bytes(ex.tflite)
    (directory / "calibration.json").write_text(json.dumps({"max_abs_diff_mgdl": ex.max_abs_diff_mgdl,
                                                            "calibration": ex.calibration.to_doc()}, indent=1) + "\n")
    print(f"wrote {directory}/forecaster.npy, forecaster.tflite ({len(ex.tflite)} B), calibration.json")


def hub_with_a_day_of_history():  # -> device.inference.AlertMonitor
    """A hub's monitor after a simulated day: a reading and a basal delivery every 5 min, four meal boluses."""
    from device.inference import AlertMonitor

    mon = AlertMonitor()
    t0 = 1_767_225_600
    for k in range(288):
        t = t0 + 300 * k
        mon.add_reading(t, 140.0 + 40.0 * np.sin(k / 20.0))
        mon.add_insulin(t, 0.08)
        if k % 72 == 30:
            mon.add_carbs(t, 50.0)
            mon.add_insulin(t, 4.0)
    return mon


def per_call_us(call, window: np.ndarray, repeats: int) -> float:  # noqa: ANN001
    for _ in range(50):
        call(window)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call(window)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5000)
    ap.add_argument("--write-validation", type=Path, help="write the validation windows .npz here and exit")
    ap.add_argument("--write-test-model", type=Path, help="write the test model files to this directory and exit")
    args = ap.parse_args()
    if args.write_validation:
        write_validation(args.write_validation)
        return
    if args.write_test_model:
        write_test_model(args.write_test_model)
        return
    import torch

    torch.set_num_threads(1)
    weights = fit()
    x, y = tflite_export.load_validation()
    t = time.perf_counter()
    ex = tflite_export.export_checked(weights, x, y)
    export_s = time.perf_counter() - t
    lite = TFLiteForecaster(ex.tflite)
    module = tflite_export.torch_module(weights)
    monitor = hub_with_a_day_of_history()
    window = x[len(x) // 2]

    def torch_call(w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(w.astype(np.float32).reshape(1, -1))).numpy()

    litert_us = per_call_us(lite.predict_one, window, args.repeats)
    features_us = per_call_us(lambda _w: monitor.window(), window, max(100, args.repeats // 10))
    torch_us = per_call_us(torch_call, window, args.repeats)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    cal = ex.calibration
    print(f"model: {model.ARCHITECTURE}, {model.N_PARAMS} parameters; export + agreement check {export_s:.1f} s")
    print(f"validation: {len(x)} windows; residual SD {cal.residual_sd_mgdl[0]:.1f} / {cal.residual_sd_mgdl[1]:.1f} "
          f"mg/dL at +30/+60 (mean {cal.residual_mean_mgdl[0]:+.1f} / {cal.residual_mean_mgdl[1]:+.1f})")
    print(f"size: tflite {len(ex.tflite)} B, float32 weights {4 * model.N_PARAMS} B, torch state_dict "
          f"{len(buf.getvalue())} B (budget 200 KB: {len(ex.tflite) / 200_000:.1%})")
    print(f"latency per window (median of {args.repeats}, 1 thread): LiteRT ({lite.runtime}) {litert_us:.1f} us, "
          f"torch {torch_us:.1f} us: LiteRT is {torch_us / litert_us:.1f}x faster")
    print(f"features on the device (device.inference.AlertMonitor.window: insulin/carbs on board, 24-h context from "
          f"a day of readings and a pump's deliveries): {features_us:.1f} us per window")
    print(f"device_inference: tflite_bytes={len(ex.tflite)} litert_us={litert_us:.1f} torch_us={torch_us:.1f} "
          f"features_us={features_us:.1f} max_abs_diff={ex.max_abs_diff_mgdl:.3g}")


if __name__ == "__main__":
    main()
