/* test_kinds.c - unit tests for service/kinds.c: kind registration and
 * argument validation, the built-in kinds on a running app, and POST /tasks
 * through tb__http_handle with a fake connection (no network). */
#include "harness.h"

#include <math.h>

#include <jansson.h>

#include "http.h"
#include "http_fake.h"
#include "internal.h"
#include "kinds.h"
#include "metrics.h"

/* POST /tasks with body; returns the status, *out the parsed JSON answer. */
static int post_tasks(tb_app *app, const char *body, json_t **out)
{
    fake_conn c;
    memset(&c, 0, sizeof c);
    int status =
        fake_handle(&c, app, "POST", "/tasks", NULL, body, strlen(body));
    TH_CHECK_EQ(c.sends, 1);
    json_error_t jerr;
    *out = c.body ? json_loadb(c.body, c.len, 0, &jerr) : NULL;
    TH_CHECKF(*out != NULL, "body is not JSON: %s", c.body ? c.body : "");
    free(c.body);
    return status;
}

static const char *jget_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Checks an error answer: status, code, and a message containing part. */
static void post_error(tb_app *app, const char *body, int want_status,
                       const char *want_code, const char *part)
{
    json_t *j = NULL;
    int st = post_tasks(app, body, &j);
    TH_CHECKF(st == want_status, "%s: status %d, want %d", body, st,
              want_status);
    TH_CHECK_STR(jget_str(j, "error"), want_code);
    const char *msg = jget_str(j, "message");
    TH_CHECKF(msg && strstr(msg, part), "%s: message \"%s\" lacks \"%s\"", body,
              msg ? msg : "(none)", part);
    json_decref(j);
}

/* ------------------------------------------------------------ validation */

static int noop(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    return 0;
}

static const tb_arg_spec all_spec[] = {
    {"n", TB_ARG_NUMBER, 1, 0, 10},
    {"i", TB_ARG_INT, 0, 1, 5},
    {"s", TB_ARG_STRING, 0, 0, 0},
    {"e", TB_ARG_EVENT_NAME, 0, 0, 0},
    {"p", TB_ARG_PATTERN, 0, 0, 0},
    {"b", TB_ARG_BOOL, 0, 0, 0},
    {"u", TB_ARG_NUMBER, 0, 0, 0}, /* no range */
    {NULL, 0, 0, 0, 0},
};

/* Spawns kind "all" (before run) with args; checks rc and, on TB_EINVAL,
 * that err holds part. */
static void spawn_check(tb_app *app, const char *kind, const char *args,
                        int want_rc, const char *part)
{
    char err[256] = "x";
    tb_task_opts o = th_opts(NULL, TB_WORKER_ANY);
    int rc = tb_task_spawn(app, kind, args, &o, NULL, err, sizeof err);
    TH_CHECKF(rc == want_rc, "%s %s: rc %s, want %s (%s)", kind,
              args ? args : "NULL", tb_err_name(rc), tb_err_name(want_rc), err);
    if (part)
        TH_CHECKF(strstr(err, part), "%s: err \"%s\" lacks \"%s\"",
                  args ? args : "NULL", err, part);
    else if (want_rc == 0)
        TH_CHECK_STR(err, "");
}

