/* ws.h - websocket connections (private): the core's tb_ws, the HTTP
 * server adapter's hand-over of an upgraded socket, and the framing
 * adapter that serves the socket on a worker's event loop. */
#ifndef TASKBUS_WS_H
#define TASKBUS_WS_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

struct event_base;
struct tb__worker;

/* ------------------------------------------------ core, for the HTTP side */

/* A websocket endpoint (tb_app_add_websocket); owned by the app. */
typedef struct tb__ws_route tb__ws_route;

/* Called by the HTTP core for an upgrade request that matched route, after
 * the token check: checks Origin, the client limit and the route's check
 * function, answering req when it refuses. Returns a new tb_ws (holding one
 * reference for the caller) or NULL when req was answered. */
tb_ws *tb__ws_accept(tb_http_req *req, tb__ws_route *route);

/* The HTTP adapter has completed the handshake (101 sent) and hands over
 * the connected socket fd: the reference from tb__ws_accept and fd become
 * the core's. A worker starts serving it and spawns the handler task. */
void tb__ws_adopt(tb_ws *ws, int fd);

/* Sockets handed over by tb__ws_adopt and still open: the HTTP adapter
 * skips them when it looks for the socket of a new connection. fd may be
 * anything (out of range: 0). */
int tb__ws_fd_owned(int fd);

/* Drops the reference from tb__ws_accept when the handshake failed. */
void tb__ws_release(tb_ws *ws);

/* The websocket route behind a route_fn's ud, for http.c. */
int tb__http_route_ws(tb_app *app, const char *path, tb__ws_route *route);

/* Frees the app's websocket routes (tb_app_free). */
void tb__ws_app_free(tb_app *app);

/* Closes every connection still served by w (its loop has ended). */
void tb__ws_worker_shutdown(struct tb__worker *w);

/* Open websockets of the app (for /metrics). */
int tb__ws_clients(tb_app *app);

/* ------------------------------------------------ the framing adapter */

typedef struct tb__wsconn tb__wsconn;

typedef struct tb__ws_limits {
    size_t max_message;      /* close 1009 beyond */
    size_t send_queue_bytes; /* slow client beyond: close 1008 */
    int send_queue_msgs;
    int ping_interval_ms; /* 0: none */
    int ping_timeout_ms;
    int close_timeout_ms; /* a close handshake not finished by then ends
                             the connection */
} tb__ws_limits;

/* adapters/ws_wslay.c; every function on the worker's thread that serves
 * the connection. */

/* Starts serving fd (connected, after the handshake) on base. The
 * connection calls tb__ws_on_message and, once, tb__ws_on_end. NULL on
 * ENOMEM (fd is then still the caller's). */
tb__wsconn *tb__wsconn_open(tb_ws *ws, struct event_base *base, int fd,
                            const tb__ws_limits *lim, const char *peer);
/* Queues one message. 0, TB_EPIPE (closing or closed), TB_ENOSPC (the send
 * queue is over its limits: the connection is now closing with 1008 and
 * the line is logged), TB_ENOMEM. */
int tb__wsconn_send(tb__wsconn *c, int binary, const void *data, size_t len);
/* Starts the close handshake with code and reason; the connection ends
 * when the peer answers, or close_timeout_ms later. Idempotent. */
void tb__wsconn_close(tb__wsconn *c, int code, const char *reason);
/* Stops (1) or resumes (0) reading the socket. */
void tb__wsconn_pause(tb__wsconn *c, int paused);
/* Writes what it can without waiting, closes the socket and ends the
 * connection now (tb__ws_on_end runs before it returns). */
void tb__wsconn_abort(tb__wsconn *c);

/* service/ws.c, called by the framing adapter on the worker's thread. */

/* A whole data message from the peer (text already checked as UTF-8).
 * Returns 1 when the receive queue is full (the adapter then pauses until
 * tb__wsconn_pause(c, 0)), else 0. */
int tb__ws_on_message(tb_ws *ws, int binary, const void *data, size_t len);
/* The connection has started closing (its close frame is due, or the
 * peer's came): sends from now on are refused. */
void tb__ws_on_closing(tb_ws *ws);
/* The connection has ended: code is the peer's close code, or 1006 when it
 * sent none. The adapter frees the connection after this returns; the core
 * must not use it again. why says what ended it (for the log). */
void tb__ws_on_end(tb_ws *ws, int code, const char *why);

#endif /* TASKBUS_WS_H */
