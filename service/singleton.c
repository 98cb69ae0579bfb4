/* singleton.c - singleton and periodic tasks: one run in the whole
 * cluster, held by a lease with a fencing token and moved to another
 * instance when its own dies; periodic ones fire once per tick. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cluster.h"
#include "internal.h"
#include "json.h"
#include "kinds.h"
#include "singleton_impl.h"

/* How it works (docs/CLUSTER.md has the protocol and its failure cases).
 *
 * A singleton has a definition in the cluster store (name -> what to run:
 * a kind and its arguments, or "local": a function every instance added
 * before run) and at most one lease (name -> instance and fence, with a
 * TTL of core.singleton_lease_ms on Redis's clock). The instance holding
 * the lease runs it. A thread per instance ("tb-singletons") wakes every
 * third of the lease:
 *  - it renews the lease of each run here; the lease is surely ours until
 *    the send time of the last confirmed renewal plus the lease minus
 *    core.singleton_margin_ms (Redis counts from when it ran the renewal,
 *    which is later). Past that point, or when Redis says someone else
 *    holds it, the run is cancelled: ours is stale;
 *  - it lists the definitions and takes the lease of each that has none
 *    and that this instance can run (it knows the kind, or has the local
 *    function); taking the lease starts a run here with the new fence.
 * A run that ends for good (done, failed, or cancelled by someone)
 * deletes the definition and the lease together, so that it is not run
 * again; a run stopped by the app's stop gives its lease up, so that
 * another instance takes it at its next look; a run that lost its lease
 * leaves both alone.
 *
 * A periodic task is a singleton whose run is a scheduler: at each
 * multiple of its interval (wall clock, so that every instance agrees on
 * the ticks) it records the tick in Redis under its fence, and runs the
 * action only when Redis says the tick had not fired and the fence still
 * holds the lease: once per tick for the cluster, even across a takeover.
 * A tick that passed while nobody held the lease is skipped, not replayed.
 *
 * With a bus that has no cluster (the memory bus), this instance is the
 * cluster: singletons just run here, with fences counted here.
 *
 * The periodic scheduler is in periodic.c. */

/* ---------------------------------------------------------------- parts */

void tb__singleton_hold(single *r)
{
    atomic_fetch_add(&r->refs, 1);
}

void tb__singleton_release(single *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    free(r->name);
    free(r->def);
    free(r->kind);
    free(r->args);
    free(r);
}

void tb__singleton_stats_get(tb_app *app, tb__singleton_stats *o)
{
    memset(o, 0, sizeof *o);
    tb__singletons *s = app->singletons;
    if (!s)
        return;
    o->runs = atomic_load(&s->runs_started);
    o->takeovers = atomic_load(&s->takeovers);
    o->renewals = atomic_load(&s->renewals);
    o->renew_failures = atomic_load(&s->renew_failures);
    o->leases_lost = atomic_load(&s->leases_lost);
    o->ticks_fired = atomic_load(&s->ticks_fired);
    o->ticks_skipped = atomic_load(&s->ticks_skipped);
    pthread_mutex_lock(&s->mu);
    for (single *r = s->runs; r; r = r->next)
        o->held += !r->ended && !r->lost;
    pthread_mutex_unlock(&s->mu);
}

void tb__singleton_task_json(const tb_task *t, json_t *o)
{
    const single *r = t->single;
    json_object_set_new(o, "singleton", json_true());
    json_object_set_new(o, "fence", json_integer((json_int_t)r->fence));
    if (!r->every_ms)
        return;
    char every[32];
    snprintf(every, sizeof every, "%" PRId64 "ms", r->every_ms);
    json_object_set_new(o, "every", json_string(every));
    json_object_set_new(o, "runs", json_integer((json_int_t)r->nruns));
    json_object_set_new(o, "last_run", tb__api_jtime(r->last_run_us));
    json_object_set_new(o, "next_run", tb__api_jtime(r->next_run_us));
    json_object_set_new(o, "last_state",
                        r->last_state < 0
                            ? json_null()
                            : json_string(tb_task_state_name(r->last_state)));
    json_object_set_new(o, "last_result",
                        r->last_state < 0 ? json_null()
                                          : json_integer(r->last_result));
}

