/* http_front.c - the HTTP front: a libevent loop on a thread of its own
 * that owns the public listening socket, reads each request (head and
 * body) whole, relays it to the HTTP server on a private loopback port and
 * its answer back, so that a client that is slow to send, or idle between
 * requests, holds no server thread (docs/HTTP_DESIGN.md, "The front"). */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "http_front_int.h"

static void parse_head(fconn *c);

static void peer_str(const fconn *c, char *buf, size_t n)
{
    char a[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &c->peer.sin_addr, a, sizeof a);
    snprintf(buf, n, "%s:%u", a, ntohs(c->peer.sin_port));
}

/* Writes what bev's output holds to fd at once: a request or an answer
 * mostly fits the socket, and waiting for EV_WRITE would cost two
 * epoll_ctl calls a write. What the socket does not take waits for
 * EV_WRITE: the bufferevent writes it, then calls the write callback
 * (which stops EV_WRITE again). A write error is left to that path too,
 * which reports it through the event callback. 1 if bev's output is
 * empty now. */
int tb__front_push(struct bufferevent *bev, int fd)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (bufferevent_get_enabled(bev) & EV_WRITE)
        return !evbuffer_get_length(out); /* the socket is behind */
    /* A bufferevent keeps its output's start frozen, and unfreezes it
     * itself to write, as here. */
    evbuffer_unfreeze(out, 1);
    while (evbuffer_get_length(out) && evbuffer_write(out, fd) > 0)
        ;
    evbuffer_freeze(out, 1);
    if (!evbuffer_get_length(out))
        return 1;
    bufferevent_enable(bev, EV_WRITE);
    return 0;
}

/* Frees bev and closes fd (-1: none). A bufferevent freed from inside
 * one of its own callbacks is finalized later, and its event_del would
 * then remove from epoll whatever socket has meanwhile got fd's number
 * (epoll knows descriptors by number): a new connection to civetweb
 * never read again. Its events are taken out now, while fd is still
 * its socket. */
void tb__front_close_bev(struct bufferevent *bev, int fd)
{
    bufferevent_disable(bev, EV_READ | EV_WRITE);
    bufferevent_free(bev);
    if (fd >= 0)
        close(fd);
}

void tb__front_arm(fconn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Counts n bytes of c's input as body bytes held (0: none now). */
static void hold(fconn *c, size_t n)
{
    c->f->body_bytes += n - c->held;
    c->held = n;
}

/* ---------------------------------------------------------------- requests */

/* A canned answer from the front itself, then the connection ends. */
void tb__front_refuse(fconn *c, int status, const char *reason,
                      const char *code, const char *message)
{
    char body[512];
    int blen = snprintf(body, sizeof body,
                        "{\"error\":\"%s\",\"message\":\"%s\"}", code, message);
    /* A fresh id, as the server gives a request it cannot read: the
     * head may not be one. */
    tb_app *app = c->f->app;
    char rid[72];
    snprintf(rid, sizeof rid, "%s-h%" PRIx64, app->instance,
             atomic_fetch_add(&app->event_seq, 1) + 1);
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "X-Request-ID: %s\r\nContent-Length: %d\r\n"
                        "Connection: close\r\n\r\n%s",
                        status, reason, rid, blen, body);
    char who[32];
    peer_str(c, who, sizeof who);
    tb__log(TB_LOG_INFO, "http: %s (request %s): %d %s (front)", who, rid,
            status, code);
    tb__front_start_closing(c);
}

static void drop_resend(fconn *c)
{
    if (c->resend) {
        evbuffer_free(c->resend);
        c->resend = NULL;
    }
}

/* Relays the first n bytes of the client's input (a request) to a server
 * connection and waits for the answer. shut: the server gets no more than
 * that (bad framing, a body cut short): its side of the connection is
 * shut once they are written, and the client's ends after the answer. */
