/* harness.h - shared helpers for the taskbus unit tests that run an app:
 * thread-safe checks, counters to wait on, clocks, and th_run_*(), which runs
 * an app on the test's main thread and drives it from a task or a helper
 * thread, with a watchdog so that a bug fails the test instead of hanging it.
 *
 * Static inline helpers only: each test file is its own executable.
 *
 * cmocka's assert_*() must only run on the test's main thread (they longjmp
 * to it). Code that runs in a task, a listener or a helper thread uses
 * TH_CHECK*() instead: a failed check is printed and recorded, and
 * th_run_*() fails the test on the main thread once the app has stopped.
 */
#ifndef TASKBUS_TESTS_HARNESS_H
#define TASKBUS_TESTS_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <taskbus/taskbus.h>

/* ------------------------------------------------------------ clocks */

static inline int64_t th_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t th_mono_ms(void)
{
    return th_mono_us() / 1000;
}

/* CLOCK_REALTIME in µs, the clock of tb_task_info and tb_event_ts_us. */
static inline int64_t th_real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* CPU time used by the whole process (all threads), in ms. */
static inline int64_t th_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Blocks the calling thread (never call it from a task). */
static inline void th_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A process-wide sequence number, to order things seen on several threads. */
static inline long th_seq(void)
{
    static atomic_long seq;
    return atomic_fetch_add(&seq, 1) + 1;
}

/* ------------------------------------------------------------ checks */

typedef struct th_failures {
    pthread_mutex_t mu;
    int count;
    char first[768];
} th_failures;

static inline th_failures *th__failures(void)
{
    static th_failures f = {PTHREAD_MUTEX_INITIALIZER, 0, ""};
    return &f;
}

static inline void th_failures_reset(void)
{
    th_failures *f = th__failures();
    pthread_mutex_lock(&f->mu);
    f->count = 0;
    f->first[0] = '\0';
    pthread_mutex_unlock(&f->mu);
}

