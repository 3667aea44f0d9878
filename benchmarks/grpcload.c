/*
 * gRPC load generator for benchmarks/predictor.py: unary calls over one HTTP/2 connection
 * (cleartext, prior knowledge) on loopback, one thread, epoll, no allocation on the hot path
 * (but when resent calls outrun the first estimate of streams).
 * The same interface as loadgen.c, so the benchmark times gRPC as it times HTTP, without a
 * Python client's own work and pauses in every latency.
 *
 *   grpcload closed PORT STREAMS SECONDS REQUESTS OUT
 *   grpcload open   PORT RATE    SECONDS REQUESTS OUT
 *
 * REQUESTS is a file of serialized inference.ModelInferRequest messages, each preceded by
 * its length as a 4-byte little-endian integer; they are sent in turn, as calls to
 * /inference.GRPCInferenceService/ModelInfer. OUT receives one line per call, as loadgen's:
 * its latency in nanoseconds, 200 for a call answered with a message or 0 for one that was
 * not (a trailers-only answer, which is how gRPC fails a unary call, or a reset stream), and
 * how long it waited to be sent after it was due (ns; 0 in the closed loop).
 *
 * closed: STREAMS calls are out at once, each followed by the next as soon as it is answered;
 * latency counts from the send, and calls answered after SECONDS are not reported.
 * open: call i is due at i / RATE seconds (a timerfd wakes the loop at that instant) and goes
 * out then, unless the server's limits hold it back (its concurrent-stream limit or HTTP/2
 * flow control); its latency counts from the instant it was due, so a server that falls behind
 * is charged for the queue it builds (no coordinated omission).
 *
 * What the client does of HTTP/2: its preface and settings (a 2^31-1 byte window for every
 * stream and the connection, topped up as answers use it, so the server never waits on it),
 * the server's settings awaited before the first call, acknowledged and obeyed (concurrent
 * streams, initial window), its window updates counted, its pings answered. A stream the
 * server refuses unprocessed (RST_STREAM REFUSED_STREAM: grpc does so for a while past its
 * concurrent-stream limit) is sent again, its clock still running, as grpc's own clients do.
 * Request headers are HPACK literals without indexing, built once. The answer's headers are
 * not decoded: a call is judged by its frames, as above, so a message followed by a failing
 * status would count as answered (grpc's servers fail a unary call with trailers alone).
 * A GOAWAY, a closed connection, 30 s without an answer while calls are out, or (open loop)
 * calls the server's limits kept from going out 30 s past SECONDS is an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define BUFFER (1 << 20)
#define SILENCE_NS 30000000000LL
#define DRAIN_NS 5000000000LL
#define HUGE_WINDOW 2147483647LL
#define PATH "/inference.GRPCInferenceService/ModelInfer"

#define REFUSED_STREAM 7 /* RST_STREAM's code for a stream the server never began to process */

enum { DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PING = 6, GOAWAY = 7, WINDOW_UPDATE = 8 };
enum { END_STREAM = 1, ACK = 1, END_HEADERS = 4, PADDED = 8, PRIORITY = 32 };

typedef struct {
    int64_t started; /* ns: when the call was due (open) or sent (closed) */
    int64_t queued;  /* ns: from due to sent (open) */
    size_t request;  /* which request it carries, to send again if the server refuses its stream */
    int answered;    /* DATA bytes received */
    int live;
} call_t;

static int fd;
static call_t *calls; /* by stream id / 2 */
static long capacity;
static int64_t send_window = 65535, stream_window = 65535;
static long max_streams = 1L << 30, out_calls;
static int settled; /* the server's first SETTINGS are in: its limits are known */
static int64_t received; /* DATA bytes since the connection's receive window was last topped up */
static int open_loop;
static char header_block[256];
static size_t header_length;
static char *frames; /* one call's HEADERS and DATA frames, built in place */

