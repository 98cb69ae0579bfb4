/* test_redis_cluster.c - integration tests of the Redis bus's cluster
 * scripts (adapters/bus_redis_cluster.c) against a real redis-server:
 * claims (claim, whois, release; a dead holder's claim is free), leases
 * (take, renew, drop; fences strictly increasing, also after FLUSHALL),
 * definitions (put, restore after a loss, delete, list and its bounds),
 * periodic ticks (once per tick, refused under a stale fence), leave and
 * reap, and values planted with raw commands (garbage, the wrong types,
 * out-of-range numbers), which count as free or are skipped and never
 * crash anything. Two apps
 * in this process are two instances: each has its own instance id and
 * record. The ops are called as the core calls them (tb__cluster_ops),
 * waited for with tb__opwait.
 *
 * TB_ITEST_FILTER=<glob> runs only the tests whose names match. */
#include "redis_harness.h"

#include "cluster.h"
#include "internal.h"

#define CONNECT_MS 10000 /* a fresh app's bus reaches connected */
#define OP_MS 5000       /* one op's answer */
#define NS "{taskbus}:"  /* the default namespace's hash tag */

/* ------------------------------------------------------------ helpers */

/* A running app on srv, connected, whose instance record is in Redis. */
static rh_app *start_app(const rh_server *srv)
{
    char url[256];
    rh_server_url(srv, NULL, NULL, url, sizeof url);
    tb_app_config cfg;
    rh_config(&cfg, url, NULL);
    /* Beats far apart: a record the test deletes stays deleted. */
    cfg.core.instance_heartbeat_ms = 20000;
    cfg.core.instance_ttl_ms = 60000;
    rh_app *ra = rh_app_start(&cfg);
    rh_assert_connected(ra->app, CONNECT_MS);
    char key[64], out[64] = "";
    snprintf(key, sizeof key, NS "instance:%s", ra->app->instance);
    int64_t end = th_mono_ms() + CONNECT_MS;
    while (th_mono_ms() < end) {
        if (rh_cli(srv, out, sizeof out, "EXISTS", key) == 0 &&
            strcmp(out, "1") == 0)
            return ra;
        th_nap_ms(20);
    }
    fail_msg("the record %s is not in Redis after %d ms", key, CONNECT_MS);
    return NULL;
}

static const tb__cluster_ops *cl(tb_app *app)
{
    assert_non_null(app->bus->ops->cluster);
    return app->bus->ops->cluster;
}

/* An op's answer: status, holder instance, number (task id or fence), and
 * live (claims: the holder's record exists; lease take: a takeover). */
typedef struct ans {
    int status;
    char inst[24];
    uint64_t num;
    int live;
} ans;

static ans wait_ans(tb__opwait *w, int rc)
{
    ans a;
    memset(&a, 0, sizeof a);
    strcpy(a.inst, "(unset)");
    a.status = tb__opwait_wait(w, rc, OP_MS, a.inst, &a.num, &a.live);
    return a;
}

static ans claim(tb_app *app, const char *name, uint64_t id)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w,
                    cl(app)->claim(app->bus, name, id, tb__opwait_claim_cb, w));
}

static ans whois(tb_app *app, const char *name)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->whois(app->bus, name, tb__opwait_claim_cb, w));
}

static int release(tb_app *app, const char *name, uint64_t id)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w,
                    cl(app)->release(app->bus, name, id, tb__opwait_done_cb, w))
        .status;
}

static ans take(tb_app *app, const char *name, int64_t ttl_ms)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(
        w, cl(app)->lease_take(app->bus, name, ttl_ms, tb__opwait_claim_cb, w));
}

/* A renewal carries the definition, put back if Redis lost its data. */
static ans renew_def(tb_app *app, const char *name, uint64_t fence,
                     int64_t ttl_ms, const char *def)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w,
                    cl(app)->lease_renew(app->bus, name, fence, ttl_ms, def,
                                         strlen(def), tb__opwait_claim_cb, w));
}

static ans renew(tb_app *app, const char *name, uint64_t fence, int64_t ttl_ms)
{
    return renew_def(app, name, fence, ttl_ms, "{}");
}

static int drop(tb_app *app, const char *name, uint64_t fence)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->lease_drop(app->bus, name, fence,
                                           tb__opwait_done_cb, w))
        .status;
}

