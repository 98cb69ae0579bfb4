/* http.h - HTTP requests in the core (private): the request, routes, answers
 * and errors. The server adapter's side of it is in adapter.h. */
#ifndef TASKBUS_HTTP_H
#define TASKBUS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

#include "adapter.h"
#include "http_route.h"
#include "client_token.h"

/* One request while it is handled: what the server read (tb__http_in),
 * then the route that matched, the request id and the status answered. */
struct tb_http_req {
    tb_app *app;
    const tb__http_conn_ops *ops;
    void *conn;
    const char *method;
    const char *path;  /* raw, not decoded, no query */
    const char *query; /* raw, after '?', or NULL */
    const char *body;  /* NUL-terminated; the adapter owns it */
    size_t body_len;
    tb__route_match match;
    struct tb__jwt_claims *claims; /* the client token's (the request's
                                      own), or NULL: the API token, or none
                                      needed */
    char request_id[72];
    int status;       /* answered with; 0 while not answered */
    int64_t start_us; /* monotonic, when handling began (the metrics) */
};

/* The app's HTTP state, created on first tb_app_add_route. */
typedef struct tb__http tb__http;

/* 1 if req's client has gone (the connection's gone op), else 0. For a
 * handler that waits long (the long poll): it should stop waiting and end
 * with tb__http_abandon. */
int tb__http_client_gone(tb_http_req *req);

/* Closes req's connection after its answer (the close op; call before
 * answering): for refusals under load, whose client should not keep a
 * server thread waiting for its next request. */
void tb__http_close_after(tb_http_req *req);

/* The status of a request whose client went before the answer (nginx's
 * "client closed request"): counted and logged, never sent. */
#define TB__HTTP_STATUS_GONE 499

/* Ends req without an answer, its client having gone: req->status becomes
 * TB__HTTP_STATUS_GONE (for the metrics and civetweb's access log) and
 * nothing is sent. Returns 0; TB_EBUSY if req was answered already. */
int tb__http_abandon(tb_http_req *req);

/* An error answer with extra headers ("Name: value\r\n"...); it gives req
 * a request id if it has none yet. */
int tb__http_error_headers(tb_http_req *req, int status, const char *code,
                           const char *headers, const char *message);

/* tb_http_respond with extra headers ("Name: value\r\n"..., at most
 * about 1400 bytes with the rest). */
int tb__http_respond_headers(tb_http_req *req, int status,
                             const char *content_type, const char *headers,
                             const void *body, size_t len);

/* Who may use a route when the app has an api_token. */
typedef enum {
    TB__HTTP_ADMIN = 0, /* the API token only (tb_app_add_route's) */
    TB__HTTP_OPEN,      /* anyone (the health probes) */
    TB__HTTP_CLIENT     /* the API token, or a client token (JWT) whose
                           claims the handler checks (the event routes) */
} tb__http_access;

/* tb_app_add_route with the route's access. Same contract otherwise. */
int tb__app_route_as(tb_app *app, const char *method, const char *path,
                     tb_http_fn fn, void *ud, tb__http_access access);

/* Answers 403 forbidden: req's client token does not grant right on
 * pattern. The body names the pattern ({"error", "message", "pattern"}). */
int tb__http_forbidden(tb_http_req *req, tb__jwt_right right,
                       const char *pattern);

/* ---- requests answered later, without a thread that waits ----
 *
 * The HTTP front answers POST /events, POST /events/{name} and GET (HEAD)
 * /healthz itself (http_front_events.c): their handlers have an
 * asynchronous twin that starts the publish (the workers' probes) and
 * returns; the answer is built when the bus has confirmed (every worker
 * has answered), on the front's thread. */

/* What such a handler leaves running; the handler's own state follows
 * it. answer answers req for it (why: 0, the work is done; TB_ETIMEDOUT,
 * the caller stopped waiting) and lets go of it: done is never called
 * after answer has begun. With why TB__HTTP_GONE (the client has gone:
 * an answer nobody reads) the work is answered the same, but done still
 * runs once it is over, and the caller lets go with release (after done,
 * or before: done never runs after release has returned). */
typedef struct tb__http_work tb__http_work;
struct tb__http_work {
    int (*answer)(tb_http_req *req, tb__http_work *w, int why);
    void (*release)(tb__http_work *w);
    int timeout_ms; /* the caller answers with TB_ETIMEDOUT after this */
};
#define TB__HTTP_GONE 1

/* An asynchronous handler: answers req at once and returns its status
 * (*work NULL), or starts the work and returns 0 with *work set: done(ud)
 * then runs exactly once, from any thread (a bus's; or this one, before
 * this returns), once the answer can be made, unless answer has begun. */
typedef int (*tb__http_start_fn)(tb_http_req *req, void (*done)(void *ud),
                                 void *ud, tb__http_work **work);

/* tb__app_route_as for a route that also has an asynchronous handler
 * (start) the front may use in place of fn. */
int tb__app_route_async(tb_app *app, const char *method, const char *path,
                        tb_http_fn fn, tb__http_start_fn start,
                        tb__http_access access);

/* tb__http_start's answer for a request whose route has no asynchronous
 * handler: nothing was done, the server handles it as any other. */
#define TB__HTTP_RELAY (-1)

/* For a request whose route has an asynchronous handler, does what
 * tb__http_handle does before the handler (request id, the tokens, 401
 * and 403 first) and starts it. req is the caller's storage (no need to
 * initialize it), kept with in's strings until tb__http_finish. Returns
 * TB__HTTP_RELAY; the status answered (counted for /metrics; req is done
 * with); or 0: pending, *work set, done(ud) as tb__http_start_fn says,
 * then tb__http_finish exactly once. */
int tb__http_start(tb_app *app, const tb__http_in *in, tb_http_req *req,
                   void (*done)(void *ud), void *ud, tb__http_work **work);

/* Answers a pending request (why as tb__http_work's answer), counts it for
 * /metrics and frees what req holds. Returns the status. */
int tb__http_finish(tb_http_req *req, tb__http_work *work, int why);

/* The app's router (NULL when no route was registered). */
const tb__router *tb__http_router(const tb_app *app);

#endif /* TASKBUS_HTTP_H */
