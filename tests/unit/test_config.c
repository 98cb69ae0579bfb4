/* test_config.c - unit tests for service/config.c: the settings table as
 * tools see it (tb_config_settings, tb_config_set, tb_config_format), the
 * URL type that prints without its password, the forms of string settings. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "taskbus/taskbus.h"

/* A setting by name or flag, as tb_config_set finds it. */
static const tb_config_setting *setting(const char *key)
{
    size_t n;
    const tb_config_setting *t = tb_config_settings(&n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, key) == 0 ||
            (t[i].flag && strcmp(t[i].flag, key) == 0))
            return &t[i];
    fail_msg("no setting %s", key);
    return NULL;
}

/* Sets key to value in a fresh config and formats it back. */
static void set_and_format(const char *key, const char *value, const char *want)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    char err[256] = "";
    int rc = tb_config_set(&cfg, key, value, err, sizeof err);
    if (rc != 0)
        fail_msg("tb_config_set(%s, %s): %s (%s)", key, value, tb_err_name(rc),
                 err);
    char out[256];
    int n = tb_config_format(&cfg, setting(key), out, sizeof out);
    if (n < 0 || strcmp(out, want) != 0)
        fail_msg("%s=%s formats as \"%s\" (%d), want \"%s\"", key, value, out,
                 n, want);
    assert_int_equal((size_t)n, strlen(want));
}

static void test_url_is_redacted(void **state)
{
    (void)state;
    assert_int_equal(setting("redis.url")->type, TB_CONFIG_URL);
    set_and_format("redis.url", "redis://127.0.0.1:6379",
                   "redis://127.0.0.1:6379");
    set_and_format("redis-url", "redis://app:s3cret@db:6380/2",
                   "redis://app:***@db:6380/2");
    /* A password shorter than the mask still fits. */
    set_and_format("redis.url", "redis://:x@h", "redis://:***@h");
    /* Userinfo without ':' may be a password: hidden whole. */
    set_and_format("redis.url", "redis://token@h:1", "redis://***@h:1");
    set_and_format("redis.url", "unix://u:pw@/run/redis.sock?db=1",
                   "unix://u:***@/run/redis.sock?db=1");
    set_and_format("redis.url", "", "");

    /* Too small a buffer: an error, never a cut that shows the password. */
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.redis.url = "redis://user:password@host:6379";
    char small[16];
    assert_int_equal(
        tb_config_format(&cfg, setting("redis.url"), small, sizeof small),
        TB_ENAMETOOLONG);
    char out[64];
    assert_int_equal(
        tb_config_format(&cfg, setting("redis.url"), out, sizeof out),
        (int)strlen("redis://user:***@host:6379"));
    assert_null(strstr(out, "password"));
}

static void test_secret_is_hidden(void **state)
{
    (void)state;
    set_and_format("token", "tok-123", "(set)");
    set_and_format("http.api_token", "", "");
}

/* Seconds come back exactly as set (they are kept in ms): "%g" printed
 * 1234.567 as 1234.57 and 3599.999 as 3600. */
static void test_seconds_exact(void **state)
{
    (void)state;
    set_and_format("graceful-timeout", "1234.567", "1234.567");
    set_and_format("graceful-timeout", "3599.999", "3599.999");
    set_and_format("graceful-timeout", "1.5", "1.5");
    set_and_format("graceful-timeout", "0.05", "0.05");
    set_and_format("graceful-timeout", "15", "15");
    set_and_format("shutdown-delay", "0", "0");
}

/* What C embedders set keeps the range it had before the table: long
 * timeouts and queues up to what an int holds; a bool is any int. */
