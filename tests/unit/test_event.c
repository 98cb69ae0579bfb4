/* test_event.c - unit tests for app events (service/event.c): dispatch to
 * waiters on every worker, patterns, timeouts and cancel, event accessors,
 * name and size limits, subscriptions (order, overflow, lifetime) and
 * exactly-once delivery, through the public API of taskbus.h. */
#include "harness.h"

#include "internal.h"

/* ------------------------------------------------------------ arming */

static int ack_body(tb_task *self, void *arg)
{
    (void)self;
    th_counter_add(arg, 1);
    return 0;
}

/* Makes `armed` count up once self is suspended in the wait it calls next.
 * The ack task goes on self's own worker, so it cannot run before self
 * suspends, and self registers its wait before it suspends. This replaces
 * "sleep a bit, then dispatch": tb_event_wait does not see events dispatched
 * before it was called. */
static void arm(tb_task *self, th_counter *armed)
{
    tb_task_opts o = th_opts(NULL, tb_task_worker(self));
    o.kind = "ack";
    TH_CHECK_RC(tb_task_add(tb_task_app(self), ack_body, armed, &o, NULL), 0);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && strcmp(s + n - m, suffix) == 0;
}

/* ------------------------------------------------------------ reach */

typedef struct reach_ctx {
    th_counter armed;
    th_counter received;
    atomic_int got[4];
    const char *pattern;
    const char *origin_suffix; /* "/-1" or "/<worker>" */
    int dispatcher_worker;     /* for the from-task test */
} reach_ctx;

static int wait_one(tb_task *self, void *arg)
{
    reach_ctx *c = arg;
    tb_event *ev = NULL;
    arm(self, &c->armed);
    int rc = tb_event_wait(self, c->pattern, 5000, &ev);
    if (TH_CHECK_RC(rc, 0)) {
        TH_CHECK_STR(tb_event_name(ev), c->pattern);
        const char *origin = tb_event_origin(ev);
        TH_CHECKF(origin && ends_with(origin, c->origin_suffix),
                  "origin \"%s\" should end with \"%s\"",
                  origin ? origin : "(null)", c->origin_suffix);
        atomic_fetch_add(&c->got[tb_task_worker(self)], 1);
        th_counter_add(&c->received, 1);
    }
    tb_event_unref(ev);
    return 0;
}

static void drive_dispatch_from_thread(tb_app *app, void *ctx)
{
    reach_ctx *c = ctx;
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 3, 5000)))
        return;
    char id[TB_EVENT_ID_MAX];
    id[0] = '\0';
    TH_CHECK_RC(tb_dispatch(app, c->pattern, "x", 1, id), 0);
    TH_CHECK(id[0] != '\0');
    TH_CHECK(th_counter_wait_ge(&c->received, 3, 5000));
}

static void reach_ctx_init(reach_ctx *c, const char *pattern,
                           const char *suffix)
{
    memset(c, 0, sizeof *c);
    th_counter_init(&c->armed);
    th_counter_init(&c->received);
    c->pattern = pattern;
    c->origin_suffix = suffix;
}

static void reach_ctx_destroy(reach_ctx *c)
{
    th_counter_destroy(&c->armed);
    th_counter_destroy(&c->received);
}

static void test_dispatch_from_thread_reaches_every_worker(void **state)
{
    (void)state;
    tb_app *app = th_app_new(3, 2000);
    reach_ctx c;
    reach_ctx_init(&c, "ping.all", "/-1");
    assert_rc(th_add(app, "waiter", TB_WORKER_ANY, wait_one, &c, NULL), 0);
    assert_rc(th_run_thread(app, drive_dispatch_from_thread, &c, 10000), 0);
    th_assert_clean();
    for (int w = 0; w < 3; w++)
        assert_int_equal(atomic_load(&c.got[w]), 1);
    tb_app_free(app);
    reach_ctx_destroy(&c);
}

static int dispatch_in_task(tb_task *self, void *arg)
{
    reach_ctx *c = arg;
    TH_CHECK_RC(tb_dispatch(tb_task_app(self), c->pattern, NULL, 0, NULL), 0);
    return 0;
}

static void drive_dispatch_from_task(tb_app *app, void *ctx)
{
    reach_ctx *c = ctx;
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 3, 5000)))
        return;
    TH_CHECK_RC(th_add(app, "dispatcher", c->dispatcher_worker,
                       dispatch_in_task, c, NULL),
                0);
    TH_CHECK(th_counter_wait_ge(&c->received, 3, 5000));
}

/* A task dispatches: every worker's waiter (its own worker's included) gets
 * it, with an origin naming the dispatching worker. */
static void test_dispatch_from_task_reaches_every_worker(void **state)
{
    (void)state;
    tb_app *app = th_app_new(3, 2000);
    reach_ctx c;
    reach_ctx_init(&c, "ping.task", "/1");
    c.dispatcher_worker = 1;
    assert_rc(th_add(app, "waiter", TB_WORKER_ANY, wait_one, &c, NULL), 0);
    assert_rc(th_run_thread(app, drive_dispatch_from_task, &c, 10000), 0);
    th_assert_clean();
    for (int w = 0; w < 3; w++)
        assert_int_equal(atomic_load(&c.got[w]), 1);
    tb_app_free(app);
    reach_ctx_destroy(&c);
}

/* ------------------------------------------------------------ patterns */

typedef struct pattern_ctx {
    th_counter armed;
    th_counter finished;
    /* per waiter: the rc and the name of the event it got */
    atomic_int rc[4];
    char got[4][TB_EVENT_NAME_MAX + 1];
    char uid[4][32];
} pattern_ctx;

static const char *const g_patterns[4] = {
    "user.42.created",    /* exact */
    "user.*.created",     /* any one segment */
    "user.<uid>.created", /* captured segment */
    "user.*",             /* two segments: matches neither event */
};

static int pattern_waiter(tb_task *self, void *arg)
{
    pattern_ctx *c = arg;
    int i = -1;
    sscanf(tb_task_name(self), "pw-%d", &i);
    if (!TH_CHECK(i >= 0 && i < 4))
        return -1;
    tb_event *ev = NULL;
    arm(self, &c->armed);
    int rc = tb_event_wait(self, g_patterns[i], i == 3 ? 300 : 5000, &ev);
    atomic_store(&c->rc[i], rc);
    if (rc == 0) {
        const char *name = tb_event_name(ev);
        snprintf(c->got[i], sizeof c->got[i], "%s", name);
        int n = tb_pattern_param(g_patterns[i], name, "uid", c->uid[i],
                                 sizeof c->uid[i]);
        if (i == 2) {
            TH_CHECK_EQ(n, 2);
            char tiny[2];
            TH_CHECK_RC(
                tb_pattern_param(g_patterns[i], name, "uid", tiny, sizeof tiny),
                TB_ENAMETOOLONG);
            TH_CHECK_RC(tb_pattern_param(g_patterns[i], name, "nope", tiny,
                                         sizeof tiny),
                        TB_ENOENT);
        } else {
            TH_CHECK_RC(n, TB_ENOENT);
        }
    }
    tb_event_unref(ev);
    th_counter_add(&c->finished, 1);
    return 0;
}

TH_APP_TEST(test_exact_star_and_param_patterns, th_app_new(2, 2000), 10000)
{
    static pattern_ctx ctx;
    pattern_ctx *c = &ctx;
    for (int i = 0; i < 4; i++)
        c->rc[i] = 1;
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "pw-%d", i);
        TH_CHECK_RC(th_add(app, name, i % 2, pattern_waiter, c, NULL), 0);
    }
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 4, 5000)))
        return;
    /* Matches none of the first three; a waiter that took it would report
     * the wrong name. */
    TH_CHECK_RC(tb_dispatch(app, "user.42.deleted", NULL, 0, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "user.42.created", NULL, 0, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->finished, 4, 5000));

    th_app_stopped(app);
    for (int i = 0; i < 3; i++) {
        TH_CHECK_RC(atomic_load(&c->rc[i]), 0);
        TH_CHECK_STR(c->got[i], "user.42.created");
    }
    TH_CHECK_STR(c->uid[2], "42");
    TH_CHECK_RC(atomic_load(&c->rc[3]), TB_ETIMEDOUT);
}

