/* test_lifecycle.c - unit tests for the app lifecycle (service/app.c,
 * service/worker.c): listener order and threads, aborted start-up, stop from
 * a signal handler or before run, run-once, and config validation, through
 * the public API of taskbus.h. */
#include <signal.h>
#include <unistd.h>

#include "harness.h"

/* ------------------------------------------------------------ the log */

enum {
    L_MAIN_START,
    L_BEFORE_START,
    L_AFTER_START,
    L_TASK_START,
    L_MAIN_READY,
    L_BEFORE_STOP,
    L_TASK_CANCELLED,
    L_AFTER_STOP,
    L_MAIN_STOP,
    L_COUNT
};

static const char *const g_label_names[L_COUNT] = {
    "main-start",     "worker-before-start", "worker-after-start",
    "task-start",     "main-ready",          "worker-before-stop",
    "task-cancelled", "worker-after-stop",   "main-stop",
};

typedef struct entry {
    int label;
    int tag; /* which of several listeners of one kind */
    int worker;
    int current_worker;
    int running;
    pthread_t thread;
} entry;

#define LOG_MAX 256

static struct {
    pthread_mutex_t mu;
    int n;
    entry e[LOG_MAX];
} g_log = {PTHREAD_MUTEX_INITIALIZER, 0, {{0}}};

static void log_reset(void)
{
    pthread_mutex_lock(&g_log.mu);
    g_log.n = 0;
    pthread_mutex_unlock(&g_log.mu);
}

static void log_add(tb_app *app, int label, int tag, int worker)
{
    pthread_mutex_lock(&g_log.mu);
    if (TH_CHECK(g_log.n < LOG_MAX)) {
        entry *e = &g_log.e[g_log.n++];
        e->label = label;
        e->tag = tag;
        e->worker = worker;
        e->current_worker = tb_app_current_worker(app);
        e->running = tb_app_is_running(app);
        e->thread = pthread_self();
    }
    pthread_mutex_unlock(&g_log.mu);
}

/* Index in the log of the n-th (0-based) entry with label, worker and tag
 * (tag < 0: any), or -1. Main thread, after run. */
static int log_find(int label, int worker, int tag)
{
    for (int i = 0; i < g_log.n; i++)
        if (g_log.e[i].label == label && g_log.e[i].worker == worker &&
            (tag < 0 || g_log.e[i].tag == tag))
            return i;
    return -1;
}

static int log_count(int label, int worker)
{
    int n = 0;
    for (int i = 0; i < g_log.n; i++)
        n += g_log.e[i].label == label && g_log.e[i].worker == worker;
    return n;
}

static int log_count_label(int label)
{
    int n = 0;
    for (int i = 0; i < g_log.n; i++)
        n += g_log.e[i].label == label;
    return n;
}

static void log_dump(void)
{
    for (int i = 0; i < g_log.n; i++)
        fprintf(stderr, "  %3d %-20s tag %d worker %2d\n", i,
                g_label_names[g_log.e[i].label], g_log.e[i].tag,
                g_log.e[i].worker);
}

/* Fails unless the entry for (a, wa) comes before the one for (b, wb). */
#define assert_before(a, wa, b, wb)                                            \
    do {                                                                       \
        int ia_ = log_find((a), (wa), -1), ib_ = log_find((b), (wb), -1);      \
        if (ia_ < 0 || ib_ < 0 || ia_ >= ib_) {                                \
            log_dump();                                                        \
            fail_msg("%s (worker %d) at %d should come before %s (worker "     \
                     "%d) at %d",                                              \
                     g_label_names[a], (wa), ia_, g_label_names[b], (wb),      \
                     ib_);                                                     \
        }                                                                      \
    } while (0)

/* arg encodes label * 16 + tag. */
static int record(tb_app *app, int worker, void *arg)
{
    intptr_t v = (intptr_t)arg;
    log_add(app, (int)(v / 16), (int)(v % 16), worker);
    return 0;
}

#define LARG(label, tag) ((void *)(intptr_t)((label)*16 + (tag)))

static int logged_task(tb_task *self, void *arg)
{
    (void)arg;
    tb_app *app = tb_task_app(self);
    log_add(app, L_TASK_START, 0, tb_task_worker(self));
    while (tb_sleep(self, 30000) == 0)
        ;
    log_add(app, L_TASK_CANCELLED, 0, tb_task_worker(self));
    return 0;
}

