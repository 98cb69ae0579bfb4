/* ws.c - websocket connections in the core: endpoints, the accept checks,
 * the hand-over of an upgraded socket to a worker, the handler task, and
 * tb_ws_recv / tb_ws_send. SSE streams (GET /sse) are served the same way:
 * a tb_ws whose framing is the SSE writer (sse.c) and whose socket the
 * HTTP server gives up after the request instead of after a 101.
 *
 * The socket itself is served by the framing adapter the app was given
 * (app->wsconn, see adapter.h), or sse.c's for a stream, called through
 * its ops only.
 *
 * Threads: tb__ws_accept runs on an HTTP thread; everything about a
 * connection after tb__ws_adopt happens on the worker that serves it (its
 * socket, its receive queue, its handler task), except tb_ws_send and
 * tb_ws_close from other threads, which are posted to that worker. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "envelope.h"
#include "http.h"
#include "internal.h"
#include "client_token.h"
#include "ws.h"
#include "ws_impl.h"

#define CLOSE_TIMEOUT_MS 2000

/* ---------------------------------------------------------------- fds */

/* One byte per descriptor number, for the numbers below FD_TABLE_MAX. */
#define FD_TABLE_MAX (1 << 20)
static _Atomic unsigned char fd_table[FD_TABLE_MAX];

int tb__ws_fd_owned(int fd)
{
    return fd >= 0 && fd < FD_TABLE_MAX &&
           atomic_load_explicit(&fd_table[fd], memory_order_relaxed);
}

static void fd_own(int fd, int owned)
{
    if (fd >= 0 && fd < FD_TABLE_MAX)
        atomic_store_explicit(&fd_table[fd], (unsigned char)owned,
                              memory_order_relaxed);
}

/* ---------------------------------------------------------------- memory */

/* Frees the message tb_ws_recv returned last. */
static void drop_cur(tb_ws *ws)
{
    if (!ws->cur)
        return;
    tb__wsm_core_held(ws, -(long long)ws->cur->len);
    free(ws->cur);
    ws->cur = NULL;
}

/* ---------------------------------------------------------------- refs */

static void ws_ref(tb_ws *ws)
{
    atomic_fetch_add_explicit(&ws->refs, 1, memory_order_relaxed);
}

static void ws_unref(tb_ws *ws)
{
    if (atomic_fetch_sub_explicit(&ws->refs, 1, memory_order_acq_rel) != 1)
        return;
    tb__wsm_add(ws, -(long long)ws->held_core);
    while (ws->qhead) {
        wsmsg *m = ws->qhead;
        ws->qhead = m->next;
        free(m);
    }
    free(ws->cur);
    if (ws->fd >= 0) {
        fd_own(ws->fd, 0);
        close(ws->fd);
    }
    atomic_fetch_sub(ws->sse ? &ws->app->sse_clients : &ws->app->ws_clients, 1);
    tb__jwt_claims_free(ws->claims);
    free(ws->head);
    free(ws->path);
    free(ws->query);
    free(ws->params);
    free(ws);
}

void tb__ws_release(tb_ws *ws)
{
    if (ws)
        ws_unref(ws);
}

/* ---------------------------------------------------------------- SSE */

/* The response head of a stream: no Content-Length (the body ends when
 * the connection does), no caching, no buffering by a proxy in front
 * (nginx honours X-Accel-Buffering). NULL on ENOMEM. */
static char *sse_head(const tb_http_req *req)
{
    static const char fmt[] = "HTTP/1.1 200 OK\r\n"
                              "Content-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\n"
                              "X-Accel-Buffering: no\r\n"
                              "X-Request-ID: %s\r\n"
                              "Connection: close\r\n\r\n";
    char *head = malloc(sizeof fmt + sizeof req->request_id);
    if (head)
        snprintf(head, sizeof fmt + sizeof req->request_id, fmt,
                 req->request_id);
    return head;
}

/* GET on an SSE endpoint: the accept checks of a websocket upgrade, then
 * the socket leaves the HTTP server for a worker, which writes the head
 * and everything after it. */
