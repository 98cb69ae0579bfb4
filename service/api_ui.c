/* api_ui.c - the dashboard: GET /, /ui/ and /ui/<file> answer the files
 * built into the library (service/ui/, embedded by cmake/EmbedAssets.cmake),
 * open to anyone: they hold no data, and the page asks for the token. */
#include <stdio.h>
#include <string.h>

#include "http.h"
#include "internal.h"
#include "ui_assets.h"

/* Revalidated on every load (cheap with the ETag's 304), so an upgraded
 * binary's page is never mixed with the old one's scripts. The policy
 * allows this origin only: no inline script or style, no other host, no
 * framing. */
#define UI_HEADERS                                                             \
    "Cache-Control: no-cache\r\n"                                              \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; "         \
    "style-src 'self'; img-src 'self'; connect-src 'self'; "                   \
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\n"          \
    "X-Content-Type-Options: nosniff\r\n"                                      \
    "Referrer-Policy: no-referrer\r\n"                                         \
    "X-Frame-Options: DENY\r\n"

/* 1 if the If-None-Match value h names etag (or is "*"): a comma-separated
 * list of entity tags, compared weakly (a W/ prefix ignored) as RFC 9110
 * 13.1.2 says for this header. */
static int etag_listed(const char *h, const char *etag)
{
    size_t elen = strlen(etag);
    while (*h) {
        while (*h == ' ' || *h == '\t' || *h == ',')
            h++;
        const char *end = strchr(h, ',');
        size_t n = end ? (size_t)(end - h) : strlen(h);
        while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
            n--;
        if (n == 1 && h[0] == '*')
            return 1;
        const char *t = h;
        if (n >= 2 && t[0] == 'W' && t[1] == '/') {
            t += 2;
            n -= 2;
        }
        if (n == elen && memcmp(t, etag, elen) == 0)
            return 1;
        if (!end)
            break;
        h = end + 1;
    }
    return 0;
}

static int serve_asset(tb_http_req *req, void *ud)
{
    const tb__ui_asset *a = ud;
    char extra[1024];
    snprintf(extra, sizeof extra, UI_HEADERS "ETag: %s\r\n", a->etag);
    const char *inm = tb_http_header(req, "If-None-Match");
    if (inm && etag_listed(inm, a->etag))
        return tb__http_respond_headers(req, 304, NULL, extra, "", 0);
    return tb__http_respond_headers(req, 200, a->content_type, extra, a->data,
                                    a->len);
}

/* Checks (add 0: tb__router_check) or adds each of the dashboard's routes:
 * its files, and its page at / and /ui/ too. The first error stops it. */
static int each_route(tb_app *app, const tb__ui_asset *index, int add)
{
    static const char *const page_paths[] = {"/", "/ui/"};
    size_t nfiles = 0;
    while (tb__ui_assets[nfiles].path)
        nfiles++;
    for (size_t i = 0; i < nfiles + 2; i++) {
        const tb__ui_asset *a = i < nfiles ? &tb__ui_assets[i] : index;
        const char *path = i < nfiles ? a->path : page_paths[i - nfiles];
        int rc = add ? tb__app_route_as(app, "GET", path, serve_asset,
                                        (void *)a, TB__HTTP_OPEN)
                     : tb__router_check(tb__http_router(app), "GET", path);
        if (rc)
            return rc;
    }
    return 0;
}

int tb_app_add_dashboard(tb_app *app)
{
    const tb__ui_asset *index = NULL;
    for (const tb__ui_asset *a = tb__ui_assets; a->path; a++)
        if (strcmp(a->path, "/ui/index.html") == 0)
            index = a;
    if (!index)
        return TB_EINVAL; /* a build without the page: cannot happen */
    /* All or nothing: a path taken already (an embedder's GET /, say) is
     * found before anything is added, so TB_EEXIST leaves no half of the
     * dashboard behind. (No router yet: nothing can be taken.) */
    if (app && tb__http_router(app)) {
        int rc = each_route(app, index, 0);
        if (rc)
            return rc;
    }
    return each_route(app, index, 1);
}
