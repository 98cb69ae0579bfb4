/* http_front.c - the HTTP front: a libevent loop on a thread of its own
 * that owns the public listening socket, reads each request (head and
 * body) whole, relays it to the HTTP server on a private loopback port and
 * its answer back, so that a client that is slow to send, or idle between
 * requests, holds no server thread (docs/HTTP_DESIGN.md, "The front"). */
#include <arpa/inet.h>
#include <errno.h>
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

#include "http_front.h"
#include "http_head.h"
#include "internal.h"

#define POOL_IDLE_MS 1000       /* below civetweb's keep_alive_timeout_ms */
#define CLOSE_FLUSH_MS 10000    /* an answer's last bytes wait this at most */
#define TAKE_TIMEOUT_MS 2000    /* a hand-over waits this at most */
#define STOP_FLUSH_MS 1000      /* answers in flight at the end */
#define OUT_HIGH (256 * 1024)   /* client output that pauses the server's */
#define RESP_HEAD_MAX 65536     /* a response head from the server */
#define CHUNK_SLACK (64 * 1024) /* chunked framing over max_body */
#define ACCEPT_PAUSE_MS 100     /* no accept for this long after a failure */

/* A connection to the server, from the pool or in use by one client. */
typedef struct upconn {
    struct tb__http_front *f;
    struct bufferevent *bev;
    int fd;
    int port;            /* local port, host order: the server's view */
    struct fconn *c;     /* the client it relays for, or NULL: pooled */
    struct event *idle;  /* a pooled connection's end */
    struct upconn *next; /* the pool */
} upconn;

/* A hand-over asked for by a server thread (tb__http_front_take). */
typedef struct take_req {
    int port, upgraded;
    int result; /* the socket, or TB_EPIPE */
    int done;
    struct take_req *next;
} take_req;

enum cstate {
    C_HEAD,     /* reading a request head (or idle before one) */
    C_BODY,     /* reading its body before relaying */
    C_QUEUED,   /* read whole, waiting for a server connection */
    C_WAIT,     /* relayed: relaying the answer */
    C_UPGRADED, /* the 101 relayed: waiting for the hand-over */
    C_CLOSING   /* flushing, then draining what the client still sends */
};
enum rstate {
    R_HEAD,
    R_BODY
};

typedef struct fconn {
    struct tb__http_front *f;
    struct bufferevent *bev;
    int fd;
    struct sockaddr_in peer;
    struct fconn *prev, *next;
    struct event *timer;
    enum cstate state;
    int started;         /* a byte of the current request has come */
    int close_after;     /* the connection ends after this answer */
    int client_eof;      /* the client has half-closed or gone */
    int flushed;         /* C_CLOSING: the answer is out, write side shut */
    int sent_100;        /* the front answered Expect: 100-continue */
    int paused;          /* the server's answer waits for the client */
    int port;            /* the server connection's port it was mapped at */
    struct fconn *wnext; /* C_QUEUED: the queue */
    size_t pend_n;       /* C_QUEUED: the request's bytes in the input */
    int pend_shut;
    /* the request */
    tb__http_head req;
    size_t head_len;
    int req_kind;
    size_t body_seen; /* body bytes looked at, after the head */
    tb__http_chunks req_chunks;
    int up_shut; /* shut the server connection's write side once sent */
    /* the answer */
    upconn *up;
    enum rstate rstate;
    int resp_kind;
    int resp_keep;
    unsigned long long resp_left;
    tb__http_chunks resp_chunks;
    size_t drained;      /* C_CLOSING: bytes read and dropped */
    size_t held;         /* body bytes counted in f->body_bytes */
    int64_t body_end_us; /* C_BODY: the whole body by then (monotonic) */
    int body_late;       /* C_BODY: the timer is armed for body_end_us */
    take_req *take;
} fconn;

