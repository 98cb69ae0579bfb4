/* test_cluster.c - unit tests for service/cluster.c on the memory bus,
 * where this instance is the cluster: the same calls answer for it (get,
 * cancel, paged lists with cursors), names are not claimed anywhere, and
 * control messages from outside are checked before they are believed. The
 * calls between instances over Redis are in tests/integration
 * (cluster_suite.py, test_redis_bus.c). */
#include "harness.h"

#include <jansson.h>

#include "bus.h"
#include "cluster.h"
#include "internal.h"

static int sleeper(tb_task *self, void *ud)
{
    (void)ud;
    return tb_sleep(self, 60000);
}

static int quick(tb_task *self, void *ud)
{
    (void)self;
    (void)ud;
    return 0;
}

/* get and cancel by name: the task object with its instance, replicas,
 * and the final state the cancel waited for. */
TH_APP_TEST(test_get_and_cancel, th_app_new(2, 2000), 10000)
{
    TH_CHECK(!tb__cluster_on(app)); /* the memory bus has no cluster */
    TH_CHECK_RC(th_add(app, "job1", 0, sleeper, NULL, NULL), 0);
    TH_CHECK(th_wait_state(app, "job1", TB_TASK_RUNNING, 2000));
    for (int local = 0; local < 2; local++) {
        json_t *o = NULL;
        TH_CHECK_RC(tb__cluster_get(app, "job1", local, &o), 0);
        TH_CHECK_STR(json_string_value(json_object_get(o, "instance")),
                     tb_app_instance(app));
        TH_CHECK_STR(json_string_value(json_object_get(o, "state")), "running");
        TH_CHECK(json_integer_value(json_object_get(o, "replicas")) == 1);
        json_decref(o);
    }
    json_t *o = NULL;
    TH_CHECK_RC(tb__cluster_get(app, "nobody", 0, &o), TB_ENOENT);
    TH_CHECK(o == NULL);

    /* The C API: the same, as structs. */
    tb_cluster_task ct;
    TH_CHECK_RC(tb_cluster_get(app, "job1", &ct), 0);
    TH_CHECK_STR(ct.task.name, "job1");
    TH_CHECK_STR(ct.instance, tb_app_instance(app));
    TH_CHECK(ct.task.state == TB_TASK_RUNNING);
    TH_CHECK(ct.task.started_us > 0);
    TH_CHECK(ct.replicas == 1);
    TH_CHECK_RC(tb_cluster_cancel(app, "job1", 2000, &ct), 0);
    TH_CHECK(ct.task.state == TB_TASK_CANCELLED);
    TH_CHECK(ct.task.ended_us >= ct.task.started_us);
    TH_CHECK_RC(tb_cluster_cancel(app, "job1", 2000, &ct), 0); /* idempotent */
    TH_CHECK_RC(tb_cluster_cancel(app, "nobody", 2000, NULL), TB_ENOENT);
}

/* A cancel that the task ignores past the timeout: TB_ETIMEDOUT with the
 * state it had then. */
static th_counter stubborn_in;
static int stubborn(tb_task *self, void *ud)
{
    (void)ud;
    th_counter_add(&stubborn_in, 1);
    for (int i = 0; i < 10; i++)
        tb_sleep(self, 30); /* ignores its cancellation for 300 ms */
    return 0;
}

TH_APP_TEST(test_cancel_timeout, th_app_new(2, 3000), 10000)
{
    TH_CHECK_RC(th_add(app, "mule", 1, stubborn, NULL, NULL), 0);
    TH_CHECK(th_counter_wait_ge(&stubborn_in, 1, 2000));
    json_t *o = NULL;
    TH_CHECK_RC(tb__cluster_cancel(app, "mule", 100, 0, &o), TB_ETIMEDOUT);
    TH_CHECK(o != NULL);
    TH_CHECK_STR(json_string_value(json_object_get(o, "state")), "running");
    TH_CHECK(json_is_true(json_object_get(o, "cancel_requested")));
    json_decref(o);
}

/* 25 tasks paged 10 at a time: each exactly once, in id order, the cursor
 * empty after the last page; state filters; bad cursors refused. */
