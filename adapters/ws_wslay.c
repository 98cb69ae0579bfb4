/* ws_wslay.c - a websocket connection on a worker's event loop: reads the
 * socket when it is readable, has wslay parse what the client sends (and
 * answer pings, and run the close handshake), hands whole messages to the
 * core, frames outgoing messages into a bounded send queue written with one
 * writev per loop turn, pings, and ends the connection cleanly.
 *
 * Memory: an idle connection must stay small (10 000 of them in well under
 * 200 MiB), and a wslay context costs about 8.8 KiB (two 4 KiB buffers it
 * zeroes). So the context exists only while the client is mid-message: the
 * socket is read into our own buffer, wslay is fed whole frames only (we
 * read and check their headers), and once it has consumed them and holds no
 * fragment, no pending control frame and no close state, it is freed; the
 * next frame makes a fresh one. Outgoing data, ping and close frames are a
 * header and the payload (servers do not mask), written here directly; only
 * the frames wslay makes itself (pongs, the closes it sends on a protocol
 * error or in answer to the client's) go through it.
 *
 * What a connection holds (in, out, and what wslay took of a message not
 * yet whole) is reported to the core (tb__ws_on_held) for ws_memory_max.
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

#include "adapters.h"

#define READ_CHUNK 65536 /* bytes taken from the socket per read */

struct tb__wsconn {
    tb_ws *ws;
    int fd;
    struct event *rev;           /* readable */
    struct event *timer;         /* ping, pong deadline, or close deadline */
    wslay_event_context_ptr ctx; /* NULL between messages */
    struct evbuffer *in; /* read from the socket, not yet given to wslay */
    tb__outq q;          /* frames not yet written to the socket (q.buf,
                            "out" below) */
    size_t feed;         /* bytes of whole frames at the head of in that
                            wslay may take now */
    size_t in_wslay;     /* bytes wslay took of a message not yet whole */
    size_t reported;     /* held bytes last told to the core */
    tb__ws_limits lim;
    int reading;    /* rev added */
    int paused;     /* the core's receive queue is full */
    int fragmented; /* the frames read so far leave a fragmented data
                       message open (wslay has them all once feed is 0) */
    int closing;    /* no more messages accepted; a close is due */
    int close_sent; /* a close frame is in out (ours or wslay's) */
    int close_received;
    int failing; /* a protocol error: end once our close is out
                    (RFC 6455 7.1.7, "fail the connection") */
    int close_code;
    char close_reason[124];
    int awaiting_pong;
    int in_callback; /* inside wslay or a flush: end() only marks */
    int ended;       /* end() ran, or must run when the callback returns */
    int end_code;
    const char *end_why;
    char peer[48];
};

static void end(tb__wsconn *c, int code, const char *why);
static void conn_close(tb__wsconn *c, int code, const char *reason);
static void conn_pause(tb__wsconn *c, int paused);
static void flush(tb__wsconn *c);
static void arm(tb__wsconn *c, int ms);
static void schedule_flush(tb__wsconn *c);
static void update_reading(tb__wsconn *c);

/* Tells the core what c holds now. Only a decrease while inside wslay or
 * a nested flush (the core may close connections when it grows); the
 * caller's tail reports the rest. */
static size_t holds(const tb__wsconn *c)
{
    return evbuffer_get_length(c->in) + evbuffer_get_length(c->q.buf) +
           c->in_wslay;
}

static void report(tb__wsconn *c)
{
    size_t now = holds(c);
    if (c->ended || now == c->reported || (c->in_callback && now > c->reported))
        return;
    c->reported = now;
    tb__ws_on_held(c->ws, now);
}

/* ---------------------------------------------------------------- frames */

/* Drops the frames the socket has not begun to take (tb__outq_drop_unsent),
 * unless a close frame is queued: it would go too. */
static void drop_unsent(tb__wsconn *c)
{
    if (!c->close_sent)
        tb__outq_drop_unsent(&c->q);
}