static int def_put(tb_app *app, const char *name, const char *value, size_t len)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->def_put(app->bus, name, value, len,
                                        tb__opwait_done_cb, w))
        .status;
}

static int def_put_s(tb_app *app, const char *name, const char *value)
{
    return def_put(app, name, value, strlen(value));
}

static int def_restore(tb_app *app, const char *name, const char *value)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w,
                    cl(app)->def_restore(app->bus, name, value, strlen(value),
                                         tb__opwait_done_cb, w))
        .status;
}

static int def_del(tb_app *app, const char *name, uint64_t fence)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->def_del(app->bus, name, fence,
                                        tb__opwait_done_cb, w))
        .status;
}

static int tick(tb_app *app, const char *name, int64_t t, uint64_t fence)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->tick(app->bus, name, t, fence,
                                     tb__opwait_done_cb, w))
        .status;
}

static int reap(tb_app *app, int64_t keep_ms)
{
    tb__opwait *w = tb__opwait_new();
    assert_non_null(w);
    return wait_ans(w, cl(app)->reap(app->bus, keep_ms, tb__opwait_done_cb, w))
        .status;
}

/* A definition list's answer, copied on the bus thread. */
typedef struct defs {
    tb__opwait *w;
    int status;
    size_t n, dropped;
    char names[8][64];
    char values[8][64];
} defs;

static void on_defs(int status, const tb__kv_rec *recs, size_t n,
                    size_t dropped, void *ud)
{
    defs *d = ud;
    d->status = status;
    d->n = n;
    d->dropped = dropped;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(d->names[i], sizeof d->names[i], "%s", recs[i].id);
        snprintf(d->values[i], sizeof d->values[i], "%s", recs[i].value);
    }
    tb__opwait_done_cb(status, d->w);
}

/* The definitions (heap: a late callback after a failed wait still finds
 * it; the test has failed then anyway). */
static defs *def_list(tb_app *app)
{
    defs *d = calloc(1, sizeof *d);
    assert_non_null(d);
    d->w = tb__opwait_new();
    assert_non_null(d->w);
    int rc = cl(app)->def_list(app->bus, on_defs, d);
    assert_rc(tb__opwait_wait(d->w, rc, OP_MS, NULL, NULL, NULL), 0);
    return d;
}

/* The value at index i of d whose name is name, or NULL. */
static const char *def_value(const defs *d, const char *name)
{
    for (size_t i = 0; i < d->n && i < 8; i++)
        if (!strcmp(d->names[i], name))
            return d->values[i];
    return NULL;
}

/* redis-cli, which must succeed; its output in a static buffer. */
static const char *cli_ok(const rh_server *srv, const char *const *args)
{
    static char out[4096];
    int rc = rh_cliv(srv, out, sizeof out, args);
    if (rc != 0)
        fail_msg("redis-cli %s %s: exit %d: %s", args[0],
                 args[1] ? args[1] : "", rc, out);
    return out;
}
#define CLI(srv, ...) cli_ok((srv), (const char *const[]){__VA_ARGS__, NULL})

static long cli_int(const rh_server *srv, const char *const *args)
{
    return strtol(cli_ok(srv, args), NULL, 10);
}
#define CLI_INT(srv, ...)                                                      \
    cli_int((srv), (const char *const[]){__VA_ARGS__, NULL})

#define assert_ans(a, st, in, n)                                               \
    do {                                                                       \
        ans got_ = (a);                                                        \
        assert_rc(got_.status, (st));                                          \
        assert_string_equal(got_.inst, (in));                                  \
        assert_int_equal(got_.num, (n));                                       \
    } while (0)

/* ------------------------------------------------------------ claims */

