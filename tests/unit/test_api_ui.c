/* test_api_ui.c - unit tests for service/api_ui.c: the dashboard's files
 * answered through tb__http_handle with a fake connection (no network):
 * bytes and headers, If-None-Match, open routes beside an API token, and
 * registration's errors. */
#include "harness.h"

#include <stdlib.h>

#include "http.h"
#include "http_fake.h"
#include "internal.h"
#include "ui_assets.h"

/* One GET (or method); returns the status, the body's length in *len and
 * the headers in headers (1024 bytes) when not NULL. */
static int call(tb_app *app, const char *method, const char *path,
                const char *auth, const char *inm, size_t *len, char *headers)
{
    fake_conn c;
    memset(&c, 0, sizeof c);
    c.auth = auth;
    c.inm = inm;
    int status = fake_handle(&c, app, method, path, NULL, "", 0);
    assert_int_equal(c.sends, 1);
    if (len)
        *len = c.len;
    if (headers)
        memcpy(headers, c.headers, sizeof c.headers);
    free(c.body);
    return status;
}

static tb_app *ui_app(const char *token)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    cfg.http.api_token = token;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(tb_app_add_dashboard(app), 0);
    return app;
}

static const tb__ui_asset *asset(const char *path)
{
    for (const tb__ui_asset *a = tb__ui_assets; a->path; a++)
        if (strcmp(a->path, path) == 0)
            return a;
    fail_msg("no asset %s", path);
    return NULL;
}

static void test_files(void **state)
{
    (void)state;
    tb_app *app = ui_app(NULL);
    const tb__ui_asset *index = asset("/ui/index.html");
    char h[1024];
    size_t len;
    for (const char *p = "/\0/ui/\0/ui/index.html\0"; *p; p += strlen(p) + 1) {
        assert_int_equal(call(app, "GET", p, NULL, NULL, &len, h), 200);
        assert_int_equal(len, index->len);
        assert_non_null(strstr(h, "Content-Type: text/html; charset=utf-8"));
    }
    int n = 0;
    for (const tb__ui_asset *a = tb__ui_assets; a->path; a++, n++) {
        assert_int_equal(call(app, "GET", a->path, NULL, NULL, &len, h), 200);
        assert_int_equal(len, a->len);
        char want[96];
        snprintf(want, sizeof want, "ETag: %s\r\n", a->etag);
        assert_non_null(strstr(h, want));
        snprintf(want, sizeof want, "Content-Type: %s\r\n", a->content_type);
        assert_non_null(strstr(h, want));
        assert_non_null(strstr(h, "Cache-Control: no-cache\r\n"));
        assert_non_null(strstr(h, "X-Content-Type-Options: nosniff\r\n"));
        assert_non_null(strstr(h, "Content-Security-Policy: default-src "
                                  "'none'; script-src 'self';"));
        assert_non_null(strstr(h, "X-Request-ID: "));
    }
    assert_true(n >= 9);
    assert_int_equal(call(app, "GET", "/ui/nope.js", NULL, NULL, NULL, NULL),
                     404);
    assert_int_equal(call(app, "GET", "/ui", NULL, NULL, NULL, NULL), 404);
    assert_int_equal(call(app, "POST", "/ui/app.js", NULL, NULL, NULL, h), 405);
    assert_non_null(strstr(h, "Allow: GET, HEAD\r\n"));
    /* Twice is an error, and the first registration stands. */
    assert_rc(tb_app_add_dashboard(app), TB_EEXIST);
    assert_int_equal(call(app, "GET", "/", NULL, NULL, NULL, NULL), 200);
    tb_app_free(app);
}

static void test_if_none_match(void **state)
{
    (void)state;
    tb_app *app = ui_app(NULL);
    const tb__ui_asset *a = asset("/ui/app.js");
    char list[128], weak[64], glued[64], spaced[64];
    snprintf(list, sizeof list, "\"x\", %s ,\"y\"", a->etag);
    snprintf(weak, sizeof weak, "W/%s", a->etag);
    snprintf(glued, sizeof glued, "%sx", a->etag);
    snprintf(spaced, sizeof spaced, " \t%s\t ", a->etag);
    const char *hit[] = {a->etag, list, weak, "*", spaced, " *"};
    const char *miss[] = {"",    "\"x\"", glued,      "W/",        ",,,",
                          "W/*", "**",    "\"0000\"", weak + 2 + 1};
    size_t len;
    char h[1024];
    for (size_t i = 0; i < sizeof hit / sizeof hit[0]; i++) {
        if (call(app, "GET", "/ui/app.js", NULL, hit[i], &len, h) != 304)
            fail_msg("If-None-Match [%s]: not 304", hit[i]);
        assert_int_equal(len, 0);
        assert_non_null(strstr(h, a->etag));
        assert_null(strstr(h, "Content-Type: "));
    }
    for (size_t i = 0; i < sizeof miss / sizeof miss[0]; i++) {
        if (call(app, "GET", "/ui/app.js", NULL, miss[i], &len, NULL) != 200)
            fail_msg("If-None-Match [%s]: not 200", miss[i]);
        assert_int_equal(len, a->len);
    }
    tb_app_free(app);
}

static int mine(tb_http_req *req, void *ud)
{
    (void)ud;
    return tb_http_respond(req, 299, "text/plain", "mine", 4);
}

/* An embedder's GET / first: TB_EEXIST, and no half of the dashboard is
 * left behind (its files unregistered, free to add). */
static void test_taken(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    tb_app *app = th_app_new_cfg(&cfg);
    assert_rc(tb_app_add_api(app), 0);
    assert_rc(tb_app_add_route(app, "GET", "/", mine, NULL), 0);
    assert_rc(tb_app_add_dashboard(app), TB_EEXIST);
    assert_int_equal(call(app, "GET", "/", NULL, NULL, NULL, NULL), 299);
    for (const tb__ui_asset *a = tb__ui_assets; a->path; a++)
        assert_int_equal(call(app, "GET", a->path, NULL, NULL, NULL, NULL),
                         404);
    assert_int_equal(call(app, "GET", "/ui/", NULL, NULL, NULL, NULL), 404);
    assert_rc(tb_app_add_route(app, "GET", "/ui/app.js", mine, NULL), 0);
    tb_app_free(app);
}

/* With an API token: the page and its files open; nothing else. */
static void test_token(void **state)
{
    (void)state;
    tb_app *app = ui_app("ui-secret");
    assert_int_equal(call(app, "GET", "/", NULL, NULL, NULL, NULL), 200);
    assert_int_equal(call(app, "GET", "/ui/", NULL, NULL, NULL, NULL), 200);
    assert_int_equal(call(app, "HEAD", "/ui/app.js", NULL, NULL, NULL, NULL),
                     200);
    for (const tb__ui_asset *a = tb__ui_assets; a->path; a++)
        assert_int_equal(call(app, "GET", a->path, NULL, NULL, NULL, NULL),
                         200);
    assert_int_equal(call(app, "GET", "/ui/nope.js", NULL, NULL, NULL, NULL),
                     401);
    assert_int_equal(call(app, "POST", "/", NULL, NULL, NULL, NULL), 401);
    assert_int_equal(call(app, "GET", "/tasks", NULL, NULL, NULL, NULL), 401);
    assert_int_equal(
        call(app, "GET", "/ui/nope.js", "Bearer ui-secret", NULL, NULL, NULL),
        404);
    tb_app_free(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_if_none_match),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_taken),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
