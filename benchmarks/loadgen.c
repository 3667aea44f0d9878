/*
 * HTTP/1.1 load generator for benchmarks/predictor.py: keep-alive connections on loopback,
 * one thread, epoll, no allocation on the hot path.
 *
 *   loadgen closed PORT CONNECTIONS SECONDS REQUESTS OUT
 *   loadgen open   PORT RATE        SECONDS REQUESTS OUT
 *   loadgen stalls SECONDS
 *
 * REQUESTS is a file of whole HTTP requests, each preceded by its length as a 4-byte
 * little-endian integer; they are sent in turn. OUT receives one line per response: its
 * latency in nanoseconds, its status code, and how long it waited for a free connection
 * after it was due (ns; 0 in the closed loop).
 *
 * closed: every connection sends its next request as soon as the previous response is in
 * (maximum throughput); latency counts from the send. Responses that finish after SECONDS
 * are read but not reported, so the rate is reported responses / SECONDS.
 * open: request i is due at i / RATE seconds (a timerfd wakes the loop at that instant);
 * it goes out on the connection idle longest (of 64), or as soon as one frees up, and its
 * latency counts from the instant it was due, so a server that falls behind is charged for
 * the queue it builds (no coordinated omission).
 *
 * A connection the server closed is opened again; a request it closed before answering
 * (a keep-alive timeout racing the send, or "Connection: close" on the previous answer)
 * is sent again on the new connection, its clock still running. Responses must carry
 * Content-Length (chunked bodies are refused). 30 s without an answer while requests are
 * out is an error; a closed loop whose last answers take over 5 s past SECONDS just ends.
 *
 * stalls: no network; reads the clock in a tight loop for SECONDS (at most a day) and sums
 * up the gaps over 1 ms between two reads (time the CPU was taken away: the hypervisor,
 * interrupts, other processes) in one line, "GAPS_OVER_1MS GAPS_OVER_2MS LONGEST_NS
 * STALLED_NS". Run on each CPU at once, it measures what the machine alone adds to a latency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define OPEN_CONNECTIONS 64
#define BUFFER 65536
#define SILENCE_NS 30000000000LL
#define DRAIN_NS 5000000000LL

typedef struct {
    int fd;
    int busy;
    int64_t started;  /* ns: when its request was due (open) or sent (closed) */
    int64_t queued;   /* ns: from due to sent (open) */
    size_t request;   /* which request it carries, to send again on a new connection */
    size_t used;
    char buffer[BUFFER];
} conn_t;

static int ep;
static struct sockaddr_in addr;

static size_t next_request;

static void open_connection(conn_t *c, uint32_t index) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = index};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->busy = 0;
    c->used = 0;
}

static int64_t heard;  /* ns: the last answer, or the last send while none was out */
static int outstanding;  /* connections with a request out */

/* Write request ``c->request``; 0 if the server had closed the connection. */
static int write_request(conn_t *c) {
    const char *data = requests[c->request % count];
    size_t left = lengths[c->request % count];
    while (left) {  /* a request of a few KB fits an idle socket's buffer: this returns at once */
        ssize_t n = send(c->fd, data, left, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            if (errno == EPIPE || errno == ECONNRESET) return 0;
            die("send");
        }
        data += n;
        left -= (size_t)n;
    }
    return 1;
}

static void reopen(conn_t *c, uint32_t index) {
    close(c->fd);  /* which also takes it out of the epoll set */
    int busy = c->busy;
    open_connection(c, index);
    c->busy = busy;
}

/* Send ``c->request`` (again, on a fresh connection, if the server closed this one). */
static void resend(conn_t *c, uint32_t index) {
    for (int tries = 0; !write_request(c); tries++) {
        if (tries == 3) fail("the server keeps closing connections");
        reopen(c, index);
    }
}

static void send_next(conn_t *c, uint32_t index, int64_t started) {
    if (!outstanding) heard = now_ns();  /* the silence clock runs only while something is out */
    c->request = next_request++;
    c->busy = 1;
    c->started = started;
    outstanding++;
    resend(c, index);
}

/* Bytes of the first complete response in the buffer, 0 while incomplete; its status in *status. */
static size_t response_length(conn_t *c, int *status) {
    char *end = memmem(c->buffer, c->used, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->buffer) + 4;
    long body = -1;
    *status = atoi(c->buffer + 9);  /* "HTTP/1.1 200 ..." */
    for (char *line = c->buffer; line < end;) {
        char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
        if (!eol) break;
        if (eol - line > 15 && strncasecmp(line, "content-length:", 15) == 0) body = atol(line + 15);
        if (eol - line > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) fail("a chunked response");
        line = eol + 2;
    }
    if (body < 0) fail("a response without Content-Length");
    return c->used >= head + (size_t)body ? head + (size_t)body : 0;
}

