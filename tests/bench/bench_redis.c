/* bench_redis.c - throughput and end-to-end latency of events over the Redis
 * bus between two taskbus instances (the C side of tests/bench/run_redis.sh).
 *
 * Usage: bench_redis -m sub|pub|raw|mem -u REDIS_URL -n N [-r RATE]
 *                    [-w WORKERS] [-t SECONDS] [-s NAMESPACE] [-H SIZE] [-S]
 *                    [-v]
 *
 * One binary, two roles, started as two processes on the same redis-server
 * and event namespace (and a third, raw, for reference):
 *
 *   sub  An app with WORKERS workers (default 2). On every worker a task
 *        added before run opens a subscription on "bench.*" with room for
 *        every event (nothing may be dropped) and counts what arrives. Once
 *        tb_bus_status says "connected" and every worker's subscription is
 *        open it prints "ready" on stdout. It ends when every worker has
 *        received N events, when no event has arrived for IDLE_MS after the
 *        first one, or SECONDS after "ready" (default 120), and prints one
 *        line per worker, the receive rate, duplicates, missing events,
 *        drops and the latency percentiles.
 *   pub  An app with WORKERS workers (default 1). A task on worker 0 waits
 *        for the bus, then dispatches N events named "bench.e" of 128 bytes
 *        as fast as tb_dispatch accepts them (on TB_ENOSPC it yields, and
 *        after YIELD_SPINS yields in a row sleeps 1 ms, so that a full queue
 *        does not spin a core that Redis and the subscriber need), or at
 *        RATE events/s (-r: every millisecond it dispatches the events that
 *        are due, then sleeps 1 ms). It prints the dispatch rate, then waits
 *        until tb_bus_status's `published` reaches N (every PUBLISH
 *        acknowledged by Redis) and prints the acknowledged rate.
 *   raw  No taskbus: the floor the bus is measured against. One thread
 *        PSUBSCRIBEs "<ns>:raw:*" with blocking hiredis, the main thread
 *        PUBLISHes N messages with the same 128-byte data on another
 *        connection (at RATE/s, paced like pub), and the subscriber thread
 *        records the latency of each as sub does: one hop through Redis,
 *        two thread wake-ups, where taskbus adds its bus threads and the
 *        hand-off to the workers.
 *   mem  The in-process bus's twin of a sub and pub pair: one app with
 *        WORKERS workers (default 2) subscribed as sub does, and pub's task
 *        on one more worker, which starts dispatching once every
 *        subscription is open. The in-process bus pushes back on nothing
 *        (a full worker queue drops), so the queues are sized for N. Its "sub"
 * lines cover the whole process from the first dispatch to the last arrival. -u
 * is not used.
 *
 * -H SIZE sets history_size (default 0: off): with history on, each
 * instance publishes through the history script (docs/HISTORY.md).
 *
 * The event data is text: the publisher's CLOCK_REALTIME in µs ("%020lld"),
 * a space, the event's sequence number 0..N-1 ("%010u"), a space, then 'x'
 * up to 128 bytes. The subscriber takes latency as its CLOCK_REALTIME at
 * arrival (when its task takes the event from the subscription) minus that
 * timestamp, and checks duplicates and gaps with one bit per sequence
 * number per worker. Both processes run on the same machine, so the two
 * clocks are the same clock.
 *
 * CPU: each role prints the CPU time of each of its threads over its timed
 * window (sub: first arrival to the end; pub: first dispatch to the last
 * acknowledgement), from /proc/self/task/<tid>/stat (clock ticks). Those
 * windows differ; with -S the two processes print marks ("pub mark start
 * <pid>" before the first dispatch, "sub mark end <pid>" after the last
 * arrival, "pub mark end <pid>" after the last acknowledgement; "sub mark
 * ready <pid>" after "sub ready") and stand still at each but the ready
 * one until SIGUSR1, so that run_redis.sh samples both processes and
 * redis-server at the same two instants.
 *
 * Output lines start with "sub " or "pub " (run_redis.sh parses them):
 *   sub ready
 *   sub mark ready|end <pid>, pub mark start|end <pid>   (-S)
 *   sub worker <i>: received <n> duplicates <d> missing <m> foreign <f>
 *       dropped <x> rate <r>/s p50 <us> p99 <us>
 *   sub received: <n> of <N> per worker in <s> s: <r>/s per worker
 *   sub latency: samples <n> p50 <us> p90 <us> p99 <us> p999 <us> max <us>
 *   sub bus: received <n> duplicates <d> malformed <m> reconnects <r>
 *   sub cpu: <ms> ms in <s> s (<pct>%); <thread> <ms>, ...
 *   pub dispatched: <n> in <s> s: <r>/s (enospc retries <k>, sleeps <j>)
 *   pub acknowledged: <n> in <s> s: <r>/s (failed <f>)
 *   pub bus: received <n> (its own events, back from Redis) ...
 *   pub cpu: ...
 *   raw received: <n> in <s> s: <r>/s (published <m>)
 *   raw latency: samples <n> p50 <us> ... (as sub latency)
 * Exit status 0 when every event arrived exactly once on every worker (sub)
 * or was acknowledged (pub), 1 otherwise (with a message on stderr), 2 on
 * bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <taskbus/taskbus.h>

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define DATA_LEN 128
#define EVENT_NAME "bench.e"
#define SUB_PATTERN "bench.*"
#define SUB_CAPACITY (1 << 22) /* more than any N we run: no drops */
#define IDLE_MS 5000           /* sub: give up this long after the last */
#define BUS_WAIT_MS 10000      /* how long either side waits for "connected" */
#define ACK_WAIT_MS 60000      /* pub: how long it waits for the last ack */
#define MARK_WAIT_MS 30000     /* -S: how long a mark waits for SIGUSR1 */
#define YIELD_SPINS 16         /* pub: yields on ENOSPC before a 1 ms sleep */
#define MAX_WORKERS 16
#define MAX_THREADS 64

