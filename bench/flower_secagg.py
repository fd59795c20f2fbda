"""Flower's secure aggregation on the same task, the peer of wearfed's masked round (`bench.flower_scale --secagg`).

Flower 1.42's SecAgg+ (Bell et al. 2020, CCS) runs on its legacy workflow API: a `NumPyClient` whose `fit` is
`bench.peer_task.local_update`, wrapped by `secaggplus_mod`, and a `ServerApp` running `DefaultWorkflow` with
`SecAggPlusWorkflow` over the legacy `FedAvg` (`flwr.server.strategy`). SecAgg+ masks the quantised
[num_examples, num_examples x weights] of each client (parameters clipped to +-8, 2^22 levels, masks mod 2^32) and
the server unmasks the sum. Its shares and threshold are set as wearfed's (`federation.secagg`: each secret shared
among the 2d neighbours and its owner, d = n // 3, a majority threshold). Timed from `configure_fit` (the workflow's
setup stage) to the end of `aggregate_fit`, after one warm-up round. No encryption of the sum (SecAgg+ does not
hide the aggregate from the server; wearfed's masked round also CKKS-encrypts it). Its precision: each client
quantises its parameters times num_examples / max_weight (1000 by default), so the quantisation step (16 / 2^22) is
magnified by max_weight / num_examples in the average.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from flwr.client import ClientApp as LegacyClientApp
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

from bench.peer_task import local_update
from federation import secagg


class PeerClient(NumPyClient):
    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, parameters, config):  # noqa: ANN001, ANN201
        seed = int(config["seed"]) if int(config["seeded"]) else None
        w, n = local_update(self.k, parameters[0], str(config["data-dir"]), int(config["epochs"]), seed)
        return [w], n, {}


def client_fn(context: Context):  # noqa: ANN201
    return PeerClient(int(context.node_config["partition-id"])).to_client()


secagg_client_app = LegacyClientApp(client_fn=client_fn, mods=[secaggplus_mod])


class TimedLegacyFedAvg(LegacyFedAvg):
    """Times each round and then calls `between(round)` (untimed), as `bench.flower_round.TimedFedAvg`."""

    def __init__(self, n: int, base: np.ndarray, fit_config: dict, between: Callable[[int], None] | None) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                         initial_parameters=ndarrays_to_parameters([base.astype(np.float32)]),
                         on_fit_config_fn=lambda _r: dict(fit_config))
        self.round_s: list[float] = []
        self.models: list[np.ndarray] = []
        self.between, self.between_s = between, 0.0
        self._t0 = 0.0

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        self._t0 = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        params, metrics = super().aggregate_fit(server_round, results, failures)
        self.round_s.append(time.perf_counter() - self._t0)
        if params is not None:
            self.models.append(parameters_to_ndarrays(params)[0].astype(np.float64))
        if self.between is not None:
            t = time.perf_counter()
            self.between(server_round)
            self.between_s += time.perf_counter() - t
        return params, metrics


def secagg_rounds(n: int, rounds: int, base: np.ndarray, data_dir: str, epochs: int, seed: int | None = None,
                  cpus: int | None = None, between: Callable[[int], None] | None = None) -> dict:
    """1 + `rounds` SecAgg+ FedAvg rounds over n simulated clients, calling `between(r)` after round r: the timed
    rounds' seconds (`round_s`), the first round's model (`first_model`) and `startup_s`."""
    if n < 3:
        raise ValueError(f"Flower's SecAgg+ needs more than 2 shares, so at least 3 clients (got {n})")
    config = {"data-dir": data_dir, "epochs": epochs, "seeded": int(seed is not None), "seed": seed or 0}
    strategy = TimedLegacyFedAvg(n, base, config, between)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1 + rounds), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=secagg.degree(n) + 1,
                                                                   reconstruction_threshold=secagg.threshold(n)))
        workflow(grid, legacy)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if cpus:
        backend["init_args"] = {"num_cpus": cpus}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    t = time.perf_counter()
    run_simulation(server_app=server_app, client_app=secagg_client_app, num_supernodes=n, backend_config=backend)
    wall = time.perf_counter() - t - strategy.between_s
    if len(strategy.models) != 1 + rounds:
        raise RuntimeError(f"Flower SecAgg+ completed {len(strategy.models)} of {1 + rounds} rounds")
    return {"round_s": strategy.round_s[1:], "first_model": strategy.models[0],
            "startup_s": wall - sum(strategy.round_s)}
