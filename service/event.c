/* event.c - app events: dispatch, per-worker delivery, waiters and
 * subscriptions. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---------------------------------------------------------------- objects */

tb_event *tb__event_new(tb_app *app, const char *name, const void *data,
                        size_t len, const char *id, const char *origin,
                        int64_t ts_us)
{
    size_t nlen = strlen(name);
    tb_event *ev = malloc(sizeof *ev + nlen + 1 + len + 1);
    if (!ev)
        return NULL;
    char *p = (char *)(ev + 1);
    memcpy(p, name, nlen + 1);
    ev->name = p;
    p += nlen + 1;
    if (len)
        memcpy(p, data, len);
    p[len] = '\0';
    ev->data = p;
    ev->len = len;
    atomic_init(&ev->refs, 1);
    ev->ts_us = ts_us ? ts_us : tb__now_us();
    if (id) {
        snprintf(ev->id, sizeof ev->id, "%s", id);
    } else {
        uint64_t seq = atomic_fetch_add(&app->event_seq, 1) + 1;
        snprintf(ev->id, sizeof ev->id, "%s-%" PRIx64, app->instance, seq);
    }
    if (origin)
        snprintf(ev->origin, sizeof ev->origin, "%s", origin);
    else
        snprintf(ev->origin, sizeof ev->origin, "%s/%d", app->instance,
                 tb_app_current_worker(app));
    return ev;
}

tb_event *tb_event_ref(tb_event *ev)
{
    atomic_fetch_add_explicit(&ev->refs, 1, memory_order_relaxed);
    return ev;
}

void tb_event_unref(tb_event *ev)
{
    if (ev &&
        atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1)
        free(ev);
}

const char *tb_event_name(const tb_event *ev)
{
    return ev->name;
}

const void *tb_event_data(const tb_event *ev, size_t *len)
{
    if (len)
        *len = ev->len;
    return ev->data;
}

const char *tb_event_id(const tb_event *ev)
{
    return ev->id;
}

int64_t tb_event_ts_us(const tb_event *ev)
{
    return ev->ts_us;
}

const char *tb_event_origin(const tb_event *ev)
{
    return ev->origin;
}

/* ---------------------------------------------------------------- dispatch */

int tb_dispatch(tb_app *app, const char *name, const void *data, size_t len,
                char *id_out)
{
    if (!app || !name || (len && !data))
        return TB_EINVAL;
    int rc = tb_event_name_valid(name);
    if (rc)
        return rc;
    if (len > app->cfg.max_event_size)
        return TB_EMSGSIZE;
    if (!atomic_load_explicit((atomic_int *)&app->bus_up, memory_order_acquire))
        return TB_ESHUTDOWN;
    tb_event *ev = tb__event_new(app, name, data, len, NULL, NULL, 0);
    if (!ev)
        return TB_ENOMEM;
    rc = app->bus->ops->publish(app->bus, ev);
    if (rc == 0 && id_out)
        memcpy(id_out, ev->id, sizeof ev->id);
    tb_event_unref(ev);
    return rc;
}

void tb__app_deliver(tb_app *app, tb_event *ev)
{
    for (int i = 0; i < app->nworkers; i++) {
        tb_event_ref(ev);
        if (tb__worker_post(&app->workers[i], TB__MSG_EVENT, ev, 0, 0)) {
            tb_event_unref(ev);
            tb__log(TB_LOG_ERROR,
                    "event %s (%s) dropped for worker %d: out of memory",
                    ev->name, ev->id, i);
        }
    }
}

/* ---------------------------------------------------------------- index */

int tb__listener_add(tb__worker *w, tb__listener *l)
{
    l->prev = l->next = NULL;
    l->bucket = NULL;
    if (tb__pattern_is_exact(&l->pat)) {
        const char *name = l->pat.text;
        size_t n = strlen(name);
        tb__lbucket *b = (tb__lbucket *)tb__htab_find(&w->exact, name, n);
        if (!b) {
            b = calloc(1, sizeof *b + n + 1);
            if (!b)
                return TB_ENOMEM;
            memcpy(b->name, name, n + 1);
            if (tb__htab_insert(&w->exact, &b->node, b->name, n)) {
                free(b);
                return TB_ENOMEM;
            }
        }
        l->bucket = b;
        l->prev = b->tail;
        if (b->tail)
            b->tail->next = l;
        else
            b->head = l;
        b->tail = l;
    } else {
        l->prev = w->wild_tail;
        if (w->wild_tail)
            w->wild_tail->next = l;
        else
            w->wild_head = l;
        w->wild_tail = l;
    }
    l->linked = 1;
    return 0;
}

void tb__listener_remove(tb__worker *w, tb__listener *l)
{
    if (!l->linked)
        return;
    tb__listener **head = l->bucket ? &l->bucket->head : &w->wild_head;
    tb__listener **tail = l->bucket ? &l->bucket->tail : &w->wild_tail;
    if (l->prev)
        l->prev->next = l->next;
    else
        *head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    else
        *tail = l->prev;
    if (l->bucket && !l->bucket->head) {
        tb__htab_remove(&w->exact, &l->bucket->node);
        free(l->bucket);
    }
    l->prev = l->next = NULL;
    l->bucket = NULL;
    l->linked = 0;
}

static void sub_push(tb_sub *s, tb_event *ev)
{
    if (s->count == s->cap) {
        /* Full: the oldest goes, so a slow reader sees the latest events
         * and learns from tb_sub_dropped() how much it missed. */
        tb_event_unref(s->ring[s->head]);
        s->head = (s->head + 1) % s->cap;
        s->count--;
        s->dropped++;
    }
    s->ring[(s->head + s->count) % s->cap] = tb_event_ref(ev);
    s->count++;
    if (s->waiting)
        tb__task_wake(s->task, s->wait_seq, 0);
}

