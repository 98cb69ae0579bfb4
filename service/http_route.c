/* http_route.c - method + path routing and query strings for the HTTP API. */
#include "http_route.h"

#include "hex.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* The order Allow: lists them in. */
static const char *const methods[] = {"GET",   "POST", "PUT",    "DELETE",
                                      "PATCH", "HEAD", "OPTIONS"};
enum {
    M_GET = 0,
    M_HEAD = 5,
    NMETHODS = 7
};

_Static_assert(sizeof methods / sizeof methods[0] == NMETHODS, "methods");
/* "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS" is 43 bytes. */
_Static_assert(sizeof(((tb__route_match *)0)->allow) > 43, "allow fits all");

/* One template segment: tmpl[off..off+len). For a param, the name without
 * the braces. */
typedef struct seg {
    size_t off, len;
    int param;
} seg;

/* One allocation: the struct, then seg[nseg], then the template text. */
typedef struct route {
    void *handler, *ud;
    int method; /* index into methods[] */
    size_t nseg;
    const char *tmpl;
    seg seg[];
} route;

struct tb__router {
    route **routes;
    size_t n, cap;
};

enum {
    PATH,
    FORM
}; /* decoding modes */

/* The one percent-decoder. Decodes the byte at s[*i] (of n) into *c and
 * advances *i past it: "%XX" is one byte, and in FORM mode '+' is a space.
 * Returns 0, or TB_EINVAL for a bad or truncated escape, a decoded NUL, or
 * (in PATH mode) a decoded '/'. */
static int next_byte(const char *s, size_t n, size_t *i, int mode,
                     unsigned char *c)
{
    unsigned char b = (unsigned char)s[*i];
    if (b == '%') {
        int hi = *i + 2 < n ? tb__hex_digit((unsigned char)s[*i + 1]) : -1;
        int lo = hi >= 0 ? tb__hex_digit((unsigned char)s[*i + 2]) : -1;
        if (lo < 0)
            return TB_EINVAL;
        b = (unsigned char)(hi << 4 | lo);
        if (b == '\0' || (mode == PATH && b == '/'))
            return TB_EINVAL;
        *i += 3;
    } else {
        if (mode == FORM && b == '+')
            b = ' ';
        *i += 1;
    }
    *c = b;
    return 0;
}

/* Decodes s[0..n) into out (outsz bytes; the prefix that fits, always
 * NUL-terminated when outsz > 0) and sets *len to the full decoded length.
 * Returns 0 or TB_EINVAL. */
static int decode(const char *s, size_t n, int mode, char *out, size_t outsz,
                  size_t *len)
{
    size_t i = 0, j = 0;
    while (i < n) {
        unsigned char c;
        int rc = next_byte(s, n, &i, mode, &c);
        if (rc < 0)
            return rc;
        if (j + 1 < outsz)
            out[j] = (char)c;
        j++;
    }
    if (outsz > 0)
        out[j < outsz ? j : outsz - 1] = '\0';
    *len = j;
    return 0;
}

/* 1 if s[0..n) decodes to lit[0..litlen), 0 if not, TB_EINVAL if it does not
 * decode. Decodes all of s either way, so errors do not depend on lit. */
static int decoded_eq(const char *s, size_t n, int mode, const char *lit,
                      size_t litlen)
{
    size_t i = 0, j = 0;
    int eq = 1;
    while (i < n) {
        unsigned char c;
        int rc = next_byte(s, n, &i, mode, &c);
        if (rc < 0)
            return rc;
        if (j >= litlen || (unsigned char)lit[j] != c)
            eq = 0;
        j++;
    }
    return eq && j == litlen;
}

static int method_index(const char *m)
{
    for (int i = 0; i < NMETHODS; i++)
        if (strcmp(m, methods[i]) == 0)
            return i;
    return -1;
}

static int is_pchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("-._~!$&'()*+,;=:@", c) != NULL;
}

