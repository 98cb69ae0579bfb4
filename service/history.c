/* history.c - positions, the in-process history ring, and reading and
 * resuming from a namespace's history (docs/HISTORY.md). */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/random.h>

#include "envelope.h"
#include "history.h"
#include "internal.h"

/* Events asked of the bus per read: a resumed subscription holds at most
 * this many replayed events outside its queue. */
#define PAGE 512

/* -------------------------------------------------------------- positions */

static int is_lhex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

int tb__epoch_valid(const char *epoch)
{
    size_t n = 0;
    while (epoch[n] && n <= 16) {
        if (!is_lhex(epoch[n]))
            return 0;
        n++;
    }
    return n >= 8 && n <= 16;
}

int tb__pos_parse(const char *s, size_t len, tb__pos *out)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return TB_EINVAL;
    size_t e = 0;
    while (e < len && e <= 16 && is_lhex(s[e]))
        e++;
    if (e < 8 || e > 16 || e >= len || s[e] != '-')
        return TB_EINVAL;
    size_t d = e + 1, nd = len - d;
    if (nd < 1 || nd > 16 || (nd > 1 && s[d] == '0'))
        return TB_EINVAL;
    uint64_t seq = 0;
    for (size_t i = d; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return TB_EINVAL;
        seq = seq * 10 + (uint64_t)(s[i] - '0'); /* 16 digits: no overflow */
    }
    if (seq > TB__SEQ_MAX)
        return TB_EINVAL;
    memcpy(out->epoch, s, e);
    out->epoch[e] = '\0';
    out->seq = seq;
    return 0;
}

size_t tb__pos_format(char *out, const char *epoch, uint64_t seq)
{
    int n = snprintf(out, TB_POS_MAX, "%s-%" PRIu64, epoch, seq);
    return n < 0 ? 0 : (size_t)n;
}

void tb__epoch_new(char out[TB_EPOCH_MAX])
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint64_t)tb__now_us() ^ ((uint64_t)tb__mono_us() << 20);
    snprintf(out, TB_EPOCH_MAX, "%016" PRIx64, r);
}

void tb__event_set_pos(tb_event *ev, const char *epoch, uint64_t seq)
{
    ev->seq = seq;
    tb__pos_format(ev->pos, epoch, seq);
}

const char *tb_event_pos(const tb_event *ev)
{
    return ev->pos;
}

int tb__pos_from_tail(const char *msg, size_t len, tb__pos *out)
{
    static const char key[] = ",\"pos\":\"";
    const size_t klen = sizeof key - 1;
    memset(out, 0, sizeof *out);
    /* ...,"pos":"<8..16>-<1..16>"} */
    if (len < klen + 10 + 2 || msg[len - 1] != '}' || msg[len - 2] != '"')
        return TB_EINVAL;
    size_t end = len - 2; /* the closing quote */
    size_t start = end;
    while (start > 0 && end - start < TB_POS_MAX && msg[start - 1] != '"')
        start--;
    if (start < klen + 1 || msg[start - 1] != '"' ||
        memcmp(msg + start - klen, key, klen) != 0)
        return TB_EINVAL;
    if (tb__pos_parse(msg + start, end - start, out) != 0 || out->seq == 0) {
        memset(out, 0, sizeof *out);
        return TB_EINVAL;
    }
    return 0;
}

int tb__hist_entry(tb_app *app, uint64_t seq, const char *name, size_t nlen,
                   const char *env, size_t len, tb_event **out,
                   const char **why)
{
    *out = NULL;
    char nm[TB_EVENT_NAME_MAX + 1];
    if (nlen == 0 || nlen > TB_EVENT_NAME_MAX || memchr(name, 0, nlen)) {
        *why = "invalid event name";
        return TB_EPROTO;
    }
    memcpy(nm, name, nlen);
    nm[nlen] = '\0';
    if (tb_event_name_valid(nm) != 0) {
        *why = "invalid event name";
        return TB_EPROTO;
    }
    int rc = tb__envelope_decode(app, nm, env, len,
                                 app->cfg.core.max_event_size, out, why);
    if (rc)
        return rc;
    if ((*out)->seq != seq) {
        tb_event_unref(*out);
        *out = NULL;
        *why = "the envelope's pos is not the entry's";
        return TB_EPROTO;
    }
    return 0;
}

