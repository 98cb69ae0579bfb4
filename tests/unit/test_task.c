/* test_task.c - unit tests for named background tasks (service/task.c):
 * adding before and during run, worker choice, names, cancel, states and
 * results, purge, listing, join, blocking calls, load and graceful shutdown,
 * all through the public API of taskbus.h. */
#include "harness.h"

#include "internal.h"

/* ------------------------------------------------------------ bodies */

/* Shared by many tests: counters the tasks bump and the driver waits on. */
typedef struct loop_ctx {
    th_counter started;   /* body entered */
    th_counter cancelled; /* a suspension point returned TB_ECANCELED */
    th_counter ended;     /* body about to return */
    th_counter ticks;     /* loop iterations (tick_until_cancelled) */
    atomic_long end_seq;  /* th_seq() when the body returned */
} loop_ctx;

static void loop_ctx_init(loop_ctx *c)
{
    th_counter_init(&c->started);
    th_counter_init(&c->cancelled);
    th_counter_init(&c->ended);
    th_counter_init(&c->ticks);
    atomic_store(&c->end_seq, 0);
}

static void loop_ctx_destroy(loop_ctx *c)
{
    th_counter_destroy(&c->started);
    th_counter_destroy(&c->cancelled);
    th_counter_destroy(&c->ended);
    th_counter_destroy(&c->ticks);
}

/* Sleeps in long slices until cancelled, then returns 0. */
static int sleep_until_cancelled(tb_task *self, void *arg)
{
    loop_ctx *c = arg;
    th_counter_add(&c->started, 1);
    for (;;) {
        int rc = tb_sleep(self, 30000);
        if (rc == TB_ECANCELED) {
            th_counter_add(&c->cancelled, 1);
            break;
        }
        TH_CHECK_RC(rc, 0);
    }
    atomic_store(&c->end_seq, th_seq());
    th_counter_add(&c->ended, 1);
    return 0;
}

/* Ticks every 5 ms until cancelled. */
static int tick_until_cancelled(tb_task *self, void *arg)
{
    loop_ctx *c = arg;
    th_counter_add(&c->started, 1);
    while (tb_sleep(self, 5) == 0)
        th_counter_add(&c->ticks, 1);
    th_counter_add(&c->cancelled, 1);
    th_counter_add(&c->ended, 1);
    return 0;
}

static int return_zero(tb_task *self, void *arg)
{
    (void)self;
    if (arg)
        th_counter_add(arg, 1);
    return 0;
}

static int return_arg(tb_task *self, void *arg)
{
    (void)self;
    return (int)(intptr_t)arg;
}

static int fail_with_message(tb_task *self, void *arg)
{
    (void)arg;
    tb_task_fail(self, "disk %s", "full");
    return 0;
}

/* After its cancel, keeps going (ignoring TB_ECANCELED) for ignore_ms of wall
 * time, then returns. Models a task doing slow cleanup. */
typedef struct stubborn_ctx {
    loop_ctx loop;
    int ignore_ms;
    atomic_long ignored; /* suspension points that returned TB_ECANCELED */
} stubborn_ctx;

static int ignore_cancel_for_a_while(tb_task *self, void *arg)
{
    stubborn_ctx *c = arg;
    th_counter_add(&c->loop.started, 1);
    while (tb_sleep(self, 30000) == 0)
        ;
    th_counter_add(&c->loop.cancelled, 1);
    int64_t until = th_mono_ms() + c->ignore_ms;
    while (th_mono_ms() < until) {
        if (tb_sleep(self, 10) == TB_ECANCELED)
            atomic_fetch_add(&c->ignored, 1);
    }
    atomic_store(&c->loop.end_seq, th_seq());
    th_counter_add(&c->loop.ended, 1);
    return 0;
}

/* ------------------------------------------------------------ before run */

typedef struct per_worker {
    th_counter ran;
    atomic_int count[8];
} per_worker;

static int count_per_worker(tb_task *self, void *arg)
{
    per_worker *pw = arg;
    int w = tb_task_worker(self);
    if (TH_CHECK(w >= 0 && w < 8))
        atomic_fetch_add(&pw->count[w], 1);
    TH_CHECK_EQ(tb_app_current_worker(tb_task_app(self)), w);
    th_counter_add(&pw->ran, 1);
    return 0;
}

static void drive_prerun_unnamed(tb_app *app, void *ctx)
{
    per_worker *pw = ctx;
    TH_CHECK(th_counter_wait_ge(&pw->ran, 3, 5000));
    /* Each replica is listed with its own worker and a generated name. */
    int64_t end = th_mono_ms() + 5000;
    for (;;) {
        tb_task_info *list = NULL;
        size_t n = 0;
        int rc = tb_task_list(app, &list, &n);
        TH_CHECK_EQ(rc, (long long)n);
        unsigned mask = 0;
        int done = 0, kinds = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(list[i].kind, "prerun") != 0)
                continue;
            kinds++;
            if (list[i].worker >= 0 && list[i].worker < 32)
                mask |= 1u << list[i].worker;
            done += list[i].state == TB_TASK_DONE;
            TH_CHECKF(strncmp(list[i].name, "task-", 5) == 0,
                      "generated name \"%s\"", list[i].name);
        }
        free(list);
        if (done == 3 || th_mono_ms() > end) {
            TH_CHECK_EQ(kinds, 3);
            TH_CHECK_EQ(mask, 7u);
            TH_CHECK_EQ(done, 3);
            break;
        }
        th_nap_ms(2);
    }
}

/* An unnamed task added before run runs once on every worker. */
static void test_add_before_run_runs_once_per_worker(void **state)
{
    (void)state;
    tb_app *app = th_app_new(3, 2000);
    per_worker pw;
    memset(&pw, 0, sizeof pw);
    th_counter_init(&pw.ran);
    tb_task_opts o = th_opts(NULL, TB_WORKER_ANY);
    o.kind = "prerun";
    uint64_t id = 12345;
    assert_rc(tb_task_add(app, count_per_worker, &pw, &o, &id), 0);
    assert_int_equal(id, 0); /* no id before run */

    assert_rc(th_run_thread(app, drive_prerun_unnamed, &pw, 10000), 0);
    th_assert_clean();
    for (int w = 0; w < 3; w++)
        assert_int_equal(atomic_load(&pw.count[w]), 1);
    tb_app_free(app);
    th_counter_destroy(&pw.ran);
}

static int replica_body(tb_task *self, void *arg)
{
    TH_CHECK_STR(tb_task_name(self), "replica");
    return sleep_until_cancelled(self, arg);
}

static void drive_replicas(tb_app *app, void *ctx)
{
    loop_ctx *c = ctx;
    if (!TH_CHECK(th_counter_wait_ge(&c->started, 3, 5000)))
        return;
    tb_task_info info;
    memset(&info, 0, sizeof info);
    TH_CHECK_EQ(tb_task_get(app, "replica", &info), 3);
    TH_CHECK_STR(info.name, "replica");
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);

    int all_running = 0;
    unsigned mask = 0;
    TH_CHECK_EQ(
        th_count_named(app, "replica", TB_TASK_RUNNING, &all_running, &mask),
        3);
    TH_CHECK(all_running);
    TH_CHECK_EQ(mask, 7u); /* one on each of workers 0, 1, 2 */

    /* Cancel by name cancels every replica and waits for all of them. */
    TH_CHECK_RC(tb_task_cancel(app, "replica", 3000), 0);
    TH_CHECK_EQ(th_counter_get(&c->cancelled), 3);
    TH_CHECK_EQ(th_counter_get(&c->ended), 3);
    int all_cancelled = 0;
    TH_CHECK_EQ(
        th_count_named(app, "replica", TB_TASK_CANCELLED, &all_cancelled, NULL),
        3);
    TH_CHECK(all_cancelled);
    TH_CHECK_EQ(tb_task_get(app, "replica", NULL), 3);
}

/* A named task added before run has one replica per worker. */
static void test_named_prerun_task_has_replica_per_worker(void **state)
{
    (void)state;
    tb_app *app = th_app_new(3, 2000);
    loop_ctx c;
    loop_ctx_init(&c);
    uint64_t id = 99;
    assert_rc(th_add(app, "replica", TB_WORKER_ANY, replica_body, &c, &id), 0);
    assert_int_equal(id, 0);
    assert_rc(th_run_thread(app, drive_replicas, &c, 15000), 0);
    th_assert_clean();
    tb_app_free(app);
    loop_ctx_destroy(&c);
}

/* ------------------------------------------------------------ while running */

