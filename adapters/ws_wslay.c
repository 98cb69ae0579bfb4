/* ws_wslay.c - a websocket connection on a worker's event loop, framed by
 * wslay: reads the socket when it is readable, hands whole messages to the
 * core, queues outgoing messages in a bounded send queue and writes them
 * with one writev per loop turn, pings, and ends the connection cleanly.
 *
 * The socket arrives after the HTTP server has done the handshake (see
 * http_civetweb.c). Everything here runs on the worker's thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <wslay/wslay.h>

#include "internal.h"
#include "ws.h"

struct tb__wsconn {
    tb_ws *ws;
    int fd;
    struct event_base *base;
    struct event *rev;   /* readable */
    struct event *wev;   /* writable, or activated by hand to flush */
    struct event *timer; /* ping, pong deadline, or close deadline */
    wslay_event_context_ptr ctx;
    struct evbuffer *out; /* frames wslay has made, not yet written */
    tb__ws_limits lim;
    size_t msgs;      /* messages queued since the output last drained */
    int reading;      /* rev added */
    int paused;       /* the core's receive queue is full */
    int wev_added;    /* wev pending: waiting for the socket to drain */
    int flush_due;    /* wev activated by hand for this loop turn */
    int closing;      /* closing: no more messages accepted */
    int close_queued; /* the close frame is in wslay's queue */
    int log_close;    /* wslay closed on its own: log it once sent */
    int close_code;
    char close_reason[124];
    int awaiting_pong;
    int in_callback; /* inside wslay_event_recv/send: do not free */
    int ended;       /* end() ran, or must run when the callback returns */
    int end_code;
    const char *end_why;
    char peer[48];
};

static void end(tb__wsconn *c, int code, const char *why);
static void flush(tb__wsconn *c);
static void arm(tb__wsconn *c, int ms);

