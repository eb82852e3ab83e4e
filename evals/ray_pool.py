"""Batch evaluation on a Ray cluster: N actors, each holding one warm detector; the driver writes.

`RayPool` is a `evals.runner.Detector`: the local runner (`run_items`, `evaluate`) drives it exactly
as it drives an `AnomalyAgent`, so results.jsonl, resume, coverage, maps and reports are the local
runner's own code; only ``adetect`` runs elsewhere. Per item:

1. the driver reads the image's bytes and ``ray.put``s them (references: once per reference set,
   cached); the bytes travel through Ray's object store, so workers need no shared filesystem;
2. the actor with the fewest items in flight writes them into its own temp folder (references once
   per set, kept while the set is in use), runs its detector, maps the temp paths in the verdict back
   to the driver's paths, and sends back the verdict and its anomaly maps (PNG and raw ``.npy``
   bytes);
3. the driver stages the maps in a temp folder; `keep_maps` moves them into the run directory.

Faults: when an actor dies (killed, out of memory, node lost) the items it had in flight go to
another live actor, up to ``max_attempts`` tries per item; then the item is an error verdict
(``error_kind="worker"``). Each `adetect` call returns exactly one verdict, so nothing is lost or
written twice. A dead actor is replaced by a new one (wherever Ray can place it), at most
``max_replacements`` times per pool; items wait for a replacement only when no actor is up. With none
left every remaining item fails at once (the runner stops after ``max_consecutive_errors``; rerun
with ``--resume --retry-errors``).

Before any actor starts, settings that workers on other nodes cannot reach are refused, and every
actor must report the driver's package, memory and endpoint (`evals.ray_cluster`). Joining a
cluster gives up after ``CONNECT_TIMEOUT_S`` with one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from agent.errors import UserInputError
from agent.schemas import Verdict
from evals.ray_cluster import check_cluster_reach, identity_mismatch, worker_config, worker_identity
from tools.maps import float_map_path
from tools.tempdirs import temp_dir

RAY_FIX = "Fix: pip install 'anomaly-agent[ray]' (or `pip install ray`), or run without --ray"
LOCAL_ADDRESSES = ("local", "")
CONNECT_TIMEOUT_S = 60.0


def import_ray():
    """The `ray` module, or a one-line `UserInputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        msg = f"--ray needs Ray, which is not installed here. {RAY_FIX}"
        raise UserInputError(msg) from None
    return ray


def package_root() -> Path:
    """The folder holding the ``agent`` and ``evals`` packages (put on a local cluster's PYTHONPATH)."""
    return Path(__file__).resolve().parents[1]


def connect(address: str | None, num_cpus: int, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Connect to Ray; True when this call started a local instance (the caller shuts it down).

    Args:
        address: None or "local": a local Ray started here with `num_cpus` CPUs and no dashboard;
            "auto": the cluster this machine belongs to (``ray start``); ``ray://host:10001``: a
            remote cluster through Ray Client.
        num_cpus: CPUs of a local instance (one per worker).
        timeout_s: seconds to wait for a cluster to answer (then a one-line `UserInputError`).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is None or address in LOCAL_ADDRESSES:
        # workers import this very checkout (not another install of the package)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)}
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": env}, configure_logging=False)
        return True
    fix = "Fix: start it (`ray start --head`), check the address (auto, ray://HEAD:10001), or use bare --ray"
    result: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            result["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported below, in one line
            result["error"] = exc

    # ray.init(address=...) has no timeout of its own: a cluster that does not answer blocks it for
    # minutes (Ray Client retries its gRPC channel). It runs in a daemon thread the driver stops waiting for.
    thread = threading.Thread(target=attempt, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        msg = f"cannot connect to the Ray cluster at {address}: no answer within {timeout_s:g} s. {fix}"
        raise UserInputError(msg)
    exc = result.get("error")
    if exc is not None:
        msg = f"cannot connect to the Ray cluster at {address} ({' '.join(str(exc).split())[:200]}). {fix}"
        raise UserInputError(msg) from exc
    return False


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _replace_paths(value: Any, pairs: list[tuple[str, str]]) -> Any:
    """`value` (JSON-like) with every occurrence of each pair's first string replaced by its second."""
    if isinstance(value, str):
        for old, new in pairs:
            if old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_replace_paths(v, pairs) for v in value]
    if isinstance(value, dict):
        return {k: _replace_paths(v, pairs) for k, v in value.items()}
    return value


def build_detector(config, kind: str):
    """The detector an actor holds: ``"agent"`` (`AnomalyAgent`) or ``"direct"`` (`DirectBaseline`)."""
    if kind == "direct":
        from evals.direct_baseline import DirectBaseline

        return DirectBaseline(config)
    from agent.api import AnomalyAgent

    return AnomalyAgent.from_config(config)


class DetectorWorker:
    """One Ray actor: a warm detector and a temp folder for the bytes it is sent.

    Args:
        config: the `AgentConfig` (its backend already resolved by the driver, never "auto").
        kind: "agent" or "direct".
        max_reference_sets: reference sets kept on disk (least recently used ones are removed).
    """

    def __init__(self, config, kind: str = "agent", max_reference_sets: int = 32) -> None:
        config = worker_config(config)
        self.config = config
        self.detector = build_detector(config, kind)
        self.tmp = temp_dir("worker-")  # inside the process temp root: removed at exit, or by the next process if killed
        self.max_reference_sets = max_reference_sets
        self._refs: OrderedDict[str, asyncio.Future] = OrderedDict()

    def ready(self) -> dict[str, Any]:
        """Who this worker is, once its detector is built: pid, host, backend, and `worker_identity`
        (package version and source digest, memory, model endpoint) for the driver to compare."""
        import socket

        backend = getattr(self.detector, "backend", None)
        return {"pid": os.getpid(), "host": socket.gethostname(), "backend": getattr(backend, "name", None),
                **worker_identity(self.config)}

    def cleanup(self) -> None:
        """Remove this worker's temp folder (called before the driver stops it)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _write_refs(self, key: str, blobs: list[tuple[str, bytes]]) -> list[str]:
        folder = self.tmp / "refs" / key
        paths = []
        for i, (name, data) in enumerate(blobs):
            path = folder / str(i) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(str(path))
        return paths

    async def _references(self, key: str | None, box: list) -> list[str]:
        if key is None:
            return []
        if key not in self._refs:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._refs[key] = future
            try:
                blobs = await box[0]  # fetched from the object store only on a miss
                future.set_result(self._write_refs(key, blobs))
            except BaseException as exc:
                del self._refs[key]
                future.set_exception(exc)
                raise
            while len(self._refs) > self.max_reference_sets:
                old, _ = self._refs.popitem(last=False)
                shutil.rmtree(self.tmp / "refs" / old, ignore_errors=True)
        self._refs.move_to_end(key)
        return await asyncio.shield(self._refs[key])

    async def judge(self, image: tuple[str, str, bytes], category: str | None, refs_key: str | None,
                    refs_box: list, ref_names: list[str]) -> dict[str, Any]:
        """Judge one image sent as bytes.

        Args:
            image: (the driver's path, file name, encoded bytes).
            category: the class name.
            refs_key: digest of the reference set (None: zero-shot); `refs_box` holds its ObjectRef
                (a list of (file name, bytes)), fetched only when this worker has not seen the set.
            ref_names: the driver's reference paths, in order (to map local paths back).

        Returns:
            {"verdict": the verdict as JSON with the driver's paths, "maps": [(evidence index,
            PNG bytes, raw .npy bytes or None)], "pid": this worker's pid}.
        """
        origin, name, data = image
        local_refs = await self._references(refs_key, refs_box)
        folder = self.tmp / "q" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        local = folder / name
        local.write_bytes(data)
        try:
            verdict = await self.detector.adetect(str(local), category=category, references=local_refs or None)
            maps = []
            for i, ev in enumerate(verdict.evidence):
                if ev.map_path and Path(ev.map_path).is_file():
                    raw = float_map_path(ev.map_path)
                    maps.append((i, Path(ev.map_path).read_bytes(), raw.read_bytes() if raw.is_file() else None))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        pairs = sorted([(str(local), origin), *zip(local_refs, ref_names, strict=True)], key=lambda p: -len(p[0]))
        return {"verdict": _replace_paths(verdict.model_dump(mode="json"), pairs), "maps": maps, "pid": os.getpid()}


class RayPool:
    """A `Detector` whose items run on `workers` Ray actors (see the module docstring).

    Args:
        config: the `AgentConfig` every actor builds its detector from (backend resolved).
        kind: "agent" or "direct".
        workers: actors to start.
        per_worker: items in flight per actor (the actor is async; tools run in its threads).
        cpus_per_worker / gpus_per_worker: Ray resources requested per actor.
        max_attempts: tries per item when actors die under it (>= 1).
        max_replacements: dead actors replaced by new ones, in all (None: `workers`).
        startup_timeout_s: seconds to wait for every actor to build its detector.
        backend: the driver's resolved `Backend` (what `resolved_config` records).
        address: where Ray runs (see `connect`); Ray is joined, and the actors started, in
            `prepare` (before the first item), so a resume with nothing left to do starts nothing.

    Raises:
        UserInputError: bad counts, or the actors did not start (the cause and the fix).
    """

    stages_maps = True  # `keep_maps` moves the staged maps instead of copying them

    def __init__(self, config, kind: str = "agent", workers: int = 2, per_worker: int = 4,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, max_attempts: int = 3,
                 startup_timeout_s: float = 600.0, backend=None, address: str | None = None,
                 max_replacements: int | None = None) -> None:
        if workers < 1 or per_worker < 1 or max_attempts < 1:
            msg = f"--workers, --concurrency and attempts must be >= 1 (got {workers}, {per_worker}, {max_attempts})"
            raise UserInputError(msg)
        if gpus_per_worker < 0 or cpus_per_worker < 0:
            msg = "--ray-gpus-per-worker must be >= 0"
            raise UserInputError(msg)
        self._ray = import_ray()
        self.backend = backend
        self.max_attempts = max_attempts
        self.per_worker = per_worker
        self.workers = workers
        self._options = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker, "max_concurrency": per_worker,
                         "max_restarts": 0}
        self._args = (config, kind)
        self._address = address
        self._startup_timeout_s = startup_timeout_s
        self._started_ray = False
        self.actors: list = []
        self.state = ["down"] * workers  # per slot: "up", "starting" (a replacement) or "down"
        self.in_flight = [0] * workers
        self.done_by = [0] * workers
        self.retried = 0
        self.replaced = 0
        self.max_replacements = workers if max_replacements is None else max_replacements
        self._remote = None
        self._starting: dict[int, asyncio.Task] = {}
        self._ref_sets: OrderedDict[tuple[str, ...], tuple[str, Any]] = OrderedDict()
        self.staging = temp_dir("ray-maps-")
        self.info: list[dict] = []
        self.expected: dict[str, Any] = {}

    def prepare(self) -> None:
        """`evals.runner` calls this before judging: start the workers (errors stop the run).

        A replacement still starting when an earlier event loop ended is waited for here.
        """
        self.start()
        for index, state in enumerate(self.state):
            if state == "starting" and index not in self._starting:
                try:
                    info = self._ray.get(self.actors[index].ready.remote(), timeout=self._startup_timeout_s)
                    self.state[index] = "down" if identity_mismatch(self.expected, info) else "up"
                except self._ray.exceptions.RayError:
                    self.state[index] = "down"

    def start(self) -> RayPool:
        """Join Ray (see `connect`) and start the actors; blocks until each has built its detector."""
        if self.actors:
            return self
        self._started_ray = connect(self._address, max(1, round(self.workers * self._options["num_cpus"])))
        try:
            check_cluster_reach(self._args[0], self._address)
        except UserInputError:
            self.close()
            raise
        self.expected = worker_identity(self._args[0])
        self._remote = self._ray.remote(DetectorWorker).options(**self._options)
        self.actors = [self._remote.remote(*self._args) for _ in range(self.workers)]
        self.info = self._wait_ready(self._startup_timeout_s)
        self.state = ["up"] * self.workers
        return self

    # -- start and stop --------------------------------------------------------------------------
    def _wait_ready(self, timeout_s: float) -> list[dict]:
        ray = self._ray
        refs = [a.ready.remote() for a in self.actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            res = ray.cluster_resources()
            self.close()
            msg = (f"only {len(ready)} of {len(refs)} Ray workers started within {timeout_s:g} s (the cluster has "
                   f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs). Fix: lower --workers or "
                   "--ray-gpus-per-worker, or add nodes")
            raise UserInputError(msg)
        try:
            infos = ray.get(refs)
        except ray.exceptions.RayError as exc:
            self.close()
            cause = " ".join(str(exc).split())[-300:]
            msg = f"a Ray worker could not build its detector ({cause}). Fix: install anomaly-agent on every node"
            raise UserInputError(msg) from exc
        for info in infos:
            mismatch = identity_mismatch(self.expected, info)
            if mismatch:
                self.close()
                msg = (f"a Ray worker does not match the driver ({mismatch}). Fix: install the same anomaly-agent "
                       "on every node, and give settings every node reaches (a memory server via memory_host, a "
                       "routable --base-url)")
                raise UserInputError(msg)
        return infos

    def close(self) -> None:
        """Stop the actors (their temp folders removed), the local Ray this pool started, the staging folder."""
        ray = self._ray
        live = [a for i, a in enumerate(self.actors) if self.state[i] == "up"]
        if live:  # (`ray.get` with nothing to get would start a local Ray when none is joined)
            try:
                ray.get([a.cleanup.remote() for a in live], timeout=10)
            except Exception:  # noqa: BLE001 - a worker that cannot clean up leaves only temp files behind
                pass
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self.state = [], ["down"] * self.workers
        self._starting.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- status ----------------------------------------------------------------------------------
    @property
    def workers_alive(self) -> int:
        return self.state.count("up")

    def status(self) -> str:
        """One line for the progress bar: workers alive, replaced actors and retried items."""
        parts = [f"workers {self.workers_alive}/{self.workers}"]
        parts += [f"{n} {what}" for n, what in ((self.replaced, "replaced"), (self.retried, "retried")) if n]
        return ", ".join(parts)

    def _lost(self, index: int, actor) -> None:
        """The actor in slot `index` died: start a replacement there (within `max_replacements`)."""
        if self.actors[index] is not actor or self.state[index] != "up":
            return  # another item saw it first
        self.state[index] = "down"
        if self.replaced >= self.max_replacements:
            return
        self.replaced += 1
        self.actors[index] = new = self._remote.remote(*self._args)
        self.state[index] = "starting"
        self._starting[index] = asyncio.get_running_loop().create_task(self._await_ready(index, new))

    async def _await_ready(self, index: int, actor) -> None:
        ray = self._ray
        try:
            info = await asyncio.wait_for(asyncio.wrap_future(actor.ready.remote().future()), self._startup_timeout_s)
            if identity_mismatch(self.expected, info):  # a replacement on a node with another install
                raise ray.exceptions.RayError("worker identity mismatch")
            if self.actors[index] is actor:
                self.state[index] = "up"
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            if self.actors[index] is actor:
                self.state[index] = "down"
                ray.kill(actor)
        finally:
            self._starting.pop(index, None)

    # -- items -----------------------------------------------------------------------------------
    def _reference_set(self, references: list[str]) -> tuple[str, Any]:
        key = tuple(references)
        if key not in self._ref_sets:
            blobs = [(Path(r).name, Path(r).read_bytes()) for r in references]
            digest = _digest(b"".join(hashlib.sha256(d).digest() + n.encode() for n, d in blobs))
            self._ref_sets[key] = (digest, self._ray.put(blobs))
            while len(self._ref_sets) > 64:  # each holds its bytes in the object store
                self._ref_sets.popitem(last=False)
        self._ref_sets.move_to_end(key)
        return self._ref_sets[key]

    def _pick(self, tried: set[int]) -> int | None:
        """The up actor with the fewest items in flight, one this item has not tried if possible."""
        live = [i for i, state in enumerate(self.state) if state == "up"]
        if not live:
            return None
        fresh = [i for i in live if id(self.actors[i]) not in tried] or live
        return min(fresh, key=lambda i: self.in_flight[i])

    def _stage_maps(self, verdict: Verdict, maps: list) -> None:
        folder = self.staging / uuid.uuid4().hex
        for index, png, raw in maps:
            ev = verdict.evidence[index]
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / f"e{index}-{Path(ev.map_path or 'map.png').name}"
            dest.write_bytes(png)
            if raw is not None:
                float_map_path(dest).write_bytes(raw)
            ev.map_path = str(dest)

    async def adetect(self, image: str, *, category: str | None = None,
                      references: list[str] | None = None) -> Verdict:
        """One verdict from some live actor (retried on another when one dies under it)."""
        ray = self._ray
        self.start()
        try:
            payload = ray.put((image, Path(image).name, Path(image).read_bytes()))
            key, box = self._reference_set(list(references)) if references else (None, None)
        except OSError as exc:
            return Verdict.failed(image, f"cannot read {exc.filename or image}: {exc.strerror or exc}",
                                  category=category, kind="input")
        tried: set[int] = set()  # ids of the actor handles this item went to
        causes: list[str] = []
        while len(tried) < self.max_attempts:
            index = self._pick(tried)
            if index is None:
                if not self._starting:
                    break
                # no actor is up, but a replacement is starting: wait for it (not an attempt)
                await asyncio.wait(list(self._starting.values()), return_when=asyncio.FIRST_COMPLETED)
                continue
            actor = self.actors[index]
            tried.add(id(actor))
            self.in_flight[index] += 1
            try:
                out = await actor.judge.remote(payload, category, key, [box], list(references or []))
            except ray.exceptions.RayTaskError as exc:  # the detector itself raised (a bug): no retry
                return Verdict.failed(image, f"internal error on a Ray worker: {' '.join(str(exc).split())[-300:]}",
                                      category=category, kind="internal")
            except ray.exceptions.RayError as exc:  # the actor or its node is gone
                causes.append(type(exc).__name__)
                self.retried += 1
                self._lost(index, actor)
                continue
            finally:
                self.in_flight[index] -= 1
            self.done_by[index] += 1
            verdict = Verdict.model_validate(out["verdict"])
            self._stage_maps(verdict, out["maps"])
            return verdict
        why = ", ".join(causes) or "none alive"
        msg = (f"no Ray worker could judge it ({len(tried)} tried: {why}; {self.workers_alive} alive). "
               "Fix: check the workers' memory and nodes, then rerun with --resume --retry-errors")
        return Verdict.failed(image, msg, category=category, kind="worker")

