/* ws_impl.h - what ws.c and ws_memory.c share (private): a connection's
 * state, and the accounting of the bytes connections hold. */
#ifndef TASKBUS_WS_IMPL_H
#define TASKBUS_WS_IMPL_H

#include <stdatomic.h>
#include <stddef.h>

#include "internal.h"
#include "client_token.h"
#include "ws.h"

/* For log lines and task names: "ws" or "sse". */
#define KIND(ws) ((ws)->sse ? "sse" : "ws")

struct tb__ws_route {
    struct tb__ws_route *next;
    int sse; /* an SSE endpoint: a plain GET answered with a stream */
    tb_ws_fn fn;
    tb_ws_check_fn check;
    void *ud;
};

typedef struct wsmsg {
    struct wsmsg *next;
    int binary;
    size_t len;
    char data[]; /* len bytes and a NUL */
} wsmsg;

struct tb_ws {
    atomic_int refs;
    tb_app *app;
    tb__ws_route *route;
    const tb__wsconn_ops *ops; /* the framing: app->wsconn, or sse.c's */
    int sse;                   /* an SSE stream */
    char *head;                /* SSE: the response head, sent first */
    tb__worker *w;             /* set by tb__ws_adopt */
    int fd;                    /* until the worker opens the connection */
    int sock;                  /* the socket, marked in fd_table while open */
    atomic_int closed;         /* closing or closed: sends fail fast */

    /* --- on the worker's thread --- */
    tb__wsconn *conn; /* NULL once the connection has ended */
    tb_ws *wprev, *wnext;
    tb_task *handler; /* while the handler runs */
    int handler_done;
    int close_code;
    tb_task *recv_waiter;
    uint64_t recv_seq;
    tb_task *drain_waiter; /* in tb__ws_wait_drained */
    uint64_t drain_seq;
    wsmsg *qhead, *qtail, *cur;
    int qlen;
    size_t qbytes;
    int paused;
    size_t held_conn; /* bytes the framing holds (tb__ws_on_held) */
    size_t held_core; /* bytes of qhead.. and cur */
    int shed;         /* closed for ws_memory_max, or ended: its bytes
                         cannot be shed (app->ws_memory_shed) */

    struct event *expiry; /* closes it when its client token expires */

    /* --- the upgrade request, copied --- */
    tb__jwt_claims *claims; /* its client token's, or NULL */
    char request_id[72];
    char peer[48];
    char *path;                     /* raw */
    char *query;                    /* raw, or NULL */
    char *params;                   /* "name\0value\0" nparams times */
    char last_event_id[TB_POS_MAX]; /* SSE: the request's Last-Event-ID
                                       when it fits, else "" */
    int nparams;
};

/* ---- ws_memory.c: what connections hold, and ws_memory_max ---- */

/* What ws holds counts in two sums: the app's (the ws_memory_max gauge)
 * and the part held by connections that cannot be shed any more. Each
 * change of held_conn or held_core passes through tb__wsm_add. On ws's
 * worker, or at its last reference. */
void tb__wsm_add(tb_ws *ws, long long delta);
/* ws can no longer be shed: what it holds stops choosing who is. */
void tb__wsm_settle(tb_ws *ws);
/* held_core changes by delta. */
void tb__wsm_core_held(tb_ws *ws, long long delta);

/* Whether the n-th occurrence of something logged at most once a second
 * gets its line (from any thread): then *since is how many occurred since
 * the last line. last_us and logged_n are the thing's own. */
int tb__ws_log_due(atomic_int_fast64_t *last_us, atomic_uint_fast64_t *logged_n,
                   uint64_t n, uint64_t *since);

#endif /* TASKBUS_WS_IMPL_H */