typedef struct ident_ctx {
    th_counter ran;
    atomic_uint_least64_t id;
    char name[TB_TASK_NAME_MAX + 1];
    tb_app *app;
} ident_ctx;

static int record_identity(tb_task *self, void *arg)
{
    ident_ctx *c = arg;
    TH_CHECK(tb_task_current() == self);
    TH_CHECK(tb_task_app(self) == c->app);
    TH_CHECK_EQ(tb_task_cancelled(self), 0);
    snprintf(c->name, sizeof c->name, "%s", tb_task_name(self));
    atomic_store(&c->id, tb_task_id(self));
    th_counter_add(&c->ran, 1);
    return 0;
}

TH_APP_TEST(test_add_while_running_from_thread, th_app_new(2, 2000), 10000)
{
    static ident_ctx ctx;
    ident_ctx *c = &ctx;
    c->app = app;
    TH_CHECK(tb_task_current() == NULL); /* not a task */
    TH_CHECK_EQ(tb_app_current_worker(app), -1);

    uint64_t id = 0;
    TH_CHECK_RC(
        th_add(app, "from-thread", TB_WORKER_ANY, record_identity, c, &id), 0);
    TH_CHECK(id != 0);
    TH_CHECK(th_counter_wait_ge(&c->ran, 1, 5000));
    TH_CHECK_EQ(atomic_load(&c->id), id);
    TH_CHECK_STR(c->name, "from-thread");
    TH_CHECK(th_wait_state(app, "from-thread", TB_TASK_DONE, 5000));
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "from-thread", &info), 1);
    TH_CHECK_EQ(info.id, id);

    /* Without a name: "task-<id>". */
    uint64_t id2 = 0;
    TH_CHECK_RC(tb_task_add(app, record_identity, c, NULL, &id2), 0);
    TH_CHECK(id2 != 0 && id2 != id);
    TH_CHECK(th_counter_wait_ge(&c->ran, 2, 5000));
    char want[64];
    snprintf(want, sizeof want, "task-%" PRIu64, id2);
    TH_CHECK_STR(c->name, want);
    TH_CHECK_EQ(tb_task_get(app, want, NULL), 1);
}

TH_TASK_TEST(test_add_from_inside_task, th_app_new(2, 2000), 0, 10000)
{
    static ident_ctx ctx;
    ident_ctx *c = &ctx;
    c->app = app;
    TH_CHECK(tb_task_app(self) == c->app);
    uint64_t id = 0;
    TH_CHECK_RC(th_add(app, "child", TB_WORKER_ANY, record_identity, c, &id),
                0);
    TH_CHECK(id != 0);
    int result = -1;
    tb_task_state st = TB_TASK_PENDING;
    TH_CHECK_RC(tb_task_join(self, "child", 5000, &result, &st), 0);
    TH_CHECK_EQ(result, 0);
    TH_CHECK_EQ(st, TB_TASK_DONE);
    TH_CHECK_EQ(th_counter_get(&c->ran), 1);
    TH_CHECK_EQ(atomic_load(&c->id), id);
}

/* ------------------------------------------------------------ workers */

typedef struct where_ctx {
    th_counter ran;
    atomic_int task_worker[3];
    atomic_int thread_worker[3];
    tb_app *app;
} where_ctx;

static int record_where(tb_task *self, void *arg)
{
    where_ctx *c = arg;
    int slot = -1;
    sscanf(tb_task_name(self), "on-%d", &slot);
    if (TH_CHECK(slot >= 0 && slot < 3)) {
        atomic_store(&c->task_worker[slot], tb_task_worker(self));
        atomic_store(&c->thread_worker[slot], tb_app_current_worker(c->app));
    }
    th_counter_add(&c->ran, 1);
    return 0;
}

TH_APP_TEST(test_explicit_worker_honored, th_app_new(3, 2000), 10000)
{
    static where_ctx ctx;
    where_ctx *c = &ctx;
    c->app = app;
    for (int i = 0; i < 3; i++)
        c->task_worker[i] = c->thread_worker[i] = -9;
    static const int order[3] = {2, 0, 1};
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "on-%d", order[i]);
        TH_CHECK_RC(th_add(app, name, order[i], record_where, c, NULL), 0);
        tb_task_info info;
        TH_CHECK_EQ(tb_task_get(app, name, &info), 1);
        TH_CHECK_EQ(info.worker, order[i]);
    }
    TH_CHECK(th_counter_wait_ge(&c->ran, 3, 5000));
    for (int w = 0; w < 3; w++) {
        TH_CHECK_EQ(atomic_load(&c->task_worker[w]), w);
        TH_CHECK_EQ(atomic_load(&c->thread_worker[w]), w);
    }
    /* Out-of-range workers are refused and the task is never created. */
    TH_CHECK_RC(th_add(app, "bad-3", 3, record_where, c, NULL), TB_EINVAL);
    TH_CHECK_RC(th_add(app, "bad-m2", -2, record_where, c, NULL), TB_EINVAL);
    TH_CHECK_RC(tb_task_get(app, "bad-3", NULL), TB_ENOENT);
    TH_CHECK_RC(tb_task_get(app, "bad-m2", NULL), TB_ENOENT);
}

/* TB_WORKER_ANY picks the worker with fewer live tasks. */
TH_APP_TEST(test_any_worker_picks_least_loaded, th_app_new(2, 2000), 10000)
{
    static loop_ctx ctx;
    loop_ctx *c = &ctx;
    TH_CHECK_RC(th_add(app, "long-a", 0, sleep_until_cancelled, c, NULL), 0);
    TH_CHECK_RC(th_add(app, "long-b", 0, sleep_until_cancelled, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->started, 2, 5000));
    TH_CHECK_RC(
        th_add(app, "any", TB_WORKER_ANY, sleep_until_cancelled, c, NULL), 0);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "any", &info), 1);
    TH_CHECK_EQ(info.worker, 1);
    TH_CHECK(th_counter_wait_ge(&c->started, 3, 5000));
    TH_CHECK_RC(tb_task_cancel(app, "long-a", 2000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "long-b", 2000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "any", 2000), 0);
}

/* ------------------------------------------------------------ names */

static atomic_int g_arg_freed;

static void count_arg_free(void *arg)
{
    (void)arg;
    atomic_fetch_add(&g_arg_freed, 1);
}

TH_APP_TEST(test_duplicate_name_is_eexist, th_app_new(2, 2000), 10000)
{
    static loop_ctx ctx;
    loop_ctx *c = &ctx;
    uint64_t id1 = 0;
    TH_CHECK_RC(th_add(app, "dup", 0, tick_until_cancelled, c, &id1), 0);
    TH_CHECK(th_counter_wait_ge(&c->ticks, 1, 5000));

    atomic_store(&g_arg_freed, 0);
    tb_task_opts o = th_opts("dup", TB_WORKER_ANY);
    o.ud_free = count_arg_free;
    TH_CHECK_RC(tb_task_add(app, return_zero, NULL, &o, NULL), TB_EEXIST);
    o.worker = 1; /* names are app-wide, not per worker */
    TH_CHECK_RC(tb_task_add(app, return_zero, NULL, &o, NULL), TB_EEXIST);
    TH_CHECK_EQ(atomic_load(&g_arg_freed), 0); /* not on error */

    /* The older task is untouched and keeps running. */
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "dup", &info), 1);
    TH_CHECK_EQ(info.id, id1);
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);
    TH_CHECK_EQ(info.cancel_requested, 0);
    long t = th_counter_get(&c->ticks);
    TH_CHECK(th_counter_wait_ge(&c->ticks, t + 3, 5000));
    TH_CHECK_EQ(th_counter_get(&c->cancelled), 0);
    TH_CHECK_RC(tb_task_cancel(app, "dup", 2000), 0);
}

typedef struct replace_ctx {
    loop_ctx old;
    th_counter new_ran;
    atomic_long new_start_seq;
} replace_ctx;

static int replacement(tb_task *self, void *arg)
{
    (void)self;
    replace_ctx *c = arg;
    atomic_store(&c->new_start_seq, th_seq());
    th_counter_add(&c->new_ran, 1);
    return 0;
}

/* Checks the state after a replace of "rep" (old id id_old). */
static void check_replaced(tb_app *app, replace_ctx *c, uint64_t id_old,
                           uint64_t id_new)
{
    /* The add returned after the old one had finished. */
    TH_CHECK_EQ(th_counter_get(&c->old.ended), 1);
    TH_CHECK_EQ(th_counter_get(&c->old.cancelled), 1);
    TH_CHECK(id_new != 0 && id_new != id_old);
    /* Once cancelled, the old entry holds the name only as a finished task,
     * and a reused name drops its finished entries. */
    TH_CHECK(!th_find_id(app, id_old, NULL));
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "rep", &info), 1);
    TH_CHECK_EQ(info.id, id_new);
}