static void test_validation(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);

    /* Registration. */
    char name65[66];
    memset(name65, 'k', 65);
    name65[65] = '\0';
    assert_rc(tb_app_add_kind(app, name65, noop, NULL), TB_EINVAL);
    name65[64] = '\0';
    assert_rc(tb_app_add_kind(app, name65, noop, NULL), 0);
    assert_rc(tb_app_add_kind(app, "", noop, NULL), TB_EINVAL);
    assert_rc(tb_app_add_kind(app, "a b", noop, NULL), TB_EINVAL);
    assert_rc(tb_app_add_kind(app, "a/b", noop, NULL), TB_EINVAL);
    assert_rc(tb_app_add_kind(app, "nofn", NULL, NULL), TB_EINVAL);
    static const tb_arg_spec dup[] = {{"x", TB_ARG_INT, 0, 0, 0},
                                      {"x", TB_ARG_STRING, 0, 0, 0},
                                      {NULL, 0, 0, 0, 0}};
    assert_rc(tb_app_add_kind(app, "dup", noop, dup), TB_EINVAL);
    static const tb_arg_spec empty[] = {{"", TB_ARG_INT, 0, 0, 0},
                                        {NULL, 0, 0, 0, 0}};
    assert_rc(tb_app_add_kind(app, "empty", noop, empty), TB_EINVAL);
    assert_rc(tb_app_add_kind(app, "all", noop, all_spec), 0);
    assert_rc(tb_app_add_kind(app, "all", noop, all_spec), TB_EEXIST);
    assert_rc(tb_app_add_kind(app, "none", noop, NULL), 0);
    assert_rc(tb_app_add_kind(app, "My.kind-1_x", noop, NULL), 0);

    /* Kind lookup and the args text. */
    spawn_check(app, "nope", "{}", TB_ENOENT, "nope");
    spawn_check(app, "none", NULL, 0, NULL);
    spawn_check(app, "none", "", 0, NULL);
    spawn_check(app, "none", "null", 0, NULL);
    spawn_check(app, "none", "{}", 0, NULL);
    spawn_check(app, "none", "{\"x\": 1}", TB_EINVAL,
                "args.x: unknown member (kind \"none\" takes no arguments)");
    spawn_check(app, "all", "{\"n\": ", TB_EINVAL, "invalid JSON");
    spawn_check(app, "all", "{\"n\": 1, \"n\": 2}", TB_EINVAL, "invalid JSON");
    spawn_check(app, "all", "[1]", TB_EINVAL, "must be a JSON object");
    spawn_check(app, "all", "3", TB_EINVAL, "must be a JSON object");

    /* Members: unknown, missing, wrong type, range edges (inclusive). */
    spawn_check(app, "all", "{\"n\": 1, \"zz\": 1}", TB_EINVAL,
                "args.zz: unknown member");
    spawn_check(app, "all", "{}", TB_EINVAL, "args.n: missing");
    spawn_check(app, "all", "null", TB_EINVAL, "args.n: missing");
    spawn_check(app, "all", "{\"n\": \"1\"}", TB_EINVAL,
                "args.n: must be a number");
    spawn_check(app, "all", "{\"n\": null}", TB_EINVAL,
                "args.n: must be a number");
    spawn_check(app, "all", "{\"n\": 0}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 10}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 2.5}", 0, NULL);
    spawn_check(app, "all", "{\"n\": -0.001}", TB_EINVAL,
                "args.n: -0.001 is out of range 0..10");
    spawn_check(app, "all", "{\"n\": 10.001}", TB_EINVAL, "args.n: 10.001");
    spawn_check(app, "all", "{\"n\": 1, \"i\": 2.0}", TB_EINVAL,
                "args.i: must be an integer");
    spawn_check(app, "all", "{\"n\": 1, \"i\": 1}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"i\": 5}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"i\": 0}", TB_EINVAL,
                "args.i: 0 is out of range 1..5");
    spawn_check(app, "all", "{\"n\": 1, \"i\": 6}", TB_EINVAL, "args.i: 6");
    spawn_check(app, "all", "{\"n\": 1, \"u\": -1e300}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"s\": 5}", TB_EINVAL,
                "args.s: must be a string");
    spawn_check(app, "all", "{\"n\": 1, \"s\": \"\"}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"e\": \"a..b\"}", TB_EINVAL,
                "args.e: bad event name \"a..b\"");
    spawn_check(app, "all", "{\"n\": 1, \"e\": \"a.*\"}", TB_EINVAL,
                "args.e: bad event name");
    spawn_check(app, "all", "{\"n\": 1, \"e\": 1}", TB_EINVAL,
                "args.e: must be an event name");
    spawn_check(app, "all", "{\"n\": 1, \"e\": \"a.b-c_d\"}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"p\": \"a.<x\"}", TB_EINVAL,
                "args.p: bad pattern");
    spawn_check(app, "all", "{\"n\": 1, \"p\": \"a.*.<x>\"}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"p\": \"a.>\"}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"p\": \">\"}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 1, \"p\": \"a.>.b\"}", TB_EINVAL,
                "args.p: bad pattern \"a.>.b\": \">\" may only be the last");
    spawn_check(app, "all", "{\"n\": 1, \"b\": 1}", TB_EINVAL,
                "args.b: must be true or false");
    spawn_check(app, "all", "{\"n\": 1, \"b\": false}", 0, NULL);

    /* tb_task_add's errors come through, with the args freed. */
    tb_task_opts o = th_opts("", TB_WORKER_ANY);
    char err[128];
    assert_rc(tb_task_spawn(app, "none", NULL, &o, NULL, err, sizeof err),
              TB_EINVAL);
    assert_rc(tb_task_spawn(app, "all", "{\"n\": 1, \"s\": \"x\"}", &o, NULL,
                            err, sizeof err),
              TB_EINVAL);
    assert_rc(tb_task_spawn(NULL, "none", NULL, NULL, NULL, NULL, 0),
              TB_EINVAL);

    th_assert_clean();
    tb__kinds_free(app); /* never run: nothing else drops its kinds */
    tb__kinds_free(app);
    tb_app_free(app);
}

/* ------------------------------------------------------------ built-ins */

#define DATA_MAX 128

typedef struct seen {
    pthread_mutex_t mu;
    th_counter ready, delay, tick, relayed;
    int64_t delay_at_ms;
    char delay_data[DATA_MAX];
    char relayed_data[2][DATA_MAX];
    /* the probe kind's getters */
    th_counter probed;
    double num, num_from_int, num_dflt;
    long long i, i_dflt;
    char s[DATA_MAX];
    int s_null, b, b_dflt;
} seen;