static void test_wide_c_ranges(void **state)
{
    (void)state;
    tb_log_set_level(TB_LOG_OFF);
    tb_app_config c;
    tb_app_config_init(&c);
    c.core.graceful_timeout_ms = 2 * 3600 * 1000;
    c.redis.publish_retry_ms = 2 * 86400 * 1000;
    c.redis.command_timeout_ms = 0x7fffffff;
    c.ws.ping_interval_ms = 2 * 86400 * 1000;
    c.core.handle_signals = 2;
    int err = 0;
    tb_app *app = tb_app_new(&c, &err);
    if (!app)
        fail_msg("tb_app_new: %s", tb_err_name(err));
    tb_app_free(app);
    c.core.graceful_timeout_ms = -1;
    assert_null(tb_app_new(&c, &err));
    assert_int_equal(err, TB_EINVAL);
}

static void test_listen_form(void **state)
{
    (void)state;
    set_and_format("listen", "127.0.0.1:8080", "127.0.0.1:8080");
    set_and_format("http.listen", "localhost:1", "localhost:1");
    set_and_format("http.listen", "", "");
    static const char *const bad[] = {
        "300.1.1.1:80", "127.0.0.1",  "127.0.0.1:0", "127.0.0.1:65536",
        ":8080",        "[::1]:8080", "host:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tb_app_config cfg;
        tb_app_config_init(&cfg);
        const char *before = cfg.http.listen;
        char err[256] = "";
        int rc = tb_config_set(&cfg, "listen", bad[i], err, sizeof err);
        if (rc != TB_EINVAL || !strstr(err, "http.listen") ||
            !strstr(err, bad[i]))
            fail_msg("listen %s: %s, \"%s\"", bad[i], tb_err_name(rc), err);
        assert_ptr_equal(cfg.http.listen, before);
    }
}

static void test_namespace_form(void **state)
{
    (void)state;
    set_and_format("namespace", "tenant-1.prod_x", "tenant-1.prod_x");
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    char err[256] = "";
    assert_int_equal(tb_config_set(&cfg, "namespace", "a:b", err, sizeof err),
                     TB_EINVAL);
    assert_non_null(strstr(err, "core.event_namespace"));
    assert_non_null(strstr(err, "\"a:b\""));
    assert_string_equal(cfg.core.event_namespace, "taskbus");
}

static void test_unknown_setting(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    char err[128] = "";
    assert_int_equal(tb_config_set(&cfg, "nope", "1", err, sizeof err),
                     TB_ENOENT);
    assert_non_null(strstr(err, "nope"));
}

/* The history's settings at their edges: accepted at min and max,
 * refused one step beyond, and what tb_app_new gets. */
static void test_history_bounds(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *value;
        int ok;
    } cases[] = {
        {"history-size", "0", 1},
        {"history-size", "-1", 0},
        {"history-size", "16777216", 1},
        {"history-size", "16777217", 0},
        {"history-ttl", "1", 1},
        {"history-ttl", "0.999", 0},
        {"history-ttl", "2592000", 1},
        {"history-ttl", "2592000.001", 0},
        {"history-page-max", "1", 1},
        {"history-page-max", "0", 0},
        {"history-page-max", "100000", 1},
        {"history-page-max", "100001", 0},
        {"history-max-bytes", "1024", 1},
        {"history-max-bytes", "1023", 0},
        {"history-max-bytes", "68719476736", 1},
        {"history-max-bytes", "68719476737", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tb_app_config cfg;
        tb_app_config_init(&cfg);
        char err[256] = "";
        int rc =
            tb_config_set(&cfg, cases[i].flag, cases[i].value, err, sizeof err);
        if (rc != (cases[i].ok ? 0 : TB_EINVAL))
            fail_msg("%s=%s: %d (%s)", cases[i].flag, cases[i].value, rc, err);
        if (!cases[i].ok)
            assert_non_null(strstr(err, "core.history_"));
    }
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    assert_int_equal(cfg.core.history_size, 10000);
    assert_int_equal(cfg.core.history_ttl_ms, 300000);
    assert_int_equal(cfg.core.history_page_max, 1000);
    assert_int_equal(cfg.core.history_max_bytes, 64 << 20);
    assert_int_equal(tb_config_set(&cfg, "history-ttl", "1.5", NULL, 0), 0);
    assert_int_equal(cfg.core.history_ttl_ms, 1500);
}

