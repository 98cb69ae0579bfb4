/* test_singleton.c - unit tests for service/singleton.c on the memory bus,
 * where this instance is the cluster: a singleton runs once (not once per
 * worker) with a fence, a periodic task fires once per tick and skips the
 * ticks it missed, and durations parse strictly. Leases, takeovers and
 * once-per-tick across instances need Redis: tests/integration. */
#include "harness.h"

#include <jansson.h>

#include "cluster.h"
#include "internal.h"
#include "singleton.h"

static void test_duration(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(tb__duration_ms("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(tb__duration_ms("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(tb__duration_ms("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(tb__duration_ms("1h", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(tb__duration_ms("168h", &ms), 0); /* 7 days: the max */
    assert_int_equal(ms, TB_PERIODIC_MAX_MS);
    static const char *const bad[] = {"",
                                      "s",
                                      "30",
                                      "30 s",
                                      " 30s",
                                      "30S",
                                      "-1s",
                                      "1.5s",
                                      "30sx",
                                      "0x1s",
                                      "169h",
                                      "10081m",
                                      "604800001ms",
                                      "99999999999999999999999h",
                                      "1d",
                                      NULL};
    for (int i = 0; bad[i]; i++)
        if (tb__duration_ms(bad[i], &ms) != TB_EINVAL)
            fail_msg("\"%s\" parsed as %lld ms", bad[i], (long long)ms);
    assert_int_equal(tb__duration_ms(NULL, &ms), TB_EINVAL);
}

/* ---------------------------------------------------------------- singleton */

static th_counter runs;
static atomic_uint_fast64_t fence_seen;

static int one_runner(tb_task *self, void *ud)
{
    (void)ud;
    th_counter_add(&runs, 1);
    atomic_store(&fence_seen, tb_task_fence(self));
    return tb_sleep(self, 60000);
}

static tb_app *app_with_singleton(void)
{
    tb_app *app = th_app_new(4, 2000);
    tb_task_opts o = th_opts("leader", TB_WORKER_ANY);
    o.flags = TB_TASK_SINGLETON;
    assert_int_equal(tb_task_add(app, one_runner, NULL, &o, NULL), 0);
    /* A singleton needs a name. */
    o.name = NULL;
    assert_int_equal(tb_task_add(app, one_runner, NULL, &o, NULL), TB_EINVAL);
    return app;
}

/* Added before run on a 4-worker app: one run, not four, with a fence the
 * task sees; while running, TB_TASK_SINGLETON wants a kind. */
TH_APP_TEST(test_singleton_runs_once, app_with_singleton(), 10000)
{
    TH_CHECK(th_wait_state(app, "leader", TB_TASK_RUNNING, 2000));
    th_nap_ms(100);
    TH_CHECK(th_counter_get(&runs) == 1);
    TH_CHECK(th_count_named(app, "leader", -1, NULL, NULL) == 1);
    TH_CHECK(atomic_load(&fence_seen) > 0);
    json_t *o = NULL;
    TH_CHECK_RC(tb__cluster_get(app, "leader", 0, &o), 0);
    TH_CHECK(json_is_true(json_object_get(o, "singleton")));
    TH_CHECK((uint64_t)json_integer_value(json_object_get(o, "fence")) ==
             atomic_load(&fence_seen));
    json_decref(o);
    tb_task_opts opts = th_opts("other", TB_WORKER_ANY);
    opts.flags = TB_TASK_SINGLETON;
    TH_CHECK_RC(tb_task_add(app, one_runner, NULL, &opts, NULL), TB_EINVAL);
}

/* While running, through a kind: runs here (the memory bus's cluster is
 * this instance); its name is then taken; fences grow. */
static tb_app *app_with_kinds(void)
{
    tb_app *app = th_app_new(2, 2000);
    assert_int_equal(tb_app_add_builtin_kinds(app), 0);
    return app;
}

TH_APP_TEST(test_singleton_spawn, app_with_kinds(), 10000)
{
    tb_task_opts o = th_opts("s1", TB_WORKER_ANY);
    o.flags = TB_TASK_SINGLETON;
    char err[256];
    uint64_t id = 0;
    TH_CHECK_RC(tb_task_spawn(app, "sleep", "{\"seconds\":60}", &o, &id, err,
                              sizeof err),
                0);
    TH_CHECK(id > 0);
    TH_CHECK(th_wait_state(app, "s1", TB_TASK_RUNNING, 2000));
    TH_CHECK_RC(tb_task_spawn(app, "sleep", "{\"seconds\":60}", &o, NULL, err,
                              sizeof err),
                TB_EEXIST);
    json_t *a = NULL;
    TH_CHECK_RC(tb__cluster_get(app, "s1", 0, &a), 0);
    json_int_t f1 = json_integer_value(json_object_get(a, "fence"));
    json_decref(a);
    TH_CHECK_RC(tb_task_cancel(app, "s1", 2000), 0);
    /* Ended for good; spawned again, a higher fence. */
    o.name = "s2";
    TH_CHECK_RC(tb_task_spawn(app, "sleep", "{\"seconds\":60}", &o, NULL, err,
                              sizeof err),
                0);
    TH_CHECK_RC(tb__cluster_get(app, "s2", 0, &a), 0);
    TH_CHECK(json_integer_value(json_object_get(a, "fence")) > f1);
    json_decref(a);
    /* Bad arguments are refused before anything is defined. */
    o.name = "s3";
    TH_CHECK_RC(tb_task_spawn(app, "sleep", "{\"seconds\":\"x\"}", &o, NULL,
                              err, sizeof err),
                TB_EINVAL);
    TH_CHECK_RC(tb_task_get(app, "s3", NULL), TB_ENOENT);
}

/* ---------------------------------------------------------------- periodic */

static th_counter ticks;

static int ticker(tb_task *self, void *ud)
{
    (void)self;
    (void)ud;
    th_counter_add(&ticks, 1);
    return 0;
}

static tb_app *app_with_periodic(void)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.graceful_timeout_ms = 2000;
    cfg.core.periodic_min_ms = 10;
    tb_app *app = th_app_new_cfg(&cfg);
    tb_task_opts o = th_opts("tick", TB_WORKER_ANY);
    assert_int_equal(tb_task_add_every(app, ticker, NULL, &o, 9), TB_EINVAL);
    assert_int_equal(
        tb_task_add_every(app, ticker, NULL, &o, TB_PERIODIC_MAX_MS + 1),
        TB_EINVAL);
    o.name = NULL;
    assert_int_equal(tb_task_add_every(app, ticker, NULL, &o, 100), TB_EINVAL);
    o.name = "tick";
    assert_int_equal(tb_task_add_every(app, ticker, NULL, &o, 100), 0);
    return app;
}

/* Every 100 ms for about a second: once per tick, not once per worker
 * (never more runs than ticks passed; a busy machine may make it skip
 * some, which is allowed), recorded in the task object. */
TH_APP_TEST(test_periodic_fires_once_per_tick, app_with_periodic(), 10000)
{
    TH_CHECK(th_wait_state(app, "tick", TB_TASK_RUNNING, 2000));
    int64_t t0 = th_real_us();
    long start = th_counter_get(&ticks);
    th_nap_ms(1050);
    long n = th_counter_get(&ticks) - start;
    int64_t passed = th_real_us() / 100000 - t0 / 100000;
    /* + 1: the run of the tick before t0 may count after start was read. */
    TH_CHECKF(n <= passed + 1, "%ld runs for %lld ticks at 100 ms", n,
              (long long)passed);
    /* It does fire: three more runs well within the hang bound. */
    for (int i = 0; i < 500 && th_counter_get(&ticks) - start < n + 3; i++)
        th_nap_ms(10);
    TH_CHECKF(th_counter_get(&ticks) - start >= n + 3,
              "%ld runs in 5 s more at 100 ms",
              th_counter_get(&ticks) - start - n);
    n = th_counter_get(&ticks) - start;
    json_t *o = NULL;
    TH_CHECK_RC(tb__cluster_get(app, "tick", 0, &o), 0);
    TH_CHECK_STR(json_string_value(json_object_get(o, "every")), "100ms");
    /* - 1: a run is counted once its action returned and was joined; the
     * action itself counted n before that. */
    TH_CHECK(json_integer_value(json_object_get(o, "runs")) >= n - 1);
    TH_CHECK_STR(json_string_value(json_object_get(o, "last_state")), "done");
    TH_CHECK(json_integer_value(json_object_get(o, "last_result")) == 0);
    TH_CHECK(json_is_string(json_object_get(o, "next_run")));
    json_decref(o);
    /* Its runs leave nothing behind in the registry. */
    TH_CHECK(th_count_named(app, "tick", -1, NULL, NULL) == 1);
    tb_task_info *list = NULL;
    size_t len = 0;
    TH_CHECK(tb_task_list(app, &list, &len) >= 0);
    TH_CHECKF(len <= 3, "%zu tasks listed", len);
    free(list);
    /* Cancelled, it fires no more. */
    TH_CHECK_RC(tb_task_cancel(app, "tick", 2000), 0);
    long after = th_counter_get(&ticks);
    th_nap_ms(300);
    TH_CHECK(th_counter_get(&ticks) == after);
}

/* While running, through a kind, with its errors. */
TH_APP_TEST(test_periodic_spawn, app_with_kinds(), 10000)
{
    tb_task_opts o = th_opts("beat", TB_WORKER_ANY);
    char err[256];
    uint64_t id = 0;
    TH_CHECK_RC(tb_task_spawn_every(app, "sleep", "{\"seconds\":0}", &o, 999,
                                    &id, err, sizeof err),
                TB_EINVAL); /* below core.periodic_min_ms (1000) */
    TH_CHECK(strstr(err, "every_ms") != NULL);
    TH_CHECK_RC(
        tb_task_spawn_every(app, "nope", NULL, &o, 1000, &id, err, sizeof err),
        TB_ENOENT);
    TH_CHECK_RC(tb_task_spawn_every(app, "sleep", "{\"seconds\":0}", &o, 1000,
                                    &id, err, sizeof err),
                0);
    TH_CHECK(id > 0);
    TH_CHECK_RC(tb_task_spawn_every(app, "sleep", "{\"seconds\":0}", &o, 1000,
                                    &id, err, sizeof err),
                TB_EEXIST);
    TH_CHECK_RC(tb_task_cancel(app, "beat", 2000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_singleton_runs_once),
        cmocka_unit_test(test_singleton_spawn),
        cmocka_unit_test(test_periodic_fires_once_per_tick),
        cmocka_unit_test(test_periodic_spawn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