/* ---------------------------------------------------------------- clocks */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- cpu */

/* CPU ticks (utime + stime) of every thread of this process at one time. */
typedef struct cpu_snap {
    int n;
    int64_t at_us; /* monotonic */
    struct {
        int tid;
        char comm[32];
        unsigned long long ticks;
    } t[MAX_THREADS];
    struct rusage ru; /* the whole process, µs resolution */
} cpu_snap;

static void cpu_take(cpu_snap *s)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;

    s->n = 0;
    s->at_us = mono_us();
    getrusage(RUSAGE_SELF, &s->ru);
    if (!d)
        return;
    while ((de = readdir(d)) != NULL && s->n < MAX_THREADS) {
        char path[64], buf[512], *p, *q;
        unsigned long long ut, st;
        FILE *f;
        int tid = atoi(de->d_name);

        if (tid <= 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
        if (!(f = fopen(path, "r")))
            continue;
        p = fgets(buf, sizeof buf, f);
        fclose(f);
        /* "tid (comm) state ppid ... utime(14) stime(15)": comm may hold
         * spaces, so count fields from the last ')'. */
        if (!p || !(p = strchr(buf, '(')) || !(q = strrchr(buf, ')')))
            continue;
        snprintf(s->t[s->n].comm, sizeof s->t[s->n].comm, "%.*s",
                 (int)(q - p - 1), p + 1);
        if (sscanf(q + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                   &st) != 2)
            continue;
        s->t[s->n].tid = tid;
        s->t[s->n].ticks = ut + st;
        s->n++;
    }
    closedir(d);
}

static double tv_ms(struct timeval tv)
{
    return (double)tv.tv_sec * 1e3 + (double)tv.tv_usec / 1e3;
}

/* Prints "<role> cpu: <ms> ms in <s> s (<pct>%); <thread> <ms>, ...":
 * threads that used no tick are left out. */
static void cpu_print(const char *role, const cpu_snap *a, const cpu_snap *b)
{
    double hz = (double)sysconf(_SC_CLK_TCK);
    double wall = (double)(b->at_us - a->at_us) / 1e6;
    double ms = tv_ms(b->ru.ru_utime) + tv_ms(b->ru.ru_stime) -
                tv_ms(a->ru.ru_utime) - tv_ms(a->ru.ru_stime);

    printf("%s cpu: %.0f ms in %.3f s (%.0f%% of one core); user %.0f ms, "
           "sys %.0f ms;",
           role, ms, wall, wall > 0 ? ms / 10 / wall : 0,
           tv_ms(b->ru.ru_utime) - tv_ms(a->ru.ru_utime),
           tv_ms(b->ru.ru_stime) - tv_ms(a->ru.ru_stime));
    for (int i = 0; i < b->n; i++) {
        unsigned long long before = 0;
        for (int j = 0; j < a->n; j++)
            if (a->t[j].tid == b->t[i].tid)
                before = a->t[j].ticks;
        if (b->t[i].ticks > before)
            printf(" %s %.0f ms,", b->t[i].comm,
                   (double)(b->t[i].ticks - before) * 1e3 / hz);
    }
    printf(" (threads in %.0f ms ticks)\n", 1e3 / hz);
}