struct tb__http_front {
    tb_app *app;
    const tb_app_config *cfg;
    struct event_base *base;
    struct evconnlistener *lis;
    struct sockaddr_in upstream;
    pthread_t thread;
    struct event *stop_ev, *quit_ev, *take_ev, *end_timer;
    int stopping;
    fconn *conns;
    int nconns;
    upconn *pool;
    int npool;
    int nup;                   /* server connections open, pooled or in use */
    int up_max;                /* http.threads: civetweb's threads */
    fconn *waitq, *waitq_tail; /* requests waiting for a connection */
    /* the server connection's local port -> the client it relays for */
    int pool_max; /* http.upstream_pool, at most a quarter of threads */
    fconn **by_port;
    /* the same, for server threads: (1 << 48) | addr << 16 | port */
    _Atomic uint64_t *peers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    take_req *takes;
    tb__ratelog timeout_log;
    tb__ratelog accept_log;
    struct event *accept_timer; /* accepting again after a failure */
    size_t body_bytes;          /* request body bytes held, all connections */
};

static void conn_free(fconn *c);
static void parse_head(fconn *c);
static void resp_progress(fconn *c);
static void start_closing(fconn *c);
static void try_take(fconn *c);
static void answer_take(struct tb__http_front *f, take_req *t, int result);

static void dispatch(fconn *c, size_t n, int shut);

/* Requests wait in the front, not in civetweb's queue: a connection
 * civetweb has accepted but no thread serves would wait behind threads
 * that kept connections hold. A connection returned or closed serves the
 * first waiting request. */
static void serve_waiters(struct tb__http_front *f)
{
    while (f->waitq && !f->stopping && (f->pool || f->nup < f->up_max)) {
        fconn *c = f->waitq;
        f->waitq = c->wnext;
        if (!f->waitq)
            f->waitq_tail = NULL;
        c->wnext = NULL;
        dispatch(c, c->pend_n, c->pend_shut);
    }
}

static void unqueue(struct tb__http_front *f, fconn *c)
{
    fconn **pp = &f->waitq, *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->wnext;
    }
    if (!*pp)
        return;
    *pp = c->wnext;
    if (f->waitq_tail == c)
        f->waitq_tail = prev;
    c->wnext = NULL;
}

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
static int push(struct bufferevent *bev, int fd)
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
static void close_bev(struct bufferevent *bev, int fd)
{
    bufferevent_disable(bev, EV_READ | EV_WRITE);
    bufferevent_free(bev);
    if (fd >= 0)
        close(fd);
}

static void arm(fconn *c, int ms)
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

/* ---------------------------------------------------------------- pool */

static void up_free(upconn *up)
{
    tb__http_front *f = up->f;
    if (up->c && f->by_port[up->port] == up->c && up->c->state != C_UPGRADED)
        f->by_port[up->port] = NULL;
    if (up->c)
        up->c->up = NULL;
    if (up->idle) {
        upconn **pp = &f->pool;
        while (*pp && *pp != up)
            pp = &(*pp)->next;
        if (*pp) {
            *pp = up->next;
            f->npool--;
        }
        event_free(up->idle);
    }
    close_bev(up->bev, up->fd);
    free(up);
    f->nup--;
    serve_waiters(f);
}

static void up_idle_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    up_free(arg);
}

/* Back to the pool, if it has room and the connection is clean. */
static void up_release(upconn *up)
{
    tb__http_front *f = up->f;
    if (f->by_port[up->port] == up->c)
        f->by_port[up->port] = NULL;
    up->c->up = NULL;
    up->c = NULL;
    if (f->stopping || f->npool >= f->pool_max ||
        evbuffer_get_length(bufferevent_get_input(up->bev)) ||
        evbuffer_get_length(bufferevent_get_output(up->bev)) ||
        (!up->idle && !(up->idle = evtimer_new(f->base, up_idle_end, up)))) {
        up_free(up);
        return;
    }
    up->next = f->pool;
    f->pool = up;
    f->npool++;
    struct timeval tv = {POOL_IDLE_MS / 1000, (POOL_IDLE_MS % 1000) * 1000};
    evtimer_add(up->idle, &tv);
    serve_waiters(f);
}

static void up_read(struct bufferevent *bev, void *arg)
{
    upconn *up = arg;
    if (up->c)
        resp_progress(up->c);
    else
        evbuffer_drain(bufferevent_get_input(bev), (size_t)-1);
}

