"""Where a study's independent configurations run: in this process (the default) or as Ray tasks (`--ray auto|ADDRESS`).

An executor maps a picklable function over items and yields the results in the items' order, each as soon as it and
all before it are done (so a sweep can still write its rows after every setting). Ray (docs: "Ray Core, Tasks" and
`ray.init(address=...)`): ``auto`` joins a running cluster if one is found (RAY_ADDRESS or a local head), otherwise
``ray.init`` starts a local one; any other value is a cluster address (``ray://host:10001`` or ``host:6379``).
Shared inputs (cohorts, held-out sets) go to the object store once with `ray.put`.

The scale study (`wearfed replay SCALE --ray`) starts or joins Ray once in the driver and hands its address to
the hospital pool processes, whose nodes train each round as one task each (`gateway.node.ParticipantNode.train`).

Results are the same as in-process for the same seed in simulation mode: each task runs the same function on the
same arguments with the driver's thread counts: Ray starts workers with OMP_NUM_THREADS=1, and a different thread
count changes the order of floating-point reductions in torch and the BLAS, hence the trained weights (measured:
rmse30 15.977475248 vs 15.977475232 mg/dL, 49 of the row's fields differ). The driver's counts are read per
library when a map starts (torch's intra-op count and, through threadpoolctl, each BLAS and OpenMP pool's: numpy's
OpenBLAS keeps the count it started with after a command lowers torch's to 1, so one number for all would not do;
measured in the test suite: 49 fields differed again), and every task runs under the same limits. A task that
fails raises its error here (Ray's `RayTaskError` wraps the original). An address that does not answer a TCP
connection within 5 s is refused before Ray is asked (Ray itself retries for minutes).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from federation.errors import ConfigError


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[..., Any], items: Iterable[tuple], **shared: Any) -> Iterator[Any]:
        """``fn(*item, **shared)`` for every item, results in item order."""
        ...

    def close(self) -> None: ...


class InProcess:
    name = "in-process"

    def map(self, fn: Callable[..., Any], items: Iterable[tuple], **shared: Any) -> Iterator[Any]:
        for item in items:
            yield fn(*item, **shared)

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs each item as one Ray task (``num_cpus`` each); `close` shuts down a Ray this executor started."""

    def __init__(self, address: str = "auto", *, num_cpus: float = 1.0, local_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--ray needs Ray: pip install 'wearfed[scale]'") from exc
        self._ray = ray
        self.num_cpus = num_cpus
        self._started = False
        if not ray.is_initialized():
            if address == "auto":
                try:
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:  # no cluster running: a local one for this process
                    ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
                    self._started = True
            else:
                _reachable(address)
                try:
                    ray.init(address=address, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConfigError(f"--ray {address}: no Ray cluster there ({exc})") from exc
        self.address = ray.get_runtime_context().gcs_address  # what other processes join (`--ray ADDRESS`)
        self.name = f"ray ({self.address})"

    def map(self, fn: Callable[..., Any], items: Iterable[tuple], **shared: Any) -> Iterator[Any]:
        ray = self._ray
        threads = driver_threads()
        env = {k: str(threads["torch"] or 1) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        task = ray.remote(num_cpus=self.num_cpus)(_with_threads).options(runtime_env={"env_vars": env})
        refs = {k: ray.put(v) for k, v in shared.items()}  # once, not once per task
        futures = [task.remote(fn, threads, *item, **refs) for item in items]
        for f in futures:
            yield ray.get(f)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def driver_threads() -> dict[str, Any]:
    """This process's thread counts: torch's intra-op count and each native pool's (by library file prefix)."""
    from threadpoolctl import threadpool_info

    try:
        import torch

        count: int | None = torch.get_num_threads()
    except ImportError:
        count = None
    return {"torch": count, "pools": {p["prefix"]: p["num_threads"] for p in threadpool_info()}}


def _with_threads(fn: Callable[..., Any], threads: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in a Ray worker under the driver's thread counts (`driver_threads`)."""
    from threadpoolctl import threadpool_limits

    if threads["torch"] is not None:
        import torch

        torch.set_num_threads(threads["torch"])
    with threadpool_limits(limits=threads["pools"]):
        return fn(*args, **kwargs)


def _reachable(address: str) -> None:
    """Refuse an address nothing listens on (ConfigError naming it) instead of letting Ray retry for minutes."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster there ({exc})") from exc


def executor(ray_address: str | None) -> Executor:
    """`InProcess` without an address; a `RayExecutor` joined to (or starting) Ray with one."""
    return InProcess() if not ray_address else RayExecutor(ray_address)
