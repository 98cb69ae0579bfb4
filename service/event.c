/* event.c - app events: the event object, per-worker delivery, waiters
 * and subscriptions (dispatch.c sends them). */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <time.h>

#include "envelope.h"
#include "history.h"
#include "internal.h"

/* ---------------------------------------------------------------- objects */

/* The snprintf(dst, cap, "%s", s) of the hot path, without the format
 * machinery (a tenth of the Redis bus's per-event cost went to vfprintf):
 * s cut short to fit. Returns the length written. */
static size_t copy_str(char *dst, size_t cap, const char *s)
{
    size_t n = strnlen(s, cap - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
    return n;
}

/* Writes "<prefix><sep><v>" into dst (cap bytes) as snprintf with "%s-%"
 * PRIx64 (hex) or "%s/%d" (decimal) would, cut short to fit. */
static void put_suffixed(char *dst, size_t cap, const char *prefix, char sep,
                         uint64_t v, int hex, int neg)
{
    char tail[24];
    int i = sizeof tail;
    do {
        tail[--i] = "0123456789abcdef"[v % (hex ? 16 : 10)];
        v /= hex ? 16 : 10;
    } while (v);
    if (neg)
        tail[--i] = '-';
    tail[--i] = sep;
    size_t n = copy_str(dst, cap, prefix);
    size_t m = sizeof tail - (size_t)i;
    if (m > cap - 1 - n)
        m = cap - 1 - n;
    memcpy(dst + n, tail + i, m);
    dst[n + m] = '\0';
}

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
    atomic_init(&ev->json, NULL);
    atomic_init(&ev->refs, 1);
    ev->ts_us = ts_us ? ts_us : tb__now_us();
    if (id) {
        copy_str(ev->id, sizeof ev->id, id);
    } else {
        uint64_t seq = atomic_fetch_add(&app->event_seq, 1) + 1;
        put_suffixed(ev->id, sizeof ev->id, app->instance, '-', seq, 1, 0);
    }
    ev->hops = 0;
    ev->seq = 0;
    ev->pos[0] = '\0';
    ev->max_depth = app->cfg.core.json_max_depth;
    if (origin) {
        copy_str(ev->origin, sizeof ev->origin, origin);
    } else {
        int w = tb_app_current_worker(app);
        put_suffixed(ev->origin, sizeof ev->origin, app->instance, '/',
                     w < 0 ? 0u - (uint64_t)w : (uint64_t)w, 0, w < 0);
    }
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
        atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1) {
        free(atomic_load_explicit(&ev->json, memory_order_relaxed));
        free(ev);
    }
}