TH_APP_TEST(test_replace_cancels_old_first_from_thread, th_app_new(2, 2000),
            10000)
{
    static replace_ctx ctx;
    replace_ctx *c = &ctx;
    uint64_t id_old = 0, id_new = 0;
    TH_CHECK_RC(th_add(app, "rep", 0, sleep_until_cancelled, &c->old, &id_old),
                0);
    TH_CHECK(th_counter_wait_ge(&c->old.started, 1, 5000));
    tb_task_opts o = th_opts("rep", TB_WORKER_ANY);
    o.flags = TB_TASK_REPLACE;
    TH_CHECK_RC(tb_task_add(app, replacement, c, &o, &id_new), 0);
    check_replaced(app, c, id_old, id_new);
    TH_CHECK(th_counter_wait_ge(&c->new_ran, 1, 5000));
    long old_end = atomic_load(&c->old.end_seq);
    long new_start = atomic_load(&c->new_start_seq);
    TH_CHECKF(old_end != 0 && old_end < new_start,
              "old ended at seq %ld, new started at seq %ld", old_end,
              new_start);
}

/* The replacing task runs on the same worker as the task it replaces: the
 * add must suspend it (not block the loop) while the old one finishes. */
TH_TASK_TEST(test_replace_from_task_on_same_worker, th_app_new(2, 2000), 0,
             10000)
{
    static replace_ctx ctx;
    replace_ctx *c = &ctx;
    uint64_t id_old = 0, id_new = 0;
    TH_CHECK_RC(th_add(app, "rep", 0, sleep_until_cancelled, &c->old, &id_old),
                0);
    TH_CHECK(th_task_wait_ge(self, &c->old.started, 1, 5000));
    tb_task_opts o = th_opts("rep", 0);
    o.flags = TB_TASK_REPLACE;
    TH_CHECK_RC(tb_task_add(app, replacement, c, &o, &id_new), 0);
    check_replaced(app, c, id_old, id_new);
    int result = -1;
    TH_CHECK_RC(tb_task_join(self, "rep", 5000, &result, NULL), 0);
    TH_CHECK_EQ(th_counter_get(&c->new_ran), 1);
    TH_CHECK(atomic_load(&c->old.end_seq) < atomic_load(&c->new_start_seq));
}

TH_APP_TEST(test_finished_name_can_be_reused, th_app_new(2, 2000), 10000)
{
    static th_counter ctx;
    th_counter *ran = &ctx;
    TH_CHECK_RC(th_add(app, "again", TB_WORKER_ANY, return_zero, ran, NULL), 0);
    TH_CHECK(th_wait_state(app, "again", TB_TASK_DONE, 5000));
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "again", &info), 1);
    uint64_t id_old = info.id, id_new = 0;
    /* The name of a finished (not yet purged) task is free again, and the
     * finished entry is dropped when the name is reused. */
    TH_CHECK_RC(th_add(app, "again", TB_WORKER_ANY, return_zero, ran, &id_new),
                0);
    TH_CHECK(th_counter_wait_ge(ran, 2, 5000));
    TH_CHECK(!th_find_id(app, id_old, NULL));
    TH_CHECK_EQ(tb_task_get(app, "again", &info), 1);
    TH_CHECK_EQ(info.id, id_new);
}

TH_APP_TEST(test_task_name_length_limit, th_app_new(2, 2000), 10000)
{
    char name[TB_TASK_NAME_MAX + 2];
    memset(name, 'n', TB_TASK_NAME_MAX);
    name[TB_TASK_NAME_MAX] = '\0';
    TH_CHECK_RC(th_add(app, name, TB_WORKER_ANY, return_zero, NULL, NULL), 0);
    name[TB_TASK_NAME_MAX] = 'n';
    name[TB_TASK_NAME_MAX + 1] = '\0';
    TH_CHECK_RC(th_add(app, name, TB_WORKER_ANY, return_zero, NULL, NULL),
                TB_ENAMETOOLONG);
    TH_CHECK_RC(tb_task_get(app, name, NULL), TB_ENOENT);
}

/* "." and ".." are dot-segments a browser drops from a URL's path: no
 * /tasks/{name} could reach such a task, so neither is a name. */
TH_APP_TEST(test_task_name_dot_segments, th_app_new(2, 2000), 10000)
{
    TH_CHECK_RC(th_add(app, ".", TB_WORKER_ANY, return_zero, NULL, NULL),
                TB_EINVAL);
    TH_CHECK_RC(th_add(app, "..", TB_WORKER_ANY, return_zero, NULL, NULL),
                TB_EINVAL);
    TH_CHECK_RC(tb_task_get(app, ".", NULL), TB_ENOENT);
    TH_CHECK_RC(tb_task_get(app, "..", NULL), TB_ENOENT);
    /* Dots with anything else are names like any other. */
    const char *fine[] = {"...", ".a", "a.", "./", "..x"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++)
        TH_CHECK_RC(
            th_add(app, fine[i], TB_WORKER_ANY, return_zero, NULL, NULL), 0);
}

/* ------------------------------------------------------------ cancel */

typedef struct sleeper_ctx {
    tb_task_fn body;
    th_counter started;
    atomic_int rc;
    atomic_int saw_cancelled;
    atomic_llong waited_ms;
} sleeper_ctx;

static int sleep_once(tb_task *self, void *arg)
{
    sleeper_ctx *c = arg;
    th_counter_add(&c->started, 1);
    int64_t t0 = th_mono_ms();
    atomic_store(&c->rc, tb_sleep(self, 10000));
    atomic_store(&c->waited_ms, th_mono_ms() - t0);
    atomic_store(&c->saw_cancelled, tb_task_cancelled(self));
    return 0; /* ends cancelled all the same */
}

static int wait_event_once(tb_task *self, void *arg)
{
    sleeper_ctx *c = arg;
    th_counter_add(&c->started, 1);
    int64_t t0 = th_mono_ms();
    tb_event *ev = NULL;
    atomic_store(&c->rc, tb_event_wait(self, "never.fires", -1, &ev));
    atomic_store(&c->waited_ms, th_mono_ms() - t0);
    atomic_store(&c->saw_cancelled, tb_task_cancelled(self));
    tb_event_unref(ev);
    return 0;
}

static void drive_cancel_suspended(tb_app *app, sleeper_ctx *c)
{
    TH_CHECK_RC(th_add(app, "victim", TB_WORKER_ANY, c->body, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->started, 1, 5000)))
        return;
    TH_CHECK_RC(tb_task_cancel(app, "victim", 3000), 0);
    TH_CHECK_RC(atomic_load(&c->rc), TB_ECANCELED);
    TH_CHECK_EQ(atomic_load(&c->saw_cancelled), 1);
    TH_CHECKF(atomic_load(&c->waited_ms) < 5000, "woke after %lld ms",
              (long long)atomic_load(&c->waited_ms));
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "victim", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_CANCELLED);
    TH_CHECK_EQ(info.cancel_requested, 1);
    TH_CHECK(info.ended_us != 0);
}

TH_APP_TEST(test_cancel_while_sleeping, th_app_new(2, 2000), 10000)
{
    static sleeper_ctx c = {.rc = 1, .body = sleep_once};
    drive_cancel_suspended(app, &c);
}

TH_APP_TEST(test_cancel_while_waiting_for_event, th_app_new(2, 2000), 10000)
{
    static sleeper_ctx c = {.rc = 1, .body = wait_event_once};
    drive_cancel_suspended(app, &c);
}

static int drive_cancel_pending(tb_task *self, void *ctx)
{
    th_counter *ran = ctx;
    tb_app *app = tb_task_app(self);
    /* Same worker as this task: the new one cannot start before we
     * suspend, so it is still pending when we cancel it. */
    TH_CHECK_RC(
        th_add(app, "pend", tb_task_worker(self), return_zero, ran, NULL), 0);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "pend", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_PENDING);
    TH_CHECK_EQ(info.started_us, 0);
    TH_CHECK_RC(tb_task_cancel(app, "pend", 3000), 0);
    TH_CHECK_EQ(tb_task_get(app, "pend", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_CANCELLED);
    TH_CHECK_EQ(info.started_us, 0);
    TH_CHECK(info.ended_us != 0);
    TH_CHECK_RC(tb_sleep(self, 20), 0);
    TH_CHECK_EQ(th_counter_get(ran), 0); /* its body never ran */
    return 0;
}