/* The pure helpers, on the cases the waiters above rely on. */
static void test_pattern_helpers(void **state)
{
    (void)state;
    assert_int_equal(tb_pattern_match("user.*.created", "user.42.created"), 1);
    assert_int_equal(tb_pattern_match("user.<id>.created", "user.x.created"),
                     1);
    assert_int_equal(tb_pattern_match("user.*", "user.42.created"), 0);
    assert_int_equal(tb_pattern_match("user.*.created", "user.42.deleted"), 0);
    assert_int_equal(tb_pattern_match("a.b", "a.b"), 1);
    assert_int_equal(tb_pattern_match("a.b", "a.bc"), 0);
    assert_int_equal(tb_pattern_match("a..b", "a..b"), 0); /* invalid */
    char out[16];
    assert_int_equal(tb_pattern_param("room.<rid>.msg", "room.abc123.msg",
                                      "rid", out, sizeof out),
                     6);
    assert_string_equal(out, "abc123");
    assert_rc(tb_pattern_param("room.<rid>.msg", "room.abc123.other", "rid",
                               out, sizeof out),
              TB_ENOENT);
    assert_rc(tb_pattern_valid("a.*.<p>"), 0);
    assert_rc(tb_pattern_valid("a.<>"), TB_EINVAL);
    assert_rc(tb_pattern_valid("a.<p"), TB_EINVAL);
    assert_rc(tb_pattern_valid("a.**"), TB_EINVAL);
}

/* ------------------------------------------------------------ wait */

TH_TASK_TEST(test_wait_timeouts, th_app_new(2, 2000), 0, 10000)
{
    tb_event *ev = NULL;
    int64_t t0 = th_mono_ms();
    TH_CHECK_RC(tb_event_wait(self, "never.x", 60, &ev), TB_ETIMEDOUT);
    int64_t took = th_mono_ms() - t0;
    TH_CHECKF(took >= 55 && took < 2000, "wait(60 ms) took %lld ms",
              (long long)took);

    int err = 1;
    tb_sub *sub = tb_sub_open(self, "never.y", 4, &err);
    if (!TH_CHECK(sub != NULL))
        return;
    t0 = th_mono_ms();
    TH_CHECK_RC(tb_sub_next(self, sub, 0, &ev), TB_ETIMEDOUT);
    TH_CHECK(th_mono_ms() - t0 < 100);
    t0 = th_mono_ms();
    TH_CHECK_RC(tb_sub_next(self, sub, 60, &ev), TB_ETIMEDOUT);
    took = th_mono_ms() - t0;
    TH_CHECKF(took >= 55 && took < 2000, "sub_next(60 ms) took %lld ms",
              (long long)took);
    TH_CHECK_EQ(tb_sub_pending(sub), 0);
    tb_sub_close(sub);

    /* Bad patterns. */
    TH_CHECK_RC(tb_event_wait(self, "a..b", 10, &ev), TB_EINVAL);
    err = 0;
    TH_CHECK(tb_sub_open(self, "a.<", 4, &err) == NULL);
    TH_CHECK_RC(err, TB_EINVAL);
}

/* Takes the next event within 2 s and checks its name; "" expects none
 * within 150 ms. */
static int next_is(tb_task *self, tb_sub *sub, const char *want)
{
    tb_event *ev = NULL;
    int rc = tb_sub_next(self, sub, want[0] ? 2000 : 150, &ev);
    int ok = want[0] ? rc == 0 && strcmp(tb_event_name(ev), want) == 0
                     : rc == TB_ETIMEDOUT;
    if (!ok)
        fprintf(stderr, "next_is: want \"%s\", got rc %d name %s\n", want, rc,
                ev ? tb_event_name(ev) : "-");
    tb_event_unref(ev);
    return ok;
}

static int dispatch_user_names(tb_task *self, void *arg)
{
    (void)arg;
    tb_app *app = tb_task_app(self);
    TH_CHECK_RC(tb_dispatch(app, "user.7", "", 0, NULL), 0); /* too short */
    TH_CHECK_RC(tb_dispatch(app, "user.7.x.y", "", 0, NULL), 0);
    return 0;
}

/* A last ">" takes one or more segments, in subscriptions and waits alike;
 * ">" alone takes every event. */
TH_TASK_TEST(test_tail_wildcard_subscription, th_app_new(2, 2000), 0, 20000)
{
    int err = 1;
    tb_sub *sub = tb_sub_open(self, "orders.>", 16, &err);
    if (!TH_CHECK(sub != NULL))
        return;
    const char *names[] = {"orders",     "orders.a",
                           "order.a",    "orders.a.b.c",
                           "x.orders.a", "orders.a.b.c.d.e.f.g"};
    for (size_t i = 0; i < 6; i++)
        TH_CHECK_RC(tb_dispatch(app, names[i], "", 0, NULL), 0);
    TH_CHECK(next_is(self, sub, "orders.a"));
    TH_CHECK(next_is(self, sub, "orders.a.b.c"));
    TH_CHECK(next_is(self, sub, "orders.a.b.c.d.e.f.g"));
    TH_CHECK(next_is(self, sub, ""));

    TH_CHECK_RC(tb_sub_add(sub, ">"), 0);
    TH_CHECK_RC(tb_sub_add(sub, "a.>.b"), TB_EINVAL);
    TH_CHECK_RC(tb_sub_add(sub, "a>"), TB_EINVAL);
    TH_CHECK_RC(tb_dispatch(app, "orders", "", 0, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "orders.z", "", 0, NULL), 0); /* once */
    TH_CHECK(next_is(self, sub, "orders"));
    TH_CHECK(next_is(self, sub, "orders.z"));
    TH_CHECK(next_is(self, sub, ""));
    tb_sub_close(sub);

    /* A one-shot wait with a ">" pattern and a param before it: the task
     * that dispatches runs on this worker, so only once this one waits. */
    tb_event *ev = NULL;
    TH_CHECK_RC(tb_event_wait(self, "a.>.b", 10, &ev), TB_EINVAL);
    tb_task_opts o = th_opts(NULL, tb_task_worker(self));
    TH_CHECK_RC(tb_task_add(app, dispatch_user_names, NULL, &o, NULL), 0);
    if (TH_CHECK_RC(tb_event_wait(self, "user.<id>.>", 5000, &ev), 0)) {
        TH_CHECK_STR(tb_event_name(ev), "user.7.x.y");
        char id[8];
        TH_CHECK_EQ(tb_pattern_param("user.<id>.>", tb_event_name(ev), "id", id,
                                     sizeof id),
                    1);
        TH_CHECK_STR(id, "7");
    }
    tb_event_unref(ev);
}