static int is_name_char(unsigned char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* Splits and validates the template t (tlen >= 1 bytes, t[0] == '/') into
 * rt->seg[]; rt->nseg is the number of '/' in t, or 0 for "/". */
static int parse_template(route *rt, const char *t, size_t tlen)
{
    size_t start = 1, k = 0, nparams = 0;
    for (size_t i = 1; rt->nseg > 0 && i <= tlen; i++) {
        if (i < tlen && t[i] != '/')
            continue;
        const char *s = t + start;
        size_t len = i - start;
        seg *sg = &rt->seg[k++];
        /* Empty only as the last: "/ui/" is its own path, told from "/ui"
         * (a directory's index page). */
        if (len == 0 && i < tlen)
            return TB_EINVAL;
        if (s[0] == '{') {
            if (len < 3 || s[len - 1] != '}' ||
                len - 2 > TB__ROUTE_PARAM_NAME_MAX ||
                nparams++ == TB__ROUTE_PARAMS_MAX)
                return TB_EINVAL;
            *sg = (seg){start + 1, len - 2, 1};
            for (size_t j = 0; j < sg->len; j++)
                if (!is_name_char((unsigned char)t[sg->off + j], j == 0))
                    return TB_EINVAL;
            for (size_t j = 0; j + 1 < k; j++)
                if (rt->seg[j].param && rt->seg[j].len == sg->len &&
                    memcmp(t + rt->seg[j].off, t + sg->off, sg->len) == 0)
                    return TB_EINVAL;
        } else {
            /* A longer request segment is refused before routing: such a
             * literal could never match. */
            if (len > TB__ROUTE_VALUE_MAX)
                return TB_EINVAL;
            *sg = (seg){start, len, 0};
            for (size_t j = 0; j < len; j++)
                if (!is_pchar((unsigned char)s[j]))
                    return TB_EINVAL;
        }
        start = i + 1;
    }
    return 0;
}

static int same_shape(const route *a, const route *b)
{
    if (a->nseg != b->nseg)
        return 0;
    for (size_t i = 0; i < a->nseg; i++) {
        const seg *x = &a->seg[i], *y = &b->seg[i];
        if (x->param != y->param ||
            (!x->param && (x->len != y->len ||
                           memcmp(a->tmpl + x->off, b->tmpl + y->off, x->len))))
            return 0;
    }
    return 1;
}

tb__router *tb__router_new(void)
{
    return calloc(1, sizeof(tb__router));
}

void tb__router_free(tb__router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->routes[i]);
    free(r->routes);
    free(r);
}

/* A parsed copy of method + tmpl in *out (the caller frees it), checked
 * against r's routes: 0, TB_EINVAL, TB_EEXIST or TB_ENOMEM (then *out is
 * NULL). */
static int route_make(const tb__router *r, const char *method, const char *tmpl,
                      void *handler, void *ud, route **out)
{
    *out = NULL;
    if (r == NULL || method == NULL || tmpl == NULL || tmpl[0] != '/')
        return TB_EINVAL;
    int mi = method_index(method);
    if (mi < 0)
        return TB_EINVAL;
    size_t tlen = strlen(tmpl), nseg = 0;
    for (size_t i = 0; tlen > 1 && i < tlen; i++)
        nseg += tmpl[i] == '/';

    route *rt = malloc(sizeof(route) + nseg * sizeof(seg) + tlen + 1);
    if (rt == NULL)
        return TB_ENOMEM;
    char *text = (char *)(rt->seg + nseg);
    memcpy(text, tmpl, tlen + 1);
    *rt = (route){
        .handler = handler, .ud = ud, .method = mi, .nseg = nseg, .tmpl = text};
    int rc = parse_template(rt, text, tlen);
    for (size_t i = 0; rc == 0 && i < r->n; i++)
        if (r->routes[i]->method == mi && same_shape(r->routes[i], rt))
            rc = TB_EEXIST;
    if (rc < 0) {
        free(rt);
        return rc;
    }
    *out = rt;
    return 0;
}

int tb__router_add(tb__router *r, const char *method, const char *tmpl,
                   void *handler, void *ud)
{
    route *rt;
    int rc = route_make(r, method, tmpl, handler, ud, &rt);
    if (rc)
        return rc;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        route **grown = realloc(r->routes, cap * sizeof(*grown));
        if (grown == NULL) {
            free(rt);
            return TB_ENOMEM;
        }
        r->routes = grown;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;
}

int tb__router_check(const tb__router *r, const char *method, const char *tmpl)
{
    route *rt;
    int rc = route_make(r, method, tmpl, NULL, NULL, &rt);
    free(rt);
    return rc;
}

/* The end of the request segment that starts at p[pos] (of n). */
static size_t seg_end(const char *p, size_t n, size_t pos)
{
    const char *slash = memchr(p + pos, '/', n - pos);
    return slash ? (size_t)(slash - p) : n;
}

/* Whether rt matches the request segments p[0..n) (validated, rt->nseg of
 * them). */