/* ---------------------------------------------------------------- state */

typedef struct worker_stats {
    uint64_t count;            /* events taken, duplicates included */
    uint64_t dups;             /* a sequence number seen before */
    uint64_t foreign;          /* data that is not a benchmark event */
    uint64_t dropped;          /* tb_sub_dropped at the end */
    int64_t first_us, last_us; /* monotonic, first and last arrival */
    uint8_t *seen;             /* N bits */
    int32_t *lat;              /* µs, one per distinct event */
    size_t nlat;
    int done;
} worker_stats;

static struct {
    tb_app *app;
    int pub; /* role */
    int mem; /* role mem: pub and sub in one app on the in-process bus */
    int workers;
    uint32_t n;
    int rate; /* pub: events/s, 0 = as fast as possible */
    int timeout_s;
    int marks; /* -S: print marks and wait at them (run_redis.sh) */
    atomic_int failed;
    atomic_int opened;        /* sub: subscriptions open */
    atomic_int ready;         /* sub: "ready" printed */
    atomic_int finished;      /* sub: worker tasks done */
    atomic_int started;       /* sub: the first arrival took the cpu snapshot */
    _Atomic int64_t ready_us; /* sub: monotonic time of "ready" */
    worker_stats w[MAX_WORKERS];
    tb_bus_info bus_end;
    cpu_snap cpu0, cpu1;
    /* pub */
    int64_t t0_us, t_disp_us, t_ack_us;
    uint64_t retries, sleeps, acked;
} B;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_redis: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    B.failed = 1;
}

/* -S: prints "<role> mark <what> <pid>" and, if wait, blocks the calling
 * thread until SIGUSR1 (at most MARK_WAIT_MS), so that run_redis.sh reads
 * this process's, the other side's and redis-server's CPU time at the
 * same instants while the processes stand still. */
static void mark(const char *role, const char *what, int wait)
{
    if (!B.marks)
        return;
    printf("%s mark %s %d\n", role, what, (int)getpid());
    fflush(stdout);
    if (!wait)
        return;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct timespec ts = {MARK_WAIT_MS / 1000, 0};
    if (sigtimedwait(&usr1, NULL, &ts) < 0)
        fail("%s mark %s: no SIGUSR1 within %d ms", role, what, MARK_WAIT_MS);
}

/* Suspends self until the bus is connected, at most BUS_WAIT_MS. */
static int wait_bus(tb_task *self)
{
    tb_bus_info bi;
    int64_t deadline = mono_us() + (int64_t)BUS_WAIT_MS * 1000;

    for (;;) {
        tb_bus_status(B.app, &bi);
        if (bi.state == TB_BUS_CONNECTED)
            return 0;
        if (mono_us() > deadline) {
            fail("bus not connected after %d ms: %s (%s)", BUS_WAIT_MS,
                 tb_bus_state_name(bi.state), bi.last_error);
            return TB_ETIMEDOUT;
        }
        int rc = tb_sleep(self, 10);
        if (rc)
            return rc;
    }
}

/* ---------------------------------------------------------------- sub */

/* Reads "<ts> <seq> " from an event's data; 0, or -1 if it is not ours. */
static int parse_data(const char *d, size_t len, int64_t *ts, uint32_t *seq)
{
    char *end;
    long long t;
    unsigned long s;

    if (len != DATA_LEN || d[20] != ' ' || d[31] != ' ')
        return -1;
    t = strtoll(d, &end, 10);
    if (end != d + 20)
        return -1;
    s = strtoul(d + 21, &end, 10);
    if (end != d + 31 || s >= B.n)
        return -1;
    *ts = t;
    *seq = (uint32_t)s;
    return 0;
}

static void on_event(worker_stats *ws, tb_event *ev)
{
    size_t len;
    const char *d = tb_event_data(ev, &len);
    int64_t now = real_us(), ts;
    uint32_t seq;

    ws->last_us = mono_us();
    if (ws->count++ == 0)
        ws->first_us = ws->last_us;
    if (parse_data(d, len, &ts, &seq) != 0) {
        ws->foreign++;
        return;
    }
    if (ws->seen[seq >> 3] & (1u << (seq & 7))) {
        ws->dups++;
        return;
    }
    ws->seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    int64_t lat = now - ts;
    ws->lat[ws->nlat++] = lat > INT32_MAX ? INT32_MAX : (int32_t)lat;
}