/* tb_app_new's verdict on cfg: 0, or its error. */
static int app_check(const tb_app_config *cfg)
{
    int err = 0;
    tb_app *app = tb_app_new(cfg, &err);
    if (app)
        tb_app_free(app);
    return app ? 0 : err;
}

/* redis.wait_replicas at its edges, and the rules across settings: it
 * needs history on, and its timeout below the command timeout. */
static void test_wait_replicas(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    assert_int_equal(cfg.redis.wait_replicas, 0);
    assert_int_equal(cfg.redis.wait_timeout_ms, 1000);
    char err[256] = "";
    assert_int_equal(
        tb_config_set(&cfg, "redis-wait-replicas", "65", err, sizeof err),
        TB_EINVAL);
    assert_int_equal(
        tb_config_set(&cfg, "redis-wait-replicas", "-1", err, sizeof err),
        TB_EINVAL);
    assert_int_equal(
        tb_config_set(&cfg, "redis-wait-replicas", "64", err, sizeof err), 0);
    assert_int_equal(
        tb_config_set(&cfg, "redis-wait-timeout", "0", err, sizeof err),
        TB_EINVAL);
    assert_int_equal(app_check(&cfg), 0);
    cfg.core.history_size = 0; /* plain PUBLISH: nothing to WAIT for */
    assert_int_equal(app_check(&cfg), TB_EINVAL);
    cfg.redis.wait_replicas = 0;
    assert_int_equal(app_check(&cfg), 0);
    cfg.core.history_size = 10;
    cfg.redis.wait_replicas = 1;
    /* A publish queued behind a WAIT waits for it and its own: twice
     * the timeout and a second's slack within the command timeout. */
    cfg.core.instance_ttl_ms = 60000; /* their rules below */
    cfg.core.singleton_lease_ms = 60000;
    cfg.redis.command_timeout_ms = 5000;
    cfg.redis.wait_timeout_ms = 2001;
    assert_int_equal(app_check(&cfg), TB_EINVAL);
    cfg.redis.wait_timeout_ms = 2000;
    assert_int_equal(app_check(&cfg), 0);
    /* A heartbeat queued behind a WAIT lands before the record expires:
     * heartbeat 1000 + 2000 + slack 1000 <= ttl. */
    cfg.core.instance_heartbeat_ms = 1000;
    cfg.core.instance_ttl_ms = 3999;
    assert_int_equal(app_check(&cfg), TB_EINVAL);
    cfg.core.instance_ttl_ms = 4000;
    assert_int_equal(app_check(&cfg), 0);
    /* A lease renewal queued behind one lands before the run gives the
     * lease up: 3000 / 3 + 2000 + margin <= 3000. */
    cfg.core.singleton_lease_ms = 3000;
    cfg.core.singleton_margin_ms = 1;
    assert_int_equal(app_check(&cfg), TB_EINVAL);
    cfg.core.singleton_margin_ms = 0;
    assert_int_equal(app_check(&cfg), 0);
    /* Without wait_replicas no WAIT is sent: none of it applies. */
    cfg.redis.wait_replicas = 0;
    cfg.redis.wait_timeout_ms = 5000;
    assert_int_equal(app_check(&cfg), 0);
}

/* http.body_memory_max holds at least one body of http.max_body: the
 * config is refused below, naming both. */
static void test_body_memory_edge(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.http.max_body = 4096;
    cfg.http.body_memory_max = 4096;
    assert_int_equal(app_check(&cfg), 0);
    cfg.http.body_memory_max = 4095;
    assert_int_equal(app_check(&cfg), TB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_replicas),
        cmocka_unit_test(test_body_memory_edge),
        cmocka_unit_test(test_url_is_redacted),
        cmocka_unit_test(test_secret_is_hidden),
        cmocka_unit_test(test_listen_form),
        cmocka_unit_test(test_namespace_form),
        cmocka_unit_test(test_unknown_setting),
        cmocka_unit_test(test_seconds_exact),
        cmocka_unit_test(test_wide_c_ranges),
        cmocka_unit_test(test_history_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
