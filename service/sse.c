/* sse.c - the SSE writer: an SSE stream's socket on a worker's event loop,
 * the framing ops (adapter.h's tb__wsconn_ops) of the tb_ws that stands for
 * the stream (ws.c).
 *
 * An SSE stream only writes. What the core sends is queued as it is (the
 * handler frames whole events) in one bounded output buffer and written
 * with one writev per loop turn, as websocket frames are; a send that would
 * pass ws_send_queue_bytes or ws_send_queue_msgs after offering the queue
 * to the socket closes the stream as a slow client, and so do bytes that
 * wait ws_ping_timeout_ms with the socket taking none of them (a client
 * that stopped reading, whose TCP still ACKs the zero-window probes: the
 * rule that closes such a websocket, its pong timeout). The client sends
 * nothing after its request, so the socket is read only to notice its end
 * (EOF or reset: the stream ends at once); stray bytes are dropped, up to
 * ws.sse_max_input in all. A
 * comment line goes out whenever the keep-alive interval passes with
 * nothing written, so that proxies and clients see the stream alive and a
 * dead peer is found by the write. Closing writes what is queued, a comment
 * with the reason, then shuts the socket, within the close timeout.
 *
 * Everything here runs on the worker's thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "internal.h"
#include "ws.h"

#define DISCARD_CHUNK 4096 /* bytes of stray input dropped per read */

typedef struct sse_stream {
    tb_ws *ws;
    int fd;
    struct event *rev;   /* readable: the client's end */
    struct event *timer; /* keep-alive, or the close deadline */
    struct event *stall; /* the socket took nothing for ping_timeout_ms */
    tb__outq q;          /* bytes not yet written to the socket */
    tb__ws_limits lim;
    int64_t last_us;  /* when something was last queued (tb__mono_us) */
    int64_t moved_us; /* when the socket last took bytes, or the queue
                         last started from empty */
    size_t reported;  /* bytes queued last told to the core
                         (tb__ws_on_held, ws_memory_max) */
    size_t stray;     /* bytes the client sent after its request */
    int closing;      /* no more sends; the socket shuts once q drains */
    int end_code;
    const char *end_why;
    char peer[48];
} sse_stream;

static void end(sse_stream *s, int code, const char *why);
static void stream_close(tb__wsconn *c, int code, const char *reason);

/* tb__wsconn is the framing's own type; this one's is an sse_stream. */
static sse_stream *S(tb__wsconn *c)
{
    return (sse_stream *)(void *)c;
}