TH_TASK_TEST(test_multi_pattern_subscription, th_app_new(2, 2000), 0, 20000)
{
    int err = 1;
    tb_sub *sub = tb_sub_open(self, NULL, 16, &err);
    if (!TH_CHECK(sub != NULL))
        return;
    TH_CHECK_RC(err, 0);
    TH_CHECK_EQ(tb_sub_patterns(sub), 0);
    TH_CHECK_RC(tb_dispatch(app, "a.b", "", 0, NULL), 0);
    TH_CHECK(next_is(self, sub, "")); /* no pattern: nothing */

    TH_CHECK_RC(tb_sub_add(sub, "a.*"), 0);
    TH_CHECK_RC(tb_sub_add(sub, "*.b"), 0);
    TH_CHECK_RC(tb_sub_add(sub, "a.*"), TB_EEXIST);
    TH_CHECK_RC(tb_sub_add(sub, "a..b"), TB_EINVAL);
    TH_CHECK_EQ(tb_sub_patterns(sub), 2);
    /* a.b matches both patterns and is queued once. */
    const char *names[] = {"a.b", "a.c", "x.b", "x.y", "a.b.c"};
    for (size_t i = 0; i < 5; i++)
        TH_CHECK_RC(tb_dispatch(app, names[i], "", 0, NULL), 0);
    TH_CHECK(next_is(self, sub, "a.b"));
    TH_CHECK(next_is(self, sub, "a.c"));
    TH_CHECK(next_is(self, sub, "x.b"));
    TH_CHECK(next_is(self, sub, ""));

    TH_CHECK_RC(tb_sub_remove(sub, "a.*"), 0);
    TH_CHECK_RC(tb_sub_remove(sub, "a.*"), TB_ENOENT);
    TH_CHECK_EQ(tb_sub_patterns(sub), 1);
    TH_CHECK_RC(tb_dispatch(app, "a.c", "", 0, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "a.b", "", 0, NULL), 0);
    TH_CHECK(next_is(self, sub, "a.b"));
    TH_CHECK(next_is(self, sub, ""));

    TH_CHECK_RC(tb_sub_remove(sub, "*.b"), 0);
    TH_CHECK_EQ(tb_sub_patterns(sub), 0);
    TH_CHECK_RC(tb_sub_add(sub, "q.<who>"), 0);
    TH_CHECK_RC(tb_sub_add(sub, "q.z"), 0);
    TH_CHECK_RC(tb_dispatch(app, "x.b", "", 0, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "q.z", "", 0, NULL), 0);
    TH_CHECK(next_is(self, sub, "q.z"));
    TH_CHECK(next_is(self, sub, ""));
    TH_CHECK_EQ(tb_sub_dropped(sub), 0);
    /* The subscription closes with the task. */
}

/* The wildcard index (literal prefixes, event.c): 40 subscriptions on
 * one worker whose patterns begin at every depth (0 to 7 literal
 * segments; exact, "*", ">", params; shared prefixes and lone ones) and a
 * one-shot waiter in a bucket the subscriptions share. Names made from
 * every pattern, and near misses, are dispatched: each subscription gets
 * exactly those tb_pattern_match says it matches, in order; the waiter
 * its one. Again with half closed; once all are closed the index holds no
 * bucket and no depth count. */
#define wi_pats th_prefix_patterns
#define WI_PATS 24 /* th_prefix_npatterns */
#define WI_SUBS 40 /* some patterns twice: two listeners in one bucket */
#define WI_NAMES 6 /* per pattern */

/* The names dispatched, made from every pattern with a fixed seed. */
static char wi_names[WI_PATS * WI_NAMES][160];

static void wi_check(tb_task *self, tb_app *app, tb_sub **subs, int from,
                     const char *what)
{
    for (int j = 0; j < WI_PATS * WI_NAMES; j++)
        TH_CHECK_RC(tb_dispatch(app, wi_names[j], "", 0, NULL), 0);
    /* Every subscription has "wi.end" too: nothing after the names. */
    TH_CHECK_RC(tb_dispatch(app, "wi.end", "", 0, NULL), 0);
    for (int i = from; i < WI_SUBS; i++) {
        const char *pat = wi_pats[i % WI_PATS];
        for (int j = 0; j < WI_PATS * WI_NAMES; j++)
            if (tb_pattern_match(pat, wi_names[j]) == 1 &&
                !TH_CHECKF(next_is(self, subs[i], wi_names[j]),
                           "%s: \"%s\" did not get \"%s\"", what, pat,
                           wi_names[j]))
                return;
        if (!TH_CHECKF(next_is(self, subs[i], "wi.end"), "%s: \"%s\" got more",
                       what, pat))
            return;
    }
}

/* Waits once on "a.b.*" (a bucket the subscriptions share); the name it
 * got goes to wi_waited. */
static char wi_waited[160];

static int wi_waiter(tb_task *self, void *arg)
{
    tb_event *ev = NULL;
    th_counter_add(arg, 1);
    if (TH_CHECK_RC(tb_event_wait(self, "a.b.*", 10000, &ev), 0))
        snprintf(wi_waited, sizeof wi_waited, "%s", tb_event_name(ev));
    tb_event_unref(ev);
    th_counter_add(arg, 1);
    return 0;
}

TH_TASK_TEST(test_wildcard_index, th_app_new(1, 2000), 0, 60000)
{
    unsigned seed = 11;
    TH_CHECK_EQ(th_prefix_npatterns, WI_PATS);
    for (int j = 0; j < WI_PATS * WI_NAMES; j++)
        th_name_near(wi_pats[j / WI_NAMES], &seed, wi_names[j],
                     sizeof wi_names[j]);
    tb_sub *subs[WI_SUBS];
    int err;
    for (int i = 0; i < WI_SUBS; i++) {
        const char *pat = wi_pats[i % WI_PATS];
        subs[i] = tb_sub_open(self, pat, 1024, &err);
        if (!TH_CHECKF(subs[i] != NULL, "tb_sub_open(\"%s\"): %d", pat, err))
            return;
        TH_CHECK_RC(tb_sub_add(subs[i], "wi.end"), 0);
    }
    th_counter waiter = TH_COUNTER_INITIALIZER;
    TH_CHECK_RC(th_add(app, "wi-waiter", 0, wi_waiter, &waiter, NULL), 0);
    TH_CHECK(th_task_wait_ge(self, &waiter, 1, 5000));
    tb_yield(self); /* it waits now */
    wi_check(self, app, subs, 0, "all open");
    /* The waiter took the first name of "a.b.*" dispatched, once. */
    TH_CHECK(th_task_wait_ge(self, &waiter, 2, 5000));
    const char *first = "";
    for (int j = 0; j < WI_PATS * WI_NAMES && !first[0]; j++)
        if (tb_pattern_match("a.b.*", wi_names[j]) == 1)
            first = wi_names[j];
    TH_CHECK(first[0] != '\0');
    TH_CHECK_STR(wi_waited, first);
    for (int i = 0; i < WI_SUBS / 2; i++)
        tb_sub_close(subs[i]);
    wi_check(self, app, subs, WI_SUBS / 2, "half closed");
    for (int i = WI_SUBS / 2; i < WI_SUBS; i++)
        tb_sub_close(subs[i]);
    tb__worker *w = &app->workers[0];
    TH_CHECK_EQ(w->wild.count, 0);
    TH_CHECK_EQ(w->exact.count, 0);
    for (int k = 0; k < TB_EVENT_SEGMENTS_MAX; k++)
        TH_CHECK_EQ(w->wild_depths[k], 0);
}

typedef struct cancel_ctx {
    th_counter started;
    atomic_int wait_rc, next_rc;
} cancel_ctx;

static int wait_forever(tb_task *self, void *arg)
{
    cancel_ctx *c = arg;
    tb_event *ev = NULL;
    th_counter_add(&c->started, 1);
    atomic_store(&c->wait_rc, tb_event_wait(self, "never.z", -1, &ev));
    tb_event_unref(ev);
    return 0;
}

static int next_forever(tb_task *self, void *arg)
{
    cancel_ctx *c = arg;
    tb_event *ev = NULL;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "never.z", 0, &err);
    th_counter_add(&c->started, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    atomic_store(&c->next_rc, tb_sub_next(self, sub, -1, &ev));
    tb_event_unref(ev);
    tb_sub_close(sub);
    return 0;
}