static int watcher(tb_task *self, void *arg)
{
    seen *s = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "k.*", 0, &err);
    if (!TH_CHECK(sub != NULL))
        return 1;
    th_counter_add(&s->ready, 1);
    tb_event *ev;
    while (tb_sub_next(self, sub, -1, &ev) == 0) {
        const char *name = tb_event_name(ev);
        const char *data = tb_event_data(ev, NULL);
        pthread_mutex_lock(&s->mu);
        if (strcmp(name, "k.delay") == 0) {
            s->delay_at_ms = th_mono_ms();
            snprintf(s->delay_data, DATA_MAX, "%s", data);
        } else if (strcmp(name, "k.relayed") == 0) {
            long n = th_counter_get(&s->relayed);
            if (n < 2)
                snprintf(s->relayed_data[n], DATA_MAX, "%s", data);
        }
        pthread_mutex_unlock(&s->mu);
        if (strcmp(name, "k.delay") == 0)
            th_counter_add(&s->delay, 1);
        else if (strcmp(name, "k.tick") == 0)
            th_counter_add(&s->tick, 1);
        else if (strcmp(name, "k.relayed") == 0)
            th_counter_add(&s->relayed, 1);
        tb_event_unref(ev);
    }
    return 0;
}

static seen *probe_seen;

static int probe(tb_task *self, void *arg)
{
    (void)self;
    const tb_kind_args *a = arg;
    seen *s = probe_seen;
    s->num = tb_kind_number(a, "n", -1);
    s->num_from_int = tb_kind_number(a, "i", -1);
    s->num_dflt = tb_kind_number(a, "u", -7);
    s->i = tb_kind_int(a, "i", -1);
    s->i_dflt = tb_kind_int(a, "n", -9); /* a number, not an int */
    const char *str = tb_kind_string(a, "s");
    snprintf(s->s, DATA_MAX, "%s", str ? str : "");
    s->s_null =
        tb_kind_string(a, "e") == NULL && tb_kind_string(a, "zz") == NULL;
    s->b = tb_kind_bool(a, "b", -1);
    s->b_dflt = tb_kind_bool(a, "s", -3);
    th_counter_add(&s->probed, 1);
    return 0;
}

static void spawn_named(tb_app *app, const char *kind, const char *name,
                        const char *args)
{
    char err[256];
    tb_task_opts o = th_opts(name, TB_WORKER_ANY);
    int rc = tb_task_spawn(app, kind, args, &o, NULL, err, sizeof err);
    TH_CHECKF(rc == 0, "spawn %s %s: %s", kind, name, err);
}

static void check_ended(tb_app *app, const char *name, tb_task_state want,
                        const char *error_part)
{
    TH_CHECKF(th_wait_state(app, name, want, 3000), "%s did not end %s", name,
              tb_task_state_name(want));
    tb_task_info info;
    TH_CHECK(tb_task_get(app, name, &info) == 1);
    if (error_part)
        TH_CHECKF(strstr(info.error, error_part), "%s: error \"%s\"", name,
                  info.error);
}