void tb__front_dispatch(fconn *c, size_t n, int shut)
{
    tb__http_front *f = c->f;
    if (!shut && !c->retried && tb__front_local(c, n))
        return;
    upconn *up = tb__front_up_get(f, c->retried);
    if (!up && f->nup >= f->up_max && !f->stopping) {
        c->state = C_QUEUED;
        c->pend_n = n;
        c->pend_shut = shut;
        tb__front_arm(c, f->cfg->http.queue_timeout_ms);
        if (f->waitq_tail)
            f->waitq_tail->wnext = c;
        else
            f->waitq = c;
        f->waitq_tail = c;
        return;
    }
    if (!up) {
        tb__log(TB_LOG_WARN, "http: front: cannot connect to the server");
        tb__front_refuse(c, 503, "Service Unavailable", "unavailable",
                         "the server cannot take the request now");
        return;
    }
    up->c = c;
    c->up = up;
    if (f->by_port[c->port] == c)
        f->by_port[c->port] = NULL;
    c->port = up->port;
    f->by_port[up->port] = c;
    atomic_store_explicit(&f->peers[up->port],
                          (uint64_t)1 << 48 |
                              (uint64_t)ntohl(c->peer.sin_addr.s_addr) << 16 |
                              ntohs(c->peer.sin_port),
                          memory_order_release);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    /* Kept to send again only when the server may have closed the kept
     * connection first and the method is safe to run twice. */
    c->up_reused = up->reused;
    if (up->reused && !c->retried && !c->req.upgrade && c->req.method_safe &&
        (c->resend = evbuffer_new()) != NULL) {
        struct evbuffer_iovec v[16];
        int nv = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 16);
        if (nv > 16) { /* rare: copy it whole */
            unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)n);
            evbuffer_add(c->resend, p, n);
        } else {
            size_t left = n;
            for (int i = 0; i < nv && left; i++) {
                size_t k = v[i].iov_len < left ? v[i].iov_len : left;
                evbuffer_add(c->resend, v[i].iov_base, k);
                left -= k;
            }
        }
    }
    evbuffer_remove_buffer(in, bufferevent_get_output(up->bev), n);
    hold(c, 0);
    /* civetweb closes its connection after a chunked body with an
     * extension or a trailer: not kept for another request. */
    c->up_close = c->req_kind == TB__HTTP_BODY_CHUNKED && c->req_chunks.extras;
    tb__front_push(up->bev, up->fd);
    /* The client has half-closed and this is its last request: the
     * server sees that end (a long poll's "gone" test). */
    if (c->client_eof && !evbuffer_get_length(in))
        shut = 1;
    c->up_shut = shut;
    if (shut) {
        c->close_after = 1;
        if (!evbuffer_get_length(bufferevent_get_output(up->bev)))
            shutdown(up->fd, SHUT_WR);
    }
    c->state = C_WAIT;
    c->rstate = R_HEAD;
    evtimer_del(c->timer);
    if (c->req.upgrade)
        bufferevent_disable(c->bev, EV_READ); /* no requests after it */
    tb__front_resp_progress(c); /* the pool's may hold nothing: no-op */
}

/* The next byte of a body within body_timeout_ms, and the whole body by
 * its deadline: a client sending a byte a second holds no memory for
 * ever. */
static void arm_body(fconn *c)
{
    const tb_http_config *hc = &c->f->cfg->http;
    int64_t left = (c->body_end_us - tb__mono_us() + 999) / 1000;
    int ms = hc->body_timeout_ms;
    c->body_late = left < ms; /* what conn_timer says if it fires */
    if (c->body_late)
        ms = left > 0 ? (int)left : 0;
    tb__front_arm(c, ms);
}

/* The body so far: relayed once whole, or once past max_body (the server
 * answers 413 then). */