/* Prints "ready" once every worker's subscription is open and the bus is
 * connected. Any worker's task may be the one that sees it first. */
static void check_ready(void)
{
    tb_bus_info bi;

    if (atomic_load(&B.ready) || atomic_load(&B.opened) < B.workers)
        return;
    tb_bus_status(B.app, &bi);
    if (bi.state != TB_BUS_CONNECTED)
        return;
    if (atomic_exchange(&B.ready, 1) == 0) {
        B.ready_us = mono_us();
        printf("sub ready\n");
        fflush(stdout);
        mark("sub", "ready", 0);
    }
}

static int sub_body(tb_task *self, void *arg)
{
    int wi = tb_task_worker(self), err = 0, rc;
    worker_stats *ws = &B.w[wi];
    tb_sub *sub;
    int64_t start = mono_us();

    (void)arg;
    if (B.mem && wi == B.workers) /* the publisher's worker */
        return 0;
    sub = tb_sub_open(self, SUB_PATTERN, SUB_CAPACITY, &err);
    if (!sub) {
        fail("worker %d: tb_sub_open: %s", wi, tb_strerror(err));
        tb_app_stop(B.app);
        return err;
    }
    atomic_fetch_add(&B.opened, 1);
    while (ws->count - ws->dups - ws->foreign < B.n) {
        tb_event *ev = NULL;

        check_ready();
        rc = tb_sub_next(self, sub, atomic_load(&B.ready) ? 200 : 10, &ev);
        if (rc == 0) {
            if (atomic_exchange(&B.started, 1) == 0)
                cpu_take(&B.cpu0);
            on_event(ws, ev);
            tb_event_unref(ev);
            continue;
        }
        if (rc != TB_ETIMEDOUT) {
            if (rc != TB_ECANCELED)
                fail("worker %d: tb_sub_next: %s", wi, tb_strerror(rc));
            break;
        }
        int64_t now = mono_us();
        if (!atomic_load(&B.ready) &&
            now - start > (int64_t)BUS_WAIT_MS * 1000) {
            fail("worker %d: not ready after %d ms", wi, BUS_WAIT_MS);
            break;
        }
        if (atomic_load(&B.ready) &&
            now - B.ready_us > (int64_t)B.timeout_s * 1000000) {
            fail("worker %d: deadline of %d s passed", wi, B.timeout_s);
            break;
        }
        if (ws->count && now - ws->last_us > (int64_t)IDLE_MS * 1000) {
            fail("worker %d: nothing arrived for %d ms", wi, IDLE_MS);
            break;
        }
    }
    ws->dropped = tb_sub_dropped(sub);
    tb_sub_close(sub);
    ws->done = 1;
    if (atomic_fetch_add(&B.finished, 1) + 1 == B.workers) {
        cpu_take(&B.cpu1);
        if (!B.mem)
            mark("sub", "end", 1);
        tb_bus_status(B.app, &B.bus_end);
        tb_app_stop(B.app);
    }
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The p-th percentile (0..100) of sorted v[0..n-1], nearest rank. */
static int32_t pct(const int32_t *v, size_t n, double p)
{
    size_t k;
    if (n == 0)
        return -1;
    k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

static int sub_report(void)
{
    size_t total = 0, at = 0;
    int64_t first = INT64_MAX, last = 0;
    int bad = 0;

    for (int i = 0; i < B.workers; i++)
        total += B.w[i].nlat;
    int32_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) {
        fail("out of memory");
        return 1;
    }
    for (int i = 0; i < B.workers; i++) {
        worker_stats *ws = &B.w[i];
        uint64_t missing = B.n - ws->nlat;
        double span = (double)(ws->last_us - ws->first_us) / 1e6;

        qsort(ws->lat, ws->nlat, sizeof ws->lat[0], cmp_i32);
        printf("sub worker %d: received %zu duplicates %" PRIu64
               " missing %" PRIu64 " foreign %" PRIu64 " dropped %" PRIu64
               " rate %.0f/s p50 %d us p99 %d us\n",
               i, ws->nlat, ws->dups, missing, ws->foreign, ws->dropped,
               span > 0 ? (double)(ws->count - 1) / span : 0,
               pct(ws->lat, ws->nlat, 50), pct(ws->lat, ws->nlat, 99));
        if (missing || ws->dups || ws->foreign || ws->dropped)
            bad = 1;
        memcpy(all + at, ws->lat, ws->nlat * sizeof *all);
        at += ws->nlat;
        if (ws->count) {
            if (ws->first_us < first)
                first = ws->first_us;
            if (ws->last_us > last)
                last = ws->last_us;
        }
    }
    double span = last > first ? (double)(last - first) / 1e6 : 0;
    size_t least = B.n;
    for (int i = 0; i < B.workers; i++)
        if (B.w[i].nlat < least)
            least = B.w[i].nlat;
    printf("sub received: %zu of %" PRIu32 " per worker in %.3f s: %.0f/s per "
           "worker (%d workers, first to last arrival)\n",
           least, B.n, span, span > 0 ? (double)least / span : 0, B.workers);
    qsort(all, total, sizeof *all, cmp_i32);
    printf("sub latency: samples %zu p50 %d us p90 %d us p99 %d us p999 %d us "
           "max %d us\n",
           total, pct(all, total, 50), pct(all, total, 90), pct(all, total, 99),
           pct(all, total, 99.9), total ? all[total - 1] : -1);
    printf("sub bus: received %" PRIu64 " duplicates %" PRIu64
           " malformed %" PRIu64 " oversize %" PRIu64 " reconnects %" PRIu64
           "\n",
           B.bus_end.received, B.bus_end.duplicates, B.bus_end.malformed,
           B.bus_end.oversize, B.bus_end.reconnects);
    if (atomic_load(&B.started))
        cpu_print("sub", &B.cpu0, &B.cpu1);
    free(all);
    if (bad)
        fail("not every event arrived exactly once on every worker");
    return bad;
}

/* ---------------------------------------------------------------- pub */

static void fill(char *buf, uint32_t seq)
{
    /* 32 characters, then 'x' to DATA_LEN (set once by the caller). */
    char head[40];
    snprintf(head, sizeof head, "%020lld %010" PRIu32 " ", (long long)real_us(),
             seq);
    memcpy(buf, head, 32);
}

/* Dispatches event seq, retrying on TB_ENOSPC. */
static int dispatch_one(tb_task *self, char *buf, uint32_t seq)
{
    int spins = 0;

    for (;;) {
        fill(buf, seq);
        int rc = tb_dispatch(B.app, EVENT_NAME, buf, DATA_LEN, NULL);
        if (rc != TB_ENOSPC)
            return rc;
        B.retries++;
        if (++spins < YIELD_SPINS) {
            rc = tb_yield(self);
        } else {
            spins = 0;
            B.sleeps++;
            rc = tb_sleep(self, 1);
        }
        if (rc)
            return rc;
    }
}

static int pub_body(tb_task *self, void *arg)
{
    char buf[DATA_LEN + 1];
    tb_bus_info bi;
    uint32_t i = 0;
    int rc;

    (void)arg;
    if (tb_task_worker(self) != (B.mem ? B.workers : 0))
        return 0;
    memset(buf, 'x', DATA_LEN);
    buf[DATA_LEN] = '\0';
    if ((rc = wait_bus(self)) != 0)
        goto out;
    if (B.mem) {
        /* The subscribers' window starts here, not at their first
         * arrival: dispatching is part of the process's cost. */
        while (!atomic_load(&B.ready))
            if ((rc = tb_sleep(self, 1)) != 0)
                goto out;
        atomic_store(&B.started, 1);
    } else {
        mark("pub", "start", 1);
    }
    cpu_take(&B.cpu0);
    B.t0_us = mono_us();
    while (i < B.n) {
        if (B.rate > 0) {
            uint64_t due =
                (uint64_t)(mono_us() - B.t0_us) * (uint64_t)B.rate / 1000000 +
                1;
            for (; i < B.n && i < due; i++)
                if ((rc = dispatch_one(self, buf, i)) != 0)
                    break;
            if (rc == 0 && i < B.n)
                rc = tb_sleep(self, 1);
        } else {
            rc = dispatch_one(self, buf, i++);
        }
        if (rc) {
            fail("dispatch of event %" PRIu32 ": %s", i, tb_strerror(rc));
            goto out;
        }
    }
    B.t_disp_us = mono_us();

    int64_t deadline = B.t_disp_us + (int64_t)ACK_WAIT_MS * 1000;
    for (;;) {
        tb_bus_status(B.app, &bi);
        if (bi.published + bi.publish_failed >= B.n)
            break;
        if (mono_us() > deadline) {
            fail("only %" PRIu64 " of %" PRIu32 " acknowledged after %d ms",
                 bi.published, B.n, ACK_WAIT_MS);
            break;
        }
        if ((rc = tb_sleep(self, 1)) != 0)
            goto out;
    }
    B.t_ack_us = mono_us();
    if (!B.mem) { /* else the last subscriber takes it */
        cpu_take(&B.cpu1);
        mark("pub", "end", 1);
    }
    B.acked = bi.published;
    if (bi.publish_failed)
        fail("%" PRIu64 " events failed to publish", bi.publish_failed);
out:
    if (!B.mem || rc) { /* mem: the last subscriber stops the app */
        tb_bus_status(B.app, &B.bus_end);
        tb_app_stop(B.app);
    }
    return rc;
}

static int pub_report(void)
{
    if (!B.t_disp_us)
        return 1;
    double ds = (double)(B.t_disp_us - B.t0_us) / 1e6;
    printf("pub dispatched: %" PRIu32 " in %.3f s: %.0f/s (enospc retries "
           "%" PRIu64 ", sleeps %" PRIu64 "%s)\n",
           B.n, ds, ds > 0 ? B.n / ds : 0, B.retries, B.sleeps,
           B.rate ? ", paced" : "");
    if (!B.t_ack_us)
        return 1;
    double as = (double)(B.t_ack_us - B.t0_us) / 1e6;
    printf("pub acknowledged: %" PRIu64 " in %.3f s: %.0f/s (failed %" PRIu64
           ")\n",
           B.acked, as, as > 0 ? (double)B.acked / as : 0,
           B.bus_end.publish_failed);
    printf("pub bus: received %" PRIu64 " (its own events, back from Redis) "
           "duplicates %" PRIu64 " reconnects %" PRIu64 "\n",
           B.bus_end.received, B.bus_end.duplicates, B.bus_end.reconnects);
    if (!B.mem) /* mem: the sub line covers the process */
        cpu_print("pub", &B.cpu0, &B.cpu1);
    return B.failed;
}

/* ---------------------------------------------------------------- raw */

static struct {
    char host[256];
    int port;
    char pattern[160], channel[160];
    atomic_int subscribed;
    int64_t first_us, last_us; /* monotonic */
    uint64_t got, dups, foreign, published;
    int32_t *lat;
    size_t nlat;
    uint8_t *seen;
    int err;
} RAW;

/* redis://HOST:PORT (no user, password or db: a benchmark server). */
static int raw_parse_url(const char *url)
{
    const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : NULL;
    const char *colon = p ? strrchr(p, ':') : NULL;

    if (!p || !colon || colon == p || (size_t)(colon - p) >= sizeof RAW.host ||
        strpbrk(p, "@/"))
        return -1;
    memcpy(RAW.host, p, (size_t)(colon - p));
    RAW.host[colon - p] = '\0';
    RAW.port = atoi(colon + 1);
    return RAW.port > 0 && RAW.port < 65536 ? 0 : -1;
}

static redisContext *raw_connect(void)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(RAW.host, RAW.port, tv);

    if (!c || c->err) {
        fprintf(stderr, "bench_redis: raw: cannot connect to %s:%d: %s\n",
                RAW.host, RAW.port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){IDLE_MS / 1000, 0});
    return c;
}

