/* harness.h - what the C tests that run an app share (tests/support/,
 * compiled once into the tbtest_harness library): thread-safe checks,
 * counters to wait on, clocks, th_run_*(), which runs an app on the test's
 * main thread and drives it from a task or a helper thread with a watchdog
 * so that a bug fails the test instead of hanging it, and TH_APP_TEST /
 * TH_TASK_TEST, which make such a test out of its body alone.
 *
 * cmocka's assert_*() must only run on the test's main thread (they longjmp
 * to it). Code that runs in a task, a listener or a helper thread uses
 * TH_CHECK*() instead: a failed check is printed and recorded, and
 * th_run_*() fails the test on the main thread once the app has stopped.
 * Functions that use cmocka say so ("main thread").
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

/* CLOCK_MONOTONIC in µs and in ms. */
int64_t th_mono_us(void);
int64_t th_mono_ms(void);

/* CLOCK_REALTIME in µs, the clock of tb_task_info and tb_event_ts_us. */
int64_t th_real_us(void);

/* CPU time used by the whole process (all threads), in ms. */
int64_t th_cpu_ms(void);

/* Blocks the calling thread for ms (never call it from a task). */
void th_nap_ms(int ms);

/* A name the pattern may match, made into out (size n): each literal
 * segment as it is, each "*" or "<param>" one of a few literal segments,
 * a last ">" one to three of them (capped at TB_EVENT_SEGMENTS_MAX
 * segments in all), chosen with *seed (any value; it advances). Then,
 * when *seed says so, one segment changed to "zz" or one segment added or
 * removed, so that near misses come too. Returns out. */
char *th_name_near(const char *pattern, unsigned *seed, char *out, size_t n);

/* Patterns whose literal prefixes (the segments before the first
 * wildcard) have every depth from 0 to 7: "*", ">", params, shared and
 * lone prefixes, and two exact names; for the wildcard index's tests. */
extern const char *const th_prefix_patterns[];
extern const int th_prefix_npatterns;

/* A process-wide sequence number (1, 2, ...), to order things seen on
 * several threads. Any thread. */
long th_seq(void);

/* ------------------------------------------------------------ checks */

/* Forgets the recorded check failures (th_app_new does it). */
void th_failures_reset(void);

/* The number of checks failed since the last reset. Any thread. */
int th_failures_count(void);

/* The count, and the first failure's "file:line: message" copied into buf
 * (bufsz bytes, NUL-terminated; "" when none). Any thread. */
int th__failures_first(char *buf, size_t bufsz);

/* Records a failure unless ok; returns ok. Any thread, tasks included. The
 * TH_CHECK*() macros below call these. */