static void body_progress(fconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    const tb_http_config *hc = &c->f->cfg->http;
    size_t max_body = hc->max_body;
    /* The body's bytes only: not the head, nor a pipelined request. */
    size_t body = len - c->head_len;
    if (c->req_kind == TB__HTTP_BODY_LENGTH && body > c->req.length)
        body = (size_t)c->req.length;
    hold(c, body);
    if (c->f->body_bytes > hc->body_memory_max) {
        hold(c, 0);
        atomic_fetch_add(&c->f->app->http_front_busy, 1);
        tb__front_refuse(c, 503, "Service Unavailable", "busy",
                         "the server holds too many request bodies now "
                         "(http.body_memory_max); retry later");
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_LENGTH) {
        if (len - c->head_len >= c->req.length)
            tb__front_dispatch(c, c->head_len + (size_t)c->req.length, 0);
        else
            arm_body(c);
        return;
    }
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(in, &pos, c->head_len + c->body_seen, EVBUFFER_PTR_SET);
    struct evbuffer_iovec v[8];
    while (c->head_len + c->body_seen < len) {
        int nv = evbuffer_peek(in, -1, &pos, v, 8);
        if (nv <= 0)
            break;
        for (int i = 0; i < nv && i < 8; i++) {
            int done;
            long used = tb__http_chunks_feed(&c->req_chunks, v[i].iov_base,
                                             v[i].iov_len, &done);
            if (used < 0) { /* the server finds it cut short: 400 */
                tb__front_dispatch(c, c->head_len + c->body_seen, 1);
                return;
            }
            c->body_seen += (size_t)used;
            if (done) {
                tb__front_dispatch(c, c->head_len + c->body_seen, 0);
                return;
            }
            if (c->req_chunks.data > max_body ||
                c->body_seen > max_body + CHUNK_SLACK) {
                tb__front_dispatch(c, c->head_len + c->body_seen, 1); /* 413 */
                return;
            }
        }
        evbuffer_ptr_set(in, &pos, c->head_len + c->body_seen,
                         EVBUFFER_PTR_SET);
    }
    arm_body(c);
}

/* A request head, whole or not yet. */
static void parse_head(fconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (!c->started) {
        /* RFC 9112 2.2: empty lines before a request are ignored. */
        unsigned char *p;
        while (len && (p = evbuffer_pullup(in, 1)) &&
               (*p == '\r' || *p == '\n')) {
            evbuffer_drain(in, 1);
            len--;
        }
        if (!len) {
            if (c->client_eof)
                tb__front_conn_free(c);
            return;
        }
        c->started = 1;
        c->scanned = 0;
        tb__front_arm(c, c->f->cfg->http.header_timeout_ms);
    }
    size_t look = len < TB__HTTP_HEAD_MAX + 3 ? len : TB__HTTP_HEAD_MAX + 3;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
    size_t end = p ? tb__http_head_end_from(p, look, c->scanned) : 0;
    c->scanned = end ? 0 : look;
    if (!end || end > TB__HTTP_HEAD_MAX) {
        if (len > TB__HTTP_HEAD_MAX) {
            atomic_fetch_add(&c->f->app->http_heads_too_large, 1);
            tb__front_refuse(
                c, 431, "Request Header Fields Too Large", "headers_too_large",
                "the request line and headers are over 8192 bytes");
        } else if (c->client_eof) {
            tb__front_conn_free(c); /* gone mid-head */
        }
        return;
    }
    tb__http_head_parse(p, end, 1, &c->req);
    c->head_len = end;
    c->body_seen = 0;
    c->sent_100 = 0;
    c->req_kind = tb__http_body_kind(&c->req, 0);
    if (!c->req.keep_alive)
        c->close_after = 1;
    if (c->req.reject) {
        atomic_fetch_add(&c->f->app->http_front_refused, 1);
        if (c->req.reject == TB__HTTP_REJECT_BYTES)
            tb__front_refuse(
                c, 400, "Bad Request", "bad_request",
                "a control byte, a bare CR, or a tab-folded line in the "
                "request head (RFC 9112 2.2, 5.2)");
        else
            tb__front_refuse(
                c, 400, "Bad Request", "bad_header",
                "a header line with blanks before its ':', a line that "
                "starts with a blank (obs-fold), or an empty line inside "
                "the head (RFC 9112 2.2, 5.1, 5.2)");
        return;
    }
    if (c->req.bad) {
        tb__front_dispatch(c, end, 1);
        return;
    }
    if (c->req.upgrade && c->req_kind != TB__HTTP_BODY_NONE) {
        /* civetweb would answer 101 and then read the body as frames. */
        atomic_fetch_add(&c->f->app->http_front_refused, 1);
        tb__front_refuse(c, 400, "Bad Request", "bad_request",
                         "a websocket upgrade request must not have a body");
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_NONE) {
        tb__front_dispatch(c, end, 0);
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_LENGTH &&
        c->req.length > c->f->cfg->http.max_body) {
        tb__front_dispatch(c, end, 1); /* the server answers 413 unread */
        return;
    }
    c->state = C_BODY;
    c->body_end_us =
        tb__mono_us() + (int64_t)c->f->cfg->http.body_deadline_ms * 1000;
    if (c->req_kind == TB__HTTP_BODY_CHUNKED)
        memset(&c->req_chunks, 0, sizeof c->req_chunks);
    if (!c->req.http10 && len == end &&    /* none of the body yet: */
        tb__http_wants_continue(p, end)) { /* the client may wait for it */
        evbuffer_add(bufferevent_get_output(c->bev),
                     "HTTP/1.1 100 Continue\r\n\r\n", 25);
        tb__front_push(c->bev, c->fd);
        c->sent_100 = 1;
    }
    body_progress(c);
}