static int sse_request(tb_http_req *req, void *ud)
{
    tb__ws_route *route = ud;
    if (strcmp(req->method, "HEAD") == 0) {
        if (route->check)
            route->check(req, route->ud);
        return req->status
                   ? 0
                   : tb_http_respond(req, 200, "text/event-stream", "", 0);
    }
    if (!req->ops->take)
        return tb_http_error(req, 501, "not_implemented",
                             "this HTTP server cannot hand streams over");
    tb_ws *ws = tb__ws_accept(req, route);
    if (!ws)
        return 0; /* answered */
    ws->head = sse_head(req);
    if (!ws->head) {
        tb__ws_release(ws);
        return tb_http_error(req, 500, "internal", "out of memory");
    }
    int fd = req->ops->take(req->conn);
    if (fd < 0) { /* counted and logged: nobody to answer */
        tb__ws_release(ws);
        return tb__http_abandon(req);
    }
    req->status = 200; /* the head goes out on the worker */
    tb__ws_adopt(ws, fd);
    return 0;
}

/* ---------------------------------------------------------------- framing */

/* The framing adapter's calls, on the worker's thread, for a connection
 * that has not ended (ws->conn set). */

static int conn_send(tb_ws *ws, int binary, const void *data, size_t len)
{
    int rc = ws->ops->send(ws->conn, binary, data, len);
    if (rc == TB_ENOSPC) /* a slow client: now closing with 1008 */
        tb__ws_on_slow_close(ws);
    return rc;
}

int tb__ws_backlogged(tb_ws *ws)
{
    const tb__wsconn_ops *ops = ws->ops;
    return ws->conn && ops->backlogged && tb__worker_current() == ws->w &&
           ops->backlogged(ws->conn);
}

int tb__ws_wait_drained(tb_task *self, tb_ws *ws)
{
    while (tb__ws_backlogged(ws)) {
        if (ws->drain_waiter)
            return TB_EBUSY;
        ws->drain_seq = tb__task_begin_wait(self, TB__WAIT_WS);
        ws->drain_waiter = self;
        int rc = tb__task_suspend(self, "tb__ws_wait_drained");
        ws->drain_waiter = NULL;
        if (rc)
            return rc;
    }
    return 0;
}

void tb__ws_on_drained(tb_ws *ws)
{
    if (ws->drain_waiter)
        tb__task_wake(ws->drain_waiter, ws->drain_seq, 0);
}

void tb__ws_on_slow_close(tb_ws *ws)
{
    atomic_fetch_add(
        ws->sse ? &ws->app->sse_slow_closes : &ws->app->ws_slow_closes, 1);
}

static void conn_close(tb_ws *ws, int code, const char *reason)
{
    ws->ops->close(ws->conn, code, reason);
}

/* ---------------------------------------------------------------- routes */

static int add_endpoint(tb_app *app, const char *path, tb_ws_fn fn,
                        tb_ws_check_fn check, void *ud, tb__http_access access,
                        int sse)
{
    if (!app || !path || !fn)
        return TB_EINVAL;
    if (atomic_load(&app->state) != TB__APP_NEW)
        return TB_EBUSY;
    tb__ws_route *r = calloc(1, sizeof *r);
    if (!r)
        return TB_ENOMEM;
    r->sse = sse;
    r->fn = fn;
    r->check = check;
    r->ud = ud;
    int rc = sse ? tb__app_route_as(app, "GET", path, sse_request, r, access)
                 : tb__http_route_ws(app, path, r, access);
    if (rc) {
        free(r);
        return rc;
    }
    r->next = app->ws_routes;
    app->ws_routes = r;
    return 0;
}

int tb_app_add_websocket(tb_app *app, const char *path, tb_ws_fn fn,
                         tb_ws_check_fn check, void *ud)
{
    return add_endpoint(app, path, fn, check, ud, TB__HTTP_ADMIN, 0);
}

int tb__ws_add_client_endpoint(tb_app *app, const char *path, tb_ws_fn fn,
                               tb_ws_check_fn check, void *ud)
{
    return add_endpoint(app, path, fn, check, ud, TB__HTTP_CLIENT, 0);
}

int tb__sse_add_endpoint(tb_app *app, const char *path, tb_ws_fn fn,
                         tb_ws_check_fn check, void *ud)
{
    return add_endpoint(app, path, fn, check, ud, TB__HTTP_CLIENT, 1);
}