static void builtin_body(tb_app *app, void *arg)
{
    seen *s = arg;
    TH_CHECK_RC(th_add(app, "watcher", TB_WORKER_ANY, watcher, s, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&s->ready, 1, 3000));

    /* The getters see the validated values and defaults. */
    spawn_named(app, "probe", "probe",
                "{\"n\": 2.5, \"i\": 4, \"s\": \"str\", \"b\": true}");
    TH_CHECK(th_counter_wait_ge(&s->probed, 1, 3000));
    TH_CHECK(s->num == 2.5 && s->num_from_int == 4 && s->num_dflt == -7);
    TH_CHECK_EQ(s->i, 4);
    TH_CHECK_EQ(s->i_dflt, -9);
    TH_CHECK_STR(s->s, "str");
    TH_CHECK(s->s_null);
    TH_CHECK_EQ(s->b, 1);
    TH_CHECK_EQ(s->b_dflt, -3);
    check_ended(app, "probe", TB_TASK_DONE, NULL);
    tb_task_info info;
    TH_CHECK(tb_task_get(app, "probe", &info) == 1);
    TH_CHECK_STR(info.kind, "probe");

    /* delay: the event arrives after ~the delay, with its data. */
    int64_t t0 = th_mono_ms();
    spawn_named(app, "delay", "d1",
                "{\"seconds\": 0.2, \"event\": \"k.delay\", \"data\": \"hi\"}");
    TH_CHECK(th_counter_wait_ge(&s->delay, 1, 3000));
    pthread_mutex_lock(&s->mu);
    int64_t took = s->delay_at_ms - t0;
    TH_CHECKF(took >= 190 && took < 1500, "delay took %lld ms",
              (long long)took);
    TH_CHECK_STR(s->delay_data, "hi");
    pthread_mutex_unlock(&s->mu);
    check_ended(app, "d1", TB_TASK_DONE, NULL);

    /* delay whose dispatch fails (data over max_event_size): failed. */
    char args[DATA_MAX + 100];
    snprintf(args, sizeof args,
             "{\"seconds\": 0, \"event\": \"k.big\", \"data\": \"%0*d\"}", 80,
             0);
    spawn_named(app, "delay", "d2", args);
    check_ended(app, "d2", TB_TASK_FAILED, "dispatch of event \"k.big\"");

    /* interval with count 3: exactly 3 ticks, then done. */
    spawn_named(app, "interval", "i1",
                "{\"seconds\": 0.03, \"event\": \"k.tick\", \"count\": 3}");
    check_ended(app, "i1", TB_TASK_DONE, NULL);
    TH_CHECK(th_counter_wait_ge(&s->tick, 3, 1000));
    th_nap_ms(100);
    TH_CHECK_EQ(th_counter_get(&s->tick), 3);

    /* relay: two events relayed with their data, then cancelled. */
    spawn_named(app, "relay", "r1",
                "{\"pattern\": \"r.in.*\", \"event\": \"k.relayed\"}");
    TH_CHECK(th_wait_state(app, "r1", TB_TASK_RUNNING, 3000));
    th_nap_ms(50); /* its subscription is open once it has run */
    TH_CHECK_RC(tb_dispatch(app, "r.in.a", "one", 3, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "r.in.b", "two", 3, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "r.other", "no", 2, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&s->relayed, 2, 3000));
    TH_CHECK_RC(tb_task_cancel(app, "r1", 2000), 0);
    check_ended(app, "r1", TB_TASK_CANCELLED, NULL);
    th_nap_ms(50);
    TH_CHECK_EQ(th_counter_get(&s->relayed), 2);
    pthread_mutex_lock(&s->mu);
    TH_CHECK_STR(s->relayed_data[0], "one");
    TH_CHECK_STR(s->relayed_data[1], "two");
    pthread_mutex_unlock(&s->mu);

    /* relay onto its own pattern would loop: refused by the task. */
    spawn_named(app, "relay", "r2",
                "{\"pattern\": \"k.*\", \"event\": \"k.relayed\"}");
    check_ended(app, "r2", TB_TASK_FAILED, "feed itself");
    spawn_named(app, "relay", "r3",
                "{\"pattern\": \">\", \"event\": \"k.relayed\"}");
    check_ended(app, "r3", TB_TASK_FAILED, "feed itself");

    /* relay with a last ">": names under its prefix at any depth. */
    spawn_named(app, "relay", "r4",
                "{\"pattern\": \"rr.>\", \"event\": \"k.relayed\"}");
    TH_CHECK(th_wait_state(app, "r4", TB_TASK_RUNNING, 3000));
    th_nap_ms(50); /* its subscription is open once it has run */
    TH_CHECK_RC(tb_dispatch(app, "rr", "no", 2, NULL), 0);
    TH_CHECK_RC(tb_dispatch(app, "rr.a.b.c", "deep", 4, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&s->relayed, 3, 3000));
    TH_CHECK_RC(tb_task_cancel(app, "r4", 2000), 0);
    th_nap_ms(50);
    TH_CHECK_EQ(th_counter_get(&s->relayed), 3);

    /* sleep: 0 is done; a long one cancelled early ends cancelled. */
    spawn_named(app, "sleep", "s0", "{\"seconds\": 0}");
    check_ended(app, "s0", TB_TASK_DONE, NULL);
    spawn_named(app, "sleep", "s1", "{\"seconds\": 60}");
    TH_CHECK(th_wait_state(app, "s1", TB_TASK_RUNNING, 3000));
    t0 = th_mono_ms();
    TH_CHECK_RC(tb_task_cancel(app, "s1", 2000), 0);
    TH_CHECK(th_mono_ms() - t0 < 1000);
    check_ended(app, "s1", TB_TASK_CANCELLED, NULL);

    /* Kinds are fixed once the app runs. */
    TH_CHECK_RC(tb_app_add_kind(app, "late", noop, NULL), TB_EBUSY);
}

/* ------------------------------------------------------------ checks */

typedef struct check_ud {
    int calls, freed;
} check_ud;

/* Accepts n up to 5; refuses 6..8 by policy and more as bad arguments. */
static int limit_check(const tb_kind_args *args, void *ud, char *err,
                       size_t errsz)
{
    check_ud *c = ud;
    c->calls++;
    double n = tb_kind_number(args, "n", 0);
    if (n > 8) {
        snprintf(err, errsz, "n=%g is too big for this kind", n);
        return TB_EINVAL;
    }
    if (n > 5) {
        snprintf(err, errsz, "n=%g is not allowed here", n);
        return TB_EPERM;
    }
    return 0;
}