static void register_all(tb_app *app, int tag)
{
    assert_rc(tb_app_add_listener(app, TB_MAIN_START, record,
                                  LARG(L_MAIN_START, tag)),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_BEFORE_START, record,
                                  LARG(L_BEFORE_START, tag)),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_AFTER_START, record,
                                  LARG(L_AFTER_START, tag)),
              0);
    assert_rc(tb_app_add_listener(app, TB_MAIN_READY, record,
                                  LARG(L_MAIN_READY, tag)),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_BEFORE_STOP, record,
                                  LARG(L_BEFORE_STOP, tag)),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_AFTER_STOP, record,
                                  LARG(L_AFTER_STOP, tag)),
              0);
    assert_rc(
        tb_app_add_listener(app, TB_MAIN_STOP, record, LARG(L_MAIN_STOP, tag)),
        0);
}

static void nothing(tb_app *app, void *ctx)
{
    (void)app;
    (void)ctx;
}

/* ------------------------------------------------------------ order */

#define NW 3

static void test_listener_order_and_threads(void **state)
{
    (void)state;
    log_reset();
    tb_app *app = th_app_new(NW, 2000);
    register_all(app, 0);
    assert_rc(th_add(app, "logged", TB_WORKER_ANY, logged_task, NULL, NULL), 0);
    assert_int_equal(tb_app_is_running(app), 0);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    assert_int_equal(tb_app_is_running(app), 0);

    /* Main listeners once, on the main thread, worker -1. */
    static const int mains[] = {L_MAIN_START, L_MAIN_READY, L_MAIN_STOP};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(log_count_label(mains[i]), 1);
        int k = log_find(mains[i], -1, -1);
        assert_true(k >= 0);
        assert_true(pthread_equal(g_log.e[k].thread, pthread_self()));
        assert_int_equal(g_log.e[k].current_worker, -1);
    }
    assert_int_equal(g_log.e[log_find(L_MAIN_START, -1, -1)].running, 0);
    assert_int_equal(g_log.e[log_find(L_MAIN_READY, -1, -1)].running, 1);
    assert_int_equal(g_log.e[log_find(L_MAIN_STOP, -1, -1)].running, 0);

    /* Worker listeners and the pre-run task: once per worker, each on
     * that worker's own thread. */
    static const int per_worker[] = {L_BEFORE_START,   L_AFTER_START,
                                     L_TASK_START,     L_BEFORE_STOP,
                                     L_TASK_CANCELLED, L_AFTER_STOP};
    pthread_t threads[NW];
    for (int w = 0; w < NW; w++) {
        threads[w] = g_log.e[log_find(L_BEFORE_START, w, -1)].thread;
        assert_false(pthread_equal(threads[w], pthread_self()));
        for (int i = 0; i < 6; i++) {
            int label = per_worker[i];
            if (log_count(label, w) != 1) {
                log_dump();
                fail_msg("%s ran %d times on worker %d", g_label_names[label],
                         log_count(label, w), w);
            }
            entry *e = &g_log.e[log_find(label, w, -1)];
            if (!pthread_equal(e->thread, threads[w]))
                fail_msg("%s for worker %d ran on another thread",
                         g_label_names[label], w);
            assert_int_equal(e->current_worker, w);
        }
        for (int v = 0; v < w; v++)
            assert_false(pthread_equal(threads[v], threads[w]));
    }
    assert_int_equal(log_count_label(L_BEFORE_START), NW);
    assert_int_equal(log_count_label(L_AFTER_STOP), NW);

    /* Start: main start < before start < after start < tasks < main ready.
     * Stop: before stop < tasks cancelled < after stop < main stop. */
    for (int w = 0; w < NW; w++) {
        assert_before(L_MAIN_START, -1, L_BEFORE_START, w);
        assert_before(L_BEFORE_START, w, L_AFTER_START, w);
        assert_before(L_AFTER_START, w, L_TASK_START, w);
        assert_before(L_TASK_START, w, L_MAIN_READY, -1);
        assert_before(L_MAIN_READY, -1, L_BEFORE_STOP, w);
        assert_before(L_BEFORE_STOP, w, L_TASK_CANCELLED, w);
        assert_before(L_TASK_CANCELLED, w, L_AFTER_STOP, w);
        assert_before(L_AFTER_STOP, w, L_MAIN_STOP, -1);
    }
    tb_app_free(app);
}