void tb__ws_app_free(tb_app *app)
{
    while (app->ws_routes) {
        tb__ws_route *r = app->ws_routes;
        app->ws_routes = r->next;
        free(r);
    }
}

int tb__ws_clients(tb_app *app)
{
    return atomic_load(&app->ws_clients);
}

int tb__sse_clients(tb_app *app)
{
    return atomic_load(&app->sse_clients);
}

int tb__app_has_websockets(const tb_app *app)
{
    for (const tb__ws_route *r = app->ws_routes; r; r = r->next)
        if (!r->sse)
            return 1;
    return 0;
}

/* ---------------------------------------------------------------- accept */

/* 1 if origin is one of the comma-separated entries of list, or list is
 * "*". Compared exactly (scheme, host and port), ASCII case-insensitively
 * as origins are. */
static int origin_allowed(const char *list, const char *origin)
{
    size_t on = strlen(origin);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        if ((m == 1 && p[0] == '*') ||
            (m == on && m && strncasecmp(p, origin, m) == 0))
            return 1;
        p += n;
    }
    return 0;
}

/* A connection for the accepted upgrade request req, holding one
 * reference, with copies of what its handler may ask for (path, query,
 * the template's params). NULL on ENOMEM. */
static tb_ws *ws_new(tb_http_req *req, tb__ws_route *route)
{
    size_t plen = 0;
    for (int i = 0; i < req->match.nparams; i++)
        plen += strlen(req->match.params[i].name) + 1 +
                strlen(req->match.params[i].value) + 1;
    tb_ws *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->path = strdup(req->path);
    ws->query = req->query ? strdup(req->query) : NULL;
    ws->params = plen ? malloc(plen) : NULL;
    if (!ws->path || (req->query && !ws->query) || (plen && !ws->params)) {
        free(ws->path);
        free(ws->query);
        free(ws->params);
        free(ws);
        return NULL;
    }
    char *p = ws->params;
    for (int i = 0; i < req->match.nparams; i++) {
        size_t a = strlen(req->match.params[i].name) + 1;
        size_t b = strlen(req->match.params[i].value) + 1;
        memcpy(p, req->match.params[i].name, a);
        memcpy(p + a, req->match.params[i].value, b);
        p += a + b;
    }
    ws->nparams = req->match.nparams;
    atomic_init(&ws->refs, 1);
    atomic_init(&ws->closed, 0);
    ws->app = req->app;
    ws->route = route;
    ws->sse = route->sse;
    ws->ops = route->sse ? tb__sse_stream_ops() : req->app->wsconn;
    ws->fd = -1;
    snprintf(ws->request_id, sizeof ws->request_id, "%s",
             tb_http_request_id(req));
    snprintf(ws->peer, sizeof ws->peer, "?");
    ws->claims = req->claims; /* the connection's from now on */
    req->claims = NULL;
    const char *lei = route->sse ? tb_http_header(req, "Last-Event-ID") : NULL;
    if (lei && strlen(lei) < sizeof ws->last_event_id)
        memcpy(ws->last_event_id, lei, strlen(lei) + 1);
    return ws;
}