static void count_free(void *ud)
{
    ((check_ud *)ud)->freed++;
}

static void test_kind_check(void **state)
{
    (void)state;
    tb_app *app = th_app_new(1, 1000);
    check_ud c = {0, 0}, other = {0, 0};
    assert_rc(tb_app_add_kind(app, "all", noop, all_spec), 0);
    assert_rc(tb__api_register_kinds(app), 0);

    /* Failed registrations leave ud with the caller. */
    assert_rc(
        tb_app_add_kind_check(app, "nope", limit_check, &other, count_free),
        TB_ENOENT);
    assert_rc(tb_app_add_kind_check(app, "all", NULL, &other, count_free),
              TB_EINVAL);
    assert_rc(tb_app_add_kind_check(app, "all", limit_check, &c, count_free),
              0);
    assert_rc(
        tb_app_add_kind_check(app, "all", limit_check, &other, count_free),
        TB_EEXIST);

    /* The spec's checks come first: the kind's sees valid arguments only. */
    spawn_check(app, "all", "{\"n\": 11}", TB_EINVAL, "args.n");
    assert_int_equal(c.calls, 0);
    spawn_check(app, "all", "{\"n\": 5}", 0, NULL);
    spawn_check(app, "all", "{\"n\": 6}", TB_EPERM, "n=6 is not allowed");
    spawn_check(app, "all", "{\"n\": 9}", TB_EINVAL, "n=9 is too big");
    assert_int_equal(c.calls, 3);

    /* POST /tasks: policy is 403, bad arguments 400. */
    post_error(app, "{\"kind\": \"all\", \"args\": {\"n\": 7}}", 403,
               "not_allowed", "n=7 is not allowed");
    post_error(app, "{\"kind\": \"all\", \"args\": {\"n\": 10}}", 400,
               "bad_args", "n=10 is too big");
    assert_int_equal(c.calls, 5);
    th_assert_clean();

    /* Fixed once the app has run; ud_free runs once, with the app. */
    tb_app_stop(app);
    assert_rc(tb_app_run(app), 0);
    assert_rc(
        tb_app_add_kind_check(app, "all", limit_check, &other, count_free),
        TB_EBUSY);
    assert_int_equal(c.freed, 0);
    tb_app_free(app);
    assert_int_equal(c.freed, 1);
    assert_int_equal(other.freed, 0);
    assert_int_equal(other.calls, 0);
}

static void test_builtin(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.max_event_size = 64;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_builtin_kinds(app), 0);
    assert_rc(tb_app_add_builtin_kinds(app), TB_EEXIST);
    assert_rc(tb_app_add_kind(app, "probe", probe, all_spec), 0);
    seen s;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    th_counter_init(&s.ready);
    th_counter_init(&s.delay);
    th_counter_init(&s.tick);
    th_counter_init(&s.relayed);
    th_counter_init(&s.probed);
    probe_seen = &s;
    assert_rc(th_run_thread(app, builtin_body, &s, 20000), 0);
    th_assert_clean();
    tb_app_free(app);
    pthread_mutex_destroy(&s.mu);
    th_counter_destroy(&s.ready);
    th_counter_destroy(&s.delay);
    th_counter_destroy(&s.tick);
    th_counter_destroy(&s.relayed);
    th_counter_destroy(&s.probed);
}

/* ------------------------------------------------------------ POST /tasks */

/* An app of 2 workers with the built-in kinds and their HTTP routes. */
static tb_app *kinds_api_app(void)
{
    tb_app *app = th_app_new(2, 2000);
    assert_rc(tb_app_add_builtin_kinds(app), 0);
    assert_rc(tb__api_register_kinds(app), 0);
    return app;
}

static int noop_kind(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    return 0;
}

/* The built-in kinds and two of the user's, registered out of order: one
 * with every argument type and ranges of both kinds (0..1e12 is an
 * integer, -0.5..2.5 is not; 5..5 and 7..3 are no range), one with none. */
static tb_app *kinds_list_app(void)
{
    static const tb_arg_spec every_type[] = {
        {"n", TB_ARG_NUMBER, 1, -0.5, 2.5},
        {"i", TB_ARG_INT, 0, 0, 1e12},
        {"s", TB_ARG_STRING, 0, 0, 0},
        {"e", TB_ARG_EVENT_NAME, 1, 0, 0},
        {"p", TB_ARG_PATTERN, 0, 0, 0},
        {"b", TB_ARG_BOOL, 0, 0, 0},
        {"same", TB_ARG_NUMBER, 0, 5, 5},
        {"backwards", TB_ARG_INT, 0, 7, 3},
        {"half", TB_ARG_NUMBER, 0, 0, INFINITY},
        {"below", TB_ARG_INT, 0, -INFINITY, 10},
        {"any", TB_ARG_NUMBER, 0, -INFINITY, INFINITY},
        {"nan", TB_ARG_NUMBER, 0, NAN, 1},
        {NULL, 0, 0, 0, 0},
    };
    tb_app *app = kinds_api_app();
    assert_rc(tb_app_add_kind(app, "zz.user", noop_kind, every_type), 0);
    assert_rc(tb_app_add_kind(app, "a-first", noop_kind, NULL), 0);
    return app;
}

