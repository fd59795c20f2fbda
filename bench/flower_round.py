"""The peer side of `bench.flower_scale`: the same task in Flower's simulation engine (flwr 1.42, Message API).

A `ClientApp` whose train handler runs `bench.peer_task.local_update` (wearfed's forecaster, the client's own
windows, the gateway's DP-SGD) on the weights it is sent and replies with its new weights and `num-examples`; a
`ServerApp` running Flower's `FedAvg` (`flwr.serverapp.strategy.FedAvg`: weighted mean of the replies' arrays by
`num-examples`, evaluation off) for 1 + `rounds` rounds through `flwr.simulation.run_simulation` (Ray backend: one
actor per CPU at `num_cpus` 1 per client, each node's ClientApp run by whichever actor is free). The first round
is a warm-up (actors import torch and opacus); each later round is timed from `configure_train` to the end of
`aggregate_train` in the ServerApp thread: sampling, messages to and from the actors, the clients' training, and
FedAvg. Ray's start and stop are timed apart (`startup_s`: run_simulation's wall time less the rounds).

Flower's own DP wrappers (`DifferentialPrivacyClientSideFixedClipping` etc.) clip and noise whole model updates
(DP-FedAvg, central or distributed DP at the client level); they are not used: both sides run the same local DP-SGD.
Needs `flwr[simulation]` (`make bench-venv`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from bench.peer_task import local_update, weighted_mean

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    k = int(context.node_config["partition-id"])
    cfg = msg.content["config"]
    seed = int(cfg["seed"]) if int(cfg["seeded"]) else None
    weights, n = local_update(k, msg.content["arrays"].to_numpy_ndarrays()[0], str(cfg["data-dir"]),
                              int(cfg["epochs"]), seed)
    content = RecordDict({"arrays": ArrayRecord([weights]), "metrics": MetricRecord({"num-examples": n})})
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that times each round and checks its result against the weighted mean of the replies (untimed), then
    calls `between(round)` if given (untimed: the bench runs wearfed's repetition there, so the pair shares the
    machine's load)."""

    def __init__(self, n: int, between: Callable[[int], None] | None = None) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        self.between = between
        self.between_s = 0.0
        self.round_s: list[float] = []
        self.models: list[np.ndarray] = []
        self.diffs: list[float] = []
        self.replies: list[int] = []
        self._t0 = 0.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):  # noqa: ANN201
        self._t0 = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):  # noqa: ANN001, ANN201
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.round_s.append(time.perf_counter() - self._t0)
        got = arrays.to_numpy_ndarrays()[0].astype(np.float64)
        ok = [m for m in replies if not m.has_error()]
        want = weighted_mean([(m.content["arrays"].to_numpy_ndarrays()[0], int(m.content["metrics"]["num-examples"]))
                              for m in ok])
        self.models.append(got)
        self.diffs.append(float(np.max(np.abs(got - want))))
        self.replies.append(len(ok))
        if self.between is not None:
            t = time.perf_counter()
            self.between(server_round)
            self.between_s += time.perf_counter() - t
        return arrays, metrics


def flower_rounds(n: int, rounds: int, base: np.ndarray, data_dir: str, epochs: int, seed: int | None = None,
                  cpus: int | None = None, between: Callable[[int], None] | None = None) -> dict:
    """Run 1 + `rounds` FedAvg rounds over n simulated clients, calling `between(r)` after round r. Returns the timed
    rounds' seconds (`round_s`), the first round's model (`first_model`, from `base`), the FedAvg check (`max_diff`,
    worst round), replies per round and `startup_s` (run_simulation's wall time less the rounds and `between`)."""
    strategy = TimedFedAvg(n, between)
    server_app = ServerApp()

    config = ConfigRecord({"data-dir": data_dir, "epochs": epochs, "seeded": int(seed is not None), "seed": seed or 0})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord([base.astype(np.float32)]), num_rounds=1 + rounds,
                       train_config=config)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if cpus:
        backend["init_args"] = {"num_cpus": cpus}
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every round at INFO
    t = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n, backend_config=backend)
    wall = time.perf_counter() - t - strategy.between_s
    if len(strategy.round_s) != 1 + rounds or min(strategy.replies, default=0) != n:
        raise RuntimeError(f"Flower ran {len(strategy.round_s)} of {1 + rounds} rounds, replies {strategy.replies}")
    return {"round_s": strategy.round_s[1:], "first_model": strategy.models[0], "max_diff": max(strategy.diffs),
            "replies": strategy.replies, "startup_s": wall - sum(strategy.round_s)}
