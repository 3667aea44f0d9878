"""The Redis online store: one hash per view, one field per entity, for replicas that share values.

Layout: key ``<namespace>:<view>``, field = the encoded entity key (``[1]``, ``[1,"fr"]``),
value = the event time in µs as an 8-byte big-endian signed integer followed by the JSON
document of the entity's feature values (the same document the SQLite store keeps).

A read of any number of keys is one ``HMGET`` per view, sent together: one round trip, each
view an atomic snapshot. The reader polls the socket for the reply for up to ``spin_us``
before it sleeps in ``recv`` (see ``_Waiter``): on a machine whose threads take tens of
microseconds to wake, that is most of a local round trip. A write
is one ``MULTI``/``EXEC`` transaction, so readers see the old values or the new ones, never
a mix, and a write cut off before ``EXEC`` changes nothing. The price is that Redis serves
nothing else while it applies a large write.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from ssl import SSLSocket
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from openlearner._forks import track
from openlearner.errors import Conflict, Corrupt, Invalid, Unavailable
from openlearner.features.online.base import OnlineStore, ViewValues, encode_rows

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

    def __init__(self, url: str, namespace: str, *, spin_us: int = 200) -> None:
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
            # RESP2: the read path below parses its replies itself (RESP3 adds push messages).
            self._client: redis.Redis = redis.Redis.from_url(
                url, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2), protocol=2
            )
        except ValueError as exc:
            raise Invalid(
                f"OPENLEARNER_REDIS_URL {self._shown_url!r} is not a Redis URL ({exc}); "
                "use redis://host:port/db, rediss://... or unix:///path"
            ) from exc

        self._readers: list[Any] = []  # idle connections of the read path (not the client's pool)
        self._waiter = _Waiter(spin_us)
        track(self)

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
        unique = [(view, list(dict.fromkeys(keys))) for view, keys in requests]
        out = []
        for (_, keys), (times, docs) in zip(unique, self.read_columns(unique), strict=True):
            out.append(
                {
                    k: (t, d)
                    for k, t, d in zip(keys, times, docs, strict=True)
                    if t is not None and d is not None
                }
            )
        return out

    def read_columns(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[ViewValues]:
        """Every view's keys in one round trip (one HMGET per view, sent as one packet), in order.

        The replies are parsed here rather than by the client library: one pass over the
        bytes that takes each value's event time and collects its JSON document, then one
        ``orjson.loads`` per view.
        """
        asked = [(i, self._key(view), keys) for i, (view, keys) in enumerate(requests) if keys]
        out: list[ViewValues] = [([], []) for _ in requests]
        if not asked:
            return out
        packed = b"".join([_hmget(key, keys) for _, key, keys in asked])
        with self._server(asked[0][1]):
            replies = self._round_trip(packed, len(asked))
        for (i, key, keys), (times, docs, short) in zip(asked, replies, strict=True):
            if len(times) != len(keys):
                raise Corrupt(f"Redis at {self._shown_url} answered {len(times)} values for {len(keys)} keys")
            if short:
                raise self._corrupt(keys[short[0]], key)
            try:
                decoded = orjson.loads(b"[" + b",".join(docs) + b"]")
            except orjson.JSONDecodeError:
                bad = next(n for n, doc in enumerate(docs) if not _is_json(doc))
                raise self._corrupt(keys[bad], key) from None
            out[i] = (times, decoded)
        return out

    def _corrupt(self, entity: str, key: str) -> Corrupt:
        return Corrupt(
            f"field {entity} of Redis hash {key!r} at {self._shown_url} is not an OpenLearner online "
            "value; delete the key and run materialize again"
        )

    def _round_trip(self, packed: bytes, replies: int) -> list[_Reply]:
        """Send ``packed`` on an idle connection of this store's own and read ``replies`` replies.

        A connection that was idle may have been dropped by the server: the read (idempotent)
        is then tried again on a new one. A connection is reused only after a complete reply.
        """
        for attempt in range(3):
            try:
                conn = self._readers.pop()
            except IndexError:
                pool = self._client.connection_pool
                conn = pool.connection_class(**pool.connection_kwargs)
            sock = getattr(conn, "_sock", None)
            was_open = sock is not None
            try:
                if sock is None:
                    conn.connect()  # the client library's connect: TLS, AUTH, SELECT
                    sock = conn._sock
                    _os_timeouts(sock)
                sock.sendall(packed)
                answer = _read_replies(sock, replies, self._waiter.first)
            except (*self._down, OSError) as exc:
                conn.disconnect()
                if was_open and attempt < 2:
                    continue  # a dropped idle connection: once more on a new one
                if isinstance(exc, self._down):
                    raise
                raise self._down[0](str(exc)) from exc
            except BaseException:
                conn.disconnect()
                raise
            self._readers.append(conn)
            return answer
        raise AssertionError("unreachable")

    def delete(self, view: str) -> None:
        """Remove a view's hash (freed in the background: UNLINK)."""
        key = self._key(view)
        with self._server(key):
            self._client.unlink(key)

    def close(self) -> None:
        """Close idle connections; a call in flight in another thread is left to finish."""
        self._client.connection_pool.disconnect(inuse_connections=False)
        readers, self._readers = self._readers, []
        for conn in readers:
            conn.disconnect()

    def _after_fork(self) -> None:
        """In a forked child, the parent's read connections are not this process's to use."""
        self._readers = []

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self._shown_url!r}, {self.namespace!r})"