TH_APP_TEST(test_paging, th_app_new(2, 2000), 10000)
{
    enum {
        N = 25
    };
    for (int i = 0; i < N; i++)
        TH_CHECK_RC(tb_task_add(app, i % 2 ? sleeper : quick, NULL, NULL, NULL),
                    0);
    char cursor[TB_CURSOR_MAX] = "";
    int seen[N + 1] = {0}, pages = 0;
    json_int_t last = 0;
    do {
        json_t *tasks = NULL, *unreachable = NULL;
        char next[TB_CURSOR_MAX];
        TH_CHECK_RC(tb__cluster_list(app, cursor, 10, NULL, 0, &tasks, next,
                                     &unreachable),
                    0);
        TH_CHECK(json_array_size(tasks) <= 10);
        TH_CHECK(json_array_size(unreachable) == 0);
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t)
        {
            json_int_t id = json_integer_value(json_object_get(t, "id"));
            TH_CHECK(id > last && id <= N);
            last = id;
            seen[id]++;
            TH_CHECK_STR(json_string_value(json_object_get(t, "instance")),
                         tb_app_instance(app));
        }
        json_decref(tasks);
        json_decref(unreachable);
        snprintf(cursor, sizeof cursor, "%s", next);
        pages++;
    } while (cursor[0] && pages < 10);
    TH_CHECK(pages == 3);
    for (int i = 1; i <= N; i++)
        TH_CHECK(seen[i] == 1);

    /* The C API pages the same way. */
    tb_cluster_task *v = NULL;
    size_t n = 0, skipped = 9;
    char next[TB_CURSOR_MAX];
    TH_CHECK_RC(tb_cluster_list(app, NULL, 20, &v, &n, next, &skipped), 0);
    TH_CHECK(n == 20 && skipped == 0 && next[0]);
    free(v);
    TH_CHECK_RC(tb_cluster_list(app, next, 20, &v, &n, next, NULL), 0);
    TH_CHECKF(n == 5 && next[0] == '\0', "n %zu next \"%s\"", n, next);
    free(v);
    TH_CHECK_RC(tb_cluster_list(app, NULL, 0, &v, &n, next, NULL), TB_EINVAL);
    TH_CHECK_RC(tb_cluster_list(app, NULL, 1001, &v, &n, next, NULL),
                TB_EINVAL);

    /* Only the running ones, once every task has settled: on two workers
     * the last sleeper can start before an earlier one, and a quick task
     * that has not returned yet still reads running. */
    for (int i = 1; i <= N; i++) {
        char name[32];
        snprintf(name, sizeof name, "task-%d", i);
        TH_CHECKF(th_wait_state(app, name,
                                i % 2 ? TB_TASK_DONE : TB_TASK_RUNNING, 2000),
                  "%s never settled", name);
    }
    json_t *tasks = NULL, *unreachable = NULL;
    tb__task_filter running = {TB_TASK_RUNNING, NULL, NULL};
    TH_CHECK_RC(
        tb__cluster_list(app, "", 100, &running, 1, &tasks, next, &unreachable),
        0);
    TH_CHECK(json_array_size(tasks) == 12); /* the even ids sleep */
    json_decref(tasks);
    json_decref(unreachable);

    static const char *const bad[] = {"x",
                                      ".5",
                                      "abc.",
                                      "abc.x5",
                                      "ABC.5",
                                      "abc.5.6",
                                      "g1.2",
                                      "abc.-1",
                                      "abc. 5",
                                      " abc.5",
                                      "abcdefabcdefabcdefabc.1",
                                      "a.123456789012345678901"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tasks = unreachable = NULL;
        int rc = tb__cluster_list(app, bad[i], 10, NULL, 0, &tasks, next,
                                  &unreachable);
        TH_CHECKF(rc == TB_EINVAL, "cursor \"%s\": %s", bad[i],
                  tb_err_name(rc));
        TH_CHECK(tasks == NULL && unreachable == NULL);
    }
    /* A cursor of an instance that is gone: the listing goes on after it
     * (here: this one's id sorts after "0", so it starts from the top). */
    TH_CHECK_RC(
        tb__cluster_list(app, "0.7", 100, NULL, 0, &tasks, next, &unreachable),
        0);
    TH_CHECK(json_array_size(tasks) == N);
    json_decref(tasks);
    json_decref(unreachable);
}

/* Pages of what a filter keeps: every kept task exactly once, in id
 * order, pages full until the last, whatever the filter skips between
 * them; f->instance keeps this instance's tasks or none. */
static int pages_of(tb_app *app, const tb__task_filter *f, size_t limit,
                    int *seen, int nseen)
{
    char cursor[TB_CURSOR_MAX] = "";
    int total = 0, pages = 0;
    json_int_t last = 0;
    do {
        json_t *tasks = NULL, *unreachable = NULL;
        char next[TB_CURSOR_MAX];
        if (!TH_CHECK_RC(tb__cluster_list(app, cursor, limit, f, 0, &tasks,
                                          next, &unreachable),
                         0))
            return -1;
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t)
        {
            json_int_t id = json_integer_value(json_object_get(t, "id"));
            TH_CHECK(id > last && id < nseen);
            last = id;
            if (id > 0 && id < nseen)
                seen[id]++;
            if (f->kind && !strchr(f->kind, '\xff')) /* else U+FFFD */
                TH_CHECK_STR(json_string_value(json_object_get(t, "kind")),
                             f->kind);
            total++;
        }
        /* A page with a cursor after it is full. */
        TH_CHECK(!next[0] || json_array_size(tasks) == limit);
        json_decref(tasks);
        json_decref(unreachable);
        snprintf(cursor, sizeof cursor, "%s", next);
        pages++;
    } while (cursor[0] && pages < 100);
    return total;
}