/* Everything the client was sent has been written to its socket. */
static void up_write(struct bufferevent *bev, void *arg)
{
    bufferevent_disable(bev, EV_WRITE); /* until push needs it again */
    upconn *up = arg;
    if (up->c && up->c->up_shut)
        shutdown(up->fd, SHUT_WR);
}

static void up_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    upconn *up = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    fconn *c = up->c;
    if (!c) {
        up_free(up);
        return;
    }
    if (c->state == C_UPGRADED) { /* the server is done after its 101 */
        up_free(up);
        return;
    }
    /* An answer that ends with the connection, or one cut short: what was
     * relayed goes out, then the client's connection ends too. Every byte
     * read before the end went through up_read already. */
    up_free(up);
    if (c->state == C_WAIT)
        start_closing(c);
}

/* A connection to the server: from the pool, or a new one. */
static upconn *up_get(tb__http_front *f)
{
    upconn *up = f->pool;
    if (up) {
        f->pool = up->next;
        f->npool--;
        evtimer_del(up->idle);
        return up;
    }
    if (f->nup >= f->up_max)
        return NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in la;
    socklen_t ll = sizeof la;
    if ((connect(fd, (struct sockaddr *)&f->upstream, sizeof f->upstream) &&
         errno != EINPROGRESS) ||
        getsockname(fd, (struct sockaddr *)&la, &ll) != 0 ||
        !(up = calloc(1, sizeof *up))) {
        close(fd);
        return NULL;
    }
    up->f = f;
    up->fd = fd;
    up->port = ntohs(la.sin_port);
    if (!(up->bev = bufferevent_socket_new(f->base, fd, 0))) {
        close(fd);
        free(up);
        return NULL;
    }
    bufferevent_setcb(up->bev, up_read, up_write, up_event, up);
    bufferevent_disable(up->bev, EV_WRITE); /* on by default: see push */
    bufferevent_enable(up->bev, EV_READ);
    f->nup++;
    return up;
}

/* ---------------------------------------------------------------- requests */

/* A canned answer from the front itself, then the connection ends. */
static void refuse(fconn *c, int status, const char *reason, const char *code,
                   const char *message)
{
    char body[512];
    int blen = snprintf(body, sizeof body,
                        "{\"error\":\"%s\",\"message\":\"%s\"}", code, message);
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                        status, reason, blen, body);
    char who[32];
    peer_str(c, who, sizeof who);
    tb__log(TB_LOG_INFO, "http: %s: %d %s (front)", who, status, code);
    start_closing(c);
}

/* Relays the first n bytes of the client's input (a request) to a server
 * connection and waits for the answer. shut: the server gets no more than
 * that (bad framing, a body cut short): its side of the connection is
 * shut once they are written, and the client's ends after the answer. */
static void dispatch(fconn *c, size_t n, int shut)
{
    tb__http_front *f = c->f;
    upconn *up = up_get(f);
    if (!up && f->nup >= f->up_max && !f->stopping) {
        c->state = C_QUEUED;
        c->pend_n = n;
        c->pend_shut = shut;
        arm(c, f->cfg->http.queue_timeout_ms);
        if (f->waitq_tail)
            f->waitq_tail->wnext = c;
        else
            f->waitq = c;
        f->waitq_tail = c;
        return;
    }
    if (!up) {
        tb__log(TB_LOG_WARN, "http: front: cannot connect to the server");
        refuse(c, 503, "Service Unavailable", "unavailable",
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
    evbuffer_remove_buffer(in, bufferevent_get_output(up->bev), n);
    hold(c, 0);
    push(up->bev, up->fd);
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
    resp_progress(c); /* the pool's connection may hold nothing: no-op */
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
    arm(c, ms);
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
        refuse(c, 503, "Service Unavailable", "busy",
               "the server holds too many request bodies now "
               "(http.body_memory_max); retry later");
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_LENGTH) {
        if (len - c->head_len >= c->req.length)
            dispatch(c, c->head_len + (size_t)c->req.length, 0);
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
                dispatch(c, c->head_len + c->body_seen, 1);
                return;
            }
            c->body_seen += (size_t)used;
            if (done) {
                dispatch(c, c->head_len + c->body_seen, 0);
                return;
            }
            if (c->req_chunks.data > max_body ||
                c->body_seen > max_body + CHUNK_SLACK) {
                dispatch(c, c->head_len + c->body_seen, 1); /* 413 */
                return;
            }
        }
        evbuffer_ptr_set(in, &pos, c->head_len + c->body_seen,
                         EVBUFFER_PTR_SET);
    }
    arm_body(c);
}