/* ---------------------------------------------------------------- answers */

/* Moves n bytes of the server's answer to the client. */
static void relay(fconn *c, size_t n)
{
    evbuffer_remove_buffer(bufferevent_get_input(c->up->bev),
                           bufferevent_get_output(c->bev), n);
}

/* The answer is complete: the client's connection goes on to its next
 * request, or ends. */
void tb__front_resp_done(fconn *c)
{
    tb__front_push(c->bev, c->fd);
    upconn *up = c->up;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    int keep = c->resp_keep && !c->close_after && !c->up_shut &&
               !c->f->stopping && (!c->client_eof || evbuffer_get_length(in));
    drop_resend(c);
    c->retried = 0;
    if (up) {
        if (keep && !c->up_close)
            tb__front_up_release(up);
        else
            tb__front_up_free(up);
    }
    if (!keep) {
        tb__front_start_closing(c);
        return;
    }
    c->state = C_HEAD;
    c->started = 0;
    tb__front_arm(c, c->f->cfg->http.keepalive_timeout_ms);
    if (c->rdhup)
        event_del(c->rdhup);
    if (!c->client_eof)
        bufferevent_enable(c->bev, EV_READ);
    if (evbuffer_get_length(in))
        parse_head(c); /* pipelined */
}

void tb__front_resp_progress(fconn *c)
{
    while (c->up && (c->state == C_WAIT || c->state == C_CLOSING)) {
        struct evbuffer *in = bufferevent_get_input(c->up->bev);
        size_t len = evbuffer_get_length(in);
        if (len)
            drop_resend(c); /* the server has the request */
        if (!len)
            break;
        if (c->state == C_CLOSING) { /* the answer ended early */
            evbuffer_drain(in, len);
            break;
        }
        if (c->rstate == R_HEAD) {
            size_t look = len < RESP_HEAD_MAX ? len : RESP_HEAD_MAX;
            const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
            size_t end = p ? tb__http_head_end(p, look) : 0;
            if (!end) {
                if (len >= RESP_HEAD_MAX)
                    tb__front_start_closing(c); /* may free c */
                return;
            }
            tb__http_head h;
            tb__http_head_parse(p, end, 0, &h);
            if (h.status >= 100 && h.status < 200 && h.status != 101) {
                if (c->sent_100) /* the client has had one */
                    evbuffer_drain(in, end);
                else
                    relay(c, end);
                continue;
            }
            relay(c, end);
            if (h.status == 101 && !c->req.upgrade) {
                /* The server switched protocols on a request the front
                 * did not take for an upgrade: neither connection can
                 * carry HTTP again (never pooled). */
                c->close_after = 1;
                tb__front_push(c->bev, c->fd);
                tb__front_start_closing(c); /* frees the server connection */
                return;
            }
            if (h.status == 101) {
                c->state = C_UPGRADED;
                bufferevent_disable(c->up->bev, EV_READ);
                tb__front_arm(c, TAKE_TIMEOUT_MS);
                tb__front_push(c->bev, c->fd);
                tb__front_try_take(c);
                return;
            }
            c->resp_kind = tb__http_body_kind(&h, c->req.method_head);
            c->resp_keep = h.keep_alive && c->resp_kind != TB__HTTP_BODY_CLOSE;
            c->resp_left = h.length;
            memset(&c->resp_chunks, 0, sizeof c->resp_chunks);
            c->rstate = R_BODY;
            if (c->resp_kind == TB__HTTP_BODY_NONE) {
                tb__front_resp_done(c);
                return;
            }
            continue;
        }
        if (c->resp_kind == TB__HTTP_BODY_LENGTH) {
            size_t n = (unsigned long long)len < c->resp_left
                           ? len
                           : (size_t)c->resp_left;
            relay(c, n);
            c->resp_left -= n;
            if (!c->resp_left) {
                tb__front_resp_done(c);
                return;
            }
        } else if (c->resp_kind == TB__HTTP_BODY_CHUNKED) {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            int done;
            long used = tb__http_chunks_feed(&c->resp_chunks, v.iov_base,
                                             v.iov_len, &done);
            if (used < 0) {
                tb__front_start_closing(c); /* may free c */
                return;
            }
            relay(c, (size_t)used);
            if (done) {
                tb__front_resp_done(c);
                return;
            }
        } else {
            relay(c, len); /* until the server closes */
        }
    }
    if (c->up && c->state == C_WAIT && !tb__front_push(c->bev, c->fd) &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH) {
        bufferevent_disable(c->up->bev, EV_READ); /* TCP pushes back */
        c->paused = 1;
    }
}