static void *raw_sub_main(void *arg)
{
    redisContext *c = raw_connect();
    redisReply *r;

    (void)arg;
    if (!c) {
        RAW.err = 1;
        atomic_store(&RAW.subscribed, -1);
        return NULL;
    }
    r = redisCommand(c, "PSUBSCRIBE %s", RAW.pattern);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, "bench_redis: raw: PSUBSCRIBE failed\n");
        RAW.err = 1;
        atomic_store(&RAW.subscribed, -1);
        if (r)
            freeReplyObject(r);
        redisFree(c);
        return NULL;
    }
    freeReplyObject(r);
    atomic_store(&RAW.subscribed, 1);
    while (RAW.nlat < B.n) {
        void *v = NULL;
        if (redisGetReply(c, &v) != REDIS_OK) {
            fprintf(stderr, "bench_redis: raw: after %zu messages: %s\n",
                    RAW.nlat, c->errstr);
            RAW.err = 1;
            break;
        }
        r = v;
        int64_t now = real_us(), ts;
        uint32_t seq;
        RAW.last_us = mono_us();
        if (RAW.got++ == 0)
            RAW.first_us = RAW.last_us;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
            r->element[3]->type == REDIS_REPLY_STRING &&
            parse_data(r->element[3]->str, r->element[3]->len, &ts, &seq) ==
                0) {
            if (RAW.seen[seq >> 3] & (1u << (seq & 7))) {
                RAW.dups++;
            } else {
                RAW.seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
                int64_t lat = now - ts;
                RAW.lat[RAW.nlat++] =
                    lat > INT32_MAX ? INT32_MAX : (int32_t)lat;
            }
        } else {
            RAW.foreign++;
        }
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int raw_run(const char *url, const char *ns)
{
    char buf[DATA_LEN + 1];
    pthread_t th;
    redisContext *c;
    int64_t t0, deadline;

    if (raw_parse_url(url) != 0) {
        fprintf(stderr, "bench_redis: raw: -u must be redis://HOST:PORT\n");
        return 2;
    }
    snprintf(RAW.pattern, sizeof RAW.pattern, "%s:raw:*", ns);
    snprintf(RAW.channel, sizeof RAW.channel, "%s:raw:x", ns);
    RAW.lat = malloc((size_t)B.n * sizeof *RAW.lat);
    RAW.seen = calloc((B.n + 7) / 8, 1);
    if (!RAW.lat || !RAW.seen || !(c = raw_connect()))
        return 1;
    if (pthread_create(&th, NULL, raw_sub_main, NULL) != 0) {
        redisFree(c);
        return 1;
    }
    deadline = mono_us() + (int64_t)BUS_WAIT_MS * 1000;
    while (atomic_load(&RAW.subscribed) == 0 && mono_us() < deadline)
        sleep_us(1000);
    if (atomic_load(&RAW.subscribed) != 1)
        RAW.err = 1;
    memset(buf, 'x', DATA_LEN);
    buf[DATA_LEN] = '\0';
    t0 = mono_us();
    for (uint32_t i = 0; i < B.n && !RAW.err;) {
        if (B.rate > 0) {
            uint64_t due =
                (uint64_t)(mono_us() - t0) * (uint64_t)B.rate / 1000000 + 1;
            if (i >= due) {
                sleep_us(1000);
                continue;
            }
        }
        fill(buf, i);
        redisReply *r = redisCommand(c, "PUBLISH %s %b", RAW.channel, buf,
                                     (size_t)DATA_LEN);
        if (!r || r->type != REDIS_REPLY_INTEGER) {
            fprintf(stderr, "bench_redis: raw: PUBLISH failed: %s\n",
                    r ? "unexpected reply" : c->errstr);
            RAW.err = 1;
        } else {
            RAW.published++;
        }
        if (r)
            freeReplyObject(r);
        i++;
    }
    redisFree(c);
    pthread_join(th, NULL);

    double span = (double)(RAW.last_us - RAW.first_us) / 1e6;
    printf("raw received: %zu in %.3f s: %.0f/s (published %" PRIu64
           ", duplicates %" PRIu64 ", foreign %" PRIu64 ")\n",
           RAW.nlat, span, span > 0 ? (double)(RAW.got - 1) / span : 0,
           RAW.published, RAW.dups, RAW.foreign);
    qsort(RAW.lat, RAW.nlat, sizeof *RAW.lat, cmp_i32);
    printf("raw latency: samples %zu p50 %d us p90 %d us p99 %d us p999 %d us "
           "max %d us\n",
           RAW.nlat, pct(RAW.lat, RAW.nlat, 50), pct(RAW.lat, RAW.nlat, 90),
           pct(RAW.lat, RAW.nlat, 99), pct(RAW.lat, RAW.nlat, 99.9),
           RAW.nlat ? RAW.lat[RAW.nlat - 1] : -1);
    return RAW.err || RAW.nlat != B.n;
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s -m sub|pub|raw|mem -u REDIS_URL -n N [-r RATE]\n"
            "          [-w WORKERS] [-t SECONDS] [-s NAMESPACE] [-H SIZE] [-S] "
            "[-v]\n"
            "  -m  role: sub (receive and measure), pub (dispatch), raw\n"
            "      (hiredis publisher and subscriber threads, no taskbus), or\n"
            "      mem (sub and pub in one app on the in-process bus)\n"
            "  -u  redis://127.0.0.1:PORT of the shared redis-server\n"
            "  -n  events (pub: dispatched; sub: expected on every worker)\n"
            "  -r  pub: events per second (default: as fast as accepted)\n"
            "  -w  workers (default: sub 2, pub 1; at most %d)\n"
            "  -t  sub: give up this long after \"ready\" (default 120)\n"
            "  -s  event namespace (default tbbench)\n"
            "  -H  history_size (default 0: history off)\n"
            "  -S  sub, pub: print marks and wait at them for SIGUSR1\n"
            "  -v  keep taskbus's info logging (default: warnings only)\n",
            argv0, MAX_WORKERS);
    exit(2);
}