static int kind_task(tb_task *self, void *ud)
{
    (void)self;
    (void)ud;
    return 0;
}

TH_APP_TEST(test_list_filters, th_app_new(2, 2000), 10000)
{
    enum {
        N = 40
    };
    /* Kinds a, b, b, c, a, b, b, c, ...: "c" is sparse, runs of b. The
     * last three: a kind of TB_KIND_NAME_MAX bytes (listed and matched
     * whole), a longer free-form label (listed cut: matches no filter,
     * its first 64 bytes neither), and a label that is not UTF-8 (listed
     * with U+FFFD: a filter of its own bytes still finds it). */
    static char longkind[80], kind64[TB_KIND_NAME_MAX + 1];
    memset(longkind, 'k', 70);
    memset(kind64, 'k', TB_KIND_NAME_MAX);
    static const char *const kinds[4] = {"a", "b", "b", "c"};
    for (int i = 0; i < N; i++) {
        tb_task_opts o = th_opts(NULL, TB_WORKER_ANY);
        o.kind = i == N - 1   ? longkind
                 : i == N - 2 ? kind64
                 : i == N - 3 ? "k\xff"
                              : kinds[i % 4];
        TH_CHECK_RC(tb_task_add(app, kind_task, NULL, &o, NULL), 0);
    }
    int seen[N + 1];
    for (size_t limit = 1; limit <= 7; limit += 2) {
        static const char *const want[] = {"a", "b", "c", "zzz"};
        static const int count[] = {10, 18, 9, 0};
        for (int k = 0; k < 4; k++) {
            memset(seen, 0, sizeof seen);
            tb__task_filter f = {-1, want[k], NULL};
            int got = pages_of(app, &f, limit, seen, N + 1);
            TH_CHECKF(got == count[k], "kind %s, limit %zu: %d tasks, want %d",
                      want[k], limit, got, count[k]);
            for (int id = 1; id <= N; id++)
                TH_CHECK(seen[id] <= 1);
        }
    }
    tb__task_filter f = {-1, kind64, NULL};
    TH_CHECK_EQ(pages_of(app, &f, 10, seen, N + 1), 1);
    kind64[TB_KIND_NAME_MAX - 1] = '\0';
    TH_CHECK_EQ(pages_of(app, &f, 10, seen, N + 1), 0);
    f.kind = "k\xff";
    TH_CHECK_EQ(pages_of(app, &f, 10, seen, N + 1), 1);

    /* instance: this one's, or nothing. */
    tb__task_filter self = {-1, NULL, tb_app_instance(app)};
    TH_CHECK_EQ(pages_of(app, &self, 7, seen, N + 1), N);
    tb__task_filter other = {-1, NULL, "0123456789abcdef"};
    TH_CHECK_EQ(pages_of(app, &other, 7, seen, N + 1), 0);
    tb__task_filter both = {-1, "c", tb_app_instance(app)};
    TH_CHECK_EQ(pages_of(app, &both, 2, seen, N + 1), 9);

    /* The state too, once all have finished. */
    for (int i = 1; i <= N; i++) {
        char name[32];
        snprintf(name, sizeof name, "task-%d", i);
        TH_CHECK(th_wait_state(app, name, TB_TASK_DONE, 2000));
    }
    tb__task_filter done_b = {TB_TASK_DONE, "b", NULL};
    TH_CHECK_EQ(pages_of(app, &done_b, 3, seen, N + 1), 18);
    tb__task_filter running_b = {TB_TASK_RUNNING, "b", NULL};
    TH_CHECK_EQ(pages_of(app, &running_b, 3, seen, N + 1), 0);

    TH_CHECK(tb__task_kind_is(NULL, NULL));
    TH_CHECK(!tb__task_kind_is(NULL, "a"));
    TH_CHECK(tb__task_kind_is("a", "a"));
    TH_CHECK(!tb__task_kind_is("ab", "a"));
    TH_CHECK(!tb__task_kind_is("a", "ab"));
}

/* Messages on the control channel come from outside: garbage, requests
 * with bad fields and forged answers are dropped and counted; nothing
 * crashes and nothing is answered (the memory bus could not anyway). */
