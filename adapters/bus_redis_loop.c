/* bus_redis_loop.c - the Redis bus's hiredis links on its libevent loop:
 * a persistent read event, and writes flushed once per loop pass. */
#include <stdlib.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "bus_redis.h"

/* Why not hiredis's own adapters/libevent.h (0.14): its read and write
 * events are one-shot, so every read re-arms the socket and every command
 * arms it for writing and disarms it once written, an epoll_ctl each, plus
 * an epoll_wait pass between queuing a command and writing it. Measured on
 * the websocket benchmark (docs/BENCHMARKS.md section 3): 1.4 to 3.8
 * epoll_ctl calls per event published and received back on the bus thread.
 *
 * Here the read event is persistent (armed once, at attach), and a command
 * queued on a connected link is written by a socket-less event activated
 * for the end of the current loop pass: every command queued in that pass
 * goes out in one write, and the socket is armed for writing only when the
 * kernel took less than all of it, or while the connection is being made
 * (hiredis 0.14 takes the first writable event as "connected": calling its
 * write handler earlier would report a connection that is not there). */
typedef struct rloop {
    redisAsyncContext *ac;
    struct event *rev;   /* EV_READ | EV_PERSIST */
    struct event *wev;   /* one-shot: connecting, or output left over */
    struct event *flush; /* no socket: write at the end of this pass */
} rloop;

/* The context whose write handler is running on this thread: a command
 * queued or output left over then needs the socket, not another pass
 * (which would spin while the socket is full). Cleared before anything
 * else can run; the context may be gone by then, so never dereferenced. */
static _Thread_local const redisAsyncContext *writing;

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rloop *e = arg;
    /* May free e (a disconnect runs the cleanup hook). */
    redisAsyncHandleRead(e->ac);
}

static void handle_write(rloop *e)
{
    redisAsyncContext *ac = e->ac;
    writing = ac;
    /* May free e and ac. */
    redisAsyncHandleWrite(ac);
    writing = NULL;
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    handle_write(arg);
}

static void add_read(void *p)
{
    rloop *e = p;
    /* Already armed but after a delRead (a disconnect): no syscall. */
    if (!event_pending(e->rev, EV_READ, NULL))
        event_add(e->rev, NULL);
}

static void del_read(void *p)
{
    rloop *e = p;
    event_del(e->rev);
}

static void add_write(void *p)
{
    rloop *e = p;
    if (writing == e->ac || !(e->ac->c.flags & REDIS_CONNECTED)) {
        if (!event_pending(e->wev, EV_WRITE, NULL))
            event_add(e->wev, NULL);
    } else {
        /* Idempotent: an active event is not queued twice. */
        event_active(e->flush, EV_WRITE, 0);
    }
}

static void del_write(void *p)
{
    rloop *e = p;
    /* A pending flush finds nothing to write and costs no syscall. */
    event_del(e->wev);
}

static void cleanup(void *p)
{
    rloop *e = p;
    event_free(e->rev);
    event_free(e->wev);
    event_free(e->flush);
    free(e);
}

int tb__rb_attach(redisAsyncContext *ac, struct event_base *base)
{
    if (ac->ev.data)
        return -1;
    rloop *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    e->ac = ac;
    int fd = ac->c.fd;
    e->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, e);
    e->wev = event_new(base, fd, EV_WRITE, on_write, e);
    e->flush = event_new(base, -1, 0, on_write, e);
    if (!e->rev || !e->wev || !e->flush || event_add(e->rev, NULL) ||
        event_add(e->wev, NULL)) { /* the connect's completion */
        if (e->rev)
            event_free(e->rev);
        if (e->wev)
            event_free(e->wev);
        if (e->flush)
            event_free(e->flush);
        free(e);
        return -1;
    }
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    return 0;
}