/* Listeners of one kind run in registration order; stop listeners in
 * reverse. */
static void test_stop_listeners_run_in_reverse(void **state)
{
    (void)state;
    log_reset();
    tb_app *app = th_app_new(2, 2000);
    register_all(app, 1);
    register_all(app, 2);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    static const int starts[] = {L_MAIN_START, L_MAIN_READY, L_BEFORE_START,
                                 L_AFTER_START};
    static const int stops[] = {L_MAIN_STOP, L_BEFORE_STOP, L_AFTER_STOP};
    for (int w = -1; w < 2; w++) {
        for (int i = 0; i < 4; i++) {
            int one = log_find(starts[i], w, 1),
                two = log_find(starts[i], w, 2);
            if (one < 0 && two < 0)
                continue; /* main kinds on workers, worker kinds on -1 */
            if (one < 0 || two < 0 || one > two) {
                log_dump();
                fail_msg("%s (worker %d): registration order not kept",
                         g_label_names[starts[i]], w);
            }
        }
        for (int i = 0; i < 3; i++) {
            int one = log_find(stops[i], w, 1), two = log_find(stops[i], w, 2);
            if (one < 0 && two < 0)
                continue;
            if (one < 0 || two < 0 || two > one) {
                log_dump();
                fail_msg("%s (worker %d): stop listeners not reversed",
                         g_label_names[stops[i]], w);
            }
        }
    }
    tb_app_free(app);
}

/* ------------------------------------------------------------ aborts */

static atomic_int g_task_ran;
static atomic_int g_arg_freed;

static int count_run(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    atomic_fetch_add(&g_task_ran, 1);
    return 0;
}

static void count_free(void *arg)
{
    (void)arg;
    atomic_fetch_add(&g_arg_freed, 1);
}

static int refuse(tb_app *app, int worker, void *arg)
{
    int code = (int)(intptr_t)arg;
    log_add(app, L_MAIN_START, 9, worker);
    return worker == -1 || worker == 1 ? code : 0;
}

static void test_main_start_failure_aborts_run(void **state)
{
    (void)state;
    log_reset();
    atomic_store(&g_task_ran, 0);
    atomic_store(&g_arg_freed, 0);
    tb_app *app = th_app_new(2, 2000);
    assert_rc(tb_app_add_listener(app, TB_MAIN_START, refuse,
                                  (void *)(intptr_t)TB_EPERM),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_BEFORE_START, record,
                                  LARG(L_BEFORE_START, 0)),
              0);
    assert_rc(tb_app_add_listener(app, TB_WORKER_AFTER_START, record,
                                  LARG(L_AFTER_START, 0)),
              0);
    assert_rc(
        tb_app_add_listener(app, TB_MAIN_READY, record, LARG(L_MAIN_READY, 0)),
        0);
    tb_task_opts o = th_opts("never", TB_WORKER_ANY);
    o.ud_free = count_free;
    assert_rc(tb_task_add(app, count_run, NULL, &o, NULL), 0);

    int64_t t0 = th_mono_ms();
    assert_rc(th_run_plain(app, 10000), TB_EPERM);
    th_assert_clean();
    assert_true(th_mono_ms() - t0 < 5000);
    assert_int_equal(log_count_label(L_BEFORE_START), 0);
    assert_int_equal(log_count_label(L_AFTER_START), 0);
    assert_int_equal(log_count_label(L_MAIN_READY), 0);
    assert_int_equal(atomic_load(&g_task_ran), 0);
    assert_int_equal(tb_app_is_running(app), 0);
    assert_int_equal(atomic_load(&g_arg_freed), 0);
    tb_app_free(app); /* frees the pre-run task's arg */
    assert_int_equal(atomic_load(&g_arg_freed), 1);
}

static void test_worker_before_start_failure_aborts_run(void **state)
{
    (void)state;
    log_reset();
    tb_app *app = th_app_new(2, 2000);
    assert_rc(tb_app_add_listener(app, TB_WORKER_BEFORE_START, refuse,
                                  (void *)(intptr_t)TB_EACCES),
              0);
    assert_rc(
        tb_app_add_listener(app, TB_MAIN_READY, record, LARG(L_MAIN_READY, 0)),
        0);
    assert_rc(
        tb_app_add_listener(app, TB_MAIN_STOP, record, LARG(L_MAIN_STOP, 0)),
        0);
    int64_t t0 = th_mono_ms();
    assert_rc(th_run_plain(app, 10000), TB_EACCES);
    th_assert_clean();
    assert_true(th_mono_ms() - t0 < 5000);
    assert_int_equal(log_count_label(L_MAIN_READY), 0);
    assert_int_equal(tb_app_is_running(app), 0);
    tb_app_free(app);
}