TH_APP_TEST(test_bad_messages, th_app_new(1, 2000), 10000)
{
    static const char *const msgs[] = {
        "",
        "garbage",
        "[]",
        "{}",
        "{\"t\":5}",
        "{\"t\":\"what\"}",
        "{\"t\":\"req\"}",
        "{\"t\":\"req\",\"op\":\"get\",\"rid\":1,\"from\":\"XYZ\"}",
        "{\"t\":\"req\",\"op\":\"get\",\"rid\":1,\"from\":\"abc\"}",
        "{\"t\":\"req\",\"op\":\"list\",\"rid\":1,\"from\":\"abc\","
        "\"after\":-1,\"limit\":5,\"state\":-1}",
        "{\"t\":\"req\",\"op\":\"list\",\"rid\":1,\"from\":\"abc\","
        "\"after\":0,\"limit\":100000,\"state\":-1}",
        "{\"t\":\"req\",\"op\":\"cancel\",\"rid\":1,\"from\":\"abc\","
        "\"name\":\"x\",\"timeout_ms\":-5}",
        "{\"t\":\"req\",\"op\":\"nuke\",\"rid\":1,\"from\":\"abc\"}",
        "{\"t\":\"rep\",\"rid\":\"1\"}",
        "{\"t\":\"req\",\"t\":\"rep\"}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]"
        "]]]]]]]]]]]]]]]]]]]]]]",
    };
    tb__cluster_stats before, after;
    tb__cluster_stats_get(app, &before);
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        tb__cluster_message(app, msgs[i], strlen(msgs[i]));
    /* A well-formed answer to no call is simply not matched. */
    const char *orphan = "{\"t\":\"rep\",\"rid\":99,\"status\":\"ok\"}";
    tb__cluster_message(app, orphan, strlen(orphan));
    tb__cluster_stats_get(app, &after);
    TH_CHECKF(after.messages_bad - before.messages_bad ==
                  sizeof msgs / sizeof msgs[0],
              "counted %llu of %zu",
              (unsigned long long)(after.messages_bad - before.messages_bad),
              sizeof msgs / sizeof msgs[0]);
}

/* ---- releases waiting for Redis, from several threads ---- */

/* A cluster backend that never answers a release: every one waits. */
static atomic_long fake_sent;

static int fake_release(tb__bus *bus, const char *name, uint64_t id,
                        tb__kv_done_cb cb, void *ud)
{
    (void)bus;
    (void)name;
    (void)id;
    (void)cb;
    (void)ud;
    atomic_fetch_add(&fake_sent, 1);
    return 0;
}

static const tb__cluster_ops fake_cluster = {.release = fake_release};
static const tb__bus_ops fake_bus_ops = {.cluster = &fake_cluster};

static atomic_int dropped_lines;

static void count_dropped(tb_log_level level, const char *msg, void *ud)
{
    (void)level;
    (void)ud;
    if (strstr(msg, "changes wait for Redis already"))
        atomic_fetch_add(&dropped_lines, 1);
}

#define RELEASES_PER_THREAD 40000 /* two of them: past CLEANUP_MAX (65536) */

static void *release_many(void *arg)
{
    tb_app *app = arg;
    for (int i = 0; i < RELEASES_PER_THREAD; i++)
        tb__cluster_release(app, "job", (uint64_t)i + 1);
    return NULL;
}

/* Tasks end on any worker, and each end may queue a release: two threads
 * past the bound at once both log that the release is dropped, through a
 * limiter that must be theirs to share (the TSan tree runs this). At most
 * 65536 wait; the rest are dropped with a few lines, not one each. */
static void test_cleanups_from_two_threads(void **state)
{
    (void)state;
    tb_app *app = calloc(1, sizeof *app);
    assert_non_null(app);
    tb__bus bus = {.ops = &fake_bus_ops, .app = app};
    app->bus = &bus;
    app->cluster = tb__cluster_new(app);
    assert_non_null(app->cluster);
    atomic_store(&fake_sent, 0);
    atomic_store(&dropped_lines, 0);
    tb_log_set_handler(count_dropped, NULL);

    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, release_many, app), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);

    tb_log_set_handler(NULL, NULL);
    assert_int_equal(atomic_load(&fake_sent), 65536);
    int lines = atomic_load(&dropped_lines);
    /* 14464 dropped; the limiter lets 10 a second through. */
    assert_true(lines >= 1 && lines <= 100);
    tb__cluster_free(app->cluster);
    free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_cancel),
        cmocka_unit_test(test_cancel_timeout),
        cmocka_unit_test(test_paging),
        cmocka_unit_test(test_list_filters),
        cmocka_unit_test(test_bad_messages),
        cmocka_unit_test(test_cleanups_from_two_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