/* ------------------------------------------------------------------ pages */

void tb__hist_page_release(tb__hist_page *pg)
{
    for (size_t i = 0; i < pg->n; i++)
        tb_event_unref(pg->evs[i]);
    free(pg->evs);
    pg->evs = NULL;
    pg->n = 0;
}

/* Copies src into dst, taking a reference on each event. 0 or
 * TB_ENOMEM. */
static int page_copy(tb__hist_page *dst, const tb__hist_page *src)
{
    *dst = *src;
    dst->evs = NULL;
    dst->n = 0;
    if (!src->n)
        return 0;
    dst->evs = malloc(src->n * sizeof *dst->evs);
    if (!dst->evs)
        return TB_ENOMEM;
    for (size_t i = 0; i < src->n; i++)
        dst->evs[i] = tb_event_ref(src->evs[i]);
    dst->n = src->n;
    return 0;
}

/* A fetch's meeting point: whoever of the bus's callback and the waiter
 * leaves last frees it (the waiter may give up first). */
typedef struct fetch_wait {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, status;
    tb__hist_page pg;
} fetch_wait;

static void fetch_unref(fetch_wait *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    tb__hist_page_release(&w->pg);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static void fetch_cb(int status, const tb__hist_page *pg, void *ud)
{
    fetch_wait *w = ud;
    pthread_mutex_lock(&w->mu);
    if (status == 0 && pg)
        status = page_copy(&w->pg, pg);
    else if (status == 0)
        status = TB_EIO;
    w->status = status;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    fetch_unref(w);
}

static int history_on(tb_app *app)
{
    return app->cfg.core.history_size > 0 && app->bus->ops->history;
}

int tb__history_fetch(tb_app *app, uint64_t after, size_t count,
                      tb__hist_page *out)
{
    memset(out, 0, sizeof *out);
    if (!history_on(app))
        return TB_ENOTSUP;
    fetch_wait *w = calloc(1, sizeof *w);
    if (!w)
        return TB_ENOMEM;
    atomic_init(&w->refs, 2); /* ours and the callback's */
    pthread_mutex_init(&w->mu, NULL);
    tb__cond_init_mono(&w->cv);
    int rc = app->bus->ops->history(app->bus, after, count, fetch_cb, w);
    if (rc) {
        atomic_fetch_sub(&w->refs, 1); /* the callback never runs */
        fetch_unref(w);
        return rc;
    }
    struct timespec ts;
    tb__deadline_ts(&ts, app->cfg.redis.command_timeout_ms);
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT)
            break;
    if (w->done) {
        rc = w->status;
        *out = w->pg;
        w->pg.evs = NULL;
        w->pg.n = 0;
    } else {
        rc = TB_ETIMEDOUT;
    }
    pthread_mutex_unlock(&w->mu);
    fetch_unref(w);
    return rc;
}

typedef struct fetch_args {
    tb_app *app;
    uint64_t after;
    size_t count;
    tb__hist_page *out;
} fetch_args;

static int fetch_blocking(void *arg)
{
    fetch_args *a = arg;
    return tb__history_fetch(a->app, a->after, a->count, a->out);
}

int tb__history_fetch_task(tb_task *self, uint64_t after, size_t count,
                           tb__hist_page *out)
{
    tb_app *app = self->app;
    memset(out, 0, sizeof *out);
    if (!history_on(app))
        return TB_ENOTSUP;
    if (app->bus->ops->history_sync)
        return tb__history_fetch(app, after, count, out);
    fetch_args a = {app, after, count, out};
    int ret = 0;
    int rc = tb_run_blocking(self, fetch_blocking, &a, &ret);
    if (rc) {
        tb__hist_page_release(out);
        return rc;
    }
    return ret;
}

/* ------------------------------------------------------- in-process ring */