/* ---------------------------------------------------------------- store */

static int cmd_ms(tb__singletons *s)
{
    return s->app->cfg.redis.command_timeout_ms;
}

int tb__sl_sync_done(tb__singletons *s, int rc, tb__opwait *w)
{
    return tb__opwait_wait(w, rc, cmd_ms(s), NULL, NULL, NULL);
}

static int def_put(tb__singletons *s, const char *name, const char *def)
{
    tb__opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    return tb__sl_sync_done(s,
                            s->ops->def_put(s->app->bus, name, def, strlen(def),
                                            tb__opwait_done_cb, w),
                            w);
}

static int lease_take(tb__singletons *s, const char *name, uint64_t *fence,
                      char holder[24], int *takeover)
{
    tb__opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = s->ops->lease_take(s->app->bus, name, s->lease_ms,
                                tb__opwait_claim_cb, w);
    return tb__opwait_wait(w, rc, cmd_ms(s), holder, fence, takeover);
}

/* ---------------------------------------------------------------- runs */

/* Starts a run of name here with fence: r is filled from the definition
 * (kind + args, or fn + ud). taken_us (monotonic) is when the request that
 * took the lease was sent: the lease is surely ours until then + lease -
 * margin. Takes r (refs 1). 0 with its task id, or a TB_E* code (r
 * freed). */
static int run_start(tb__singletons *s, single *r, int64_t taken_us,
                     char holder[24])
{
    tb_app *app = s->app;
    atomic_init(&r->refs, 1); /* the list's; the task takes its own */
    r->s = s;
    r->started_us = tb__now_us();
    r->last_state = -1;
    r->renew_due_us = taken_us + s->period_ms * 1000;
    r->valid_until_us = taken_us + (s->lease_ms - s->margin_ms) * 1000;
    tb__add_extra x = {.fence = r->fence, .single = r};
    tb_task_opts o = {.name = r->name,
                      .worker = TB_WORKER_ANY,
                      .flags = TB_TASK_SINGLETON,
                      .kind = r->kind};
    uint64_t id = 0;
    char err[256] = "";
    pthread_mutex_lock(&s->mu);
    r->next = s->runs;
    s->runs = r;
    pthread_cond_broadcast(&s->cv); /* its deadlines count now */
    pthread_mutex_unlock(&s->mu);
    int rc;
    if (r->every_ms)
        rc = tb__task_add(app, tb__periodic_main, r, &o, &x, &id);
    else if (r->fn)
        rc = tb__task_add(app, r->fn, r->ud, &o, &x, &id);
    else
        rc =
            tb__kind_spawn(app, r->kind, r->args, &o, &x, &id, err, sizeof err);
    if (holder)
        snprintf(holder, 24, "%s", x.holder);
    pthread_mutex_lock(&s->mu);
    int lost = r->lost;
    if (rc == 0) {
        r->task_id = id;
    } else {
        for (single **pp = &s->runs; *pp; pp = &(*pp)->next) {
            if (*pp == r) {
                *pp = r->next;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        tb__singleton_release(r);
        return rc;
    }
    if (lost) /* lost while the task was being added: nobody cancelled it */
        tb__task_cancel_report(app, r->name, id, 0, NULL, NULL);
    atomic_fetch_add(&s->runs_started, 1);
    tb__log(TB_LOG_INFO,
            "singleton %s: running here (task %" PRIu64 ", fence %" PRIu64 ")",
            r->name, id, r->fence);
    return 0;
}

/* A run of definition def (JSON text; name's) with fence, or NULL when
 * this instance cannot run it (an unknown kind, a local function it does
 * not have) or on ENOMEM. */
static single *run_of(tb__singletons *s, const char *name, const char *def,
                      uint64_t fence)
{
    json_error_t jerr;
    json_t *d = tb__json_loadb(def, strlen(def), JSON_REJECT_DUPLICATES,
                               s->app->cfg.core.json_max_depth, &jerr);
    single *r = NULL;
    if (!json_is_object(d))
        goto out;
    json_t *every = json_object_get(d, "every_ms");
    int64_t every_ms = json_is_integer(every) ? json_integer_value(every) : 0;
    if (every_ms < 0 || every_ms > TB_PERIODIC_MAX_MS ||
        (every_ms > 0 && every_ms < s->app->cfg.core.periodic_min_ms))
        goto out;
    local_def *l = NULL;
    const char *kind = json_string_value(json_object_get(d, "kind"));
    if (json_is_true(json_object_get(d, "local"))) {
        pthread_mutex_lock(&s->mu);
        for (l = s->locals; l && strcmp(l->name, name) != 0; l = l->next)
            ;
        pthread_mutex_unlock(&s->mu);
        if (!l)
            goto out;
    } else {
        char err[64];
        int stage;
        json_t *args = json_object_get(d, "args");
        char *a = args && !json_is_null(args)
                      ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY)
                      : NULL;
        int ok = kind &&
                 tb__kind_check(s->app, kind, a, err, sizeof err, &stage) == 0;
        if (!ok) {
            free(a);
            goto out;
        }
        r = calloc(1, sizeof *r);
        if (!r) {
            free(a);
            goto out;
        }
        r->args = a;
    }
    if (!r && !(r = calloc(1, sizeof *r)))
        goto out;
    r->name = strdup(name);
    r->def = strdup(def);
    r->kind =
        l ? (l->kind ? strdup(l->kind) : NULL) : (kind ? strdup(kind) : NULL);
    r->fn = l ? l->fn : NULL;
    r->ud = l ? l->ud : NULL;
    r->every_ms = every_ms;
    r->fence = fence;
    if (!r->name || !r->def || (!r->kind && !l) || (l && l->kind && !r->kind)) {
        atomic_init(&r->refs, 1);
        tb__singleton_release(r);
        r = NULL;
    }
out:
    json_decref(d);
    return r;
}

/* Cancels run r: its lease is not ours any more (why). */
void tb__sl_lose(tb__singletons *s, single *r, const char *why)
{
    tb_app *app = s->app;
    pthread_mutex_lock(&s->mu);
    int was = r->lost;
    r->lost = 1;
    uint64_t id = r->task_id;
    pthread_mutex_unlock(&s->mu);
    if (was)
        return;
    atomic_fetch_add(&s->leases_lost, 1);
    tb__log(TB_LOG_WARN,
            "singleton %s: lease lost (%s); cancelling this instance's run "
            "(fence %" PRIu64 ")",
            r->name, why, r->fence);
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next) {
        if (t->id == id) {
            if (!t->error) {
                char msg[200];
                snprintf(msg, sizeof msg, "lease lost: %s", why);
                t->error = strdup(msg);
            }
            break;
        }
    }
    pthread_mutex_unlock(&app->reg_mu);
    if (id) /* else run_start sees lost and cancels it once it exists */
        tb__task_cancel_report(app, r->name, id, 0, NULL, NULL);
}

