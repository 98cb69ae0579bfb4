/* event_batch.c - tb_dispatch_many: a batch of events handed to the bus
 * all at once or not at all, and the wait for the bus to confirm them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* What a batch's dispatcher and the bus's callbacks share: freed by
 * whichever lets go last (the caller may stop waiting before the bus
 * confirms). */
struct tb__many {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t n;
    int timeout_ms; /* resolved: < 0 no limit */
    size_t left;    /* callbacks not yet run; under mu */
    struct many_slot {
        struct tb__many *m;
        int status; /* under mu */
        int done;   /* under mu */
    } slots[];
};

static void many_unref(tb__many *m)
{
    if (atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
}

static void many_confirmed(int status, void *ud)
{
    struct many_slot *sl = ud;
    tb__many *m = sl->m;
    pthread_mutex_lock(&m->mu);
    sl->status = status;
    sl->done = 1;
    if (--m->left == 0)
        pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    many_unref(m);
}

static tb__many *many_new(size_t n, int timeout_ms)
{
    tb__many *m = calloc(1, sizeof *m + n * sizeof m->slots[0]);
    if (!m)
        return NULL;
    atomic_init(&m->refs, 1 + (int)n); /* the waiter's + a callback's each */
    pthread_mutex_init(&m->mu, NULL);
    tb__cond_init_mono(&m->cv);
    m->n = n;
    m->timeout_ms = timeout_ms;
    m->left = n;
    for (size_t i = 0; i < n; i++)
        m->slots[i].m = m;
    return m;
}

/* A batch no callback will ever reach (the bus refused it). */
static void many_drop(tb__many *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
}

/* Makes the n events and hands them to the bus with cb(uds[i]): all or
 * none. ids filled when taken; *bad is the item at fault, if one is. */
static int publish_items(tb_app *app, const tb_event_item *items, size_t n,
                         char (*ids)[TB_EVENT_ID_MAX], size_t *bad,
                         tb__publish_cb cb, void *const *uds)
{
    tb_event **evs = calloc(n, sizeof *evs);
    int rc = evs ? 0 : TB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = tb__event_make(app, items[i].name, items[i].data, items[i].len,
                            &evs[i]);
        if (rc && rc != TB_ESHUTDOWN && rc != TB_ENOMEM)
            *bad = i; /* this item's fault */
    }
    if (rc == 0) {
        /* All or none: a bus has publish_many (tb__app_use_bus). */
        rc = app->bus->ops->publish_many(app->bus, evs, n, cb, uds);
        for (size_t i = 0; rc == 0 && ids && i < n; i++)
            memcpy(ids[i], evs[i]->id, TB_EVENT_ID_MAX);
    }
    for (size_t i = 0; evs && i < n; i++)
        tb_event_unref(evs[i]);
    free(evs);
    return rc;
}

/* The checks before any event is made: n within batch_max_events (else
 * TB_EMSGSIZE, *bad at the limit). */
static int check_many(tb_app *app, const tb_event_item *items, size_t n,
                      char (*ids)[TB_EVENT_ID_MAX], size_t *bad)
{
    *bad = n;
    if (!app || (n && !items))
        return TB_EINVAL;
    if (ids)
        memset(ids, 0, n * sizeof *ids);
    if (n > (size_t)app->cfg.core.batch_max_events) {
        *bad = (size_t)app->cfg.core.batch_max_events;
        return TB_EMSGSIZE;
    }
    return 0;
}

int tb__dispatch_many_cb(tb_app *app, const tb_event_item *items, size_t n,
                         char (*ids)[TB_EVENT_ID_MAX], size_t *bad,
                         tb__publish_cb cb, void *const *uds)
{
    int rc = check_many(app, items, n, ids, bad);
    if (rc || n == 0)
        return rc;
    return publish_items(app, items, n, ids, bad, cb, uds);
}

int tb__dispatch_many_start(tb_app *app, const tb_event_item *items, size_t n,
                            int timeout_ms, char (*ids)[TB_EVENT_ID_MAX],
                            int *status, size_t *bad, tb__many **out)
{
    size_t bad_ = 0;
    if (!bad)
        bad = &bad_;
    *out = NULL;
    int rc = check_many(app, items, n, ids, bad);
    if (rc == TB_EINVAL)
        return rc;
    int wait = timeout_ms != 0;
    if (rc == 0 && wait && tb__worker_current())
        rc = TB_EDEADLK; /* a worker's loop must never block */
    if (timeout_ms == TB_TIMEOUT_DEFAULT)
        timeout_ms = app->cfg.redis.command_timeout_ms;
    if (rc || n == 0) {
        for (size_t i = 0; status && i < n; i++)
            status[i] = rc;
        return rc;
    }
    void **uds = wait ? malloc(n * sizeof *uds) : NULL;
    tb__many *m = wait ? many_new(n, timeout_ms) : NULL;
    rc = !wait || (uds && m) ? 0 : TB_ENOMEM;
    for (size_t i = 0; rc == 0 && m && i < n; i++)
        uds[i] = &m->slots[i];
    if (rc == 0)
        rc = publish_items(app, items, n, ids, bad, m ? many_confirmed : NULL,
                           uds);
    free(uds);
    for (size_t i = 0; status && i < n; i++)
        status[i] = rc;
    if (rc) {
        many_drop(m); /* nothing dispatched: no callback will run */
        return rc;
    }
    *out = m;
    return 0;
}

int tb__dispatch_many_wait(tb__many *m, int *status)
{
    struct timespec ts;
    tb__deadline_ts(&ts, m->timeout_ms < 0 ? 0 : m->timeout_ms);
    pthread_mutex_lock(&m->mu);
    while (m->left > 0) {
        if (m->timeout_ms < 0)
            pthread_cond_wait(&m->cv, &m->mu);
        else if (pthread_cond_timedwait(&m->cv, &m->mu, &ts) == ETIMEDOUT)
            break;
    }
    int rc = 0;
    for (size_t i = 0; i < m->n; i++) {
        int st = m->slots[i].done ? m->slots[i].status : TB_ETIMEDOUT;
        if (status)
            status[i] = st;
        if (st && !rc)
            rc = st;
    }
    pthread_mutex_unlock(&m->mu);
    many_unref(m);
    return rc;
}

int tb_dispatch_many(tb_app *app, const tb_event_item *items, size_t n,
                     int timeout_ms, char (*ids)[TB_EVENT_ID_MAX], int *status,
                     size_t *bad)
{
    tb__many *m;
    int rc = tb__dispatch_many_start(app, items, n, timeout_ms, ids, status,
                                     bad, &m);
    return rc || !m ? rc : tb__dispatch_many_wait(m, status);
}
