/* bench_tasks.c - spawn, idle memory, wake-all and cancel rates of taskbus
 * tasks on one worker (the C side of tests/bench/run_tasks.sh).
 *
 * Usage: bench_tasks [-n N] [-r R] [-s STACK_KIB] [-p PHASES] [-v]
 *
 * One app with one worker. Everything runs inside a driver task on that
 * worker, so nothing crosses threads, as in asyncio's single loop
 * (tests/bench/bench_tasks_asyncio.py runs the same phases in the same order):
 *
 *   idle   add N tasks that each block in tb_event_wait("bench.wake"); yield
 *          until all are waiting; VmRSS before and after gives the
 *          resident bytes per idle task (malloc's in-use bytes and VmPTE
 *          split it up in the detail line).
 *   wake   dispatch "bench.wake" once; time until all N have woken. Each
 *          increments a counter and the last dispatches "bench.done", which
 *          the driver receives on a subscription (a subscription, not
 *          tb_event_wait, so a "done" sent before the driver waits is kept).
 *   spawn  add N unnamed tasks that increment a counter and return; time
 *          from the first add until the last one has run (same "done").
 *   cancel add N tasks named "t<i>" sleeping an hour, yield until all sleep,
 *          then time tb_task_cancel(app, "t<i>", TB_TIMEOUT_DEFAULT) for each
 * in turn (cancel and wait, like Sanic's `task.cancel(); await task`).
 *
 * Finished tasks are purged after every phase. Times are CLOCK_MONOTONIC.
 * Output, one line per phase (rates: best of R, median added when R > 1):
 *
 *   taskbus idle: <bytes> B/task
 *   taskbus idle-detail: heap <b> B/task, rest (stacks) <b> B/task; page
 *                        tables <b> B/task more (not in VmRSS); <n> maps
 *   taskbus wake: <rate>/s
 *   taskbus spawn: <rate>/s
 *   taskbus cancel: <rate>/s
 *
 * Profiling one timed window: with BENCH_PERF_CTL_FD=<fd> in the
 * environment, "enable" and "disable" are written to that fd around each
 * timed section, for `perf record -D -1 --control fd:<fd>` (see
 * docs/BENCHMARKS.md).
 *
 * Memory is measured in the first repetition only: later ones reuse what
 * malloc and the stack pool kept, which would flatter them.
 * Exit status 0, or 1 with a message on stderr if any call failed or a phase
 * did not finish within PHASE_TIMEOUT_MS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mallinfo2, getc_unlocked */
#endif
#include <taskbus/taskbus.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PHASE_TIMEOUT_MS 60000
#define SLEEP_FOREVER_MS (3600 * 1000)
#define MAX_REPS 100

/* Shared by the driver and the tasks it adds. Only the worker thread touches
 * it while the app runs; main reads it after tb_app_run has returned. */
static struct {
    tb_app *app;
    int n;
    int reps;
    int count; /* tasks that have reached their suspension point (or run) */
    int woken;
    int task_errors;                     /* unexpected returns inside tasks */
    int failed;                          /* the driver gave up */
    int run_idle, run_spawn, run_cancel; /* -p: which phases run */
    tb_sub *done;
    double idle_bytes, idle_heap, idle_rest, idle_pte;
    long idle_maps;
    double wake[MAX_REPS], spawn[MAX_REPS], cancel[MAX_REPS];
} B;

static int perf_ctl_fd = -1;

/* Turns perf on or off around a timed section (BENCH_PERF_CTL_FD). */
static void perf_ctl(int on)
{
    const char *cmd = on ? "enable\n" : "disable\n";

    if (perf_ctl_fd >= 0 &&
        write(perf_ctl_fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd))
        perf_ctl_fd = -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A "Vm...:  <n> kB" field of /proc/self/status, in bytes, or -1. */
static long status_bytes(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t len = strlen(field);
    long kib = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0 && line[len] == ':' &&
            sscanf(line + len + 1, "%ld", &kib) == 1)
            break;
    fclose(f);
    return kib < 0 ? -1 : kib * 1024;
}