void tb__singleton_lost(tb_task *t)
{
    single *r = t->single;
    pthread_mutex_lock(&r->s->mu);
    r->lost = 1;
    pthread_mutex_unlock(&r->s->mu);
}

void tb__singleton_ended(tb_task *t, tb_task_state st)
{
    single *r = t->single;
    tb__singletons *s = r->s;
    tb_app *app = s->app;
    pthread_mutex_lock(&s->mu);
    r->ended = 1;
    int lost = r->lost;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    /* Only a run the stop cancelled moves to another instance; one that
     * ended on its own (or by a DELETE) meanwhile ended for good. */
    int moves =
        st == TB_TASK_CANCELLED && atomic_load(&app->state) >= TB__APP_STOPPING;
    if (s->ops && !lost) {
        if (moves)
            tb__cluster_lease_drop(app, r->name, r->fence);
        else
            tb__cluster_def_del(app, r->name, r->fence);
    }
    if (!lost && !moves)
        tb__log(TB_LOG_INFO, "singleton %s: ended %s; not run again", r->name,
                tb_task_state_name(st));
    /* The task keeps its reference while its record lives (its object
     * shows the run's fields): its last unref releases it. */
}

/* ---------------------------------------------------------------- leases */

/* A renewal's answer (the bus's thread): moves the run's deadlines, or
 * marks it lost for the lease thread to cancel. */
typedef struct renewal {
    single *r;
    int64_t sent_us;
} renewal;

