"""The transport-free data plane: model resolution, validation, feature join and inference.

REST and gRPC are thin adapters over :class:`DataPlane`; library mode calls it directly.
Models are addressed by name and a version number or alias (default ``production``); an
alias is re-resolved against the registry at most once per ``alias_refresh`` seconds, so
the hot path stays in memory.

When an alias moves, the next request loads the new version (off the event loop) and the
alias switches to it in one assignment; requests already holding the old version finish
on it and its batching queue drains before it stops. With ``background_refresh`` (what
``learner predictor serve`` uses) requests never wait on the registry once an alias is
known: a request that finds the alias older than ``alias_refresh`` is served by the version
it has, and one background thread asks the registry again, loads the version the alias
now names and only then lets requests see it (a request to a warm model, on the event loop
or on a gRPC thread, never loads a version: ``load=False``). A registry that cannot be
reached then costs no request anything; the alias keeps its version and is asked again
``alias_refresh`` later. An alias nobody asked
for in ``stale_limit`` seconds (an idle spell) is resolved by the request, as without it.
Either way a model's aliases are read in one query (``ModelRegistry.aliases``).
A version requests name by number is retired the same way once none has named it for
``stale_limit`` seconds (see :meth:`DataPlane._sweep`).

A version that fails to load is remembered (for ``load_retry`` seconds, so a corrupt artifact is not re-read on every
request), counted in metrics and logged, and the alias keeps serving the version it had.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from openlearner.errors import Corrupt, Invalid, NotFound, OpenLearnerError, Unavailable
from openlearner.predictor.batching import BatchResult, BatchSettings, DynamicBatcher, Handoff, wait_for
from openlearner.predictor.metrics import PredictorMetrics
from openlearner.predictor.model import LoadedModel, load_model
from openlearner.predictor.predictionlog import PredictionLog, PredictionRecord, new_request_id
from openlearner.predictor.protocol import (
    BINARY_EXTENSION,
    DATATYPES,
    MAX_BATCH,
    InferenceRequest,
    InferenceResponse,
    InferInput,
    InferOutput,
    cast_array,
)
from openlearner.predictor.rollouts import RolloutSettings, in_canary, routing_key
from openlearner.predictor.threads import normal_policy
from openlearner.predictor.usual import UsualRoad
from openlearner.registry.aliases import PRODUCTION
from openlearner.registry.signature import TensorSpec
from openlearner.registry.store import no_such_alias

if TYPE_CHECKING:
    from openlearner.features.store import FeatureStore
    from openlearner.registry.store import ModelRegistry

__all__ = ["DEFAULT_ALIAS", "DataPlane", "LoadedModel", "Pending", "Route"]

log = logging.getLogger("openlearner.predictor")
DEFAULT_ALIAS = PRODUCTION
STALE_LIMIT = 10.0
"""Seconds: with background refresh, an alias cached longer ago is resolved by the caller, as
without it (after an idle spell the first request sees where the alias points now)."""
MAX_VERSION = 2**63 - 1
Tensors = dict[str, npt.NDArray[Any]]


def _alias_entry(
    name: str, alias: str, found: dict[str, int] | NotFound, asked: float
) -> tuple[int | None, str, float]:
    """What the cache keeps for ``alias`` given all of ``name``'s aliases, or the error that said
    the model is gone: (version or None, why None, when asked)."""
    if isinstance(found, NotFound):
        return None, str(found), asked
    number = found.get(alias)
    return number, "" if number is not None else str(no_such_alias(name, alias, found)), asked


def _is_number(ref: str) -> bool:
    return ref.isascii() and ref.isdigit()  # not str.isdigit alone: it takes '²' and other digits


class Route:
    """Where one request goes: the model that answers, in which role, and a shadow if any."""

    __slots__ = ("model", "role", "shadow")

    def __init__(self, model: LoadedModel, role: str = "primary", shadow: LoadedModel | None = None) -> None:
        self.model, self.role, self.shadow = model, role, shadow


class Pending:
    """A request queued for its batch (:meth:`DataPlane.begin`); answer it with :meth:`DataPlane.finish`."""

    __slots__ = ("began", "name", "request", "result", "route", "tensors")

    def __init__(
        self,
        name: str,
        route: Route,
        request: InferenceRequest,
        tensors: Tensors,
        result: asyncio.Future[BatchResult] | Handoff,
        began: float,
    ) -> None:
        self.name, self.route, self.request, self.tensors = name, route, request, tensors
        self.result = result
        """Done once the batch has run (often already on return from :meth:`DataPlane.begin`)."""
        self.began = began


class DataPlane:
    """Serves every registered model by name and version or alias."""

    def __init__(
        self,
        registry: ModelRegistry,
        features: FeatureStore | None = None,
        *,
        alias_refresh: float = 1.0,
        batching: BatchSettings | None = None,
        rollouts: RolloutSettings | None = None,
        prediction_log: PredictionLog | None = None,
        metrics: PredictorMetrics | None = None,
        strict: bool = False,
        load_retry: float = 30.0,
        background_refresh: bool = False,
    ) -> None:
        self.registry = registry
        self.features = features
        self.alias_refresh = alias_refresh
        self.batching = batching or BatchSettings()
        self.rollouts = rollouts or RolloutSettings()
        self.prediction_log = prediction_log
        self.metrics = metrics or PredictorMetrics()
        self.strict = strict
        self.load_retry = load_retry
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._aliases: dict[tuple[str, str], tuple[int | None, str, float]] = {}
        self._serving: dict[tuple[str, str], LoadedModel] = {}
        self._failed: dict[tuple[str, int], tuple[OpenLearnerError, float]] = {}
        self._lock = threading.RLock()
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self.background_refresh = background_refresh
        self.stale_limit = max(10 * alias_refresh, STALE_LIMIT)
        self._loading: dict[tuple[str, int], threading.Lock] = {}  # one gate per version being loaded
        self._refreshing: set[str] = set()  # models whose aliases are being asked again in the background
        self._refresh_lock = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None
        self._by_number: dict[tuple[str, int], float] = {}  # version → when a request last named it by number
        self._swept = time.monotonic()  # when versions named only by number were last looked over

    # -- arrivals (what batching waits for) -------------------------------------------------
    def announce(self) -> None:
        """A request has started arriving (a transport calls this before reading its body).

        Batches wait for company only while announced requests are on their way; settle
        each with :meth:`settle` or by passing ``announced=True`` to :meth:`infer_async`,
        :meth:`begin` or :meth:`infer_batched`.
        """
        with self._arriving_lock:
            self._arriving += 1

    def settle(self) -> None:
        """An announced request is queued, or will not be (it failed before)."""
        with self._arriving_lock:
            self._arriving -= 1

    def arriving(self) -> int:
        """Requests announced and not yet settled."""
        return self._arriving

    # -- resolution ------------------------------------------------------------------------
    def _number(self, name: str, ref: str) -> int:
        # Beyond any stored version, and beyond what the database can compare; a reference of
        # thousands of digits is not even read as a number (Python refuses past 4,300).
        digits = ref.lstrip("0") or "0"
        if len(digits) > len(str(MAX_VERSION)) or (number := int(digits)) > MAX_VERSION:
            known = ", ".join(str(v.version) for v in self.registry.versions(name))
            shown = ref if len(ref) <= 40 else f"{ref[:20]}…({len(ref)} digits)"
            raise NotFound(f"model {name!r} has no version {shown}; versions: {known}")
        return number

    def _alias_version(self, name: str, alias: str) -> int | None:
        """The version ``alias`` points to (cached ``alias_refresh`` s); None if the model lacks it.

        With ``background_refresh``, a known alias older than that is answered from the
        cache while one background thread asks the registry (:meth:`_revalidate`).
        """
        key = (name, alias)
        cached = self._aliases.get(key)
        if cached is not None:
            now = time.monotonic()
            # _usable's first test inline: this runs for every request.
            if now - cached[2] < self.alias_refresh or self._usable(key, cached, now):
                return cached[0]
        asked = time.monotonic()
        found: dict[str, int] | NotFound
        try:
            found = self.registry.aliases(name)
        except NotFound as exc:
            if cached is None and not self._known(name):
                raise  # an unknown model: nothing to remember
            found = exc
        except OpenLearnerError:  # a name the registry refuses, say: the caller hears why
            raise
        except Exception as exc:  # the registry is unreachable, say: keep what was known, ask later
            if cached is None:
                raise _unreachable(f"resolve {name}'s alias {alias!r}", exc) from exc
            log.warning("could not re-resolve %s's alias %s, serving what it named: %s", name, alias, exc)
            self._remember(key, (cached[0], cached[1], asked))
            return cached[0]
        cached = _alias_entry(name, alias, found, asked)
        self._remember(key, cached)
        if asked - self._swept >= self.stale_limit:
            self._sweep(asked)
        return cached[0]

    def _usable(self, key: tuple[str, str], cached: tuple[int | None, str, float], now: float) -> bool:
        """Whether a cached answer for alias ``key`` may serve now: younger than ``alias_refresh``,
        or, with ``background_refresh``, younger than ``stale_limit`` (a refresh is started)."""
        age = now - cached[2]
        if age < self.alias_refresh:
            return True
        if self.background_refresh and age < self.stale_limit:
            self._revalidate(key)
            return True
        return False

    def _remember(self, key: tuple[str, str], entry: tuple[int | None, str, float]) -> None:
        if len(self._aliases) > 10_000:  # names clients made up must not grow memory without end
            self._aliases.clear()
        self._aliases[key] = entry

    def _revalidate(self, key: tuple[str, str]) -> None:
        """Ask the registry about ``key``'s model again on the background thread, unless that is under way."""
        name = key[0]
        with self._refresh_lock:
            if name in self._refreshing or not self.background_refresh:  # under way, or closed
                return
            self._refreshing.add(name)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(  # (started by a gRPC thread: not its policy)
                    1, thread_name_prefix="openlearner-alias", initializer=normal_policy
                )
            refresher = self._refresher
        try:
            refresher.submit(self._refresh, name)
        except RuntimeError:  # closed: the cached answers stand
            with self._refresh_lock:
                self._refreshing.discard(name)

    def _refresh(self, name: str) -> None:
        """The background half of :meth:`_alias_version`, for every cached alias of model ``name``
        at once (one registry query). The version an alias now names is loaded before requests
        can see the move, so none of them waits for the load."""
        try:
            keys = [key for key in list(self._aliases) if key[0] == name]
            found: dict[str, int] | NotFound
            try:
                found = self.registry.aliases(name)
            except NotFound as exc:  # the model itself was deleted
                found = exc
            except Exception as exc:  # the registry is unreachable, say: keep serving, ask later
                log.warning("could not re-resolve %s's aliases, serving the versions they had: %s", name, exc)
                now = time.monotonic()
                for key in keys:
                    cached = self._aliases.get(key)
                    if cached is not None:
                        self._remember(key, (cached[0], cached[1], now))
                return
            asked = time.monotonic()
            before = {key: self._aliases.get(key) for key in keys}
            for key in keys:
                number = None if isinstance(found, NotFound) else found.get(key[1])
                old = before[key]
                if number is not None and (name, number) not in self._loaded:
                    try:
                        self._version(name, number)
                    except OpenLearnerError:
                        # A bad version is remembered, counted and logged by _version, and the
                        # alias keeps its version. Otherwise (the registry did not answer) the
                        # alias keeps its old answer until the next refresh asks again.
                        if self._recent_failure((name, number)) is None and old is not None:
                            self._remember(key, (old[0], old[1], asked))
                            continue
                self._remember(key, _alias_entry(name, key[1], found, asked))
            for key in keys:  # every alias's new answer first: a version one still names stays
                self._settle_alias(key, before[key])
            if asked - self._swept >= self.stale_limit:
                self._sweep(asked)
        except Exception:  # a background thread has no caller to tell; the next refresh tries again
            log.exception("re-resolving %s's aliases failed", name)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(name)

    def _settle_alias(self, key: tuple[str, str], before: tuple[int | None, str, float] | None) -> None:
        """After a refresh: switch a served alias to the version it names now, as a request
        would (which retires the old one), or retire what an unserved alias named before."""
        name, alias = key
        if key in self._serving:
            try:
                self.model(name, alias, load=False)
            except NotFound:  # the alias is gone: nothing serves it any more
                with self._lock:
                    gone = self._serving.pop(key, None)
                if gone is not None:
                    self._retire(gone)
            except OpenLearnerError:  # not loaded after all: the alias keeps its version meanwhile
                pass
        elif before is not None and before[0] is not None:
            now = self._aliases.get(key)
            old = self._loaded.get((name, before[0]))
            if now is not None and now[0] != before[0] and old is not None:
                self._retire(old)  # unless something else still serves it or names it

    def _known(self, name: str) -> bool:
        # Snapshots (one C-level copy each): the background refresh may add entries meanwhile.
        return any(key[0] == name for key in list(self._loaded)) or any(
            key[0] == name for key in list(self._aliases)
        )

    def _require_alias(self, name: str, alias: str) -> int:
        number = self._alias_version(name, alias)
        if number is None:
            raise NotFound(self._aliases[(name, alias)][1])
        return number

    def warm(self, name: str, ref: str | None = None) -> bool:
        """Whether serving ``name`` at ``ref`` needs no registry query and no loading right now.

        With ``background_refresh`` an alias past ``alias_refresh`` still counts (its refresh
        is started here, and requests are served by the version it has meanwhile).
        """
        ref = ref or DEFAULT_ALIAS
        if ref != DEFAULT_ALIAS and _is_number(ref):
            return len(ref) < 20 and (name, int(ref)) in self._loaded
        aliases = [ref]
        if ref == DEFAULT_ALIAS:
            aliases += [self.rollouts.canary_alias, self.rollouts.shadow_alias]
        now = time.monotonic()
        for alias in aliases:
            cached = self._aliases.get((name, alias))
            if cached is None:
                return False
            # _usable's first test inline: this runs for every request.
            if now - cached[2] >= self.alias_refresh and not self._usable((name, alias), cached, now):
                return False
            if cached[0] is not None and (name, cached[0]) not in self._loaded:
                failed = self._failed.get((name, cached[0]))
                if failed is None:
                    return False
                if now - failed[1] >= self.load_retry:
                    if not self.background_refresh:
                        return False
                    self._revalidate((name, alias))  # tried again off the request path
        return True

    def model(self, name: str, ref: str | None = None, *, load: bool = True) -> LoadedModel:
        """The loaded model for ``name`` at version number or alias ``ref`` (default production).

        ``load=False`` (the hot path of a warm model) never loads a version: if the one asked for
        is not loaded yet, the alias keeps the version it serves while the background thread
        loads the new one, and a version that no alias serves yet is ``Unavailable``.
        """
        ref = ref or DEFAULT_ALIAS
        if ref != DEFAULT_ALIAS and _is_number(ref):
            number = self._number(name, ref)
            loaded = self._version(name, number, load=load)
            now = time.monotonic()
            with self._lock:  # (kept from retiring a while; _retire looks under this lock)
                self._by_number[(name, number)] = now
                swept = self._loaded.get((name, number)) is not loaded
            if swept and load:  # retired between the two: load it again (a closed one still answers)
                loaded = self._version(name, number)
            if now - self._swept >= self.stale_limit:
                self._sweep(now)
            return loaded
        number = self._require_alias(name, ref)
        current = self._serving.get((name, ref))
        if current is not None and current.number == number:
            return current
        try:
            loaded = self._version(name, number, load=load)
        except (Corrupt, Unavailable):
            if not load and self._recent_failure((name, number)) is None:
                self._revalidate((name, ref))  # loads it off the request path
            if current is None:
                raise
            return current  # the move is reported (log, metrics); the alias keeps its version
        with self._lock:
            previous = self._serving.get((name, ref))
            self._serving[(name, ref)] = loaded  # the switch: one assignment
        if previous is not None and previous is not loaded:
            self._retire(previous)
        return loaded

    def _version(self, name: str, number: int, *, load: bool = True) -> LoadedModel:
        key = (name, number)
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded
        self._raise_recent_failure(key)
        if not load:
            raise Unavailable(f"{name} version {number} is not loaded yet; retry in a moment")
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        # One load per version at a time, holding only its own gate: requests (and the alias
        # switch, which takes _lock) go on meanwhile.
        with gate:
            try:
                loaded = self._loaded.get(key)
                if loaded is not None:
                    return loaded
                self._raise_recent_failure(key)
                try:
                    version = self.registry.get(name, version=number)
                except OpenLearnerError:
                    raise
                except Exception as exc:  # the registry is unreachable, say: not the version's fault
                    raise _unreachable(f"load {name} version {number}", exc) from exc
                try:
                    loaded = load_model(self.registry, self.features, version)
                except (Corrupt, Unavailable) as exc:
                    self._failed[key] = (exc, time.monotonic())
                    self.metrics.load_failures.labels(name, str(number)).inc()
                    log.error("not serving %s version %d: %s", name, number, exc)
                    raise
                self._failed.pop(key, None)
                self._start(loaded)
                with self._lock:
                    self._loaded[key] = loaded
            finally:  # loaded or failed: the gate is done with (a failed version must not keep one)
                with self._lock:
                    if self._loading.get(key) is gate:
                        del self._loading[key]
        return loaded

    def _recent_failure(self, key: tuple[str, int]) -> OpenLearnerError | None:
        """The error a version failed to load with, if that was under ``load_retry`` ago."""
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[1] < self.load_retry:
            return failed[0]
        return None

    def _raise_recent_failure(self, key: tuple[str, int]) -> None:
        failed = self._recent_failure(key)
        if failed is not None:
            raise type(failed)(str(failed))

    def _start(self, loaded: LoadedModel) -> None:
        name, version = loaded.name, str(loaded.number)
        metrics = self.metrics
        join = loaded.join
        if join is not None:
            metrics.watch_misses(name, version, lambda: join.misses)
        loaded.start(self.batching, metrics.batch_size.labels(name, version).observe, self.arriving)
        batcher = loaded.batcher
        assert batcher is not None
        metrics.watch_queue(name, version, lambda: batcher.depth)

    def _retire(self, old: LoadedModel) -> None:
        """Stop serving ``old`` once no alias serves or names it and no request has named it by
        number for ``stale_limit`` seconds: queued requests are still answered."""
        with self._lock:
            used = self._by_number.get((old.name, old.number))
            if used is not None and time.monotonic() - used < self.stale_limit:
                return  # clients pinned to this version are using it
            if any(model is old for model in self._serving.values()) or any(
                key[0] == old.name and entry[0] == old.number for key, entry in list(self._aliases.items())
            ):  # still served, or named by an alias (a shadow or canary kept on it, say)
                return
            if self._loaded.get((old.name, old.number)) is old:
                del self._loaded[(old.name, old.number)]
        old.close()
        self.metrics.forget_queue(old.name, str(old.number))
        log.info("%s version %d retired", old.name, old.number)

    def _sweep(self, now: float) -> None:
        """Retire the versions that only requests by number kept loaded, once none has named
        them for ``stale_limit`` seconds (a version an alias serves or names stays).

        Run as requests come: by number (at most once per ``stale_limit``) and whenever an
        alias is asked of the registry, so pinned versions do not pile up in memory.
        """
        self._swept = now
        for key, used in list(self._by_number.items()):
            if now - used < self.stale_limit:
                continue
            with self._lock:
                if self._by_number.get(key) != used:
                    continue  # named again meanwhile
                del self._by_number[key]
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._retire(loaded)  # which keeps it if an alias serves or names it

    def failures(self) -> dict[str, str]:
        """Versions that failed to load recently (``name:version`` → why)."""
        return {f"{name}:{number}": str(exc) for (name, number), (exc, _) in self._failed.items()}

    def preload(self, alias: str = DEFAULT_ALIAS) -> list[str]:
        """Load every model's ``alias`` version now; returns what was loaded.

        Models without the alias are skipped, and so are models this predictor cannot serve
        (a corrupt or missing graph, a Feature Store model without a Feature Store): their
        requests answer 503 instead of keeping every other model from being served. For the
        default alias the rollout aliases (canary, shadow) are resolved and loaded too, so
        that the first request finds its model :meth:`warm`.
        """
        loaded = []
        for name in self.registry.models():
            try:
                model = self.model(name, alias)
            except NotFound:
                continue
            except (Unavailable, Corrupt):
                continue  # logged and counted by _version
            loaded.append(f"{name}:{model.number}")
            if alias == DEFAULT_ALIAS:
                loaded += self._preload_rollouts(name, model)
        return loaded

    def _preload_rollouts(self, name: str, serving: LoadedModel) -> list[str]:
        """Resolve (and load) ``name``'s canary and shadow aliases; what was loaded besides ``serving``."""
        loaded = []
        for rollout in (self.rollouts.canary_alias, self.rollouts.shadow_alias):
            try:
                extra = self._optional(name, rollout)
            except Exception as exc:  # the registry, say: the first request asks again
                log.warning("could not resolve %s's %s alias at startup: %s", name, rollout, exc)
                continue
            if extra is not None and extra is not serving:
                loaded.append(f"{name}:{extra.number} ({rollout})")
        return loaded

    def close(self) -> None:
        """Drain and stop every batching queue, and write the prediction log."""
        with self._refresh_lock:
            refresher, self._refresher = self._refresher, None
            self.background_refresh = False  # from now on an alias is asked in the caller's thread
        if refresher is not None:
            refresher.shutdown(wait=True, cancel_futures=True)  # a load under way finishes first
        with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
            self._serving.clear()
        for model in models:
            model.close()
        for model in models:
            if model.batcher is not None:
                model.batcher.join(timeout=30)
        if self.prediction_log is not None:
            self.prediction_log.close()

    # -- rollouts --------------------------------------------------------------------------
    def _optional(self, name: str, alias: str, load: bool = True) -> LoadedModel | None:
        try:
            if self._alias_version(name, alias) is None:
                return None
            return self.model(name, alias, load=load)
        except (NotFound, Corrupt, Unavailable):
            return None

    def route(self, name: str, ref: str | None, request: InferenceRequest, *, load: bool = True) -> Route:
        """The version that answers ``request`` (a canary for part of the traffic) and any shadow.

        ``load=False``: see :meth:`model`; a canary or shadow not loaded yet is skipped.
        """
        model = self.model(name, ref, load=load)
        if (ref or DEFAULT_ALIAS) != DEFAULT_ALIAS:
            return Route(model)
        route = Route(model)
        canary = self._optional(name, self.rollouts.canary_alias, load)
        share = self.rollouts.percent_for(canary) if canary is not None else 0.0
        if canary is not None and canary is not model and in_canary(routing_key(model, request), share):
            route = Route(canary, "canary")
        shadow = self._optional(name, self.rollouts.shadow_alias, load)
        if shadow is not None and shadow is not route.model:
            route.shadow = shadow
        return route

    # -- metadata --------------------------------------------------------------------------
    @staticmethod
    def server_metadata() -> dict[str, Any]:
        """``GET /v2``."""
        from openlearner import __version__

        return {"name": "openlearner", "version": __version__, "extensions": [BINARY_EXTENSION]}

    def model_metadata(self, name: str, ref: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{ref}]``: the serving signature."""
        model = self.model(name, ref)
        versions = [str(v.version) for v in self.registry.versions(name) if v.status != "archived"]
        return {
            "name": name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor(t) for t in model.inputs],
            "outputs": [_tensor(t) for t in model.outputs],
        }

    # -- inference -------------------------------------------------------------------------
    def infer(
        self, name: str, ref: str | None, request: InferenceRequest, *, route: Route | None = None
    ) -> InferenceResponse:
        """Answer ``request`` in the calling thread, without batching (library mode, scripts).

        ``route``: the version (and shadow) :meth:`route` chose for it already."""
        began = time.perf_counter()
        if route is None:
            route = self.route(name, ref, request)
        tensors, rows = _check_inputs(route.model.inputs, request)
        outputs, matrix, missing = route.model.run(tensors, rows)
        self.metrics.batch_size.labels(name, str(route.model.number)).observe(rows)
        result = BatchResult(outputs, matrix, missing, rows)
        return self._answer(name, route, request, tensors, result, began)

    def infer_batched(
        self,
        name: str,
        ref: str | None,
        request: InferenceRequest,
        *,
        announced: bool = False,
        call_ends: Callable[[Callable[[], object]], bool] | None = None,
    ) -> InferenceResponse:
        """Answer ``request`` through the model's dynamic batcher, the calling thread waiting for
        its batch (a transport that serves each request on a thread of its own: gRPC).

        Resolves and loads the version in this thread only when it is not :meth:`warm`: a warm
        one is served as on the event loop (``load=False``: a version an alias moved to is
        loaded by the background thread, never by a request). The batch waits up to
        ``max_delay`` for company, or until ``max_batch_size`` rows fill it, so requests
        waiting on other threads meanwhile share its run; a full queue raises ``Overloaded``.
        ``announced``: the transport called :meth:`announce` for this request; it is settled
        here, just before the request is queued (or fails), and its batch waits for company
        only while other announced requests are on their way (a lone request runs at once).
        ``call_ends``: as :func:`~openlearner.predictor.batching.wait_for` takes it (gRPC's
        ``context.add_callback``); a call that ends before its batch starts is left out of
        it, and this raises :class:`~openlearner.predictor.batching.CallEnded`.
        """
        began = time.perf_counter()
        try:
            route = self.route(name, ref, request, load=not self.warm(name, ref))
            tensors, rows = _check_inputs(route.model.inputs, request)
        finally:
            if announced:
                self.settle()
        result = wait_for(route.model.submit(tensors, rows, adaptive=announced), call_ends)
        return self._answer(name, route, request, tensors, result, began)

    async def infer_async(
        self,
        name: str,
        ref: str | None,
        request: InferenceRequest,
        *,
        announced: bool = False,
    ) -> InferenceResponse:
        """Answer ``request`` through the model's dynamic batcher, on an event loop (REST).

        Resolving or loading a model that is not warm runs in a worker thread, so the event
        loop keeps answering; a full queue raises ``Overloaded`` (503, retry after a second).
        ``announced``: the transport called :meth:`announce` for this request; it is settled
        here, just before the request is queued (or fails). Announced requests batch
        adaptively: a batch waits for company only while announced requests are on their
        way, and for a cheap model (recent batches under ``INLINE_BUDGET``) the requests
        read in one event-loop iteration form one batch that runs on the loop itself
        (:meth:`DynamicBatcher.gather`). Requests not announced wait up to ``max_delay``
        for company: on the event loop for a cheap model (``gather(patient=True)``), else
        on the model's batching thread.
        """
        began = time.perf_counter()
        route = None
        if not self.warm(name, ref):
            try:
                route = await asyncio.to_thread(self.route, name, ref, request)
            except BaseException:
                if announced:
                    self.settle()
                raise
        pending = self.begin(name, ref, request, announced=announced, route=route, began=began)
        assert not isinstance(pending.result, Handoff)  # not asked for: an asyncio future
        await pending.result
        return self.finish(pending)

    def begin(
        self,
        name: str,
        ref: str | None,
        request: InferenceRequest,
        *,
        announced: bool = False,
        route: Route | None = None,
        began: float | None = None,
        handoff: bool = False,
    ) -> Pending:
        """Check ``request`` and queue it for its batch, on the event loop, never loading a version.

        For a model that is :meth:`warm` (or with the ``route`` already resolved); see
        :meth:`infer_async` for ``announced``. The returned :class:`Pending` is often done
        already (a lone request to a cheap model runs here); :meth:`finish` answers it.
        ``handoff``: the caller only adds callbacks to ``pending.result`` (never awaits it), so
        a batch run on the loop may call them as it finishes (a :class:`Handoff`).
        Raises what :meth:`infer_async` raises.
        """
        began = time.perf_counter() if began is None else began
        try:
            if route is None:
                route = self.route(name, ref, request, load=False)
            tensors, rows = _check_inputs(route.model.inputs, request)
        finally:
            if announced:
                self.settle()
        model, batcher = route.model, route.model.batcher
        if batcher is not None and batcher.cheap and rows <= self.batching.max_batch_size:
            # A cheap model: batch on the event loop and run there (no thread hops).
            result: asyncio.Future[BatchResult] | Handoff = batcher.gather(
                tensors, rows, handoff=handoff, patient=not announced
            )
        else:
            result = asyncio.wrap_future(model.submit(tensors, rows, adaptive=announced))
        return Pending(name, route, request, tensors, result, began)

    def finish(self, pending: Pending) -> InferenceResponse:
        """The response to a request :meth:`begin` queued, once ``pending.result`` is done (raises its error)."""
        return self._answer(
            pending.name,
            pending.route,
            pending.request,
            pending.tensors,
            pending.result.result(),
            pending.began,
        )

    def count_error(self, name: str, ref: str | None, status: int) -> None:
        """Count a request answered with ``status`` (unknown models, and versions neither loaded
        nor failed, share one label: clients must not mint series by asking for them)."""
        ref = ref or DEFAULT_ALIAS
        if not self._known(name):
            name, version = "", ""
        elif _is_number(ref):
            number = int(ref) if len(ref) < 20 else -1
            known = (name, number) in self._loaded or (name, number) in self._failed
            version = str(number) if known else ""
        else:
            cached = self._aliases.get((name, ref))
            version = str(cached[0]) if cached is not None and cached[0] is not None else ""
        self.metrics.errors.labels(name, version, str(status)).inc()

    def usual(self, name: str, ref: str | None) -> tuple[LoadedModel, UsualRoad, DynamicBatcher] | None:
        """The version serving ``name`` at ``ref``, its :class:`UsualRoad` and its batcher, when a
        request there needs no rollout (the default alias with neither a canary nor a shadow, or
        any other reference), the model has a usual request and it is cheap (its batches run in
        under :data:`~openlearner.predictor.batching.INLINE_BUDGET`: REST runs them on the event
        loop, and the road's savings weigh only for so cheap a model); else None. For a
        :meth:`warm` model (never loads, never asks the registry)."""
        ref = ref or DEFAULT_ALIAS
        if ref == DEFAULT_ALIAS:
            for alias in (self.rollouts.canary_alias, self.rollouts.shadow_alias):
                cached = self._aliases.get((name, alias))
                if cached is None or cached[0] is not None:
                    return None  # a rollout to consider: the general road routes it
        try:
            model = self.model(name, ref, load=False)
        except OpenLearnerError:
            return None  # the general road says why
        road, batcher = model.road, model.batcher
        if road is None or batcher is None or not batcher.cheap:
            return None
        return model, road, batcher

    def served(
        self,
        name: str,
        model: LoadedModel,
        tensors: Tensors,
        result: BatchResult,
        began: float,
        request_id: str | None,
    ) -> str | None:
        """Account for a request the :class:`UsualRoad` answers as :meth:`finish` would: refuse
        it in strict mode when its row lacks online features, count it, log it if sampled.
        Returns the id to answer with."""
        _refuse_missing(result, self.strict)
        return self._account(name, model, "primary", request_id, tensors, result, began)

    def _account(
        self,
        name: str,
        model: LoadedModel,
        role: str,
        request_id: str | None,
        tensors: Tensors,
        result: BatchResult,
        began: float,
        shadowed: bool = False,
    ) -> str | None:
        """Count an answered request and its latency, and log it if sampled (always when
        ``shadowed``); the id to answer with: a client that sent none learns the one its
        prediction is logged under."""
        if model.counted is None:  # looked up once per version, not per request
            model.counted = self.metrics.served(name, str(model.number))
        model.counted.add(time.perf_counter() - began)
        log_it = self.prediction_log is not None and (shadowed or self.prediction_log.sampled())
        if log_it or shadowed:
            request_id = request_id or new_request_id()
            if log_it:
                self._log(model, role, request_id, tensors, result)
        return request_id

    def _answer(
        self,
        name: str,
        route: Route,
        request: InferenceRequest,
        tensors: Tensors,
        result: BatchResult,
        began: float,
    ) -> InferenceResponse:
        model = route.model
        strict = request.parameters.get("strict", self.strict)
        if not isinstance(strict, bool):
            raise Invalid("parameter 'strict' must be true or false")
        _refuse_missing(result, strict)
        outputs = result.outputs
        wanted = request.outputs or list(outputs)
        unknown = [o for o in wanted if o not in outputs]
        if unknown:
            raise Invalid(f"unknown output(s) {', '.join(unknown)}; this model gives {', '.join(outputs)}")
        shadow = route.shadow
        response_id = self._account(
            name, model, route.role, request.id, tensors, result, began, shadow is not None
        )
        if shadow is not None:
            assert response_id is not None
            self._mirror(shadow, request, response_id)
        return InferenceResponse(
            model_name=name,
            model_version=str(model.number),
            id=response_id,
            outputs=[InferOutput(o, model.datatype(o), list(outputs[o].shape), outputs[o]) for o in wanted],
        )

    def _log(
        self, model: LoadedModel, role: str, request_id: str, tensors: Tensors, result: BatchResult
    ) -> None:
        assert self.prediction_log is not None
        columns = model.version.signature.columns if model.join is not None else None
        self.prediction_log.append(
            PredictionRecord(
                request_id, model.name, model.number, role, tensors, result.outputs, result.matrix, columns
            )
        )

    def _mirror(self, shadow: LoadedModel, request: InferenceRequest, request_id: str) -> None:
        """Run ``request`` on the shadow version in the background; log it, never return it."""
        label = (shadow.name, str(shadow.number))
        try:
            tensors, rows = _shadow_inputs(shadow, request)
            future = shadow.submit(tensors, rows)
        except OpenLearnerError as exc:
            self.metrics.shadow.labels(*label, "refused").inc()
            log.warning("shadow %s:%s refused a mirrored request: %s", *label, exc)
            return

        def done(finished: Any) -> None:
            if finished.exception() is not None:
                self.metrics.shadow.labels(*label, "failed").inc()
                log.warning("shadow %s:%s failed: %s", *label, finished.exception())
                return
            self.metrics.shadow.labels(*label, "answered").inc()
            if self.prediction_log is not None:
                self._log(shadow, "shadow", request_id, tensors, finished.result())

        future.add_done_callback(done)


def _shadow_inputs(shadow: LoadedModel, request: InferenceRequest) -> tuple[Tensors, int]:
    """A mirrored request's tensors for ``shadow``: as sent when they fit its signature, else,
    when only datatypes differ, each such input as the datatype the shadow declares, with a
    JSON request's checks (:func:`~openlearner.predictor.protocol.cast_array`). Raises ``Invalid``."""
    try:
        return _check_inputs(shadow.inputs, request)
    except Invalid:
        declared = {t.name: t.datatype for t in shadow.inputs}
        if sorted(i.name for i in request.inputs) != sorted(declared) or all(
            declared[i.name] == i.datatype for i in request.inputs
        ):
            raise  # not a matter of datatypes
    converted = []
    for given in request.inputs:
        datatype = declared[given.name]
        if given.datatype == datatype:
            converted.append(given)
            continue
        try:
            data = cast_array(given.data, datatype)
        except ValueError as exc:
            raise Invalid(f"input {given.name!r} does not fit the shadow's {datatype}: {exc}") from None
        converted.append(InferInput(given.name, datatype, given.shape, data))
    return _check_inputs(shadow.inputs, InferenceRequest(converted))


def _refuse_missing(result: BatchResult, strict: bool) -> None:
    """In strict mode, refuse a request whose rows lacked online features, naming the first."""
    if strict and result.missing:
        row, why = next(iter(sorted(result.missing.items())))
        raise Invalid(
            f"strict mode: row {row}: {why}; {len(result.missing)} row(s) lack online features "
            "(materialize the feature views, or send parameters.strict = false to serve defaults)"
        )


def _unreachable(what: str, exc: Exception) -> Unavailable:
    """The error for a registry that failed with ``exc`` (a driver's, say) while asked to ``what``."""
    return Unavailable(f"cannot {what}: the model registry did not answer ({exc}); retry in a moment")


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}


