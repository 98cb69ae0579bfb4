/* test_http_route.c - unit tests for service/http_route.c (templates,
 * matching, specificity, 404/405, decoding, query strings, threads). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "http_route.h"
#include "taskbus/taskbus.h"

/* Distinct handler tokens: the router never calls them. */
static int h_list, h_get, h_purge, h_del, h_head, h_root, h_x;

static tb__router *new_router(void)
{
    tb__router *r = tb__router_new();
    assert_non_null(r);
    return r;
}

/* Matches and returns the result; m is filled as the router left it. */
static int match(const tb__router *r, const char *method, const char *path,
                 tb__route_match *m)
{
    memset(m, 0x5a, sizeof *m); /* catch fields left unset */
    return tb__router_match(r, method, path, m);
}

/* ------------------------------------------------------------ templates */

static void test_add_valid_templates(void **state)
{
    (void)state;
    tb__router *r = new_router();
    assert_int_equal(tb__router_add(r, "GET", "/", &h_root, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/tasks", &h_list, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/tasks/{name}", &h_get, NULL),
                     0);
    assert_int_equal(
        tb__router_add(r, "GET", "/a-._~!$&'()*+,;=:@Z9/{_x9}", &h_x, NULL), 0);
    /* A 32-byte name is the limit. */
    assert_int_equal(tb__router_add(r, "GET",
                                    "/n/{abcdefghijklmnopqrstuvwxyz_12345}",
                                    &h_x, NULL),
                     0);
    assert_int_equal(tb__router_add(r, "GET",
                                    "/p/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", &h_x,
                                    NULL),
                     0);
    for (int i = 0; i < 7; i++) {
        static const char *const ms[] = {"GET",   "POST", "PUT",    "DELETE",
                                         "PATCH", "HEAD", "OPTIONS"};
        assert_int_equal(tb__router_add(r, ms[i], "/all", &h_x, NULL), 0);
    }
    tb__router_free(r);
    tb__router_free(NULL);
}

