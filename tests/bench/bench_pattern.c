/* bench_pattern.c - the cost of matching event names against wildcard
 * patterns, the loop every worker's dispatcher and the interest index run.
 *
 * Usage: bench_pattern [-n NAMES] [-P PATTERNS] [-r ROUNDS]
 *
 * Single-threaded and CPU-only (no app, no bus), so it times the matching
 * and nothing else:
 *
 *   split   tb__name_split of each of NAMES (default 100000) event names
 *           ("bench.p<i>.e<j>", 3 segments), as the dispatcher does once per
 *           event.
 *   scan    each split name against PATTERNS (default 100) compiled
 *           wildcard patterns "bench.p<k>.*", as tb__event_deliver_local
 *           walks a worker's wildcard listeners: one of them matches.
 *   mixed   the same with patterns of every shape the dispatcher keeps in
 *           its wildcard list ("bench.p<k>.*", "*.p<k>.e1", "bench.<a>.e<k>",
 *           and, where the build has it, "bench.p<k>.>" and "other.<k>.>").
 *   interest tb__interest_match of each name with the PATTERNS patterns of
 *           scan in the interest index (the Redis bus's drop test).
 *
 * Output, one line per phase, best of ROUNDS (default 5) and the median:
 *
 *   bench_pattern <phase>: <ns> ns/op best, <ns> median (<ops> ops/round)
 *
 * where an op is one name split, or one name matched against one pattern
 * (scan, mixed), or one interest lookup. Exit status 0, 1 on a failed call
 * (a pattern the build rejects is skipped, not a failure: the "mixed" line
 * names how many it holds), 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "interest.h"
#include "pattern.h"
#include "taskbus/taskbus.h"

#define MAX_ROUNDS 50

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *phase, double *ns, int rounds, long ops)
{
    qsort(ns, (size_t)rounds, sizeof *ns, cmp_double);
    printf("bench_pattern %s: %.2f ns/op best, %.2f median (%ld ops/round)\n",
           phase, ns[0], ns[rounds / 2], ops);
}

/* Keeps the compiler from dropping a loop whose result is unused. */
static volatile long sink;

int main(int argc, char **argv)
{
    int nnames = 100000, npat = 100, rounds = 5, opt;
    while ((opt = getopt(argc, argv, "n:P:r:")) != -1) {
        switch (opt) {
        case 'n':
            nnames = atoi(optarg);
            break;
        case 'P':
            npat = atoi(optarg);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: bench_pattern [-n NAMES] [-P PATTERNS] "
                            "[-r ROUNDS]\n");
            return 2;
        }
    }
    if (nnames < 1 || npat < 1 || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_pattern: -n, -P >= 1, 1 <= -r <= %d\n",
                MAX_ROUNDS);
        return 2;
    }

    char(*text)[TB_EVENT_NAME_MAX + 1] = calloc((size_t)nnames, sizeof *text);
    tb__name *names = calloc((size_t)nnames, sizeof *names);
    tb__pattern *scan = calloc((size_t)npat, sizeof *scan);
    tb__pattern *mixed = calloc((size_t)npat, sizeof *mixed);
    if (!text || !names || !scan || !mixed) {
        fprintf(stderr, "bench_pattern: out of memory\n");
        return 1;
    }
    for (int i = 0; i < nnames; i++)
        snprintf(text[i], sizeof text[i], "bench.p%d.e%d", i % npat, i % 7);
    char buf[TB_EVENT_NAME_MAX + 1];
    for (int k = 0; k < npat; k++) {
        snprintf(buf, sizeof buf, "bench.p%d.*", k);
        if (tb__pattern_compile(&scan[k], buf) != 0) {
            fprintf(stderr, "bench_pattern: cannot compile %s\n", buf);
            return 1;
        }
    }
    int nmixed = 0;
    for (int k = 0; nmixed < npat; k++) {
        switch (k % 5) {
        case 0:
            snprintf(buf, sizeof buf, "bench.p%d.*", k);
            break;
        case 1:
            snprintf(buf, sizeof buf, "*.p%d.e1", k);
            break;
        case 2:
            snprintf(buf, sizeof buf, "bench.<a>.e%d", k);
            break;
        case 3:
            snprintf(buf, sizeof buf, "bench.p%d.>", k);
            break;
        default:
            snprintf(buf, sizeof buf, "other.%d.>", k);
            break;
        }
        if (k > 10 * npat)
            break; /* this build rejects most shapes */
        if (tb__pattern_compile(&mixed[nmixed], buf) == 0)
            nmixed++;
    }

    double ns[MAX_ROUNDS];
    long hits = 0;

    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < nnames; i++)
            if (tb__name_split(&names[i], text[i]) != 0) {
                fprintf(stderr, "bench_pattern: cannot split %s\n", text[i]);
                return 1;
            }
        ns[r] = (now_s() - t0) * 1e9 / nnames;
    }
    report("split", ns, rounds, nnames);

    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < nnames; i++)
            for (int k = 0; k < npat; k++)
                hits += tb__pattern_match_split(&scan[k], &names[i]);
        ns[r] = (now_s() - t0) * 1e9 / ((double)nnames * npat);
    }
    if (hits != (long)rounds * nnames) {
        fprintf(stderr, "bench_pattern: scan matched %ld times, not %ld\n",
                hits, (long)rounds * nnames);
        return 1;
    }
    report("scan", ns, rounds, (long)nnames * npat);

    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < nnames; i++)
            for (int k = 0; k < nmixed; k++)
                hits += tb__pattern_match_split(&mixed[k], &names[i]);
        ns[r] = (now_s() - t0) * 1e9 / ((double)nnames * nmixed);
    }
    printf("bench_pattern mixed: %d patterns compiled\n", nmixed);
    report("mixed", ns, rounds, (long)nnames * nmixed);

    tb__interest in;
    tb__interest_init(&in);
    for (int k = 0; k < npat; k++)
        if (tb__interest_add(&in, &scan[k]) != 0) {
            fprintf(stderr, "bench_pattern: interest_add failed\n");
            return 1;
        }
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < nnames; i++)
            hits += tb__interest_match(&in, &names[i]);
        ns[r] = (now_s() - t0) * 1e9 / nnames;
    }
    report("interest", ns, rounds, nnames);
    for (int k = 0; k < npat; k++)
        tb__interest_remove(&in, &scan[k]);
    tb__interest_destroy(&in);

    sink = hits;
    free(text);
    free(names);
    free(scan);
    free(mixed);
    return 0;
}
