/* http.c - HTTP requests in the core: routes, handlers, answers and JSON
 * errors. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "api.h"
#include "http.h"
#include "internal.h"
#include "client_token.h"
#include "metrics.h"
#include "ws.h"

/* What the router keeps as a route's handler: it keeps a void *, and ISO C
 * does not convert function pointers to void *. */
typedef struct route_fn {
    tb_http_fn fn;
    tb__http_access access;  /* who may use it when there is an API token */
    tb__ws_route *ws;        /* a websocket endpoint: upgrades go there */
    tb__http_start_fn start; /* or NULL: fn only */
} route_fn;

static int route_add(tb_app *app, const char *method, const char *path,
                     tb_http_fn fn, void *ud, tb__http_access access,
                     tb__ws_route *ws, tb__http_start_fn start)
{
    if (!app || !method || !path || !fn)
        return TB_EINVAL;
    if (atomic_load(&app->state) != TB__APP_NEW)
        return TB_EBUSY;
    if (!app->router && !(app->router = tb__router_new()))
        return TB_ENOMEM;
    /* Made here, before serving, so requests never race to make it. */
    if (!app->metrics && !(app->metrics = tb__metrics_new()))
        return TB_ENOMEM;
    route_fn *h = malloc(sizeof *h);
    if (!h)
        return TB_ENOMEM;
    h->fn = fn;
    h->access = access;
    h->ws = ws;
    h->start = start;
    int rc = tb__router_add(app->router, method, path, h, ud);
    if (rc) {
        free(h);
        return rc;
    }
    /* Kept to be freed with the app. */
    void **v =
        realloc(app->route_fns, (app->nroute_fns + 1) * sizeof *app->route_fns);
    if (!v) {
        /* Still registered: the handler lives as long as the router. */
        tb__log(TB_LOG_WARN, "route %s %s: cannot track its handler", method,
                path);
        return 0;
    }
    app->route_fns = v;
    app->route_fns[app->nroute_fns++] = h;
    return 0;
}

/* A plain GET on a websocket path. */
static int upgrade_required(tb_http_req *req, void *ud)
{
    (void)ud;
    return tb_http_error(req, 426, "upgrade_required",
                         "this path is a websocket endpoint: connect with a "
                         "websocket client (Upgrade: websocket)");
}

int tb__http_route_ws(tb_app *app, const char *path, tb__ws_route *route,
                      tb__http_access access)
{
    return route_add(app, "GET", path, upgrade_required, NULL, access, route,
                     NULL);
}

int tb_app_add_route(tb_app *app, const char *method, const char *path,
                     tb_http_fn fn, void *ud)
{
    return route_add(app, method, path, fn, ud, TB__HTTP_ADMIN, NULL, NULL);
}

int tb__app_route_as(tb_app *app, const char *method, const char *path,
                     tb_http_fn fn, void *ud, tb__http_access access)
{
    return route_add(app, method, path, fn, ud, access, NULL, NULL);
}

int tb__app_route_async(tb_app *app, const char *method, const char *path,
                        tb_http_fn fn, tb__http_start_fn start,
                        tb__http_access access)
{
    return route_add(app, method, path, fn, NULL, access, NULL, start);
}

const tb__router *tb__http_router(const tb_app *app)
{
    return app->router;
}

/* ---------------------------------------------------------------- accessors */

tb_app *tb_http_app(const tb_http_req *req)
{
    return req->app;
}

const char *tb_http_method(const tb_http_req *req)
{
    return req->method;
}

const char *tb_http_path(const tb_http_req *req)
{
    return req->path;
}

const char *tb_http_request_id(const tb_http_req *req)
{
    return req->request_id;
}

const char *tb_http_param(const tb_http_req *req, const char *name)
{
    return tb__route_param(&req->match, name);
}

int tb_http_query(const tb_http_req *req, const char *key, char *out,
                  size_t outsz)
{
    return tb__query_get(req->query, key, out, outsz);
}

const char *tb_http_header(const tb_http_req *req, const char *name)
{
    return req->ops->header(req->conn, name);
}

const void *tb_http_body(const tb_http_req *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body ? req->body : "";
}

/* ---------------------------------------------------------------- answers */

static int send_answer(tb_http_req *req, int status, const char *ctype,
                       const char *extra, const void *body, size_t len)
{
    if (req->status)
        return TB_EBUSY;
    req->status = status;
    char headers[1536]; /* the dashboard's security headers fit */
    snprintf(headers, sizeof headers, "%s%s%sX-Request-ID: %s\r\n%s",
             ctype ? "Content-Type: " : "", ctype ? ctype : "",
             ctype ? "\r\n" : "", req->request_id, extra ? extra : "");
    return req->ops->send(req->conn, status, headers, body, len);
}