static void test_cancel_pending_task_never_runs(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    th_counter ran;
    th_counter_init(&ran);
    assert_rc(th_run_task(app, 0, drive_cancel_pending, &ran, 10000), 0);
    th_assert_clean();
    assert_int_equal(th_counter_get(&ran), 0);
    tb_app_free(app);
    th_counter_destroy(&ran);
}

TH_APP_TEST(test_cancel_after_finish_is_idempotent, th_app_new(2, 2000), 10000)
{
    TH_CHECK_RC(th_add(app, "quick", 1, return_zero, NULL, NULL), 0);
    TH_CHECK_RC(th_add(app, "sour", 0, return_arg, (void *)(intptr_t)3, NULL),
                0);
    TH_CHECK(th_wait_state(app, "quick", TB_TASK_DONE, 5000));
    TH_CHECK(th_wait_state(app, "sour", TB_TASK_FAILED, 5000));
    for (int i = 0; i < 2; i++) {
        TH_CHECK_RC(tb_task_cancel(app, "quick", 1000), 0);
        TH_CHECK_RC(tb_task_cancel(app, "sour", 1000), 0);
    }
    /* A finished task keeps its final state. */
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "quick", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_DONE);
    TH_CHECK_EQ(tb_task_get(app, "sour", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_FAILED);
    TH_CHECK_EQ(info.result, 3);
}

static int cancel_unknown_in_task(tb_task *self, void *ctx)
{
    (void)ctx;
    TH_CHECK_RC(tb_task_cancel(tb_task_app(self), "nobody", 100), TB_ENOENT);
    return 0;
}

TH_APP_TEST(test_cancel_unknown_is_enoent, th_app_new(2, 2000), 10000)
{
    TH_CHECK_RC(tb_task_cancel(app, "nobody", 100), TB_ENOENT);
    TH_CHECK_RC(
        th_add(app, "asker", TB_WORKER_ANY, cancel_unknown_in_task, NULL, NULL),
        0);
    TH_CHECK(th_wait_state(app, "asker", TB_TASK_DONE, 5000));
}

/* The canceller and its target share worker 0: tb_task_cancel must suspend
 * the canceller (not block the loop) and return only after the target's
 * body has returned. */
TH_TASK_TEST(test_cancel_from_task_waits_for_target, th_app_new(2, 2000), 0,
             10000)
{
    static stubborn_ctx ctx;
    stubborn_ctx *c = &ctx;
    c->ignore_ms = 100;
    TH_CHECK_RC(th_add(app, "target", 0, ignore_cancel_for_a_while, c, NULL),
                0);
    TH_CHECK(th_task_wait_ge(self, &c->loop.started, 1, 5000));
    long before = th_seq();
    int64_t t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_cancel(app, "target", 5000), 0);
    int64_t took = th_mono_ms() - t0;
    long after = th_seq();
    long ended = atomic_load(&c->loop.end_seq);
    TH_CHECKF(before < ended && ended < after,
              "cancel began at seq %ld, target ended at %ld, cancel "
              "returned at %ld",
              before, ended, after);
    TH_CHECKF(took >= c->ignore_ms - 10, "cancel returned after %lld ms",
              (long long)took);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "target", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_CANCELLED);
}

typedef struct self_ctx {
    atomic_int cancel_rc;
    atomic_int flagged;
    atomic_int sleep_rc;
    atomic_llong slept_ms;
    th_counter started;
    atomic_int other_state; /* the other replica's state seen on return */
} self_ctx;

static int cancel_myself(tb_task *self, void *arg)
{
    self_ctx *c = arg;
    atomic_store(&c->cancel_rc,
                 tb_task_cancel(tb_task_app(self), tb_task_name(self), 2000));
    atomic_store(&c->flagged, tb_task_cancelled(self));
    int64_t t0 = th_mono_ms();
    atomic_store(&c->sleep_rc, tb_sleep(self, 5000));
    atomic_store(&c->slept_ms, th_mono_ms() - t0);
    return 0;
}

TH_APP_TEST(test_self_cancel, th_app_new(2, 2000), 10000)
{
    static self_ctx ctx;
    self_ctx *c = &ctx;
    c->cancel_rc = c->sleep_rc = 1;
    TH_CHECK_RC(th_add(app, "selfish", TB_WORKER_ANY, cancel_myself, c, NULL),
                0);
    TH_CHECK(th_wait_state(app, "selfish", TB_TASK_CANCELLED, 5000));
    int rc = atomic_load(&c->cancel_rc);
    /* The header leaves open whether a self-cancel reports 0 or
     * TB_EINPROGRESS; it must not fail or wait for itself. */
    TH_CHECKF(rc == 0 || rc == TB_EINPROGRESS, "self-cancel returned %s",
              tb_err_name(rc));
    TH_CHECK_EQ(atomic_load(&c->flagged), 1);
    TH_CHECK_RC(atomic_load(&c->sleep_rc), TB_ECANCELED);
    TH_CHECK(atomic_load(&c->slept_ms) < 1000);
}

/* Replica on worker 0 cancels its own name: the call returns once the
 * replica on worker 1 has ended, and only requests its own cancel. */
static int replica_cancels_all(tb_task *self, void *arg)
{
    self_ctx *c = arg;
    tb_app *app = tb_task_app(self);
    th_counter_add(&c->started, 1);
    if (tb_task_worker(self) != 0) {
        while (tb_sleep(self, 30000) == 0)
            ;
        return 0;
    }
    TH_CHECK(th_task_wait_ge(self, &c->started, 2, 5000));
    atomic_store(&c->cancel_rc, tb_task_cancel(app, "pair", 3000));
    atomic_store(&c->flagged, tb_task_cancelled(self));
    tb_task_info *list = NULL;
    size_t n = 0;
    tb_task_list(app, &list, &n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, "pair") == 0 && list[i].worker == 1)
            atomic_store(&c->other_state, (int)list[i].state);
    free(list);
    atomic_store(&c->sleep_rc, tb_sleep(self, 5000));
    return 0;
}

static void drive_replica_self_cancel(tb_app *app, void *ctx)
{
    (void)ctx;
    int64_t end = th_mono_ms() + 5000;
    int all = 0;
    while (th_mono_ms() < end) {
        if (th_count_named(app, "pair", TB_TASK_CANCELLED, &all, NULL) == 2 &&
            all)
            break;
        th_nap_ms(2);
    }
    TH_CHECK(all);
}

static void test_self_cancel_among_replicas(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    self_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.started);
    c.cancel_rc = c.sleep_rc = 1;
    c.other_state = -1;
    assert_rc(th_add(app, "pair", TB_WORKER_ANY, replica_cancels_all, &c, NULL),
              0);
    assert_rc(th_run_thread(app, drive_replica_self_cancel, &c, 10000), 0);
    th_assert_clean();
    int rc = atomic_load(&c.cancel_rc);
    if (rc != 0 && rc != TB_EINPROGRESS)
        fail_msg("replica self-cancel returned %s", tb_err_name(rc));
    assert_int_equal(atomic_load(&c.flagged), 1);
    assert_int_equal(atomic_load(&c.other_state), TB_TASK_CANCELLED);
    assert_rc(atomic_load(&c.sleep_rc), TB_ECANCELED);
    tb_app_free(app);
    th_counter_destroy(&c.started);
}

TH_APP_TEST(test_cancel_timeout, th_app_new(2, 200), 10000)
{
    static stubborn_ctx ctx;
    stubborn_ctx *c = &ctx;
    c->ignore_ms = 800;
    TH_CHECK_RC(th_add(app, "slowpoke", 1, ignore_cancel_for_a_while, c, NULL),
                0);
    TH_CHECK(th_counter_wait_ge(&c->loop.started, 1, 5000));
    int64_t t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_cancel(app, "slowpoke", 100), TB_ETIMEDOUT);
    int64_t took = th_mono_ms() - t0;
    TH_CHECKF(took >= 90 && took < c->ignore_ms,
              "cancel with 100 ms timeout took %lld ms", (long long)took);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "slowpoke", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);
    TH_CHECK_EQ(info.cancel_requested, 1);
    /* A negative timeout means the app's graceful timeout (200 ms). */
    t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_cancel(app, "slowpoke", TB_TIMEOUT_DEFAULT),
                TB_ETIMEDOUT);
    took = th_mono_ms() - t0;
    TH_CHECKF(took >= 190 && took < c->ignore_ms,
              "cancel with the graceful timeout (200 ms) took %lld ms",
              (long long)took);
    /* It stays cancel-requested; a later cancel waits for the end. */
    TH_CHECK_RC(tb_task_cancel(app, "slowpoke", 5000), 0);
    TH_CHECK_EQ(th_counter_get(&c->loop.ended), 1);
    TH_CHECK_EQ(tb_task_get(app, "slowpoke", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_CANCELLED);
}