int main(int argc, char **argv)
{
    tb_app_config cfg;
    const char *role = NULL, *url = NULL, *ns = "tbbench";
    long n = 0;
    int c, err = 0, rc, verbose = 0, history = 0;

    B.timeout_s = 120;
    while ((c = getopt(argc, argv, "m:u:n:r:w:t:s:H:Svh")) != -1) {
        switch (c) {
        case 'm':
            role = optarg;
            break;
        case 'u':
            url = optarg;
            break;
        case 'n':
            n = atol(optarg);
            break;
        case 'r':
            B.rate = atoi(optarg);
            break;
        case 'w':
            B.workers = atoi(optarg);
            break;
        case 't':
            B.timeout_s = atoi(optarg);
            break;
        case 's':
            ns = optarg;
            break;
        case 'H':
            history = atoi(optarg);
            break;
        case 'S':
            B.marks = 1;
            break;
        case 'v':
            verbose = 1;
            break;
        default:
            usage(argv[0]);
        }
    }
    if (optind != argc || !role || !url || !*url || n <= 0 || n > INT32_MAX ||
        B.rate < 0 || B.workers < 0 || B.workers > MAX_WORKERS ||
        B.timeout_s <= 0 || history < 0)
        usage(argv[0]);
    B.n = (uint32_t)n;
    if (strcmp(role, "raw") == 0)
        return raw_run(url, ns);
    if (strcmp(role, "pub") == 0)
        B.pub = 1;
    else if (strcmp(role, "mem") == 0)
        B.mem = 1;
    else if (strcmp(role, "sub") != 0)
        usage(argv[0]);
    if (!B.workers)
        B.workers = B.pub ? 1 : 2;
    if (B.mem && B.workers == MAX_WORKERS) /* one more for the publisher */
        usage(argv[0]);

    if (!B.pub) {
        for (int i = 0; i < B.workers; i++) {
            B.w[i].seen = calloc((B.n + 7) / 8, 1);
            B.w[i].lat = malloc((size_t)B.n * sizeof(int32_t));
            if (!B.w[i].seen || !B.w[i].lat) {
                fprintf(stderr, "bench_redis: out of memory\n");
                return 1;
            }
        }
    }

    if (B.marks) { /* before any thread: every thread inherits it */
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    }
    tb_log_set_level(verbose ? TB_LOG_INFO : TB_LOG_WARN);
    tb_app_config_init(&cfg);
    cfg.core.workers = B.workers + B.mem;
    if (B.mem)
        cfg.core.worker_queue_max = 1 << 24;
    cfg.core.graceful_timeout_ms = 5000;
    cfg.core.handle_signals = 1;
    cfg.redis.url = B.mem ? NULL : url;
    cfg.core.history_size = history;
    cfg.core.event_namespace = ns;
    B.app = tb_app_new(&cfg, &err);
    if (!B.app) {
        fprintf(stderr, "bench_redis: tb_app_new: %s\n", tb_strerror(err));
        return 1;
    }
    /* Added before run, the task starts on every worker; the publisher's
     * replicas on workers other than 0 return at once. */
    tb_task_opts opts = {.name = B.pub ? "bench-pub" : "bench-sub"};
    rc = tb_task_add(B.app, B.pub ? pub_body : sub_body, NULL, &opts, NULL);
    if (rc == 0 && B.mem) {
        tb_task_opts popts = {.name = "bench-pub"};
        rc = tb_task_add(B.app, pub_body, NULL, &popts, NULL);
    }
    if (rc != 0) {
        fprintf(stderr, "bench_redis: tb_task_add: %s\n", tb_strerror(rc));
        tb_app_free(B.app);
        return 1;
    }
    rc = tb_app_run(B.app);
    tb_app_free(B.app);
    if (rc != 0)
        fprintf(stderr, "bench_redis: tb_app_run: %s\n", tb_strerror(rc));
    if (B.mem)
        rc = pub_report() | sub_report() || rc || B.failed;
    else
        rc = (B.pub ? pub_report() : sub_report()) || rc || B.failed;
    fflush(stdout);
    return rc ? 1 : 0;
}