tb_ws *tb__ws_accept(tb_http_req *req, tb__ws_route *route)
{
    tb_app *app = req->app;
    const tb_app_config *cfg = &app->cfg;
    const char *origin = tb_http_header(req, "Origin");
    if (origin && cfg->ws.allowed_origins &&
        !origin_allowed(cfg->ws.allowed_origins, origin)) {
        tb_http_error(req, 403, "origin_not_allowed",
                      "websocket connections from origin %.200s are not "
                      "allowed (ws_allowed_origins)",
                      origin);
        return NULL;
    }
    if (atomic_load(&app->state) != TB__APP_RUNNING) {
        tb__http_error_headers(req, 503, "stopping", "Retry-After: 1\r\n",
                               "the server is stopping");
        return NULL;
    }
    /* A client slot is taken from here on: every refusal gives it back. */
    atomic_int *clients = route->sse ? &app->sse_clients : &app->ws_clients;
    int max = route->sse ? cfg->ws.sse_max_clients : cfg->ws.max_clients;
    int n = atomic_fetch_add(clients, 1) + 1;
    if (n > max) {
        char msg[128];
        snprintf(msg, sizeof msg,
                 route->sse ? "%d SSE streams are open, the limit "
                              "(sse_max_clients)"
                            : "%d websocket clients are connected, the limit "
                              "(ws_max_clients)",
                 max);
        if (route->sse)
            atomic_fetch_add(&app->sse_refused, 1);
        /* A refused client should not keep an HTTP thread waiting for its
         * next request (the upgrade's connection closes anyway). */
        tb__http_close_after(req);
        tb__http_error_headers(req, 503, "too_many_clients",
                               "Retry-After: 1\r\n", msg);
        goto release;
    }
    /* A client may choose its request id: two live connections must not
     * share the handler's name. */
    char name[TB_TASK_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s:%s", route->sse ? "sse" : "ws",
             tb_http_request_id(req));
    tb_task_info info;
    if (tb_task_get(app, name, &info) > 0 &&
        (info.state == TB_TASK_PENDING || info.state == TB_TASK_RUNNING)) {
        tb_http_error(req, 409, "request_id_in_use",
                      "another %s connection has request id %s",
                      route->sse ? "SSE" : "websocket",
                      tb_http_request_id(req));
        goto release;
    }
    if (route->check) {
        route->check(req, route->ud);
        if (req->status)
            goto release;
    }
    tb_ws *ws = ws_new(req, route);
    if (ws)
        return ws;
    tb_http_error(req, 500, "internal", "out of memory");
release:
    atomic_fetch_sub(clients, 1);
    return NULL;
}

/* ---------------------------------------------------------------- adopt */

static int ws_task(tb_task *self, void *arg);

static void handler_release(void *arg)
{
    tb_ws *ws = arg;
    /* Also reached when the task is abandoned at the graceful timeout, or
     * never ran: nothing may point at it any more, and a connection whose
     * handler never ran must not stay open (ws_task closes the others). */
    ws->handler = NULL;
    ws->handler_done = 1;
    ws->recv_waiter = NULL;
    ws->drain_waiter = NULL;
    if (ws->conn && tb__worker_current() == ws->w && !atomic_load(&ws->closed))
        conn_close(ws, 1011, "the handler did not run");
    ws_unref(ws);
}

static int stopping(const tb_app *app)
{
    return atomic_load(&((tb_app *)app)->state) != TB__APP_RUNNING;
}

/* The client token that opened ws has expired: its rights end, and so
 * does the connection (1008, policy violation: RFC 6455 7.4.1). */
static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb_ws *ws = arg;
    if (!ws->conn || atomic_exchange(&ws->closed, 1))
        return;
    tb__log(TB_LOG_INFO,
            "%s %s (request %s, %s, sub \"%s\"): the client token expired: "
            "closing (1008)",
            KIND(ws), ws->path, ws->request_id, ws->peer, ws->claims->sub);
    conn_close(ws, 1008, "token expired");
}

/* On ws's worker, once its connection is open: logs who it is and arms
 * the expiry of its client token. */
static void client_token_start(tb_ws *ws, struct event_base *base)
{
    int64_t left_us = ws->claims->until_us - tb__now_us();
    tb__log(TB_LOG_INFO,
            "%s %s (request %s, %s): client token of sub \"%s\" (subscribe: "
            "%d patterns, dispatch: %d), expiring in %lld s",
            KIND(ws), ws->path, ws->request_id, ws->peer, ws->claims->sub,
            ws->claims->n[TB__JWT_SUBSCRIBE], ws->claims->n[TB__JWT_DISPATCH],
            (long long)(left_us / 1000000));
    if (left_us < 0)
        left_us = 0;
    if (left_us > (int64_t)INT32_MAX * 1000000)
        left_us = (int64_t)INT32_MAX * 1000000; /* 68 years: never */
    struct timeval tv = {.tv_sec = (time_t)(left_us / 1000000),
                         .tv_usec = (suseconds_t)(left_us % 1000000)};
    ws->expiry = evtimer_new(base, on_expiry, ws);
    if (!ws->expiry || evtimer_add(ws->expiry, &tv) != 0) {
        tb__log(TB_LOG_ERROR,
                "%s %s (request %s): cannot arm the client token's expiry: "
                "closing",
                KIND(ws), ws->path, ws->request_id);
        atomic_store(&ws->closed, 1);
        conn_close(ws, 1011, "out of memory");
    }
}