def _check_inputs(expected: list[TensorSpec], request: InferenceRequest) -> tuple[Tensors, int]:
    """Match request tensors to the signature by name, datatype and shape; return them and the batch size."""
    inputs = request.inputs
    if len(inputs) == len(expected) and all(
        i.name == t.name and i.datatype == t.datatype and len(t.shape) == 1 and len(i.shape) == 1
        for i, t in zip(inputs, expected, strict=True)
    ):  # the usual request: one column per input, in the signature's order
        count = inputs[0].shape[0]
        if 0 < count <= MAX_BATCH and all(i.shape[0] == count for i in inputs):
            return {i.name: i.data for i in inputs}, count
    if len(inputs) == 1 == len(expected):  # the usual raw tensor: one input, its shape as declared
        tensor, spec = inputs[0], expected[0]
        shape, declared = tensor.shape, spec.shape
        if (
            tensor.name == spec.name
            and tensor.datatype == spec.datatype
            and len(shape) == len(declared) > 1
            and 0 < shape[0] <= MAX_BATCH
            and all(d == -1 or d == s for d, s in zip(declared, shape, strict=True))
        ):
            return {spec.name: tensor.data}, shape[0]
    given = {i.name: i for i in inputs}
    wanted = {t.name for t in expected}

    def signature() -> str:  # formatted only for an error message, not on every request
        return ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in expected)

    unknown = sorted(set(given) - wanted)
    missing = [t.name for t in expected if t.name not in given]
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown input(s) {', '.join(unknown)}")
        raise Invalid(f"{'; '.join(problems)}; the model expects: {signature()}")
    tensors: Tensors = {}
    rows: int | None = None
    for spec in expected:
        tensor = given[spec.name]
        if tensor.datatype != spec.datatype:
            raise Invalid(
                f"input {spec.name!r} is {tensor.datatype} but the model expects {spec.datatype}; signature: {signature()}"
            )
        shape = tensor.shape
        if len(spec.shape) == 1:
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise Invalid(f"input {spec.name!r} has shape {shape}; expected [batch] or [batch, 1]")
            data = tensor.data.reshape(-1)
        else:
            if len(shape) != len(spec.shape) or any(
                s != -1 and s != d for s, d in zip(spec.shape, shape, strict=True)
            ):
                raise Invalid(f"input {spec.name!r} has shape {shape}; expected {spec.shape}")
            data = tensor.data
        if rows is not None and data.shape[0] != rows:
            raise Invalid(f"inputs disagree on the batch size ({rows} vs {data.shape[0]} for {spec.name!r})")
        rows = int(data.shape[0])
        tensors[spec.name] = data.astype(DATATYPES[spec.datatype], copy=False)
    assert rows is not None
    if rows == 0:
        raise Invalid("the batch is empty; send at least one row")
    if rows > MAX_BATCH:
        raise Invalid(f"a request may carry at most {MAX_BATCH} rows, not {rows}")
    return tensors, rows