/* ------------------------------------------------------------
 * tb_app_add_listener */

static atomic_int g_late_called;
static atomic_int g_on_during_run = 1;

static int late_listener(tb_app *app, int worker, void *arg)
{
    (void)app;
    (void)worker;
    (void)arg;
    atomic_fetch_add(&g_late_called, 1);
    return 0;
}

static int register_while_running(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    atomic_store(&g_on_during_run,
                 tb_app_add_listener(app, TB_MAIN_STOP, late_listener, NULL));
    return 0;
}

static void test_app_on_after_run_is_ebusy(void **state)
{
    (void)state;
    atomic_store(&g_late_called, 0);
    tb_app *app = th_app_new(1, 2000);
    assert_rc(
        tb_app_add_listener(app, TB_MAIN_READY, register_while_running, NULL),
        0);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    assert_rc(atomic_load(&g_on_during_run), TB_EBUSY);
    assert_rc(tb_app_add_listener(app, TB_MAIN_START, late_listener, NULL),
              TB_EBUSY);
    assert_int_equal(atomic_load(&g_late_called), 0);
    tb_app_free(app);
}

/* ------------------------------------------------------------ stop */

static tb_app *volatile g_signal_app;

static void on_alarm(int sig)
{
    (void)sig;
    tb_app_stop(g_signal_app);
}

static void test_stop_from_signal_handler(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    g_signal_app = app;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
    int64_t t0 = th_mono_ms();
    alarm(1);
    int rc = th_run_plain(app, 10000);
    int64_t took = th_mono_ms() - t0;
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    th_assert_clean();
    assert_rc(rc, 0);
    if (took < 900 || took > 5000)
        fail_msg("run returned %lld ms after alarm(1)", (long long)took);
    g_signal_app = NULL;
    tb_app_free(app);
}

static void test_stop_before_run(void **state)
{
    (void)state;
    log_reset();
    atomic_store(&g_task_ran, 0);
    tb_app *app = th_app_new(2, 2000);
    register_all(app, 0);
    assert_rc(th_add(app, "never", TB_WORKER_ANY, count_run, NULL, NULL), 0);
    tb_app_stop(app);
    tb_app_stop(app); /* idempotent */
    int64_t t0 = th_mono_ms();
    assert_rc(th_run_plain(app, 10000), 0);
    th_assert_clean();
    assert_true(th_mono_ms() - t0 < 1000);
    assert_int_equal(log_count_label(L_MAIN_START), 1);
    assert_int_equal(log_count_label(L_BEFORE_START), 0);
    assert_int_equal(log_count_label(L_MAIN_READY), 0);
    assert_int_equal(atomic_load(&g_task_ran), 0);
    tb_app_free(app);
}

static void test_second_run_is_eshutdown(void **state)
{
    (void)state;
    log_reset();
    tb_app *app = th_app_new(1, 2000);
    register_all(app, 0);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    int before = g_log.n;
    assert_rc(tb_app_run(app), TB_ESHUTDOWN);
    assert_int_equal(g_log.n, before); /* no listener ran again */
    tb_app_stop(app);                  /* harmless after the end */
    tb_app_free(app);
}

static th_counter g_stopping = TH_COUNTER_INITIALIZER;

static int note_stopping(tb_app *app, int worker, void *arg)
{
    (void)app;
    (void)worker;
    (void)arg;
    th_counter_add(&g_stopping, 1);
    return 0;
}

/* An app of 2 workers that handles signals and counts its workers' stops in
 * g_stopping. Main thread. */
static tb_app *signals_app(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.handle_signals = 1;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(
        tb_app_add_listener(app, TB_WORKER_BEFORE_STOP, note_stopping, NULL),
        0);
    return app;
}

/* handle_signals = 1: SIGTERM stops the app (and does not kill us). */
TH_APP_TEST(test_handle_signals_stops_on_sigterm, signals_app(), 10000)
{
    (void)app;
    TH_CHECK_EQ(kill(getpid(), SIGTERM), 0);
    /* The app must begin to stop by itself, before the harness stops it. */
    TH_CHECK(th_counter_wait_ge(&g_stopping, 1, 5000));
}