static int wants_continue(const char *head, size_t len)
{
    /* Rare: a linear scan is enough. */
    static const char h[] = "\nexpect:";
    for (size_t i = 0; i + sizeof h - 1 <= len; i++)
        if (strncasecmp(head + i, h, sizeof h - 1) == 0) {
            const char *v = head + i + sizeof h - 1;
            while (v < head + len && (*v == ' ' || *v == '\t'))
                v++;
            return head + len - v >= 12 &&
                   strncasecmp(v, "100-continue", 12) == 0;
        }
    return 0;
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
                conn_free(c);
            return;
        }
        c->started = 1;
        arm(c, c->f->cfg->http.header_timeout_ms);
    }
    size_t look = len < TB__HTTP_HEAD_MAX + 3 ? len : TB__HTTP_HEAD_MAX + 3;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
    size_t end = p ? tb__http_head_end(p, look) : 0;
    if (!end || end > TB__HTTP_HEAD_MAX) {
        if (len > TB__HTTP_HEAD_MAX) {
            atomic_fetch_add(&c->f->app->http_heads_too_large, 1);
            refuse(c, 431, "Request Header Fields Too Large",
                   "headers_too_large",
                   "the request line and headers are over 8192 bytes");
        } else if (c->client_eof) {
            conn_free(c); /* gone mid-head */
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
        refuse(c, 400, "Bad Request", "bad_request",
               "the request head has a control byte, blanks before a "
               "colon, or a folded line");
        return;
    }
    if (c->req.bad) {
        dispatch(c, end, 1);
        return;
    }
    if (c->req.upgrade && c->req_kind != TB__HTTP_BODY_NONE) {
        /* civetweb would answer 101 and then read the body as frames. */
        atomic_fetch_add(&c->f->app->http_front_refused, 1);
        refuse(c, 400, "Bad Request", "bad_request",
               "a websocket upgrade request must not have a body");
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_NONE) {
        dispatch(c, end, 0);
        return;
    }
    if (c->req_kind == TB__HTTP_BODY_LENGTH &&
        c->req.length > c->f->cfg->http.max_body) {
        dispatch(c, end, 1); /* the server answers 413 unread */
        return;
    }
    c->state = C_BODY;
    c->body_end_us =
        tb__mono_us() + (int64_t)c->f->cfg->http.body_deadline_ms * 1000;
    if (c->req_kind == TB__HTTP_BODY_CHUNKED)
        memset(&c->req_chunks, 0, sizeof c->req_chunks);
    if (!c->req.http10 && wants_continue(p, end) &&
        len - end == 0) { /* the client waits for it before its body */
        evbuffer_add(bufferevent_get_output(c->bev),
                     "HTTP/1.1 100 Continue\r\n\r\n", 25);
        push(c->bev, c->fd);
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
static void resp_done(fconn *c)
{
    push(c->bev, c->fd);
    upconn *up = c->up;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    int keep = c->resp_keep && !c->close_after && !c->up_shut &&
               !c->f->stopping && (!c->client_eof || evbuffer_get_length(in));
    if (up) {
        if (keep)
            up_release(up);
        else
            up_free(up);
    }
    if (!keep) {
        start_closing(c);
        return;
    }
    c->state = C_HEAD;
    c->started = 0;
    arm(c, c->f->cfg->http.keepalive_timeout_ms);
    if (!c->client_eof)
        bufferevent_enable(c->bev, EV_READ);
    if (evbuffer_get_length(in))
        parse_head(c); /* pipelined */
}

static void resp_progress(fconn *c)
{
    while (c->up && (c->state == C_WAIT || c->state == C_CLOSING)) {
        struct evbuffer *in = bufferevent_get_input(c->up->bev);
        size_t len = evbuffer_get_length(in);
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
                    start_closing(c); /* may free c */
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
                push(c->bev, c->fd);
                start_closing(c); /* frees the server connection */
                return;
            }
            if (h.status == 101) {
                c->state = C_UPGRADED;
                bufferevent_disable(c->up->bev, EV_READ);
                arm(c, TAKE_TIMEOUT_MS);
                push(c->bev, c->fd);
                try_take(c);
                return;
            }
            c->resp_kind = tb__http_body_kind(&h, c->req.method_head);
            c->resp_keep = h.keep_alive && c->resp_kind != TB__HTTP_BODY_CLOSE;
            c->resp_left = h.length;
            memset(&c->resp_chunks, 0, sizeof c->resp_chunks);
            c->rstate = R_BODY;
            if (c->resp_kind == TB__HTTP_BODY_NONE) {
                resp_done(c);
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
                resp_done(c);
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
                start_closing(c); /* may free c */
                return;
            }
            relay(c, (size_t)used);
            if (done) {
                resp_done(c);
                return;
            }
        } else {
            relay(c, len); /* until the server closes */
        }
    }
    if (c->up && c->state == C_WAIT && !push(c->bev, c->fd) &&
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
        conn_free(c);
        return;
    }
    arm(c, hc->discard_timeout_ms);
}

