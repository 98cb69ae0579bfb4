/* test_instances.c - unit tests for service/instances.c: what a record
 * from the store must be to be believed, and the GET /instances body of an
 * app on the memory bus (itself alone; its record gone after a stop). */
#include "harness.h"

#include <jansson.h>

#include "instances.h"
#include "internal.h"

static const char good[] =
    "{\"id\":\"abc123\",\"host\":\"h1\",\"listen\":\"127.0.0.1:8080\","
    "\"version\":\"0.1.0\",\"workers\":4,\"started\":"
    "\"2026-12-06T10:00:00.000000Z\",\"bus\":\"redis\",\"extra\":[1,2]}";

static void expect_refused(const char *id, const char *value, const char *why)
{
    const char *got = NULL;
    json_t *o = tb__instance_parse(id, strlen(id), value, strlen(value), &got);
    if (o) {
        char *s = json_dumps(o, 0);
        fail_msg("believed %s: %s", value, s);
    }
    assert_non_null(got);
    if (!strstr(got, why))
        fail_msg("refused %s because \"%s\", want \"%s\"", value, got, why);
}

static void test_instance_parse(void **state)
{
    (void)state;
    const char *why = "unset";
    json_t *o = tb__instance_parse("abc123", 6, good, strlen(good), &why);
    assert_non_null(o);
    assert_null(why);
    /* The known fields, nothing else. */
    assert_int_equal(json_object_size(o), 7);
    assert_null(json_object_get(o, "extra"));
    assert_int_equal(json_integer_value(json_object_get(o, "workers")), 4);
    assert_string_equal(json_string_value(json_object_get(o, "listen")),
                        "127.0.0.1:8080");
    json_decref(o);

    /* listen may be null (an instance without HTTP). */
    const char *nolisten =
        "{\"id\":\"n\",\"host\":\"h\",\"listen\":null,\"version\":\"1\","
        "\"workers\":1,\"started\":\"t\",\"bus\":\"redis\"}";
    o = tb__instance_parse("n", 1, nolisten, strlen(nolisten), &why);
    assert_non_null(o);
    json_decref(o);

    expect_refused("abc123", "garbage", "not a JSON object");
    expect_refused("abc123", "[1,2,3]", "not a JSON object");
    expect_refused("abc123", "{\"id\":\"abc123\"", "not a JSON object");
    expect_refused("other", good, "id does not match");
    expect_refused("bad id", good, "bad id");
    expect_refused("x",
                   "{\"id\":\"x\",\"host\":7,\"listen\":null,\"version\":\"1\","
                   "\"workers\":1,\"started\":\"t\",\"bus\":\"redis\"}",
                   "missing or oversize");
    expect_refused(
        "x",
        "{\"id\":\"x\",\"host\":\"h\",\"listen\":null,\"version\":\"1\","
        "\"workers\":0,\"started\":\"t\",\"bus\":\"redis\"}",
        "bad workers");
    expect_refused(
        "x",
        "{\"id\":\"x\",\"host\":\"h\",\"listen\":null,\"version\":\"1\","
        "\"workers\":\"2\",\"started\":\"t\",\"bus\":\"redis\"}",
        "bad workers");
    expect_refused("x",
                   "{\"id\":\"x\",\"host\":\"h\",\"listen\":null,"
                   "\"version\":\"1\",\"workers\":1,\"started\":\"t\"}",
                   "missing or oversize");
    expect_refused("x", "{\"id\":\"x\",\"id\":\"x\"}", "not a JSON object");
    /* Nested past the depth limit: refused before jansson recurses. */
    expect_refused("x", "{\"id\":\"x\",\"host\":[[[[[[[[1]]]]]]]]}",
                   "not a JSON object");

    char host[400];
    memset(host, 'h', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    char big[1024];
    snprintf(big, sizeof big,
             "{\"id\":\"x\",\"host\":\"%s\",\"listen\":null,"
             "\"version\":\"1\",\"workers\":1,\"started\":\"t\","
             "\"bus\":\"redis\"}",
             host);
    expect_refused("x", big, "missing or oversize");

    char *huge = malloc(TB__KV_VALUE_MAX + 2);
    memset(huge, ' ', TB__KV_VALUE_MAX + 1);
    huge[TB__KV_VALUE_MAX + 1] = '\0';
    expect_refused("x", huge, "oversize");
    free(huge);
}

/* An app on the memory bus: GET /instances's body lists it alone. */
static int run_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    json_t **out = arg;
    *out = tb__instances_json(app->instances);
    tb_app_stop(app);
    return 0;
}

static void test_memory_app_lists_itself(void **state)
{
    (void)state;
    tb_app *app = th_memory_app();
    json_t *body = NULL;
    assert_int_equal(tb_app_add_listener(app, TB_MAIN_READY, run_ready, &body),
                     0);
    assert_int_equal(tb_app_run(app), 0);
    assert_non_null(body);
    json_t *arr = json_object_get(body, "instances");
    assert_int_equal(json_array_size(arr), 1);
    json_t *me = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(me, "id")),
                        app->instance);
    assert_true(json_is_true(json_object_get(me, "self")));
    assert_true(json_is_null(json_object_get(me, "listen")));
    assert_string_equal(json_string_value(json_object_get(me, "bus")),
                        "memory");
    assert_int_equal(json_integer_value(json_object_get(me, "workers")),
                     app->nworkers);
    assert_string_equal(json_string_value(json_object_get(me, "version")),
                        TB_VERSION_STRING);
    /* A clean stop removed the record from the store. */
    th_kv_seen s = {0};
    app->bus->ops->kv->list(app->bus, "instance", th_kv_on_list, &s);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.n, 0);
    json_decref(body);
    tb_app_free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instance_parse),
        cmocka_unit_test(test_memory_app_lists_itself),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
