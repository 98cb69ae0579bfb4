/* outq.c - a connection's bounded output on a worker's loop (adapter.h's
 * tb__outq): the write path websockets and SSE streams share. */
#include <errno.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "adapter.h"

int tb__outq_init(tb__outq *q, struct event_base *base, int fd,
                  void (*on_write)(int fd, short what, void *arg), void *arg)
{
    *q = (tb__outq){0};
    q->buf = evbuffer_new();
    q->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, arg);
    if (!q->buf || !q->wev) {
        tb__outq_free(q);
        return TB_ENOMEM;
    }
    return 0;
}

int tb__outq_write(tb__outq *q, int fd)
{
    while (evbuffer_get_length(q->buf) > 0) {
        int n = evbuffer_write(q->buf, fd);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!q->wev_added) {
                event_add(q->wev, NULL);
                q->wev_added = 1;
            }
            return 0; /* the socket is full: wait until it is writable */
        }
        if (n < 0 && errno == EINTR)
            continue;
        return TB_EPIPE;
    }
    q->msgs = 0;
    if (q->wev_added) {
        event_del(q->wev);
        q->wev_added = 0;
    }
    return 1;
}

void tb__outq_schedule(tb__outq *q)
{
    if (q->flush_due || q->wev_added)
        return;
    event_active(q->wev, EV_WRITE, 0);
    q->flush_due = 1;
}

int tb__outq_over(const tb__outq *q, const tb__ws_limits *lim, size_t len)
{
    return evbuffer_get_length(q->buf) + len > lim->send_queue_bytes ||
           q->msgs + 1 > (size_t)lim->send_queue_msgs;
}

int tb__outq_backlogged(const tb__outq *q, const tb__ws_limits *lim)
{
    return q->msgs * 2 > (size_t)lim->send_queue_msgs ||
           evbuffer_get_length(q->buf) * 2 > lim->send_queue_bytes;
}

void tb__outq_free(tb__outq *q)
{
    if (q->wev)
        event_free(q->wev);
    if (q->buf)
        evbuffer_free(q->buf);
    q->wev = NULL;
    q->buf = NULL;
}