int tb__hist_ring_init(tb__hist_ring *r, size_t cap, size_t max_bytes,
                       int64_t ttl_ms)
{
    memset(r, 0, sizeof *r);
    r->evs = calloc(cap, sizeof *r->evs);
    if (!r->evs)
        return TB_ENOMEM;
    r->cap = cap;
    r->max_bytes = max_bytes;
    r->ttl_us = ttl_ms * 1000;
    pthread_mutex_init(&r->mu, NULL);
    return 0;
}

size_t tb__hist_ev_bytes(const tb_event *ev)
{
    /* Its allocation: the struct (ids, position) and the NUL-terminated
     * name and data after it. The envelope made on first use
     * (tb_event_json) is not counted: it may never be. */
    return sizeof *ev + strlen(ev->name) + 1 + ev->len + 1;
}

/* Forgets every event held. mu held. */
static void ring_clear(tb__hist_ring *r)
{
    for (size_t i = 0; i < r->n; i++)
        tb_event_unref(r->evs[(r->head + i) % r->cap]);
    r->n = r->head = 0;
    r->bytes = 0;
}

/* Forgets the oldest event. mu held, n > 0. */
static void ring_drop_oldest(tb__hist_ring *r)
{
    tb_event *old = r->evs[r->head];
    r->bytes -= tb__hist_ev_bytes(old);
    tb_event_unref(old);
    r->head = (r->head + 1) % r->cap;
    r->n--;
}

void tb__hist_ring_destroy(tb__hist_ring *r)
{
    if (!r->evs)
        return;
    ring_clear(r);
    free(r->evs);
    r->evs = NULL;
    pthread_mutex_destroy(&r->mu);
}

/* As Redis expires the stream key: ttl after the last publish. mu held. */
static void ring_expire(tb__hist_ring *r, int64_t now)
{
    if (r->n && now - r->last_pub_us > r->ttl_us)
        ring_clear(r);
}

void tb__hist_ring_publish(tb__hist_ring *r, tb_event *ev,
                           void (*deliver)(void *ud, tb_event *ev), void *ud)
{
    pthread_mutex_lock(&r->mu);
    int64_t now = tb__mono_us();
    ring_expire(r, now);
    if (!r->epoch[0])
        tb__epoch_new(r->epoch);
    tb__event_set_pos(ev, r->epoch, ++r->seq);
    size_t b = tb__hist_ev_bytes(ev);
    while (r->n && (r->n == r->cap || r->bytes + b > r->max_bytes))
        ring_drop_oldest(r);
    r->evs[(r->head + r->n) % r->cap] = tb_event_ref(ev);
    r->n++;
    r->bytes += b;
    r->last_pub_us = now;
    deliver(ud, ev);
    pthread_mutex_unlock(&r->mu);
}