typedef struct listener_cancel_ctx {
    stubborn_ctx slow;
    atomic_int rc, unknown_rc;
    atomic_llong took_ms;
} listener_cancel_ctx;

/* WORKER_BEFORE_STOP on worker 0 runs on its loop, outside any task: the
 * cancel must not block that loop. */
static int cancel_in_listener(tb_app *app, int worker, void *arg)
{
    listener_cancel_ctx *c = arg;
    if (worker != 0)
        return 0;
    int64_t t0 = th_mono_ms();
    atomic_store(&c->rc, tb_task_cancel(app, "slow", 5000));
    atomic_store(&c->took_ms, th_mono_ms() - t0);
    atomic_store(&c->unknown_rc, tb_task_cancel(app, "nobody", 5000));
    return 0;
}

static void drive_listener_cancel(tb_app *app, void *ctx)
{
    listener_cancel_ctx *c = ctx;
    TH_CHECK_RC(
        th_add(app, "slow", 1, ignore_cancel_for_a_while, &c->slow, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->slow.loop.started, 1, 5000));
}

static void test_cancel_from_listener_is_einprogress(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 3000);
    listener_cancel_ctx c;
    memset(&c, 0, sizeof c);
    loop_ctx_init(&c.slow.loop);
    c.slow.ignore_ms = 300;
    c.rc = c.unknown_rc = 1;
    assert_rc(
        tb_app_add_listener(app, TB_WORKER_BEFORE_STOP, cancel_in_listener, &c),
        0);
    assert_rc(th_run_thread(app, drive_listener_cancel, &c, 10000), 0);
    th_assert_clean();
    assert_rc(atomic_load(&c.rc), TB_EINPROGRESS);
    if (atomic_load(&c.took_ms) > 100)
        fail_msg("tb_task_cancel blocked a worker's loop for %lld ms",
                 (long long)atomic_load(&c.took_ms));
    assert_rc(atomic_load(&c.unknown_rc), TB_ENOENT);
    /* The request stood: the task still ended cancelled, in time. */
    assert_int_equal(th_counter_get(&c.slow.loop.ended), 1);
    tb_app_free(app);
    loop_ctx_destroy(&c.slow.loop);
}

/* ------------------------------------------------------------ arg_free */

typedef struct freed_ctx {
    th_counter freed;
    void *last;
    loop_ctx loop;
} freed_ctx;

static freed_ctx g_freed;

static void record_free(void *arg)
{
    g_freed.last = arg;
    th_counter_add(&g_freed.freed, 1);
}

static int sleep_until_cancelled_g(tb_task *self, void *arg)
{
    (void)arg;
    return sleep_until_cancelled(self, &g_freed.loop);
}

static void drive_arg_free(tb_app *app, void *ctx)
{
    (void)ctx;
    static int a, b, c;
    /* The two pre-run replicas have started (they hold g_freed.loop). */
    TH_CHECK(th_counter_wait_ge(&g_freed.loop.started, 2, 5000));

    tb_task_opts o = th_opts("af-done", TB_WORKER_ANY);
    o.ud_free = record_free;
    TH_CHECK_RC(tb_task_add(app, return_zero, NULL, &o, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&g_freed.freed, 1, 5000));
    TH_CHECK(g_freed.last == NULL);

    o.name = "af-cancel";
    TH_CHECK_RC(tb_task_add(app, sleep_until_cancelled_g, &a, &o, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&g_freed.loop.started, 3, 5000));
    TH_CHECK_EQ(th_counter_get(&g_freed.freed), 1); /* not before it ends */
    TH_CHECK_RC(tb_task_cancel(app, "af-cancel", 2000), 0);
    TH_CHECK(th_counter_wait_ge(&g_freed.freed, 2, 5000));
    TH_CHECK(g_freed.last == &a);

    /* A refused add never calls arg_free. */
    o.name = "af-live";
    TH_CHECK_RC(tb_task_add(app, sleep_until_cancelled_g, &b, &o, NULL), 0);
    TH_CHECK_RC(tb_task_add(app, return_zero, &c, &o, NULL), TB_EEXIST);
    TH_CHECK(th_counter_wait_ge(&g_freed.loop.started, 4, 5000));
    TH_CHECK_RC(tb_task_cancel(app, "af-live", 2000), 0);
    TH_CHECK(th_counter_wait_ge(&g_freed.freed, 3, 5000));
    TH_CHECK(g_freed.last == &b);
}

static void test_arg_free(void **state)
{
    (void)state;
    memset(&g_freed, 0, sizeof g_freed);
    th_counter_init(&g_freed.freed);
    loop_ctx_init(&g_freed.loop);
    tb_app *app = th_app_new(2, 2000);
    /* Before run, named: one replica per worker, but its arg is the app's
     * to free, once, at tb_app_free. */
    static int p;
    tb_task_opts o = th_opts("af-prerun", TB_WORKER_ANY);
    o.ud_free = record_free;
    assert_rc(tb_task_add(app, sleep_until_cancelled_g, &p, &o, NULL), 0);
    assert_rc(th_run_thread(app, drive_arg_free, NULL, 10000), 0);
    th_assert_clean();
    assert_int_equal(th_counter_get(&g_freed.loop.started), 4);
    /* The replicas ended at stop without freeing the app-owned arg. */
    assert_int_equal(th_counter_get(&g_freed.freed), 3);
    tb_app_free(app);
    assert_int_equal(th_counter_get(&g_freed.freed), 4);
    assert_ptr_equal(g_freed.last, &p);
    th_counter_destroy(&g_freed.freed);
    loop_ctx_destroy(&g_freed.loop);
}

/* ------------------------------------------------------------ states */

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(tb_task_state_name(TB_TASK_PENDING), "pending");
    assert_string_equal(tb_task_state_name(TB_TASK_RUNNING), "running");
    assert_string_equal(tb_task_state_name(TB_TASK_DONE), "done");
    assert_string_equal(tb_task_state_name(TB_TASK_FAILED), "failed");
    assert_string_equal(tb_task_state_name(TB_TASK_CANCELLED), "cancelled");
}

static void check_final(tb_app *app, const char *name, tb_task_state st,
                        int result, const char *error)
{
    tb_task_info info;
    memset(&info, 0x5a, sizeof info);
    if (!TH_CHECKF(tb_task_get(app, name, &info) == 1, "get %s", name))
        return;
    TH_CHECKF(info.state == st, "%s: state %s, want %s", name,
              tb_task_state_name(info.state), tb_task_state_name(st));
    TH_CHECKF(info.result == result, "%s: result %d, want %d", name,
              info.result, result);
    if (error)
        TH_CHECKF(strcmp(info.error, error) == 0,
                  "%s: error \"%s\", want "
                  "\"%s\"",
                  name, info.error, error);
}

TH_APP_TEST(test_states_results_and_purge, th_app_new(2, 2000), 15000)
{
    static loop_ctx ctx;
    loop_ctx *c = &ctx;
    TH_CHECK_RC(th_add(app, "r-done", 0, return_zero, NULL, NULL), 0);
    TH_CHECK_RC(
        th_add(app, "r-fail", 1, return_arg, (void *)(intptr_t)42, NULL), 0);
    TH_CHECK_RC(th_add(app, "r-failmsg", 0, fail_with_message, NULL, NULL), 0);
    TH_CHECK_RC(th_add(app, "r-cancel", 1, sleep_until_cancelled, c, NULL), 0);
    TH_CHECK_RC(th_add(app, "r-alive", 0, tick_until_cancelled, c, NULL), 0);
    TH_CHECK(th_wait_state(app, "r-done", TB_TASK_DONE, 5000));
    TH_CHECK(th_wait_state(app, "r-fail", TB_TASK_FAILED, 5000));
    TH_CHECK(th_wait_state(app, "r-failmsg", TB_TASK_FAILED, 5000));
    TH_CHECK(th_counter_wait_ge(&c->started, 2, 5000));
    TH_CHECK_RC(tb_task_cancel(app, "r-cancel", 2000), 0);

    for (int round = 0; round < 2; round++) {
        check_final(app, "r-done", TB_TASK_DONE, 0, "");
        check_final(app, "r-fail", TB_TASK_FAILED, 42, NULL);
        check_final(app, "r-failmsg", TB_TASK_FAILED, 0, "disk full");
        check_final(app, "r-cancel", TB_TASK_CANCELLED, 0, NULL);
        /* Still there a while later: nothing drops them but a purge. */
        long t = th_counter_get(&c->ticks);
        TH_CHECK(th_counter_wait_ge(&c->ticks, t + 4, 5000));
    }

    TH_CHECK_EQ(tb_task_purge(app), 4);
    TH_CHECK_RC(tb_task_get(app, "r-done", NULL), TB_ENOENT);
    TH_CHECK_RC(tb_task_get(app, "r-fail", NULL), TB_ENOENT);
    TH_CHECK_RC(tb_task_get(app, "r-failmsg", NULL), TB_ENOENT);
    TH_CHECK_RC(tb_task_get(app, "r-cancel", NULL), TB_ENOENT);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "r-alive", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);
    tb_task_info *list = NULL;
    size_t n = 99;
    TH_CHECK_EQ(tb_task_list(app, &list, &n), 1);
    TH_CHECK_EQ(n, 1);
    free(list);
    TH_CHECK_EQ(tb_task_purge(app), 0);
    TH_CHECK_RC(tb_task_cancel(app, "r-alive", 2000), 0);
    TH_CHECK_EQ(tb_task_purge(app), 1);
    list = (tb_task_info *)&n; /* must be reset to NULL */
    TH_CHECK_EQ(tb_task_list(app, &list, &n), 0);
    TH_CHECK_EQ(n, 0);
    TH_CHECK(list == NULL);
}