static void test_claim_whois_release(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;
    const char *ia = a->instance, *ib = b->instance;

    assert_rc(whois(a, "job").status, TB_ENOENT);
    ans got = claim(a, "job", 7);
    assert_ans(got, 0, ia, 7);
    /* Ours already: claiming it again (even for another task) is ours. */
    assert_ans(claim(a, "job", 8), 0, ia, 8);
    assert_ans(claim(a, "job", 7), 0, ia, 7);
    /* Another live instance is refused, with the holder. */
    got = claim(b, "job", 1);
    assert_ans(got, TB_EEXIST, ia, 7);
    assert_int_equal(got.live, 1);
    got = whois(b, "job");
    assert_ans(got, 0, ia, 7);
    assert_int_equal(got.live, 1);
    char want[64];
    snprintf(want, sizeof want, "%s 7", ia);
    assert_string_equal(CLI(srv, "HGET", NS "claim", "job"), want);
    char set[64];
    snprintf(set, sizeof set, NS "claims:%s", ia);
    assert_int_equal(CLI_INT(srv, "SISMEMBER", set, "job"), 1);
    assert_int_equal(CLI_INT(srv, "SISMEMBER", NS "claimers", ia), 1);

    /* Only the holder's release of its own task id drops it. */
    assert_rc(release(b, "job", 7), 0);
    assert_rc(release(a, "job", 8), 0);
    assert_ans(whois(b, "job"), 0, ia, 7);
    assert_rc(release(a, "job", 7), 0);
    assert_rc(whois(b, "job").status, TB_ENOENT);
    assert_int_equal(CLI_INT(srv, "SISMEMBER", set, "job"), 0);
    assert_ans(claim(b, "job", 1), 0, ib, 1);

    /* Names: 1..TB_TASK_NAME_MAX bytes, refused at once otherwise. */
    char name[TB_TASK_NAME_MAX + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_rc(cl(a)->claim(a->bus, name, 1, tb__opwait_claim_cb, NULL),
              TB_EINVAL);
    assert_rc(cl(a)->claim(a->bus, "", 1, tb__opwait_claim_cb, NULL),
              TB_EINVAL);
    name[TB_TASK_NAME_MAX] = '\0';
    assert_ans(claim(a, name, 3), 0, ia, 3);
    assert_ans(whois(b, name), 0, ia, 3);

    /* Without its own record an instance's claim would look dead to the
     * others: it is refused, to be tried again after its heartbeat. */
    char rec[64];
    snprintf(rec, sizeof rec, NS "instance:%s", ia);
    CLI(srv, "DEL", rec);
    assert_rc(claim(a, "mine", 2).status, TB_EAGAIN);
    assert_rc(whois(b, "mine").status, TB_ENOENT);

    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* A claim whose holder has no record (it died, or never lived) is free,
 * and whois reports the holder as not live (the API's "lost"). */
static void test_claim_of_dead_holder_is_free(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv);
    tb_app *a = ra->app;

    CLI(srv, "HSET", NS "claim", "ghost", "deadbeef 5");
    CLI(srv, "SADD", NS "claims:deadbeef", "ghost");
    ans got = whois(a, "ghost");
    assert_ans(got, 0, "deadbeef", 5);
    assert_int_equal(got.live, 0);
    got = claim(a, "ghost", 9);
    assert_ans(got, 0, a->instance, 9);
    assert_int_equal(got.live, 1);
    got = whois(a, "ghost");
    assert_ans(got, 0, a->instance, 9);
    assert_int_equal(got.live, 1);
    /* The dead holder's set no longer names it. */
    assert_int_equal(CLI_INT(srv, "SISMEMBER", NS "claims:deadbeef", "ghost"),
                     0);

    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Values nobody of ours wrote (garbage, numbers out of range, an
 * instance id in capitals) count as free: whois finds no holder and a
 * claim takes the name. */
static void test_claim_malformed_values_are_free(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;
    char upper[24], nonum[64], huge[64], longinst[64];
    snprintf(upper, sizeof upper, "%s", b->instance);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    snprintf(nonum, sizeof nonum, "%s x7", b->instance);
    snprintf(huge, sizeof huge, "%s 99999999999999999999999", b->instance);
    snprintf(longinst, sizeof longinst, "%s%s 7", b->instance, b->instance);
    strcat(upper, " 7");
    const char *planted[][2] = {
        {"g-garbage", "garbage"}, {"g-empty", ""},    {"g-nonum", nonum},
        {"g-huge", huge},         {"g-upper", upper}, {"g-longinst", longinst},
    };
    for (size_t i = 0; i < sizeof planted / sizeof planted[0]; i++) {
        const char *name = planted[i][0];
        CLI(srv, "HSET", NS "claim", name, planted[i][1]);
        ans got = whois(a, name);
        if (got.status != TB_ENOENT)
            fail_msg("whois of %s (\"%s\"): %s, want ENOENT", name,
                     planted[i][1], tb_strerror(got.status));
        got = claim(a, name, 11);
        if (got.status != 0)
            fail_msg("claim of %s (\"%s\"): %s, want 0", name, planted[i][1],
                     tb_strerror(got.status));
        assert_ans(whois(b, name), 0, a->instance, 11);
    }
    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Keys of the wrong type fail the op (an error, counted by its caller),
 * never the bus or the process; deleting them mends everything. */
static void test_wrong_types_fail_the_op_only(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv);
    tb_app *a = ra->app;

    CLI(srv, "SET", NS "claim", "a string");
    CLI(srv, "SET", NS "singleton", "a string");
    CLI(srv, "SET", NS "fence", "a string");
    CLI(srv, "SET", NS "tick", "a string");
    CLI(srv, "HSET", NS "lease:w", "a", "hash");
    assert_rc(claim(a, "w", 1).status, TB_EIO);
    assert_rc(whois(a, "w").status, TB_EIO);
    assert_rc(def_put_s(a, "w", "{}"), TB_EIO);
    assert_rc(take(a, "w", 1000).status, TB_EIO);
    assert_rc(tick(a, "w", 1, 1), TB_EIO);
    defs *d = calloc(1, sizeof *d);
    assert_non_null(d);
    d->w = tb__opwait_new();
    int rc = cl(a)->def_list(a->bus, on_defs, d);
    assert_rc(tb__opwait_wait(d->w, rc, OP_MS, NULL, NULL, NULL), TB_EIO);
    free(d);
    rh_assert_connected(a, 100);

    CLI(srv, "DEL", NS "claim", NS "singleton", NS "fence", NS "tick",
        NS "lease:w");
    assert_ans(claim(a, "w", 1), 0, a->instance, 1);
    assert_rc(def_put_s(a, "w", "{}"), 0);
    ans got = take(a, "w", 1000);
    assert_rc(got.status, 0);
    assert_rc(tick(a, "w", 1, got.num), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ leases */

static void test_lease_take_renew_drop(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;
    const char *ia = a->instance, *ib = b->instance;

    /* No definition, no lease. */
    assert_ans(take(a, "s", 2000), TB_EEXIST, "", 0);
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:s"), 0);
    assert_rc(def_put_s(a, "s", "{\"kind\":\"sleep\"}"), 0);
    assert_rc(def_put_s(b, "s", "{}"), TB_EEXIST);

    ans got = take(a, "s", 2000);
    assert_rc(got.status, 0);
    assert_string_equal(got.inst, ia);
    assert_int_equal(got.live, 0); /* the first run: no takeover */
    uint64_t f1 = got.num;
    assert_true(f1 > 0);
    char want[64];
    snprintf(want, sizeof want, "%s %" PRIu64, ia, f1);
    assert_string_equal(CLI(srv, "GET", NS "lease:s"), want);
    long pttl = CLI_INT(srv, "PTTL", NS "lease:s");
    assert_true(pttl > 0 && pttl <= 2000);
    /* Held: the others are told by whom. */
    assert_ans(take(b, "s", 2000), TB_EEXIST, ia, f1);
    assert_ans(take(a, "s", 2000), TB_EEXIST, ia, f1);

    /* Renewal: the holder's with its fence only. */
    assert_ans(renew(a, "s", f1, 5000), 0, ia, f1);
    pttl = CLI_INT(srv, "PTTL", NS "lease:s");
    assert_true(pttl > 2000 && pttl <= 5000);
    assert_ans(renew(b, "s", f1, 5000), TB_EEXIST, ia, f1);
    assert_ans(renew(a, "s", f1 + 1, 5000), TB_EEXIST, ia, f1);

    /* Drop: the holder's with its fence only. */
    assert_rc(drop(b, "s", f1), 0);
    assert_rc(drop(a, "s", f1 + 1), 0);
    assert_string_equal(CLI(srv, "GET", NS "lease:s"), want);
    assert_rc(drop(a, "s", f1), 0);
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:s"), 0);

    /* Taken by b: a takeover (an earlier run held a fence), higher. */
    got = take(b, "s", 2000);
    assert_rc(got.status, 0);
    assert_string_equal(got.inst, ib);
    assert_int_equal(got.live, 1);
    uint64_t f2 = got.num;
    assert_true(f2 > f1);
    assert_ans(renew(a, "s", f1, 2000), TB_EEXIST, ib, f2);

    /* A lease Redis forgot is the holder's again on renewal, unless a
     * later fence was handed out meanwhile. */
    CLI(srv, "DEL", NS "lease:s");
    assert_ans(renew(b, "s", f2, 2000), 0, ib, f2);
    snprintf(want, sizeof want, "%s %" PRIu64, ib, f2);
    assert_string_equal(CLI(srv, "GET", NS "lease:s"), want);
    CLI(srv, "DEL", NS "lease:s");
    got = take(a, "s", 2000);
    assert_rc(got.status, 0);
    uint64_t f3 = got.num;
    assert_true(f3 > f2);
    assert_ans(renew(b, "s", f2, 2000), TB_EEXIST, ia, f3);
    CLI(srv, "DEL", NS "lease:s");
    assert_ans(renew(b, "s", f2, 2000), TB_EEXIST, "", f3);
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:s"), 0);
    /* A lease that is not a holder's counts as free for a renewal too. */
    CLI(srv, "SET", NS "lease:s", "garbage");
    assert_ans(renew(a, "s", f3, 2000), 0, ia, f3);

    /* Redis lost everything: the renewal takes the lease again and puts
     * the definition back. */
    CLI(srv, "FLUSHALL");
    assert_ans(renew_def(a, "s", f3, 2000, "{\"kind\":\"back\"}"), 0, ia, f3);
    assert_string_equal(CLI(srv, "HGET", NS "singleton", "s"),
                        "{\"kind\":\"back\"}");
    /* An ended singleton stays ended: its delete leaves a fence past the
     * run's, so that its renewal in flight cannot take the lease again. */
    assert_rc(def_del(a, "s", f3), 0);
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:s"), 0);
    got = renew(a, "s", f3, 2000);
    assert_rc(got.status, TB_EEXIST);
    assert_true(got.num > f3);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "singleton", "s"), 0);
    assert_rc(def_del(a, "s", 0), TB_ENOENT);

    /* Out of bounds: refused at once. */
    assert_rc(cl(a)->lease_take(a->bus, "s", 0, tb__opwait_claim_cb, NULL),
              TB_EINVAL);
    assert_rc(cl(a)->lease_renew(a->bus, "", 1, 1000, "{}", 2,
                                 tb__opwait_claim_cb, NULL),
              TB_EINVAL);
    assert_rc(cl(a)->lease_renew(a->bus, "s", 1, 1000, "{}", 0,
                                 tb__opwait_claim_cb, NULL),
              TB_EINVAL);

    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Fences only grow: handed out as fast as Redis answers, and after a
 * FLUSHALL (a Redis that lost everything) too. */
static void test_fences_strictly_increase(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;

    assert_rc(def_put_s(a, "f", "{}"), 0);
    uint64_t last = 0;
    tb_app *who[] = {a, b};
    /* Faster than one a millisecond: a fence taken from the clock alone
     * would repeat. */
    int64_t t0 = th_mono_us();
    for (int i = 0; i < 400; i++) {
        tb_app *x = who[i % 2];
        ans got = take(x, "f", 60000);
        assert_rc(got.status, 0);
        if (got.num <= last)
            fail_msg("take %d: fence %" PRIu64 " after %" PRIu64, i, got.num,
                     last);
        last = got.num;
        assert_rc(drop(x, "f", got.num), 0);
    }
    int64_t took_us = th_mono_us() - t0;
    for (int round = 0; round < 3; round++) {
        CLI(srv, "FLUSHALL");
        assert_rc(def_put_s(b, "f", "{}"), 0);
        ans got = take(who[round % 2], "f", 60000);
        assert_rc(got.status, 0);
        if (got.num <= last)
            fail_msg("after FLUSHALL %d: fence %" PRIu64 " after %" PRIu64
                     " (400 takes took %" PRId64 " us)",
                     round, got.num, last, took_us);
        last = got.num;
    }
    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* Lease and fence values nobody of ours wrote: a lease that is not
 * "<instance> <fence>" is free, a fence that is not a number counts as
 * none. */
static void test_lease_malformed_values(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv);
    tb_app *a = ra->app;
    const char *fences[] = {"garbage", "inf", "-5",
                            "1e300",   "nan", "99999999999999999999999999"};
    const char *leases[] = {"garbage", "",
                            "ABC 12",  "abc 1e9",
                            "abc -1",  "abc 99999999999999999999999999"};
    for (size_t i = 0; i < sizeof leases / sizeof leases[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%zu", i);
        char lease[32];
        snprintf(lease, sizeof lease, NS "lease:%s", name);
        assert_rc(def_put_s(a, name, "{}"), 0);
        CLI(srv, "SET", lease, leases[i]);
        CLI(srv, "HSET", NS "fence", name, fences[i]);
        ans got = take(a, name, 2000);
        if (got.status != 0)
            fail_msg("take under lease \"%s\", fence \"%s\": %s", leases[i],
                     fences[i], tb_strerror(got.status));
        assert_string_equal(got.inst, a->instance);
        assert_true(got.num > 1000000);
        /* It holds now: renewed and dropped as usual. */
        assert_ans(renew(a, name, got.num, 2000), 0, a->instance, got.num);
        assert_rc(drop(a, name, got.num), 0);
        assert_int_equal(CLI_INT(srv, "EXISTS", lease), 0);
    }
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ definitions */

static void test_definitions(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;

    defs *d = def_list(a);
    assert_int_equal(d->n, 0);
    free(d);
    assert_rc(def_put_s(a, "d1", "{\"n\":1}"), 0);
    assert_rc(def_put_s(b, "d2", "{\"n\":2}"), 0);
    assert_rc(def_put_s(a, "d3", "{\"n\":3}"), 0);
    assert_rc(def_put_s(b, "d1", "{\"n\":9}"), TB_EEXIST);
    d = def_list(b);
    assert_int_equal(d->n, 3);
    assert_int_equal(d->dropped, 0);
    assert_string_equal(def_value(d, "d1"), "{\"n\":1}");
    assert_string_equal(def_value(d, "d2"), "{\"n\":2}");
    assert_string_equal(def_value(d, "d3"), "{\"n\":3}");
    free(d);

    /* Delete: the definition and its tick; the lease when the fence
     * given is the holder's, or when none is given. */
    ans l2 = take(a, "d2", 60000), l3 = take(a, "d3", 60000);
    assert_rc(l2.status, 0);
    assert_rc(l3.status, 0);
    CLI(srv, "HSET", NS "tick", "d2", "5", "d3", "6");
    assert_rc(def_del(b, "d2", l2.num), 0); /* b's fence: not the holder */
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:d2"), 1);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "tick", "d2"), 0);
    assert_rc(def_del(a, "d3", 0), 0);
    assert_int_equal(CLI_INT(srv, "EXISTS", NS "lease:d3"), 0);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "tick", "d3"), 0);
    assert_rc(def_del(a, "d1", 0), 0);
    assert_rc(def_del(a, "never", 0), TB_ENOENT);
    d = def_list(a);
    assert_int_equal(d->n, 0);
    free(d);
    /* A lease whose definition is gone is never taken again. */
    CLI(srv, "DEL", NS "lease:d2");
    assert_ans(take(b, "d2", 1000), TB_EEXIST, "", 0);

    /* Restore: only where Redis forgot the name altogether (no fence);
     * one deleted on purpose (its tombstone fence stays) is not. */
    assert_rc(def_restore(a, "d2", "{\"n\":2}"), TB_EEXIST);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "singleton", "d2"), 0);
    assert_rc(def_put_s(a, "d4", "{\"n\":4}"), 0);
    assert_rc(def_restore(b, "d4", "{\"n\":5}"), TB_EEXIST);
    assert_string_equal(CLI(srv, "HGET", NS "singleton", "d4"), "{\"n\":4}");
    CLI(srv, "FLUSHALL");
    assert_rc(def_restore(b, "d2", "{\"n\":2}"), 0);
    assert_rc(def_restore(a, "d2", "{\"n\":9}"), TB_EEXIST);
    assert_string_equal(CLI(srv, "HGET", NS "singleton", "d2"), "{\"n\":2}");
    assert_rc(
        cl(a)->def_restore(a->bus, "d2", "x", 0, tb__opwait_done_cb, NULL),
        TB_EINVAL);
    CLI(srv, "DEL", NS "singleton");

    /* Sizes: 1..TB__CLUSTER_DEF_MAX bytes; a larger one planted by hand
     * is skipped by the list, and counted. */
    size_t max = TB__CLUSTER_DEF_MAX;
    char *big = malloc(max + 2);
    assert_non_null(big);
    memset(big, 'x', max + 1);
    big[max + 1] = '\0';
    assert_rc(
        cl(a)->def_put(a->bus, "big", big, max + 1, tb__opwait_done_cb, NULL),
        TB_EINVAL);
    assert_rc(cl(a)->def_put(a->bus, "big", big, 0, tb__opwait_done_cb, NULL),
              TB_EINVAL);
    assert_rc(def_put(a, "big", big, max), 0);
    CLI(srv, "HSET", NS "singleton", "bigger", big);
    assert_rc(def_put_s(a, "small", "{}"), 0);
    d = def_list(b);
    assert_int_equal(d->n, 2);
    assert_int_equal(d->dropped, 1);
    assert_null(def_value(d, "bigger"));
    assert_string_equal(def_value(d, "small"), "{}");
    free(d);
    free(big);

    /* Count: at most TB__CLUSTER_DEFS_MAX in one answer, the rest
     * counted. */
    CLI(srv, "DEL", NS "singleton");
    int total = TB__CLUSTER_DEFS_MAX + 100;
    char count[16];
    snprintf(count, sizeof count, "%d", total);
    CLI(srv, "EVAL",
        "for i = 1, tonumber(ARGV[1]) do "
        "redis.call('HSET', KEYS[1], 'n' .. i, '{}') end",
        "1", NS "singleton", count);
    d = def_list(a);
    assert_true(d->n >= 1 && d->n <= TB__CLUSTER_DEFS_MAX);
    assert_int_equal(d->n + d->dropped, (size_t)total);
    free(d);

    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ ticks */

static void test_ticks(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;

    assert_rc(def_put_s(a, "p", "{\"every_ms\":1000}"), 0);
    ans l = take(a, "p", 60000);
    assert_rc(l.status, 0);
    uint64_t f = l.num;
    /* Once per tick, newest first. */
    assert_rc(tick(a, "p", 100, f), 0);
    assert_string_equal(CLI(srv, "HGET", NS "tick", "p"), "100");
    assert_rc(tick(a, "p", 100, f), TB_EEXIST);
    assert_rc(tick(a, "p", 99, f), TB_EEXIST);
    assert_rc(tick(a, "p", 0, f), TB_EEXIST);
    assert_rc(tick(a, "p", 101, f), 0);
    /* Only under the lease's holder and fence. */
    assert_rc(tick(a, "p", 102, f + 1), TB_EPERM);
    assert_rc(tick(b, "p", 102, f), TB_EPERM);
    assert_rc(drop(a, "p", f), 0);
    assert_rc(tick(a, "p", 102, f), TB_EPERM); /* no lease at all */
    ans l2 = take(b, "p", 60000);
    assert_rc(l2.status, 0);
    assert_rc(tick(a, "p", 102, f), TB_EPERM);       /* the stale run's */
    assert_rc(tick(b, "p", 101, l2.num), TB_EEXIST); /* fired before */
    assert_rc(tick(b, "p", 102, l2.num), 0);
    assert_string_equal(CLI(srv, "HGET", NS "tick", "p"), "102");
    /* A tick after a gap says how many ticks nobody fired: 103 and 104. */
    assert_rc(tick(b, "p", 105, l2.num), 2);
    assert_rc(tick(b, "p", 106, l2.num), 0);
    /* A recorded tick that is not a number counts as none. */
    const char *bad[] = {"garbage", "inf", "1e300", "-1e300",
                         "99999999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CLI(srv, "HSET", NS "tick", "p", bad[i]);
        int st = tick(b, "p", 200 + (int64_t)i, l2.num);
        if (st != 0)
            fail_msg("tick under a recorded \"%s\": %s, want 0", bad[i],
                     tb_strerror(st));
    }
    assert_rc(cl(a)->tick(a->bus, "p", -1, f, tb__opwait_done_cb, NULL),
              TB_EINVAL);

    assert_rc(rh_app_stop(rb), 0);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ leave, reap */

static void test_leave_and_reap(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv), *rb = start_app(srv);
    tb_app *a = ra->app, *b = rb->app;
    char ia[24], key[64];
    snprintf(ia, sizeof ia, "%s", a->instance);

    /* A clean stop takes the instance's record and claims with it. */
    for (int i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof name, "l%d", i);
        assert_ans(claim(a, name, (uint64_t)i + 1), 0, ia, (uint64_t)i + 1);
    }
    assert_ans(claim(b, "kept", 1), 0, b->instance, 1);
    assert_rc(rh_app_stop(ra), 0);
    assert_int_equal(CLI_INT(srv, "HLEN", NS "claim"), 1);
    snprintf(key, sizeof key, NS "claims:%s", ia);
    assert_int_equal(CLI_INT(srv, "EXISTS", key), 0);
    snprintf(key, sizeof key, NS "instance:%s", ia);
    assert_int_equal(CLI_INT(srv, "EXISTS", key), 0);
    assert_int_equal(CLI_INT(srv, "SISMEMBER", NS "claimers", ia), 0);

    /* A dead claimer's claims stay (read as lost) for keep ms, then go. */
    CLI(srv, "HSET", NS "claim", "r1", "dead1 1", "r2", "dead1 2");
    CLI(srv, "SADD", NS "claims:dead1", "r1", "r2");
    CLI(srv, "SADD", NS "claimers", "dead1");
    assert_rc(reap(b, 3600 * 1000), 0);
    assert_true(CLI(srv, "ZSCORE", NS "gone", "dead1")[0] != '\0');
    assert_int_equal(CLI_INT(srv, "HLEN", NS "claim"), 3);
    ans got = whois(b, "r1");
    assert_ans(got, 0, "dead1", 1);
    assert_int_equal(got.live, 0);
    assert_rc(reap(b, 0), 0);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "claim", "r1"), 0);
    assert_int_equal(CLI_INT(srv, "HEXISTS", NS "claim", "r2"), 0);
    assert_int_equal(CLI_INT(srv, "SISMEMBER", NS "claimers", "dead1"), 0);
    assert_string_equal(CLI(srv, "ZSCORE", NS "gone", "dead1"), "");
    assert_ans(whois(b, "kept"), 0, b->instance, 1);
    /* A live claimer noted as gone (its record was briefly missing) is
     * no longer gone, and keeps its claims. */
    CLI(srv, "ZADD", NS "gone", "1", b->instance);
    assert_rc(reap(b, 0), 0);
    assert_string_equal(CLI(srv, "ZSCORE", NS "gone", b->instance), "");
    assert_ans(whois(b, "kept"), 0, b->instance, 1);

    assert_rc(rh_app_stop(rb), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ messages */

static void test_send(void **state)
{
    (void)state;
    rh_server *srv = rh_server_start(NULL, NULL, NULL);
    rh_app *ra = start_app(srv);
    tb_app *a = ra->app;
    /* Nobody listens on an instance that does not exist. */
    tb__opwait *w = tb__opwait_new();
    const char msg[] = "{}";
    assert_rc(wait_ans(w, cl(a)->send(a->bus, "0123abcd", msg, 2,
                                      tb__opwait_done_cb, w))
                  .status,
              TB_ENOENT);
    assert_rc(cl(a)->send(a->bus, "NOT-HEX", msg, 2, NULL, NULL), TB_EINVAL);
    assert_rc(cl(a)->send(a->bus, "", msg, 2, NULL, NULL), TB_EINVAL);
    assert_rc(cl(a)->send(a->bus, "abc", msg, 0, NULL, NULL), TB_EINVAL);
    assert_rc(
        cl(a)->send(a->bus, "abc", msg, TB__CLUSTER_MSG_MAX + 1, NULL, NULL),
        TB_EINVAL);
    assert_rc(rh_app_stop(ra), 0);
    th_assert_clean();
}

/* ------------------------------------------------------------ main */

#define T(fn) RH_TEST(fn)

/* TB_ITEST_FILTER=<glob> runs only the tests whose names match. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_claim_whois_release),
        T(test_claim_of_dead_holder_is_free),
        T(test_claim_malformed_values_are_free),
        T(test_wrong_types_fail_the_op_only),
        T(test_lease_take_renew_drop),
        T(test_fences_strictly_increase),
        T(test_lease_malformed_values),
        T(test_definitions),
        T(test_ticks),
        T(test_leave_and_reap),
        T(test_send),
    };
    return rh_run_group("redis_cluster", tests);
}