TH_APP_TEST(test_cancelled_while_waiting, th_app_new(2, 2000), 10000)
{
    static cancel_ctx ctx;
    cancel_ctx *c = &ctx;
    c->wait_rc = c->next_rc = 1;
    TH_CHECK_RC(th_add(app, "waits", 0, wait_forever, c, NULL), 0);
    TH_CHECK_RC(th_add(app, "nexts", 1, next_forever, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->started, 2, 5000));
    TH_CHECK_RC(tb_task_cancel(app, "waits", 3000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "nexts", 3000), 0);
    TH_CHECK_RC(atomic_load(&c->wait_rc), TB_ECANCELED);
    TH_CHECK_RC(atomic_load(&c->next_rc), TB_ECANCELED);
}

/* ------------------------------------------------------------ accessors */

typedef struct acc_ctx {
    th_counter armed;
    th_counter done;
    char name[2][TB_EVENT_NAME_MAX + 1];
    char data[2][16];
    size_t len[2];
    int nul[2]; /* data[len] == '\0' */
    int non_null[2];
    char id[2][TB_EVENT_ID_MAX];
    char origin[2][128];
    int64_t ts[2];
} acc_ctx;

static int accessor_waiter(tb_task *self, void *arg)
{
    acc_ctx *c = arg;
    static const char *const names[2] = {"acc.test", "acc.empty"};
    for (int i = 0; i < 2; i++) {
        tb_event *ev = NULL;
        arm(self, &c->armed);
        if (!TH_CHECK_RC(tb_event_wait(self, names[i], 5000, &ev), 0))
            break;
        /* An extra reference keeps the event alive past the first unref. */
        TH_CHECK(tb_event_ref(ev) == ev);
        tb_event_unref(ev);
        snprintf(c->name[i], sizeof c->name[i], "%s", tb_event_name(ev));
        size_t len = 99;
        const char *data = tb_event_data(ev, &len);
        c->len[i] = len;
        c->non_null[i] = data != NULL;
        if (data) {
            memcpy(c->data[i], data, len < 15 ? len : 15);
            c->nul[i] = data[len] == '\0';
        }
        snprintf(c->id[i], sizeof c->id[i], "%s", tb_event_id(ev));
        snprintf(c->origin[i], sizeof c->origin[i], "%s", tb_event_origin(ev));
        c->ts[i] = tb_event_ts_us(ev);
        tb_event_unref(ev);
    }
    tb_event_unref(NULL); /* a no-op */
    th_counter_add(&c->done, 1);
    return 0;
}

typedef struct acc_drive {
    char id[2][TB_EVENT_ID_MAX];
    int64_t t[2];
} acc_drive;

TH_APP_TEST(test_event_accessors, th_app_new(2, 2000), 10000)
{
    static acc_ctx acc;     /* what the waiter saw */
    static acc_drive drive; /* what was dispatched, and when */
    acc_ctx *c = &acc;
    acc_drive *d = &drive;
    TH_CHECK_RC(th_add(app, "acc", 1, accessor_waiter, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 1, 5000)))
        return;
    d->t[0] = th_real_us();
    TH_CHECK_RC(tb_dispatch(app, "acc.test", "hello", 5, d->id[0]), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 2, 5000)))
        return;
    d->t[1] = th_real_us();
    TH_CHECK_RC(tb_dispatch(app, "acc.empty", NULL, 0, d->id[1]), 0);
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 5000));

    th_app_stopped(app);
    TH_CHECK_STR(c->name[0], "acc.test");
    TH_CHECK_EQ(c->len[0], 5);
    TH_CHECK(memcmp(c->data[0], "hello", 5) == 0);
    TH_CHECK(c->nul[0]);
    TH_CHECK_STR(c->name[1], "acc.empty");
    TH_CHECK_EQ(c->len[1], 0);
    TH_CHECK(c->non_null[1]); /* "always followed by a NUL" */
    TH_CHECK(c->nul[1]);
    for (int i = 0; i < 2; i++) {
        TH_CHECK(d->id[i][0] != '\0');
        TH_CHECK_STR(c->id[i], d->id[i]);
        TH_CHECKF(c->ts[i] >= d->t[i] - 1000000 &&
                      c->ts[i] <= d->t[i] + 1000000,
                  "event ts %lld is not within 1 s of dispatch %lld",
                  (long long)c->ts[i], (long long)d->t[i]);
        TH_CHECK(ends_with(c->origin[i], "/-1"));
    }
    TH_CHECK(strcmp(d->id[0], d->id[1]) != 0);
}

#define NIDS 1000

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

TH_APP_TEST(test_event_ids_are_unique, th_app_new(2, 2000), 20000)
{
    static char ids[NIDS][TB_EVENT_ID_MAX];
    for (int i = 0; i < NIDS; i++) {
        memset(ids[i], 0, TB_EVENT_ID_MAX);
        if (!TH_CHECK_RC(tb_dispatch(app, "ids.x", "i", 1, ids[i]), 0))
            return;
    }

    th_app_stopped(app);
    for (int i = 0; i < NIDS; i++) {
        TH_CHECK(ids[i][0] != '\0');
        TH_CHECK(memchr(ids[i], '\0', TB_EVENT_ID_MAX) != NULL);
    }
    qsort(ids, NIDS, TB_EVENT_ID_MAX, cmp_ids);
    for (int i = 1; i < NIDS; i++)
        TH_CHECKF(strcmp(ids[i - 1], ids[i]) != 0, "duplicate event id \"%s\"",
                  ids[i]);
}

/* ------------------------------------------------------------ limits */

TH_APP_TEST(test_invalid_event_names, th_app_new(2, 2000), 10000)
{
    static const char *const bad[] = {
        "",      "a..b", ".a",
        "a.",    "a b",  "a.*",
        "a.<p>", "a/b",  "a.b.c.d.e.f.g.h.i",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        TH_CHECKF(tb_event_name_valid(bad[i]) == TB_EINVAL,
                  "tb_event_name_valid(\"%s\") = %s", bad[i],
                  tb_err_name(tb_event_name_valid(bad[i])));
        int rc = tb_dispatch(app, bad[i], NULL, 0, NULL);
        TH_CHECKF(rc == TB_EINVAL, "tb_dispatch(\"%s\") = %s", bad[i],
                  tb_err_name(rc));
    }
    TH_CHECK_RC(tb_dispatch(app, "a.b.c.d.e.f.g.h", NULL, 0, NULL), 0);
    char name[TB_EVENT_NAME_MAX + 2];
    memset(name, 'x', TB_EVENT_NAME_MAX);
    name[TB_EVENT_NAME_MAX] = '\0';
    TH_CHECK_RC(tb_dispatch(app, name, NULL, 0, NULL), 0);
    name[TB_EVENT_NAME_MAX] = 'x';
    name[TB_EVENT_NAME_MAX + 1] = '\0';
    TH_CHECK_RC(tb_event_name_valid(name), TB_ENAMETOOLONG);
    TH_CHECK_RC(tb_dispatch(app, name, NULL, 0, NULL), TB_ENAMETOOLONG);
}

#define MAX_EVENT 1024

typedef struct size_ctx {
    th_counter opened;
    th_counter done;
    size_t len;
    int intact;
} size_ctx;

static int receive_big(tb_task *self, void *arg)
{
    size_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "big.data", 4, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    tb_event *ev = NULL;
    if (TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0)) {
        const unsigned char *data = tb_event_data(ev, &c->len);
        c->intact = data != NULL && data[c->len] == 0;
        for (size_t i = 0; c->intact && i < c->len; i++)
            c->intact = data[i] == (unsigned char)('a' + i % 26);
    }
    tb_event_unref(ev);
    tb_sub_close(sub);
    th_counter_add(&c->done, 1);
    return 0;
}

/* An app of 2 workers whose events hold at most MAX_EVENT bytes. */
static tb_app *small_events_app(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.max_event_size = MAX_EVENT;
    return th_app_new_cfg(&cfg);
}