/* ------------------------------------------------------------ config */

static void test_config_validation(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    assert_int_equal(cfg.core.workers, 2);
    assert_int_equal(cfg.core.graceful_timeout_ms, 15000);
    assert_int_equal(cfg.core.stack_size, 64 * 1024);
    assert_int_equal(cfg.core.max_event_size, 1024 * 1024);
    assert_int_equal(cfg.core.sub_capacity, 1024);
    assert_int_equal(cfg.core.blocking_threads, 4);
    assert_int_equal(cfg.core.handle_signals, 0);

    int err = 0;
    cfg.core.workers = 0;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);
    err = 0;
    cfg.core.workers = 257;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);
    assert_null(tb_app_new(&cfg, NULL)); /* err is optional */
    err = 0;
    cfg.core.workers = -1;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);

    /* The bounds themselves are valid; an app that never runs is freed. */
    cfg.core.workers = 256;
    tb_app *app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_workers(app), 256);
    tb_app_free(app);
    cfg.core.workers = 1;
    cfg.core.graceful_timeout_ms = 1234;
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_workers(app), 1);
    const tb_app_config *got = tb_app_get_config(app);
    assert_non_null(got);
    assert_int_equal(got->core.workers, 1);
    assert_int_equal(got->core.graceful_timeout_ms, 1234);
    assert_int_equal(tb_app_current_worker(app), -1);
    assert_int_equal(tb_app_is_running(app), 0);
    int token;
    assert_null(tb_app_get_userdata(app));
    tb_app_set_userdata(app, &token);
    assert_ptr_equal(tb_app_get_userdata(app), &token);
    tb_app_free(app);

    /* http_longpoll_max: 0 is half of http_threads; it stays below. */
    tb_app_config_init(&cfg);
    assert_int_equal(cfg.http.longpoll_max, 0);
    cfg.http.threads = 8;
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_get_config(app)->http.longpoll_max, 4);
    tb_app_free(app);
    cfg.http.longpoll_max = 7;
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_get_config(app)->http.longpoll_max, 7);
    tb_app_free(app);
    cfg.http.longpoll_max = 8;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);
    cfg.http.longpoll_max = -1;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);
    cfg.http.threads = 1; /* a long poll would hold the only thread */
    cfg.http.longpoll_max = 0;
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_get_config(app)->http.longpoll_max, 0);
    tb_app_free(app);

    /* With history on, the send queue holds the largest event and its
     * framing: an event that cannot be sent would end every resume. */
    tb_app_config_init(&cfg);
    assert_true(cfg.ws.send_queue_bytes >=
                cfg.core.max_event_size + TB_EVENT_FRAME_OVERHEAD);
    cfg.core.max_event_size = 4096;
    cfg.ws.send_queue_bytes = 4096 + TB_EVENT_FRAME_OVERHEAD;
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    tb_app_free(app);
    cfg.ws.send_queue_bytes--;
    assert_null(tb_app_new(&cfg, &err));
    assert_rc(err, TB_EINVAL);
    cfg.core.history_size = 0; /* no history: a skipped event is logged */
    app = tb_app_new(&cfg, &err);
    assert_non_null(app);
    tb_app_free(app);

    /* NULL config: the defaults. */
    app = tb_app_new(NULL, &err);
    assert_non_null(app);
    assert_int_equal(tb_app_workers(app), 2);
    assert_int_equal(tb_app_get_config(app)->core.graceful_timeout_ms, 15000);
    tb_app_free(app);
    tb_app_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listener_order_and_threads),
        cmocka_unit_test(test_stop_listeners_run_in_reverse),
        cmocka_unit_test(test_main_start_failure_aborts_run),
        cmocka_unit_test(test_worker_before_start_failure_aborts_run),
        cmocka_unit_test(test_app_on_after_run_is_ebusy),
        cmocka_unit_test(test_stop_from_signal_handler),
        cmocka_unit_test(test_stop_before_run),
        cmocka_unit_test(test_second_run_is_eshutdown),
        cmocka_unit_test(test_config_validation),
        /* Last: if SIGTERM is not handled, it ends the process. */
        cmocka_unit_test(test_handle_signals_stops_on_sigterm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
