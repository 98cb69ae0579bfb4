/* adapter.h - the core as an adapter sees it (private): the interfaces an
 * adapter implements (the event bus, the HTTP server, the websocket
 * connection) and the calls it makes back into the core. The one header of
 * service/ that adapters/ includes; the core gets it through internal.h.
 *
 * The core never constructs an adapter: adapters/compose.c builds the ones
 * a configuration needs and hands them over (tb__app_use_*), the way
 * hiredis's redisLibeventAttach() fills the hooks of a context whose
 * async.c knows nothing of libevent. From then on the core calls them
 * through their ops only, and frees them through their ops in
 * tb_app_free. An adapter reads the settings with tb_app_get_config(). */
#ifndef TASKBUS_ADAPTER_H
#define TASKBUS_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

#include "bus.h"     /* the event bus: tb__bus_ops, receive, publish, state */
#include "history.h" /* positions, the in-process history ring */
#include "log.h"     /* tb__log, tb__ratelog */
#include "url.h"     /* redis_url parsing */
#include "resp.h"    /* RESP replies from links without hiredis (Sentinel) */
#include "http_front.h" /* the front the HTTP server sits behind */

struct event_base;
struct event;
struct evbuffer;

/* ---------------------------------------------------------------- the app */

int64_t tb__now_us(void);  /* CLOCK_REALTIME */
int64_t tb__mono_us(void); /* CLOCK_MONOTONIC */

/* The app's instance id (16 hex digits; its event ids start with it and a
 * '-'). Valid as long as app. */
const char *tb__app_instance(const tb_app *app);

/* Hands ev to every worker's inbox (one reference each); the caller keeps
 * its own reference. Any thread. For a bus without a backend; a bus that
 * receives messages goes through tb__bus_rx. */
void tb__app_deliver(tb_app *app, tb_event *ev);
/* The same for n events at once, in order: one lock and at most one
 * wake-up per worker for the whole batch. The caller keeps its
 * references. */
void tb__app_deliver_batch(tb_app *app, tb_event *const *evs, size_t n);

/* ---------------------------------------------------------------- HTTP */

/* The HTTP server: listens on http.listen and hands each request to the
 * core (tb__http_handle), each websocket upgrade too
 * (tb__http_handle_upgrade, then tb__ws_adopt). One per app, made by
 * compose.c when http.listen is set; its lifecycle is called by the core
 * on the thread that runs tb_app_run. */
typedef struct tb__http_server tb__http_server;

typedef struct tb__http_server_ops {
    const char *name; /* "civetweb" */
    /* Starts listening, after the workers have started, when the app has
     * routes. 0, or a TB_E* code with the reason logged. */
    int (*start)(tb__http_server *srv);
    /* Stops accepting and waits for the handlers in flight; before the
     * workers stop. Does nothing when start was not called or failed. */
    void (*stop)(tb__http_server *srv);
    /* Frees srv (stopped first if need be); from tb_app_free. */
    void (*free)(tb__http_server *srv);
} tb__http_server_ops;

struct tb__http_server {
    const tb__http_server_ops *ops;
    tb_app *app;
};

/* What the core needs from the server for one request's connection. All
 * are called on the request's own server thread, while it is handled. */
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
    /* Optional (NULL: no streams). Takes the connection's socket away from
     * the server for a response the core writes itself on a worker's loop
     * (an SSE stream): nothing has been sent on it yet, and the server
     * sends nothing more and never reads or closes the client's socket
     * again. Returns the connected socket, now the caller's (non-blocking
     * is the caller's to set; close-on-exec), or TB_EPIPE (the client has
     * gone) or TB_EAGAIN (no descriptor left), counted and logged through
     * tb__ws_handover_failed; nothing can be answered then, and the server
     * closes the connection. */
    int (*take)(void *conn);
} tb__http_conn_ops;

/* One request as the server read it: its line, its connection and its
 * body. Borrowed by the call it is given to. */
typedef struct tb__http_in {
    const tb__http_conn_ops *ops;
    void *conn;
    const char *method;
    const char *path;  /* raw: not decoded, no query */
    const char *query; /* raw, after '?', or NULL */
    const char *body;  /* NUL-terminated, or NULL when empty */
    size_t body_len;
} tb__http_in;

/* Handles one request whose line, headers and body the server has read:
 * routes it, checks the API token (401 for a protected route without it),
 * runs the handler, answers 400/401/404/405/500 itself when needed, counts
 * it for /metrics. Returns the status it was answered with (499 when its
 * client left first and nothing was sent). */