/* GET /kinds lists every kind, sorted by name, with its argument specs. */
TH_APP_TEST(test_get_kinds, kinds_list_app(), 20000)
{
    fake_conn c;
    memset(&c, 0, sizeof c);
    int st = fake_handle(&c, app, "GET", "/kinds", "junk=%zz&x", "", 0);
    TH_CHECK_EQ(st, 200);
    TH_CHECK_EQ(c.sends, 1);
    json_error_t jerr;
    json_t *j = c.body ? json_loadb(c.body, c.len, 0, &jerr) : NULL;
    json_t *kinds = json_object_get(j, "kinds");
    if (!TH_CHECKF(json_array_size(kinds) == 6, "%s", c.body ? c.body : "")) {
        json_decref(j);
        free(c.body);
        return;
    }
    static const char *const names[] = {"a-first", "delay", "interval",
                                        "relay",   "sleep", "zz.user"};
    for (size_t i = 0; i < 6; i++)
        TH_CHECK_STR(jget_str(json_array_get(kinds, i), "name"), names[i]);
    TH_CHECK_EQ(
        json_array_size(json_object_get(json_array_get(kinds, 0), "args")), 0);
    /* Each spec exactly, min/max only for a real range. */
    char *sleep_ = json_dumps(json_array_get(kinds, 4), JSON_COMPACT);
    TH_CHECK_STR(sleep_, "{\"name\":\"sleep\",\"args\":[{\"name\":"
                         "\"seconds\",\"type\":\"number\",\"required\":"
                         "true,\"min\":0,\"max\":86400}]}");
    free(sleep_);
    char *user = json_dumps(json_array_get(kinds, 5), JSON_COMPACT);
    TH_CHECK_STR(
        user,
        "{\"name\":\"zz.user\",\"args\":["
        "{\"name\":\"n\",\"type\":\"number\",\"required\":true,\"min\":-0.5,"
        "\"max\":2.5},"
        "{\"name\":\"i\",\"type\":\"int\",\"required\":false,\"min\":0,"
        "\"max\":1000000000000},"
        "{\"name\":\"s\",\"type\":\"string\",\"required\":false},"
        "{\"name\":\"e\",\"type\":\"event_name\",\"required\":true},"
        "{\"name\":\"p\",\"type\":\"pattern\",\"required\":false},"
        "{\"name\":\"b\",\"type\":\"bool\",\"required\":false},"
        "{\"name\":\"same\",\"type\":\"number\",\"required\":false},"
        "{\"name\":\"backwards\",\"type\":\"int\",\"required\":false},"
        "{\"name\":\"half\",\"type\":\"number\",\"required\":false,"
        "\"min\":0},"
        "{\"name\":\"below\",\"type\":\"int\",\"required\":false,"
        "\"max\":10},"
        "{\"name\":\"any\",\"type\":\"number\",\"required\":false},"
        "{\"name\":\"nan\",\"type\":\"number\",\"required\":false}]}");
    free(user);
    /* A bound of INFINITY is still a range: the finite side holds. */
    char err[256];
    TH_CHECK_RC(tb_task_spawn(app, "zz.user",
                              "{\"n\":0,\"e\":\"a.b\",\"half\":-1}", NULL, NULL,
                              err, sizeof err),
                TB_EINVAL);
    TH_CHECK_RC(tb_task_spawn(app, "zz.user",
                              "{\"n\":0,\"e\":\"a.b\",\"half\":1e300,"
                              "\"below\":-5}",
                              NULL, NULL, err, sizeof err),
                0);
    json_decref(j);
    free(c.body);

    /* Other methods: 405. */
    memset(&c, 0, sizeof c);
    TH_CHECK_EQ(fake_handle(&c, app, "POST", "/kinds", NULL, "{}", 2), 405);
    free(c.body);
    memset(&c, 0, sizeof c);
    TH_CHECK_EQ(fake_handle(&c, app, "DELETE", "/kinds", NULL, "", 0), 405);
    free(c.body);
}

