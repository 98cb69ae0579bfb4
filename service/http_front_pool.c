/* http_front_pool.c - the front's connections to the HTTP server: kept
 * idle for the next request, given to one request at a time, and the
 * queue of requests that wait for one. */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "http_front_int.h"

/* Requests wait in the front, not in civetweb's queue: a connection
 * civetweb has accepted but no thread serves would wait behind threads
 * that kept connections hold. A connection returned or closed serves the
 * first waiting request. */
void tb__front_serve_waiters(struct tb__http_front *f)
{
    while (f->waitq && !f->stopping && (f->pool || f->nup < f->up_max)) {
        fconn *c = f->waitq;
        f->waitq = c->wnext;
        if (!f->waitq)
            f->waitq_tail = NULL;
        c->wnext = NULL;
        tb__front_dispatch(c, c->pend_n, c->pend_shut);
        /* Put back (a resend that needs a new connection none can be
         * made for): trying it again now would spin. */
        if (c->state == C_QUEUED)
            break;
    }
}

void tb__front_unqueue(struct tb__http_front *f, fconn *c)
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

/* Closes up without serving the waiting requests. */
static void up_drop(upconn *up)
{
    tb__http_front *f = up->f;
    if (up->c && f->by_port[up->port] == up->c && up->c->state != C_UPGRADED)
        f->by_port[up->port] = NULL;
    if (!up->c || up->c->state != C_UPGRADED) /* a take may still ask */
        atomic_store_explicit(&f->peers[up->port], 0, memory_order_release);
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
    tb__front_close_bev(up->bev, up->fd);
    free(up);
    f->nup--;
}

void tb__front_up_free(upconn *up)
{
    tb__http_front *f = up->f;
    up_drop(up);
    tb__front_serve_waiters(f);
}

static void up_idle_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__front_up_free(arg);
}

/* Back to the pool, if it has room and the connection is clean. */
void tb__front_up_release(upconn *up)
{
    tb__http_front *f = up->f;
    if (f->by_port[up->port] == up->c)
        f->by_port[up->port] = NULL;
    /* Idle: no client's address for this port any more. */
    atomic_store_explicit(&f->peers[up->port], 0, memory_order_release);
    up->c->up = NULL;
    up->c = NULL;
    if (f->stopping || f->npool >= f->pool_max ||
        evbuffer_get_length(bufferevent_get_input(up->bev)) ||
        evbuffer_get_length(bufferevent_get_output(up->bev)) ||
        (!up->idle && !(up->idle = evtimer_new(f->base, up_idle_end, up)))) {
        tb__front_up_free(up);
        return;
    }
    up->next = f->pool;
    f->pool = up;
    f->npool++;
    struct timeval tv = {POOL_IDLE_MS / 1000, (POOL_IDLE_MS % 1000) * 1000};
    evtimer_add(up->idle, &tv);
    tb__front_serve_waiters(f);
}

static void up_read(struct bufferevent *bev, void *arg)
{
    upconn *up = arg;
    if (up->c)
        tb__front_resp_progress(up->c);
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
        tb__front_up_free(up);
        return;
    }
    if (c->state == C_UPGRADED) { /* the server is done after its 101 */
        tb__front_up_free(up);
        return;
    }
    /* Not when the client has gone or the request was cut: civetweb then
     * ends a request it did start (a long poll's "gone"). */
    int unanswered = c->state == C_WAIT && c->up_reused && !c->retried &&
                     c->rstate == R_HEAD && !c->client_eof && !c->up_shut &&
                     !evbuffer_get_length(bufferevent_get_input(up->bev));
    if (unanswered && !c->resend) {
        /* Not safe to run twice, and the server may have run it. */
        tb__front_up_free(up);
        tb__front_refuse(c, 502, "Bad Gateway", "upstream_closed",
                         "the server closed the connection before answering; "
                         "the request was not sent again");
        return;
    }
    if (unanswered) {
        /* A kept connection the server had closed: the request again, on
         * a new one. */
        struct evbuffer *req = c->resend;
        c->resend = NULL;
        c->retried = 1;
        tb__front_up_free(up);
        size_t n = evbuffer_get_length(req);
        evbuffer_prepend_buffer(bufferevent_get_input(c->bev), req);
        evbuffer_free(req);
        tb__front_dispatch(c, n, c->up_shut);
        return;
    }
    /* An answer that ends with the connection, or one cut short: what was
     * relayed goes out, then the client's connection ends too. Every byte
     * read before the end went through up_read already. */
    tb__front_up_free(up);
    if (c->state == C_WAIT)
        tb__front_start_closing(c);
}

/* A connection to the server: from the pool, or a new one (fresh: only
 * a new one). NULL when none can be had now. */
upconn *tb__front_up_get(tb__http_front *f, int fresh)
{
    upconn *up = fresh ? NULL : f->pool;
    if (up) {
        f->pool = up->next;
        f->npool--;
        evtimer_del(up->idle);
        up->reused = 1;
        return up;
    }
    /* A resend needs a new connection: an idle one makes room for it,
     * else a pool that stays full starves the resend. */
    if (fresh && f->nup >= f->up_max && f->pool)
        up_drop(f->pool);
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