static void load(const char *path) {
    size_t longest = load_requests(path, 16384 - 5, "a request over one HTTP/2 frame (16 KB)");
    frames = room_for(NULL, 9 + sizeof header_block + 9 + 5 + longest);
}

static void put_frame_header(char *at, size_t length, int type, int flags, uint32_t stream) {
    at[0] = (char)(length >> 16);
    at[1] = (char)(length >> 8);
    at[2] = (char)length;
    at[3] = (char)type;
    at[4] = (char)flags;
    at[5] = (char)(stream >> 24);
    at[6] = (char)(stream >> 16);
    at[7] = (char)(stream >> 8);
    at[8] = (char)stream;
}

static void write_all(const char *data, size_t left) {
    while (left) { /* a blocking socket: a call's frames (16 KB at most) go into its buffer at once */
        ssize_t n = send(fd, data, left, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("send");
        }
        data += n;
        left -= (size_t)n;
    }
}

/* HPACK: a literal header field without indexing, with a literal name (RFC 7541, 6.2.2). */
static void literal(const char *name, const char *value) {
    size_t n = strlen(name), v = strlen(value);
    if (n > 126 || v > 126 || header_length + 3 + n + v > sizeof header_block) fail("a header too long");
    header_block[header_length++] = 0;
    header_block[header_length++] = (char)n;
    memcpy(header_block + header_length, name, n);
    header_length += n;
    header_block[header_length++] = (char)v;
    memcpy(header_block + header_length, value, v);
    header_length += v;
}