TH_APP_TEST(test_event_size_limit, small_events_app(), 10000)
{
    static size_ctx ctx;
    size_ctx *c = &ctx;
    static unsigned char data[MAX_EVENT + 1];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)('a' + i % 26); /* text: UTF-8 */
    TH_CHECK_RC(th_add(app, "big", 0, receive_big, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    TH_CHECK_RC(tb_dispatch(app, "big.data", data, MAX_EVENT + 1, NULL),
                TB_EMSGSIZE);
    TH_CHECK_RC(tb_dispatch(app, "big.data", data, MAX_EVENT, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 5000));

    th_app_stopped(app);
    /* The refused event was not delivered: the first one seen is the 1024. */
    TH_CHECK_EQ(c->len, MAX_EVENT);
    TH_CHECK(c->intact);
}

static void nothing(tb_app *app, void *ctx)
{
    (void)app;
    (void)ctx;
}

static void test_dispatch_when_not_running(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 2000);
    assert_rc(tb_dispatch(app, "too.early", NULL, 0, NULL), TB_ESHUTDOWN);
    assert_rc(th_run_thread(app, nothing, NULL, 10000), 0);
    th_assert_clean();
    assert_rc(tb_dispatch(app, "too.late", NULL, 0, NULL), TB_ESHUTDOWN);
    tb_app_free(app);
}

/* ------------------------------------------------------------ batches */

#define MANY 70 /* more than one Redis command carries */

typedef struct many_ctx {
    th_counter opened, done;
    char got[MANY + 8][TB_EVENT_ID_MAX];
    char data[MANY + 8][16];
    int n;
    atomic_int task_rc, task_wait_rc;
} many_ctx;

/* Records every "many.*" event until "many.end". */
static int many_subscriber(tb_task *self, void *arg)
{
    many_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "many.*", 1000, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    for (;;) {
        tb_event *ev = NULL;
        if (!TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0))
            break;
        int end = strcmp(tb_event_name(ev), "many.end") == 0;
        if (!end && TH_CHECK(c->n < MANY + 8)) {
            snprintf(c->got[c->n], TB_EVENT_ID_MAX, "%s", tb_event_id(ev));
            snprintf(c->data[c->n], 16, "%s",
                     (const char *)tb_event_data(ev, NULL));
            c->n++;
        }
        tb_event_unref(ev);
        if (end)
            break;
    }
    tb_sub_close(sub);
    th_counter_add(&c->done, 1);
    return 0;
}

/* From a task: waiting is refused, taking is not. */
static int many_in_task(tb_task *self, void *arg)
{
    many_ctx *c = arg;
    tb_event_item it = {"many.task", "t", 1};
    atomic_store(&c->task_wait_rc, tb_dispatch_many(tb_task_app(self), &it, 1,
                                                    1000, NULL, NULL, NULL));
    atomic_store(&c->task_rc, tb_dispatch_many(tb_task_app(self), &it, 1, 0,
                                               NULL, NULL, NULL));
    return 0;
}

static void drive_many(tb_app *app, void *ctx)
{
    many_ctx *c = ctx;
    TH_CHECK_RC(th_add(app, "many-rx", 0, many_subscriber, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    static tb_event_item items[MANY + 1];
    static char data[MANY + 1][16];
    static char ids[MANY + 1][TB_EVENT_ID_MAX];
    int status[MANY + 1];
    for (int i = 0; i <= MANY; i++) {
        snprintf(data[i], sizeof data[i], "%d", i);
        items[i] = (tb_event_item){"many.e", data[i], strlen(data[i])};
    }
    /* One bad item: nothing at all is dispatched, its index is named. */
    size_t bad = 0;
    items[37].name = "many..e";
    TH_CHECK_RC(tb_dispatch_many(app, items, MANY, 2000, ids, status, &bad),
                TB_EINVAL);
    TH_CHECK_EQ(bad, 37);
    items[37].name = "many.e";
    items[5].data = "\xff";
    items[5].len = 1;
    TH_CHECK_RC(tb_dispatch_many(app, items, MANY, 2000, ids, status, &bad),
                TB_EINVAL);
    TH_CHECK_EQ(bad, 5);
    items[5].data = data[5];
    items[5].len = 1;
    /* core.batch_max_events is MANY: one more is refused whole. */
    TH_CHECK_RC(tb_dispatch_many(app, items, MANY + 1, 2000, ids, status, &bad),
                TB_EMSGSIZE);
    TH_CHECK_EQ(bad, MANY);
    /* MANY: all confirmed, each with its id, delivered in order. */
    memset(status, 0x55, sizeof status);
    TH_CHECK_RC(tb_dispatch_many(app, items, MANY, 2000, ids, status, &bad), 0);
    for (int i = 0; i < MANY; i++) {
        TH_CHECK_RC(status[i], 0);
        TH_CHECK(ids[i][0] != '\0');
    }
    TH_CHECK_RC(tb_dispatch_many(app, NULL, 0, 2000, NULL, NULL, NULL), 0);
    TH_CHECK_RC(th_add(app, "many-tx", 1, many_in_task, c, NULL), 0);
    TH_CHECK(th_wait_state(app, "many-tx", TB_TASK_DONE, 5000));
    TH_CHECK_RC(tb_dispatch(app, "many.end", NULL, 0, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->done, 1, 5000)))
        return;
    TH_CHECK_EQ(c->n, MANY + 1); /* the batch, the task's one */
    for (int i = 0; i < MANY && i < c->n; i++) {
        TH_CHECK_STR(c->got[i], ids[i]);
        TH_CHECK_STR(c->data[i], data[i]);
    }
    TH_CHECK_STR(c->data[MANY], "t");
}

static void test_dispatch_many(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.batch_max_events = MANY;
    tb_app *app = th_app_new_cfg(&cfg);
    static many_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.opened);
    th_counter_init(&c.done);
    tb_event_item it = {"many.early", NULL, 0};
    assert_rc(tb_dispatch_many(app, &it, 1, 100, NULL, NULL, NULL),
              TB_ESHUTDOWN);
    assert_rc(th_run_thread(app, drive_many, &c, 20000), 0);
    th_assert_clean();
    assert_rc(atomic_load(&c.task_wait_rc), TB_EDEADLK);
    assert_rc(atomic_load(&c.task_rc), 0);
    tb_app_free(app);
    th_counter_destroy(&c.opened);
    th_counter_destroy(&c.done);
}

/* A bus without publish_many would dispatch half a batch when it refused
 * an event midway: the app refuses such a bus, and keeps the one it has. */
static void test_bus_must_publish_many(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 2000);
    tb__bus *had = app->bus;
    tb__bus_ops ops = *had->ops;
    ops.name = "half";
    ops.publish_many = NULL;
    tb__bus half = {&ops, app};
    assert_rc(tb__app_use_bus(app, &half), TB_EINVAL);
    assert_ptr_equal(app->bus, had);
    ops.publish_many = had->ops->publish_many;
    ops.publish = NULL;
    assert_rc(tb__app_use_bus(app, &half), TB_EINVAL);
    assert_rc(tb__app_use_bus(app, had), 0);
    tb_app_free(app);
}

/* ------------------------------------------------------------ subscriptions */

#define BURST 1000

typedef struct burst_ctx {
    th_counter opened;
    th_counter done;
    int out_of_order;
    int received;
    uint64_t dropped;
    size_t pending_after;
    char ids[BURST][TB_EVENT_ID_MAX];
} burst_ctx;

static int burst_subscriber(tb_task *self, void *arg)
{
    burst_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "burst.e", 2000, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    for (int i = 0; i < BURST; i++) {
        tb_event *ev = NULL;
        if (!TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0))
            break;
        int k = atoi(tb_event_data(ev, NULL));
        if (k != i && c->out_of_order++ == 0)
            TH_CHECKF(0, "event %d arrived as number %d", k, i);
        snprintf(c->ids[i], TB_EVENT_ID_MAX, "%s", tb_event_id(ev));
        tb_event_unref(ev);
        c->received++;
        /* Dawdle now and then: events keep queueing meanwhile. */
        if (i % 100 == 0)
            tb_sleep(self, 2);
    }
    c->dropped = tb_sub_dropped(sub);
    c->pending_after = tb_sub_pending(sub);
    tb_sub_close(sub);
    th_counter_add(&c->done, 1);
    return 0;
}