TH_APP_TEST(test_list_fields, th_app_new(2, 2000), 10000)
{
    static loop_ctx ctx;
    loop_ctx *c = &ctx;
    int64_t t_before = th_real_us();
    tb_task_opts o = th_opts("lf-a", 1);
    o.kind = "alpha";
    uint64_t ida = 0, idb = 0, idc = 0;
    TH_CHECK_RC(tb_task_add(app, return_zero, NULL, &o, &ida), 0);
    TH_CHECK_RC(th_add(app, "lf-b", 0, fail_with_message, NULL, &idb), 0);
    TH_CHECK_RC(th_add(app, "lf-c", 1, sleep_until_cancelled, c, &idc), 0);
    TH_CHECK(th_wait_state(app, "lf-a", TB_TASK_DONE, 5000));
    TH_CHECK(th_wait_state(app, "lf-b", TB_TASK_FAILED, 5000));
    TH_CHECK(th_counter_wait_ge(&c->started, 1, 5000));
    int64_t t_after = th_real_us();

    tb_task_info *list = NULL;
    size_t n = 0;
    TH_CHECK_EQ(tb_task_list(app, &list, &n), 3);
    if (!TH_CHECK_EQ(n, 3)) {
        free(list);
        return;
    }
    TH_CHECK(list[0].id < list[1].id && list[1].id < list[2].id);
    for (size_t i = 0; i < n; i++) {
        tb_task_info *t = &list[i];
        TH_CHECKF(
            t->created_us >= t_before - 1000 && t->created_us <= t_after + 1000,
            "%s created_us %lld outside [%lld, %lld]", t->name,
            (long long)t->created_us, (long long)t_before, (long long)t_after);
        TH_CHECKF(t->started_us >= t->created_us, "%s started before created",
                  t->name);
        if (t->state == TB_TASK_RUNNING)
            TH_CHECK_EQ(t->ended_us, 0);
        else
            TH_CHECKF(t->ended_us >= t->started_us && t->ended_us <= t_after,
                      "%s ended_us %lld, started_us %lld", t->name,
                      (long long)t->ended_us, (long long)t->started_us);
        TH_CHECK_EQ(t->cancel_requested, 0);
        if (t->id == ida) {
            TH_CHECK_STR(t->name, "lf-a");
            TH_CHECK_STR(t->kind, "alpha");
            TH_CHECK_EQ(t->worker, 1);
            TH_CHECK_EQ(t->state, TB_TASK_DONE);
            TH_CHECK_EQ(t->result, 0);
            TH_CHECK_STR(t->error, "");
        } else if (t->id == idb) {
            TH_CHECK_STR(t->name, "lf-b");
            TH_CHECK_STR(t->kind, "");
            TH_CHECK_EQ(t->worker, 0);
            TH_CHECK_EQ(t->state, TB_TASK_FAILED);
            TH_CHECK_STR(t->error, "disk full");
        } else if (t->id == idc) {
            TH_CHECK_STR(t->name, "lf-c");
            TH_CHECK_EQ(t->worker, 1);
            TH_CHECK_EQ(t->state, TB_TASK_RUNNING);
            TH_CHECK(t->started_us != 0);
            TH_CHECK_STR(t->error, "");
        } else {
            TH_CHECKF(0, "unexpected task %" PRIu64 " \"%s\"", t->id, t->name);
        }
    }
    free(list);
    TH_CHECK_RC(tb_task_cancel(app, "lf-c", 2000), 0);
}

/* ------------------------------------------------------------ join */

static int sleep_then_return_arg(tb_task *self, void *arg)
{
    if (tb_sleep(self, 20) != 0)
        return -1;
    return (int)(intptr_t)arg;
}

TH_TASK_TEST(test_join, th_app_new(2, 2000), 0, 10000)
{
    static loop_ctx ctx;
    loop_ctx *c = &ctx;
    int result = -1;
    tb_task_state st = TB_TASK_PENDING;

    TH_CHECK_RC(th_add(app, "j-five", TB_WORKER_ANY, sleep_then_return_arg,
                       (void *)(intptr_t)5, NULL),
                0);
    TH_CHECK_RC(tb_task_join(self, "j-five", 5000, &result, &st), 0);
    TH_CHECK_EQ(result, 5);
    TH_CHECK_EQ(st, TB_TASK_FAILED);

    TH_CHECK_RC(th_add(app, "j-ok", TB_WORKER_ANY, sleep_then_return_arg,
                       (void *)(intptr_t)0, NULL),
                0);
    TH_CHECK_RC(tb_task_join(self, "j-ok", 5000, &result, &st), 0);
    TH_CHECK_EQ(result, 0);
    TH_CHECK_EQ(st, TB_TASK_DONE);
    /* Joining a finished task returns at once; out pointers are optional. */
    int64_t t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_join(self, "j-ok", 5000, NULL, NULL), 0);
    TH_CHECK(th_mono_ms() - t0 < 1000);

    TH_CHECK_RC(tb_task_join(self, "j-unknown", 100, &result, &st), TB_ENOENT);
    TH_CHECK_RC(tb_task_join(self, tb_task_name(self), 100, &result, &st),
                TB_EDEADLK);

    TH_CHECK_RC(
        th_add(app, "j-long", TB_WORKER_ANY, sleep_until_cancelled, c, NULL),
        0);
    t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_join(self, "j-long", 50, &result, &st), TB_ETIMEDOUT);
    int64_t took = th_mono_ms() - t0;
    TH_CHECKF(took >= 45 && took < 2000, "join(50 ms) took %lld ms",
              (long long)took);
    TH_CHECK_RC(tb_task_cancel(app, "j-long", 2000), 0);
    TH_CHECK_RC(tb_task_join(self, "j-long", 1000, &result, &st), 0);
    TH_CHECK_EQ(st, TB_TASK_CANCELLED);
}

/* TB_TASK_EPHEMERAL: the entry leaves the registry when the task ends; a
 * join that was waiting still sees it end, with its result. */
static int short_nap(tb_task *self, void *arg)
{
    (void)arg;
    tb_sleep(self, 50);
    return 7;
}

TH_TASK_TEST(test_ephemeral, th_app_new(2, 2000), 0, 10000)
{
    tb_task_opts o = th_opts("eph", 1);
    o.flags = TB_TASK_EPHEMERAL;
    TH_CHECK_RC(tb_task_add(app, short_nap, NULL, &o, NULL), 0);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "eph", &info), 1);
    int result = 0;
    tb_task_state st = TB_TASK_PENDING;
    TH_CHECK_RC(tb_task_join(self, "eph", 2000, &result, &st), 0);
    TH_CHECK_EQ(result, 7);
    TH_CHECK_EQ(st, TB_TASK_FAILED);
    TH_CHECK_RC(tb_task_get(app, "eph", NULL), TB_ENOENT);
    TH_CHECK_EQ(th_count_named(app, "eph", -1, NULL, NULL), 0);
    /* An ordinary task stays until purged. */
    TH_CHECK_RC(th_add(app, "plain", 1, short_nap, NULL, NULL), 0);
    TH_CHECK_RC(tb_task_join(self, "plain", 2000, NULL, NULL), 0);
    TH_CHECK_EQ(tb_task_get(app, "plain", NULL), 1);
}

