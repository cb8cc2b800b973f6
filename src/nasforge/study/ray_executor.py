"""``--executor ray``: each trial a Ray task, on a local Ray instance or an existing cluster.

The search process keeps ``--workers N`` study workers as threads (:class:`~nasforge.study.worker.StudyWorker`,
each with its own lock handle and searcher replica, so the study's event log works as with
worker processes); each worker's evaluation is a Ray task that requests ``--ray-cpus`` CPUs and
``--ray-gpus`` GPUs, so Ray places trials on whichever node has room. A Ray worker process
builds the evaluator once (data set, splits, recipe) and keeps it for the next trials it runs.

Faults: a task whose Ray worker or node dies raises in the search process and the trial is
recorded failed with Ray's reason (the search goes on); the search process itself is the study
worker, so its death leaves RUNNING trials that the next run (or any other worker) reaps.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from nasforge.errors import ConfigError

#: evaluations built in this Ray worker process, by config
_BUILT: dict[str, Any] = {}


def check_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'nasforge[ray]' (or pip install ray)") from None


def _evaluate_task(build: Callable[[dict[str, Any]], tuple[Any, Any]], cfg: dict[str, Any], arch_text: str,
                   fidelity: float) -> Any:
    """Runs inside a Ray worker: the trial's outcome (the evaluation is built once per process)."""
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _BUILT:
        _BUILT[key] = build(cfg)
    space, evaluation = _BUILT[key]
    return evaluation(space.parse(arch_text), fidelity)


def run_ray_workers(
    *, n: int, address: str | None, cpus: float, gpus: float, workers: list[Any], make_worker: Callable[[], Any],
    build: Callable[[dict[str, Any]], tuple[Any, Any]], cfg: dict[str, Any], log: Callable[[str], None] = print,
) -> None:
    """Run ``n`` study workers as threads whose evaluations are Ray tasks, until the study is complete.

    Args:
        n: trials evaluated at once.
        address: Ray cluster address; None starts a local instance (stopped at the end).
        cpus, gpus: resources each trial task requests.
        workers: the study workers already built (the first is this process's main one).
        make_worker: builds another study worker (own study handle and searcher replica).
        build: ``cfg -> (space, evaluation)``, a module-level function (Ray imports it by name).
        cfg: the search config as a dict.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # a local instance listens on the loopback interface only, with no dashboard
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        total = ray.cluster_resources()
        log(f"Ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU(s), {total.get('GPU', 0):g} GPU(s); "
            f"{n} trial(s) at once, each {cpus:g} CPU / {gpus:g} GPU")
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_evaluate_task)
        workers = list(workers) + [make_worker() for _ in range(n - len(workers))]

        def remote_evaluation(worker: Any) -> Callable[[Any, float], Any]:
            def evaluate(arch: Any, fidelity: float) -> Any:
                try:
                    return ray.get(task.remote(build, cfg, worker.format_arch(arch), fidelity))
                except ray.exceptions.RayTaskError as e:  # the evaluation raised: re-raise its own error
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else RuntimeError(str(e))) from None
            return evaluate

        errors: list[BaseException] = []

        def run(worker: Any) -> None:
            try:
                worker._evaluate = remote_evaluation(worker)
                worker.run()
            except BaseException as e:  # noqa: BLE001 (handed to the main thread)
                errors.append(e)

        threads = [threading.Thread(target=run, args=(w,), name=f"nasforge-ray-{i}", daemon=True)
                   for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and not errors:
            time.sleep(0.2)  # the main thread stays free for Ctrl-C / SIGTERM
        if errors:
            raise errors[0]
    finally:
        if started:
            ray.shutdown()