static void arm_ms(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static void arm(sse_stream *s, int ms)
{
    arm_ms(s->timer, ms);
}

/* Tells the core what s holds now (its queue counts in ws_memory_max).
 * The core may shed streams of this worker, s too (stream_shed never
 * ends one before it returns). */
static void report(sse_stream *s)
{
    size_t now = evbuffer_get_length(s->q.buf);
    if (now == s->reported)
        return;
    s->reported = now;
    tb__ws_on_held(s->ws, now);
}

/* Bytes wait for the socket: a client that reads again within
 * ws_ping_timeout_ms of the last write it took keeps its stream; else it
 * is a slow client, and the stream ends now (whatever is queued could not
 * leave anyway), the socket reset so that the kernel drops its unsent
 * bytes too. */
static void on_stall(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sse_stream *s = arg;
    if (evbuffer_get_length(s->q.buf) == 0)
        return;
    int64_t still_ms = (tb__mono_us() - s->moved_us) / 1000;
    if (still_ms < s->lim.ping_timeout_ms) {
        arm_ms(s->stall, s->lim.ping_timeout_ms - (int)still_ms);
        return;
    }
    tb__log(TB_LOG_WARN,
            "sse %s (request %s): slow client: %zu bytes waited %lld ms for "
            "its socket, which took none (ws_ping_timeout_ms %d); closing "
            "the stream",
            s->peer, tb_ws_request_id(s->ws), evbuffer_get_length(s->q.buf),
            (long long)still_ms, s->lim.ping_timeout_ms);
    if (!s->closing)
        tb__ws_on_slow_close(s->ws);
    struct linger lg = {1, 0};
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    end(s, 1008, "slow client (its socket took nothing)");
}

/* Writes what the socket takes; the rest waits for EV_WRITE. Returns
 * why the stream is done (the write failed, or a closing stream is all
 * written: its socket is shut), for the caller to end it; else NULL. The
 * caller ends it, so that nothing here frees s under a caller's feet. */
static const char *flush(sse_stream *s)
{
    size_t before = evbuffer_get_length(s->q.buf);
    int rc = tb__outq_write(&s->q, s->fd);
    if (rc < 0) {
        s->end_code = 1006;
        return "the connection failed (write)";
    }
    if (evbuffer_get_length(s->q.buf) < before)
        s->moved_us = tb__mono_us();
    if (rc == 0 && !evtimer_pending(s->stall, NULL))
        arm_ms(s->stall, s->lim.ping_timeout_ms);
    if (!s->closing && !tb__outq_backlogged(&s->q, &s->lim))
        tb__ws_on_drained(s->ws);
    report(s);
    if (rc > 0 && s->closing) {
        shutdown(s->fd, SHUT_WR); /* the client reads the end of the body */
        return s->end_why;
    }
    return NULL;
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sse_stream *s = arg;
    s->q.flush_due = 0;
    const char *why = flush(s);
    if (why)
        end(s, s->end_code, why);
}

/* The client sends nothing after its request: bytes are dropped, up to
 * ws.sse_max_input in all (a client streaming bytes would keep the worker
 * reading them for ever), and its end (EOF, a half-close, a reset) ends
 * the stream. */
static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    sse_stream *s = arg;
    char buf[DISCARD_CHUNK];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0 && (s->stray += (size_t)n) > s->lim.max_message) {
        tb__log(TB_LOG_WARN,
                "sse %s (request %s): the client sent %zu bytes after its "
                "request, over sse_max_input (%zu); ending the stream",
                s->peer, tb_ws_request_id(s->ws), s->stray, s->lim.max_message);
        end(s, 1009, "the client sent too much (sse_max_input)");
        return;
    }
    if (n > 0 ||
        (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
        return;
    end(s, 1006,
        n == 0 ? "the client closed the connection" : "the connection failed");
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sse_stream *s = arg;
    if (s->closing) {
        end(s, s->end_code, "the close timed out (the client reads nothing)");
        return;
    }
    /* A whole interval after the last thing queued, so that no gap is
     * longer (a proxy's idle timeout set to it is enough); only into an
     * empty queue: one waiting for the socket shows the stream alive once
     * it moves, and must not grow. */
    int64_t now = tb__mono_us();
    int64_t idle_ms = (now - s->last_us) / 1000;
    if (idle_ms < s->lim.ping_interval_ms) {
        arm(s, s->lim.ping_interval_ms - (int)idle_ms);
        return;
    }
    if (evbuffer_get_length(s->q.buf) == 0) {
        static const char ka[] = ": keep-alive\n\n";
        if (evbuffer_add(s->q.buf, ka, sizeof ka - 1) == 0) {
            tb__outq_mark(&s->q);
            s->moved_us = now;
            tb__outq_schedule(&s->q);
        }
    }
    s->last_us = now;
    arm(s, s->lim.ping_interval_ms);
}

/* ---------------------------------------------------------------- ops */

static tb__wsconn *stream_open(tb_ws *ws, struct event_base *base, int fd,
                               const tb__ws_limits *lim, const char *peer)
{
    sse_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ws = ws;
    s->fd = fd;
    s->lim = *lim;
    s->last_us = s->moved_us = tb__mono_us();
    snprintf(s->peer, sizeof s->peer, "%s", peer);
    evutil_make_socket_nonblocking(fd);
    if (tb__outq_init(&s->q, base, fd, on_write, s) != 0) {
        free(s);
        return NULL;
    }
    s->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, s);
    s->timer = evtimer_new(base, on_timer, s);
    s->stall = evtimer_new(base, on_stall, s);
    if (!s->rev || !s->timer || !s->stall || event_add(s->rev, NULL) != 0) {
        tb__outq_free(&s->q);
        if (s->rev)
            event_free(s->rev);
        if (s->timer)
            event_free(s->timer);
        if (s->stall)
            event_free(s->stall);
        free(s);
        return NULL;
    }
    if (lim->ping_interval_ms > 0)
        arm(s, lim->ping_interval_ms);
    return (tb__wsconn *)(void *)s;
}