typedef struct burst_drive {
    char ids[BURST][TB_EVENT_ID_MAX];
} burst_drive;

TH_APP_TEST(test_subscription_misses_nothing, th_app_new(2, 2000), 30000)
{
    static burst_ctx burst;   /* what the subscriber got */
    static burst_drive drive; /* the ids dispatched */
    burst_ctx *c = &burst;
    burst_drive *d = &drive;
    TH_CHECK_RC(th_add(app, "burst", 1, burst_subscriber, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    for (int i = 0; i < BURST; i++) {
        char num[16];
        int n = snprintf(num, sizeof num, "%d", i);
        if (!TH_CHECK_RC(tb_dispatch(app, "burst.e", num, (size_t)n, d->ids[i]),
                         0))
            return;
    }
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 20000));

    th_app_stopped(app);
    TH_CHECK_EQ(c->received, BURST);
    TH_CHECK_EQ(c->out_of_order, 0);
    TH_CHECK_EQ(c->dropped, 0);
    TH_CHECK_EQ(c->pending_after, 0);
    for (int i = 0; i < BURST; i++)
        TH_CHECK_STR(c->ids[i], d->ids[i]);
}

typedef struct overflow_ctx {
    th_counter opened;
    th_counter done;
    size_t pending;
    uint64_t dropped;
    int got[10];
    int empty_rc;
    uint64_t dropped_after;
} overflow_ctx;

static int overflow_subscriber(tb_task *self, void *arg)
{
    overflow_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "ovf.e", 10, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    /* Let all 25 arrive before taking any. */
    int64_t end = th_mono_ms() + 5000;
    while (tb_sub_pending(sub) + tb_sub_dropped(sub) < 25 && th_mono_ms() < end)
        tb_sleep(self, 1);
    c->pending = tb_sub_pending(sub);
    c->dropped = tb_sub_dropped(sub);
    for (int i = 0; i < 10; i++) {
        tb_event *ev = NULL;
        c->got[i] = -1;
        if (tb_sub_next(self, sub, 0, &ev) == 0)
            c->got[i] = atoi(tb_event_data(ev, NULL));
        tb_event_unref(ev);
    }
    tb_event *ev = NULL;
    c->empty_rc = tb_sub_next(self, sub, 0, &ev);
    c->dropped_after = tb_sub_dropped(sub);
    tb_sub_close(sub);
    th_counter_add(&c->done, 1);
    return 0;
}

TH_APP_TEST(test_subscription_overflow_drops_oldest, th_app_new(2, 2000), 15000)
{
    static overflow_ctx ctx;
    overflow_ctx *c = &ctx;
    TH_CHECK_RC(th_add(app, "ovf", 0, overflow_subscriber, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    for (int i = 0; i < 25; i++) {
        char num[16];
        int n = snprintf(num, sizeof num, "%d", i);
        TH_CHECK_RC(tb_dispatch(app, "ovf.e", num, (size_t)n, NULL), 0);
    }
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 10000));

    th_app_stopped(app);
    TH_CHECK_EQ(c->pending, 10);
    TH_CHECK_EQ(c->dropped, 15);
    for (int i = 0; i < 10; i++)
        TH_CHECK_EQ(c->got[i], 15 + i); /* the last ten, in order */
    TH_CHECK_RC(c->empty_rc, TB_ETIMEDOUT);
    TH_CHECK_EQ(c->dropped_after, 15);
}

/* worker_queue_max: a worker whose loop is stuck keeps at most that many
 * events waiting; the newest beyond are dropped for it and counted, and the
 * ones it kept arrive in order once it runs again. */
typedef struct qfull_ctx {
    th_counter subscribed, dispatched, done;
    int got, first, last;
} qfull_ctx;

static int stuck_subscriber(tb_task *self, void *arg)
{
    qfull_ctx *c = arg;
    tb_sub *s = tb_sub_open(self, "q.*", 1000, NULL);
    TH_CHECK(s != NULL);
    th_counter_add(&c->subscribed, 1);
    /* Blocks this worker's loop on purpose until everything was sent. */
    TH_CHECK(th_counter_wait_ge(&c->dispatched, 1, 5000));
    tb_event *ev;
    c->first = c->last = -1;
    while (tb_sub_next(self, s, 300, &ev) == 0) {
        int n = atoi(tb_event_data(ev, NULL));
        if (c->first < 0)
            c->first = n;
        TH_CHECK(n == c->last + 1 || c->last < 0);
        c->last = n;
        c->got++;
        tb_event_unref(ev);
    }
    th_counter_add(&c->done, 1);
    return 0;
}

/* An app of one worker that keeps at most 10 events waiting for it. */
static tb_app *queue_max_app(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.core.worker_queue_max = 10;
    return th_app_new_cfg(&cfg);
}

TH_APP_TEST(test_worker_queue_max, queue_max_app(), 15000)
{
    static qfull_ctx ctx;
    qfull_ctx *c = &ctx;
    TH_CHECK_RC(th_add(app, "stuck", 0, stuck_subscriber, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->subscribed, 1, 5000));
    for (int i = 0; i < 50; i++) {
        char buf[16];
        int len = snprintf(buf, sizeof buf, "%d", i);
        TH_CHECK_RC(tb_dispatch(app, "q.e", buf, (size_t)len, NULL), 0);
    }
    tb_bus_info info;
    TH_CHECK_RC(tb_bus_status(app, &info), 0);
    TH_CHECK_EQ(info.queue_full_drops, 40);
    th_counter_add(&c->dispatched, 1);
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 5000));

    th_app_stopped(app);
    TH_CHECK_EQ(c->got, 10); /* exactly the limit, the oldest ten */
    TH_CHECK_EQ(c->first, 0);
    TH_CHECK_EQ(c->last, 9);
}

typedef struct leak_ctx {
    th_counter opened;
    th_counter got;
} leak_ctx;

/* Opens subscriptions and ends without closing them, with events still
 * queued: the task's end must close them (LeakSanitizer checks the frees,
 * AddressSanitizer that nothing delivers into them afterwards). */
static int leaky_subscriber(tb_task *self, void *arg)
{
    leak_ctx *c = arg;
    int err = 0;
    tb_sub *a = tb_sub_open(self, "leak.*", 100, &err);
    tb_sub *b = tb_sub_open(self, "leak.a", 5, &err);
    tb_sub *closed = tb_sub_open(self, "leak.a", 5, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(a && b && closed))
        return -1;
    tb_event *ev = NULL;
    TH_CHECK_RC(tb_sub_next(self, a, 5000, &ev), 0);
    tb_event_unref(ev);
    /* Wait for the rest to queue, then close one with events in it. */
    int64_t end = th_mono_ms() + 5000;
    while (tb_sub_pending(closed) < 5 && th_mono_ms() < end)
        tb_sleep(self, 1);
    TH_CHECK_EQ(tb_sub_pending(closed), 5);
    tb_sub_close(closed);
    return 0;
}

static int fresh_subscriber(tb_task *self, void *arg)
{
    leak_ctx *c = arg;
    int err = 0;
    tb_sub *s = tb_sub_open(self, "leak.a", 5, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(s != NULL))
        return -1;
    tb_event *ev = NULL;
    if (TH_CHECK_RC(tb_sub_next(self, s, 5000, &ev), 0)) {
        TH_CHECK_STR(tb_event_data(ev, NULL), "after");
        th_counter_add(&c->got, 1);
    }
    tb_event_unref(ev);
    return 0; /* left open too */
}