static void start_closing(fconn *c)
{
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    if (c->up)
        up_free(c->up);
    if (c->take) {
        answer_take(c->f, c->take, TB_EPIPE);
        c->take = NULL;
    }
    hold(c, 0);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    c->drained += evbuffer_get_length(in);
    evbuffer_drain(in, (size_t)-1);
    bufferevent_enable(c->bev, EV_READ);
    arm(c, CLOSE_FLUSH_MS);
    if (push(c->bev, c->fd))
        after_flush(c);
}

/* ---------------------------------------------------------------- clients */

static void answer_take(tb__http_front *f, take_req *t, int result)
{
    pthread_mutex_lock(&f->mu);
    t->result = result;
    t->done = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void conn_free(fconn *c)
{
    tb__http_front *f = c->f;
    hold(c, 0);
    if (c->up)
        up_free(c->up);
    if (f->by_port[c->port] == c)
        f->by_port[c->port] = NULL;
    if (c->state == C_QUEUED)
        unqueue(f, c);
    if (c->take)
        answer_take(f, c->take, TB_EPIPE);
    if (c->prev)
        c->prev->next = c->next;
    else
        f->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    f->nconns--;
    event_free(c->timer);
    close_bev(c->bev, c->fd);
    free(c);
    if (f->stopping && !f->conns)
        event_base_loopbreak(f->base);
}

/* The socket leaves the front for the core (a websocket after its 101, an
 * SSE stream before its answer), once what the front relayed is out. */
static void try_take(fconn *c)
{
    take_req *t = c->take;
    if (!t)
        return;
    int ready = t->upgraded
                    ? c->state == C_UPGRADED
                    : c->state == C_WAIT && c->rstate == R_HEAD &&
                          (!c->up || !evbuffer_get_length(
                                         bufferevent_get_input(c->up->bev)));
    if (!ready && c->state != C_WAIT && c->state != C_UPGRADED) {
        c->take = NULL;
        answer_take(c->f, t, TB_EPIPE);
        return;
    }
    if (!ready || evbuffer_get_length(bufferevent_get_output(c->bev)))
        return; /* the 101 is on its way, or the output drains first */
    c->take = NULL;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    tb__http_front *f = c->f;
    int fd = c->fd;
    c->fd = -1;
    conn_free(c);
    answer_take(f, t, fd);
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
    case C_WAIT: /* the next request, pipelined: it waits its turn */
        if (evbuffer_get_length(in) > TB__HTTP_HEAD_MAX)
            bufferevent_disable(bev, EV_READ);
        break;
    case C_UPGRADED:
        break;
    case C_CLOSING: {
        size_t n = evbuffer_get_length(in);
        evbuffer_drain(in, n);
        c->drained += n;
        if (c->flushed && c->drained >= c->f->cfg->http.discard_max)
            conn_free(c);
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
        resp_progress(c);
        return;
    }
    if (c->take)
        try_take(c);
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
    if (c->state == C_QUEUED && !(what & BEV_EVENT_ERROR)) {
        /* Its request is read whole: answered when its turn comes,
         * and the server then sees the end (dispatch). */
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    if (c->state == C_CLOSING && !c->flushed && !(what & BEV_EVENT_ERROR)) {
        bufferevent_disable(c->bev, EV_READ);
        return; /* flush what is left, then close */
    }
    conn_free(c); /* mid-head, mid-body, a reset: nothing to answer */
}

static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fconn *c = arg;
    char who[32];
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
        unqueue(c->f, c);
        atomic_fetch_add(&c->f->app->http_front_busy, 1);
        if (tb__ratelog_ok(&c->f->timeout_log, tb__mono_us()))
            tb__log(TB_LOG_INFO,
                    "http: %s: no HTTP thread free within %d ms "
                    "(http.queue_timeout_ms): 503",
                    who, c->f->cfg->http.queue_timeout_ms);
        refuse(c, 503, "Service Unavailable", "busy",
               "every HTTP thread is busy (http.queue_timeout_ms); retry "
               "later");
        return;
    }
    conn_free(c);
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
    arm(c, f->cfg->http.keepalive_timeout_ms);
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

static void on_take(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    pthread_mutex_lock(&f->mu);
    take_req *list = f->takes;
    f->takes = NULL;
    pthread_mutex_unlock(&f->mu);
    while (list) {
        take_req *t = list;
        list = t->next;
        fconn *c = t->port > 0 && t->port < 65536 ? f->by_port[t->port] : NULL;
        if (!c || c->take) {
            answer_take(f, t, TB_EPIPE);
            continue;
        }
        c->take = t;
        if (c->state == C_WAIT)
            arm(c, TAKE_TIMEOUT_MS);
        try_take(c);
    }
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    if (f->lis) {
        evconnlistener_free(f->lis);
        f->lis = NULL;
    }
    evtimer_del(f->accept_timer);
    /* civetweb's mg_stop waits for the threads idle pooled connections
     * hold (up to its poll quantum): none are kept from now on. */
    f->pool_max = 0;
    while (f->pool)
        up_free(f->pool);
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
    on_stop(fd, what, arg);
    f->stopping = 1;
    while (f->pool)
        up_free(f->pool);
    for (fconn *c = f->conns, *next; c; c = next) {
        next = c->next;
        c->close_after = 1;
        if (c->state == C_HEAD || c->state == C_BODY || c->state == C_QUEUED ||
            c->state == C_UPGRADED || (c->state == C_CLOSING && c->flushed))
            conn_free(c);
    }
    if (!f->conns) {
        event_base_loopbreak(f->base);
        return;
    }
    struct timeval tv = {STOP_FLUSH_MS / 1000, (STOP_FLUSH_MS % 1000) * 1000};
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
    while (f->conns)
        conn_free(f->conns);
    while (f->pool)
        up_free(f->pool);
    pthread_mutex_lock(&f->mu);
    take_req *list = f->takes;
    f->takes = NULL;
    pthread_mutex_unlock(&f->mu);
    for (; list; list = list->next)
        answer_take(f, list, TB_EPIPE);
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
        !(f->take_ev = event_new(f->base, -1, 0, on_take, f)) ||
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

int tb__http_front_peer(tb__http_front *f, int port, char *addr, size_t addrsz,
                        int *peer_port)
{
    if (!f || port <= 0 || port > 65535)
        return -1;
    uint64_t v = atomic_load_explicit(&f->peers[port], memory_order_acquire);
    if (!(v >> 48))
        return -1;
    struct in_addr a = {htonl((uint32_t)(v >> 16))};
    if (!inet_ntop(AF_INET, &a, addr, (socklen_t)addrsz))
        return -1;
    *peer_port = (int)(v & 0xffff);
    return 0;
}

int tb__http_front_take(tb__http_front *f, int port, int upgraded)
{
    take_req t = {.port = port, .upgraded = upgraded, .result = TB_EPIPE};
    pthread_mutex_lock(&f->mu);
    t.next = f->takes;
    f->takes = &t;
    pthread_mutex_unlock(&f->mu);
    event_active(f->take_ev, 0, 0);
    pthread_mutex_lock(&f->mu);
    while (!t.done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    return t.result;
}