int tb_http_respond(tb_http_req *req, int status, const char *content_type,
                    const void *body, size_t len)
{
    return send_answer(req, status, content_type, NULL, body, len);
}

int tb__http_respond_headers(tb_http_req *req, int status,
                             const char *content_type, const char *headers,
                             const void *body, size_t len)
{
    return send_answer(req, status, content_type, headers, body, len);
}

int tb_http_respond_json(tb_http_req *req, int status, const char *json)
{
    return send_answer(req, status, "application/json", NULL, json,
                       strlen(json));
}

/* {"error": code, "message": message} built with jansson; NULL on ENOMEM. */
static char *error_body(const char *code, const char *message)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "error", json_string(code));
    /* The message may quote user input that is not UTF-8, or that a
     * "%.80s" cut in the middle of a character: those bytes become U+FFFD
     * and the rest of the message still reaches the client. */
    json_object_set_new(o, "message", tb__api_jstr(message));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Logs an error answer, naming the request (and the client token's sub,
 * if it came with one). */
static void log_error(const tb_http_req *req, int status, const char *code,
                      const char *message)
{
    const char *sub = req->claims ? req->claims->sub : NULL;
    tb__log(status >= 500 ? TB_LOG_ERROR : TB_LOG_INFO,
            "http %s %s (request %s%s%s%s): %d %s: %s", req->method, req->path,
            req->request_id, sub ? ", sub \"" : "", sub ? sub : "",
            sub ? "\"" : "", status, code, message);
}

static int error_answer(tb_http_req *req, int status, const char *code,
                        const char *message, const char *extra)
{
    log_error(req, status, code, message);
    char *body = error_body(code, message);
    int rc = send_answer(req, status, "application/json", extra,
                         body ? body : "{\"error\":\"internal\"}",
                         body ? strlen(body) : 19);
    free(body);
    return rc;
}

static void set_request_id(tb_http_req *req);

int tb__http_forbidden(tb_http_req *req, tb__jwt_right right,
                       const char *pattern)
{
    char msg[TB__JWT_FORBIDDEN_MAX];
    tb__jwt_forbidden_message(req->claims, right, pattern, msg);
    log_error(req, 403, "forbidden", msg);
    json_t *o = json_object();
    char *body = NULL;
    if (o) {
        json_object_set_new(o, "error", json_string("forbidden"));
        json_object_set_new(o, "message", json_string(msg));
        json_object_set_new(o, "pattern", json_string(pattern));
        body = json_dumps(o, JSON_COMPACT);
        json_decref(o);
    }
    int rc = send_answer(req, 403, "application/json", NULL,
                         body ? body : "{\"error\":\"forbidden\"}",
                         body ? strlen(body) : 21);
    free(body);
    return rc;
}

int tb__http_error_headers(tb_http_req *req, int status, const char *code,
                           const char *headers, const char *message)
{
    if (!req->request_id[0])
        set_request_id(req);
    return error_answer(req, status, code, message, headers);
}

int tb_http_error(tb_http_req *req, int status, const char *code,
                  const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return error_answer(req, status, code, msg, NULL);
}

int tb__http_client_gone(tb_http_req *req)
{
    return req->ops->gone && req->ops->gone(req->conn);
}

void tb__http_close_after(tb_http_req *req)
{
    if (req->ops->close)
        req->ops->close(req->conn);
}

int tb__http_abandon(tb_http_req *req)
{
    if (req->status)
        return TB_EBUSY;
    req->status = TB__HTTP_STATUS_GONE;
    return 0;
}

/* ---------------------------------------------------------------- dispatch */

/* X-Request-ID when usable (1..64 printable ASCII), else a fresh id. */
static void set_request_id(tb_http_req *req)
{
    const char *h = req->ops->header(req->conn, "X-Request-ID");
    size_t n = h ? strlen(h) : 0;
    int ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = h[i] > 0x20 && h[i] < 0x7f;
    if (ok)
        memcpy(req->request_id, h, n + 1);
    else
        snprintf(req->request_id, sizeof req->request_id, "%s-h%" PRIx64,
                 req->app->instance,
                 atomic_fetch_add(&req->app->event_seq, 1) + 1);
}

/* 1 if the n bytes at given equal token. The time taken depends on the
 * token's length only, not on where the bytes first differ. */
static int token_equal(const char *given, size_t n, const char *token)
{
    size_t tn = strlen(token);
    volatile unsigned char diff = n != tn;
    for (size_t i = 0; i < tn; i++)
        diff |= (unsigned char)token[i] ^ (unsigned char)(i < n ? given[i] : 0);
    return diff == 0;
}

/* The credential a request carries: "Authorization: Bearer <credential>"
 * (scheme in any case, RFC 7235), else a "token" query parameter (browsers
 * cannot set headers on a websocket). Copied into out (outsz bytes) and
 * its length returned; TB_ENOENT without one; TB_ENAMETOOLONG when it does
 * not fit (its length, or what fits of it, is then in *len when known);
 * TB_EINVAL for another scheme or a bad escape. */
