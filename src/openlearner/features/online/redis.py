"""The Redis online store: one hash per view, one field per entity, for replicas that share values.

Layout: key ``<namespace>:<view>``, field = the encoded entity key (``[1]``, ``[1,"fr"]``),
value = the event time in µs as an 8-byte big-endian signed integer followed by the JSON
document of the entity's feature values (the same document the SQLite store keeps).

A read of any number of keys is one ``HMGET``: one round trip, one atomic snapshot. A write
is one ``MULTI``/``EXEC`` transaction, so readers see the old values or the new ones, never
a mix, and a write cut off before ``EXEC`` changes nothing. The price is that Redis serves
nothing else while it applies a large write.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from openlearner.errors import Conflict, Corrupt, Invalid, Unavailable
from openlearner.features.online.base import OnlineStore, encode_rows

if TYPE_CHECKING:
    import redis

__all__ = ["RedisOnlineStore"]

_TIME = struct.Struct(">q")
_FIELDS_PER_HSET = 1_000  # bounds one command's size; every HSET of a write shares one transaction


class RedisOnlineStore(OnlineStore):
    """Online values in a Redis server, under keys prefixed by ``namespace``; safe to share between threads.

    Nothing connects until the first read or write; an unreachable server then raises
    ``Unavailable``.
    """

    def __init__(self, url: str, namespace: str) -> None:
        try:
            import redis
            from redis.backoff import ExponentialWithJitterBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise Unavailable(
                "the redis online store needs the redis package: pip install 'openlearner[redis]', "
                "or set OPENLEARNER_ONLINE_STORE=sqlite"
            ) from exc
        self.url = url
        self.namespace = namespace
        self._shown_url = _without_password(url)
        self._down = (redis.ConnectionError, redis.TimeoutError)
        self._response_error = redis.ResponseError
        try:
            # Two quick retries mend a dropped idle connection; a server that is down fails fast
            # (the client's default retries for seconds, too long for the prediction path).
            self._client: redis.Redis = redis.Redis.from_url(
                url, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)
            )
        except ValueError as exc:
            raise Invalid(
                f"OPENLEARNER_REDIS_URL {self._shown_url!r} is not a Redis URL ({exc}); "
                "use redis://host:port/db, rediss://... or unix:///path"
            ) from exc

    def _key(self, view: str) -> str:
        return f"{self.namespace}:{view}"

    @contextmanager
    def _server(self, key: str) -> Iterator[None]:
        """Turn the client's errors into OpenLearner's: a server down, a key of another type."""
        try:
            yield
        except self._down as exc:
            raise Unavailable(
                f"the Redis online store at {self._shown_url} is unreachable ({exc}); start Redis there, "
                "set OPENLEARNER_REDIS_URL to a running server, or use OPENLEARNER_ONLINE_STORE=sqlite"
            ) from exc
        except self._response_error as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise Conflict(
                f"Redis key {key!r} at {self._shown_url} holds something other than OpenLearner's "
                "online values; set OPENLEARNER_REDIS_NAMESPACE to a prefix nothing else uses"
            ) from exc

    def write(self, view: str, join_keys: Sequence[str], rows: pa.Table) -> int:
        """Upsert rows in one MULTI/EXEC transaction (all or nothing); entities not in ``rows`` stay."""
        values = {key: _TIME.pack(ts) + doc for key, ts, doc in encode_rows(view, join_keys, rows)}
        if not values:
            return 0
        key, fields = self._key(view), list(values.items())
        with self._server(key), self._client.pipeline(transaction=True) as pipe:
            for start in range(0, len(fields), _FIELDS_PER_HSET):
                pipe.hset(key, mapping=dict(fields[start : start + _FIELDS_PER_HSET]))
            pipe.execute()
        return rows.num_rows

    def read_keys(self, view: str, keys: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Encoded key → (event time in µs, values) for the keys that are present: one HMGET."""
        return self.read_views([(view, keys)])[0]

    def read_views(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[dict[str, tuple[int, dict[str, Any]]]]:
        """Several views' keys in one round trip: their HMGETs pipelined together."""
        wanted = [(self._key(view), list(dict.fromkeys(keys))) for view, keys in requests]
        asked = [(key, unique) for key, unique in wanted if unique]
        replies: list[list[bytes | None]] = []
        if asked:
            with self._server(asked[0][0]):
                if len(asked) == 1:
                    replies = [self._client.hmget(*asked[0])]  # type: ignore[list-item]
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for key, unique in asked:
                        pipe.hmget(key, unique)
                    replies = pipe.execute()
        answers = iter(replies)
        return [self._decode(key, unique, next(answers)) if unique else {} for key, unique in wanted]

    def _decode(
        self, key: str, unique: list[str], values: list[bytes | None]
    ) -> dict[str, tuple[int, dict[str, Any]]]:
        found: dict[str, tuple[int, dict[str, Any]]] = {}
        for entity, value in zip(unique, values, strict=True):
            if value is None:
                continue
            try:
                found[entity] = (_TIME.unpack_from(value)[0], orjson.loads(memoryview(value)[_TIME.size :]))
            except (struct.error, orjson.JSONDecodeError) as exc:
                raise Corrupt(
                    f"field {entity} of Redis hash {key!r} at {self._shown_url} is not an OpenLearner online "
                    "value; delete the key and run materialize again"
                ) from exc
        return found

    def delete(self, view: str) -> None:
        """Remove a view's hash (freed in the background: UNLINK)."""
        key = self._key(view)
        with self._server(key):
            self._client.unlink(key)

    def close(self) -> None:
        """Close the pool's idle connections; a call in flight in another thread is left to finish."""
        self._client.connection_pool.disconnect(inuse_connections=False)

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self._shown_url!r}, {self.namespace!r})"


def _without_password(url: str) -> str:
    """``url`` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}").geturl()