int th__check(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int th__check_eq(long long a, long long b, const char *ea, const char *eb,
                 const char *file, int line);
/* Like th__check_eq, but names TB_E* codes: "rc == TB_ETIMEDOUT (ECANCELED
 * (-125) != ETIMEDOUT (-110))". */
int th__check_rc(long long a, long long b, const char *ea, const char *eb,
                 const char *file, int line);
int th__check_str(const char *a, const char *b, const char *ea, const char *eb,
                  const char *file, int line);

#define TH_CHECK(cond) th__check(!!(cond), __FILE__, __LINE__, "%s", #cond)
#define TH_CHECKF(cond, ...)                                                   \
    th__check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define TH_CHECK_EQ(a, b)                                                      \
    th__check_eq((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define TH_CHECK_RC(a, b)                                                      \
    th__check_rc((long long)(a), (long long)(b), #a, #b, __FILE__, __LINE__)
#define TH_CHECK_STR(a, b) th__check_str((a), (b), #a, #b, __FILE__, __LINE__)

/* On the test's main thread: fails the cmocka test (at the caller's line)
 * if any check failed. */
#define th_assert_clean()                                                      \
    do {                                                                       \
        char first_[768];                                                      \
        int n_ = th__failures_first(first_, sizeof first_);                    \
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

/* A counter that threads can wait on. A zeroed th_counter is a valid
 * counter at 0 (static, calloc'ed or memset memory needs no init): all
 * counters share one lock and one condition variable, which the test
 * support owns. Never wait on one from a task (that would block the
 * worker's loop); tasks poll with th_task_wait_ge(). */
typedef struct th_counter {
    long v; /* under the shared lock: use the functions */
} th_counter;

#define TH_COUNTER_INITIALIZER                                                 \
    {                                                                          \
        0                                                                      \
    }

/* Sets the counter to 0. Optional for zeroed memory. */
void th_counter_init(th_counter *c);

/* Nothing to release (kept so that tests may pair it with init). */
void th_counter_destroy(th_counter *c);

/* Adds n and returns the new value. Any thread, tasks included. */
long th_counter_add(th_counter *c, long n);

long th_counter_get(th_counter *c);

/* Waits until the counter is >= target, at most timeout_ms. Returns 1 if it
 * got there. Not from a task. */
int th_counter_wait_ge(th_counter *c, long target, int timeout_ms);

/* From inside a task: polls the counter, sleeping 1 ms between looks, until
 * it is >= target. Returns 1 if it got there, 0 on timeout or cancel. */
int th_task_wait_ge(tb_task *self, th_counter *c, long target, int timeout_ms);

/* ------------------------------------------------------------ registry */

/* Task options with the API's defaults (note: worker 0 is a real worker, so
 * a zeroed tb_task_opts pins the task to worker 0). name is not copied. */
tb_task_opts th_opts(const char *name, int worker);

/* Adds a named task on worker (TB_WORKER_ANY allowed); returns tb_task_add's
 * code. */
int th_add(tb_app *app, const char *name, int worker, tb_task_fn fn, void *arg,
           uint64_t *id);

/* Polls (1 ms) until the first task named name is in state, at most
 * timeout_ms. Not from a task. Returns 1 if it got there. */
int th_wait_state(tb_app *app, const char *name, tb_task_state state,
                  int timeout_ms);

/* Copies the listing entry with that id into *out (may be NULL). Returns 1
 * if found. */
int th_find_id(tb_app *app, uint64_t id, tb_task_info *out);

/* Number of listed tasks named name (-1 if the listing fails); *states_ok
 * (if not NULL) is set to 1 if all of them are in state (pass a negative
 * state to skip that check), and *worker_mask gets the bit of each one's
 * worker. */
int th_count_named(tb_app *app, const char *name, int state, int *states_ok,
                   unsigned *worker_mask);

/* ------------------------------------------------------------ apps */

/* A new app from cfg, with quiet logs (TB_LOG_WARN); resets the recorded
 * check failures. The caller owns the app (tb_app_free). Main thread:
 * fails the test if tb_app_new does. */
tb_app *th_app_new_cfg(const tb_app_config *cfg);

/* th_app_new_cfg with the defaults, workers, graceful_ms and signals not
 * handled. */
tb_app *th_app_new(int workers, int graceful_ms);

/* ------------------------------------------------------------ running */

typedef void (*th_thread_body)(tb_app *app, void *ctx);
typedef int (*th_task_body)(tb_task *self, void *ctx);

#define TH_DRIVER_NAME "th-driver"

/* Run app on the calling (main) thread until it stops, with a watchdog of
 * timeout_ms (on expiry: a failed check and tb_app_stop; abort if even
 * that does not end the run). They register a MAIN_READY listener, so call
 * one of them once per app, before its run. Main thread. They return
 * tb_app_run's result; the app stays the caller's.
 *  - th_run_thread: a helper thread runs body(app, ctx) once MAIN_READY has
 *    run, then calls tb_app_stop.
 *  - th_run_task: a task named TH_DRIVER_NAME (kind "harness") is added on
 *    worker at MAIN_READY; it runs body(self, ctx), then calls tb_app_stop.
 *  - th_run_plain: no driver; something else must stop the app. */
int th_run_thread(tb_app *app, th_thread_body body, void *ctx, int timeout_ms);
int th_run_task(tb_app *app, int worker, th_task_body body, void *ctx,
                int timeout_ms);
int th_run_plain(tb_app *app, int timeout_ms);

/* From the body of th_run_thread (or TH_APP_TEST): stops the app and waits
 * until tb_app_run has returned; returns its result. The body may then
 * check what the run left behind (the app is freed only after the body
 * returns). Elsewhere it is a failed check and returns TB_EINVAL. */
int th_app_stopped(tb_app *app);

/* ------------------------------------------------------------ app tests */

/* The fixture behind TH_APP_TEST and TH_TASK_TEST: takes app (from th_app_new
 * or a file's own constructor), runs it with thread (th_run_thread) or,
 * when thread is NULL, with task on worker (th_run_task), the app being the
 * ctx of either, frees it, then fails the test if a check failed or
 * tb_app_run did not return 0. Main thread. */
void th_app_test(tb_app *app, th_thread_body thread, th_task_body task,
                 int worker, int timeout_ms);

/* TH_APP_TEST(name, new_app, timeout_ms) { body }
 * defines the cmocka test `name`, whose body is the block that follows:
 * new_app (an expression, evaluated on the main thread: th_app_new(2, 2000),
 * or a file's own constructor) is run by th_app_test, and the body runs on
 * its helper thread, where it sees `app` and checks with TH_CHECK*(). The
 * app stops when the body returns. Whatever its tasks touch must outlive
 * the run: a context the body needs is `static` in it (a test runs once per
 * process, and zeroed th_counters are ready to use). What a test checks
 * after the run, it checks after th_app_stopped(app). */
#define TH_APP_TEST(name, new_app, timeout_ms)                                 \
    static void name##_body(tb_app *app);                                      \
    static void name##_thread(tb_app *app, void *ctx)                          \
    {                                                                          \
        (void)ctx;                                                             \
        name##_body(app);                                                      \
    }                                                                          \
    static void name(void **state)                                             \
    {                                                                          \
        (void)state;                                                           \
        th_app_test((new_app), name##_thread, NULL, 0, (timeout_ms));          \
    }                                                                          \
    static void name##_body(tb_app *app __attribute__((unused)))

/* TH_TASK_TEST(name, new_app, worker, timeout_ms) { body }
 * the same with the body run as the driver task (TH_DRIVER_NAME) on
 * worker: it sees `self` and `app` (the app new_app made), may suspend,
 * and the app stops when it returns. */
#define TH_TASK_TEST(name, new_app, worker, timeout_ms)                        \
    static void name##_body(tb_task *self, tb_app *app);                       \
    static int name##_task(tb_task *self, void *app)                           \
    {                                                                          \
        name##_body(self, app);                                                \
        return 0;                                                              \
    }                                                                          \
    static void name(void **state)                                             \
    {                                                                          \
        (void)state;                                                           \
        th_app_test((new_app), NULL, name##_task, (worker), (timeout_ms));     \
    }                                                                          \
    static void name##_body(tb_task *self __attribute__((unused)),             \
                            tb_app *app __attribute__((unused)))

/* ------------------------------------------------------------ bus store */

#include "bus.h"

/* What a bus store's callbacks reported: the memory bus calls back before
 * its op returns, so a test reads it right after (main thread: the list
 * callback checks each record with cmocka). */
typedef struct th_kv_seen {
    int calls, status;
    size_t n, dropped;
    char ids[8][TB__KV_ID_MAX + 1];
    char values[8][64];
} th_kv_seen;

/* A new app with the defaults (the in-process bus, whose store the test
 * uses); fails the test unless that bus has a store. Main thread. */
tb_app *th_memory_app(void);

void th_kv_on_done(int status, void *ud);
void th_kv_on_list(int status, const tb__kv_rec *recs, size_t n, size_t dropped,
                   void *ud);

#endif /* TASKBUS_TESTS_HARNESS_H */