/* ---------------------------------------------------------------- closing */

/* The answer is out: shut the write side, so that the client reads it and
 * its end, then read and drop what the client still sends (a body the
 * server refused) until it closes or a bound passes: closing with unread
 * bytes would reset the connection and lose the answer. */
static void after_flush(fconn *c)
{
    const tb_http_config *hc = &c->f->cfg->http;
    c->flushed = 1;
    shutdown(c->fd, SHUT_WR);
    if (c->client_eof || c->f->stopping || !hc->discard_max ||
        hc->discard_timeout_ms <= 0 || c->drained >= hc->discard_max) {
        tb__front_conn_free(c);
        return;
    }
    tb__front_arm(c, hc->discard_timeout_ms);
}

void tb__front_start_closing(fconn *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    if (c->up)
        tb__front_up_free(c->up);
    if (c->take) {
        tb__front_answer_take(c->f, c->take, TB_EPIPE);
        c->take = NULL;
    }
    hold(c, 0);
    drop_resend(c);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    c->drained += evbuffer_get_length(in);
    evbuffer_drain(in, (size_t)-1);
    bufferevent_enable(c->bev, EV_READ);
    tb__front_arm(c, CLOSE_FLUSH_MS);
    if (tb__front_push(c->bev, c->fd))
        after_flush(c);
}

/* ---------------------------------------------------------------- clients */

void tb__front_conn_free(fconn *c)
{
    tb__http_front *f = c->f;
    if (c->rdhup) /* before its descriptor is closed or handed over */
        event_free(c->rdhup);
    hold(c, 0);
    drop_resend(c);
    if (c->up)
        tb__front_up_free(c->up);
    if (c->post)
        tb__front_local_detach(c);
    if (f->by_port[c->port] == c) { /* kept after a hand-over */
        f->by_port[c->port] = NULL;
        atomic_store_explicit(&f->peers[c->port], 0, memory_order_release);
    }
    if (c->state == C_QUEUED)
        tb__front_unqueue(f, c);
    if (c->take)
        tb__front_answer_take(f, c->take, TB_EPIPE);
    if (c->prev)
        c->prev->next = c->next;
    else
        f->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    f->nconns--;
    event_free(c->timer);
    tb__front_close_bev(c->bev, c->fd);
    free(c);
    if (f->stopping && !f->conns)
        event_base_loopbreak(f->base);
}

static void client_event(struct bufferevent *bev, short what, void *arg);

/* The client half-closed or reset while its reading was paused. */
static void on_rdhup(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fconn *c = arg;
    event_del(c->rdhup);
    client_event(c->bev, BEV_EVENT_EOF, c);
}

static void client_read(struct bufferevent *bev, void *arg)
{
    fconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    switch (c->state) {
    case C_HEAD:
        parse_head(c);
        break;
    case C_BODY:
        body_progress(c);
        break;
    case C_QUEUED:
    case C_LOCAL:
    case C_WAIT: /* the next request, pipelined: it waits its turn */
        if (evbuffer_get_length(in) > TB__HTTP_HEAD_MAX) {
            /* Read no more, but still learn when the client goes (a long
             * poll's "gone" test): EPOLLRDHUP. */
            bufferevent_disable(bev, EV_READ);
            if (!c->rdhup)
                c->rdhup = event_new(c->f->base, c->fd, EV_CLOSED, on_rdhup, c);
            if (c->rdhup)
                event_add(c->rdhup, NULL);
        }
        break;
    case C_UPGRADED:
        break;
    case C_CLOSING: {
        size_t n = evbuffer_get_length(in);
        evbuffer_drain(in, n);
        c->drained += n;
        if (c->flushed && c->drained >= c->f->cfg->http.discard_max)
            tb__front_conn_free(c);
        break;
    }
    }
}

