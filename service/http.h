/* http.h - the HTTP server's core side and its interface to the adapter
 * (private). */
#ifndef TASKBUS_HTTP_H
#define TASKBUS_HTTP_H

#include <stddef.h>

#include "taskbus/taskbus.h"

#include "http_route.h"

/* What the core needs from the server adapter for one request. All are
 * called on the request's own server thread, while it is being handled. */
typedef struct tb__http_conn_ops {
    /* A request header by case-insensitive name, or NULL. */
    const char *(*header)(void *conn, const char *name);
    /* Sends a whole response: status line, the given headers (each
     * "Name: value\r\n", may be ""), Content-Length, then body. 0 or a
     * negative code if the connection failed. */
    int (*send)(void *conn, int status, const char *headers, const void *body,
                size_t len);
    /* Optional (NULL: never known). 1 if the client has closed or reset
     * the connection, so that no answer can reach it (a request it
     * pipelined behind this one still counts as there); the adapter then
     * closes the connection after this request. Cheap enough to call
     * every 100 ms; may return 0 when it cannot tell. */
    int (*gone)(void *conn);
    /* Optional (NULL: the adapter decides). Called before the answer: the
     * connection closes after it instead of waiting for another request
     * (a thread-per-connection server holds a thread for that wait). */
    void (*close)(void *conn);
} tb__http_conn_ops;

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
    char request_id[72];
    int status; /* answered with; 0 while not answered */
};

/* The app's HTTP state, created on first tb_app_add_route. */
typedef struct tb__http tb__http;

/* Handles one request whose line, headers and body the adapter has read:
 * routes it, checks the API token (401 for a protected route without it),
 * runs the handler, answers 400/401/404/405/500 itself when needed.
 * The adapter fills app, ops, conn, method, path, query, body and body_len;
 * the rest is set here. Returns the status it was answered with. */
int tb__http_handle(tb_http_req *req);

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

/* Answers a request the adapter refuses before routing (413, 503...) with
 * the standard JSON error body. */
int tb__http_refuse(tb_http_req *req, int status, const char *code,
                    const char *message);

/* Handles a websocket upgrade request (same fields as for
 * tb__http_handle): routes it, checks the API token, and hands it to the
 * websocket endpoint's accept checks. Returns the accepted connection (the
 * adapter then completes the handshake and calls tb__ws_adopt or
 * tb__ws_release), or NULL when req was answered (404 when the path is no
 * websocket endpoint, 401, 403, 503...). */
struct tb_ws *tb__http_handle_upgrade(tb_http_req *req);

/* An error answer with extra headers ("Name: value\r\n"...); like
 * tb__http_refuse, it gives req a request id if it has none yet. */
int tb__http_error_headers(tb_http_req *req, int status, const char *code,
                           const char *headers, const char *message);

/* tb_app_add_route for a route that stays open when the app has an api_token
 * (the health probes). Same contract otherwise. */
int tb__app_route_open(tb_app *app, const char *method, const char *path,
                       tb_http_fn fn, void *ud);

/* The app's router (NULL when no route was registered). */
const tb__router *tb__http_router(const tb_app *app);

/* adapters/http_civetweb.c: starts the server on cfg.http.listen when the
 * app has routes (called after the workers started) and stops it (stop
 * accepting, wait for handlers in flight). */
int tb__http_server_start(tb_app *app);
void tb__http_server_stop(tb_app *app);

#endif /* TASKBUS_HTTP_H */