int tb__http_handle(tb_app *app, const tb__http_in *in);

/* Handles a websocket upgrade request the same way, then the endpoint's
 * accept checks (Origin, ws_max_clients, its own check). Returns the
 * accepted connection, holding one reference for the server, which then
 * completes the handshake and calls tb__ws_adopt or tb__ws_release; or
 * NULL when the request was answered (404 when the path is no websocket
 * endpoint, 401, 403, 503...). */
tb_ws *tb__http_handle_upgrade(tb_app *app, const tb__http_in *in);

/* Answers a request the server refuses before routing (400, 413, 431,
 * 503...) with the API's JSON error body, code and message, and headers
 * (NULL or "Name: value\r\n" lines). Returns the status. */
int tb__http_refuse(tb_app *app, const tb__http_in *in, int status,
                    const char *code, const char *headers, const char *message);

/* 1 if token is one of the comma-separated items of list, in any case (a
 * Connection header's keep-alive, an Upgrade's websocket). http_head.c. */
int tb__http_has_token(const char *list, const char *token);

/* Writes "Keep-Alive: timeout=S\r\n" into buf (size >= 32): an answer
 * that keeps its connection tells the client how long the server keeps
 * it idle (secs: http.keepalive_timeout_ms in whole seconds, rounded
 * down). A client that reuses an idle connection past that meets a
 * closed one, and a POST on it cannot be retried safely; clients that
 * read the header (Node's fetch, Firefox) stop reusing it earlier.
 * http_head.c. */
void tb__http_keepalive_header(char *buf, size_t size, int secs);

/* 1 if the app has websocket endpoints (tb_app_add_websocket): only then
 * does the server look for upgrades. */
int tb__app_has_websockets(const tb_app *app);

/* The server has completed the handshake (101 sent) and hands over the
 * connected socket fd: the reference from tb__http_handle_upgrade and fd
 * become the core's. A worker starts serving it (tb__wsconn_ops) and
 * spawns the endpoint's handler task. */
void tb__ws_adopt(tb_ws *ws, int fd);

/* Drops the reference from tb__http_handle_upgrade when the handshake
 * failed. NULL is a no-op. */
void tb__ws_release(tb_ws *ws);

/* 1 if fd is a socket handed over by tb__ws_adopt and still open: the
 * server skips those when it looks for a new connection's socket. fd may
 * be anything (out of range: 0). Any thread. */
int tb__ws_fd_owned(int fd);

/* The server could not take an upgraded socket over (found: it found the
 * socket but could not duplicate it; else the client had gone): counted
 * for /metrics and logged, at most once a second. */
void tb__ws_handover_failed(tb_app *app, const char *path, const char *addr,
                            int port, int found);

/* --------------------------------------------------------------- websockets */

/* A websocket connection served on a worker's event loop after the
 * handshake: the framing adapter's. Every call on the worker's thread. */
typedef struct tb__wsconn tb__wsconn;

typedef struct tb__ws_limits {
    size_t max_message;      /* close 1009 beyond; an SSE stream: the
                                bytes its client may send in all */
    size_t send_queue_bytes; /* slow client beyond: close 1008 */
    int send_queue_msgs;
    int ping_interval_ms; /* 0: none */
    int ping_timeout_ms;
    int close_timeout_ms; /* a close handshake not finished by then ends
                             the connection */
} tb__ws_limits;

/* A connection's output on a worker's loop, shared by the websocket
 * framing and the SSE writer: bytes queued in an evbuffer and written with
 * one writev per loop turn, never blocking (what the socket does not take
 * waits for EV_WRITE). Every call on the worker's thread. */
typedef struct tb__outq {
    struct evbuffer *buf; /* queued, not yet taken by the socket */
    struct event *wev;    /* EV_WRITE on the socket, or activated by hand */
    size_t msgs;          /* sends queued since the output last drained */
    int wev_added;        /* wev pending: waiting for the socket to drain */
    int flush_due;        /* wev activated by hand for this loop turn */
    /* Where buf's units (websocket frames, SSE events) end, so that a
     * connection closed for ws_memory_max drops what it has not begun to
     * send (a unit cut short would corrupt the stream). Byte counts since
     * the start: */
    uint64_t written;    /* taken from buf by the socket */
    uint64_t head_start; /* where the unit at buf's head begins */
    uint64_t *ends;      /* a ring: the end of each unit in buf */
    size_t ends_head, nends, ends_cap;
    /* ends while it fits: a connection's first frame allocates nothing
     * that outlives it (thousands of clients each sent one event would
     * otherwise leave a small block each between their freed frames,
     * pinning those pages) */
    uint64_t ends_inline[8];
    int ends_lost; /* out of memory once (or a unit cut short when an
                      append failed): boundaries unknown */
} tb__outq;