typedef struct join_replicas_ctx {
    atomic_int ended[2];
} join_replicas_ctx;

static int staggered(tb_task *self, void *arg)
{
    join_replicas_ctx *c = arg;
    int w = tb_task_worker(self);
    tb_sleep(self, 30 + 120 * w);
    atomic_store(&c->ended[w], 1);
    return 0;
}

static int drive_join_replicas(tb_task *self, void *ctx)
{
    join_replicas_ctx *c = ctx;
    tb_task_state st = TB_TASK_PENDING;
    TH_CHECK_RC(tb_task_join(self, "staggered", 5000, NULL, &st), 0);
    TH_CHECK_EQ(atomic_load(&c->ended[0]), 1);
    TH_CHECK_EQ(atomic_load(&c->ended[1]), 1); /* waits for all replicas */
    TH_CHECK_EQ(st, TB_TASK_DONE);
    return 0;
}

static void test_join_waits_for_every_replica(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    join_replicas_ctx c;
    memset(&c, 0, sizeof c);
    assert_rc(th_add(app, "staggered", TB_WORKER_ANY, staggered, &c, NULL), 0);
    assert_rc(th_run_task(app, 0, drive_join_replicas, &c, 10000), 0);
    th_assert_clean();
    tb_app_free(app);
}

TH_TASK_TEST(test_task_app_and_identity, th_app_new(2, 2000), 1, 10000)
{
    TH_CHECK(tb_task_app(self) == app);
    TH_CHECK(tb_task_current() == self);
    TH_CHECK_EQ(tb_task_worker(self), 1);
    TH_CHECK_EQ(tb_app_current_worker(app), 1);
    TH_CHECK_STR(tb_task_name(self), TH_DRIVER_NAME);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, TH_DRIVER_NAME, &info), 1);
    TH_CHECK_EQ(info.id, tb_task_id(self));
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);
    TH_CHECK_STR(info.kind, "harness");
    TH_CHECK_EQ(tb_task_cancelled(self), 0);
}

/* ------------------------------------------------------------ blocking */

typedef struct blocking_arg {
    tb_app *app;
    th_counter *ticks;
    pthread_t thread;
    int worker;
    int saw_task;
    int saw_tick;
} blocking_arg;

static int blocking_fn(void *p)
{
    blocking_arg *a = p;
    a->thread = pthread_self();
    a->worker = tb_app_current_worker(a->app);
    a->saw_task = tb_task_current() != NULL;
    /* The worker loop stays free while we block: a task added on it runs. */
    a->saw_tick = th_counter_wait_ge(a->ticks, 1, 3000);
    return 123;
}

TH_TASK_TEST(test_run_blocking_runs_on_another_thread, th_app_new(2, 2000), 0,
             10000)
{
    static th_counter ctx;
    th_counter *ticks = &ctx;
    blocking_arg a; /* on the task's stack, as the header allows */
    memset(&a, 0, sizeof a);
    a.app = app;
    a.ticks = ticks;
    a.worker = -9;
    TH_CHECK_RC(
        th_add(app, "ticker", tb_task_worker(self), return_zero, ticks, NULL),
        0);
    int ret = 0;
    TH_CHECK_RC(tb_run_blocking(self, blocking_fn, &a, &ret), 0);
    TH_CHECK_EQ(ret, 123);
    TH_CHECK(!pthread_equal(a.thread, pthread_self()));
    TH_CHECK_EQ(a.worker, -1);
    TH_CHECK_EQ(a.saw_task, 0);
    TH_CHECK_EQ(a.saw_tick, 1);
    TH_CHECK_EQ(tb_app_current_worker(app), 0); /* back on the worker */
    TH_CHECK_RC(tb_run_blocking(self, blocking_fn, &a, NULL), 0);
}

typedef struct blocked_ctx {
    th_counter fn_started;
    th_counter release;
    atomic_long fn_end_seq;
    atomic_long ret_seq;
    atomic_int rc;
} blocked_ctx;

static int wait_for_release(void *p)
{
    blocked_ctx *c = p;
    th_counter_add(&c->fn_started, 1);
    th_counter_wait_ge(&c->release, 1, 5000);
    atomic_store(&c->fn_end_seq, th_seq());
    return 9;
}

static int block_until_released(tb_task *self, void *arg)
{
    blocked_ctx *c = arg;
    int ret = 0;
    atomic_store(&c->rc, tb_run_blocking(self, wait_for_release, c, &ret));
    atomic_store(&c->ret_seq, th_seq());
    return 0;
}

TH_APP_TEST(test_run_blocking_cancel_waits_for_fn, th_app_new(2, 2000), 10000)
{
    static blocked_ctx ctx;
    blocked_ctx *c = &ctx;
    c->rc = 1;
    TH_CHECK_RC(th_add(app, "blk", 0, block_until_released, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->fn_started, 1, 5000));
    /* fn cannot be interrupted, so the task cannot end yet. */
    TH_CHECK_RC(tb_task_cancel(app, "blk", 100), TB_ETIMEDOUT);
    TH_CHECK_EQ(atomic_load(&c->ret_seq), 0);
    tb_task_info info;
    TH_CHECK_EQ(tb_task_get(app, "blk", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_RUNNING);
    th_counter_add(&c->release, 1);
    TH_CHECK_RC(tb_task_cancel(app, "blk", 5000), 0);
    TH_CHECK_RC(atomic_load(&c->rc), TB_ECANCELED);
    long fn_end = atomic_load(&c->fn_end_seq);
    long ret = atomic_load(&c->ret_seq);
    TH_CHECKF(fn_end != 0 && fn_end < ret,
              "fn ended at seq %ld, tb_run_blocking returned at %ld", fn_end,
              ret);
    TH_CHECK_EQ(tb_task_get(app, "blk", &info), 1);
    TH_CHECK_EQ(info.state, TB_TASK_CANCELLED);
}

/* ------------------------------------------------------------ load */

#define BULK 10000

typedef struct bulk_ctx {
    th_counter ran;
    atomic_int per_worker[2];
} bulk_ctx;

static int bulk_body(tb_task *self, void *arg)
{
    bulk_ctx *c = arg;
    int w = tb_task_worker(self);
    if (w >= 0 && w < 2)
        atomic_fetch_add(&c->per_worker[w], 1);
    th_counter_add(&c->ran, 1);
    return 0;
}

TH_APP_TEST(test_ten_thousand_tasks, th_app_new(2, 2000), 50000)
{
    static bulk_ctx ctx;
    bulk_ctx *c = &ctx;
    for (int i = 0; i < BULK; i++) {
        char name[32];
        snprintf(name, sizeof name, "bulk-%05d", i);
        if (!TH_CHECK_RC(th_add(app, name, TB_WORKER_ANY, bulk_body, c, NULL),
                         0))
            return;
    }
    TH_CHECK(th_counter_wait_ge(&c->ran, BULK, 30000));

    /* Every one is listed, done, exactly once. */
    static unsigned char seen[BULK];
    int64_t end = th_mono_ms() + 10000;
    for (;;) {
        tb_task_info *list = NULL;
        size_t n = 0;
        int rc = tb_task_list(app, &list, &n);
        int done = 0, dupes = 0, strays = 0;
        memset(seen, 0, sizeof seen);
        for (size_t i = 0; i < n; i++) {
            int k = -1;
            if (sscanf(list[i].name, "bulk-%d", &k) != 1 || k < 0 ||
                k >= BULK) {
                strays++;
                continue;
            }
            dupes += seen[k]++ != 0;
            done += list[i].state == TB_TASK_DONE;
        }
        free(list);
        if (done == BULK || th_mono_ms() > end) {
            TH_CHECK_EQ(rc, BULK);
            TH_CHECK_EQ(done, BULK);
            TH_CHECK_EQ(dupes, 0);
            TH_CHECK_EQ(strays, 0);
            break;
        }
        th_nap_ms(10);
    }
    TH_CHECK_EQ(tb_task_purge(app), BULK);

    /* No task ran twice, none after the stop. */
    TH_CHECK_RC(th_app_stopped(app), 0);
    TH_CHECK_EQ(th_counter_get(&c->ran), BULK);
    TH_CHECK_EQ(atomic_load(&c->per_worker[0]) + atomic_load(&c->per_worker[1]),
                BULK);
}

/* ------------------------------------------------------------ shutdown */

typedef struct shutdown_ctx {
    th_counter started;
    atomic_long stubborn_iterations; /* tb_sleep calls after the cancel */
    atomic_int stubborn_gave_up;     /* reached its own 3 s bound */
    atomic_int coop_rc;
    atomic_int coop_state_at_stop;
    atomic_llong t0_ms, cpu0_ms;
} shutdown_ctx;

/* Ignores cancellation: keeps sleeping 50 ms at a time. Bounded at 3 s so
 * that a broken shutdown fails this test instead of hanging it. */
static int stubborn_body(tb_task *self, void *arg)
{
    shutdown_ctx *c = arg;
    th_counter_add(&c->started, 1);
    int64_t give_up = 0;
    for (;;) {
        int rc = tb_sleep(self, 50);
        if (rc == TB_ECANCELED) {
            atomic_fetch_add(&c->stubborn_iterations, 1);
            if (give_up == 0)
                give_up = th_mono_ms() + 3000;
        }
        if (give_up != 0 && th_mono_ms() > give_up) {
            atomic_store(&c->stubborn_gave_up, 1);
            return 0;
        }
    }
}

static int coop_body(tb_task *self, void *arg)
{
    shutdown_ctx *c = arg;
    th_counter_add(&c->started, 1);
    atomic_store(&c->coop_rc, tb_sleep(self, 30000));
    return 0;
}

static int record_coop_at_stop(tb_app *app, int worker, void *arg)
{
    shutdown_ctx *c = arg;
    tb_task_info info;
    if (worker == 1 && tb_task_get(app, "coop", &info) == 1)
        atomic_store(&c->coop_state_at_stop, (int)info.state);
    return 0;
}

static void drive_shutdown(tb_app *app, void *ctx)
{
    shutdown_ctx *c = ctx;
    TH_CHECK_RC(th_add(app, "stubborn", 0, stubborn_body, c, NULL), 0);
    TH_CHECK_RC(th_add(app, "coop", 1, coop_body, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->started, 2, 5000));
    atomic_store(&c->cpu0_ms, th_cpu_ms());
    atomic_store(&c->t0_ms, th_mono_ms());
    tb_app_stop(app);
}

static void test_graceful_timeout_abandons_stubborn_task(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 300);
    shutdown_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.started);
    c.coop_rc = 1;
    c.coop_state_at_stop = -1;
    assert_rc(
        tb_app_add_listener(app, TB_WORKER_AFTER_STOP, record_coop_at_stop, &c),
        0);

    int rc = th_run_thread(app, drive_shutdown, &c, 15000);
    int64_t wall = th_mono_ms() - atomic_load(&c.t0_ms);
    int64_t cpu = th_cpu_ms() - atomic_load(&c.cpu0_ms);
    th_assert_clean();
    printf("shutdown: %lld ms wall, %lld ms CPU, stubborn task slept %ld "
           "times after its cancel%s\n",
           (long long)wall, (long long)cpu, atomic_load(&c.stubborn_iterations),
           atomic_load(&c.stubborn_gave_up) ? " and gave up by itself" : "");
    if (atomic_load(&c.stubborn_gave_up))
        fail_msg("the graceful timeout (300 ms) did not end the stubborn "
                 "task; it ran %lld ms until its own bound",
                 (long long)wall);
    assert_rc(rc, TB_ETIMEDOUT);
    if (wall < 250 || wall > 2500)
        fail_msg("tb_app_run returned %lld ms after stop; graceful timeout "
                 "is 300 ms",
                 (long long)wall);
    if (cpu * 4 > wall)
        fail_msg("shutdown busy-waits: %lld ms CPU in %lld ms wall",
                 (long long)cpu, (long long)wall);
    assert_rc(atomic_load(&c.coop_rc), TB_ECANCELED);
    assert_int_equal(atomic_load(&c.coop_state_at_stop), TB_TASK_CANCELLED);
    tb_app_free(app);
    th_counter_destroy(&c.started);
}