static void adopt_on_worker(tb_app *app, int wi, void *arg)
{
    tb_ws *ws = arg;
    tb__worker *w = &app->workers[wi];
    int fd = ws->fd;
    ws->fd = -1;
    if (w->stopping) {
        fd_own(fd, 0);
        close(fd);
        atomic_fetch_sub(&w->nws, 1);
        ws_unref(ws);
        return;
    }
    const tb_app_config *cfg = &app->cfg;
    tb__ws_limits lim = {
        .max_message = cfg->ws.max_message,
        .send_queue_bytes = cfg->ws.send_queue_bytes,
        .send_queue_msgs = cfg->ws.send_queue_msgs,
        .ping_interval_ms = cfg->ws.ping_interval_ms,
        .ping_timeout_ms = cfg->ws.ping_timeout_ms,
        .close_timeout_ms = CLOSE_TIMEOUT_MS,
    };
    if (ws->sse) {
        lim.ping_interval_ms = cfg->ws.sse_keepalive_ms;
        lim.max_message = cfg->ws.sse_max_input;
    }
    ws->conn = ws->ops->open(ws, w->base, fd, &lim, ws->peer);
    if (!ws->conn) {
        tb__log(TB_LOG_ERROR, "%s %s (request %s): out of memory", KIND(ws),
                ws->path, ws->request_id);
        fd_own(fd, 0);
        close(fd);
        atomic_fetch_sub(&w->nws, 1);
        ws_unref(ws);
        return;
    }
    /* The reference from accept is now the connection's. */
    if (ws->head) { /* before anything else is queued */
        ws->ops->send(ws->conn, 0, ws->head, strlen(ws->head));
        free(ws->head);
        ws->head = NULL;
    }
    ws->wnext = w->ws_head;
    if (w->ws_head)
        w->ws_head->wprev = ws;
    w->ws_head = ws;
    if (ws->claims)
        client_token_start(ws, w->base);

    char name[TB_TASK_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s:%s", KIND(ws), ws->request_id);
    tb_task_opts opts = {.name = name,
                         .worker = wi,
                         .kind = KIND(ws),
                         .flags = TB_TASK_EPHEMERAL | TB__TASK_LOCAL,
                         .ud_free = handler_release};
    ws_ref(ws);
    int rc = tb__task_add(app, ws_task, ws, &opts, NULL, NULL);
    if (rc) {
        ws_unref(ws);
        ws->handler_done = 1;
        int code = rc == TB_ESHUTDOWN ? 1001 : rc == TB_EEXIST ? 1008 : 1011;
        tb__log(rc == TB_ESHUTDOWN ? TB_LOG_INFO : TB_LOG_WARN,
                "%s %s (request %s, %s): no handler task: %s", KIND(ws),
                ws->path, ws->request_id, ws->peer, tb_strerror(rc));
        atomic_store(&ws->closed, 1);
        conn_close(ws, code, rc == TB_EEXIST ? "request id in use" : "");
    }
}

static void adopt_drop(void *arg)
{
    tb_ws *ws = arg;
    if (ws->w)
        atomic_fetch_sub(&ws->w->nws, 1);
    ws_unref(ws); /* closes fd */
}

/* Whether the n-th occurrence of something logged at most once a second
 * gets its line (from any thread): then *since is how many occurred since
 * the last line. last_us and logged_n are the thing's own. */
int tb__ws_log_due(atomic_int_fast64_t *last_us, atomic_uint_fast64_t *logged_n,
                   uint64_t n, uint64_t *since)
{
    int64_t now = tb__mono_us();
    int64_t last = atomic_load(last_us);
    if (now - last < 1000000 ||
        !atomic_compare_exchange_strong(last_us, &last, now))
        return 0;
    *since = n - atomic_exchange(logged_n, n);
    return 1;
}

/* Counted, and logged at most once a second with the count: a client that
 * resets right after its upgrade leaves no socket to find, and hundreds of
 * them must not write hundreds of lines. */
void tb__ws_handover_failed(tb_app *app, const char *path, const char *addr,
                            int port, int found)
{
    uint64_t n = atomic_fetch_add(&app->ws_handover_failures, 1) + 1;
    uint64_t since;
    if (!tb__ws_log_due(&app->ws_handover_logged_us, &app->ws_handover_logged_n,
                        n, &since))
        return;
    tb__log(found ? TB_LOG_ERROR : TB_LOG_WARN,
            "%s from %s:%d: cannot take the socket over from the HTTP "
            "server (%s); closing it (%" PRIu64 " such failure(s) since the "
            "last line, %" PRIu64 " in all; at most one line a second)",
            path, addr, port,
            found ? "out of descriptors"
                  : "not found: the client closed the connection?",
            since, n);
}

void tb__ws_adopt(tb_ws *ws, int fd)
{
    tb_app *app = ws->app;
    ws->fd = ws->sock = fd;
    fd_own(fd, 1);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sin->sin_addr, a, sizeof a);
        snprintf(ws->peer, sizeof ws->peer, "%s:%u", a, ntohs(sin->sin_port));
    }
    /* The worker serving the fewest connections. */
    int best = 0;
    for (int i = 1; i < app->nworkers; i++)
        if (atomic_load(&app->workers[i].nws) <
            atomic_load(&app->workers[best].nws))
            best = i;
    ws->w = &app->workers[best];
    atomic_fetch_add(&ws->w->nws, 1);
    if (tb__worker_call(ws->w, adopt_on_worker, adopt_drop, ws) != 0) {
        tb__log(TB_LOG_ERROR, "%s %s (request %s): out of memory", KIND(ws),
                ws->path, ws->request_id);
        adopt_drop(ws);
    }
}