const char *tb_event_json(const tb_event *cev, size_t *len)
{
    tb_event *ev = (tb_event *)(uintptr_t)cev;
    tb__json *j = atomic_load_explicit(&ev->json, memory_order_acquire);
    if (!j) {
        /* Whoever builds it first publishes it; a thread that loses the
         * race drops its own copy. */
        char *text;
        size_t n;
        if (tb__envelope_encode(ev, &text, &n) != 0)
            return NULL;
        tb__json *mine = malloc(sizeof *mine + n + 1);
        if (!mine) {
            free(text);
            return NULL;
        }
        mine->len = n;
        memcpy(mine->text, text, n + 1);
        free(text);
        tb__json *expected = NULL;
        if (atomic_compare_exchange_strong_explicit(&ev->json, &expected, mine,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            j = mine;
        } else {
            free(mine);
            j = expected;
        }
    }
    if (len)
        *len = j->len;
    return j->text;
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

int tb_event_hops(const tb_event *ev)
{
    return ev->hops;
}

const char *tb_bus_state_name(tb_bus_state s)
{
    switch (s) {
    case TB_BUS_CONNECTING:
        return "connecting";
    case TB_BUS_CONNECTED:
        return "connected";
    case TB_BUS_RECONNECTING:
        return "reconnecting";
    case TB_BUS_STOPPED:
        return "stopped";
    }
    return "unknown";
}

int tb_bus_status(tb_app *app, tb_bus_info *out)
{
    if (!app || !out)
        return TB_EINVAL;
    app->bus->ops->status(app->bus, out);
    out->queue_full_drops = atomic_load(&app->queue_full_drops);
    if (!atomic_load(&app->bus_up))
        out->state = TB_BUS_STOPPED;
    return 0;
}

void tb__app_deliver(tb_app *app, tb_event *ev)
{
    tb__app_deliver_batch(app, &ev, 1);
}

/* Counts deliveries dropped for a worker that fell behind, and says so at
 * most once a second (a flood must not flood the log too). */
static void queue_full(tb_app *app, int worker, size_t dropped)
{
    atomic_fetch_add(&app->queue_full_drops, dropped);
    int64_t now = tb__mono_us();
    int64_t last = atomic_load(&app->queue_full_logged_us);
    if (now - last < 1000000 ||
        !atomic_compare_exchange_strong(&app->queue_full_logged_us, &last, now))
        return;
    tb__log(TB_LOG_WARN,
            "worker %d is behind: %d events already wait in its queue "
            "(worker_queue_max); %zu event(s) dropped for it (%llu in all)",
            worker, app->cfg.core.worker_queue_max, dropped,
            (unsigned long long)atomic_load(&app->queue_full_drops));
}

void tb__app_deliver_batch(tb_app *app, tb_event *const *evs, size_t n)
{
    /* Each worker gets the events its listeners could match, so that a
     * worker nobody on it waits for is not woken. (Its listeners are
     * registered on its own thread: an event that races a new listener
     * may miss it, as an event dispatched just before the wait would.) */
    tb_event *local[64];
    tb_event **sel = n <= 64 ? local : malloc(n * sizeof *sel);
    for (int w = 0; w < app->nworkers; w++) {
        tb__worker *wk = &app->workers[w];
        tb_event *const *list = evs;
        size_t m = n;
        if (sel) {
            m = 0;
            for (size_t i = 0; i < n; i++) {
                tb__name nm;
                if (tb__name_split(&nm, evs[i]->name) == 0 &&
                    tb__interest_match(&wk->interest, &nm))
                    sel[m++] = evs[i];
            }
            list = sel;
        } /* else: out of memory: every worker gets every event */
        if (m == 0)
            continue;
        for (size_t i = 0; i < m; i++)
            atomic_fetch_add_explicit(&list[i]->refs, 1, memory_order_relaxed);
        size_t k = tb__worker_post_events(
            wk, list, m, (size_t)app->cfg.core.worker_queue_max);
        if (k == m)
            continue;
        /* The newest events are the ones left out: what the worker already
         * holds stays in order. */
        for (size_t i = k; i < m; i++)
            tb_event_unref(list[i]);
        queue_full(app, w, m - k);
    }
    if (sel != local)
        free(sel);
}

int tb__app_wants(tb_app *app, const tb__name *name)
{
    return tb__interest_match(&app->interest, name);
}

/* ---------------------------------------------------------------- index */

/* The bucket of listeners keyed by key[0..n) in t (wild: of wildcard
 * patterns whose prefix has depth segments), made if missing; NULL when
 * out of memory. *made: it is new. */
static tb__lbucket *bucket_get(tb__worker *w, int wild, const char *key,
                               size_t n, int depth, int *made)
{
    tb__htab *t = wild ? &w->wild : &w->exact;
    tb__lbucket *b = (tb__lbucket *)tb__htab_find(t, key, n);
    *made = 0;
    if (b)
        return b;
    b = calloc(1, sizeof *b + n + 1);
    if (!b)
        return NULL;
    memcpy(b->name, key, n);
    b->name[n] = '\0';
    b->wild = wild;
    b->depth = depth;
    if (tb__htab_insert(t, &b->node, b->name, n)) {
        free(b);
        return NULL;
    }
    if (wild)
        w->wild_depths[depth]++;
    *made = 1;
    return b;
}

static void bucket_free(tb__worker *w, tb__lbucket *b)
{
    if (b->wild) {
        tb__htab_remove(&w->wild, &b->node);
        w->wild_depths[b->depth]--;
    } else {
        tb__htab_remove(&w->exact, &b->node);
    }
    free(b);
}

int tb__listener_add(tb__worker *w, tb__listener *l)
{
    l->prev = l->next = NULL;
    l->bucket = NULL;
    int exact = tb__pattern_is_exact(&l->pat), depth = 0, made;
    size_t n =
        exact ? strlen(l->pat.text) : tb__pattern_prefix(&l->pat, &depth);
    tb__lbucket *b = bucket_get(w, !exact, l->pat.text, n, depth, &made);
    if (!b)
        return TB_ENOMEM;
    /* The interest counts each wildcard listener, and an exact name's
     * first one on this worker (its bucket's last one undoes it). */
    if (!exact || made) {
        if (tb__interest_add(&w->app->interest, &l->pat)) {
            if (made)
                bucket_free(w, b);
            return TB_ENOMEM;
        }
        if (tb__interest_add(&w->interest, &l->pat)) {
            tb__interest_remove(&w->app->interest, &l->pat);
            if (made)
                bucket_free(w, b);
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
    l->linked = 1;
    return 0;
}

void tb__listener_remove(tb__worker *w, tb__listener *l)
{
    if (!l->linked)
        return;
    tb__lbucket *b = l->bucket;
    if (l->prev)
        l->prev->next = l->next;
    else
        b->head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    else
        b->tail = l->prev;
    if (b->wild || !b->head) {
        tb__interest_remove(&w->app->interest, &l->pat);
        tb__interest_remove(&w->interest, &l->pat);
    }
    if (!b->head)
        bucket_free(w, b);
    l->prev = l->next = NULL;
    l->bucket = NULL;
    l->linked = 0;
}

/* Grows s's ring (it starts small: most subscriptions never hold many
 * events, and thousands of idle ones must stay cheap). 0 or TB_ENOMEM. */
static int sub_grow(tb_sub *s)
{
    int nsize = s->size * 2 < s->cap ? s->size * 2 : s->cap;
    tb_event **r = malloc((size_t)nsize * sizeof *r);
    if (!r)
        return TB_ENOMEM;
    for (int i = 0; i < s->count; i++)
        r[i] = s->ring[(s->head + i) % s->size];
    free(s->ring);
    s->ring = r;
    s->size = nsize;
    s->head = 0;
    return 0;
}

/* Queues ev on s: 1, or 0 when s has it already (a second pattern of the
 * same subscription matched). */
static int sub_push(tb__worker *w, tb_sub *s, tb_event *ev)
{
    if (s->last_seq == w->deliver_seq)
        return 0; /* a second pattern of the same subscription matched */
    s->last_seq = w->deliver_seq;
    if (s->count == s->size && (s->size == s->cap || sub_grow(s) != 0)) {
        /* Full: the oldest goes, so a slow reader sees the latest events
         * and learns from tb_sub_dropped() how much it missed. */
        tb_event_unref(s->ring[s->head]);
        s->head = (s->head + 1) % s->size;
        s->count--;
        s->dropped++;
    }
    s->ring[(s->head + s->count) % s->size] = tb_event_ref(ev);
    s->count++;
    if (s->notify)
        s->notify(s->notify_arg);
    else if (s->waiting)
        tb__task_wake(s->task, s->wait_seq, 0);
    return 1;
}

/* One more delivery on w, counted by w's thread alone. */
static void count_delivery(tb__worker *w)
{
    atomic_store_explicit(
        &w->delivered,
        atomic_load_explicit(&w->delivered, memory_order_relaxed) + 1,
        memory_order_relaxed);
}

static void deliver_one(tb__worker *w, tb__listener *l, tb_event *ev)
{
    if (l->sub) {
        if (sub_push(w, l->sub, ev))
            count_delivery(w);
    } else if (tb__task_wake(l->task, l->seq, 0)) {
        /* One-shot: the waiter takes this event and leaves the index. */
        l->got = tb_event_ref(ev);
        tb__listener_remove(w, l);
        count_delivery(w);
    }
}

/* Delivers ev to the listeners of bucket b that match it (all of them
 * when match is NULL). deliver_one may free the bucket with its last
 * listener: the walk stops once the bucket's last listener is handled. */
static void deliver_bucket(tb__worker *w, tb__lbucket *b, tb_event *ev,
                           const tb__name *match)
{
    tb__listener *l = b->head;
    while (l) {
        tb__listener *next = l->next;
        int last = next == NULL;
        if (!match || tb__pattern_match_split(&l->pat, match))
            deliver_one(w, l, ev);
        if (last)
            break;
        l = next;
    }
}

void tb__event_deliver_local(tb__worker *w, tb_event *ev)
{
    w->deliver_seq++;
    tb__name split;
    if (tb__name_split(&split, ev->name) != 0)
        return;
    tb__lbucket *b =
        (tb__lbucket *)tb__htab_find(&w->exact, split.s, split.len);
    if (b)
        deliver_bucket(w, b, ev, NULL);
    /* A wildcard pattern's literal prefix has fewer segments than the
     * names it matches: look up each shorter prefix of the name that some
     * pattern has. */
    for (int k = 0; k < split.nseg; k++) {
        if (!w->wild_depths[k])
            continue;
        size_t n = k ? (size_t)split.off[k - 1] + split.seglen[k - 1] : 0;
        b = (tb__lbucket *)tb__htab_find(&w->wild, split.s, n);
        if (b)
            deliver_bucket(w, b, ev, &split);
    }
}

/* ---------------------------------------------------------------- waiting */

/* Waiters' listeners come from a per-worker free list rather than the
 * task's stack: delivery walks them densely instead of touching one cold
 * stack page per waiter, and a waiting task's stack stays shallow. */
#define SPARE_LISTENERS_MAX 4096

static tb__listener *listener_get(tb__worker *w)
{
    tb__listener *l = w->spare_listeners;
    if (l) {
        w->spare_listeners = l->next;
        w->nspare_listeners--;
    } else if (!(l = malloc(sizeof *l))) {
        return NULL;
    }
    /* Everything but the pattern, which tb__pattern_compile fills. */
    l->prev = l->next = NULL;
    l->bucket = NULL;
    l->task = NULL;
    l->sub = NULL;
    l->seq = 0;
    l->linked = 0;
    l->got = NULL;
    return l;
}

static void listener_put(tb__worker *w, tb__listener *l)
{
    if (w->nspare_listeners >= SPARE_LISTENERS_MAX) {
        free(l);
        return;
    }
    l->next = w->spare_listeners;
    w->spare_listeners = l;
    w->nspare_listeners++;
}

void tb__listener_free_spares(tb__worker *w)
{
    while (w->spare_listeners) {
        tb__listener *l = w->spare_listeners;
        w->spare_listeners = l->next;
        free(l);
    }
    w->nspare_listeners = 0;
}

int tb_event_wait(tb_task *self, const char *pattern, int timeout_ms,
                  tb_event **ev)
{
    int rc = tb__task_enter(self, "tb_event_wait");
    if (rc)
        return rc;
    if (!ev || !pattern)
        return TB_EINVAL;
    *ev = NULL;
    tb__worker *w = self->w;
    tb__listener *l = listener_get(w);
    if (!l)
        return TB_ENOMEM;
    l->task = self;
    rc = tb__pattern_compile(&l->pat, pattern);
    if (rc) {
        listener_put(w, l);
        return rc;
    }
    l->seq = tb__task_begin_wait(self, TB__WAIT_EVENT);
    rc = tb__listener_add(w, l);
    tb__timer tmr;
    if (rc == 0 && timeout_ms >= 0)
        rc = tb__task_arm_timer(self, &tmr, l->seq, timeout_ms);
    if (rc == 0) {
        self->waiter = l;
        rc = tb__task_suspend(self, "tb_event_wait");
        self->waiter = NULL;
    } else {
        self->wait_kind = TB__WAIT_NONE;
    }
    tb__task_disarm_timer(self);
    tb__listener_remove(w, l);
    if (rc == 0)
        *ev = l->got;
    else
        tb_event_unref(l->got);
    listener_put(w, l);
    return rc;
}

void tb__event_abandon_wait(tb_task *t)
{
    tb__listener *l = t->waiter;
    if (!l)
        return;
    t->waiter = NULL;
    tb__listener_remove(t->w, l);
    tb_event_unref(l->got);
    listener_put(t->w, l);
}

/* ----------------------------------------------------------------
 * subscriptions */

tb_sub *tb_sub_open(tb_task *self, const char *pattern, int capacity, int *err)
{
    int rc = 0;
    tb_sub *s = NULL;
    if (!self || self != tb_task_current()) {
        rc = TB_EINVAL;
        goto out;
    }
    if (capacity <= 0)
        capacity = self->app->cfg.core.sub_capacity;
    s = calloc(1, sizeof *s);
    int size = capacity < 8 ? capacity : 8;
    if (!s || !(s->ring = malloc((size_t)size * sizeof *s->ring))) {
        rc = TB_ENOMEM;
        goto out;
    }
    if (pattern) {
        rc = tb__pattern_compile(&s->l.pat, pattern);
        if (rc)
            goto out;
    }
    s->cap = capacity;
    s->size = size;
    s->task = self;
    s->l.task = self;
    s->l.sub = s;
    if (pattern && (rc = tb__listener_add(self->w, &s->l)) != 0)
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
    if (s->rs && tb__resume_next(self, s, ev, &rc))
        return rc;
    /* A wait that found only events the replay covered starts over with
     * its full timeout: they come in bursts at the seam. */
    while (tb__sub_pop(s, ev) != 0) {
        if (timeout_ms == 0)
            return TB_ETIMEDOUT;
        s->wait_seq = tb__task_begin_wait(self, TB__WAIT_SUB);
        tb__timer tmr;
        if (timeout_ms > 0 &&
            (rc = tb__task_arm_timer(self, &tmr, s->wait_seq, timeout_ms))) {
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
    return 0;
}

void tb__sub_notify(tb_sub *s, void (*fn)(void *arg), void *arg)
{
    s->notify = fn;
    s->notify_arg = arg;
}

/* Takes s out of its task's list of subscriptions. */
static void sub_unlink(tb_sub *s)
{
    if (s->tprev)
        s->tprev->tnext = s->tnext;
    else
        s->task->subs = s->tnext;
    if (s->tnext)
        s->tnext->tprev = s->tprev;
    s->tprev = s->tnext = NULL;
}

void tb__sub_move(tb_sub *s, tb_task *to)
{
    sub_unlink(s);
    s->task = to;
    s->l.task = to;
    for (int i = 0; i < s->nextra; i++)
        s->extra[i]->task = to;
    s->tnext = to->subs;
    if (to->subs)
        to->subs->tprev = s;
    to->subs = s;
}

int tb__sub_pop(tb_sub *s, tb_event **ev)
{
    /* Skipped: replayed already, or before a seam that skipped it. */
    while (s->count) {
        tb_event *e = s->ring[s->head];
        s->head = (s->head + 1) % s->size;
        s->count--;
        if (s->rs && tb__resume_covered(s, e)) {
            tb_event_unref(e);
            continue;
        }
        *ev = e;
        return 0;
    }
    return TB_EAGAIN;
}

uint64_t tb_sub_dropped(const tb_sub *s)
{
    return s->dropped;
}

size_t tb_sub_pending(const tb_sub *s)
{
    return (size_t)s->count;
}

/* The listener of s for pattern text, or NULL. */
static tb__listener *sub_find(tb_sub *s, const char *text)
{
    if (s->l.linked && strcmp(s->l.pat.text, text) == 0)
        return &s->l;
    for (int i = 0; i < s->nextra; i++)
        if (strcmp(s->extra[i]->pat.text, text) == 0)
            return s->extra[i];
    return NULL;
}

/* Checks a tb_sub_add/remove call (sub's worker, a valid pattern) and
 * compiles pattern into *pat. 0 or the error to return. */
static int sub_pattern(const tb_sub *s, const char *pattern, tb__pattern *pat)
{
    if (!s || !pattern || tb__worker_current() != s->task->w)
        return TB_EINVAL;
    return tb__pattern_compile(pat, pattern);
}

int tb_sub_add(tb_sub *s, const char *pattern)
{
    tb__pattern pat;
    int rc = sub_pattern(s, pattern, &pat);
    if (rc)
        return rc;
    if (sub_find(s, pat.text))
        return TB_EEXIST;
    tb__worker *w = s->task->w;
    if (!s->l.linked) {
        s->l.pat = pat;
        return tb__listener_add(w, &s->l);
    }
    if (s->nextra == s->extra_cap) {
        int ncap = s->extra_cap ? s->extra_cap * 2 : 4;
        tb__listener **v = realloc(s->extra, (size_t)ncap * sizeof *v);
        if (!v)
            return TB_ENOMEM;
        s->extra = v;
        s->extra_cap = ncap;
    }
    tb__listener *l = calloc(1, sizeof *l);
    if (!l)
        return TB_ENOMEM;
    l->pat = pat;
    l->task = s->task;
    l->sub = s;
    if ((rc = tb__listener_add(w, l)) != 0) {
        free(l);
        return rc;
    }
    s->extra[s->nextra++] = l;
    return 0;
}

int tb_sub_remove(tb_sub *s, const char *pattern)
{
    tb__pattern pat;
    int rc = sub_pattern(s, pattern, &pat);
    if (rc)
        return rc;
    tb__listener *l = sub_find(s, pat.text);
    if (!l)
        return TB_ENOENT;
    tb__listener_remove(s->task->w, l);
    if (l == &s->l)
        return 0;
    for (int i = 0; i < s->nextra; i++) {
        if (s->extra[i] == l) {
            s->extra[i] = s->extra[--s->nextra];
            break;
        }
    }
    free(l);
    return 0;
}

int tb_sub_patterns(const tb_sub *s)
{
    return s ? s->l.linked + s->nextra : 0;
}

void tb_sub_close(tb_sub *s)
{
    if (!s)
        return;
    tb_task *t = s->task;
    tb__listener_remove(t->w, &s->l);
    for (int i = 0; i < s->nextra; i++) {
        tb__listener_remove(t->w, s->extra[i]);
        free(s->extra[i]);
    }
    free(s->extra);
    tb__resume_free(s);
    while (s->count) {
        tb_event_unref(s->ring[s->head]);
        s->head = (s->head + 1) % s->size;
        s->count--;
    }
    sub_unlink(s);
    free(s->ring);
    free(s);
}

void tb__sub_close_all(tb_task *t)
{
    while (t->subs)
        tb_sub_close(t->subs);
}
