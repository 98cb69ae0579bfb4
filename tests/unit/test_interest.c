/* test_interest.c - tests service/interest.c: which event names this
 * process's listeners could match, as buses ask before decoding. */
#include "harness.h"

#include "internal.h"

static tb__pattern pat(const char *text)
{
    tb__pattern p;
    assert_int_equal(tb__pattern_compile(&p, text), 0);
    return p;
}

static int wants(tb__interest *in, const char *name)
{
    tb__name n;
    assert_int_equal(tb__name_split(&n, name), 0);
    return tb__interest_match(in, &n);
}

static void test_empty_wants_nothing(void **state)
{
    (void)state;
    tb__interest in;
    tb__interest_init(&in);
    assert_false(wants(&in, "a"));
    assert_false(wants(&in, "a.b.c"));
    tb__interest_destroy(&in);
}

static void test_exact_and_wildcards(void **state)
{
    (void)state;
    tb__interest in;
    tb__interest_init(&in);
    tb__pattern exact = pat("order.created");
    tb__pattern star = pat("user.*.login");
    tb__pattern param = pat("shop.<id>");
    assert_int_equal(tb__interest_add(&in, &exact), 0);
    assert_int_equal(tb__interest_add(&in, &star), 0);
    assert_int_equal(tb__interest_add(&in, &param), 0);

    assert_true(wants(&in, "order.created"));
    assert_false(wants(&in, "order.created.x"));
    assert_false(wants(&in, "order.deleted"));
    assert_true(wants(&in, "user.42.login"));
    assert_false(wants(&in, "user.42.logout"));
    assert_false(wants(&in, "user.login"));
    assert_true(wants(&in, "shop.7"));
    assert_false(wants(&in, "shop.7.8"));

    tb__interest_remove(&in, &star);
    assert_false(wants(&in, "user.42.login"));
    assert_true(wants(&in, "order.created"));
    tb__interest_remove(&in, &exact);
    tb__interest_remove(&in, &param);
    assert_false(wants(&in, "order.created"));
    assert_false(wants(&in, "shop.7"));
    tb__interest_destroy(&in);
}

/* A last ">" wants every name under its prefix, at any depth; ">" alone
 * wants everything, until it is removed. */
static void test_tail_wildcard(void **state)
{
    (void)state;
    tb__interest in;
    tb__interest_init(&in);
    tb__pattern orders = pat("orders.>");
    assert_int_equal(tb__interest_add(&in, &orders), 0);
    assert_true(wants(&in, "orders.a"));
    assert_true(wants(&in, "orders.a.b.c.d.e.f.g"));
    assert_false(wants(&in, "orders"));
    assert_false(wants(&in, "order.a"));
    assert_false(wants(&in, "x.orders.a"));

    tb__pattern all = pat(">");
    assert_int_equal(tb__interest_add(&in, &all), 0);
    assert_true(wants(&in, "orders"));
    assert_true(wants(&in, "a.b.c.d.e.f.g.h"));
    tb__interest_remove(&in, &all);
    assert_false(wants(&in, "orders"));
    assert_true(wants(&in, "orders.x"));
    tb__interest_remove(&in, &orders);
    assert_false(wants(&in, "orders.x"));
    tb__interest_destroy(&in);
}

/* Wildcard patterns with literal prefixes of every depth, 0 to 7
 * segments (params and ">" among them), some sharing a prefix and others
 * alone in theirs, and an exact one: each alone, all, and all with half
 * removed. Names made from every pattern (and near misses) are wanted
 * exactly when a pattern present matches them (tb_pattern_match judges);
 * once all are removed no group or depth count is left. */
static void test_prefix_groups(void **state)
{
    (void)state;
    const char *const *pats = th_prefix_patterns;
    enum {
        NP = 24
    };
    assert_int_equal(th_prefix_npatterns, NP);
    unsigned seed = 7;
    for (int mode = 0; mode < 3; mode++) {
        /* mode 0: each pattern alone; 1: all; 2: all, the even ones
         * removed. */
        for (int only = 0; only < (mode ? 1 : NP); only++) {
            tb__interest in;
            tb__interest_init(&in);
            tb__pattern p[NP];
            int present[NP];
            for (int i = 0; i < NP; i++) {
                p[i] = pat(pats[i]);
                present[i] = mode ? !(mode == 2 && i % 2 == 0) : i == only;
                if (mode || i == only)
                    assert_int_equal(tb__interest_add(&in, &p[i]), 0);
            }
            for (int i = 0; mode == 2 && i < NP; i += 2)
                tb__interest_remove(&in, &p[i]);
            for (int from = 0; from < NP; from++) {
                for (int v = 0; v < 30; v++) {
                    char name[160];
                    th_name_near(pats[from], &seed, name, sizeof name);
                    int want = 0;
                    for (int i = 0; i < NP; i++)
                        if (present[i] && tb_pattern_match(pats[i], name) == 1)
                            want = 1;
                    if (wants(&in, name) != want)
                        fail_msg("%s: wanted %d, want %d (mode %d, %s)", name,
                                 !want, want, mode, pats[only]);
                }
            }
            for (int i = 0; i < NP; i++)
                if (present[i])
                    tb__interest_remove(&in, &p[i]);
            assert_int_equal(in.table.count, 0);
            assert_int_equal(in.prefixes.count, 0);
            assert_int_equal(in.nwild, 0);
            for (int k = 0; k < TB_EVENT_SEGMENTS_MAX; k++)
                assert_int_equal(in.depths[k], 0);
            tb__interest_destroy(&in);
        }
    }
}