static int stalls(double seconds) {
    int64_t last = now_ns(), ends = last + (int64_t)(seconds * 1e9), longest = 0, stalled = 0;
    long over1 = 0, over2 = 0;
    while (last < ends) {
        int64_t t = now_ns(), gap = t - last;
        if (gap > 1000000) {
            over1++;
            over2 += gap > 2000000;
            stalled += gap;
            if (gap > longest) longest = gap;
        }
        last = t;
    }
    printf("%ld %ld %lld %lld\n", over1, over2, (long long)longest, (long long)stalled);
    return 0;
}

int main(int argc, char **argv) {
    program = "loadgen";
    if (argc == 3 && strcmp(argv[1], "stalls") == 0) {
        double seconds = number(argv[2]);
        if (!(seconds > 0 && seconds <= 86400)) {
            fprintf(stderr, "loadgen: stalls SECONDS must be a number of seconds over 0, at most 86400\n");
            return 2;
        }
        return stalls(seconds);
    }
    if (argc != 7 || (strcmp(argv[1], "open") != 0 && strcmp(argv[1], "closed") != 0)) {
        fprintf(stderr, "usage: loadgen closed|open PORT CONNECTIONS|RATE SECONDS REQUESTS OUT\n"
                        "       loadgen stalls SECONDS\n");
        return 2;
    }
    int open_loop = strcmp(argv[1], "open") == 0;
    int port;
    double amount, seconds;
    load_arguments(argv, open_loop, "CONNECTIONS", 1000, &port, &amount, &seconds);
    load_requests(argv[5], UINT32_MAX, "a request too long");
    FILE *out = fopen(argv[6], "w");
    if (!out) die(argv[6]);

    int connections = open_loop ? OPEN_CONNECTIONS : (int)amount;
    conn_t *conns = calloc((size_t)connections, sizeof *conns);
    ep = epoll_create1(0);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < connections; i++) open_connection(&conns[i], (uint32_t)i);
    int timer = timerfd_create(CLOCK_MONOTONIC, 0);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (timer < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev) < 0) die("timerfd");

    int64_t began = now_ns() + 10000000, ends = began + (int64_t)(seconds * 1e9);
    long total = open_loop ? (long)(amount * seconds) : -1, done = 0, scheduled = 0, sent = 0;
    int64_t step = open_loop ? (int64_t)(1e9 / amount) : 0;
    if (!open_loop) {
        while (now_ns() < began) {}
        for (int i = 0; i < connections; i++) send_next(&conns[i], (uint32_t)i, now_ns());
    }
    /* Idle connections, a FIFO ring: each is used in turn, so none sits idle long enough for
       the server's keep-alive timeout while others work. */
    int *idle = malloc((size_t)connections * sizeof *idle), head = 0, nidle = 0;
    if (open_loop)
        for (int i = 0; i < connections; i++) idle[nidle++] = i;
    struct epoll_event events[256];
    int armed = 0;
    for (;;) {
        int64_t now = now_ns();
        if (outstanding && now - heard > SILENCE_NS) fail("the server stopped answering");
        if (open_loop) {
            while (scheduled < total && began + scheduled * step <= now) scheduled++;
            while (sent < scheduled && nidle) {
                int index = idle[head];
                head = (head + 1) % connections;
                nidle--;
                int64_t due = began + sent * step;
                /* read the clock before the write: were this process preempted right after
                   it, the wait would swallow time the server was already working */
                conns[index].queued = now_ns() - due;
                send_next(&conns[index], (uint32_t)index, due);
                sent++;
            }
            if (done == total) break;
            if (!armed && scheduled < total && sent == scheduled) {  /* wake when the next is due */
                int64_t due = began + scheduled * step;
                struct itimerspec at = {.it_value = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000}};
                timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
                armed = 1;
            }
        } else if (now >= ends) {  /* no more sends: read what is in flight, unreported */
            if (!outstanding || now - ends > DRAIN_NS) break;
        }
        int n = epoll_wait(ep, events, 256, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            uint32_t index = events[e].data.u32;
            if (index == UINT32_MAX) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd read");
                armed = 0;
                continue;
            }
            conn_t *c = &conns[index];
            ssize_t got = read(c->fd, c->buffer + c->used, BUFFER - c->used);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                if (got < 0 && errno != ECONNRESET) die("read");
                if (c->busy && c->used) fail("the server closed a connection in the middle of an answer");
                reopen(c, index);  /* closed while idle, or before answering: send it again */
                if (c->busy) resend(c, index);
                continue;
            }
            c->used += (size_t)got;
            int status;
            size_t length;
            while (c->busy && (length = response_length(c, &status)) > 0) {
                int64_t finished = now_ns();
                heard = finished;
                if (open_loop || finished < ends)
                    fprintf(out, "%lld %d %lld\n", (long long)(finished - c->started), status,
                            (long long)(open_loop ? c->queued : 0));
                memmove(c->buffer, c->buffer + length, c->used - length);
                c->used -= length;
                c->busy = 0;
                outstanding--;
                done++;
                if (open_loop) {
                    idle[(head + nidle) % connections] = (int)index;
                    nidle++;
                } else if (finished < ends) {
                    send_next(c, index, finished);
                }
            }
            if (c->used == BUFFER) fail("a response larger than the buffer");
        }
    }
    fclose(out);
    return 0;
}