TH_APP_TEST(test_http, kinds_api_app(), 20000)
{
    json_t *j = NULL;
    int st = post_tasks(app,
                        "{\"kind\": \"sleep\", \"name\": \"nap\", \"args\": "
                        "{\"seconds\": 30}, \"worker\": 1}",
                        &j);
    TH_CHECK_EQ(st, 201);
    TH_CHECK_STR(jget_str(j, "name"), "nap");
    TH_CHECK_STR(jget_str(j, "kind"), "sleep");
    TH_CHECK_EQ(json_integer_value(json_object_get(j, "worker")), 1);
    TH_CHECK(json_integer_value(json_object_get(j, "id")) > 0);
    TH_CHECK_EQ(json_integer_value(json_object_get(j, "replicas")), 1);
    const char *state = jget_str(j, "state");
    TH_CHECKF(state && (strcmp(state, "pending") == 0 ||
                        strcmp(state, "running") == 0),
              "state %s", state ? state : "(none)");
    TH_CHECK(json_is_string(json_object_get(j, "created")));
    TH_CHECK(json_is_null(json_object_get(j, "ended")));
    TH_CHECK(json_is_null(json_object_get(j, "error")));
    TH_CHECK(json_is_false(json_object_get(j, "cancel_requested")));
    TH_CHECK_EQ(json_integer_value(json_object_get(j, "result")), 0);
    json_decref(j);

    /* Unnamed: a generated name, args null is {}. */
    st = post_tasks(app, "{\"kind\": \"sleep\", \"args\": {\"seconds\": 0}}",
                    &j);
    TH_CHECK_EQ(st, 201);
    char want[32];
    snprintf(want, sizeof want, "task-%lld",
             (long long)json_integer_value(json_object_get(j, "id")));
    TH_CHECK_STR(jget_str(j, "name"), want);
    json_decref(j);

    post_error(app,
               "{\"kind\": \"sleep\", \"name\": \"nap\", \"args\": "
               "{\"seconds\": 1}}",
               409, "name_taken", "nap");
    post_error(app, "{\"kind\": \"nope\"}", 404, "unknown_kind", "nope");
    /* A kind name cut (at 80 bytes) in the middle of a character: the
     * message still comes, with U+FFFD for the cut character (it was
     * "(message not UTF-8)"; found by fuzz_http_api). */
    char body[160] = "{\"kind\": \"x";
    for (int i = 0; i < 50; i++)
        strcat(body, "\xc3\xa9"); /* U+00E9 */
    strcat(body, "\"}");
    post_error(app, body, 404, "unknown_kind",
               "no task kind named \"x\xc3\xa9");
    post_error(app, body, 404, "unknown_kind", "\xc3\xa9\xef\xbf\xbd\"");
    post_error(app, "{\"kind\": \"sleep\", \"args\": {\"seconds\": -1}}", 400,
               "bad_args", "args.seconds");
    post_error(app, "{\"kind\": \"sleep\"}", 400, "bad_args",
               "args.seconds: missing");
    post_error(app, "{\"kind\": \"sleep\", \"args\": null}", 400, "bad_args",
               "args.seconds: missing");
    post_error(app,
               "{\"kind\": \"interval\", \"args\": {\"seconds\": 1, "
               "\"event\": \"x\", \"count\": 0}}",
               400, "bad_args", "args.count");
    /* Nesting: json_max_depth (64) levels parse (then args are judged),
     * one more is refused before it is parsed; so are thousands (which
     * overflowed the server thread's stack). */
    for (int depth = 64; depth <= 3000; depth += depth == 64 ? 1 : 2935) {
        size_t cap = (size_t)depth * 2 + 96;
        char *body = malloc(cap);
        int n =
            snprintf(body, cap, "{\"kind\": \"delay\", \"args\": {\"data\": ");
        for (int i = 0; i < depth - 2; i++)
            body[n++] = '[';
        for (int i = 0; i < depth - 2; i++)
            body[n++] = ']';
        snprintf(body + n, cap - (size_t)n, "}}");
        if (depth == 64)
            post_error(app, body, 400, "bad_args", "args.data");
        else
            post_error(app, body, 400, "bad_json", "json_max_depth");
        free(body);
    }
    post_error(app, "nope", 400, "bad_json", "JSON object");
    post_error(app, "[]", 400, "bad_json", "JSON object");
    post_error(app, "", 400, "bad_json", "JSON object");
    post_error(app, "{}", 400, "bad_request", "\"kind\" is required");
    post_error(app, "{\"kind\": 1}", 400, "bad_request", "\"kind\"");
    post_error(app, "{\"kind\": \"sleep\", \"name\": 1}", 400, "bad_request",
               "\"name\"");
    post_error(app, "{\"kind\": \"sleep\", \"args\": [1]}", 400, "bad_request",
               "\"args\"");
    post_error(app, "{\"kind\": \"sleep\", \"worker\": \"1\"}", 400,
               "bad_request", "\"worker\"");
    post_error(app, "{\"kind\": \"sleep\", \"extra\": 1}", 400, "bad_request",
               "\"extra\"");
    post_error(app,
               "{\"kind\": \"sleep\", \"worker\": 2, \"args\": "
               "{\"seconds\": 1}}",
               400, "bad_worker", "0..1");
    post_error(app,
               "{\"kind\": \"sleep\", \"worker\": -1, \"args\": "
               "{\"seconds\": 1}}",
               400, "bad_worker", "0..1");
    post_error(app,
               "{\"kind\": \"sleep\", \"name\": \"\", \"args\": "
               "{\"seconds\": 1}}",
               400, "bad_name", "task name");
    /* Dot-segments: no URL could address them. */
    post_error(app,
               "{\"kind\": \"sleep\", \"name\": \".\", \"args\": "
               "{\"seconds\": 1}}",
               400, "bad_name", "not \".\" or");
    post_error(app,
               "{\"kind\": \"sleep\", \"name\": \"..\", \"args\": "
               "{\"seconds\": 1}}",
               400, "bad_name", "task name");

    th_app_stopped(app);
    /* After the stop. */
    post_error(app, "{\"kind\": \"sleep\", \"args\": {\"seconds\": 1}}", 503,
               "shutting_down", "stopp");
}