static void client_write(struct bufferevent *bev, void *arg)
{
    bufferevent_disable(bev, EV_WRITE); /* until push needs it again */
    fconn *c = arg;
    if (c->state == C_CLOSING && !c->flushed) {
        after_flush(c);
        return;
    }
    if (c->paused && c->up) {
        c->paused = 0;
        bufferevent_enable(c->up->bev, EV_READ);
        tb__front_resp_progress(c);
        return;
    }
    if (c->take)
        tb__front_try_take(c);
}

/* 1 if the client's input holds a whole request head (pipelined): a
 * client that half-closed after it still gets its answer. Anything less
 * can never become a request. */
static int pending_head(fconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    size_t look = len < TB__HTTP_HEAD_MAX + 3 ? len : TB__HTTP_HEAD_MAX + 3;
    const char *p =
        look ? (const char *)evbuffer_pullup(in, (ev_ssize_t)look) : NULL;
    if (p && tb__http_head_end(p, look))
        return 1;
    evbuffer_drain(in, len);
    return 0;
}

static void client_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    fconn *c = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    c->client_eof = 1;
    if (c->state == C_WAIT && !(what & BEV_EVENT_ERROR) && c->up) {
        /* A half-close: the answer may still be read, and requests it
         * pipelined before are answered. After the last of them the
         * server sees the client's end (a long poll's "gone" test). */
        bufferevent_disable(c->bev, EV_READ);
        if (pending_head(c))
            return;
        c->close_after = 1;
        c->up_shut = 1;
        if (!evbuffer_get_length(bufferevent_get_output(c->up->bev)))
            shutdown(c->up->fd, SHUT_WR);
        return;
    }
    if ((c->state == C_QUEUED || c->state == C_LOCAL) &&
        !(what & BEV_EVENT_ERROR)) {
        /* Its request is read whole: answered when its turn comes,
         * and the server then sees the end (tb__front_dispatch). */
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    if (c->state == C_CLOSING && !c->flushed && !(what & BEV_EVENT_ERROR)) {
        bufferevent_disable(c->bev, EV_READ);
        return; /* flush what is left, then close */
    }
    tb__front_conn_free(c); /* mid-head, mid-body, a reset: nothing to answer */
}