static long heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (long)(mi.uordblks + mi.hblkhd);
}

/* Number of memory mappings (VMAs); vm.max_map_count bounds it. */
static long map_count(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    long n = 0;
    int c;

    if (!f)
        return -1;
    while ((c = getc_unlocked(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "bench_tasks: %s: %s (%s)\n", what, tb_strerror(rc),
            tb_err_name(rc));
    B.failed = 1;
    return rc;
}

/* The last task of a phase tells the driver. */
static void signal_done(tb_task *self)
{
    int rc = tb_dispatch(tb_task_app(self), "bench.done", NULL, 0, NULL);
    if (rc != 0) {
        fprintf(stderr, "bench_tasks: dispatch bench.done: %s\n",
                tb_strerror(rc));
        B.task_errors++;
    }
}

static int wait_done(tb_task *self, const char *phase)
{
    tb_event *ev = NULL;
    int rc = tb_sub_next(self, B.done, PHASE_TIMEOUT_MS, &ev);

    if (rc != 0) {
        fprintf(stderr,
                "bench_tasks: %s: waiting for the last task: %s "
                "(count %d, woken %d of %d)\n",
                phase, tb_strerror(rc), B.count, B.woken, B.n);
        B.failed = 1;
        return rc;
    }
    tb_event_unref(ev);
    return 0;
}

/* Yields until `want` tasks have reached their suspension point. A task
 * counts itself just before it suspends, and nothing runs in between on a
 * single worker, so count == want means all are suspended. */
static int settle(tb_task *self, int want)
{
    long spins = 0;
    double deadline = now_s() + PHASE_TIMEOUT_MS / 1000.0;

    while (B.count < want) {
        int rc = ++spins < 1000 ? tb_yield(self) : tb_sleep(self, 1);
        if (rc != 0)
            return fail("settle: yield", rc);
        if (now_s() > deadline) {
            fprintf(stderr, "bench_tasks: only %d of %d tasks started\n",
                    B.count, want);
            B.failed = 1;
            return TB_ETIMEDOUT;
        }
    }
    return 0;
}

static int purge(void)
{
    int rc = tb_task_purge(B.app);
    if (rc < B.n) {
        fprintf(stderr, "bench_tasks: purge removed %d tasks, expected >= %d\n",
                rc, B.n);
        B.failed = 1;
        return rc < 0 ? rc : TB_EIO;
    }
    return 0;
}

/* ---------------------------------------------------------------- bodies */

static int idle_body(tb_task *self, void *arg)
{
    tb_event *ev = NULL;
    int rc;

    (void)arg;
    B.count++;
    rc = tb_event_wait(self, "bench.wake", -1, &ev);
    if (rc != 0) {
        B.task_errors++;
        return rc;
    }
    tb_event_unref(ev);
    if (++B.woken == B.n)
        signal_done(self);
    return 0;
}

static int spawn_body(tb_task *self, void *arg)
{
    (void)arg;
    if (++B.count == B.n)
        signal_done(self);
    return 0;
}

static int sleep_body(tb_task *self, void *arg)
{
    int rc;

    (void)arg;
    B.count++;
    rc = tb_sleep(self, SLEEP_FOREVER_MS);
    if (rc != TB_ECANCELED)
        B.task_errors++;
    return rc;
}

/* ---------------------------------------------------------------- phases */

static int phase_idle_wake(tb_task *self, int rep)
{
    tb_task_opts opts = {.worker = 0};
    long rss0, rss1, heap0, heap1, pte0, pte1;
    double t0, t1;
    int i, rc;

    B.count = B.woken = 0;
    rss0 = status_bytes("VmRSS");
    pte0 = status_bytes("VmPTE");
    heap0 = heap_in_use();
    for (i = 0; i < B.n; i++) {
        rc = tb_task_add(B.app, idle_body, NULL, &opts, NULL);
        if (rc != 0) {
            fprintf(stderr, "bench_tasks: idle: after %d tasks: ", i);
            return fail("tb_task_add", rc);
        }
    }
    if ((rc = settle(self, B.n)) != 0)
        return rc;
    rss1 = status_bytes("VmRSS");
    pte1 = status_bytes("VmPTE");
    heap1 = heap_in_use();
    if (rep == 0) {
        B.idle_bytes = (double)(rss1 - rss0) / B.n;
        B.idle_heap = (double)(heap1 - heap0) / B.n;
        B.idle_rest = B.idle_bytes - B.idle_heap;
        B.idle_pte = (double)(pte1 - pte0) / B.n;
        B.idle_maps = map_count();
    }

    perf_ctl(1);
    t0 = now_s();
    rc = tb_dispatch(B.app, "bench.wake", NULL, 0, NULL);
    if (rc != 0)
        return fail("dispatch bench.wake", rc);
    if ((rc = wait_done(self, "wake")) != 0)
        return rc;
    t1 = now_s();
    perf_ctl(0);
    B.wake[rep] = B.n / (t1 - t0);
    return purge();
}

static int phase_spawn(tb_task *self, int rep)
{
    tb_task_opts opts = {.worker = 0};
    double t0, t1;
    int i, rc;

    B.count = 0;
    perf_ctl(1);
    t0 = now_s();
    for (i = 0; i < B.n; i++) {
        rc = tb_task_add(B.app, spawn_body, NULL, &opts, NULL);
        if (rc != 0) {
            fprintf(stderr, "bench_tasks: spawn: after %d tasks: ", i);
            return fail("tb_task_add", rc);
        }
    }
    if ((rc = wait_done(self, "spawn")) != 0)
        return rc;
    t1 = now_s();
    perf_ctl(0);
    B.spawn[rep] = B.n / (t1 - t0);
    return purge();
}

static int phase_cancel(tb_task *self, int rep)
{
    tb_task_opts opts = {.worker = 0};
    tb_task_info info;
    char name[32];
    double t0, t1;
    int i, rc;

    B.count = 0;
    opts.name = name;
    for (i = 0; i < B.n; i++) {
        snprintf(name, sizeof name, "t%d", i);
        rc = tb_task_add(B.app, sleep_body, NULL, &opts, NULL);
        if (rc != 0) {
            fprintf(stderr, "bench_tasks: cancel: after %d tasks: ", i);
            return fail("tb_task_add", rc);
        }
    }
    if ((rc = settle(self, B.n)) != 0)
        return rc;

    perf_ctl(1);
    t0 = now_s();
    for (i = 0; i < B.n; i++) {
        snprintf(name, sizeof name, "t%d", i);
        rc = tb_task_cancel(B.app, name, TB_TIMEOUT_DEFAULT);
        if (rc != 0) {
            fprintf(stderr, "bench_tasks: cancel %s: ", name);
            return fail("tb_task_cancel", rc);
        }
    }
    t1 = now_s();
    perf_ctl(0);
    B.cancel[rep] = B.n / (t1 - t0);

    rc = tb_task_get(B.app, "t0", &info);
    if (rc != 1 || info.state != TB_TASK_CANCELLED) {
        fprintf(stderr, "bench_tasks: t0 after cancel: get %d, state %s\n", rc,
                rc == 1 ? tb_task_state_name(info.state) : "-");
        B.failed = 1;
        return TB_EIO;
    }
    return purge();
}

static int driver(tb_task *self, void *arg)
{
    int err = 0, rep;

    (void)arg;
    B.done = tb_sub_open(self, "bench.done", 16, &err);
    if (!B.done) {
        fail("tb_sub_open", err);
        tb_app_stop(B.app);
        return err;
    }
    for (rep = 0; rep < B.reps && !B.failed; rep++) {
        if (B.run_idle && phase_idle_wake(self, rep) != 0)
            break;
        if (B.run_spawn && phase_spawn(self, rep) != 0)
            break;
        if (B.run_cancel && phase_cancel(self, rep) != 0)
            break;
    }
    tb_sub_close(B.done);
    tb_app_stop(B.app);
    return B.failed;
}

/* ---------------------------------------------------------------- main */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report_rate(const char *phase, const double *v, int reps)
{
    double s[MAX_REPS];

    memcpy(s, v, sizeof(double) * (size_t)reps);
    qsort(s, (size_t)reps, sizeof s[0], cmp_double);
    printf("taskbus %s: %.0f/s", phase, s[reps - 1]);
    if (reps > 1)
        printf(" (best of %d; median %.0f/s)", reps,
               reps % 2 ? s[reps / 2] : (s[reps / 2 - 1] + s[reps / 2]) / 2);
    printf("\n");
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-n TASKS] [-r REPS] [-s STACK_KIB] [-p PHASES] [-v]\n"
            "  -n  tasks per phase (default 100000)\n"
            "  -r  repetitions, 1..%d (default 1); best and median reported\n"
            "  -s  per-task stack size in KiB (default: the library's)\n"
            "  -p  comma-separated subset of idle (with wake), spawn, cancel\n"
            "      (default: all; for profiling one phase)\n"
            "  -v  keep taskbus's info logging (default: warnings only)\n",
            argv0, MAX_REPS);
    exit(2);
}