static void test_add_invalid_templates(void **state)
{
    (void)state;
    tb__router *r = new_router();
    static const char *const bad[] = {
        "",                                     /* empty */
        "tasks",                                /* no leading slash */
        "//",                                   /* empty segment */
        "/a//b",                                /* empty segment */
        "/a//",                                 /* empty, then trailing */
        "/a/{x}/{x}",                           /* duplicate param */
        "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", /* nine params */
        "/{}",                                  /* empty name */
        "/{1x}",                                /* name starts with a digit */
        "/{a-b}",                               /* '-' in a name */
        "/{abcdefghijklmnopqrstuvwxyz_123456}", /* 33-byte name */
        "/{a",                                  /* unclosed */
        "/a}",                                  /* '}' in a literal */
        "/x{a}",                                /* mixed segment */
        "/a%20b",                               /* '%' in a literal */
        "/a b",                                 /* space */
        "/a?b",                                 /* '?' */
        "/a#b",                                 /* '#' */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = tb__router_add(r, "GET", bad[i], &h_x, NULL);
        if (rc != TB_EINVAL)
            fail_msg("template \"%s\": %d, want TB_EINVAL", bad[i], rc);
    }
    assert_int_equal(tb__router_add(r, "get", "/a", &h_x, NULL), TB_EINVAL);
    assert_int_equal(tb__router_add(r, "TRACE", "/a", &h_x, NULL), TB_EINVAL);
    assert_int_equal(tb__router_add(r, "GETX", "/a", &h_x, NULL), TB_EINVAL);
    assert_int_equal(tb__router_add(r, "GET", NULL, &h_x, NULL), TB_EINVAL);
    assert_int_equal(tb__router_add(r, NULL, "/a", &h_x, NULL), TB_EINVAL);
    assert_int_equal(tb__router_add(NULL, "GET", "/a", &h_x, NULL), TB_EINVAL);

    /* A literal segment longer than any request segment that is matched
     * (found by fuzz_http_route: it was accepted and never matched). */
    char lit[TB__ROUTE_VALUE_MAX + 3];
    lit[0] = '/';
    memset(lit + 1, 'l', TB__ROUTE_VALUE_MAX + 1);
    lit[TB__ROUTE_VALUE_MAX + 2] = '\0';
    assert_int_equal(tb__router_add(r, "GET", lit, &h_x, NULL), TB_EINVAL);
    lit[TB__ROUTE_VALUE_MAX + 1] = '\0'; /* at the limit: it is served */
    assert_int_equal(tb__router_add(r, "GET", lit, &h_x, NULL), 0);
    tb__route_match m;
    assert_int_equal(match(r, "GET", lit, &m), TB__ROUTE_OK);
    tb__router_free(r);
    r = new_router();

    /* Nothing was added by the failures. */
    assert_int_equal(match(r, "GET", "/a", &m), TB__ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/a/x/x", &m), TB__ROUTE_NOT_FOUND);
    tb__router_free(r);
}

static void test_add_duplicate_shape(void **state)
{
    (void)state;
    tb__router *r = new_router();
    assert_int_equal(tb__router_add(r, "GET", "/a/{x}", &h_get, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/a/{y}", &h_x, NULL), TB_EEXIST);
    assert_int_equal(tb__router_add(r, "GET", "/a/{x}", &h_x, NULL), TB_EEXIST);
    /* Other method, other literal, other param position: all distinct. */
    assert_int_equal(tb__router_add(r, "POST", "/a/{y}", &h_x, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/a/b", &h_x, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/{x}/b", &h_x, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/a/{x}/c", &h_x, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/", &h_root, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/", &h_x, NULL), TB_EEXIST);

    /* The first registration still answers. */
    tb__route_match m;
    assert_int_equal(match(r, "GET", "/a/zz", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_get);
    assert_string_equal(tb__route_param(&m, "x"), "zz");
    assert_null(tb__route_param(&m, "y"));
    tb__router_free(r);
}

/* tb__router_check says what an add would, and adds nothing. */
static void test_check(void **state)
{
    (void)state;
    tb__router *r = new_router();
    assert_int_equal(tb__router_add(r, "GET", "/a/{x}", &h_get, NULL), 0);
    assert_int_equal(tb__router_check(r, "GET", "/a/{y}"), TB_EEXIST);
    assert_int_equal(tb__router_check(r, "GET", "a"), TB_EINVAL);
    assert_int_equal(tb__router_check(r, "BREW", "/b"), TB_EINVAL);
    assert_int_equal(tb__router_check(NULL, "GET", "/b"), TB_EINVAL);
    assert_int_equal(tb__router_check(r, "GET", "/b"), 0);
    assert_int_equal(tb__router_check(r, "POST", "/a/{x}"), 0);
    tb__route_match m;
    assert_int_equal(match(r, "GET", "/b", &m), TB__ROUTE_NOT_FOUND);
    assert_int_equal(match(r, "POST", "/a/z", &m), TB__ROUTE_BAD_METHOD);
    assert_int_equal(tb__router_add(r, "GET", "/b", &h_x, NULL), 0);
    assert_int_equal(tb__router_check(r, "GET", "/b"), TB_EEXIST);
    tb__router_free(r);
}

/* ------------------------------------------------------------- matching */

static tb__router *tasks_router(void)
{
    tb__router *r = new_router();
    assert_int_equal(tb__router_add(r, "GET", "/tasks", &h_list, "ud-list"), 0);
    assert_int_equal(tb__router_add(r, "GET", "/tasks/{name}", &h_get, "ud"),
                     0);
    assert_int_equal(tb__router_add(r, "DELETE", "/tasks/{name}", &h_del, NULL),
                     0);
    assert_int_equal(tb__router_add(r, "POST", "/tasks/purge", &h_purge, NULL),
                     0);
    assert_int_equal(tb__router_add(r, "GET", "/", &h_root, NULL), 0);
    return r;
}

static void test_match_basic(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;

    assert_int_equal(match(r, "GET", "/tasks", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_list);
    assert_string_equal((const char *)m.ud, "ud-list");
    assert_string_equal(m.tmpl, "/tasks");
    assert_int_equal(m.nparams, 0);

    assert_int_equal(match(r, "GET", "/tasks/abc", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_get);
    assert_string_equal(m.tmpl, "/tasks/{name}");
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "name");
    assert_string_equal(tb__route_param(&m, "name"), "abc");
    assert_null(tb__route_param(&m, "nam"));
    assert_null(tb__route_param(&m, "names"));

    assert_int_equal(match(r, "GET", "/", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_root);

    /* Segment counts must agree; empty segments match nothing. */
    static const char *const nf[] = {"/task",    "/tasks/a/b", "/tasks/",
                                     "/tasks//", "//tasks",    "/tasks/a/",
                                     "/Tasks",   "//",         "/nope"};
    for (size_t i = 0; i < sizeof nf / sizeof nf[0]; i++) {
        int rc = match(r, "GET", nf[i], &m);
        if (rc != TB__ROUTE_NOT_FOUND)
            fail_msg("path \"%s\": %d, want NOT_FOUND", nf[i], rc);
        assert_null(m.handler);
        assert_null(m.tmpl);
        assert_int_equal(m.nparams, 0);
    }
    tb__router_free(r);
}

/* A template's trailing slash (a directory's index, "/ui/") is a path of
 * its own: neither the path without it nor one more slash matches, and a
 * {param} beside it still needs a non-empty segment. */
static void test_match_trailing_slash(void **state)
{
    (void)state;
    tb__router *r = new_router();
    static int h_dir, h_file;
    assert_int_equal(tb__router_add(r, "GET", "/ui/", &h_dir, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/ui/{file}", &h_file, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/ui/", &h_dir, NULL), TB_EEXIST);
    tb__route_match m;
    assert_int_equal(match(r, "GET", "/ui/", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_dir);
    assert_string_equal(m.tmpl, "/ui/");
    assert_int_equal(match(r, "GET", "/ui/a.js", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_file);
    static const char *const nf[] = {"/ui", "/ui//", "/ui/a.js/", "//ui/"};
    for (size_t i = 0; i < sizeof nf / sizeof nf[0]; i++) {
        int rc = match(r, "GET", nf[i], &m);
        if (rc != TB__ROUTE_NOT_FOUND)
            fail_msg("path \"%s\": %d, want NOT_FOUND", nf[i], rc);
    }
    assert_int_equal(match(r, "POST", "/ui/", &m), TB__ROUTE_BAD_METHOD);
    tb__router_free(r);
}

static void test_match_specificity(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;

    /* POST /tasks/purge: the literal route, the only POST one. */
    assert_int_equal(match(r, "POST", "/tasks/purge", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_purge);
    assert_int_equal(m.nparams, 0);
    /* GET /tasks/purge: the literal has no GET, so the GET param route. */
    assert_int_equal(match(r, "GET", "/tasks/purge", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_get);
    assert_string_equal(tb__route_param(&m, "name"), "purge");
    /* The literal is compared after decoding ("%70" is 'p'). */
    assert_int_equal(tb__router_add(r, "POST", "/tasks/{name}", &h_x, NULL), 0);
    assert_int_equal(match(r, "POST", "/tasks/%70urge", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_purge);
    assert_int_equal(match(r, "POST", "/tasks/purgex", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_x);
    tb__router_free(r);

    /* Left to right: a literal earlier wins over any later literals, in
     * whatever order the routes were added. */
    static int h_lp, h_pl, h_pp, h_ll;
    for (int order = 0; order < 2; order++) {
        r = new_router();
        const char *t[] = {"/{a}/{b}", "/{a}/y", "/x/{b}", "/x/y"};
        void *h[] = {&h_pp, &h_pl, &h_lp, &h_ll};
        for (int i = 0; i < 4; i++) {
            int j = order ? 3 - i : i;
            assert_int_equal(tb__router_add(r, "GET", t[j], h[j], NULL), 0);
        }
        assert_int_equal(match(r, "GET", "/x/y", &m), TB__ROUTE_OK);
        assert_ptr_equal(m.handler, &h_ll);
        assert_int_equal(match(r, "GET", "/x/z", &m), TB__ROUTE_OK);
        assert_ptr_equal(m.handler, &h_lp);
        assert_int_equal(match(r, "GET", "/w/y", &m), TB__ROUTE_OK);
        assert_ptr_equal(m.handler, &h_pl);
        assert_string_equal(tb__route_param(&m, "a"), "w");
        assert_int_equal(match(r, "GET", "/w/z", &m), TB__ROUTE_OK);
        assert_ptr_equal(m.handler, &h_pp);
        assert_int_equal(m.nparams, 2);
        assert_string_equal(m.params[0].name, "a");
        assert_string_equal(m.params[0].value, "w");
        assert_string_equal(m.params[1].name, "b");
        assert_string_equal(m.params[1].value, "z");
        tb__router_free(r);
    }

    /* "/x/{p}/{q}" (literal first) beats "/{p}/y/z" (two literals later). */
    r = new_router();
    assert_int_equal(tb__router_add(r, "GET", "/{p}/y/z", &h_pl, NULL), 0);
    assert_int_equal(tb__router_add(r, "GET", "/x/{p}/{q}", &h_lp, NULL), 0);
    assert_int_equal(match(r, "GET", "/x/y/z", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_lp);
    tb__router_free(r);
}

static void test_match_405_allow(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;

    /* GET and DELETE /tasks/{name}; GET implies HEAD. */
    assert_int_equal(match(r, "PUT", "/tasks/abc", &m), TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow, "GET, DELETE, HEAD");
    assert_null(m.handler);
    assert_null(m.tmpl);
    assert_int_equal(m.nparams, 0);
    /* /tasks/purge also matches POST's literal route. */
    assert_int_equal(match(r, "PATCH", "/tasks/purge", &m),
                     TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow, "GET, POST, DELETE, HEAD");
    /* Unknown or lower-case methods are not allowed anywhere. */
    assert_int_equal(match(r, "get", "/tasks", &m), TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD");
    assert_int_equal(match(r, "BREW", "/nope", &m), TB__ROUTE_NOT_FOUND);
    assert_string_equal(m.allow, "");
    /* 404 wins when no method matches the path at all. */
    assert_int_equal(match(r, "PUT", "/tasks/a/b", &m), TB__ROUTE_NOT_FOUND);
    tb__router_free(r);

    /* Without GET there is no implied HEAD; all seven fit in allow. */
    r = new_router();
    assert_int_equal(tb__router_add(r, "POST", "/p", &h_x, NULL), 0);
    assert_int_equal(match(r, "GET", "/p", &m), TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow, "POST");
    static const char *const ms[] = {"GET",   "PUT",  "DELETE",
                                     "PATCH", "HEAD", "OPTIONS"};
    for (int i = 0; i < 6; i++)
        assert_int_equal(tb__router_add(r, ms[i], "/{x}", &h_x, NULL), 0);
    assert_int_equal(tb__router_add(r, "POST", "/{x}/q", &h_x, NULL), 0);
    assert_int_equal(match(r, "TRACE", "/p", &m), TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow,
                        "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS");
    tb__router_free(r);
}

static void test_match_head(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;

    /* No HEAD route: HEAD uses GET's, params included. */
    assert_int_equal(match(r, "HEAD", "/tasks/x%41", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_get);
    assert_string_equal(tb__route_param(&m, "name"), "xA");
    assert_int_equal(match(r, "HEAD", "/tasks", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_list);
    /* HEAD on a POST-only path is 405, with no HEAD in allow. */
    tb__router *p = new_router();
    assert_int_equal(tb__router_add(p, "POST", "/only", &h_x, NULL), 0);
    assert_int_equal(match(p, "HEAD", "/only", &m), TB__ROUTE_BAD_METHOD);
    assert_string_equal(m.allow, "POST");
    tb__router_free(p);

    /* A HEAD route for the path is used instead; GET is unaffected. */
    assert_int_equal(tb__router_add(r, "HEAD", "/tasks/{id}", &h_head, NULL),
                     0);
    assert_int_equal(match(r, "HEAD", "/tasks/abc", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_head);
    assert_string_equal(tb__route_param(&m, "id"), "abc");
    assert_int_equal(match(r, "GET", "/tasks/abc", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_get);
    /* ...but not for paths it does not match. */
    assert_int_equal(match(r, "HEAD", "/tasks", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_list);
    tb__router_free(r);
}

/* ------------------------------------------------------------- decoding */

static void test_match_decoding(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;

    assert_int_equal(match(r, "GET", "/tasks/receiver:abc%20x", &m),
                     TB__ROUTE_OK);
    assert_string_equal(tb__route_param(&m, "name"), "receiver:abc x");
    /* '+' is literal in a path; escapes in both cases; UTF-8 bytes. */
    assert_int_equal(match(r, "GET", "/tasks/a+b%2b%3A%3a", &m), TB__ROUTE_OK);
    assert_string_equal(tb__route_param(&m, "name"), "a+b+::");
    assert_int_equal(match(r, "GET", "/tasks/%C3%A9", &m), TB__ROUTE_OK);
    assert_string_equal(tb__route_param(&m, "name"), "\xc3\xa9");
    /* "%25" is a literal '%', not the start of another escape. */
    assert_int_equal(match(r, "GET", "/tasks/%2541", &m), TB__ROUTE_OK);
    assert_string_equal(tb__route_param(&m, "name"), "%41");
    /* A literal segment spelled with escapes. */
    assert_int_equal(match(r, "GET", "/%74asks", &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_list);
    /* A literal with every allowed punctuation byte; '+' stays '+'. */
    const char *lit = "/a-._~!$&'()*+,;=:@Z9";
    assert_int_equal(tb__router_add(r, "GET", lit, &h_x, NULL), 0);
    assert_int_equal(match(r, "GET", lit, &m), TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_x);
    assert_int_equal(match(r, "GET", "/a-._~!$&'()*%2B,;=:@Z9", &m),
                     TB__ROUTE_OK);
    assert_ptr_equal(m.handler, &h_x);
    assert_int_equal(match(r, "GET", "/a-._~!$&'()*%20,;=:@Z9", &m),
                     TB__ROUTE_NOT_FOUND);

    static const char *const bad[] = {
        "tasks",       "",           "/tasks/a%2Fb", "/tasks/a%2fb",
        "/tasks/%00",  "/tasks/%",   "/tasks/%4",    "/tasks/ab%4",
        "/tasks/%4g",  "/tasks/%g4", "/tasks/%%41",  "/%2F",
        "/nope/%zz/x", "/tasks/%-1", "/tasks/% 1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = match(r, "GET", bad[i], &m);
        if (rc != TB_EINVAL)
            fail_msg("path \"%s\": %d, want TB_EINVAL", bad[i], rc);
        assert_null(m.handler);
    }
    assert_int_equal(match(r, NULL, "/tasks", &m), TB_EINVAL);
    assert_int_equal(match(r, "GET", NULL, &m), TB_EINVAL);
    assert_int_equal(match(NULL, "GET", "/tasks", &m), TB_EINVAL);
    assert_int_equal(tb__router_match(r, "GET", "/tasks", NULL), TB_EINVAL);
    tb__router_free(r);
}

static void test_match_value_length(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    tb__route_match m;
    char path[3 * (TB__ROUTE_VALUE_MAX + 1) + 16];

    /* Exactly TB__ROUTE_VALUE_MAX decoded bytes: accepted, whole. */
    strcpy(path, "/tasks/");
    memset(path + 7, 'v', TB__ROUTE_VALUE_MAX);
    path[7 + TB__ROUTE_VALUE_MAX] = '\0';
    assert_int_equal(match(r, "GET", path, &m), TB__ROUTE_OK);
    assert_int_equal(strlen(tb__route_param(&m, "name")), TB__ROUTE_VALUE_MAX);
    assert_memory_equal(tb__route_param(&m, "name"), path + 7,
                        TB__ROUTE_VALUE_MAX);
    /* One over: malformed. */
    strcat(path, "v");
    assert_int_equal(match(r, "GET", path, &m), TB_EINVAL);
    /* The limit is on decoded bytes: 512 escapes (1536 raw bytes) fit. */
    strcpy(path, "/tasks/");
    for (int i = 0; i < TB__ROUTE_VALUE_MAX; i++)
        memcpy(path + 7 + 3 * i, "%41", 4);
    assert_int_equal(match(r, "GET", path, &m), TB__ROUTE_OK);
    const char *v = tb__route_param(&m, "name");
    assert_int_equal(strlen(v), TB__ROUTE_VALUE_MAX);
    assert_true(v[0] == 'A' && v[TB__ROUTE_VALUE_MAX - 1] == 'A');
    strcat(path, "%41");
    assert_int_equal(match(r, "GET", path, &m), TB_EINVAL);
    /* It applies to every segment, even one no route could match. */
    strcpy(path, "/");
    memset(path + 1, 'n', TB__ROUTE_VALUE_MAX + 1);
    path[2 + TB__ROUTE_VALUE_MAX] = '\0';
    assert_int_equal(match(r, "GET", path, &m), TB_EINVAL);
    path[1 + TB__ROUTE_VALUE_MAX] = '\0';
    assert_int_equal(match(r, "GET", path, &m), TB__ROUTE_NOT_FOUND);
    tb__router_free(r);
}

/* ---------------------------------------------------------------- query */

static void test_query_get(void **state)
{
    (void)state;
    char out[32];

    const char *q = "a=1&name=receiver%3Aabc+x&flag&e=&a=2&sp=%20+%2B";
    assert_int_equal(tb__query_get(q, "a", out, sizeof out), 1);
    assert_string_equal(out, "1"); /* first occurrence */
    assert_int_equal(tb__query_get(q, "name", out, sizeof out), 14);
    assert_string_equal(out, "receiver:abc x");
    assert_int_equal(tb__query_get(q, "flag", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(tb__query_get(q, "e", out, sizeof out), 0);
    assert_int_equal(tb__query_get(q, "sp", out, sizeof out), 3);
    assert_string_equal(out, "  +");
    strcpy(out, "junk");
    assert_int_equal(tb__query_get(q, "nam", out, sizeof out), TB_ENOENT);
    assert_int_equal(tb__query_get(q, "fla", out, sizeof out), TB_ENOENT);
    assert_int_equal(tb__query_get(q, "x", out, sizeof out), TB_ENOENT);
    assert_string_equal(out, "");

    /* Keys are decoded too; '=' after the first belongs to the value;
     * empty pairs are skipped. */
    assert_int_equal(
        tb__query_get("&&my+k%65y=v=w&", "my key", out, sizeof out), 3);
    assert_string_equal(out, "v=w");
    assert_int_equal(tb__query_get("b=1&&", "b", out, sizeof out), 1);

    /* Empty queries. */
    assert_int_equal(tb__query_get(NULL, "a", out, sizeof out), TB_ENOENT);
    assert_int_equal(tb__query_get("", "a", out, sizeof out), TB_ENOENT);
    assert_int_equal(tb__query_get("&", "a", out, sizeof out), TB_ENOENT);
}

static void test_query_out_size(void **state)
{
    (void)state;
    char out[8];
    /* 7 bytes fit in 8; 8 do not. */
    assert_int_equal(tb__query_get("k=1234567", "k", out, sizeof out), 7);
    assert_string_equal(out, "1234567");
    assert_int_equal(tb__query_get("k=12345678", "k", out, sizeof out),
                     TB_ENAMETOOLONG);
    assert_string_equal(out, "");
    /* Measured after decoding. */
    assert_int_equal(
        tb__query_get("k=%41%41%41%41%41%41%41", "k", out, sizeof out), 7);
    assert_string_equal(out, "AAAAAAA");
    /* One byte holds only "". */
    assert_int_equal(tb__query_get("k=", "k", out, 1), 0);
    assert_int_equal(tb__query_get("k=x", "k", out, 1), TB_ENAMETOOLONG);
    assert_string_equal(out, "");
    assert_int_equal(tb__query_get("k=x", "k", out, 0), TB_EINVAL);
    assert_int_equal(tb__query_get("k=x", "k", NULL, 8), TB_EINVAL);
    assert_int_equal(tb__query_get("k=x", NULL, out, sizeof out), TB_EINVAL);
}

static void test_query_bad_escapes(void **state)
{
    (void)state;
    char out[16];
    static const char *const bad_value[] = {"k=%",   "k=%4",  "k=a%4g",
                                            "k=%00", "k=x%0", "k=%%"};
    for (size_t i = 0; i < sizeof bad_value / sizeof bad_value[0]; i++) {
        strcpy(out, "junk");
        int rc = tb__query_get(bad_value[i], "k", out, sizeof out);
        if (rc != TB_EINVAL)
            fail_msg("query \"%s\": %d, want TB_EINVAL", bad_value[i], rc);
        assert_string_equal(out, "");
    }
    /* A bad key before the match, or anywhere when absent. */
    assert_int_equal(tb__query_get("%zz=1&k=2", "k", out, sizeof out),
                     TB_EINVAL);
    assert_int_equal(tb__query_get("a%00=1", "k", out, sizeof out), TB_EINVAL);
    assert_int_equal(tb__query_get("a=1&b%2=2", "k", out, sizeof out),
                     TB_EINVAL);
    /* A decoded '/' is fine in a query. */
    assert_int_equal(tb__query_get("p=a%2Fb", "p", out, sizeof out), 3);
    assert_string_equal(out, "a/b");
    /* Other values are not decoded: as documented. */
    assert_int_equal(tb__query_get("x=%zz&k=ok", "k", out, sizeof out), 2);
}

/* -------------------------------------------------------------- threads */

#define NTHREADS 4
#define NMATCHES 10000

typedef struct worker_arg {
    const tb__router *r;
    int seed;
    atomic_int *errors;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    tb__route_match m;
    char path[64], want[32];
    for (int i = 0; i < NMATCHES; i++) {
        int k = (i * 7 + a->seed) % 5, ok = 0;
        snprintf(want, sizeof want, "t%d-%d x", a->seed, i);
        switch (k) {
        case 0: /* GET param route, decoded */
            snprintf(path, sizeof path, "/tasks/t%d-%d%%20x", a->seed, i);
            ok = tb__router_match(a->r, "GET", path, &m) == TB__ROUTE_OK &&
                 m.handler == &h_get &&
                 strcmp(tb__route_param(&m, "name"), want) == 0;
            break;
        case 1: /* literal beats param */
            ok = tb__router_match(a->r, "POST", "/tasks/purge", &m) ==
                     TB__ROUTE_OK &&
                 m.handler == &h_purge && m.nparams == 0;
            break;
        case 2: /* 405 */
            snprintf(path, sizeof path, "/tasks/t%d", i);
            ok = tb__router_match(a->r, "PUT", path, &m) ==
                     TB__ROUTE_BAD_METHOD &&
                 strcmp(m.allow, "GET, DELETE, HEAD") == 0;
            break;
        case 3: /* 404 */
            snprintf(path, sizeof path, "/tasks/t%d/more", i);
            ok = tb__router_match(a->r, "GET", path, &m) == TB__ROUTE_NOT_FOUND;
            break;
        default: /* malformed */
            snprintf(path, sizeof path, "/tasks/t%d%%2F", i);
            ok = tb__router_match(a->r, "DELETE", path, &m) == TB_EINVAL;
            break;
        }
        if (!ok)
            atomic_fetch_add(a->errors, 1);
    }
    return NULL;
}

static void test_concurrent_match(void **state)
{
    (void)state;
    tb__router *r = tasks_router();
    atomic_int errors = 0;
    pthread_t th[NTHREADS];
    worker_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (worker_arg){r, i, &errors};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(atomic_load(&errors), 0);
    tb__router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_valid_templates),
        cmocka_unit_test(test_add_invalid_templates),
        cmocka_unit_test(test_add_duplicate_shape),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_match_basic),
        cmocka_unit_test(test_match_trailing_slash),
        cmocka_unit_test(test_match_specificity),
        cmocka_unit_test(test_match_405_allow),
        cmocka_unit_test(test_match_head),
        cmocka_unit_test(test_match_decoding),
        cmocka_unit_test(test_match_value_length),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_query_out_size),
        cmocka_unit_test(test_query_bad_escapes),
        cmocka_unit_test(test_concurrent_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