static void start(int port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char hello[24 + 9 + 12 + 9 + 4];
    memcpy(hello, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    put_frame_header(hello + 24, 12, SETTINGS, 0, 0);
    char *s = hello + 33; /* ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 2^31-1 */
    const unsigned char settings[12] = {0, 2, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff};
    memcpy(s, settings, 12);
    put_frame_header(hello + 45, 4, WINDOW_UPDATE, 0, 0);
    uint32_t more = (uint32_t)(HUGE_WINDOW - 65535);
    const unsigned char increment[4] = {more >> 24, more >> 16, more >> 8, more};
    memcpy(hello + 54, increment, 4);
    write_all(hello, sizeof hello);
    char authority[32];
    snprintf(authority, sizeof authority, "127.0.0.1:%d", port);
    literal(":method", "POST");
    literal(":scheme", "http");
    literal(":path", PATH);
    literal(":authority", authority);
    literal("content-type", "application/grpc");
    literal("te", "trailers");
}

/* Calls whose streams the server refused (over its limit, as it sees it), to send again. */
static call_t *refused;
static long refused_head, refused_count, refused_room;

static size_t next_request;
static uint32_t next_stream = 1;

/* Whether the server's limits let one more call out now. */
static int may_send(void) {
    size_t payload = 5 + lengths[(refused_count ? refused[refused_head].request : next_request) % count];
    return settled && out_calls < max_streams && send_window >= (int64_t)payload && stream_window >= (int64_t)payload;
}

static void send_call(size_t request, int64_t started, int64_t queued) {
    size_t which = request % count, length = lengths[which];
    uint32_t stream = next_stream;
    next_stream += 2;
    long slot = (long)(stream >> 1);
    if (slot >= capacity) { /* resends outran the first estimate: the one allocation after start */
        long old = capacity;
        capacity *= 2;
        calls = room_for(calls, (size_t)capacity * sizeof *calls);
        memset(calls + old, 0, (size_t)(capacity - old) * sizeof *calls);
    }
    calls[slot] = (call_t){.started = started, .queued = queued, .request = request, .answered = 0, .live = 1};
    put_frame_header(frames, header_length, HEADERS, END_HEADERS, stream);
    memcpy(frames + 9, header_block, header_length);
    char *data = frames + 9 + header_length;
    put_frame_header(data, 5 + length, DATA, END_STREAM, stream);
    data[9] = 0; /* not compressed; then the message's length, big-endian */
    data[10] = (char)(length >> 24);
    data[11] = (char)(length >> 16);
    data[12] = (char)(length >> 8);
    data[13] = (char)length;
    memcpy(data + 14, requests[which], length);
    write_all(frames, 9 + header_length + 14 + length);
    send_window -= (int64_t)(5 + length);
    out_calls++;
}

/* Send the refused calls again, first, as far as the server's limits let them out. */
static void send_refused(void) {
    while (refused_count && may_send()) {
        call_t again = refused[refused_head];
        refused_head = (refused_head + 1) % refused_room;
        refused_count--;
        send_call(again.request, again.started, open_loop ? now_ns() - again.started : 0);
    }
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int main(int argc, char **argv) {
    program = "grpcload";
    if (argc != 7 || (strcmp(argv[1], "open") != 0 && strcmp(argv[1], "closed") != 0)) {
        fprintf(stderr, "usage: grpcload closed|open PORT STREAMS|RATE SECONDS REQUESTS OUT\n");
        return 2;
    }
    open_loop = strcmp(argv[1], "open") == 0;
    int port;
    double amount, seconds;
    load_arguments(argv, open_loop, "STREAMS", 100000, &port, &amount, &seconds);
    load(argv[5]);
    FILE *out = fopen(argv[6], "w");
    if (!out) die(argv[6]);
    capacity = open_loop ? (long)(amount * seconds) + 2 : 1L << 16;
    calls = room_for(NULL, (size_t)capacity * sizeof *calls);
    memset(calls, 0, (size_t)capacity * sizeof *calls); /* a frame for a stream never opened finds it dead */
    refused_room = open_loop ? capacity : (long)amount + 1; /* no more than are out at once */
    refused = room_for(NULL, (size_t)refused_room * sizeof *refused);
    static unsigned char buffer[BUFFER];
    size_t used = 0;
    start(port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    int timer = timerfd_create(CLOCK_MONOTONIC, 0);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 1};
    if (timer < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev) < 0) die("timerfd");

    int64_t began = now_ns() + 10000000, ends = began + (int64_t)(seconds * 1e9), heard = began;
    long total = open_loop ? (long)(amount * seconds) : -1, done = 0, scheduled = 0, sent = 0;
    int64_t step = open_loop ? (int64_t)(1e9 / amount) : 0;
    long streams = open_loop ? 0 : (long)amount, wanted = 0; /* closed: calls to send when allowed */
    if (!open_loop) {
        while (now_ns() < began) {}
        wanted = streams;
    }
    int armed = 0;
    for (;;) {
        int64_t now = now_ns();
        if (out_calls && now - heard > SILENCE_NS) fail("the server stopped answering");
        if (open_loop) {
            while (scheduled < total && began + scheduled * step <= now) scheduled++;
            send_refused();
            while (sent < scheduled && !refused_count && may_send()) {
                int64_t due = began + sent * step;
                if (!out_calls) heard = now_ns(); /* the silence clock runs only while calls are out */
                send_call(next_request++, due, now_ns() - due);
                sent++;
            }
            if (done == total) break;
            if ((sent < total || refused_count) && now - ends > SILENCE_NS) /* its limits let none out */
                fail("calls could not go out for 30 s (the server's stream limit or window)");
            if (!armed && scheduled < total && sent == scheduled) { /* wake when the next is due */
                int64_t due = began + scheduled * step;
                struct itimerspec at = {.it_value = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000}};
                timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
                armed = 1;
            }
        } else {
            send_refused();
            if (now < ends)
                while (wanted && !refused_count && may_send()) {
                    if (!out_calls) heard = now_ns();
                    send_call(next_request++, now_ns(), 0);
                    wanted--;
                }
            else if (!out_calls || now - ends > DRAIN_NS) /* no more sends: read what is out, unreported */
                break;
        }
        struct epoll_event events[2];
        int n = epoll_wait(ep, events, 2, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            if (events[e].data.u32 == 1) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd read");
                armed = 0;
                continue;
            }
            ssize_t got = read(fd, buffer + used, BUFFER - used);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                errno = got < 0 ? errno : 0;
                die("the server closed the connection");
            }
            used += (size_t)got;
            size_t at = 0;
            while (used - at >= 9) {
                unsigned char *h = buffer + at;
                size_t length = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
                if (length > BUFFER - 9) fail("a frame larger than the buffer");
                if (used - at < 9 + length) break;
                int type = h[3], flags = h[4];
                uint32_t stream = be32(h + 5) & 0x7fffffff;
                unsigned char *payload = h + 9;
                call_t *call = stream && (long)(stream >> 1) < capacity ? &calls[stream >> 1] : NULL;
                int finished = 0, ok = 0;
                if (type == DATA) /* every DATA frame uses the connection's window, a live call's or not */
                    received += length;
                if (type == DATA && call && call->live) {
                    size_t pad = flags & PADDED ? (length ? 1 + (size_t)payload[0] : length + 1) : 0;
                    if (pad > length) fail("a DATA frame padded past its length");
                    call->answered += (int)(length - pad);
                    if (flags & END_STREAM) finished = 1, ok = call->answered >= 5;
                } else if (type == HEADERS && call && call->live && (flags & END_STREAM)) {
                    finished = 1, ok = call->answered >= 5; /* trailers; alone, a failed call */
                } else if (type == RST_STREAM && call && call->live && length == 4 &&
                           be32(payload) == REFUSED_STREAM && !call->answered) {
                    call->live = 0; /* never processed: send it again, its clock still running */
                    out_calls--;
                    refused[(refused_head + refused_count++) % refused_room] = *call;
                } else if (type == RST_STREAM && call && call->live) {
                    finished = 1;
                } else if (type == SETTINGS && !(flags & ACK)) {
                    for (size_t i = 0; i + 6 <= length; i += 6) {
                        int id = payload[i] << 8 | payload[i + 1];
                        uint32_t value = be32(payload + i + 2);
                        if (id == 3) max_streams = value;
                        if (id == 4) stream_window = value;
                    }
                    settled = 1;
                    char ack[9];
                    put_frame_header(ack, 0, SETTINGS, ACK, 0);
                    write_all(ack, 9);
                } else if (type == PING && !(flags & ACK) && length == 8) {
                    char pong[17];
                    put_frame_header(pong, 8, PING, ACK, 0);
                    memcpy(pong + 9, payload, 8);
                    write_all(pong, 17);
                } else if (type == GOAWAY) {
                    errno = 0;
                    fprintf(stderr, "grpcload: the server sent GOAWAY (error code %u)\n",
                            length >= 8 ? be32(payload + 4) : 0);
                    return 1;
                } else if (type == WINDOW_UPDATE && stream == 0 && length == 4) {
                    send_window += be32(payload) & 0x7fffffff;
                }
                if (received > HUGE_WINDOW / 2) { /* top the connection's window up again */
                    char more[13];
                    put_frame_header(more, 4, WINDOW_UPDATE, 0, 0);
                    uint32_t n = (uint32_t)received;
                    const unsigned char increment[4] = {n >> 24, n >> 16, n >> 8, n};
                    memcpy(more + 9, increment, 4);
                    write_all(more, 13);
                    received = 0;
                }
                if (finished) {
                    int64_t end = now_ns();
                    heard = end;
                    call->live = 0;
                    out_calls--;
                    done++;
                    if (open_loop || end < ends)
                        fprintf(out, "%lld %d %lld\n", (long long)(end - call->started), ok ? 200 : 0,
                                (long long)call->queued);
                    if (!open_loop && end < ends) wanted++;
                }
                at += 9 + length;
            }
            memmove(buffer, buffer + at, used - at);
            used -= at;
        }
    }
    fclose(out);
    return 0;
}