/* ---------------------------------------------------------------- wslay I/O */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *ud)
{
    (void)flags;
    tb__wsconn *c = ud;
    if (c->paused) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    ssize_t n;
    do
        n = recv(c->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    /* EOF or an error: the peer is gone. */
    if (!c->end_why) {
        c->end_code = 1006;
        c->end_why =
            n == 0 ? "the peer closed the connection" : "the connection failed";
    }
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

/* wslay hands over each frame whole (or in pieces): it goes to the output
 * buffer, written by flush() in one writev per loop turn. */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *ud)
{
    (void)flags;
    tb__wsconn *c = ud;
    if (evbuffer_add(c->out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void on_msg(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    tb__wsconn *c = ud;
    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
        if (!tb__utf8_valid_text(arg->msg, arg->msg_length)) {
            tb__log(TB_LOG_INFO,
                    "ws %s: a text message is not UTF-8; "
                    "closing with 1007",
                    c->peer);
            wslay_event_shutdown_read(ctx);
            tb__wsconn_close(c, 1007, "text message is not valid UTF-8");
            return;
        }
        /* fall through */
    case WSLAY_BINARY_FRAME:
        if (tb__ws_on_message(c->ws, arg->opcode == WSLAY_BINARY_FRAME,
                              arg->msg, arg->msg_length))
            tb__wsconn_pause(c, 1);
        return;
    case WSLAY_PONG:
        if (c->awaiting_pong) {
            c->awaiting_pong = 0;
            if (c->lim.ping_interval_ms > 0 && !c->closing) {
                struct timeval tv = {c->lim.ping_interval_ms / 1000,
                                     (c->lim.ping_interval_ms % 1000) * 1000};
                evtimer_add(c->timer, &tv);
            }
        }
        return;
    case WSLAY_CONNECTION_CLOSE:
        /* wslay has checked the code and the reason's UTF-8 (answering
         * 1002 or 1007) and queued the answering close frame. */
        c->end_code = arg->status_code ? arg->status_code : 1005;
        c->end_why = "the peer closed";
        return;
    default:
        return; /* ping: wslay queues the pong */
    }
}

/* A close frame whose payload is one byte is malformed (RFC 6455 5.5.1: no
 * payload, or a two-byte code first); wslay would answer it with an empty
 * close. Queue 1002 first: wslay queues no second close. */
static void on_frame_start(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *a,
                           void *ud)
{
    tb__wsconn *c = ud;
    if (a->opcode == WSLAY_CONNECTION_CLOSE && a->payload_length == 1 &&
        !c->close_queued) {
        static const char why[] = "malformed close frame";
        c->closing = 1;
        c->close_queued = 1;
        wslay_event_queue_close(ctx, 1002, (const uint8_t *)why,
                                sizeof why - 1);
        arm(c, c->lim.close_timeout_ms);
    }
}

/* ---------------------------------------------------------------- events */

static void arm(tb__wsconn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Ends the connection once both directions are done: our close frame
 * written and the peer's received (or the peer gone). */
static void check_done(tb__wsconn *c)
{
    if (c->ended)
        return;
    int rd = wslay_event_want_read(c->ctx);
    int wr = wslay_event_want_write(c->ctx);
    if (!rd && !wr && evbuffer_get_length(c->out) == 0)
        end(c, c->end_code ? c->end_code : 1005,
            c->end_why ? c->end_why : "closed");
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__wsconn *c = arg;
    c->in_callback++;
    int rc = wslay_event_recv(c->ctx);
    c->in_callback--;
    if (c->ended) { /* ended from a callback: finish now */
        end(c, c->end_code, c->end_why);
        return;
    }
    if (rc != 0) {
        if (!c->end_why) {
            c->end_code = 1006;
            c->end_why =
                rc == WSLAY_ERR_NOMEM ? "out of memory" : "protocol error";
        }
        if (c->end_code == 1006) {
            end(c, 1006, c->end_why);
            return;
        }
    }
    if (!wslay_event_get_read_enabled(c->ctx) && c->reading) {
        event_del(c->rev);
        c->reading = 0;
        if (!c->closing && !wslay_event_get_close_received(c->ctx)) {
            /* wslay stopped reading and queued a close of its own: a
             * message over max_message (1009), a protocol error (1002) or
             * text that is not UTF-8 (1007). Logged once it is sent and
             * its code is known. */
            c->closing = 1;
            c->close_queued = 1;
            c->log_close = 1;
            arm(c, c->lim.close_timeout_ms);
        }
    }
    flush(c);
}

static void flush(tb__wsconn *c)
{
    if (c->ended)
        return;
    c->in_callback++;
    int rc = wslay_event_send(c->ctx);
    if (rc == 0 && c->closing && !c->close_queued) {
        /* After every message queued before it: wslay sends control
         * frames ahead of data, and nothing after a close. */
        c->close_queued = 1;
        wslay_event_queue_close(c->ctx, (uint16_t)c->close_code,
                                (const uint8_t *)c->close_reason,
                                strlen(c->close_reason));
        rc = wslay_event_send(c->ctx);
    }
    c->in_callback--;
    if (c->ended) {
        end(c, c->end_code, c->end_why);
        return;
    }
    if (rc != 0) {
        end(c, 1006, "out of memory");
        return;
    }
    if (c->log_close && wslay_event_get_close_sent(c->ctx)) {
        c->log_close = 0;
        int code = wslay_event_get_status_code_sent(c->ctx);
        char why[96];
        if (code == 1009)
            snprintf(why, sizeof why,
                     "a message over %zu bytes (ws_max_message)",
                     c->lim.max_message);
        else
            snprintf(why, sizeof why, "%s",
                     code == 1002   ? "a protocol error"
                     : code == 1007 ? "text that is not UTF-8"
                                    : "a frame it could not take");
        tb__log(TB_LOG_INFO, "ws %s (request %s): %s; closing with %d", c->peer,
                tb_ws_request_id(c->ws), why, code);
    }
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->wev_added) {
                event_add(c->wev, NULL);
                c->wev_added = 1;
            }
            return; /* the socket is full: wait until it is writable */
        }
        if (n < 0 && errno == EINTR)
            continue;
        end(c, 1006, "the connection failed (write)");
        return;
    }
    c->msgs = 0;
    if (c->wev_added) {
        event_del(c->wev);
        c->wev_added = 0;
    }
    check_done(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__wsconn *c = arg;
    c->flush_due = 0;
    flush(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__wsconn *c = arg;
    if (c->closing) {
        end(c, c->end_code ? c->end_code : 1006,
            "the close handshake timed out");
        return;
    }
    if (c->awaiting_pong) {
        tb__log(TB_LOG_INFO,
                "ws %s: no pong within %d ms (ws_ping_timeout_ms); closing "
                "with 1011",
                c->peer, c->lim.ping_timeout_ms);
        tb__wsconn_close(c, 1011, "keepalive ping timeout");
        return;
    }
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
    if (wslay_event_queue_msg(c->ctx, &m) == 0) {
        c->awaiting_pong = 1;
        arm(c, c->lim.ping_timeout_ms);
        flush(c);
    }
}

/* One flush per loop turn, however many messages come in it; none while
 * the socket is full (wev is pending and fires when it drains). */
static void schedule_flush(tb__wsconn *c)
{
    if (c->flush_due || c->wev_added)
        return;
    event_active(c->wev, EV_WRITE, 0);
    c->flush_due = 1;
}

/* ---------------------------------------------------------------- API */

tb__wsconn *tb__wsconn_open(tb_ws *ws, struct event_base *base, int fd,
                            const tb__ws_limits *lim, const char *peer)
{
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = recv_cb,
        .send_callback = send_cb,
        .on_frame_recv_start_callback = on_frame_start,
        .on_msg_recv_callback = on_msg,
    };
    tb__wsconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ws = ws;
    c->fd = fd;
    c->base = base;
    c->lim = *lim;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    evutil_make_socket_nonblocking(fd);
    if (wslay_event_context_server_init(&c->ctx, &cbs, c) != 0)
        c->ctx = NULL;
    c->out = evbuffer_new();
    c->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, c);
    c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->ctx || !c->out || !c->rev || !c->wev || !c->timer ||
        event_add(c->rev, NULL) != 0) {
        if (c->ctx)
            wslay_event_context_free(c->ctx);
        if (c->out)
            evbuffer_free(c->out);
        if (c->rev)
            event_free(c->rev);
        if (c->wev)
            event_free(c->wev);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return NULL;
    }
    c->reading = 1;
    wslay_event_config_set_max_recv_msg_length(c->ctx, lim->max_message);
    if (lim->ping_interval_ms > 0)
        arm(c, lim->ping_interval_ms);
    return c;
}