static void on_renewed(int status, const char *inst, uint64_t num, int live,
                       void *ud)
{
    (void)num;
    (void)live;
    renewal *x = ud;
    single *r = x->r;
    tb__singletons *s = r->s;
    pthread_mutex_lock(&s->mu);
    r->renewing = 0;
    if (status == 0) {
        atomic_fetch_add(&s->renewals, 1);
        r->renew_due_us = x->sent_us + s->period_ms * 1000;
        r->valid_until_us = x->sent_us + (s->lease_ms - s->margin_ms) * 1000;
    } else if (status == TB_EEXIST) {
        snprintf(r->lost_why, sizeof r->lost_why, "instance %s holds it",
                 inst && inst[0] ? inst : "another (or it ended)");
    } else {
        atomic_fetch_add(&s->renew_failures, 1);
        r->renew_due_us = tb__mono_us() + 200 * 1000; /* again soon */
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    tb__singleton_release(r);
    free(x);
}

static void orphan_free(orphan *o)
{
    free(o->name);
    free(o->def);
    free(o);
}

static void orphan_push(tb__singletons *s, orphan *o)
{
    pthread_mutex_lock(&s->mu);
    o->next = s->orphans;
    s->orphans = o;
    pthread_mutex_unlock(&s->mu);
}

static void orphan_add(tb__singletons *s, const single *r)
{
    orphan *o = calloc(1, sizeof *o);
    if (!o || !(o->name = strdup(r->name)) || !(o->def = strdup(r->def))) {
        if (o)
            orphan_free(o);
        return;
    }
    orphan_push(s, o);
}

/* Restores the orphans' definitions where Redis lost them: a restart
 * without persistence that outlasted the lease left no run to renew (and
 * put back) them. The store keeps a definition that is still there, or
 * was deleted on purpose (its tombstone fence), as it is. An orphan stays
 * until Redis has answered for it. The taker's thread. */
static void orphans_restore(tb__singletons *s)
{
    pthread_mutex_lock(&s->mu);
    orphan *list = s->orphans;
    s->orphans = NULL;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        orphan *o = list;
        list = o->next;
        tb__opwait *w = tb__opwait_new();
        int rc = w ? s->ops->def_restore(s->app->bus, o->name, o->def,
                                         strlen(o->def), tb__opwait_done_cb, w)
                   : TB_ENOMEM;
        rc = w ? tb__sl_sync_done(s, rc, w) : rc;
        if (rc == 0)
            tb__log(TB_LOG_WARN,
                    "singleton %s: Redis had lost its definition; defined "
                    "again for any instance to run",
                    o->name);
        if (rc == 0 || rc == TB_EEXIST)
            orphan_free(o);
        else
            orphan_push(s, o); /* Redis did not answer: at the next look */
    }
}

/* The lease thread: never waits on Redis. It sends renewals (their answers
 * move the deadlines) and cancels a run the moment its lease may no longer
 * be ours: at valid_until_us, or when Redis said someone else has it. */