static int route_matches(const route *rt, const char *p, size_t n)
{
    size_t pos = 0;
    for (size_t i = 0; i < rt->nseg; i++) {
        size_t end = seg_end(p, n, pos);
        const seg *sg = &rt->seg[i];
        if (sg->param ? end == pos
                      : decoded_eq(p + pos, end - pos, PATH, rt->tmpl + sg->off,
                                   sg->len) != 1)
            return 0;
        pos = end + 1;
    }
    return 1;
}

/* The more specific of two routes that match the same path (a if equal). */
static const route *more_specific(const route *a, const route *b)
{
    if (a == NULL)
        return b;
    for (size_t i = 0; i < a->nseg; i++)
        if (a->seg[i].param != b->seg[i].param)
            return a->seg[i].param ? b : a;
    return a;
}

int tb__router_match(const tb__router *r, const char *method, const char *path,
                     tb__route_match *m)
{
    if (m == NULL)
        return TB_EINVAL;
    m->handler = m->ud = NULL;
    m->tmpl = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (r == NULL || method == NULL || path == NULL || path[0] != '/')
        return TB_EINVAL;

    /* Validate and count the request segments once; routes are then
     * compared against the raw text, which is known to decode. */
    const char *p = path + 1;
    size_t n = strlen(p), nseg = 0;
    for (size_t pos = 0; n > 0 && pos <= n; nseg++) {
        size_t end = seg_end(p, n, pos), len;
        if (decode(p + pos, end - pos, PATH, NULL, 0, &len) < 0 ||
            len > TB__ROUTE_VALUE_MAX)
            return TB_EINVAL;
        pos = end + 1;
    }

    int mi = method_index(method);
    const route *best = NULL, *get = NULL;
    unsigned allow = 0;
    for (size_t i = 0; i < r->n; i++) {
        const route *rt = r->routes[i];
        if (rt->nseg != nseg || !route_matches(rt, p, n))
            continue;
        allow |= 1u << rt->method;
        if (rt->method == mi)
            best = more_specific(best, rt);
        else if (mi == M_HEAD && rt->method == M_GET)
            get = more_specific(get, rt);
    }
    if (best == NULL)
        best = get;

    if (best == NULL) {
        if (allow == 0)
            return TB__ROUTE_NOT_FOUND;
        if (allow & 1u << M_GET)
            allow |= 1u << M_HEAD;
        size_t len = 0;
        for (int i = 0; i < NMETHODS; i++) {
            if (!(allow & 1u << i))
                continue;
            size_t ml = strlen(methods[i]);
            if (len > 0) {
                memcpy(m->allow + len, ", ", 2);
                len += 2;
            }
            memcpy(m->allow + len, methods[i], ml + 1);
            len += ml;
        }
        return TB__ROUTE_BAD_METHOD;
    }

    m->handler = best->handler;
    m->ud = best->ud;
    m->tmpl = best->tmpl;
    size_t pos = 0;
    for (size_t i = 0; i < nseg; i++) {
        size_t end = seg_end(p, n, pos), len;
        const seg *sg = &best->seg[i];
        if (sg->param) {
            int k = m->nparams++;
            memcpy(m->params[k].name, best->tmpl + sg->off, sg->len);
            m->params[k].name[sg->len] = '\0';
            decode(p + pos, end - pos, PATH, m->params[k].value,
                   sizeof m->params[k].value, &len);
        }
        pos = end + 1;
    }
    return TB__ROUTE_OK;
}

const char *tb__route_param(const tb__route_match *m, const char *name)
{
    if (m == NULL || name == NULL)
        return NULL;
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return m->params[i].value;
    return NULL;
}

int tb__query_get(const char *query, const char *key, char *out, size_t outsz)
{
    if (key == NULL || out == NULL || outsz == 0)
        return TB_EINVAL;
    out[0] = '\0';
    const char *q = query ? query : "";
    size_t klen = strlen(key);
    while (*q != '\0') {
        size_t plen = strcspn(q, "&");
        const char *eq = memchr(q, '=', plen);
        size_t kn = eq ? (size_t)(eq - q) : plen;
        int rc = plen ? decoded_eq(q, kn, FORM, key, klen) : 0;
        if (rc < 0)
            return rc;
        if (rc == 1) {
            size_t vn = eq ? plen - kn - 1 : 0, len;
            rc = decode(q + plen - vn, vn, FORM, out, outsz, &len);
            if (rc < 0 || len >= outsz || len > INT_MAX) {
                out[0] = '\0';
                return rc < 0 ? rc : TB_ENAMETOOLONG;
            }
            return (int)len;
        }
        q += plen + (q[plen] == '&');
    }
    return TB_ENOENT;
}
