/*
 * What loadgen.c and grpcload.c share: dying with a message, the clock, and the request file
 * (each request preceded by its length as a 4-byte little-endian integer), read whole at start
 * so nothing is allocated on the hot path. Each program sets ``program`` to its name first.
 */
#ifndef OPENLEARNER_LOADGEN_H
#define OPENLEARNER_LOADGEN_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *program = "loadgen";

static void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", program, what, errno ? strerror(errno) : "failed");
    exit(1);
}

/* realloc (malloc, given NULL) that dies instead of answering NULL. */
static void *room_for(void *old, size_t bytes) {
    void *p = realloc(old, bytes ? bytes : 1);
    if (!p) die("out of memory");
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
        if (length > most) {
            errno = 0;
            die(what);
        }
        requests[count] = room_for(NULL, length);
        if (fread(requests[count], 1, length, f) != length) die("a truncated request file");
        lengths[count++] = length;
        if (length > longest) longest = length;
    }
    fclose(f);
    if (!count) die("an empty request file");
    return longest;
}

#endif