static inline int th_failures_count(void)
{
    th_failures *f = th__failures();
    pthread_mutex_lock(&f->mu);
    int n = f->count;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* Records a failure unless ok; returns ok. Any thread, tasks included. */
static inline int th__check(int ok, const char *file, int line, const char *fmt,
                            ...) __attribute__((format(printf, 4, 5)));
static inline int th__check(int ok, const char *file, int line, const char *fmt,
                            ...)
{
    if (ok)
        return 1;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    th_failures *f = th__failures();
    pthread_mutex_lock(&f->mu);
    if (f->count++ == 0)
        snprintf(f->first, sizeof f->first, "%s:%d: %s", file, line, msg);
    if (f->count <= 20)
        fprintf(stderr, "CHECK FAILED %s:%d: %s\n", file, line, msg);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static inline int th__check_eq(long long a, long long b, const char *ea,
                               const char *eb, const char *file, int line)
{
    return th__check(a == b, file, line, "%s == %s (%lld != %lld)", ea, eb, a,
                     b);
}

/* Like th__check_eq, but names TB_E* codes: "rc == TB_ETIMEDOUT (ECANCELED
 * (-125) != ETIMEDOUT (-110))". */
static inline int th__check_rc(long long a, long long b, const char *ea,
                               const char *eb, const char *file, int line)
{
    return th__check(a == b, file, line, "%s == %s (%s (%lld) != %s (%lld))",
                     ea, eb, a < 0 ? tb_err_name((int)a) : "-", a,
                     b < 0 ? tb_err_name((int)b) : "-", b);
}

static inline int th__check_str(const char *a, const char *b, const char *ea,
                                const char *eb, const char *file, int line)
{
    int ok = a && b && strcmp(a, b) == 0;
    return th__check(ok, file, line, "%s == %s (\"%s\" != \"%s\")", ea, eb,
                     a ? a : "(null)", b ? b : "(null)");
}

#define TH_CHECK(cond) th__check(!!(cond), __FILE__, __LINE__, "%s", #cond)
#define TH_CHECKF(cond, ...)                                                   \
    th__check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define TH_CHECK_EQ(a, b)                                                      \
    th__check_eq((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define TH_CHECK_RC(a, b)                                                      \
    th__check_rc((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define TH_CHECK_STR(a, b) th__check_str((a), (b), #a, #b, __FILE__, __LINE__)

/* On the test's main thread: fails the cmocka test if any check failed. */
#define th_assert_clean()                                                      \
    do {                                                                       \
        th_failures *f_ = th__failures();                                      \
        pthread_mutex_lock(&f_->mu);                                           \
        int n_ = f_->count;                                                    \
        char first_[sizeof f_->first];                                         \
        memcpy(first_, f_->first, sizeof first_);                              \
        pthread_mutex_unlock(&f_->mu);                                         \
        if (n_ != 0)                                                           \
            fail_msg("%d check(s) failed; first: %s", n_, first_);             \
    } while (0)

/* cmocka-side helper for return codes on the main thread. */
#define assert_rc(a, b)                                                        \
    do {                                                                       \
        int a_ = (a), b_ = (b);                                                \
        if (a_ != b_)                                                          \
            fail_msg("%s == %s: got %s (%d), want %s (%d)", #a, #b,            \
                     tb_err_name(a_), a_, tb_err_name(b_), b_);                \
    } while (0)

/* ------------------------------------------------------------ counters */

/* A counter that threads can wait on. Never wait on one from a task (that
 * would block the worker's loop); tasks poll with th_task_wait_ge(). */
typedef struct th_counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long v;
} th_counter;

#define TH_COUNTER_INITIALIZER                                                 \
    {                                                                          \
        PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0                 \
    }

static inline void th_counter_init(th_counter *c)
{
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->v = 0;
}

static inline void th_counter_destroy(th_counter *c)
{
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

/* Adds n and returns the new value. Any thread, tasks included. */
static inline long th_counter_add(th_counter *c, long n)
{
    pthread_mutex_lock(&c->mu);
    long v = (c->v += n);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return v;
}

static inline long th_counter_get(th_counter *c)
{
    pthread_mutex_lock(&c->mu);
    long v = c->v;
    pthread_mutex_unlock(&c->mu);
    return v;
}

/* Waits until the counter is >= target, at most timeout_ms. Returns 1 if it
 * got there. Not from a task. */
static inline int th_counter_wait_ge(th_counter *c, long target, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->v < target && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    int ok = c->v >= target;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* From inside a task: polls the counter, sleeping 1 ms between looks, until
 * it is >= target. Returns 1 if it got there, 0 on timeout or cancel. */
static inline int th_task_wait_ge(tb_task *self, th_counter *c, long target,
                                  int timeout_ms)
{
    int64_t end = th_mono_ms() + timeout_ms;
    while (th_counter_get(c) < target) {
        if (th_mono_ms() >= end || tb_sleep(self, 1) != 0)
            return th_counter_get(c) >= target;
    }
    return 1;
}

/* ------------------------------------------------------------ registry */

/* Task options with the API's defaults (note: worker 0 is a real worker, so
 * a zeroed tb_task_opts pins the task to worker 0). */
static inline tb_task_opts th_opts(const char *name, int worker)
{
    tb_task_opts o;
    memset(&o, 0, sizeof o);
    o.name = name;
    o.worker = worker;
    return o;
}

/* Adds a named task on worker (TB_WORKER_ANY allowed); returns tb_task_add's
 * code. */
static inline int th_add(tb_app *app, const char *name, int worker,
                         tb_task_fn fn, void *arg, uint64_t *id)
{
    tb_task_opts o = th_opts(name, worker);
    return tb_task_add(app, fn, arg, &o, id);
}

/* Polls (1 ms) until the first task named name is in state, at most
 * timeout_ms. Not from a task. Returns 1 if it got there. */
static inline int th_wait_state(tb_app *app, const char *name,
                                tb_task_state state, int timeout_ms)
{
    int64_t end = th_mono_ms() + timeout_ms;
    for (;;) {
        tb_task_info info;
        if (tb_task_get(app, name, &info) > 0 && info.state == state)
            return 1;
        if (th_mono_ms() >= end)
            return 0;
        th_nap_ms(1);
    }
}

/* Copies the listing entry with that id into *out. Returns 1 if found. */
static inline int th_find_id(tb_app *app, uint64_t id, tb_task_info *out)
{
    tb_task_info *list = NULL;
    size_t n = 0;
    int found = 0;
    if (tb_task_list(app, &list, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (list[i].id == id) {
            if (out)
                *out = list[i];
            found = 1;
            break;
        }
    }
    free(list);
    return found;
}

/* Number of listed tasks named name; *states_ok (if not NULL) is set to 1 if
 * all of them are in state (pass a negative state to skip that check), and
 * *worker_mask gets the bit of each one's worker. */
static inline int th_count_named(tb_app *app, const char *name, int state,
                                 int *states_ok, unsigned *worker_mask)
{
    tb_task_info *list = NULL;
    size_t n = 0;
    if (tb_task_list(app, &list, &n) < 0)
        return -1;
    int count = 0, ok = 1;
    unsigned mask = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].name, name) != 0)
            continue;
        count++;
        if (state >= 0 && (int)list[i].state != state)
            ok = 0;
        if (list[i].worker >= 0 && list[i].worker < 32)
            mask |= 1u << list[i].worker;
    }
    free(list);
    if (states_ok)
        *states_ok = ok;
    if (worker_mask)
        *worker_mask = mask;
    return count;
}

/* ------------------------------------------------------------ apps */

/* A new app with workers and graceful_ms, signals not handled, quiet logs.
 * Resets the recorded check failures. Main thread (uses cmocka). */
static inline tb_app *th_app_new_cfg(const tb_app_config *cfg)
{
    th_failures_reset();
    tb_log_set_level(TB_LOG_WARN);
    int err = 1;
    tb_app *app = tb_app_new(cfg, &err);
    if (!app)
        fail_msg("tb_app_new failed: %s", tb_err_name(err));
    return app;
}

static inline tb_app *th_app_new(int workers, int graceful_ms)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = workers;
    cfg.core.graceful_timeout_ms = graceful_ms;
    cfg.core.handle_signals = 0;
    return th_app_new_cfg(&cfg);
}

/* ------------------------------------------------------------ running */

typedef void (*th_thread_body)(tb_app *app, void *ctx);
typedef int (*th_task_body)(tb_task *self, void *ctx);

typedef struct th_run {
    tb_app *app;
    th_thread_body thread_body;
    th_task_body task_body;
    int task_worker;
    void *ctx;
    int timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;    /* MAIN_READY ran */
    int returned; /* tb_app_run returned */
    int done;     /* ... and the driver thread was joined */
} th_run;

#define TH_DRIVER_NAME "th-driver"

static inline void th__run_set(th_run *r, int *field)
{
    pthread_mutex_lock(&r->mu);
    *field = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static inline int th__driver_task(tb_task *self, void *arg)
{
    th_run *r = arg;
    int rc = r->task_body(self, r->ctx);
    tb_app_stop(tb_task_app(self));
    return rc;
}

static inline int th__on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    th_run *r = arg;
    if (r->task_body) {
        tb_task_opts o = th_opts(TH_DRIVER_NAME, r->task_worker);
        o.kind = "harness";
        int rc = tb_task_add(app, th__driver_task, r, &o, NULL);
        if (!TH_CHECK_RC(rc, 0))
            tb_app_stop(app);
    }
    th__run_set(r, &r->ready);
    return 0;
}

static inline void *th__driver_thread(void *arg)
{
    th_run *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->ready && !r->returned)
        pthread_cond_wait(&r->cv, &r->mu);
    int go = r->ready;
    pthread_mutex_unlock(&r->mu);
    if (go)
        r->thread_body(r->app, r->ctx);
    tb_app_stop(r->app);
    return NULL;
}

static inline void *th__watchdog(void *arg)
{
    th_run *r = arg;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += r->timeout_ms / 1000;
    dl.tv_nsec += (long)(r->timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (!r->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &dl);
    if (r->done) {
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    pthread_mutex_unlock(&r->mu);
    TH_CHECKF(0, "watchdog: the test did not finish within %d ms; stopping",
              r->timeout_ms);
    tb_app_stop(r->app);
    /* Stop has the graceful timeout plus some slack to return. */
    const tb_app_config *cfg = tb_app_get_config(r->app);
    int grace = (cfg ? cfg->core.graceful_timeout_ms : 15000) + 10000;
    dl.tv_sec += grace / 1000;
    dl.tv_nsec += (long)(grace % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    rc = 0;
    while (!r->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &dl);
    int done = r->done;
    pthread_mutex_unlock(&r->mu);
    if (!done) {
        fprintf(stderr, "watchdog: %s after tb_app_stop + %d ms; aborting\n",
                r->returned ? "the driver thread did not end"
                            : "tb_app_run did not return",
                grace);
        abort();
    }
    return NULL;
}

/* Runs app on the calling (main) thread until it stops, with a watchdog of
 * timeout_ms. With thread_body, a helper thread runs thread_body(app, ctx)
 * once MAIN_READY has run and then calls tb_app_stop. With task_body, a task
 * named TH_DRIVER_NAME (kind "harness") is added on task_worker at
 * MAIN_READY; it runs task_body(self, ctx) and then calls tb_app_stop. With
 * neither, something else must stop the app. Registers a MAIN_READY
 * listener, so call it once per app. Returns tb_app_run's result. */
static inline int th__run(tb_app *app, th_thread_body thread_body,
                          th_task_body task_body, int task_worker, void *ctx,
                          int timeout_ms)
{
    th_run r;
    memset(&r, 0, sizeof r);
    r.app = app;
    r.thread_body = thread_body;
    r.task_body = task_body;
    r.task_worker = task_worker;
    r.ctx = ctx;
    r.timeout_ms = timeout_ms;
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    assert_rc(tb_app_add_listener(app, TB_MAIN_READY, th__on_ready, &r), 0);

    pthread_t driver, watchdog;
    if (thread_body)
        assert_int_equal(pthread_create(&driver, NULL, th__driver_thread, &r),
                         0);
    assert_int_equal(pthread_create(&watchdog, NULL, th__watchdog, &r), 0);

    int rc = tb_app_run(app);

    th__run_set(&r, &r.returned);
    if (thread_body)
        pthread_join(driver, NULL);
    th__run_set(&r, &r.done);
    pthread_join(watchdog, NULL);
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    return rc;
}

static inline int th_run_thread(tb_app *app, th_thread_body body, void *ctx,
                                int timeout_ms)
{
    return th__run(app, body, NULL, 0, ctx, timeout_ms);
}

static inline int th_run_task(tb_app *app, int worker, th_task_body body,
                              void *ctx, int timeout_ms)
{
    return th__run(app, NULL, body, worker, ctx, timeout_ms);
}

static inline int th_run_plain(tb_app *app, int timeout_ms)
{
    return th__run(app, NULL, NULL, 0, NULL, timeout_ms);
}

#endif /* TASKBUS_TESTS_HARNESS_H */