TH_APP_TEST(test_subscription_closed_when_task_ends, th_app_new(2, 2000), 15000)
{
    static leak_ctx ctx;
    leak_ctx *c = &ctx;
    TH_CHECK_RC(th_add(app, "leaky", 0, leaky_subscriber, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    for (int i = 0; i < 5; i++)
        TH_CHECK_RC(tb_dispatch(app, "leak.a", "before", 6, NULL), 0);
    TH_CHECK(th_wait_state(app, "leaky", TB_TASK_DONE, 5000));
    /* Its subscriptions are gone: dispatching more touches none of them. */
    for (int i = 0; i < 5; i++)
        TH_CHECK_RC(tb_dispatch(app, "leak.a", "orphan", 6, NULL), 0);
    TH_CHECK_RC(th_add(app, "fresh", 0, fresh_subscriber, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 2, 5000)))
        return;
    TH_CHECK_RC(tb_dispatch(app, "leak.a", "after", 5, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->got, 1, 5000));
    TH_CHECK(th_wait_state(app, "fresh", TB_TASK_DONE, 5000));
}

/* ------------------------------------------------------------ exactly once */

typedef struct once_ctx {
    th_counter armed;
    th_counter received;
    th_counter finished;
    atomic_int count[3][3]; /* [worker][waiter kind] */
    atomic_int extra;       /* a second delivery anywhere */
} once_ctx;

/* Per worker, three receivers of "once.x": an exact waiter, a "*" waiter
 * and a subscription. Each must get it once, and nothing more. */
static int once_receiver(tb_task *self, void *arg)
{
    once_ctx *c = arg;
    const char *name = tb_task_name(self);
    int kind = name[5] - '0'; /* "once-<kind>" */
    int w = tb_task_worker(self);
    tb_event *ev = NULL;
    if (kind == 2) {
        int err = 0;
        tb_sub *sub = tb_sub_open(self, "once.x", 10, &err);
        if (!TH_CHECK(sub != NULL))
            return -1;
        th_counter_add(&c->armed, 1);
        if (TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0)) {
            atomic_fetch_add(&c->count[w][kind], 1);
            th_counter_add(&c->received, 1);
        }
        tb_event_unref(ev);
        ev = NULL;
        if (tb_sub_next(self, sub, 200, &ev) != TB_ETIMEDOUT)
            atomic_fetch_add(&c->extra, 1);
        tb_event_unref(ev);
        TH_CHECK_EQ(tb_sub_dropped(sub), 0);
        tb_sub_close(sub);
    } else {
        const char *pattern = kind == 0 ? "once.x" : "once.*";
        arm(self, &c->armed);
        if (TH_CHECK_RC(tb_event_wait(self, pattern, 5000, &ev), 0)) {
            atomic_fetch_add(&c->count[w][kind], 1);
            th_counter_add(&c->received, 1);
        }
        tb_event_unref(ev);
        ev = NULL;
        if (tb_event_wait(self, pattern, 200, &ev) != TB_ETIMEDOUT)
            atomic_fetch_add(&c->extra, 1);
        tb_event_unref(ev);
    }
    th_counter_add(&c->finished, 1);
    return 0;
}

static void drive_once(tb_app *app, void *ctx)
{
    once_ctx *c = ctx;
    if (!TH_CHECK(th_counter_wait_ge(&c->armed, 9, 5000)))
        return;
    TH_CHECK_RC(tb_dispatch(app, "once.x", NULL, 0, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->received, 9, 5000));
    TH_CHECK(th_counter_wait_ge(&c->finished, 9, 5000));
}

static void test_each_waiter_gets_event_exactly_once(void **state)
{
    (void)state;
    tb_app *app = th_app_new(3, 2000);
    once_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.armed);
    th_counter_init(&c.received);
    th_counter_init(&c.finished);
    assert_rc(th_add(app, "once-0", TB_WORKER_ANY, once_receiver, &c, NULL), 0);
    assert_rc(th_add(app, "once-1", TB_WORKER_ANY, once_receiver, &c, NULL), 0);
    assert_rc(th_add(app, "once-2", TB_WORKER_ANY, once_receiver, &c, NULL), 0);
    assert_rc(th_run_thread(app, drive_once, &c, 15000), 0);
    th_assert_clean();
    for (int w = 0; w < 3; w++)
        for (int k = 0; k < 3; k++)
            if (atomic_load(&c.count[w][k]) != 1)
                fail_msg("worker %d receiver %d got the event %d times", w, k,
                         atomic_load(&c.count[w][k]));
    assert_int_equal(atomic_load(&c.extra), 0);
    tb_app_free(app);
    th_counter_destroy(&c.armed);
    th_counter_destroy(&c.received);
    th_counter_destroy(&c.finished);
}

/* ------------------------------------------------------------ text */

typedef struct utf8_ctx {
    th_counter opened;
    th_counter done;
    char got[64];
    size_t len;
} utf8_ctx;

static const char g_utf8[] =
    "h\xc3\xa9llo \xe2\x9c\x93 {\"k\": 1}"; /* "héllo ✓" */

static int receive_text(tb_task *self, void *arg)
{
    utf8_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "text.*", 8, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    tb_event *ev = NULL;
    if (TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0)) {
        const char *data = tb_event_data(ev, &c->len);
        snprintf(c->got, sizeof c->got, "%s", data);
        TH_CHECK_STR(tb_event_name(ev), "text.ok");
    }
    tb_event_unref(ev);
    /* Nothing else arrives: the refused events were never dispatched. */
    ev = NULL;
    TH_CHECK_RC(tb_sub_next(self, sub, 100, &ev), TB_ETIMEDOUT);
    tb_event_unref(ev);
    th_counter_add(&c->done, 1);
    return 0;
}

static void drive_utf8(tb_app *app, void *ctx)
{
    utf8_ctx *c = ctx;
    TH_CHECK_RC(th_add(app, "text", 0, receive_text, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    static const char *const bad[] = {
        "\xff\xfe",     /* never valid */
        "caf\xc3",      /* truncated sequence */
        "\xc0\xaf",     /* overlong "/" */
        "\xed\xa0\x80", /* UTF-16 surrogate */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = tb_dispatch(app, "text.bad", bad[i], strlen(bad[i]), NULL);
        TH_CHECKF(rc == TB_EINVAL, "bad UTF-8 #%zu: %s", i, tb_err_name(rc));
    }
    TH_CHECK_RC(tb_dispatch(app, "text.ok", g_utf8, strlen(g_utf8), NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->done, 1, 5000));
}

/* Event data is UTF-8 text: invalid sequences are refused with TB_EINVAL,
 * multi-byte text round-trips unchanged. */
static void test_event_data_must_be_utf8(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    utf8_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.opened);
    th_counter_init(&c.done);
    assert_rc(th_run_thread(app, drive_utf8, &c, 10000), 0);
    th_assert_clean();
    assert_int_equal(c.len, strlen(g_utf8));
    assert_string_equal(c.got, g_utf8);
    tb_app_free(app);
    th_counter_destroy(&c.opened);
    th_counter_destroy(&c.done);
}

/* ------------------------------------------------------------ confirmed */

typedef struct confirm_ctx {
    th_counter opened;
    th_counter got;
    char ids[2][TB_EVENT_ID_MAX];
    atomic_int listener_rc;
    atomic_int task_rc;
    char task_id[TB_EVENT_ID_MAX];
    tb_bus_info running;
} confirm_ctx;

static int confirm_receiver(tb_task *self, void *arg)
{
    confirm_ctx *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "confirm.*", 8, &err);
    th_counter_add(&c->opened, 1);
    if (!TH_CHECK(sub != NULL))
        return -1;
    for (int i = 0; i < 2; i++) {
        tb_event *ev = NULL;
        if (!TH_CHECK_RC(tb_sub_next(self, sub, 5000, &ev), 0))
            break;
        snprintf(c->ids[i], sizeof c->ids[i], "%s", tb_event_id(ev));
        tb_event_unref(ev);
        th_counter_add(&c->got, 1);
    }
    return 0;
}