/* Makes q's buffer and its write event on fd, whose callback (on_write,
 * with arg) must clear q->flush_due and write. 0, or TB_ENOMEM with
 * nothing left to free. */
int tb__outq_init(tb__outq *q, struct event_base *base, int fd,
                  void (*on_write)(int fd, short what, void *arg), void *arg);
/* Writes what fd takes of q's buffer: 1 when all is written (msgs is then
 * 0 and wev stopped), 0 when the rest waits for the socket (wev armed),
 * TB_EPIPE when the write failed. What each write took moves the unit
 * boundaries. */
int tb__outq_write(tb__outq *q, int fd);
/* Records that q's buffer now ends at a unit boundary (after whole units
 * were appended). */
void tb__outq_mark(tb__outq *q);
/* Drops the units the socket has not begun to take: all but the rest of
 * one it is in the middle of (msgs is then 0). Nothing when the
 * boundaries are unknown. */
void tb__outq_drop_unsent(tb__outq *q);
/* One write this loop turn, however many sends come in it; none while wev
 * already waits for the socket. */
void tb__outq_schedule(tb__outq *q);
/* 1 while more than half of either send bound of lim waits in q: a
 * sender that can wait (a replay) should, before it queues more. */
int tb__outq_backlogged(const tb__outq *q, const struct tb__ws_limits *lim);
/* 1 if one more send of len bytes would pass send_queue_bytes or
 * send_queue_msgs of lim. */
int tb__outq_over(const tb__outq *q, const struct tb__ws_limits *lim,
                  size_t len);
void tb__outq_free(tb__outq *q);

typedef struct tb__wsconn_ops {
    const char *name; /* "wslay" */
    /* Starts serving fd (connected, after the handshake) on base. The
     * connection calls tb__ws_on_message and, once, tb__ws_on_end. NULL
     * on ENOMEM (fd is then still the caller's). lim and peer are
     * copied. */
    tb__wsconn *(*open)(tb_ws *ws, struct event_base *base, int fd,
                        const tb__ws_limits *lim, const char *peer);
    /* Queues one message. 0, TB_EPIPE (closing or closed), TB_ENOSPC (the
     * send queue is over its limits: the connection is now closing with
     * 1008, and the line is logged), TB_ENOMEM. */
    int (*send)(tb__wsconn *c, int binary, const void *data, size_t len);
    /* Starts the close handshake with code and reason; the connection
     * ends when the peer answers, or close_timeout_ms later. Idempotent. */
    void (*close)(tb__wsconn *c, int code, const char *reason);
    /* Closes for a policy (ws_memory_max): what was read and not yet given
     * to the core is dropped, nothing more is read, and the connection ends
     * once its output and the close frame are written, or close_timeout_ms
     * later. Reports what it holds then (tb__ws_on_held). */
    void (*shed)(tb__wsconn *c, int code, const char *reason);
    /* Offers the output queued this loop turn (not yet offered) to the
     * socket now, and reports what is left. Never ends the connection
     * before it returns: one whose write fails ends from its own loop
     * callback. */
    void (*offer)(tb__wsconn *c);
    /* Stops (1) or resumes (0) reading the socket. */
    void (*pause)(tb__wsconn *c, int paused);
    /* Writes what it can without waiting, closes the socket and ends the
     * connection now (tb__ws_on_end runs before it returns). */
    void (*abort)(tb__wsconn *c);
    /* Optional (NULL: never). 1 while more than half of either send queue
     * limit waits for the socket: a sender that can wait (a replay of the
     * history) waits before it queues more, instead of being closed as a
     * slow client. */
    int (*backlogged)(tb__wsconn *c);
} tb__wsconn_ops;

/* What the framing adapter calls, on the worker's thread. */

/* A whole data message from the peer (text already checked as UTF-8).
 * Returns 1 when the receive queue is full (the adapter then pauses until
 * the core resumes it), else 0. */
