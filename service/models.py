"""The set of loaded models: load, warm up, serve, swap versions, unload, report state.

Why a registry of its own: a model that fails to load must not take the others down (it is
UNAVAILABLE with its reason), a new version must be warmed up before it takes traffic, and an
unload must drain queued requests first. Servicers only ever call `get` and the state queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from service.batching import BatchPolicy, DynamicBatcher
from service.errors import ConfigError, NotFound, Unavailable
from service.metrics import Metrics
from service.graph_checks import warm_up_checked
from service.repository import (
    ModelSource,
    check_external_data,
    check_signature,
    find_config,
    model_directories,
    scan_model,
)
from service.runtime import ModelRuntime

log = logging.getLogger("convserve.models")

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class LoadedVersion:
    """One model version with its sessions and batcher, ready to take requests."""

    source: ModelSource
    version: int
    runtime: ModelRuntime
    batcher: DynamicBatcher
    executor: ThreadPoolExecutor
    load_seconds: float
    warmup_seconds: float

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def config(self):
        return self.source.config

    @property
    def labels(self) -> tuple[str, ...]:
        return self.source.labels

    async def close(self, drain_timeout: float) -> None:
        await self.batcher.close(drain_timeout)
        self.executor.shutdown(wait=False)


@dataclass
class ModelEntry:
    """What the repository knows about one model name, loaded or not."""

    name: str
    state: str = LOADING
    reason: str = ""
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    default_version: int | None = None
    # Bumped by every load and unload (under the registry lock): an unload that finishes draining
    # after a later load began must not overwrite that load's outcome (the later call wins).
    generation: int = 0


@dataclass(frozen=True)
class LoadOptions:
    providers: tuple[str, ...] = ("cuda", "cpu")
    require_gpu: bool = False
    drain_timeout_s: float = 25.0


class ModelRegistry:
    """Loads every model of a repository and answers which version serves a request."""

    def __init__(self, repo: Path, metrics: Metrics, options: LoadOptions):
        self.repo = Path(repo)
        self.metrics = metrics
        self.options = options
        self.entries: dict[str, ModelEntry] = {}
        self._lock = asyncio.Lock()
        self.cuda_warnings: list[str] = []

    def get(self, name: str, version: str | int | None = None) -> LoadedVersion:
        """The loaded version that serves `name` (and `version`, "" or None meaning the default)."""
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}' (models: {sorted(self.entries)})")
        if entry.state != READY:
            detail = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(f"model '{name}' is {entry.state.lower()}{detail}")
        if version in (None, "", 0):
            return entry.versions[entry.default_version]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise NotFound(f"model '{name}' has no version '{version}' (versions are integers)") from None
        if number not in entry.versions:
            raise NotFound(f"model '{name}' has no version {number} (loaded: {sorted(entry.versions)})")
        return entry.versions[number]

    def all_ready(self) -> bool:
        return (
            bool(self.entries)
            and all(e.state in (READY, UNAVAILABLE) for e in self.entries.values())
            and any(e.state == READY for e in self.entries.values())
        )

    async def load_all(self) -> None:
        for directory in model_directories(self.repo):
            await self.load(directory.name)

    async def load(self, name: str) -> ModelEntry:
        """(Re)load a model from its directory; the old versions keep serving until the new one is warm."""
        async with self._lock:
            entry = self.entries.setdefault(name, ModelEntry(name))
            entry.generation += 1
            previous = dict(entry.versions)
            if not previous:
                entry.state = LOADING
            try:
                source = scan_model(self.repo / name)
                loaded = {}
                for version in source.versions:
                    loaded[version] = await asyncio.get_running_loop().run_in_executor(
                        None, self._load_version, source, version
                    )
            except Exception as exc:  # a model that cannot load is UNAVAILABLE; the others keep serving
                reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                log.error("model load failed", extra={"event": "model_load_failed", "model": name, "reason": reason})
                if not previous:
                    entry.state, entry.reason = UNAVAILABLE, reason
                    self.metrics.model_ready.labels(name, "").set(0)
                else:  # the loaded versions keep serving; the failed reload is still reported
                    entry.reason = f"reload failed, still serving versions {sorted(previous)}: {reason}"
                return entry
            for version in loaded.values():
                version.batcher.start()
            entry.versions, entry.default_version = loaded, source.default_version
            entry.state, entry.reason = READY, ""
            for version in loaded.values():
                self._report_loaded(version)
        for version, old in previous.items():
            self.metrics.model_ready.labels(name, str(version)).set(0 if version not in loaded else 1)
            asyncio.get_running_loop().create_task(old.close(self.options.drain_timeout_s))
        return entry

    def _load_version(self, source: ModelSource, version: int) -> LoadedVersion:
        started = time.perf_counter()
        path = source.model_path(version)
        try:
            check_external_data(path)
            runtime = ModelRuntime(path, source.config, self.options.providers, self.options.require_gpu)
        except ConfigError:
            raise
        except Exception as exc:  # the reason an operator reads must name the file that failed
            raise ConfigError(str(path), "", f"cannot load the ONNX model: {type(exc).__name__}: {exc}") from exc
        check_signature(source, version, runtime.signature)
        load_seconds = time.perf_counter() - started
        batching = source.config.batching
        warmup_seconds = warm_up_checked(str(find_config(source.directory)), runtime, source.labels)
        policy = BatchPolicy(
            max_batch_size=batching.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_us / 1e6,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            instances=batching.instances,
            max_queue_size=batching.max_queue_size,
            max_queue_bytes=batching.max_queue_bytes,
            inline_run_max_s=batching.inline_run_max_us / 1e6,
        )
        executor = ThreadPoolExecutor(max_workers=batching.instances, thread_name_prefix=f"ort-{source.name}")
        batcher = DynamicBatcher(runtime.run, executor, policy, self.metrics.batch_observer(source.name, str(version)))
        return LoadedVersion(source, version, runtime, batcher, executor, load_seconds, warmup_seconds)

    def _report_loaded(self, loaded: LoadedVersion) -> None:
        name, version = loaded.name, str(loaded.version)
        m = self.metrics
        m.model_ready.labels(name, version).set(1)
        m.model_provider.labels(name, version, loaded.runtime.provider).set(1)
        m.model_load_seconds.labels(name, version).set(loaded.load_seconds)
        m.model_warmup_seconds.labels(name, version).set(loaded.warmup_seconds)
        if loaded.runtime.cuda_fallback and "cuda" not in loaded.runtime.missing_providers:
            # A build without CUDA at all is warned about once by the server, not once per model.
            warning = (
                f"model {name} v{version}: CUDA was requested but the session runs on "
                f"{loaded.runtime.provider}; check onnxruntime-gpu and the CUDA libraries"
            )
            self.cuda_warnings.append(warning)
            log.warning(warning, extra={"event": "provider_fallback", "model": name, "version": version})
        log.info(
            "model ready",
            extra={
                "event": "model_ready",
                "model": name,
                "version": version,
                "provider": loaded.runtime.provider,
                "signature": loaded.runtime.signature.describe(),
                "load_s": round(loaded.load_seconds, 4),
                "warmup_s": round(loaded.warmup_seconds, 4),
            },
        )

    async def unload(self, name: str) -> None:
        """Stop taking requests for `name`, let queued ones finish, release the sessions."""
        async with self._lock:
            entry = self.entries.get(name)
            if entry is None:
                raise NotFound(f"unknown model '{name}'")
            entry.generation += 1
            generation = entry.generation
            entry.state, entry.reason = UNLOADING, "unload requested"
            versions, entry.versions = entry.versions, {}
        await asyncio.gather(*(v.close(self.options.drain_timeout_s) for v in versions.values()))
        for version in versions:
            if version not in entry.versions:  # a later load may serve the same version number again
                self.metrics.model_ready.labels(name, str(version)).set(0)
        if entry.generation != generation:  # a later load won; its outcome is what the index shows
            log.info("model unloaded, then loaded again", extra={"event": "model_unloaded", "model": name})
            return
        entry.state, entry.reason = UNAVAILABLE, "unloaded"
        log.info("model unloaded", extra={"event": "model_unloaded", "model": name})

    async def close(self, drain_timeout: float) -> None:
        versions = [v for e in self.entries.values() for v in e.versions.values()]
        await asyncio.gather(*(v.close(drain_timeout) for v in versions))