_Reply = tuple[list[int | None], list[bytes | bytearray], list[int]]
"""One HMGET reply: event times, JSON documents (``null`` where absent), positions of short values."""
_READ_SIZE = 65_536


def _hmget(key: str, fields: Sequence[str]) -> bytes:
    """``HMGET key field...`` in the Redis protocol (RESP), as the client library would pack it."""
    name = key.encode()
    head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (len(fields) + 2, len(name), name)
    if all(map(str.isascii, fields)):  # a character is a byte: lengths without encoding each field
        return head + "".join([f"${len(f)}\r\n{f}\r\n" for f in fields]).encode()
    encoded = [f.encode() for f in fields]
    return head + b"".join([b"$%d\r\n%s\r\n" % (len(e), e) for e in encoded])


def _os_timeouts(sock: socket.socket) -> None:
    """Let the kernel enforce the socket's timeout (SO_RCVTIMEO/SO_SNDTIMEO) and make it blocking.

    A socket with a Python-level timeout polls before every send and receive: two system calls
    more per read. A timeout then surfaces as ``BlockingIOError`` (an ``OSError``), as before.
    """
    timeout = sock.gettimeout()
    if not timeout:
        return
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except OSError:
        return  # keep Python's timeout
    sock.settimeout(None)


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_SPIN_MISSES = 8  # replies in a row that came after the polling budget: stop polling...
_SPIN_PAUSE = 1_000  # ...for this many reads, then try again


class _Waiter:
    """Waits for the first bytes of a reply: polls the socket for up to ``spin_us``, then sleeps.

    A thread asleep in ``recv`` is woken by the kernel when the reply lands; in virtual
    machines that wake-up alone can take 50 µs, more than Redis takes to answer on the same
    host. Polling with ``MSG_DONTWAIT`` (the GIL is released at each call, so other threads
    run) picks the reply up as it lands, at the price of the CPU it polls with. After
    ``_SPIN_MISSES`` replies in a row that came later than the budget (a distant server, or
    one that shares this CPU), reads sleep at once for the next ``_SPIN_PAUSE`` reads. A
    process whose CPU affinity allows a single CPU, a socket with a Python-level timeout, a
    TLS connection (``rediss://``: an ``SSLSocket`` takes no flags) and ``spin_us=0`` never
    poll. The counters are shared by threads without a lock: they only steer, and a pause
    cannot go below zero.
    """

    def __init__(self, spin_us: int) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.budget_ns = spin_us * 1_000 if cpus > 1 and _DONTWAIT else 0
        self.misses = 0
        self.paused = 0

    def first(self, sock: socket.socket) -> bytes:
        """The first bytes the socket gives (b"" when the server closed it)."""
        if (
            self.budget_ns
            and self.paused <= 0
            and not isinstance(sock, SSLSocket)
            and sock.gettimeout() is None
        ):
            recv, clock = sock.recv, time.perf_counter_ns
            deadline = clock() + self.budget_ns
            while True:
                try:
                    chunk = recv(_READ_SIZE, _DONTWAIT)
                except BlockingIOError:
                    if clock() < deadline:
                        continue
                    break
                self.misses = 0
                return chunk
            self.misses += 1
            if self.misses >= _SPIN_MISSES:
                self.misses, self.paused = 0, _SPIN_PAUSE
        elif self.paused > 0:
            self.paused = max(0, self.paused - 1)
        return sock.recv(_READ_SIZE)