/* Counted: interest lasts until the last of several adds is removed. */
static void test_counts(void **state)
{
    (void)state;
    tb__interest in;
    tb__interest_init(&in);
    tb__pattern a = pat("a.*");
    tb__pattern b = pat("b.c");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(tb__interest_add(&in, &a), 0);
        assert_int_equal(tb__interest_add(&in, &b), 0);
    }
    for (int i = 0; i < 2; i++) {
        tb__interest_remove(&in, &a);
        tb__interest_remove(&in, &b);
        assert_true(wants(&in, "a.x"));
        assert_true(wants(&in, "b.c"));
    }
    tb__interest_remove(&in, &a);
    tb__interest_remove(&in, &b);
    assert_false(wants(&in, "a.x"));
    assert_false(wants(&in, "b.c"));
    assert_int_equal(in.nexact, 0);
    assert_int_equal(in.nwild, 0);
    tb__interest_destroy(&in);
}

static int app_wants(tb_app *app, const char *name)
{
    tb__name n;
    if (tb__name_split(&n, name) != 0)
        return -1; /* a test bug: never a valid answer */
    return tb__app_wants(app, &n);
}

/* Through a running app: waiters and subscriptions on workers make the
 * process want their names; when they go, it stops wanting them. */
typedef struct {
    th_counter waiting, release;
} wctx;

static int exact_waiter(tb_task *self, void *arg)
{
    wctx *c = arg;
    tb_sub *s = tb_sub_open(self, "job.done", 0, NULL);
    TH_CHECK(s != NULL);
    th_counter_add(&c->waiting, 1);
    th_task_wait_ge(self, &c->release, 1, 5000);
    return 0; /* the subscription closes with the task */
}

static int wild_waiter(tb_task *self, void *arg)
{
    wctx *c = arg;
    th_counter_add(&c->waiting, 1);
    tb_event *ev = NULL;
    int rc = tb_event_wait(self, "job.<id>.progress", 5000, &ev);
    TH_CHECK_RC(rc, 0);
    tb_event_unref(ev);
    return 0;
}

TH_APP_TEST(test_app_wants_follows_listeners, th_app_new(2, 2000), 20000)
{
    static wctx ctx;
    wctx *c = &ctx;
    TH_CHECK(!app_wants(app, "job.done"));
    TH_CHECK(!app_wants(app, "job.7.progress"));
    TH_CHECK_RC(th_add(app, "exact", 0, exact_waiter, c, NULL), 0);
    TH_CHECK_RC(th_add(app, "wild", 1, wild_waiter, c, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&c->waiting, 2, 5000));
    /* The wild waiter counts itself just before it waits: give it a
     * moment to get there (the check below polls, bounded). */
    for (int i = 0; i < 500 && !app_wants(app, "job.7.progress"); i++)
        th_nap_ms(2);
    TH_CHECK(app_wants(app, "job.done"));
    TH_CHECK(app_wants(app, "job.7.progress"));
    TH_CHECK(!app_wants(app, "job.7.done"));

    TH_CHECK_RC(tb_dispatch(app, "job.7.progress", "50", 2, NULL), 0);
    th_counter_add(&c->release, 1);
    TH_CHECK(th_wait_state(app, "wild", TB_TASK_DONE, 5000));
    TH_CHECK(th_wait_state(app, "exact", TB_TASK_DONE, 5000));
    TH_CHECK(!app_wants(app, "job.done"));
    TH_CHECK(!app_wants(app, "job.7.progress"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_wants_nothing),
        cmocka_unit_test(test_exact_and_wildcards),
        cmocka_unit_test(test_tail_wildcard),
        cmocka_unit_test(test_prefix_groups),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_app_wants_follows_listeners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