int tb__ws_on_message(tb_ws *ws, int binary, const void *data, size_t len);
/* The bytes the connection holds now (read and not yet a message given to
 * the core, a message being assembled, output not yet written), whenever
 * that changed, at a point where the core may close connections of this
 * worker (not inside the framing library's callbacks). */
void tb__ws_on_held(tb_ws *ws, size_t bytes);
/* Whether ws holding bytes (instead of what it reported last) would take
 * the total past ws_memory_max: output is then better written through at
 * once than queued for the loop turn's end. */
int tb__ws_would_pass(const tb_ws *ws, size_t bytes);
/* The connection has started closing (its close frame is due, or the
 * peer's came): sends from now on are refused. */
void tb__ws_on_closing(tb_ws *ws);
/* The connection has ended: code is the peer's close code, or 1006 when it
 * sent none. The adapter frees the connection after this returns; the core
 * must not use it again. why says what ended it (for the log). */
void tb__ws_on_end(tb_ws *ws, int code, const char *why);
/* A write left at most half of either send queue limit queued (no longer
 * backlogged): wakes a sender waiting for room (tb__ws_wait_drained). */
void tb__ws_on_drained(tb_ws *ws);
/* The framing closes a slow client on its own (not from a send that
 * failed with TB_ENOSPC, which the core counts): count it for /metrics. */
void tb__ws_on_slow_close(tb_ws *ws);

/* ------------------------------------------------------------ client tokens */

/* The signature algorithms client tokens (JWTs) may use: HS256 with the
 * shared secret, RS256 or ES256 with the public key (whichever its type
 * is). The core checks a token's "alg" against the keys before any
 * verifier sees it, so a verifier is never asked to check "none", nor an
 * HMAC made with the public key as its secret. */
typedef enum {
    TB__JWT_HS256 = 1,
    TB__JWT_RS256,
    TB__JWT_ES256
} tb__jwt_alg;

/* The keys a verifier checks signatures with; the core's, valid as long
 * as the app. */
typedef struct tb__jwt_keys {
    const unsigned char *secret; /* HS256; NULL: none */
    size_t secret_len;
    const char *pem; /* the public key, PEM text; NULL: none */
    size_t pem_len;
    tb__jwt_alg pem_alg; /* TB__JWT_RS256 or TB__JWT_ES256 */
} tb__jwt_keys;

/* Checks JWT signatures. One per app, made by compose.c when client
 * tokens are configured; called from any thread at once. */
typedef struct tb__jwt_verifier tb__jwt_verifier;

typedef struct tb__jwt_verifier_ops {
    const char *name; /* "libjwt" */
    /* 0 if token (NUL-terminated; its header says alg, and the core has
     * checked its form, header and payload) is signed with alg and the key
     * for alg; TB_EACCES if not; TB_ENOMEM. */
    int (*verify)(tb__jwt_verifier *v, const char *token, tb__jwt_alg alg);
    void (*free)(tb__jwt_verifier *v);
} tb__jwt_verifier_ops;

struct tb__jwt_verifier {
    const tb__jwt_verifier_ops *ops;
};

/* -------------------------------------------------------------- composition */

/* adapters/compose.c puts an app together: the core's app, then the
 * adapters its settings call for, handed over before tb_app_new returns
 * it. The app owns each one from then on. */

/* The app without its adapters (tb_app_new's checks, copies and state);
 * NULL with *err set (TB_EINVAL with the reason logged, TB_ENOMEM). */
tb_app *tb__app_create(const tb_app_config *cfg, int *err);

/* The event bus; every app has one. 0, or TB_EINVAL (logged) when its ops
 * lack publish or publish_many (both are mandatory): the app does not
 * take it and the caller still owns it. */
int tb__app_use_bus(tb_app *app, tb__bus *bus);
/* The HTTP server (none: the app serves no HTTP) and the framing of the
 * websockets it hands over. */
void tb__app_use_http(tb_app *app, tb__http_server *srv,
                      const tb__wsconn_ops *ws);
/* The keys for client tokens, read by tb__app_create from the http.jwt_*
 * settings; NULL when they are off. */
const tb__jwt_keys *tb__app_jwt_keys(const tb_app *app);
/* The verifier of client tokens (only when tb__app_jwt_keys is not
 * NULL). */
void tb__app_use_jwt(tb_app *app, tb__jwt_verifier *v);

#endif /* TASKBUS_ADAPTER_H */