/* Relays that feed each other in a cycle die out at event_max_hops:
 * a.* -> b.x, b.* -> a.x and b.* -> a.y doubled the events every two hops
 * without end (1.27 M events in 5 s). With 8 hops, one a.q makes exactly
 * 1 + 1 + 2 + 2 + 4 + 4 + 8 + 8 + 16 = 46 events, and the 16 a.* events at
 * hop 8 are not relayed again. */
typedef struct cycle {
    th_counter ready, events;
    atomic_int max_hops;
} cycle;

static int cycle_watcher(tb_task *self, void *arg)
{
    cycle *c = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, "a.*", 4096, &err);
    if (!TH_CHECK(sub != NULL) || !TH_CHECK(tb_sub_add(sub, "b.*") == 0))
        return 1;
    th_counter_add(&c->ready, 1);
    tb_event *ev;
    while (tb_sub_next(self, sub, -1, &ev) == 0) {
        int h = tb_event_hops(ev);
        if (h > atomic_load(&c->max_hops))
            atomic_store(&c->max_hops, h);
        th_counter_add(&c->events, 1);
        tb_event_unref(ev);
    }
    return 0;
}

/* An app of 2 workers with event_max_hops 8 and the built-in kinds, logging
 * errors only (the hop limit's warning is expected). Main thread. */
static tb_app *cycle_app(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.event_max_hops = 8;
    tb_app *app = th_app_new_cfg(&cfg);
    tb_log_set_level(TB_LOG_ERROR);
    assert_rc(tb_app_add_builtin_kinds(app), 0);
    return app;
}

TH_APP_TEST(test_relay_cycle, cycle_app(), 20000)
{
    static cycle ctx;
    cycle *c = &ctx;
    tb_task_opts o = th_opts("watch", 0);
    TH_CHECK_RC(tb_task_add(app, cycle_watcher, c, &o, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->ready, 1, 3000));
    spawn_named(app, "relay", "ab",
                "{\"pattern\": \"a.*\", \"event\": \"b.x\"}");
    spawn_named(app, "relay", "ba",
                "{\"pattern\": \"b.*\", \"event\": \"a.x\"}");
    spawn_named(app, "relay", "bb",
                "{\"pattern\": \"b.*\", \"event\": \"a.y\"}");
    for (const char *const *n = (const char *const[]){"ab", "ba", "bb", NULL};
         *n; n++)
        TH_CHECK(th_wait_state(app, *n, TB_TASK_RUNNING, 3000));
    th_nap_ms(50); /* their subscriptions are open once they have run */
    TH_CHECK_RC(tb_dispatch(app, "a.q", "x", 1, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->events, 46, 5000));
    th_nap_ms(500); /* a cycle that did not stop would go on meanwhile */
    TH_CHECK_EQ(th_counter_get(&c->events), 46);
    TH_CHECK_EQ(atomic_load(&c->max_hops), 8);
    /* Still running: a refused event is not a failure of the relay. */
    TH_CHECK(th_wait_state(app, "ab", TB_TASK_RUNNING, 0));
    /* The hop limit is counted in the metrics. */
    size_t mlen;
    char *m = tb__metrics_render(app, &mlen);
    TH_CHECKF(
        m && strstr(m,
                    "taskbus_events_dropped_total{reason=\"hop_limit\"} 16\n"),
        "metrics: %s", m ? m : "(none)");
    free(m);
    TH_CHECK_RC(tb_task_cancel(app, "ab", 2000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "ba", 2000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "bb", 2000), 0);
    TH_CHECK_RC(tb_task_cancel(app, "watch", 2000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation), cmocka_unit_test(test_kind_check),
        cmocka_unit_test(test_builtin),    cmocka_unit_test(test_relay_cycle),
        cmocka_unit_test(test_http),       cmocka_unit_test(test_get_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