static atomic_int g_add_while_stopping = 1;

static int add_in_before_stop(tb_app *app, int worker, void *arg)
{
    (void)arg;
    if (worker == 0)
        atomic_store(&g_add_while_stopping, th_add(app, "late", TB_WORKER_ANY,
                                                   return_zero, NULL, NULL));
    return 0;
}

static void nothing(tb_app *app, void *ctx)
{
    (void)app;
    (void)ctx;
}

static void test_add_after_stop_is_eshutdown(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    assert_rc(tb_app_add_listener(app, TB_WORKER_BEFORE_STOP,
                                  add_in_before_stop, NULL),
              0);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    assert_rc(atomic_load(&g_add_while_stopping), TB_ESHUTDOWN);
    uint64_t id = 7;
    assert_rc(th_add(app, "after", TB_WORKER_ANY, return_zero, NULL, &id),
              TB_ESHUTDOWN);
    tb_app_free(app);
}

/* A cancel by name and id leaves alone a newer task that took the name
 * after the one it was meant for ended (the long poll's give-up cancel:
 * its name comes from a client's X-Request-ID). */
TH_APP_TEST(test_cancel_by_name_and_id, th_app_new(1, 2000), 10000)
{
    uint64_t old_id = 0, new_id = 0;
    tb_task_opts o = th_opts("named", 0);
    TH_CHECK_RC(tb_task_add(app, return_zero, NULL, &o, &old_id), 0);
    TH_CHECK(th_wait_state(app, "named", TB_TASK_DONE, 3000));
    loop_ctx c;
    memset(&c, 0, sizeof c);
    TH_CHECK_RC(tb_task_add(app, sleep_until_cancelled, &c, &o, &new_id), 0);
    TH_CHECK(th_counter_wait_ge(&c.started, 1, 3000));
    TH_CHECK(new_id != old_id);
    /* The old task's id: gone from the name; the new one runs on. */
    TH_CHECK_RC(tb__task_cancel_report(app, "named", old_id, 1000, NULL, NULL),
                TB_ENOENT);
    th_nap_ms(50);
    TH_CHECK_EQ(th_counter_get(&c.cancelled), 0);
    /* Its own id cancels it, and the report is about it. */
    tb_task_info info;
    int n = 0;
    TH_CHECK_RC(tb__task_cancel_report(app, "named", new_id, 2000, &info, &n),
                0);
    TH_CHECK_EQ(th_counter_get(&c.cancelled), 1);
    TH_CHECK(info.id == new_id && info.state == TB_TASK_CANCELLED && n == 1);
    TH_CHECK_RC(tb__task_cancel_report(app, "named", 12345678, 100, NULL, NULL),
                TB_ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_before_run_runs_once_per_worker),
        cmocka_unit_test(test_named_prerun_task_has_replica_per_worker),
        cmocka_unit_test(test_add_while_running_from_thread),
        cmocka_unit_test(test_add_from_inside_task),
        cmocka_unit_test(test_explicit_worker_honored),
        cmocka_unit_test(test_any_worker_picks_least_loaded),
        cmocka_unit_test(test_duplicate_name_is_eexist),
        cmocka_unit_test(test_replace_cancels_old_first_from_thread),
        cmocka_unit_test(test_replace_from_task_on_same_worker),
        cmocka_unit_test(test_finished_name_can_be_reused),
        cmocka_unit_test(test_task_name_length_limit),
        cmocka_unit_test(test_task_name_dot_segments),
        cmocka_unit_test(test_cancel_while_sleeping),
        cmocka_unit_test(test_cancel_while_waiting_for_event),
        cmocka_unit_test(test_cancel_pending_task_never_runs),
        cmocka_unit_test(test_cancel_after_finish_is_idempotent),
        cmocka_unit_test(test_cancel_unknown_is_enoent),
        cmocka_unit_test(test_cancel_from_task_waits_for_target),
        cmocka_unit_test(test_self_cancel),
        cmocka_unit_test(test_self_cancel_among_replicas),
        cmocka_unit_test(test_cancel_timeout),
        cmocka_unit_test(test_cancel_from_listener_is_einprogress),
        cmocka_unit_test(test_arg_free),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_states_results_and_purge),
        cmocka_unit_test(test_list_fields),
        cmocka_unit_test(test_join),
        cmocka_unit_test(test_ephemeral),
        cmocka_unit_test(test_join_waits_for_every_replica),
        cmocka_unit_test(test_task_app_and_identity),
        cmocka_unit_test(test_run_blocking_runs_on_another_thread),
        cmocka_unit_test(test_run_blocking_cancel_waits_for_fn),
        cmocka_unit_test(test_ten_thousand_tasks),
        cmocka_unit_test(test_graceful_timeout_abandons_stubborn_task),
        cmocka_unit_test(test_add_after_stop_is_eshutdown),
        cmocka_unit_test(test_cancel_by_name_and_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