static void deliver_one(tb__worker *w, tb__listener *l, tb_event *ev)
{
    if (l->sub) {
        sub_push(l->sub, ev);
    } else if (tb__task_wake(l->task, l->seq, 0)) {
        /* One-shot: the waiter takes this event and leaves the index. */
        l->got = tb_event_ref(ev);
        tb__listener_remove(w, l);
    }
}

void tb__event_deliver_local(tb__worker *w, tb_event *ev)
{
    tb__name split;
    if (tb__name_split(&split, ev->name) != 0)
        return;
    tb__lbucket *b =
        (tb__lbucket *)tb__htab_find(&w->exact, ev->name, strlen(ev->name));
    if (b) {
        /* deliver_one may free the bucket with its last listener: stop
         * walking once the bucket's last listener has been handled. */
        tb__listener *l = b->head;
        while (l) {
            tb__listener *next = l->next;
            int last = next == NULL;
            deliver_one(w, l, ev);
            if (last)
                break;
            l = next;
        }
    }
    tb__listener *l = w->wild_head;
    while (l) {
        tb__listener *next = l->next;
        if (tb__pattern_match_split(&l->pat, &split))
            deliver_one(w, l, ev);
        l = next;
    }
}

/* ---------------------------------------------------------------- waiting */

int tb_event_wait(tb_task *self, const char *pattern, int timeout_ms,
                  tb_event **ev)
{
    int rc = tb__task_enter(self, "tb_event_wait");
    if (rc)
        return rc;
    if (!ev || !pattern)
        return TB_EINVAL;
    *ev = NULL;
    tb__listener l = {.task = self};
    rc = tb__pattern_compile(&l.pat, pattern);
    if (rc)
        return rc;
    l.seq = tb__task_begin_wait(self, TB__WAIT_EVENT);
    rc = tb__listener_add(self->w, &l);
    if (rc == 0 && timeout_ms >= 0)
        rc = tb__task_arm_timer(self, l.seq, timeout_ms);
    if (rc == 0)
        rc = tb__task_suspend(self, "tb_event_wait");
    else
        self->wait_kind = TB__WAIT_NONE;
    tb__task_disarm_timer(self);
    tb__listener_remove(self->w, &l);
    if (rc == 0)
        *ev = l.got;
    else
        tb_event_unref(l.got);
    return rc;
}

/* ----------------------------------------------------------------
 * subscriptions */

tb_sub *tb_sub_open(tb_task *self, const char *pattern, int capacity, int *err)
{
    int rc = 0;
    tb_sub *s = NULL;
    if (!self || self != tb_task_current() || !pattern) {
        rc = TB_EINVAL;
        goto out;
    }
    if (capacity <= 0)
        capacity = self->app->cfg.sub_capacity;
    s = calloc(1, sizeof *s);
    if (!s || !(s->ring = calloc((size_t)capacity, sizeof *s->ring))) {
        rc = TB_ENOMEM;
        goto out;
    }
    rc = tb__pattern_compile(&s->l.pat, pattern);
    if (rc)
        goto out;
    s->cap = capacity;
    s->task = self;
    s->l.task = self;
    s->l.sub = s;
    rc = tb__listener_add(self->w, &s->l);
    if (rc)
        goto out;
    s->tnext = self->subs;
    if (self->subs)
        self->subs->tprev = s;
    self->subs = s;
out:
    if (err)
        *err = rc;
    if (rc && s) {
        free(s->ring);
        free(s);
        s = NULL;
    }
    return s;
}

int tb_sub_next(tb_task *self, tb_sub *s, int timeout_ms, tb_event **ev)
{
    int rc = tb__task_enter(self, "tb_sub_next");
    if (rc)
        return rc;
    if (!s || !ev || s->task != self)
        return TB_EINVAL;
    *ev = NULL;
    if (s->count == 0) {
        if (timeout_ms == 0)
            return TB_ETIMEDOUT;
        s->wait_seq = tb__task_begin_wait(self, TB__WAIT_SUB);
        if (timeout_ms > 0 &&
            (rc = tb__task_arm_timer(self, s->wait_seq, timeout_ms))) {
            self->wait_kind = TB__WAIT_NONE;
            return rc;
        }
        s->waiting = 1;
        rc = tb__task_suspend(self, "tb_sub_next");
        s->waiting = 0;
        tb__task_disarm_timer(self);
        if (rc)
            return rc;
    }
    *ev = s->ring[s->head];
    s->head = (s->head + 1) % s->cap;
    s->count--;
    return 0;
}

uint64_t tb_sub_dropped(const tb_sub *s)
{
    return s->dropped;
}

size_t tb_sub_pending(const tb_sub *s)
{
    return (size_t)s->count;
}

void tb_sub_close(tb_sub *s)
{
    if (!s)
        return;
    tb_task *t = s->task;
    tb__listener_remove(t->w, &s->l);
    while (s->count) {
        tb_event_unref(s->ring[s->head]);
        s->head = (s->head + 1) % s->cap;
        s->count--;
    }
    if (s->tprev)
        s->tprev->tnext = s->tnext;
    else
        t->subs = s->tnext;
    if (s->tnext)
        s->tnext->tprev = s->tprev;
    free(s->ring);
    free(s);
}

void tb__sub_close_all(tb_task *t)
{
    while (t->subs)
        tb_sub_close(t->subs);
}
