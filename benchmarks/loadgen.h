/*
 * What loadgen.c and grpcload.c share: dying with a message, the clock, and the request file
 * (each request preceded by its length as a 4-byte little-endian integer), read whole at start
 * so nothing is allocated on the hot path; and its arguments, checked. Each program sets
 * ``program`` to its name first.
 */
#ifndef OPENLEARNER_LOADGEN_H
#define OPENLEARNER_LOADGEN_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *program = "loadgen";

/* Exit 1 after a failed system call named ``what`` (errno says why). */
static void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", program, what, errno ? strerror(errno) : "failed");
    exit(1);
}

/* Exit 1 for ``what``, a problem that is no system call's (errno is not read). */
static void fail(const char *what) {
    fprintf(stderr, "%s: %s\n", program, what);
    exit(1);
}

/* realloc (malloc, given NULL) that dies instead of answering NULL. */
static void *room_for(void *old, size_t bytes) {
    void *p = realloc(old, bytes ? bytes : 1);
    if (!p) fail("out of memory");
    return p;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static char **requests;
static uint32_t *lengths;
static size_t count;

/* Read the request file at ``path``, each request at most ``most`` bytes (``what`` names that
 * limit in the error); the longest request's length. */
static size_t load_requests(const char *path, size_t most, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    size_t room = 1024, longest = 0;
    requests = room_for(NULL, room * sizeof *requests);
    lengths = room_for(NULL, room * sizeof *lengths);
    uint32_t length;
    while (fread(&length, 4, 1, f) == 1) {
        if (count == room) {
            room *= 2;
            requests = room_for(requests, room * sizeof *requests);
            lengths = room_for(lengths, room * sizeof *lengths);
        }
        if (length > most) fail(what);
        requests[count] = room_for(NULL, length);
        if (fread(requests[count], 1, length, f) != length) fail("a truncated request file");
        lengths[count++] = length;
        if (length > longest) longest = length;
    }
    fclose(f);
    if (!count) fail("an empty request file");
    return longest;
}

/* A number that is all of ``text`` (NaN where it is not one, or not finite). */
static double number(const char *text) {
    char *end;
    if (strpbrk(text, "xX") || !*text || (*text != '-' && *text != '+' && *text != '.' &&
                                           (*text < '0' || *text > '9')))
        return NAN; /* decimal only: no hex, no leading space */
    errno = 0;
    double value = strtod(text, &end);
    return end == text || *end || errno || !isfinite(value) ? NAN : value;
}

/* PORT, AMOUNT (``unit``, a whole number up to ``most``, in the closed loop; RATE in the open
 * one) and SECONDS from ``argv[2..4]``, checked: a wrong one exits 2, saying why. */
static void load_arguments(char **argv, int open_loop, const char *unit, double most, int *port,
                           double *amount, double *seconds) {
    double p = number(argv[2]);
    *amount = number(argv[3]);
    *seconds = number(argv[4]);
    if (!(p >= 1 && p <= 65535 && p == (int)p)) {
        fprintf(stderr, "%s: PORT must be a whole number 1-65535, not %s\n", program, argv[2]);
        exit(2);
    }
    *port = (int)p;
    if (open_loop && !(*amount > 0 && *amount <= 1e7)) {
        fprintf(stderr, "%s: RATE must be positive, at most 1e7, not %s\n", program, argv[3]);
        exit(2);
    }
    if (!open_loop && !(*amount >= 1 && *amount <= most && *amount == (double)(long)*amount)) {
        fprintf(stderr, "%s: %s must be a whole number up to %.0f, not %s\n", program, unit, most, argv[3]);
        exit(2);
    }
    if (!(*seconds > 0 && *seconds <= 86400)) {
        fprintf(stderr, "%s: SECONDS must be positive, at most 86400, not %s\n", program, argv[4]);
        exit(2);
    }
    if (open_loop && *amount * *seconds < 1) {
        fprintf(stderr, "%s: RATE x SECONDS must be at least one request\n", program);
        exit(2);
    }
}

#endif