static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fconn *c = arg;
    char who[32];
    char ch;
    if (c->state == C_LOCAL) {
        tb__front_local_timeout(c); /* 504 publish_timeout */
        return;
    }
    if (c->state == C_HEAD && !c->started &&
        (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 ||
         recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) > 0)) {
        /* Idle past keepalive_timeout_ms, but the next request's bytes
         * are here: this process was stalled (a pause, a loaded host),
         * not the client. Closing would reset a request the client has
         * sent; its head gets header_timeout_ms from now instead. */
        tb__front_arm(c, c->f->cfg->http.header_timeout_ms);
        return;
    }
    peer_str(c, who, sizeof who);
    if (c->state == C_HEAD && c->started) {
        atomic_fetch_add(&c->f->app->http_header_timeouts, 1);
        if (tb__ratelog_ok(&c->f->timeout_log, tb__mono_us()))
            tb__log(TB_LOG_INFO,
                    "http: %s: request head not complete within %d ms "
                    "(http.header_timeout_ms): closed",
                    who, c->f->cfg->http.header_timeout_ms);
    } else if (c->state == C_BODY) {
        int late = c->body_late;
        atomic_fetch_add(&c->f->app->http_body_timeouts, 1);
        if (tb__ratelog_ok(&c->f->timeout_log, tb__mono_us()))
            tb__log(TB_LOG_INFO,
                    late ? "http: %s: request body not whole within %d ms "
                           "(http.body_deadline_ms): closed"
                         : "http: %s: no byte of the request body for %d ms "
                           "(http.body_timeout_ms): closed",
                    who,
                    late ? c->f->cfg->http.body_deadline_ms
                         : c->f->cfg->http.body_timeout_ms);
    } else if (c->state == C_QUEUED) {
        tb__front_unqueue(c->f, c);
        atomic_fetch_add(&c->f->app->http_front_busy, 1);
        if (tb__ratelog_ok(&c->f->timeout_log, tb__mono_us()))
            tb__log(TB_LOG_INFO,
                    "http: %s: no HTTP thread free within %d ms "
                    "(http.queue_timeout_ms): 503",
                    who, c->f->cfg->http.queue_timeout_ms);
        tb__front_refuse(
            c, 503, "Service Unavailable", "busy",
            "every HTTP thread is busy (http.queue_timeout_ms); retry "
            "later");
        return;
    }
    tb__front_conn_free(c);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)lis;
    tb__http_front *f = arg;
    if (f->nconns >= f->cfg->http.max_connections) {
        /* Closed before any read: a flood costs no memory. */
        atomic_fetch_add(&f->app->http_conns_refused, 1);
        if (tb__ratelog_ok(&f->accept_log, tb__mono_us()))
            tb__log(TB_LOG_WARN,
                    "http: front: %d connections open "
                    "(http.max_connections): a new one closed",
                    f->nconns);
        close(fd);
        return;
    }
    fconn *c = calloc(1, sizeof *c);
    if (!c || salen < (int)sizeof(struct sockaddr_in) ||
        !(c->timer = evtimer_new(f->base, conn_timer, c)) ||
        !(c->bev = bufferevent_socket_new(f->base, fd, 0))) {
        if (c && c->timer)
            event_free(c->timer);
        free(c);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->f = f;
    c->fd = fd;
    memcpy(&c->peer, sa, sizeof c->peer);
    c->next = f->conns;
    if (f->conns)
        f->conns->prev = c;
    f->conns = c;
    f->nconns++;
    bufferevent_setcb(c->bev, client_read, client_write, client_event, c);
    bufferevent_disable(c->bev, EV_WRITE); /* on by default: see push */
    bufferevent_enable(c->bev, EV_READ);
    /* No byte yet: idle, as between requests; the header timeout starts
     * with the first byte. */
    c->started = 0;
    tb__front_arm(c, f->cfg->http.keepalive_timeout_ms);
}

/* accept failed other than by a retriable error: out of descriptors,
 * mostly. libevent would call again at once, for as long as the
 * connection waits in the backlog: a spinning thread and a flood of log
 * lines. Accepting stops for ACCEPT_PAUSE_MS, which gives connections
 * that close time to free descriptors. */
static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    tb__http_front *f = arg;
    int err = EVUTIL_SOCKET_ERROR();
    atomic_fetch_add(&f->app->http_accept_errors, 1);
    if (tb__ratelog_ok(&f->accept_log, tb__mono_us()))
        tb__log(TB_LOG_WARN,
                "http: front: accept failed: %s (%d connections open); "
                "not accepting for %d ms",
                strerror(err), f->nconns, ACCEPT_PAUSE_MS);
    evconnlistener_disable(lis);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(f->accept_timer, &tv);
}

static void on_accept_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    if (f->lis && !f->stopping)
        evconnlistener_enable(f->lis);
}

/* ---------------------------------------------------------------- threads */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    f->ending = 1;
    if (f->lis) {
        evconnlistener_free(f->lis);
        f->lis = NULL;
    }
    evtimer_del(f->accept_timer);
    /* civetweb's mg_stop waits for the threads idle pooled connections
     * hold (up to its poll quantum): none are kept from now on. */
    f->pool_max = 0;
    while (f->pool)
        tb__front_up_free(f->pool);
}

static void on_end_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(((tb__http_front *)arg)->base);
}

/* The end: idle connections close now, the others after their answer. */
static void on_quit(evutil_socket_t fd, short what, void *arg)
{
    tb__http_front *f = arg;
    on_stop(fd, what, arg); /* the pool is empty from now on */
    f->stopping = 1;
    for (fconn *c = f->conns, *next; c; c = next) {
        next = c->next;
        c->close_after = 1;
        if (c->state == C_HEAD || c->state == C_BODY || c->state == C_QUEUED ||
            c->state == C_UPGRADED || (c->state == C_CLOSING && c->flushed))
            tb__front_conn_free(c);
    }
    if (!f->conns) {
        event_base_loopbreak(f->base);
        return;
    }
    /* STOP_FLUSH_MS's comment: the front's own answers, longer. */
    int64_t ms = STOP_FLUSH_MS + tb__front_local_stop_ms(f);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(f->end_timer, &tv);
}