static int credential(tb_http_req *req, char *out, size_t outsz, size_t *len)
{
    const char *h = req->ops->header(req->conn, "Authorization");
    *len = 0;
    if (h) {
        while (*h == ' ' || *h == '\t')
            h++;
        if (strncasecmp(h, "Bearer ", 7) != 0)
            return TB_EINVAL;
        h += 7;
        while (*h == ' ')
            h++;
        size_t n = strlen(h);
        while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
            n--;
        *len = n;
        if (n >= outsz)
            return TB_ENAMETOOLONG;
        memcpy(out, h, n);
        out[n] = '\0';
        return (int)n;
    }
    int rc = tb__query_get(req->query, "token", out, outsz);
    *len = rc >= 0 ? (size_t)rc : rc == TB_ENAMETOOLONG ? outsz : 0;
    return rc;
}

/* A refusal of the credentials: 401 with code and message. */
static int unauthorized(tb_http_req *req, const char *code, const char *msg,
                        int bad_token)
{
    error_answer(req, 401, code, msg,
                 bad_token
                     ? "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"
                     : "WWW-Authenticate: Bearer\r\n");
    return req->status;
}

/* Checks a client token (JWT) for route h: 0 with req->claims set, else
 * req answered (401, 403 off the event routes, 500) and its status. */
static int authorize_client(tb_http_req *req, const route_fn *h,
                            const char *cred, size_t len)
{
    tb_app *app = req->app;
    tb__jwt_refusal why;
    tb__jwt_claims *claims;
    int rc =
        tb__jwt_check(app->jwt, cred, len, app->cfg.core.json_max_depth,
                      app->cfg.ws.max_patterns, tb__now_us(), &claims, &why);
    if (rc == TB_ENOMEM) {
        error_answer(req, 500, "internal", "out of memory", NULL);
        return req->status;
    }
    if (rc)
        return unauthorized(req, why.code, why.message, 1);
    req->claims = claims;
    if (!h || h->access != TB__HTTP_CLIENT) {
        error_answer(req, 403, "forbidden",
                     "a client token (JWT) opens the event routes only (GET "
                     "/ws, GET /sse, GET and POST /events/{...}); this needs "
                     "the API token",
                     NULL);
        return req->status;
    }
    tb__log(TB_LOG_DEBUG,
            "http %s %s (request %s): client token of sub \"%s\", expiring "
            "in %lld s",
            req->method, req->path, req->request_id, claims->sub,
            (long long)(claims->until_us - tb__now_us()) / 1000000);
    return 0;
}

/* 0 if req may go on to routing and its handler: no token is configured,
 * the matched route is open (GET and HEAD of /healthz, /readyz and the
 * dashboard's files), the
 * request carries the API token, or a valid client token for an event
 * route (req->claims then holds its claims, the request's). Else answers
 * 401 (403 for a client token off the event routes) and returns its
 * status. Runs before any 404, 405 or 400 of the router, so that a client
 * without the token learns nothing of which paths and methods exist. rc and
 * req->match are the router's. Neither the token nor what was sent is ever
 * logged. */
static int authorize(tb_http_req *req, int rc)
{
    const char *token = req->app->cfg.http.api_token;
    if (!token || !token[0])
        return 0; /* client tokens need an API token (config.c) */
    const route_fn *h = rc == TB__ROUTE_OK ? req->match.handler : NULL;
    if (h && h->access == TB__HTTP_OPEN)
        return 0;
    int jwt = req->app->jwt != NULL;
    /* Room for the longest client token, or for an API token and one byte
     * more (so that a longer one is known to be wrong). */
    size_t cap = jwt ? (size_t)req->app->cfg.http.jwt_max_size + 1 : 258;
    char *cred = malloc(cap);
    if (!cred) {
        error_answer(req, 500, "internal", "out of memory", NULL);
        return req->status;
    }
    size_t len;
    int got = credential(req, cred, cap, &len);
    int status = 0;
    if (got == TB_ENOENT)
        status = unauthorized(
            req, "unauthorized",
            jwt ? "this API needs a token: send \"Authorization: Bearer "
                  "<token>\" (or ?token=<token>) with the API token or, on "
                  "the event routes, a client token (JWT)"
                : "this API needs its token: send \"Authorization: Bearer "
                  "<token>\" (or ?token=<token>)",
            0);
    else if (got >= 0 && token_equal(cred, len, token))
        status = 0;
    else if (jwt && got == TB_ENAMETOOLONG)
        status = unauthorized(req, "token_too_large",
                              "the token is longer than http.jwt_max_size "
                              "allows",
                              1);
    else if (jwt && got >= 0 && memchr(cred, '.', len))
        status = authorize_client(req, h, cred, len);
    else
        status = unauthorized(req, "unauthorized", "wrong API token", 0);
    explicit_bzero(cred, cap);
    free(cred);
    return status;
}