/* ---------------------------------------------------------------- handler */

static int ws_task(tb_task *self, void *arg)
{
    tb_ws *ws = arg;
    ws->handler = self;
    int rc = ws->route->fn(self, ws, ws->route->ud);
    ws->handler = NULL;
    ws->handler_done = 1;
    drop_cur(ws);
    if (ws->conn) {
        atomic_store(&ws->closed, 1);
        if (stopping(ws->app))
            conn_close(ws, 1001, "server stopping");
        else
            conn_close(ws, 1000, "");
    }
    return rc;
}

int tb__ws_on_message(tb_ws *ws, int binary, const void *data, size_t len)
{
    wsmsg *m = malloc(sizeof *m + len + 1);
    if (!m) {
        tb__log(TB_LOG_ERROR,
                "ws %s (request %s): out of memory for a message of %zu "
                "bytes; closing",
                ws->path, ws->request_id, len);
        conn_close(ws, 1011, "out of memory");
        return 1;
    }
    m->next = NULL;
    m->binary = binary;
    m->len = len;
    if (len)
        memcpy(m->data, data, len);
    m->data[len] = '\0';
    if (ws->qtail)
        ws->qtail->next = m;
    else
        ws->qhead = m;
    ws->qtail = m;
    ws->qlen++;
    ws->qbytes += len;
    tb__wsm_core_held(ws, (long long)len);
    if (ws->recv_waiter)
        tb__task_wake(ws->recv_waiter, ws->recv_seq, 0);
    /* Bounded in messages, and in bytes to about one more than the
     * largest message: 64 messages of 1 MiB would otherwise wait. */
    if (ws->qlen >= ws->app->cfg.ws.recv_queue_msgs ||
        ws->qbytes >= ws->app->cfg.ws.max_message) {
        ws->paused = 1;
        return 1;
    }
    return 0;
}

void tb__ws_on_closing(tb_ws *ws)
{
    atomic_store(&ws->closed, 1);
}