int tb__hist_ring_read(tb__hist_ring *r, uint64_t after, size_t count,
                       tb__hist_page *out)
{
    memset(out, 0, sizeof *out);
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    ring_expire(r, tb__mono_us());
    memcpy(out->epoch, r->epoch, sizeof out->epoch);
    out->top = r->seq;
    out->first = r->n ? r->evs[r->head]->seq : 0;
    /* Held seqs are dense: first .. top. */
    size_t skip = 0;
    if (r->n && after >= out->first)
        skip = after - out->first + 1 > r->n ? r->n
                                             : (size_t)(after - out->first + 1);
    size_t n = r->n - skip < count ? r->n - skip : count;
    if (n) {
        out->evs = malloc(n * sizeof *out->evs);
        if (!out->evs) {
            rc = TB_ENOMEM;
        } else {
            for (size_t i = 0; i < n; i++)
                out->evs[i] =
                    tb_event_ref(r->evs[(r->head + skip + i) % r->cap]);
            out->n = n;
            out->seen = n;
            out->seen_to = out->evs[n - 1]->seq;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* --------------------------------------------------------------- reading */

/* Whether since (parsed) can be resumed from the page read after its seq:
 * same epoch, not beyond the end, and nothing after it forgotten. */
static int recoverable(const tb__pos *since, const tb__hist_page *pg)
{
    if (!pg->epoch[0] || strcmp(since->epoch, pg->epoch) != 0)
        return 0;
    if (since->seq > pg->top)
        return 0;
    if (since->seq == pg->top)
        return 1;
    return pg->first && since->seq + 1 >= pg->first;
}

/* 1 if name matches one of n compiled patterns (n 0: any). */
static int matches_any(const tb__pattern *pats, int n, const char *name)
{
    if (n == 0)
        return 1;
    tb__name nm;
    if (tb__name_split(&nm, name) != 0)
        return 0;
    for (int i = 0; i < n; i++)
        if (tb__pattern_match_split(&pats[i], &nm))
            return 1;
    return 0;
}

void tb_history_free(tb_history *out)
{
    if (!out)
        return;
    for (size_t i = 0; i < out->n; i++)
        tb_event_unref(out->events[i]);
    free(out->events);
    memset(out, 0, sizeof *out);
}

int tb_history_read(tb_app *app, const char *const *patterns, int npatterns,
                    const char *since, size_t limit, tb_history *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!app || !out || npatterns < 0 || (npatterns && !patterns))
        return TB_EINVAL;
    if (limit < 1 || limit > (size_t)app->cfg.core.history_page_max)
        return TB_EINVAL;
    if (!history_on(app))
        return TB_ENOTSUP;
    if (!app->bus->ops->history_sync && tb__worker_current())
        return TB_EDEADLK;
    tb__pos sp;
    int have_since = since && since[0];
    if (have_since && tb__pos_parse(since, strlen(since), &sp) != 0)
        return TB_EINVAL;
    tb__pattern *pats = NULL;
    if (npatterns) {
        pats = calloc((size_t)npatterns, sizeof *pats);
        if (!pats)
            return TB_ENOMEM;
        for (int i = 0; i < npatterns; i++) {
            int rc = patterns[i] ? tb__pattern_compile(&pats[i], patterns[i])
                                 : TB_EINVAL;
            if (rc) {
                free(pats);
                return rc;
            }
        }
    }
    out->events = malloc(limit * sizeof *out->events);
    if (!out->events) {
        free(pats);
        return TB_ENOMEM;
    }
    uint64_t after = have_since ? sp.seq : 0;
    size_t scanned = 0, budget = (size_t)app->cfg.core.history_scan_max;
    int rc = 0, first = 1;
    for (;;) {
        tb__hist_page pg;
        size_t want = budget - scanned < PAGE ? budget - scanned : PAGE;
        rc = tb__history_fetch(app, after, want, &pg);
        if (rc)
            break;
        if (first) {
            first = 0;
            memcpy(out->epoch, pg.epoch, sizeof out->epoch);
            out->recovered = !have_since || recoverable(&sp, &pg);
            if (!out->recovered || !pg.epoch[0]) {
                if (pg.epoch[0])
                    tb__pos_format(out->next, pg.epoch, pg.top);
                tb__hist_page_release(&pg);
                break;
            }
            tb__pos_format(out->next, pg.epoch, after);
        } else if (strcmp(pg.epoch, out->epoch) != 0) {
            tb__hist_page_release(&pg); /* the history was lost meanwhile */
            break;
        }
        size_t i = 0;
        for (; i < pg.n && out->n < limit; i++) {
            tb_event *ev = pg.evs[i];
            after = ev->seq;
            memcpy(out->next, ev->pos, sizeof out->next);
            scanned++;
            if (matches_any(pats, npatterns, ev->name))
                out->events[out->n++] = tb_event_ref(ev);
        }
        if (i == pg.n && pg.seen_to > after) {
            /* Entries skipped after the last event (undecodable here):
             * looked at, and the next page goes on after them. */
            scanned += pg.seen - pg.n;
            after = pg.seen_to;
            tb__pos_format(out->next, out->epoch, after);
        }
        int at_end = pg.seen < want && i == pg.n;
        out->more = !at_end && after < pg.top;
        if (at_end) /* everything up to the end was looked at */
            tb__pos_format(out->next, out->epoch, pg.top);
        tb__hist_page_release(&pg);
        if (at_end || out->n == limit || scanned >= budget)
            break;
    }
    free(pats);
    if (rc)
        tb_history_free(out);
    return rc;
}

/* ---------------------------------------------------------------- resume */

struct tb__resume {
    /* What tb__resume_covered reads: all that tb__resume_settle keeps. */
    tb__pos at; /* the last position looked at (epoch "": none) */
    int live;   /* TB_SUB_LIVE given: the seam is at `at` */
    int cut;    /* tb__resume_settle: the fields below are gone */
    /* The replay's. */
    int at_top;       /* the last read reached the history's end */
    uint64_t end;     /* the history's last seq at that read */
    uint64_t page_to; /* the last seq that read looked at */
    tb__hist_page pg;
    size_t i; /* pg.evs[i] is the next to look at */
    uint64_t dropped_base;
    tb_sub_recovery info;
};

/* 1 if ev matches one of s's patterns. */
static int sub_matches(const tb_sub *s, const tb_event *ev)
{
    tb__name nm;
    if (tb__name_split(&nm, ev->name) != 0)
        return 0;
    if (s->l.linked && tb__pattern_match_split(&s->l.pat, &nm))
        return 1;
    for (int i = 0; i < s->nextra; i++)
        if (tb__pattern_match_split(&s->extra[i]->pat, &nm))
            return 1;
    return 0;
}

int tb_sub_resume(tb_task *self, tb_sub *s, const char *since)
{
    int rc = tb__task_enter(self, "tb_sub_resume");
    if (rc)
        return rc;
    if (!s || s->task != self || s->rs)
        return TB_EINVAL;
    tb__pos sp;
    int have_since = since && since[0];
    if (have_since && tb__pos_parse(since, strlen(since), &sp) != 0)
        return TB_EINVAL;
    if (!history_on(self->app))
        return TB_ENOTSUP;
    tb__resume *rs = calloc(1, sizeof *rs);
    if (!rs)
        return TB_ENOMEM;
    rc = tb__history_fetch_task(self, have_since ? sp.seq : 0,
                                have_since ? PAGE : 0, &rs->pg);
    if (rc) {
        free(rs);
        return rc;
    }
    memcpy(rs->at.epoch, rs->pg.epoch, sizeof rs->at.epoch);
    if (have_since && recoverable(&sp, &rs->pg)) {
        rs->info.recovered = 1;
        rs->at.seq = sp.seq;
        rs->at_top = rs->pg.seen < PAGE;
        rs->end = rs->pg.top;
        rs->page_to = rs->pg.seen_to;
    } else {
        /* Nothing to replay: the seam is the history's end. */
        rs->info.recovered = !have_since;
        rs->at.seq = rs->pg.top;
        rs->at_top = 1;
        tb__hist_page_release(&rs->pg);
    }
    rs->dropped_base = s->dropped;
    s->rs = rs;
    atomic_fetch_add_explicit(&self->app->hist_resumes[rs->info.recovered], 1,
                              memory_order_relaxed);
    return 0;
}

/* The seq of the first queued event of epoch `epoch`, or 0. */
static uint64_t queued_first_seq(const tb_sub *s, const char *epoch)
{
    size_t el = strlen(epoch);
    for (int i = 0; i < s->count; i++) {
        const tb_event *e = s->ring[(s->head + i) % s->size];
        if (e->seq && strncmp(e->pos, epoch, el) == 0 && e->pos[el] == '-')
            return e->seq;
    }
    return 0;
}

int tb__resume_next(tb_task *self, tb_sub *s, tb_event **ev, int *rc)
{
    tb__resume *rs = s->rs;
    if (!rs || rs->live)
        return 0;
    for (;;) {
        while (rs->i < rs->pg.n) {
            tb_event *e = rs->pg.evs[rs->i];
            rs->pg.evs[rs->i++] = NULL;
            if (e->seq > rs->at.seq)
                rs->at.seq = e->seq;
            if (sub_matches(s, e)) {
                rs->info.replayed++;
                *ev = e;
                *rc = 0;
                return 1;
            }
            tb_event_unref(e);
        }
        /* Entries the page skipped at its end are behind us too. */
        if (rs->at.seq < rs->page_to)
            rs->at.seq = rs->page_to;
        tb__hist_page_release(&rs->pg);
        rs->i = 0;
        if (!rs->at_top) {
            int r = tb__history_fetch_task(self, rs->at.seq, PAGE, &rs->pg);
            if (r) {
                *ev = NULL;
                *rc = r;
                return 1;
            }
            if (strcmp(rs->pg.epoch, rs->at.epoch) != 0) {
                /* The history was lost meanwhile: the replay did not
                 * recover, and the seam is the new epoch's end (what is
                 * queued after it goes out live). */
                rs->info.recovered = 0;
                memcpy(rs->at.epoch, rs->pg.epoch, sizeof rs->at.epoch);
                rs->at.seq = rs->end = rs->pg.top;
                rs->page_to = 0;
                tb__hist_page_release(&rs->pg);
                rs->at_top = 1;
                continue;
            }
            rs->at_top = rs->pg.seen < PAGE;
            rs->end = rs->pg.top;
            rs->page_to = rs->pg.seen_to;
            continue;
        }
        /* The page held everything up to end (a seq missing from it was
         * lost: a failed publish, a hand-edited stream): skipped. */
        if (rs->at.seq < rs->end)
            rs->at.seq = rs->end;
        if (s->dropped != rs->dropped_base) {
            /* Live events overflowed the queue while we replayed: read
             * the ones lost from the history before going live. */
            rs->dropped_base = s->dropped;
            uint64_t q = queued_first_seq(s, rs->at.epoch);
            if (q > rs->at.seq + 1) {
                rs->at_top = 0;
                continue;
            }
        }
        rs->live = 1;
        if (rs->at.epoch[0]) {
            tb__pos_format(rs->info.pos, rs->at.epoch, rs->at.seq);
            memcpy(rs->info.epoch, rs->at.epoch, sizeof rs->info.epoch);
        }
        *ev = NULL;
        *rc = TB_SUB_LIVE;
        return 1;
    }
}

int tb__resume_covered(const tb_sub *s, const tb_event *ev)
{
    const tb__resume *rs = s->rs;
    if (!rs || !rs->live || !ev->seq || ev->seq > rs->at.seq)
        return 0;
    size_t el = strlen(rs->at.epoch);
    return el && strncmp(ev->pos, rs->at.epoch, el) == 0 && ev->pos[el] == '-';
}

int tb_sub_recovery_info(const tb_sub *s, tb_sub_recovery *out)
{
    if (!s || !s->rs || s->rs->cut || !out)
        return TB_EINVAL;
    if (!s->rs->live)
        return TB_EAGAIN;
    *out = s->rs->info;
    return 0;
}

void tb__resume_settle(tb_sub *s)
{
    tb__resume *rs = s->rs;
    if (rs && rs->live && !rs->cut) {
        tb__hist_page_release(&rs->pg); /* empty once live */
        if (!rs->at.epoch[0]) {
            free(rs); /* nothing to cover */
            s->rs = NULL;
        } else {
            rs->cut = 1;
            tb__resume *small = realloc(rs, offsetof(tb__resume, at_top));
            s->rs = small ? small : rs;
        }
    }
    int size = s->cap < 8 ? s->cap : 8;
    if (s->count == 0 && s->size > size) {
        tb_event **r = malloc((size_t)size * sizeof *r);
        if (r) {
            free(s->ring);
            s->ring = r;
            s->size = size;
            s->head = 0;
        }
    }
}

void tb__resume_free(tb_sub *s)
{
    tb__resume *rs = s->rs;
    if (!rs)
        return;
    if (rs->cut) {
        free(rs);
        s->rs = NULL;
        return;
    }
    for (size_t i = rs->i; i < rs->pg.n; i++)
        tb_event_unref(rs->pg.evs[i]);
    free(rs->pg.evs);
    free(rs);
    s->rs = NULL;
}