static int route(tb_http_req *req)
{
    return req->app->router ? tb__router_match(req->app->router, req->method,
                                               req->path, &req->match)
                            : TB__ROUTE_NOT_FOUND;
}

static int dispatch(tb_http_req *req, tb_ws **upgrade)
{
    set_request_id(req);
    int rc = route(req);
    if (authorize(req, rc))
        return req->status;
    if (rc == TB__ROUTE_NOT_FOUND) {
        error_answer(req, 404, "not_found", "no such route", NULL);
        return req->status;
    }
    if (rc == TB__ROUTE_BAD_METHOD) {
        char allow[96];
        snprintf(allow, sizeof allow, "Allow: %s\r\n", req->match.allow);
        error_answer(req, 405, "method_not_allowed",
                     "method not allowed on this path", allow);
        return req->status;
    }
    if (rc != TB__ROUTE_OK) {
        error_answer(req, 400, "bad_path",
                     "malformed path (bad percent-escape, or an encoded '/' "
                     "or NUL)",
                     NULL);
        return req->status;
    }
    const route_fn *h = req->match.handler;
    if (upgrade) {
        if (!h->ws) {
            error_answer(req, 404, "not_found",
                         "no websocket endpoint at this path", NULL);
            return req->status;
        }
        *upgrade = tb__ws_accept(req, h->ws);
        return req->status; /* 0: accepted, the 101 is the adapter's */
    }
    h->fn(req, req->match.ud);
    if (!req->status)
        error_answer(req, 500, "internal", "the handler did not answer", NULL);
    return req->status;
}

/* The request the server read, about to be handled; the rest zero: no
 * route matched yet (match.tmpl NULL), no request id, not answered. */
static tb_http_req request_of(tb_app *app, const tb__http_in *in)
{
    return (tb_http_req){
        .app = app,
        .ops = in->ops,
        .conn = in->conn,
        .method = in->method,
        .path = in->path,
        .query = in->query,
        .body = in->body,
        .body_len = in->body_len,
        .start_us = tb__mono_us(),
    };
}

/* Counts req, answered with status, for /metrics. */
static void count(tb_http_req *req, int status)
{
    if (status && req->app->metrics)
        tb__metrics_count(req->app->metrics, req->match.tmpl, req->method,
                          status,
                          (double)(tb__mono_us() - req->start_us) / 1e6);
}

int tb__http_refuse(tb_app *app, const tb__http_in *in, int status,
                    const char *code, const char *headers, const char *message)
{
    tb_http_req req = request_of(app, in);
    tb__http_error_headers(&req, status, code, headers, message);
    return status;
}

int tb__http_handle(tb_app *app, const tb__http_in *in)
{
    tb_http_req r = request_of(app, in), *req = &r;
    int status = dispatch(req, NULL);
    tb__jwt_claims_free(req->claims);
    count(req, status);
    return status;
}

/* The end of an asynchronous request: answered (500 if its handler did
 * not), its claims freed, counted. Its status. */
static int handled(tb_http_req *req)
{
    if (!req->status)
        error_answer(req, 500, "internal", "the handler did not answer", NULL);
    tb__jwt_claims_free(req->claims);
    req->claims = NULL;
    count(req, req->status);
    return req->status;
}

int tb__http_start(tb_app *app, const tb__http_in *in, tb_http_req *req,
                   void (*done)(void *ud), void *ud, tb__http_work **work)
{
    *work = NULL;
    *req = request_of(app, in);
    int rc = route(req);
    const route_fn *h = rc == TB__ROUTE_OK ? req->match.handler : NULL;
    if (!h || !h->start)
        return TB__HTTP_RELAY;
    /* From here as dispatch() with a route that matched. */
    set_request_id(req);
    if (!authorize(req, rc))
        h->start(req, done, ud, work);
    return *work ? 0 : handled(req);
}

int tb__http_finish(tb_http_req *req, tb__http_work *work, int why)
{
    work->answer(req, work, why);
    return handled(req);
}

tb_ws *tb__http_handle_upgrade(tb_app *app, const tb__http_in *in)
{
    tb_http_req r = request_of(app, in), *req = &r;
    tb_ws *ws = NULL;
    int status = dispatch(req, &ws);
    if (!status && !ws)
        error_answer(req, 500, "internal", "upgrade failed", NULL);
    tb__jwt_claims_free(req->claims); /* NULL when ws took them */
    if (req->app->metrics)
        tb__metrics_count(req->app->metrics, req->match.tmpl, req->method,
                          ws ? 101 : req->status,
                          (double)(tb__mono_us() - req->start_us) / 1e6);
    return ws;
}
