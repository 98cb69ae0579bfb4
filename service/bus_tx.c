/* bus_tx.c - publishing for every bus: the events a bus has accepted, from
 * any thread, until its backend confirms them or they are given up. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "internal.h"

struct tb__bus_tx {
    char prefix[128]; /* of every channel */
    size_t prefix_len;
    int queue_max;    /* requests accepted and not yet completed */
    int64_t retry_us; /* how long an unsent request is kept */
    void (*wake)(void *ud);
    void *ud;

    pthread_mutex_t mu;
    int closed;          /* under mu */
    tb__bus_reqlist inq; /* put, not yet taken; under mu */
    atomic_int pending;  /* accepted and not yet completed (cb not run) */
    uint64_t txseq;      /* the last request's number; under mu */
    atomic_uint_fast64_t published, publish_failed;
};

/* ---------------------------------------------------------------- lists */

void tb__bus_reqlist_push(tb__bus_reqlist *l, tb__bus_req *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

tb__bus_req *tb__bus_reqlist_pop(tb__bus_reqlist *l)
{
    tb__bus_req *q = l->head;
    if (q) {
        l->head = q->next;
        if (!l->head)
            l->tail = NULL;
        l->n--;
        q->next = NULL;
    }
    return q;
}

void tb__bus_reqlist_append(tb__bus_reqlist *dst, tb__bus_reqlist *src)
{
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    *src = (tb__bus_reqlist){0};
}

void tb__bus_reqlist_prepend(tb__bus_reqlist *dst, tb__bus_reqlist *src)
{
    if (!src->head)
        return;
    src->tail->next = dst->head;
    if (!dst->head)
        dst->tail = src->tail;
    dst->head = src->head;
    dst->n += src->n;
    *src = (tb__bus_reqlist){0};
}

void tb__bus_reqlist_free(tb__bus_reqlist *l)
{
    tb__bus_req *q;
    while ((q = tb__bus_reqlist_pop(l)) != NULL) {
        free(q->env);
        free(q);
    }
}

/* --------------------------------------------------------------- any thread */

/* A request for ev, its envelope encoded (the JSON work happens here, in
 * parallel across publishers), or NULL with *rc set. */
static tb__bus_req *req_new(tb__bus_tx *tx, const tb_event *ev,
                            tb__publish_cb cb, void *ud, int *rc)
{
    char *env = NULL;
    size_t envlen = 0;
    if ((*rc = tb__envelope_encode(ev, &env, &envlen)) != 0)
        return NULL;
    size_t nlen = strlen(ev->name);
    tb__bus_req *q = malloc(sizeof *q + tx->prefix_len + nlen + 1);
    if (!q) {
        free(env);
        *rc = TB_ENOMEM;
        return NULL;
    }
    q->next = NULL;
    q->env = env;
    q->envlen = envlen;
    q->cb = cb;
    q->ud = ud;
    q->accepted_us = tb__mono_us();
    q->sent_us = 0;
    q->batch = 1;
    q->chlen = tx->prefix_len + nlen;
    memcpy(q->id, ev->id, sizeof q->id);
    memcpy(q->channel, tx->prefix, tx->prefix_len);
    memcpy(q->channel + tx->prefix_len, ev->name, nlen + 1);
    return q;
}

int tb__bus_tx_put_many(tb__bus_tx *tx, tb_event *const *evs, size_t n,
                        tb__publish_cb cb, void *const *uds)
{
    if (n == 0)
        return 0;
    if (n > (size_t)tx->queue_max)
        return TB_EMSGSIZE; /* could never fit */
    if ((size_t)tx->queue_max <
        n + (size_t)atomic_load_explicit(&tx->pending, memory_order_relaxed))
        return TB_ENOSPC;
    int rc = 0;
    tb__bus_reqlist l = {0};
    for (size_t i = 0; i < n; i++) {
        tb__bus_req *q = req_new(tx, evs[i], cb, uds ? uds[i] : NULL, &rc);
        if (!q) {
            tb__bus_reqlist_free(&l);
            return rc;
        }
        tb__bus_reqlist_push(&l, q);
    }
    pthread_mutex_lock(&tx->mu);
    if (tx->closed)
        rc = TB_ESHUTDOWN;
    else if ((size_t)tx->queue_max <
             n + (size_t)atomic_load_explicit(&tx->pending,
                                              memory_order_relaxed))
        rc = TB_ENOSPC;
    if (rc == 0) {
        int first = tx->inq.head == NULL;
        for (tb__bus_req *q = l.head; q; q = q->next)
            q->txseq = ++tx->txseq;
        tb__bus_reqlist_append(&tx->inq, &l);
        atomic_fetch_add_explicit(&tx->pending, (int)n, memory_order_relaxed);
        /* Under mu: the bus closes tx under it before its thread ends, so
         * whatever wake signals is alive here. */
        if (first)
            tx->wake(tx->ud);
    }
    pthread_mutex_unlock(&tx->mu);
    tb__bus_reqlist_free(&l); /* empty unless refused */
    return rc;
}

int tb__bus_tx_put(tb__bus_tx *tx, const tb_event *ev, tb__publish_cb cb,
                   void *ud)
{
    tb_event *e = (tb_event *)(uintptr_t)ev;
    return tb__bus_tx_put_many(tx, &e, 1, cb, &ud);
}

void tb__bus_tx_close(tb__bus_tx *tx)
{
    pthread_mutex_lock(&tx->mu);
    tx->closed = 1;
    pthread_mutex_unlock(&tx->mu);
}

void tb__bus_tx_status(tb__bus_tx *tx, tb_bus_info *out)
{
    out->published = atomic_load(&tx->published);
    out->publish_failed = atomic_load(&tx->publish_failed);
    out->queued = atomic_load(&tx->pending);
}

/* --------------------------------------------------------------- bus thread */

void tb__bus_tx_take(tb__bus_tx *tx, tb__bus_reqlist *to)
{
    pthread_mutex_lock(&tx->mu);
    tb__bus_reqlist_append(to, &tx->inq);
    pthread_mutex_unlock(&tx->mu);
}

void tb__bus_tx_done(tb__bus_tx *tx, tb__bus_req *q, int status)
{
    if (status == 0)
        atomic_fetch_add_explicit(&tx->published, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&tx->publish_failed, 1, memory_order_relaxed);
    if (q->cb)
        q->cb(status, q->ud);
    atomic_fetch_sub_explicit(&tx->pending, 1, memory_order_release);
    free(q->env);
    free(q);
}

size_t tb__bus_tx_expire(tb__bus_tx *tx, tb__bus_reqlist *l, int64_t now_us)
{
    size_t n = 0;
    tb__bus_req **pp = &l->head, *prev = NULL;
    while (*pp) {
        tb__bus_req *q = *pp;
        if (now_us - q->accepted_us <= tx->retry_us) {
            prev = q;
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        if (l->tail == q)
            l->tail = prev;
        l->n--;
        n++;
        tb__bus_tx_done(tx, q, TB_ETIMEDOUT);
    }
    return n;
}

size_t tb__bus_tx_give_up(tb__bus_tx *tx, tb__bus_reqlist *l, int status)
{
    size_t n = l->n;
    tb__bus_req *q;
    while ((q = tb__bus_reqlist_pop(l)) != NULL)
        tb__bus_tx_done(tx, q, status);
    return n;
}

/* ---------------------------------------------------------------- life */

tb__bus_tx *tb__bus_tx_new(const char *prefix, int queue_max, int retry_ms,
                           void (*wake)(void *ud), void *ud)
{
    tb__bus_tx *tx = calloc(1, sizeof *tx);
    if (!tx)
        return NULL;
    tx->prefix_len =
        (size_t)snprintf(tx->prefix, sizeof tx->prefix, "%s", prefix);
    if (tx->prefix_len >= sizeof tx->prefix)
        tx->prefix_len = sizeof tx->prefix - 1;
    tx->queue_max = queue_max;
    tx->retry_us = (int64_t)retry_ms * 1000;
    tx->wake = wake;
    tx->ud = ud;
    pthread_mutex_init(&tx->mu, NULL);
    atomic_init(&tx->pending, 0);
    atomic_init(&tx->published, 0);
    atomic_init(&tx->publish_failed, 0);
    return tx;
}

void tb__bus_tx_free(tb__bus_tx *tx)
{
    if (!tx)
        return;
    tb__bus_reqlist_free(&tx->inq);
    pthread_mutex_destroy(&tx->mu);
    free(tx);
}
