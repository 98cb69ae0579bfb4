/* fuzz_http_route.c - the HTTP router, percent-decoding and query strings
 * (service/http_route.c). The input is lines: "METHOD /path?query" to
 * match, then lines "+METHOD /template" that add a route to a router of
 * their own (besides the API's real route table), and other lines that are
 * query keys to look up. Matches fill their params within bounds; a
 * template that was added is matched by a path made from it. */
#include "fuzz.h"
#include "http.h"
#include "internal.h"

#define ADDED_MAX 16

static int setup(tb_app *app)
{
    int rc = tb_app_add_api(app);
    return rc ? rc : tb_app_add_builtin_kinds(app);
}

static void check_match(const tb__router *r, const char *method,
                        const char *path)
{
    tb__route_match m;
    int rc = tb__router_match(r, method, path, &m);
    FUZZ_CHECK(rc == TB__ROUTE_OK || rc == TB__ROUTE_NOT_FOUND ||
               rc == TB__ROUTE_BAD_METHOD || rc == TB_EINVAL);
    if (rc != TB__ROUTE_OK) {
        FUZZ_CHECK(m.handler == NULL && m.tmpl == NULL && m.nparams == 0);
        FUZZ_CHECK(rc != TB__ROUTE_BAD_METHOD || m.allow[0] != '\0');
        return;
    }
    FUZZ_CHECK(m.tmpl != NULL && m.tmpl[0] == '/');
    FUZZ_CHECK(m.nparams >= 0 && m.nparams <= TB__ROUTE_PARAMS_MAX);
    for (int i = 0; i < m.nparams; i++) {
        FUZZ_CHECK(m.params[i].name[0] != '\0');
        FUZZ_CHECK(strlen(m.params[i].name) <= TB__ROUTE_PARAM_NAME_MAX);
        FUZZ_CHECK(strlen(m.params[i].value) <= TB__ROUTE_VALUE_MAX);
        FUZZ_CHECK(m.params[i].value[0] != '\0');
        FUZZ_CHECK(tb__route_param(&m, m.params[i].name) != NULL);
    }
}

/* A path the template t matches: each {param} becomes "v". */
static void path_from(const char *t, char *out, size_t outsz)
{
    size_t o = 0;
    for (const char *p = t; *p && o + 2 < outsz;) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            out[o++] = 'v';
            p = close ? close + 1 : p + strlen(p);
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
}

static void check_query(const char *query, const char *key, size_t outsz)
{
    char *out = malloc(outsz);
    FUZZ_CHECK(out != NULL);
    int rc = tb__query_get(query, key, out, outsz);
    FUZZ_CHECK(rc >= 0 || rc == TB_ENOENT || rc == TB_ENAMETOOLONG ||
               rc == TB_EINVAL);
    if (rc >= 0)
        FUZZ_CHECK((size_t)rc < outsz && strlen(out) == (size_t)rc);
    else
        FUZZ_CHECK(out[0] == '\0');
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tb_app *app;
    if (!app) {
        fuzz_quiet_logs();
        app = fuzz_stopped_app(NULL, setup);
    }
    char *text = fuzz_cstr(data, size);
    char *line = text, *rest = fuzz_split_line(line);
    char *path = strchr(line, ' ');
    const char *method = line, *query = NULL;
    if (path) {
        *path++ = '\0';
        char *q = strchr(path, '?');
        if (q) {
            *q++ = '\0';
            query = q;
        }
    }

    tb__router *r = tb__router_new();
    FUZZ_CHECK(r != NULL);
    int added = 0;
    static char handler;
    while (*rest) {
        char *l = rest;
        rest = fuzz_split_line(l);
        if (l[0] != '+') {
            if (query) {
                /* Buffer sizes from "none fits" to "all fit". */
                check_query(query, l, 1);
                check_query(query, l, 8);
                check_query(query, l, strlen(query) + 1);
            }
            continue;
        }
        char *tmpl = strchr(l + 1, ' ');
        if (!tmpl || added == ADDED_MAX)
            continue;
        *tmpl++ = '\0';
        int rc = tb__router_add(r, l + 1, tmpl, &handler, NULL);
        FUZZ_CHECK(rc == 0 || rc == TB_EINVAL || rc == TB_EEXIST);
        if (rc)
            continue;
        added++;
        char p[1024];
        if (strlen(tmpl) >= sizeof p)
            continue;
        path_from(tmpl, p, sizeof p);
        tb__route_match m;
        FUZZ_CHECK(tb__router_match(r, l + 1, p, &m) == TB__ROUTE_OK);
        FUZZ_CHECK(m.handler == &handler);
    }
    if (path) {
        check_match(tb__http_router(app), method, path);
        check_match(r, method, path);
    }
    tb__router_free(r);
    free(text);
    return 0;
}