static int stream_send(tb__wsconn *c, int binary, const void *data, size_t len)
{
    (void)binary;
    sse_stream *s = S(c);
    if (s->closing)
        return TB_EPIPE;
    if (tb__outq_over(&s->q, &s->lim, len) && !s->q.wev_added) {
        /* Counting what this loop turn queued and did not offer to the
         * socket yet: offer it now, and count only what it does not take
         * (as websockets do). */
        const char *why = flush(s);
        if (why) {
            end(s, s->end_code, why);
            return TB_EPIPE;
        }
    }
    if (tb__outq_over(&s->q, &s->lim, len)) {
        tb__log(TB_LOG_WARN,
                "sse %s (request %s): slow client: %zu sends and %zu bytes "
                "wait for its socket (ws_send_queue_msgs %d, "
                "ws_send_queue_bytes %zu); closing the stream",
                s->peer, tb_ws_request_id(s->ws), s->q.msgs,
                evbuffer_get_length(s->q.buf), s->lim.send_queue_msgs,
                s->lim.send_queue_bytes);
        stream_close(c, 1008, "send queue full (slow client)");
        return TB_ENOSPC;
    }
    if (evbuffer_get_length(s->q.buf) == 0)
        s->moved_us = tb__mono_us();
    if (len && evbuffer_add(s->q.buf, data, len) != 0) {
        s->q.ends_lost = 1; /* an event may be cut short */
        return TB_ENOMEM;
    }
    tb__outq_mark(&s->q); /* the handler sends whole events */
    s->q.msgs++;
    s->last_us = tb__mono_us();
    if (!s->q.wev_added &&
        tb__ws_would_pass(s->ws, evbuffer_get_length(s->q.buf))) {
        /* Written through, not held until the loop turn ends (as
         * websockets do: one event to many streams). */
        const char *why = flush(s);
        if (why) {
            end(s, s->end_code, why);
            return TB_EPIPE;
        }
    }
    tb__outq_schedule(&s->q);
    report(s);
    return 0;
}

/* Ends the stream after what is queued, with a comment saying why (a
 * client that reads sees it; EventSource ignores it and reconnects). */
static void stream_close(tb__wsconn *c, int code, const char *reason)
{
    sse_stream *s = S(c);
    if (s->closing)
        return;
    s->closing = 1;
    s->end_code = code;
    s->end_why = "closed";
    tb__ws_on_closing(s->ws);
    if (reason && reason[0]) {
        char line[160];
        int n = snprintf(line, sizeof line, ": closing: %.120s", reason);
        for (int i = 0; i < n && i < (int)sizeof line; i++)
            if (line[i] == '\r' || line[i] == '\n')
                line[i] = ' '; /* one comment line, whatever reason holds */
        if (evbuffer_add_printf(s->q.buf, "%s\n\n", line) > 0)
            tb__outq_mark(&s->q);
    }
    event_del(s->timer);
    arm(s, s->lim.close_timeout_ms);
    tb__outq_schedule(&s->q);
}

/* Closed for a policy (ws_memory_max): the events the socket has not
 * begun to take go (the rest of one it is in the middle of stays, so the
 * client never reads half an event), then the close as above. */
static void stream_shed(tb__wsconn *c, int code, const char *reason)
{
    sse_stream *s = S(c);
    if (!s->closing) /* else its closing comment is queued: keep it */
        tb__outq_drop_unsent(&s->q);
    stream_close(c, code, reason);
    report(s);
}

/* Offers what this loop turn queued to the socket now. A stream the write
 * ends is ended by on_write, which is due (flush_due): never here, under
 * the core's feet. */
static void stream_offer(tb__wsconn *c)
{
    sse_stream *s = S(c);
    if (s->q.flush_due && !s->q.wev_added)
        (void)flush(s);
}

static int stream_backlogged(tb__wsconn *c)
{
    sse_stream *s = S(c);
    return !s->closing && tb__outq_backlogged(&s->q, &s->lim);
}

static void stream_pause(tb__wsconn *c, int paused)
{
    (void)c; /* nothing is ever received */
    (void)paused;
}

static void stream_abort(tb__wsconn *c)
{
    sse_stream *s = S(c);
    if (!s->closing)
        stream_close(c, 1001, "server stopping");
    const char *why = flush(s); /* one try; the socket may be full */
    end(s, s->end_code, why ? why : "the server is stopping");
}

/* Ends the stream: tells the core, closes the socket, frees. Only from
 * the writer's own callbacks and ops, each of which returns right after
 * (the core never uses a stream after tb__ws_on_end). */
static void end(sse_stream *s, int code, const char *why)
{
    tb__ws_on_end(s->ws, code, why ? why : "closed");
    event_free(s->rev);
    event_free(s->timer);
    event_free(s->stall);
    tb__outq_free(&s->q);
    close(s->fd);
    free(s);
}

static const tb__wsconn_ops sse_ops = {
    .name = "sse",
    .open = stream_open,
    .send = stream_send,
    .close = stream_close,
    .shed = stream_shed,
    .offer = stream_offer,
    .pause = stream_pause,
    .abort = stream_abort,
    .backlogged = stream_backlogged,
};

const tb__wsconn_ops *tb__sse_stream_ops(void)
{
    return &sse_ops;
}
