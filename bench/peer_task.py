"""The task wearfed and Flower both run in `bench.flower_scale`: each client is one gateway of the demo
(`bench.crypto.gateway_windows`: 10 devices, one day of CGM readings, about 2,500 windows, its own patients),
trains wearfed's forecaster (`federation.model`) from the round's weights with the gateway's DP-SGD
(`gateway.trainer.train_dp`, `DPConfig()`: user-level, patient sampling, flat clipping, Gaussian noise) for 2 local
epochs, and reports its new weights and sample count (patients: what FedAvg weights by, on both sides).

Client data is written once to `<dir>/client-<k>.npz`; each training loads its own file (what a client reading its
local store does), in whichever process runs it (a Ray actor of Flower's, a worker of wearfed's pool).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from federation.privacy_rng import PrivacyRNG
from federation.windows import Windows

DEVICES = 10
DAYS = 1.0
EPOCHS = 2


def client_file(data_dir: Path | str, k: int) -> Path:
    return Path(data_dir) / f"client-{k:03d}.npz"


def write_clients(data_dir: Path | str, n: int, *, devices: int = DEVICES, days: float = DAYS) -> None:
    """Client k's windows: `devices` synthetic traces of patients named client<k>-dev<j> (distinct per client)."""
    from bench.crypto import gateway_windows

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        w = gateway_windows(devices, prefix=f"client{k:03d}", days=days)
        np.savez(client_file(data_dir, k), x=w.x, y=w.y, patient=w.patient, patients=np.array(w.patients), t=w.t)


def load_client(data_dir: Path | str, k: int) -> Windows:
    with np.load(client_file(data_dir, k)) as f:
        return Windows(f["x"], f["y"], f["patient"], tuple(str(p) for p in f["patients"]), f["t"])


def local_update(k: int, weights: np.ndarray, data_dir: str, epochs: int = EPOCHS,
                 seed: int | None = None) -> tuple[np.ndarray, int]:
    """Client k's local DP-SGD from `weights`: (new weights as float32, patients trained on). Noise and sampling come
    from the OS CSPRNG, or, with `seed` (simulation mode, for the bench's equality check), from seed + k."""
    import torch

    from gateway.trainer import DPConfig, train_dp

    torch.set_num_threads(1)
    rng = PrivacyRNG.secure() if seed is None else PrivacyRNG.simulation(seed + k)
    res = train_dp(np.asarray(weights, dtype=np.float32), load_client(data_dir, k), cfg=DPConfig(), epochs=epochs,
                   rng=rng)
    return res.weights.astype(np.float32), int(res.n_samples)


def weighted_mean(results: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """FedAvg of client weights (McMahan et al. 2017, AISTATS, Algorithm 1): sum_k n_k w_k / sum_k n_k, float64."""
    total = sum(n for _w, n in results)
    return sum(w.astype(np.float64) * n for w, n in results) / total