static int confirm_in_task(tb_task *self, void *arg)
{
    confirm_ctx *c = arg;
    atomic_store(&c->task_rc,
                 tb_dispatch_wait(tb_task_app(self), "confirm.task", "t", 1,
                                  2000, c->task_id));
    return 0;
}

/* On a worker's loop, outside any task: must refuse rather than block. */
static int confirm_in_listener(tb_app *app, int worker, void *arg)
{
    confirm_ctx *c = arg;
    if (worker == 0)
        atomic_store(&c->listener_rc, tb_dispatch_wait(app, "confirm.listener",
                                                       "l", 1, 1000, NULL));
    return 0;
}

static void drive_confirm(tb_app *app, void *ctx)
{
    confirm_ctx *c = ctx;
    TH_CHECK_RC(tb_bus_status(app, &c->running), 0);
    TH_CHECK_RC(th_add(app, "confirm-rx", 1, confirm_receiver, c, NULL), 0);
    if (!TH_CHECK(th_counter_wait_ge(&c->opened, 1, 5000)))
        return;
    char id[TB_EVENT_ID_MAX] = "";
    int64_t t0 = th_mono_ms();
    TH_CHECK_RC(tb_dispatch_wait(app, "confirm.thread", "x", 1, 2000, id), 0);
    TH_CHECK(th_mono_ms() - t0 < 1000);
    TH_CHECK(id[0] != '\0');
    TH_CHECK_RC(tb_dispatch_wait(app, "confirm..bad", NULL, 0, 2000, NULL),
                TB_EINVAL);
    TH_CHECK_RC(th_add(app, "confirm-tx", 0, confirm_in_task, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->got, 2, 5000));
    /* The receiver may see the event before the dispatching task resumes
     * and records its result: wait for that task to end first. */
    TH_CHECK(th_wait_state(app, "confirm-tx", TB_TASK_DONE, 5000));
    TH_CHECK_RC(atomic_load(&c->task_rc), 0);
    /* Both confirmed events arrived, in order. */
    TH_CHECK_STR(c->ids[0], id);
    TH_CHECK_STR(c->ids[1], c->task_id);
}

static void test_dispatch_wait_and_bus_status(void **state)
{
    (void)state;
    tb_app *app = th_app_new(2, 2000);
    static confirm_ctx c;
    memset(&c, 0, sizeof c);
    th_counter_init(&c.opened);
    th_counter_init(&c.got);
    c.listener_rc = c.task_rc = 1;
    assert_rc(tb_app_add_listener(app, TB_WORKER_AFTER_START,
                                  confirm_in_listener, &c),
              0);

    tb_bus_info info;
    memset(&info, 0x5a, sizeof info);
    assert_rc(tb_bus_status(app, &info), 0);
    assert_string_equal(info.name, "memory");
    assert_int_equal(info.state, TB_BUS_STOPPED); /* not started */
    assert_rc(tb_dispatch_wait(app, "confirm.early", NULL, 0, 100, NULL),
              TB_ESHUTDOWN);

    assert_rc(th_run_thread(app, drive_confirm, &c, 10000), 0);
    th_assert_clean();
    assert_rc(atomic_load(&c.listener_rc), TB_EDEADLK);
    assert_string_equal(c.running.name, "memory");
    assert_int_equal(c.running.state, TB_BUS_CONNECTED);
    assert_string_equal(c.running.last_error, "");

    assert_rc(tb_bus_status(app, &info), 0);
    assert_int_equal(info.state, TB_BUS_STOPPED); /* stopped */
    assert_string_equal(tb_bus_state_name(TB_BUS_CONNECTING), "connecting");
    assert_string_equal(tb_bus_state_name(TB_BUS_CONNECTED), "connected");
    assert_string_equal(tb_bus_state_name(TB_BUS_RECONNECTING), "reconnecting");
    assert_string_equal(tb_bus_state_name(TB_BUS_STOPPED), "stopped");
    tb_app_free(app);
    th_counter_destroy(&c.opened);
    th_counter_destroy(&c.got);
}

/* ------------------------------------------------------------ start-up race */

typedef struct race_ctx {
    tb_app *app;
    atomic_long ok;      /* dispatches that returned 0 */
    atomic_long refused; /* TB_ESHUTDOWN: not running yet */
    atomic_int other_rc; /* anything else */
    th_counter enough;
} race_ctx;

/* Dispatches as fast as it can from before tb_app_run until 200 have been
 * accepted, so that some land while the workers are still starting. */
static void *hammer(void *arg)
{
    race_ctx *r = arg;
    int64_t end = th_mono_ms() + 5000;
    while (atomic_load(&r->ok) < 200 && th_mono_ms() < end) {
        int rc = tb_dispatch(r->app, "early.bird", "x", 1, NULL);
        if (rc == 0)
            atomic_fetch_add(&r->ok, 1);
        else if (rc == TB_ESHUTDOWN)
            atomic_fetch_add(&r->refused, 1);
        else
            atomic_store(&r->other_rc, rc);
    }
    th_counter_add(&r->enough, 1);
    return NULL;
}

static void wait_for_hammer(tb_app *app, void *ctx)
{
    (void)app;
    race_ctx *r = ctx;
    TH_CHECK(th_counter_wait_ge(&r->enough, 1, 8000));
}

/* tb_dispatch is "any thread" and answers TB_ESHUTDOWN until the app runs:
 * racing the start-up must give 0 or TB_ESHUTDOWN, never a crash. The
 * window is short, so the race is run 30 times. Last in the file: a crash
 * here takes the process down. */
static void test_dispatch_racing_startup(void **state)
{
    (void)state;
    for (int round = 0; round < 30; round++) {
        tb_app *app = th_app_new(2, 2000);
        race_ctx r;
        memset(&r, 0, sizeof r);
        r.app = app;
        th_counter_init(&r.enough);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, hammer, &r), 0);
        /* Let it spin against the not-yet-running app first. */
        while (atomic_load(&r.refused) < 100)
            th_nap_ms(1);
        assert_rc(th_run_thread(app, wait_for_hammer, &r, 10000), 0);
        pthread_join(t, NULL);
        th_assert_clean();
        assert_rc(atomic_load(&r.other_rc), 0);
        assert_true(atomic_load(&r.ok) >= 200);
        tb_app_free(app);
        th_counter_destroy(&r.enough);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch_from_thread_reaches_every_worker),
        cmocka_unit_test(test_dispatch_from_task_reaches_every_worker),
        cmocka_unit_test(test_exact_star_and_param_patterns),
        cmocka_unit_test(test_pattern_helpers),
        cmocka_unit_test(test_wait_timeouts),
        cmocka_unit_test(test_cancelled_while_waiting),
        cmocka_unit_test(test_event_accessors),
        cmocka_unit_test(test_event_ids_are_unique),
        cmocka_unit_test(test_invalid_event_names),
        cmocka_unit_test(test_event_size_limit),
        cmocka_unit_test(test_dispatch_when_not_running),
        cmocka_unit_test(test_event_data_must_be_utf8),
        cmocka_unit_test(test_dispatch_wait_and_bus_status),
        cmocka_unit_test(test_dispatch_many),
        cmocka_unit_test(test_bus_must_publish_many),
        cmocka_unit_test(test_subscription_misses_nothing),
        cmocka_unit_test(test_tail_wildcard_subscription),
        cmocka_unit_test(test_multi_pattern_subscription),
        cmocka_unit_test(test_subscription_overflow_drops_oldest),
        cmocka_unit_test(test_subscription_closed_when_task_ends),
        cmocka_unit_test(test_each_waiter_gets_event_exactly_once),
        cmocka_unit_test(test_wildcard_index),
        cmocka_unit_test(test_dispatch_racing_startup),
        cmocka_unit_test(test_worker_queue_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