void tb__ws_on_end(tb_ws *ws, int code, const char *why)
{
    tb__worker *w = ws->w;
    ws->conn = NULL;
    tb__wsm_add(ws, -(long long)ws->held_conn); /* the framing frees it next */
    ws->held_conn = 0;
    tb__wsm_settle(ws); /* its queue is the handler's to drain */
    if (ws->expiry) {
        event_free(ws->expiry);
        ws->expiry = NULL;
    }
    fd_own(ws->sock, 0); /* the adapter closes it next */
    ws->close_code = code ? code : 1006;
    atomic_store(&ws->closed, 1);
    if (ws->wprev)
        ws->wprev->wnext = ws->wnext;
    else
        w->ws_head = ws->wnext;
    if (ws->wnext)
        ws->wnext->wprev = ws->wprev;
    ws->wprev = ws->wnext = NULL;
    atomic_fetch_sub(&w->nws, 1);
    tb__log(TB_LOG_DEBUG, "%s %s (request %s, %s%s%s%s): closed (%d): %s",
            KIND(ws), ws->path, ws->request_id, ws->peer,
            ws->claims ? ", sub \"" : "", tb__ws_sub(ws),
            ws->claims ? "\"" : "", ws->close_code, why);
    tb_task *reader = ws->recv_waiter;
    if (reader)
        tb__task_wake(reader, ws->recv_seq, TB_EPIPE);
    tb_task *drainer = ws->drain_waiter;
    if (drainer)
        tb__task_wake(drainer, ws->drain_seq, TB_EPIPE);
    /* A handler waiting on something else is cancelled, as Sanic does;
     * one waiting in tb_ws_recv or for the send queue learns it from
     * TB_EPIPE. */
    if (ws->handler && !ws->handler_done && ws->handler != reader &&
        ws->handler != drainer)
        tb__task_cancel_async(ws->handler);
    ws_unref(ws); /* the connection's */
}

void tb__ws_worker_shutdown(tb__worker *w)
{
    /* Every task of w has ended or was abandoned (possibly inside
     * tb_ws_recv): nobody may be woken any more. */
    for (tb_ws *ws = w->ws_head; ws; ws = ws->wnext) {
        ws->recv_waiter = NULL;
        ws->drain_waiter = NULL;
        ws->handler = NULL;
        ws->handler_done = 1;
    }
    while (w->ws_head) {
        tb_ws *ws = w->ws_head;
        ws->ops->abort(ws->conn); /* unlinks it through on_end */
    }
}

/* ---------------------------------------------------------------- API */

int tb_ws_recv(tb_task *self, tb_ws *ws, int timeout_ms, tb_ws_msg *msg)
{
    int rc = tb__task_enter(self, "tb_ws_recv");
    if (rc)
        return rc;
    if (!ws || !msg || self->w != ws->w)
        return TB_EINVAL;
    if (ws->recv_waiter)
        return TB_EBUSY; /* one reader at a time */
    drop_cur(ws);
    for (;;) {
        if (ws->qhead) {
            wsmsg *m = ws->qhead;
            ws->qhead = m->next;
            if (!ws->qhead)
                ws->qtail = NULL;
            ws->qlen--;
            ws->qbytes -= m->len;
            ws->cur = m;
            msg->type = m->binary ? TB_WS_BINARY : TB_WS_TEXT;
            msg->data = m->data;
            msg->len = m->len;
            if (ws->paused && ws->conn &&
                ws->qlen < ws->app->cfg.ws.recv_queue_msgs &&
                ws->qbytes < ws->app->cfg.ws.max_message) {
                ws->paused = 0;
                ws->ops->pause(ws->conn, 0);
            }
            return 0;
        }
        if (!ws->conn)
            return TB_EPIPE;
        if (timeout_ms == 0)
            return TB_ETIMEDOUT;
        ws->recv_seq = tb__task_begin_wait(self, TB__WAIT_WS);
        tb__timer tmr;
        if (timeout_ms > 0 &&
            (rc = tb__task_arm_timer(self, &tmr, ws->recv_seq, timeout_ms))) {
            self->wait_kind = TB__WAIT_NONE;
            return rc;
        }
        ws->recv_waiter = self;
        rc = tb__task_suspend(self, "tb_ws_recv");
        ws->recv_waiter = NULL;
        tb__task_disarm_timer(self);
        if (rc == TB_EPIPE && ws->qhead)
            continue; /* messages that came before the close come first */
        if (rc)
            return rc;
    }
}

typedef struct sendmsg_call {
    tb_ws *ws;
    int binary; /* -1: a close with code (len) and reason (data) */
    size_t len;
    char data[];
} sendmsg_call;

static void send_on_worker(tb_app *app, int wi, void *arg)
{
    (void)app;
    (void)wi;
    sendmsg_call *m = arg;
    if (m->ws->conn) {
        if (m->binary < 0)
            conn_close(m->ws, (int)m->len, m->data);
        else
            conn_send(m->ws, m->binary, m->data, m->len);
    }
    ws_unref(m->ws);
    free(m);
}