static void *front_main(void *arg)
{
    tb__http_front *f = arg;
    event_base_dispatch(f->base);
    return NULL;
}

static void front_destroy(tb__http_front *f)
{
    tb__front_local_end(f);
    while (f->conns)
        tb__front_conn_free(f->conns);
    while (f->pool)
        tb__front_up_free(f->pool);
    pthread_mutex_lock(&f->mu);
    take_req *list = f->takes;
    f->takes = NULL;
    pthread_mutex_unlock(&f->mu);
    for (; list; list = list->next)
        tb__front_answer_take(f, list, TB_EPIPE);
    if (f->lis)
        evconnlistener_free(f->lis);
    if (f->stop_ev)
        event_free(f->stop_ev);
    if (f->quit_ev)
        event_free(f->quit_ev);
    if (f->take_ev)
        event_free(f->take_ev);
    if (f->end_timer)
        event_free(f->end_timer);
    if (f->posts_ev)
        event_free(f->posts_ev);
    if (f->accept_timer)
        event_free(f->accept_timer);
    if (f->base)
        event_base_free(f->base);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->by_port);
    free((void *)f->peers);
    free(f);
}

tb__http_front *tb__http_front_start(tb_app *app, const struct sockaddr_in *pub,
                                     const struct sockaddr_in *upstream,
                                     int *err)
{
    tb__http_front *f = calloc(1, sizeof *f);
    *err = TB_ENOMEM;
    if (!f)
        return NULL;
    f->app = app;
    f->cfg = tb_app_get_config(app);
    f->upstream = *upstream;
    f->up_max = f->cfg->http.threads;
    f->pool_max = f->cfg->http.upstream_pool < f->cfg->http.threads
                      ? f->cfg->http.upstream_pool
                      : f->cfg->http.threads;
    f->timeout_log.who = "http front";
    f->timeout_log.what = "timeout lines";
    f->accept_log.who = "http front";
    f->accept_log.what = "accept lines";
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->by_port = calloc(65536, sizeof *f->by_port);
    f->peers = calloc(65536, sizeof *f->peers);
    if (!f->by_port || !f->peers || !(f->base = event_base_new()) ||
        !(f->stop_ev = event_new(f->base, -1, 0, on_stop, f)) ||
        !(f->quit_ev = event_new(f->base, -1, 0, on_quit, f)) ||
        !(f->take_ev = event_new(f->base, -1, 0, tb__front_on_take, f)) ||
        !(f->posts_ev = event_new(f->base, -1, 0, tb__front_on_posts, f)) ||
        !(f->end_timer = evtimer_new(f->base, on_end_timer, f)) ||
        !(f->accept_timer = evtimer_new(f->base, on_accept_timer, f))) {
        front_destroy(f);
        return NULL;
    }
    f->lis = evconnlistener_new_bind(
        f->base, on_accept, f,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 1024,
        (const struct sockaddr *)pub, sizeof *pub);
    if (!f->lis) {
        char a[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &pub->sin_addr, a, sizeof a);
        tb__log(TB_LOG_ERROR,
                "http: cannot listen on %s:%u: %s (address in use, or not "
                "an address of this host?)",
                a, ntohs(pub->sin_port), strerror(errno));
        front_destroy(f);
        *err = TB_EINVAL;
        return NULL;
    }
    evconnlistener_set_error_cb(f->lis, on_accept_error);
    if (pthread_create(&f->thread, NULL, front_main, f) != 0) {
        front_destroy(f);
        *err = TB_EAGAIN;
        return NULL;
    }
    *err = 0;
    return f;
}

void tb__http_front_stop(tb__http_front *f)
{
    if (f)
        event_active(f->stop_ev, 0, 0);
}

void tb__http_front_free(tb__http_front *f)
{
    if (!f)
        return;
    event_active(f->quit_ev, 0, 0);
    pthread_join(f->thread, NULL);
    front_destroy(f);
}