/* Appends one unmasked frame (FIN set) with opcode and payload to out. */
static int put_frame(tb__wsconn *c, int opcode, const void *head,
                     size_t head_len, const void *data, size_t len)
{
    unsigned char h[10];
    size_t n = 2, total = head_len + len;
    h[0] = (unsigned char)(0x80 | opcode);
    if (total < 126) {
        h[1] = (unsigned char)total;
    } else if (total <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(total >> 8);
        h[3] = (unsigned char)total;
        n = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)total >> (56 - 8 * i));
        n = 10;
    }
    if (evbuffer_add(c->q.buf, h, n) != 0 ||
        (head_len && evbuffer_add(c->q.buf, head, head_len) != 0) ||
        (len && evbuffer_add(c->q.buf, data, len) != 0)) {
        c->q.ends_lost = 1; /* a frame may be cut short in out */
        return TB_ENOMEM;
    }
    tb__outq_mark(&c->q);
    return 0;
}

/* A frame's header, as frame_header reads it. */
typedef struct frame_hdr {
    size_t size;   /* header bytes, the mask key included */
    uint64_t plen; /* payload bytes */
    int op, fin, rsv, masked;
    int long_form; /* the length is not in its shortest form, or has its top
                      bit set (RFC 6455 5.2) */
} frame_hdr;

/* Reads the header of the frame starting at offset pos of in (avail
 * bytes) into *f: 1 when the header is all there, else 0. */
static int frame_header(struct evbuffer *in, size_t pos, size_t avail,
                        frame_hdr *f)
{
    unsigned char h[14];
    size_t have = avail - pos < sizeof h ? avail - pos : sizeof h;
    if (have < 2)
        return 0;
    struct evbuffer_ptr p;
    if (evbuffer_ptr_set(in, &p, pos, EVBUFFER_PTR_SET) != 0 ||
        evbuffer_copyout_from(in, &p, h, have) != (ssize_t)have)
        return 0;
    size_t n = 2;
    uint64_t len = h[1] & 0x7f;
    f->long_form = 0;
    if (len == 126) {
        n = 4;
        if (have < n)
            return 0;
        len = (uint64_t)h[2] << 8 | h[3];
        f->long_form = len < 126;
    } else if (len == 127) {
        n = 10;
        if (have < n)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        f->long_form = len <= 0xffff || len >> 63;
    }
    f->masked = h[1] >> 7;
    n += f->masked ? 4 : 0;
    if (have < n)
        return 0;
    f->size = n;
    f->plen = len;
    f->fin = h[0] >> 7;
    f->rsv = (h[0] >> 4) & 7;
    f->op = h[0] & 0x0f;
    return 1;
}

/* Why the frame with header f, after the frames before it, fails the
 * connection: a short reason and *code (1002, or 1009 for a frame over
 * ws_max_message), or NULL when wslay may have it. All is checked here,
 * before wslay, because wslay answers some of these (a fragmented control
 * frame, a length not in its shortest form) by giving up without a close
 * frame, and a frame refused at its header is never buffered whole. */
static const char *frame_error(const tb__wsconn *c, const frame_hdr *f,
                               int *code)
{
    *code = 1002;
    if (f->rsv)
        return "reserved bits set"; /* no extension is ever negotiated */
    if (!f->masked)
        return "unmasked frame";
    if (f->long_form)
        return "frame length not in its shortest form";
    if (f->op >= 8) {
        if (f->op > WSLAY_PONG)
            return "unknown opcode";
        if (!f->fin)
            return "fragmented control frame";
        if (f->plen > 125)
            return "control frame over 125 bytes";
        if (f->op == WSLAY_CONNECTION_CLOSE && f->plen == 1)
            return "malformed close frame"; /* a code is 2 bytes (5.5.1) */
    } else if (f->op > WSLAY_BINARY_FRAME) {
        return "unknown opcode";
    } else if (f->op == WSLAY_CONTINUATION_FRAME && !c->fragmented) {
        return "continuation frame without a message";
    } else if (f->op != WSLAY_CONTINUATION_FRAME && c->fragmented) {
        return "new message inside a fragmented one";
    }
    if (f->plen > c->lim.max_message) {
        *code = 1009;
        return "message too big";
    }
    return NULL;
}

