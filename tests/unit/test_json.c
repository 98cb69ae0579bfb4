/* test_json.c - unit tests for service/json.c: the depth bound on JSON from
 * outside, at its edge, and that the deepest JSON it lets through can be
 * parsed, dumped and freed on the smallest task stack the config allows. */
#include "harness.h"

#include <jansson.h>

#include "internal.h"
#include "json.h"

/* depth levels of open (one of "[{"), then the matching closes; objects
 * get a key. Returns a malloc'd NUL-terminated text. */
static char *nested(int depth, const char *open)
{
    size_t cap = (size_t)depth * 8 + 16;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t n = 0;
    for (int i = 0; i < depth; i++) {
        char o = open[i % strlen(open)];
        if (o == '{')
            n += (size_t)snprintf(s + n, cap - n, "{\"k\":");
        else
            s[n++] = '[';
    }
    s[n++] = '1';
    for (int i = depth - 1; i >= 0; i--)
        s[n++] = open[i % strlen(open)] == '{' ? '}' : ']';
    s[n] = '\0';
    return s;
}

static void test_edge(void **state)
{
    (void)state;
    for (int max = 1; max <= 70; max++) {
        char *at = nested(max, "[{");
        char *over = nested(max + 1, "[{");
        assert_false(tb__json_too_deep(at, strlen(at), max));
        assert_true(tb__json_too_deep(over, strlen(over), max));
        json_error_t e;
        json_t *j = tb__json_loadb(at, strlen(at), 0, max, &e);
        assert_non_null(j);
        json_decref(j);
        assert_null(tb__json_loadb(over, strlen(over), 0, max, &e));
        assert_non_null(strstr(e.text, "json_max_depth"));
        free(at);
        free(over);
    }
}

static void test_scalars_and_siblings(void **state)
{
    (void)state;
    assert_false(tb__json_too_deep("1", 1, 1));
    assert_false(tb__json_too_deep("", 0, 1));
    /* Siblings do not add up: depth is nesting, not count. */
    const char *flat = "[[1],[2],{\"a\":[3]},[[4]]]";
    assert_false(tb__json_too_deep(flat, strlen(flat), 3));
    assert_true(tb__json_too_deep(flat, strlen(flat), 2));
}

static void test_strings_do_not_nest(void **state)
{
    (void)state;
    /* Brackets in strings, escaped quotes and backslashes. */
    const char *s = "[\"[[[[{{{{\", \"\\\"[[[[\", \"\\\\\", [\"]]]]\"]]";
    assert_false(tb__json_too_deep(s, strlen(s), 2));
    assert_true(tb__json_too_deep(s, strlen(s), 1));
    json_t *j = tb__json_loadb(s, strlen(s), 0, 2, NULL);
    assert_non_null(j);
    json_decref(j);
    /* An unterminated string hides what follows; jansson refuses it. */
    const char *u = "[\"abc[[[[[[";
    assert_false(tb__json_too_deep(u, strlen(u), 1));
    assert_null(tb__json_loadb(u, strlen(u), 0, 1, NULL));
}

/* What the fuzzing found: thousands of levels are refused before jansson
 * recurses, even where jansson itself would try (its own limit is 2048). */
static void test_hostile(void **state)
{
    (void)state;
    char *deep = nested(100000, "[");
    json_error_t e;
    assert_null(tb__json_loadb(deep, strlen(deep), 0, 64, &e));
    assert_int_equal(e.position, 64);
    free(deep);
    /* Unbalanced closes do not go negative and hide opens. */
    const char *odd = "]]]]]]]][[";
    assert_true(tb__json_too_deep(odd, strlen(odd), 1));
}

static void test_config(void **state)
{
    (void)state;
    tb_app_config c;
    tb_app_config_init(&c);
    tb_log_set_level(TB_LOG_OFF);
    tb_app *app = tb_app_new(&c, NULL);
    assert_non_null(app);
    assert_int_equal(tb_app_get_config(app)->core.json_max_depth, 64);
    tb_app_free(app);

    c.core.stack_size = 16 * 1024; /* automatic: what half the stack holds */
    app = tb_app_new(&c, NULL);
    assert_non_null(app);
    assert_int_equal(tb_app_get_config(app)->core.json_max_depth, 16);
    tb_app_free(app);

    int err = 0;
    c.core.json_max_depth = 17; /* too deep for 16 KiB */
    assert_null(tb_app_new(&c, &err));
    assert_int_equal(err, TB_EINVAL);
    c.core.json_max_depth = 16;
    app = tb_app_new(&c, NULL);
    assert_non_null(app);
    tb_app_free(app);
    c.core.json_max_depth = -1;
    assert_null(tb_app_new(&c, &err));
    c.core.stack_size = 2 << 20;
    c.core.json_max_depth = 1001;
    assert_null(tb_app_new(&c, &err));
    c.core.json_max_depth = 1000;
    app = tb_app_new(&c, NULL);
    assert_non_null(app);
    tb_app_free(app);
}

/* An app of one worker whose tasks have the smallest stack the config
 * allows (core.stack_size 16 KiB). */
static tb_app *smallest_stack_app(void)
{
    tb_app_config c;
    tb_app_config_init(&c);
    c.core.workers = 1;
    c.core.stack_size = 16 * 1024;
    return th_app_new_cfg(&c);
}

/* In a task on the smallest stack with half of it already in use, the
 * deepest JSON json_max_depth allows is parsed, dumped and freed, and an
 * event's envelope built around data one level less deep: if a level took
 * more stack than the config assumes (TB__JSON_STACK_PER_LEVEL at 256
 * instead of 512 fails here), this overflows into the guard page and the
 * test dies. */
static int deepest_body(tb_task *self, void *ctx);

/* The levels must fit in half the stack (the other half is for whoever
 * parses): take about half first, then parse. Sanitizers make this file's
 * and the library's frames larger (jansson's are not): less padding. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PAD_KIB 3
#else
#define PAD_KIB 6
#endif

static __attribute__((noinline)) int half_used(tb_task *self, void *ctx)
{
    volatile char pad[PAD_KIB * 1024];
    memset((char *)pad, 1, sizeof pad);
    int rc = deepest_body(self, ctx);
    return rc + pad[sizeof pad - 1] - 1;
}

static int deepest_body(tb_task *self, void *ctx)
{
    (void)ctx;
    tb_app *app = tb_task_app(self);
    int max = tb_app_get_config(app)->core.json_max_depth;
    char *text = nested(max, "[{");
    json_t *j = tb__json_loadb(text, strlen(text), 0, max, NULL);
    TH_CHECK(j != NULL);
    char *dumped = json_dumps(j, JSON_COMPACT);
    TH_CHECK(dumped != NULL);
    free(dumped);
    json_decref(j);
    free(text);

    text = nested(max - 1, "[{");
    tb_event *ev = tb__event_new(app, "a.b", text, strlen(text), NULL, NULL, 0);
    const char *env = tb_event_json(ev, NULL);
    TH_CHECK(env != NULL);
    /* Carried as JSON, not as a string: "data":[ or "data":{ */
    TH_CHECK(env && (strstr(env, "\"data\":[") || strstr(env, "\"data\":{")));
    tb_event_unref(ev);
    free(text);
    return 0;
}

TH_TASK_TEST(test_deepest_fits_smallest_stack, smallest_stack_app(), 0, 10000)
{
    TH_CHECK(half_used(self, NULL) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge),
        cmocka_unit_test(test_scalars_and_siblings),
        cmocka_unit_test(test_strings_do_not_nest),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_deepest_fits_smallest_stack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
