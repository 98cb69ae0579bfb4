/* ws.h - websocket connections in the core (private): endpoints, the
 * accept checks, and what the rest of the core asks of them. The adapters'
 * side (the hand-over of an upgraded socket, the framing's ops and hooks)
 * is in adapter.h. */
#ifndef TASKBUS_WS_H
#define TASKBUS_WS_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

#include "adapter.h"
#include "http.h"
#include "client_token.h"

struct tb__worker;

/* A websocket endpoint (tb_app_add_websocket); owned by the app. */
typedef struct tb__ws_route tb__ws_route;

/* Called by the HTTP core for an upgrade request that matched route, after
 * the token check: checks Origin, the client limit and the route's check
 * function, answering req when it refuses. Returns a new tb_ws (holding one
 * reference for the caller) or NULL when req was answered. */
tb_ws *tb__ws_accept(tb_http_req *req, tb__ws_route *route);

/* The websocket route behind a route_fn's ud, for http.c. */
int tb__http_route_ws(tb_app *app, const char *path, tb__ws_route *route,
                      tb__http_access access);

/* tb_app_add_websocket for an endpoint that client tokens may open too
 * (GET /ws): its handler checks tb__ws_claims. Same contract otherwise. */
int tb__ws_add_client_endpoint(tb_app *app, const char *path, tb_ws_fn fn,
                               tb_ws_check_fn check, void *ud);

/* An SSE endpoint at GET path (client tokens may open it, as GET /ws):
 * check runs as for an upgrade (with Origin, sse_max_clients and the
 * request id), then the HTTP server gives the socket up and fn runs as a
 * websocket handler would, on a tb_ws whose framing is the SSE writer:
 * what fn sends with tb_ws_send goes to the client as is (whole SSE
 * events: fn frames them), tb_ws_recv never has a message and fails with
 * TB_EPIPE once the client has gone, and the stream ends when fn returns.
 * Same contract as tb_app_add_websocket otherwise. */
int tb__sse_add_endpoint(tb_app *app, const char *path, tb_ws_fn fn,
                         tb_ws_check_fn check, void *ud);

/* sse.c: the SSE writer, the framing of SSE streams: bytes sent as they
 * are, within the send queue's bounds; a comment line (": keep-alive")
 * whenever ping_interval_ms pass with nothing written; what the client
 * sends is read and dropped, and its end ends the stream. */
const tb__wsconn_ops *tb__sse_stream_ops(void);

/* The claims of the client token that opened ws (valid as long as ws), or
 * NULL: the API token, or none needed. */
const tb__jwt_claims *tb__ws_claims(const tb_ws *ws);

/* The Last-Event-ID header of the request that opened an SSE stream ("":
 * none, or longer than a position can be). Valid as long as ws. */
const char *tb__ws_last_event_id(const tb_ws *ws);

/* The sub of ws's client token, for log lines ("" without one). */
const char *tb__ws_sub(const tb_ws *ws);

/* Frees the app's websocket routes (tb_app_free). */
void tb__ws_app_free(tb_app *app);

/* Closes every connection still served by w (its loop has ended). */
void tb__ws_worker_shutdown(struct tb__worker *w);

/* 1 while ws's send queue is more than half full (its framing's
 * backlogged op); 0 when it is not, or closed. On ws's worker. */
int tb__ws_backlogged(tb_ws *ws);

/* Waits, in ws's handler on its worker, until tb__ws_backlogged(ws) is 0:
 * the framing wakes it when its queue drains to half (tb__ws_on_drained).
 * 0, TB_EPIPE (the connection ended), TB_ECANCELED, TB_EBUSY (another task
 * waits already). */
int tb__ws_wait_drained(tb_task *self, tb_ws *ws);

/* Open websockets and SSE streams of the app (for /metrics). */
int tb__ws_clients(tb_app *app);
int tb__sse_clients(tb_app *app);

/* Bytes the app's websockets hold in receive and send buffers, as
 * ws_memory_max counts them (for /metrics). */
long long tb__ws_memory(tb_app *app);

#endif /* TASKBUS_WS_H */