static void send_drop(void *arg)
{
    sendmsg_call *m = arg;
    ws_unref(m->ws);
    free(m);
}

static int post_to_worker(tb_ws *ws, int binary, const void *data, size_t len,
                          size_t copy)
{
    sendmsg_call *m = malloc(sizeof *m + copy + 1);
    if (!m)
        return TB_ENOMEM;
    m->ws = ws;
    m->binary = binary;
    m->len = len;
    if (copy)
        memcpy(m->data, data, copy);
    m->data[copy] = '\0';
    ws_ref(ws);
    int rc = tb__worker_call(ws->w, send_on_worker, send_drop, m);
    if (rc) {
        ws_unref(ws);
        free(m);
    }
    return rc;
}

static int ws_send(tb_ws *ws, int binary, const void *data, size_t len)
{
    if (len > ws->app->cfg.ws.send_queue_bytes)
        return TB_EMSGSIZE;
    if (atomic_load(&ws->closed))
        return TB_EPIPE;
    if (tb__worker_current() == ws->w)
        return ws->conn ? conn_send(ws, binary, data, len) : TB_EPIPE;
    return post_to_worker(ws, binary, data, len, len);
}

int tb_ws_send(tb_ws *ws, tb_ws_type type, const void *data, size_t len)
{
    if (!ws || (type != TB_WS_TEXT && type != TB_WS_BINARY) || (len && !data))
        return TB_EINVAL;
    if (type == TB_WS_TEXT && !tb__utf8_valid(data, len))
        return TB_EINVAL;
    return ws_send(ws, type == TB_WS_BINARY, data, len);
}

int tb_ws_send_event(tb_ws *ws, const tb_event *ev)
{
    if (!ws || !ev)
        return TB_EINVAL;
    size_t len;
    const char *json = tb_event_json(ev, &len);
    if (!json)
        return TB_ENOMEM;
    return ws_send(ws, 0, json, len);
}

void tb_ws_close(tb_ws *ws, int code, const char *reason)
{
    if (!ws)
        return;
    if (code < 1000 || code > 4999 || (code >= 1004 && code <= 1006) ||
        code == 1015)
        code = 1000;
    if (!reason)
        reason = "";
    size_t rlen = strnlen(reason, 123);
    if (atomic_exchange(&ws->closed, 1))
        return;
    if (tb__worker_current() == ws->w) {
        if (ws->conn) {
            char r[124];
            memcpy(r, reason, rlen);
            r[rlen] = '\0';
            conn_close(ws, code, r);
        }
        return;
    }
    post_to_worker(ws, -1, reason, (size_t)code, rlen);
}

int tb_ws_worker(const tb_ws *ws)
{
    return ws && ws->w ? ws->w->index : -1;
}

tb_app *tb_ws_app(const tb_ws *ws)
{
    return ws ? ws->app : NULL;
}

const char *tb_ws_request_id(const tb_ws *ws)
{
    return ws->request_id;
}

const char *tb_ws_path(const tb_ws *ws)
{
    return ws->path;
}

const char *tb_ws_param(const tb_ws *ws, const char *name)
{
    if (!ws || !name)
        return NULL;
    const char *p = ws->params;
    for (int i = 0; i < ws->nparams; i++) {
        const char *value = p + strlen(p) + 1;
        if (strcmp(p, name) == 0)
            return value;
        p = value + strlen(value) + 1;
    }
    return NULL;
}

int tb_ws_query(const tb_ws *ws, const char *key, char *out, size_t outsz)
{
    if (!ws || !key)
        return TB_EINVAL;
    return tb__query_get(ws->query, key, out, outsz);
}

int tb_ws_close_code(const tb_ws *ws)
{
    return ws ? ws->close_code : 0;
}

const tb__jwt_claims *tb__ws_claims(const tb_ws *ws)
{
    return ws->claims;
}

const char *tb__ws_last_event_id(const tb_ws *ws)
{
    return ws->last_event_id;
}

const char *tb__ws_sub(const tb_ws *ws)
{
    return ws->claims ? ws->claims->sub : "";
}