/* ---------------------------------------------------------------- wslay */

/* wslay reads what we give it: the whole frames at the head of in. */
static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *ud)
{
    (void)flags;
    tb__wsconn *c = ud;
    if (c->feed == 0 || (c->paused && !c->closing)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->feed ? len : c->feed;
    int got = evbuffer_remove(c->in, buf, n);
    if (got <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    c->feed -= (size_t)got;
    c->in_wslay += (size_t)got;
    return got;
}

/* The frames wslay makes: pongs, its closes. After a close of ours, its
 * answer to the client's close is not sent (a connection has one). */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *ud)
{
    (void)flags;
    tb__wsconn *c = ud;
    if (c->close_sent)
        return (ssize_t)len;
    if (evbuffer_add(c->q.buf, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void on_msg(wslay_event_context_ptr ctx,
                   const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    (void)ctx;
    tb__wsconn *c = ud;
    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME: /* wslay has checked its UTF-8 (1007 if not) */
    case WSLAY_BINARY_FRAME:
        c->in_wslay = 0; /* wslay frees it after this callback */
        report(c);
        if (c->closing)
            return; /* we are closing: what comes now is not read */
        if (tb__ws_on_message(c->ws, arg->opcode == WSLAY_BINARY_FRAME,
                              arg->msg, arg->msg_length))
            conn_pause(c, 1);
        return;
    case WSLAY_PONG:
        if (c->awaiting_pong) {
            c->awaiting_pong = 0;
            if (c->lim.ping_interval_ms > 0 && !c->closing)
                arm(c, c->lim.ping_interval_ms);
        }
        return;
    case WSLAY_CONNECTION_CLOSE:
        /* wslay has checked the code and the reason's UTF-8 (answering
         * 1002 or 1007) and queues the answering close frame. */
        c->close_received = 1;
        c->end_code = arg->status_code ? arg->status_code : 1005;
        c->end_why = "the peer closed";
        return;
    default:
        return; /* ping: wslay queues the pong */
    }
}

static wslay_event_context_ptr context(tb__wsconn *c)
{
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = recv_cb,
        .send_callback = send_cb,
        .on_msg_recv_callback = on_msg,
    };
    if (!c->ctx && wslay_event_context_server_init(&c->ctx, &cbs, c) == 0)
        wslay_event_config_set_max_recv_msg_length(c->ctx, c->lim.max_message);
    return c->ctx;
}

/* Frees the context when it holds nothing: no fragment, nothing to send,
 * no close state (a close keeps it to the end). */
static void maybe_release(tb__wsconn *c)
{
    if (c->ctx && !c->fragmented && c->feed == 0 &&
        !wslay_event_want_write(c->ctx) &&
        wslay_event_get_read_enabled(c->ctx) &&
        !wslay_event_get_close_received(c->ctx) &&
        !wslay_event_get_close_sent(c->ctx)) {
        wslay_event_context_free(c->ctx);
        c->ctx = NULL;
        c->in_wslay = 0;
    }
}

/* Fails the connection for a frame refused at its header (reason, code
 * from frame_error): what was read is dropped, and it ends once the close
 * frame is written (RFC 6455 7.1.7). */
static void refuse(tb__wsconn *c, int code, const char *reason)
{
    if (code == 1009)
        tb__log(TB_LOG_INFO,
                "ws %s (request %s): a message over ws_max_message; "
                "closing with 1009",
                c->peer, tb_ws_request_id(c->ws));
    else
        tb__log(TB_LOG_INFO,
                "ws %s (request %s): a protocol error (%s); closing with %d",
                c->peer, tb_ws_request_id(c->ws), reason, code);
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    c->feed = 0;
    c->failing = 1;
    conn_close(c, code, reason);
    update_reading(c);
    schedule_flush(c); /* also ends it when our close was already out */
    report(c);
}

/* Gives wslay the whole frames in `in`, lets it send what it made, and
 * logs a close it started on its own. */
static void process(tb__wsconn *c)
{
    size_t avail = evbuffer_get_length(c->in);
    size_t pos = c->feed;
    frame_hdr f;
    while (frame_header(c->in, pos, avail, &f)) {
        int code;
        const char *bad = frame_error(c, &f, &code);
        if (bad) {
            refuse(c, code, bad);
            return;
        }
        if (avail - pos - f.size < f.plen)
            break; /* not all here yet */
        if (f.op < 8)
            c->fragmented = !f.fin;
        pos += f.size + (size_t)f.plen;
    }
    c->feed = pos;
    if (c->feed == 0 && !c->ctx) {
        report(c); /* a frame on its way */
        return;
    }
    if (!context(c)) {
        end(c, 1011, "out of memory");
        return;
    }
    c->in_callback++;
    int rc = wslay_event_recv(c->ctx);
    /* wslay stopped reading without a close from the client: it found a
     * protocol error (or a message too big) and queued a close. */
    int wslay_failed =
        !wslay_event_get_read_enabled(c->ctx) && !c->close_received;
    int closed_by_wslay = wslay_failed && !c->closing;
    if (rc == 0) {
        size_t before = evbuffer_get_length(c->q.buf);
        rc = wslay_event_send(c->ctx);
        if (evbuffer_get_length(c->q.buf) > before)
            tb__outq_mark(&c->q); /* wslay's frames are whole when it
                                     returns */
    }
    if (rc == 0 && wslay_event_get_close_sent(c->ctx) && !c->close_sent) {
        c->close_sent = 1;
        if (closed_by_wslay) {
            int code = wslay_event_get_status_code_sent(c->ctx);
            tb__log(TB_LOG_INFO, "ws %s (request %s): %s; closing with %d",
                    c->peer, tb_ws_request_id(c->ws),
                    code == 1009   ? "a message over ws_max_message"
                    : code == 1007 ? "text that is not UTF-8"
                                   : "a protocol error",
                    code);
        }
    }
    c->in_callback--;
    if (c->ended) {
        end(c, c->end_code, c->end_why);
        return;
    }
    if (rc != 0) {
        end(c, 1006,
            rc == WSLAY_ERR_NOMEM ? "out of memory" : "a protocol error");
        return;
    }
    if (wslay_failed || c->close_received) {
        if (!c->closing)
            tb__ws_on_closing(c->ws);
        c->closing = 1;
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
        c->feed = 0;
        if (wslay_failed) {
            c->failing = 1;
            arm(c, c->lim.close_timeout_ms);
        }
    }
    maybe_release(c);
    update_reading(c);
    schedule_flush(c);
    report(c);
}

/* ---------------------------------------------------------------- events */

static void arm(tb__wsconn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Ends the connection once the close handshake is done and written. */
static void check_done(tb__wsconn *c)
{
    if (c->ended || !c->close_sent || evbuffer_get_length(c->q.buf) > 0 ||
        (!c->close_received && !c->failing))
        return;
    end(c, c->end_code ? c->end_code : 1005,
        c->end_why ? c->end_why : "closed");
}

/* Whether the socket should be read now: not once the connection failed
 * or the client's close came; not while the core's receive queue is full
 * (but yes while we close, to see the client's answering close); and not
 * while more than ws_send_queue_bytes wait to be written: a client that
 * sends pings (each answered) but never reads is pushed back by TCP
 * instead of growing our output. */
static int should_read(const tb__wsconn *c)
{
    if (c->ended || c->failing || c->close_received)
        return 0;
    if (evbuffer_get_length(c->q.buf) > c->lim.send_queue_bytes)
        return 0;
    return c->closing || !c->paused;
}

static void update_reading(tb__wsconn *c)
{
    int want = should_read(c);
    if (want && !c->reading) {
        event_add(c->rev, NULL);
        c->reading = 1;
        /* Frames already read wait in `in`: no edge will come for them. */
        if (evbuffer_get_length(c->in) > 0)
            event_active(c->rev, EV_READ, 0);
    } else if (!want && c->reading) {
        event_del(c->rev);
        c->reading = 0;
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    tb__wsconn *c = arg;
    int n = evbuffer_read(c->in, fd, READ_CHUNK);
    if (n == 0 ||
        (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        if (c->close_received && c->close_sent) {
            end(c, c->end_code, c->end_why);
            return;
        }
        end(c, 1006,
            n == 0 ? "the peer closed the connection"
                   : "the connection failed");
        return;
    }
    /* While we close, the client's answering close is still read (what
     * else it sends is dropped). */
    if (evbuffer_get_length(c->in) > 0 && should_read(c)) {
        process(c); /* reports, unless it ended c */
    } else {
        update_reading(c);
        report(c);
    }
}

static void flush(tb__wsconn *c)
{
    if (c->ended)
        return;
    if (c->closing && !c->close_sent) {
        /* After every message queued before it. */
        unsigned char code[2] = {(unsigned char)(c->close_code >> 8),
                                 (unsigned char)c->close_code};
        c->close_sent = 1;
        if (put_frame(c, WSLAY_CONNECTION_CLOSE, code, 2, c->close_reason,
                      strlen(c->close_reason)) != 0) {
            end(c, 1006, "out of memory");
            return;
        }
    }
    int rc = tb__outq_write(&c->q, c->fd);
    if (rc < 0) {
        end(c, c->close_received ? c->end_code : 1006,
            "the connection failed (write)");
        return;
    }
    if (!tb__outq_backlogged(&c->q, &c->lim))
        tb__ws_on_drained(c->ws);
    if (rc == 0) {
        report(c);
        return;
    }
    update_reading(c);
    report(c);
    check_done(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__wsconn *c = arg;
    c->q.flush_due = 0;
    if (c->ended) { /* a write offered by conn_offer failed */
        end(c, c->end_code, c->end_why);
        return;
    }
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
    if (c->awaiting_pong && !c->reading) {
        /* Its pong may well wait unread in the socket (we pushed back):
         * not the client's fault; look again later. */
        arm(c, c->lim.ping_timeout_ms);
        return;
    }
    if (c->awaiting_pong) {
        tb__log(TB_LOG_INFO,
                "ws %s: no pong within %d ms (ws_ping_timeout_ms); closing "
                "with 1011",
                c->peer, c->lim.ping_timeout_ms);
        conn_close(c, 1011, "keepalive ping timeout");
        return;
    }
    if (put_frame(c, WSLAY_PING, NULL, 0, NULL, 0) == 0) {
        c->awaiting_pong = 1;
        arm(c, c->lim.ping_timeout_ms);
        schedule_flush(c);
    }
}

/* One flush per loop turn, however many messages come in it; none while
 * the socket is full (wev is pending and fires when it drains). */
static void schedule_flush(tb__wsconn *c)
{
    if (!c->ended)
        tb__outq_schedule(&c->q);
}

/* ---------------------------------------------------------------- ops */

static tb__wsconn *conn_open(tb_ws *ws, struct event_base *base, int fd,
                             const tb__ws_limits *lim, const char *peer)
{
    tb__wsconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ws = ws;
    c->fd = fd;
    c->lim = *lim;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    evutil_make_socket_nonblocking(fd);
    if (tb__outq_init(&c->q, base, fd, on_write, c) != 0) {
        free(c);
        return NULL;
    }
    c->in = evbuffer_new();
    c->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, c);
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->in || !c->rev || !c->timer || event_add(c->rev, NULL) != 0) {
        tb__outq_free(&c->q);
        if (c->in)
            evbuffer_free(c->in);
        if (c->rev)
            event_free(c->rev);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return NULL;
    }
    c->reading = 1;
    if (lim->ping_interval_ms > 0)
        arm(c, lim->ping_interval_ms);
    return c;
}

/* Writes what the socket takes now, from a send; TB_EPIPE when that
 * ended c (it is freed). */
static int flush_now(tb__wsconn *c)
{
    c->in_callback++;
    flush(c);
    c->in_callback--;
    if (!c->ended)
        return 0;
    end(c, c->end_code, c->end_why);
    return TB_EPIPE;
}

static int conn_send(tb__wsconn *c, int binary, const void *data, size_t len)
{
    if (c->ended || c->closing)
        return TB_EPIPE;
    if (tb__outq_over(&c->q, &c->lim, len) && !c->q.wev_added) {
        /* Over the limits counting what was queued this loop turn and not
         * yet offered to the socket: offer it now, and count only what the
         * socket does not take. */
        if (flush_now(c) != 0)
            return TB_EPIPE;
    }
    if (tb__outq_over(&c->q, &c->lim, len)) {
        tb__log(TB_LOG_WARN,
                "ws %s (request %s): slow client: %zu messages and %zu "
                "bytes wait for its socket (ws_send_queue_msgs %d, "
                "ws_send_queue_bytes %zu); closing with 1008",
                c->peer, tb_ws_request_id(c->ws), c->q.msgs,
                evbuffer_get_length(c->q.buf), c->lim.send_queue_msgs,
                c->lim.send_queue_bytes);
        conn_close(c, 1008, "send queue full (slow client)");
        return TB_ENOSPC;
    }
    if (put_frame(c, binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, NULL, 0,
                  data, len) != 0)
        return TB_ENOMEM;
    c->q.msgs++;
    if (!c->q.wev_added && tb__ws_would_pass(c->ws, holds(c))) {
        /* One event to many clients would otherwise hold a copy per
         * client until the loop turn ends, and pass ws_memory_max with
         * output the sockets would take at once: write through. */
        if (flush_now(c) != 0)
            return TB_EPIPE;
    }
    schedule_flush(c);
    report(c);
    return 0;
}

static void conn_close(tb__wsconn *c, int code, const char *reason)
{
    if (c->ended || c->closing)
        return;
    c->closing = 1;
    tb__ws_on_closing(c->ws);
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s",
             reason ? reason : "");
    arm(c, c->lim.close_timeout_ms);
    update_reading(c); /* the client's answering close must be read */
    schedule_flush(c);
}

static void conn_shed(tb__wsconn *c, int code, const char *reason)
{
    if (c->ended)
        return;
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    c->feed = 0;
    drop_unsent(c); /* before our close frame is queued after it */
    if (c->ctx && !c->in_callback) {
        /* A fragment it assembles goes; our close frame is ours. */
        wslay_event_context_free(c->ctx);
        c->ctx = NULL;
        c->in_wslay = 0;
        c->fragmented = 0;
    }
    c->failing = 1;
    conn_close(c, code, reason);
    update_reading(c);
    schedule_flush(c);
    report(c);
}

static void conn_offer(tb__wsconn *c)
{
    if (c->ended || c->in_callback || !c->q.flush_due || c->q.wev_added)
        return;
    c->in_callback++;
    flush(c);
    c->in_callback--;
    /* on_write is due (flush_due): it ends c if the write failed. */
}

static void conn_pause(tb__wsconn *c, int paused)
{
    if (c->ended)
        return;
    c->paused = paused;
    update_reading(c);
}

static void conn_abort(tb__wsconn *c)
{
    if (c->ended)
        return;
    if (!c->closing)
        conn_close(c, 1001, "server stopping");
    c->in_callback++;
    flush(c); /* one try; the socket may be full */
    c->in_callback--;
    end(c, c->end_code ? c->end_code : 1006, "the server is stopping");
}

/* Ends the connection: tells the core, closes the socket, frees. When
 * called from inside wslay or a nested flush, only marks it; the caller
 * finishes. */
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
    event_free(c->timer);
    if (c->ctx)
        wslay_event_context_free(c->ctx);
    evbuffer_free(c->in);
    tb__outq_free(&c->q);
    close(c->fd);
    free(c);
}

static int conn_backlogged(tb__wsconn *c)
{
    return !c->ended && tb__outq_backlogged(&c->q, &c->lim);
}

static const tb__wsconn_ops wslay_ops = {
    .name = "wslay",
    .open = conn_open,
    .send = conn_send,
    .close = conn_close,
    .shed = conn_shed,
    .offer = conn_offer,
    .pause = conn_pause,
    .abort = conn_abort,
    .backlogged = conn_backlogged,
};

const tb__wsconn_ops *tb__ws_wslay_ops(void)
{
    return &wslay_ops;
}