int tb__wsconn_send(tb__wsconn *c, int binary, const void *data, size_t len)
{
    if (c->ended || c->closing)
        return TB_EPIPE;
    size_t queued =
        wslay_event_get_queued_msg_length(c->ctx) + evbuffer_get_length(c->out);
    if ((queued + len > c->lim.send_queue_bytes ||
         c->msgs + 1 > (size_t)c->lim.send_queue_msgs) &&
        !c->wev_added) {
        /* Over the limits counting what was queued this loop turn and not
         * yet offered to the socket: offer it now, and count only what the
         * socket does not take. */
        c->in_callback++;
        flush(c);
        c->in_callback--;
        if (c->ended) {
            end(c, c->end_code, c->end_why);
            return TB_EPIPE;
        }
        queued = wslay_event_get_queued_msg_length(c->ctx) +
                 evbuffer_get_length(c->out);
    }
    if (queued + len > c->lim.send_queue_bytes ||
        c->msgs + 1 > (size_t)c->lim.send_queue_msgs) {
        atomic_fetch_add(&tb_ws_app(c->ws)->ws_slow_closes, 1);
        tb__log(TB_LOG_WARN,
                "ws %s (request %s): slow client: %zu messages and %zu "
                "bytes wait for its socket (ws_send_queue_msgs %d, "
                "ws_send_queue_bytes %zu); closing with 1008",
                c->peer, tb_ws_request_id(c->ws), c->msgs, queued,
                c->lim.send_queue_msgs, c->lim.send_queue_bytes);
        tb__wsconn_close(c, 1008, "send queue full (slow client)");
        return TB_ENOSPC;
    }
    struct wslay_event_msg m = {binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
                                data, len};
    int rc = wslay_event_queue_msg(c->ctx, &m);
    if (rc != 0)
        return rc == WSLAY_ERR_NOMEM ? TB_ENOMEM : TB_EPIPE;
    c->msgs++;
    schedule_flush(c);
    return 0;
}

void tb__wsconn_close(tb__wsconn *c, int code, const char *reason)
{
    if (c->ended || c->closing)
        return;
    c->closing = 1;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s",
             reason ? reason : "");
    arm(c, c->lim.close_timeout_ms);
    schedule_flush(c);
}

void tb__wsconn_pause(tb__wsconn *c, int paused)
{
    if (c->ended)
        return;
    c->paused = paused;
    if (paused && c->reading) {
        event_del(c->rev);
        c->reading = 0;
    } else if (!paused && !c->reading && wslay_event_get_read_enabled(c->ctx)) {
        event_add(c->rev, NULL);
        c->reading = 1;
        /* Bytes may already wait in the socket: no edge will come for
         * them if they arrived while paused. */
        event_active(c->rev, EV_READ, 0);
    }
}

void tb__wsconn_abort(tb__wsconn *c)
{
    if (c->ended)
        return;
    if (!c->closing)
        tb__wsconn_close(c, 1001, "server stopping");
    c->in_callback++;
    flush(c); /* one try; the socket may be full */
    c->in_callback--;
    if (c->ended) { /* flush ended it (marked only) */
        end(c, c->end_code, c->end_why);
        return;
    }
    end(c, c->end_code ? c->end_code : 1006, "the server is stopping");
}

/* Ends the connection: tells the core, closes the socket, frees. When
 * called from inside a wslay callback, only marks it; the caller of
 * wslay_event_* finishes. */
static void end(tb__wsconn *c, int code, const char *why)
{
    if (c->in_callback) {
        if (!c->ended) {
            c->ended = 1;
            c->end_code = code;
            c->end_why = why;
        }
        return;
    }
    c->ended = 1;
    tb__ws_on_end(c->ws, code, why ? why : "closed");
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->timer);
    wslay_event_context_free(c->ctx);
    evbuffer_free(c->out);
    close(c->fd);
    free(c);
}