static void *lease_main(void *arg)
{
    tb__singletons *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        int64_t now = tb__mono_us();
        int64_t wake = now + s->period_ms * 1000;
        single *act[64];
        int what[64]; /* 1: lose, 2: renew */
        size_t n = 0;
        for (single **pp = &s->runs; *pp;) {
            single *r = *pp;
            if (r->ended) { /* its task has ended: nothing to keep */
                *pp = r->next;
                tb__singleton_release(r);
                continue;
            }
            pp = &r->next;
            if (r->lost || n >= 64)
                continue;
            int w = 0;
            if (r->lost_why[0] || now >= r->valid_until_us) {
                w = 1;
            } else if (now >= r->renew_due_us && !r->renewing) {
                r->renewing = 1;
                w = 2;
            } else {
                if (!r->renewing && r->renew_due_us < wake)
                    wake = r->renew_due_us;
                if (r->valid_until_us < wake)
                    wake = r->valid_until_us;
            }
            if (w) {
                atomic_fetch_add(&r->refs, 1); /* while acted on, unlocked */
                act[n] = r;
                what[n++] = w;
            }
        }
        pthread_mutex_unlock(&s->mu);
        for (size_t i = 0; i < n; i++) {
            single *r = act[i];
            if (what[i] == 1) {
                if (!r->lost_why[0])
                    orphan_add(s, r); /* see orphans_restore */
                tb__sl_lose(s, r,
                            r->lost_why[0]
                                ? r->lost_why
                                : "not renewed in time: Redis unreachable "
                                  "or this instance was suspended");
                tb__singleton_release(r);
                continue;
            }
            renewal *x = malloc(sizeof *x);
            int rc = TB_ENOMEM;
            if (x) {
                x->r = r; /* the ref taken above goes with it */
                x->sent_us = tb__mono_us();
                rc = s->ops->lease_renew(s->app->bus, r->name, r->fence,
                                         s->lease_ms, r->def, strlen(r->def),
                                         on_renewed, x);
            }
            if (rc) {
                free(x);
                pthread_mutex_lock(&s->mu);
                r->renewing = 0;
                r->renew_due_us = tb__mono_us() + 200 * 1000;
                pthread_mutex_unlock(&s->mu);
                atomic_fetch_add(&s->renew_failures, 1);
                tb__singleton_release(r);
            }
        }
        pthread_mutex_lock(&s->mu);
        if (n) /* acted: look again at once (deadlines moved) */
            continue;
        int64_t ms = (wake - tb__mono_us() + 999) / 1000;
        if (ms < 1)
            ms = 1;
        struct timespec ts;
        tb__deadline_ts(&ts, (int)ms);
        if (!s->stop)
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------------- takeovers */

static int running_here(tb__singletons *s, const char *name)
{
    int here = 0;
    pthread_mutex_lock(&s->mu);
    for (single *r = s->runs; r && !here; r = r->next)
        here = !r->ended && strcmp(r->name, name) == 0;
    pthread_mutex_unlock(&s->mu);
    return here;
}

/* The definitions a list answered, copied (name -> value): shared with the
 * list's callback, which may come after the taker gave up waiting. */
typedef struct defs_wait {
    atomic_int refs;
    tb__opwait *w;
    json_t *defs;
} defs_wait;

static void defs_unref(defs_wait *d)
{
    if (atomic_fetch_sub(&d->refs, 1) != 1)
        return;
    json_decref(d->defs);
    free(d);
}

static void on_defs(int status, const tb__kv_rec *recs, size_t n,
                    size_t dropped, void *ud)
{
    (void)dropped;
    defs_wait *d = ud;
    if (status == 0) {
        for (size_t i = 0; i < n; i++)
            json_object_set_new(d->defs, recs[i].id,
                                json_stringn(recs[i].value, recs[i].len));
    }
    tb__opwait_done_cb(status, d->w);
    defs_unref(d);
}

static char *local_def_json(const local_def *l);

/* Defines this instance's pre-run singletons (again: a Redis that was
 * down at start, or lost its data, has not got them), then takes the lease
 * of every definition nobody holds that this instance can run, and runs
 * it. The taker's thread: it may wait on Redis. */
static void take_free(tb__singletons *s)
{
    orphans_restore(s);
    for (local_def *l = s->locals; l; l = l->next) {
        char *def = local_def_json(l);
        if (def)
            def_put(s, l->name, def);
        free(def);
    }
    defs_wait *d = calloc(1, sizeof *d);
    if (!d)
        return;
    atomic_init(&d->refs, 2); /* ours + the callback's */
    d->w = tb__opwait_new();
    d->defs = json_object();
    if (!d->w || !d->defs) {
        if (d->w) /* refused: its callback never runs */
            tb__opwait_wait(d->w, TB_ENOMEM, 0, NULL, NULL, NULL);
        json_decref(d->defs);
        free(d);
        return;
    }
    int rc = s->ops->def_list(s->app->bus, on_defs, d);
    if (rc)
        defs_unref(d); /* the callback's share */
    rc = tb__opwait_wait(d->w, rc, cmd_ms(s), NULL, NULL, NULL);
    if (rc) {
        defs_unref(d);
        return;
    }
    const char *name;
    json_t *v;
    json_object_foreach(d->defs, name, v)
    {
        if (running_here(s, name))
            continue;
        single *r = run_of(s, name, json_string_value(v), 0);
        if (!r)
            continue; /* not one this instance can run */
        uint64_t fence = 0;
        int takeover = 0;
        char holder[24];
        int64_t sent = tb__mono_us();
        if (lease_take(s, name, &fence, holder, &takeover) != 0) {
            atomic_init(&r->refs, 1);
            tb__singleton_release(r);
            continue;
        }
        r->fence = fence;
        rc = run_start(s, r, sent, NULL);
        if (rc == 0 && takeover) {
            atomic_fetch_add(&s->takeovers, 1);
            tb__log(TB_LOG_WARN,
                    "singleton %s: taken over by this instance (fence %" PRIu64
                    "): its lease had expired",
                    name, fence);
        } else if (rc) {
            /* A live task elsewhere still holds the name (its instance's
             * record has not expired yet): give the lease back and try
             * again at the next look. */
            tb__cluster_lease_drop(s->app, name, fence);
        }
    }
    defs_unref(d);
}

static void *taker_main(void *arg)
{
    tb__singletons *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        pthread_mutex_unlock(&s->mu);
        int st = atomic_load(&s->app->state);
        if (st == TB__APP_STARTING || st == TB__APP_RUNNING)
            take_free(s);
        pthread_mutex_lock(&s->mu);
        struct timespec ts;
        tb__deadline_ts(&ts, (int)s->period_ms);
        while (!s->stop &&
               pthread_cond_timedwait(&s->cv, &s->mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------------- life */

static char *local_def_json(const local_def *l)
{
    json_t *o =
        json_pack("{s:b,s:I}", "local", 1, "every_ms", (json_int_t)l->every_ms);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

tb__singletons *tb__singletons_start(tb_app *app)
{
    tb__singletons *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->app = app;
    s->ops = app->bus->ops->cluster;
    s->lease_ms = app->cfg.core.singleton_lease_ms;
    s->margin_ms = app->cfg.core.singleton_margin_ms;
    s->period_ms = s->lease_ms / 3;
    pthread_mutex_init(&s->mu, NULL);
    tb__cond_init_mono(&s->cv);
    app->singletons = s;
    for (tb__prerun *p = app->prerun; p; p = p->next) {
        if (!(p->flags & TB_TASK_SINGLETON) || !p->name)
            continue;
        local_def *l = calloc(1, sizeof *l);
        if (!l || !(l->name = strdup(p->name)) ||
            (p->kind && !(l->kind = strdup(p->kind)))) {
            if (l)
                free(l->name);
            free(l);
            continue;
        }
        l->fn = p->fn;
        l->ud = p->arg;
        l->every_ms = p->every_ms;
        l->next = s->locals;
        s->locals = l;
    }
    /* Without a cluster, each runs here now; with one, the taker's first
     * look defines them in Redis and takes what is free. */
    for (local_def *l = s->ops ? NULL : s->locals; l; l = l->next) {
        char *def = local_def_json(l);
        single *r = def ? run_of(s, l->name, def, ++s->local_fence) : NULL;
        if (r)
            run_start(s, r, tb__mono_us(), NULL);
        free(def);
    }
    if (!s->ops)
        return s;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, lease_main, s);
    int rc2 = rc ? rc : pthread_create(&s->taker, NULL, taker_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    s->started = rc == 0;
    s->taker_started = rc == 0 && rc2 == 0;
    if (s->started)
        pthread_setname_np(s->thread, "tb-leases");
    if (s->taker_started)
        pthread_setname_np(s->taker, "tb-takeovers");
    if (rc || rc2)
        tb__log(TB_LOG_ERROR,
                "singletons: cannot create their threads: %s; singletons "
                "neither renew nor move on this instance",
                strerror(rc ? rc : rc2));
    return s;
}

void tb__singletons_stop(tb__singletons *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->taker_started) {
        pthread_join(s->taker, NULL);
        s->taker_started = 0;
    }
    if (s->started) {
        pthread_join(s->thread, NULL);
        s->started = 0;
    }
}

void tb__singletons_free(tb__singletons *s)
{
    if (!s)
        return;
    tb__singletons_stop(s);
    while (s->runs) {
        single *r = s->runs;
        s->runs = r->next;
        tb__singleton_release(r);
    }
    while (s->orphans) {
        orphan *o = s->orphans;
        s->orphans = o->next;
        orphan_free(o);
    }
    while (s->locals) {
        local_def *l = s->locals;
        s->locals = l->next;
        free(l->name);
        free(l->kind);
        free(l);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    if (s->app->singletons == s)
        s->app->singletons = NULL;
    free(s);
}

/* ---------------------------------------------------------------- spawn */

int tb__singleton_spawn(tb_app *app, const char *kind, const char *args_json,
                        const tb_task_opts *opts, int64_t every_ms,
                        uint64_t *id_out, char holder[24], char *err,
                        size_t errsz)
{
    tb__singletons *s = app->singletons;
    const char *name = opts ? opts->name : NULL;
    holder[0] = '\0';
    if (id_out)
        *id_out = 0;
    if (!name || (opts && opts->worker != TB_WORKER_ANY)) {
        snprintf(err, errsz,
                 "a singleton needs a name and runs on any "
                 "worker");
        return TB_EINVAL;
    }
    if (!s) {
        snprintf(err, errsz, "the app is not running");
        return TB_ESHUTDOWN;
    }
    json_error_t jerr;
    json_t *args = args_json && args_json[0]
                       ? json_loads(args_json, JSON_DECODE_ANY, &jerr)
                       : json_null();
    json_t *d =
        json_pack("{s:s,s:o,s:I}", "kind", kind, "args",
                  args ? args : json_null(), "every_ms", (json_int_t)every_ms);
    char *def = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    if (!def || strlen(def) > TB__CLUSTER_DEF_MAX) {
        if (def)
            snprintf(err, errsz,
                     "task \"%.80s\": its arguments are too large for a "
                     "singleton (its definition, kind and arguments as "
                     "JSON, is %zu bytes, at most %d)",
                     name, strlen(def), TB__CLUSTER_DEF_MAX);
        else
            snprintf(err, errsz, "task \"%.80s\": out of memory", name);
        int rc = def ? TB_EMSGSIZE : TB_ENOMEM;
        free(def);
        return rc;
    }
    uint64_t fence = 0;
    int rc = 0;
    int64_t sent = tb__mono_us();
    if (s->ops) {
        rc = def_put(s, name, def);
        if (rc == TB_EEXIST) {
            /* Name its holder when one runs it (its run claims the name). */
            uint64_t id;
            int live;
            if (tb__cluster_whois(app, name, holder, &id, &live) != 0 || !live)
                holder[0] = '\0';
            snprintf(err, errsz,
                     "task \"%.80s\": a singleton of that name exists", name);
            free(def);
            return rc;
        }
        if (rc == 0) {
            char h[24];
            int takeover;
            sent = tb__mono_us();
            rc = lease_take(s, name, &fence, h, &takeover);
            if (rc == TB_EEXIST && h[0]) {
                /* Another instance holds it: it runs there. */
                free(def);
                return 0;
            }
            if (rc)
                /* The outcome is unknown: undo the definition (confirmed),
                 * or the singleton would start later after an error. */
                tb__cluster_def_del(app, name, 0);
        }
    } else {
        pthread_mutex_lock(&s->mu);
        fence = ++s->local_fence;
        /* No lease thread here: drop the runs that have ended. */
        for (single **pp = &s->runs; *pp;) {
            single *x = *pp;
            if (x->ended) {
                *pp = x->next;
                tb__singleton_release(x);
            } else {
                pp = &x->next;
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
    single *r = rc ? NULL : run_of(s, name, def, fence);
    if (!rc && !r)
        rc = TB_ENOMEM;
    if (!rc) {
        rc = run_start(s, r, sent, holder);
        if (rc == TB_EEXIST && !holder[0]) /* a live task here holds it */
            snprintf(holder, 24, "%s", app->instance);
        if (rc == 0 && id_out) {
            pthread_mutex_lock(&s->mu);
            for (single *x = s->runs; x; x = x->next)
                if (x->fence == fence && !strcmp(x->name, name))
                    *id_out = x->task_id;
            pthread_mutex_unlock(&s->mu);
        }
        if (rc && s->ops) /* it never ran: no definition either */
            tb__cluster_def_del(app, name, fence);
    }
    if (rc)
        snprintf(err, errsz, "task \"%.80s\": %s", name, tb_strerror(rc));
    free(def);
    return rc;
}
