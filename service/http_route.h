/* http_route.h - method + path routing and query strings for the HTTP API
 * (private). */
#ifndef TASKBUS_HTTP_ROUTE_H
#define TASKBUS_HTTP_ROUTE_H

#include <stddef.h>

#include "taskbus/taskbus.h"

#define TB__ROUTE_PARAMS_MAX 8      /* {param} segments per template */
#define TB__ROUTE_PARAM_NAME_MAX 32 /* bytes of a param name */
#define TB__ROUTE_VALUE_MAX 512     /* bytes of a decoded param value */

typedef struct tb__router tb__router;

/* Filled by tb__router_match. Self-contained except tmpl, handler and ud,
 * which stay valid as long as the router. */
typedef struct tb__route_match {
    void *handler; /* as registered */
    void *ud;
    const char *tmpl; /* the matched template (owned by the router) */
    int nparams;
    struct {
        char name[TB__ROUTE_PARAM_NAME_MAX + 1];
        char value[TB__ROUTE_VALUE_MAX + 1]; /* percent-decoded */
    } params[TB__ROUTE_PARAMS_MAX];
    char allow[64]; /* on TB__ROUTE_BAD_METHOD: "GET, POST" (for Allow:) */
} tb__route_match;

enum {
    TB__ROUTE_OK = 0,
    TB__ROUTE_NOT_FOUND = 1,
    TB__ROUTE_BAD_METHOD = 2
};

/* An empty router, or NULL when out of memory. Free with tb__router_free. */
tb__router *tb__router_new(void);
/* Frees r and its copies of the templates (NULL is a no-op). Handlers and
 * ud are the caller's and are not touched. */
void tb__router_free(tb__router *r);
/* Adds method ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS";
 * exact, upper case) + template: an absolute path of '/'-separated segments,
 * each literal (RFC 3986 pchar without '%', i.e. unreserved / sub-delims /
 * ':' / '@'; at most TB__ROUTE_VALUE_MAX bytes, the longest request
 * segment matched) or "{name}" with name [A-Za-z_][A-Za-z0-9_]* up to
 * TB__ROUTE_PARAM_NAME_MAX, unique within the template, at most
 * TB__ROUTE_PARAMS_MAX of them; "/" alone is allowed; no empty segments but
 * a trailing slash ("/ui/" is a path of its own: it matches "/ui/" and
 * neither "/ui" nor "/ui//"). The router copies tmpl; handler and ud are
 * stored as given and never dereferenced. Returns 0, TB_EINVAL (bad method
 * or template), TB_EEXIST (the same method and the same template shape, i.e.
 * same literals with params in the same places, already added), TB_ENOMEM;
 * on error the router is unchanged. Not thread-safe: build the table before
 * serving; matching is then safe from many threads at once. */
int tb__router_add(tb__router *r, const char *method, const char *tmpl,
                   void *handler, void *ud);
/* What tb__router_add(r, method, tmpl, ...) would return if called now, but
 * r is left unchanged: 0, TB_EINVAL, TB_EEXIST or TB_ENOMEM. For callers
 * that add several routes and must add all or none. */
int tb__router_check(const tb__router *r, const char *method, const char *tmpl);
/* Matches method and path (the raw request path, no query string; may
 * contain percent-escapes). A literal segment matches its text exactly
 * (compared after percent-decoding the request segment; '+' is not a space
 * here); a {param} matches any one non-empty segment, whose decoded value is
 * stored. Empty request segments ("//", a trailing '/') match nothing but a
 * template's own trailing slash. When
 * several templates match, the most specific wins: compare segment by
 * segment from the left, a literal beats a param. Returns TB__ROUTE_OK
 * (fills m), TB__ROUTE_BAD_METHOD (some template matches the path but not
 * for this method; m->allow lists the methods that would, in the order
 * above, with HEAD whenever GET is listed), TB__ROUTE_NOT_FOUND, or
 * TB_EINVAL for a malformed path (not starting with '/', an invalid or
 * truncated %XX escape, a decoded NUL or '/', a segment that decodes to more
 * than TB__ROUTE_VALUE_MAX bytes) — the HTTP layer answers 400 for that. A
 * method not in the list above matches no route (so BAD_METHOD or
 * NOT_FOUND). HEAD matches GET routes when no HEAD route matches the path.
 * On any result other than TB__ROUTE_OK, m->handler and m->tmpl are NULL
 * and m->nparams is 0. Never allocates. */
int tb__router_match(const tb__router *r, const char *method, const char *path,
                     tb__route_match *m);
/* The decoded value of param name in m, or NULL. The pointer is into m. */
const char *tb__route_param(const tb__route_match *m, const char *name);
/* Finds key in an application/x-www-form-urlencoded query string (without
 * the leading '?'; NULL or "" is empty) and copies its decoded value ('+' is
 * a space, %XX escapes) into out (outsz bytes, NUL included). Pairs are
 * separated by '&'; empty pairs are skipped. A key without '=' has the value
 * "". The first occurrence wins. Returns the value's length, TB_ENOENT
 * (absent), TB_ENAMETOOLONG (out too small), TB_EINVAL (a bad escape or a
 * decoded NUL in the value or key, or out NULL / outsz 0); on every error
 * but the last, out holds "". Keys
 * are checked up to the first occurrence (all of them when absent); only
 * that occurrence's value is decoded, so a bad escape in another value is
 * not reported. */
int tb__query_get(const char *query, const char *key, char *out, size_t outsz);

#endif /* TASKBUS_HTTP_ROUTE_H */