def _read_replies(sock: socket.socket, count: int, first: Callable[[socket.socket], bytes]) -> list[_Reply]:
    """Read ``count`` array-of-bulk-string replies from ``sock`` (RESP2; RESP3 nulls accepted).

    Each present value is the event time (8 bytes) and a JSON document; the time is unpacked
    here and the document kept as bytes, ``null`` standing for an absent field. ``first``
    waits for the reply's first bytes (``_Waiter.first``). (The hot loop of a large read:
    names are bound locally.)
    """
    buf = bytearray(first(sock))
    if not buf:
        raise ConnectionError("the server closed the connection")
    find, unpack, head = buf.find, _TIME.unpack_from, _TIME.size
    pos, have, out = 0, len(buf), []
    for _ in range(count):
        end = find(b"\r\n", pos)
        while end < 0:
            end, have = _more(sock, buf, pos)
        if buf[pos] != 42:  # not b"*": an error (WRONGTYPE) or something else
            _reply_error(bytes(buf[pos:end]))
        length = int(buf[pos + 1 : end])
        pos = end + 2
        times: list[int | None] = []
        docs: list[bytes | bytearray] = []
        short: list[int] = []
        add_time, add_doc = times.append, docs.append
        for n in range(length):
            end = find(b"\r\n", pos)
            while end < 0:
                end, have = _more(sock, buf, pos)
            if buf[pos] == 36:  # b"$": a bulk string, or $-1 for an absent field
                size = int(buf[pos + 1 : end])
                start = end + 2
                if size >= head:
                    pos = start + size + 2
                    while have < pos:
                        _, have = _more(sock, buf, have)
                    add_time(unpack(buf, start)[0])
                    add_doc(buf[start + head : start + size])
                    continue
                if size >= 0:  # too short for an event time: not an OpenLearner value
                    pos = start + size + 2
                    while have < pos:
                        _, have = _more(sock, buf, have)
                    short.append(n)
                else:
                    pos = start
            elif buf[pos] == 95:  # b"_": RESP3's null
                pos = end + 2
            else:
                _reply_error(bytes(buf[pos:end]))
            add_time(None)
            add_doc(b"null")
        out.append((times, docs, short))
    return out


def _more(sock: socket.socket, buf: bytearray, pos: int) -> tuple[int, int]:
    """Append what the socket has next to ``buf``; the next line end from ``pos`` (or -1) and
    the new length."""
    chunk = sock.recv(_READ_SIZE)
    if not chunk:
        raise ConnectionError("the server closed the connection in the middle of a reply")
    buf += chunk
    return buf.find(b"\r\n", pos), len(buf)


def _reply_error(line: bytes) -> NoReturn:
    """Raise what a reply line other than the expected one means."""
    import redis

    text = line[1:].decode(errors="replace")
    if line[:1] in (b"-", b"!"):
        raise redis.ResponseError(text)
    raise redis.ConnectionError(f"unexpected reply from Redis: {line[:80]!r}")


def _is_json(doc: bytes | bytearray) -> bool:
    try:
        orjson.loads(doc)
    except orjson.JSONDecodeError:
        return False
    return True


def _without_password(url: str) -> str:
    """``url`` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}").geturl()
