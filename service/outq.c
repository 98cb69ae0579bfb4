/* outq.c - a connection's bounded output on a worker's loop (adapter.h's
 * tb__outq): the write path websockets and SSE streams share. */
#include <errno.h>
#include <stdlib.h>

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

/* The socket took n bytes of buf. */
static void units_written(tb__outq *q, size_t n)
{
    q->written += n;
    while (q->nends && q->ends[q->ends_head] <= q->written) {
        q->head_start = q->ends[q->ends_head];
        q->ends_head = (q->ends_head + 1) % q->ends_cap;
        q->nends--;
    }
    if (q->nends == 0 && q->ends != q->ends_inline) { /* a burst is over */
        free(q->ends);
        q->ends = NULL;
        q->ends_cap = 0;
        q->ends_head = 0;
    }
}

int tb__outq_write(tb__outq *q, int fd)
{
    while (evbuffer_get_length(q->buf) > 0) {
        int n = evbuffer_write(q->buf, fd);
        if (n > 0) {
            units_written(q, (size_t)n);
            continue;
        }
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
        event_del(q->wev); /* also drops an activation by hand: */
        q->wev_added = 0;
        q->flush_due = 0; /* else no write would be scheduled again */
    }
    return 1;
}

void tb__outq_mark(tb__outq *q)
{
    if (q->ends_lost)
        return;
    if (!q->ends) {
        q->ends = q->ends_inline;
        q->ends_cap = sizeof q->ends_inline / sizeof q->ends_inline[0];
        q->ends_head = 0;
    }
    if (q->nends == q->ends_cap) {
        size_t cap = q->ends_cap * 2;
        uint64_t *e = malloc(cap * sizeof *e);
        if (!e) {
            q->ends_lost = 1;
            return;
        }
        for (size_t i = 0; i < q->nends; i++)
            e[i] = q->ends[(q->ends_head + i) % q->ends_cap];
        if (q->ends != q->ends_inline)
            free(q->ends);
        q->ends = e;
        q->ends_cap = cap;
        q->ends_head = 0;
    }
    q->ends[(q->ends_head + q->nends) % q->ends_cap] =
        q->written + evbuffer_get_length(q->buf);
    q->nends++;
}

void tb__outq_drop_unsent(tb__outq *q)
{
    if (q->ends_lost || q->nends == 0)
        return;
    size_t keep = q->written > q->head_start
                      ? (size_t)(q->ends[q->ends_head] - q->written)
                      : 0;
    struct evbuffer *k = evbuffer_new();
    if (!k)
        return;
    if (keep && evbuffer_remove_buffer(q->buf, k, keep) != (int)keep) {
        evbuffer_prepend_buffer(q->buf, k); /* put back; keep all */
        evbuffer_free(k);
        return;
    }
    evbuffer_drain(q->buf, evbuffer_get_length(q->buf));
    evbuffer_add_buffer(q->buf, k);
    evbuffer_free(k);
    q->nends = 0;
    q->ends_head = 0;
    if (keep)
        tb__outq_mark(q);
    q->msgs = 0;
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
    if (q->ends != q->ends_inline)
        free(q->ends);
    q->ends = NULL;
    q->wev = NULL;
    q->buf = NULL;
}