int main(int argc, char **argv)
{
    tb_app_config cfg;
    tb_task_opts opts = {.name = "bench-driver"};
    int c, err = 0, rc, verbose = 0;
    long stack_kib = 0;

    B.n = 100000;
    B.reps = 1;
    B.run_idle = B.run_spawn = B.run_cancel = 1;
    while ((c = getopt(argc, argv, "n:r:s:p:vh")) != -1) {
        switch (c) {
        case 'n':
            B.n = atoi(optarg);
            break;
        case 'r':
            B.reps = atoi(optarg);
            break;
        case 's':
            stack_kib = atol(optarg);
            break;
        case 'p':
            B.run_idle = strstr(optarg, "idle") || strstr(optarg, "wake");
            B.run_spawn = strstr(optarg, "spawn") != NULL;
            B.run_cancel = strstr(optarg, "cancel") != NULL;
            if (!B.run_idle && !B.run_spawn && !B.run_cancel)
                usage(argv[0]);
            break;
        case 'v':
            verbose = 1;
            break;
        default:
            usage(argv[0]);
        }
    }
    if (optind != argc || B.n <= 0 || B.reps <= 0 || B.reps > MAX_REPS ||
        stack_kib < 0)
        usage(argv[0]);

    if (getenv("BENCH_PERF_CTL_FD"))
        perf_ctl_fd = atoi(getenv("BENCH_PERF_CTL_FD"));
    tb_log_set_level(verbose ? TB_LOG_INFO : TB_LOG_WARN);
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 5000;
    cfg.core.handle_signals = 1;
    if (stack_kib)
        cfg.core.stack_size = (size_t)stack_kib * 1024;
    B.app = tb_app_new(&cfg, &err);
    if (!B.app) {
        fail("tb_app_new", err);
        return 1;
    }
    rc = tb_task_add(B.app, driver, NULL, &opts, NULL);
    if (rc != 0) {
        fail("tb_task_add(driver)", rc);
        tb_app_free(B.app);
        return 1;
    }
    rc = tb_app_run(B.app);
    tb_app_free(B.app);
    if (rc != 0)
        fprintf(stderr, "bench_tasks: tb_app_run: %s\n", tb_strerror(rc));
    if (B.task_errors)
        fprintf(stderr, "bench_tasks: %d unexpected returns inside tasks\n",
                B.task_errors);
    if (rc != 0 || B.failed || B.task_errors)
        return 1;

    if (B.run_idle) {
        printf("taskbus idle: %.0f B/task\n", B.idle_bytes);
        printf("taskbus idle-detail: heap %.0f B/task, rest (stacks) %.0f "
               "B/task; page tables %.0f B/task more (not in VmRSS); "
               "%ld maps\n",
               B.idle_heap, B.idle_rest, B.idle_pte, B.idle_maps);
        report_rate("wake", B.wake, B.reps);
    }
    if (B.run_spawn)
        report_rate("spawn", B.spawn, B.reps);
    if (B.run_cancel)
        report_rate("cancel", B.cancel, B.reps);
    return 0;
}
