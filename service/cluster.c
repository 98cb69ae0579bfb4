/* cluster.c - one app across instances: task names claimed across the
 * cluster, and the cleanups kept until Redis confirms them. The calls
 * between instances are in cluster_calls.c, get/list/cancel for the
 * cluster in cluster_tasks.c. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "cluster_impl.h"
#include "instances.h"
#include "internal.h"
#include "json.h"
#include "singleton.h"

/* How it works (docs/CLUSTER.md has the protocol and its failure cases).
 *
 * Claims. A named task added while running claims its name in the bus's
 * cluster store before it is created (task.c calls tb__cluster_claim):
 * the store answers atomically whether another live instance holds it. A
 * claim lives as long as its task (task_run.c releases it at the end) and
 * its instance's record (a dead instance's claims count as free and are
 * reaped later).
 */

int tb__cluster_on(const tb_app *app)
{
    return cl_ops(app) != NULL;
}

/* ---------------------------------------------------------------- cleanup */

/* What must reach Redis for the cluster to stay right once a task has
 * ended: the release of its claim, the delete of an ended singleton's
 * definition, the drop of a lease at a stop. Fire-and-forget would leave a
 * name held (or a singleton defined) forever after one lost request, so
 * each is kept until Redis has confirmed it and sent again at every
 * heartbeat (tb__cluster_retry), at most CLEANUP_MAX of them. */
#define CLEANUP_MAX 65536

enum {
    CL_RELEASE,
    CL_DEF_DEL,
    CL_LEASE_DROP
};

typedef struct cleanup {
    struct cleanup *next;
    tb_app *app;
    int kind;
    int inflight;
    uint64_t num; /* task id or fence */
    char name[];
} cleanup;

static int cleanup_send(tb_app *app, cleanup *x);

static void cleanup_done(int status, void *ud)
{
    cleanup *x = ud;
    tb__cluster *c = x->app->cluster;
    int done = status == 0 || status == TB_ENOENT;
    pthread_mutex_lock(&c->mu);
    x->inflight = 0;
    if (done) {
        for (cleanup **pp = &c->cleanups; *pp; pp = &(*pp)->next) {
            if (*pp == x) {
                *pp = x->next;
                c->ncleanups--;
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (done)
        free(x);
}

/* Sends x (c->mu not held; x->inflight set by the caller). */
static int cleanup_send(tb_app *app, cleanup *x)
{
    const tb__cluster_ops *o = cl_ops(app);
    switch (x->kind) {
    case CL_RELEASE:
        return o->release(app->bus, x->name, x->num, cleanup_done, x);
    case CL_DEF_DEL:
        return o->def_del(app->bus, x->name, x->num, cleanup_done, x);
    default:
        return o->lease_drop(app->bus, x->name, x->num, cleanup_done, x);
    }
}

static void cleanup_add(tb_app *app, int kind, const char *name, uint64_t num)
{
    tb__cluster *c = app->cluster;
    if (!cl_ops(app) || !c)
        return;
    size_t len = strlen(name);
    cleanup *x = calloc(1, sizeof *x + len + 1);
    if (!x)
        return;
    x->app = app;
    x->kind = kind;
    x->num = num;
    memcpy(x->name, name, len + 1);
    pthread_mutex_lock(&c->mu);
    if (c->ncleanups >= CLEANUP_MAX) {
        /* Any thread that ends a task comes here: a limiter of its own,
         * under the lock (c->bad is the bus thread's, unlocked). */
        int say = tb__ratelog_ok(&c->full, tb__mono_us());
        pthread_mutex_unlock(&c->mu);
        free(x);
        if (say)
            tb__log(TB_LOG_ERROR,
                    "cluster: %d changes wait for Redis already; the "
                    "release of \"%s\" is dropped (it goes when this "
                    "instance leaves or dies)",
                    CLEANUP_MAX, name);
        return;
    }
    x->inflight = 1;
    x->next = c->cleanups;
    c->cleanups = x;
    c->ncleanups++;
    pthread_mutex_unlock(&c->mu);
    if (cleanup_send(app, x) != 0) {
        pthread_mutex_lock(&c->mu);
        x->inflight = 0; /* the next heartbeat sends it */
        pthread_mutex_unlock(&c->mu);
    }
}

void tb__cluster_retry(tb_app *app)
{
    tb__cluster *c = app->cluster;
    if (!cl_ops(app) || !c)
        return;
    /* Marks them in flight under the lock, sends without it. */
    cleanup *v[256];
    size_t n = 0;
    pthread_mutex_lock(&c->mu);
    for (cleanup *x = c->cleanups; x && n < 256; x = x->next) {
        if (!x->inflight) {
            x->inflight = 1;
            v[n++] = x;
        }
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        if (cleanup_send(app, v[i]) != 0) {
            pthread_mutex_lock(&c->mu);
            v[i]->inflight = 0;
            pthread_mutex_unlock(&c->mu);
        }
    }
}

tb__cluster *tb__cluster_new(tb_app *app)
{
    tb__cluster *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->app = app;
    pthread_mutex_init(&c->mu, NULL);
    c->bad.who = "cluster";
    c->bad.what = "bad-message lines";
    c->full.who = "cluster";
    c->full.what = "dropped-release lines";
    return c;
}

void tb__cluster_free(tb__cluster *c)
{
    if (!c)
        return;
    /* The bus has stopped: every op's callback has run. */
    while (c->cleanups) {
        struct cleanup *x = c->cleanups;
        c->cleanups = x->next;
        free(x);
    }
    tb__ratelog_flush(&c->bad, INT64_MAX);
    tb__ratelog_flush(&c->full, INT64_MAX);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void tb__cluster_stats_get(tb_app *app, tb__cluster_stats *o)
{
    memset(o, 0, sizeof *o);
    tb__cluster *c = app->cluster;
    if (!c)
        return;
    o->claims = atomic_load(&c->claims);
    o->claim_conflicts = atomic_load(&c->claim_conflicts);
    o->claim_errors = atomic_load(&c->claim_errors);
    o->reasserted = atomic_load(&c->reasserted);
    o->reassert_conflicts = atomic_load(&c->reassert_conflicts);
    o->remote_calls = atomic_load(&c->remote_calls);
    o->remote_failures = atomic_load(&c->remote_failures);
    o->remote_cancels = atomic_load(&c->remote_cancels);
    o->messages_bad = atomic_load(&c->messages_bad);
}

/* ---------------------------------------------------------------- waiting */

struct tb__opwait {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, status, live;
    uint64_t num;
    char inst[INST_MAX];
};
typedef tb__opwait opwait;

opwait *tb__opwait_new(void)
{
    opwait *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    atomic_init(&w->refs, 2);
    pthread_mutex_init(&w->mu, NULL);
    tb__cond_init_mono(&w->cv);
    return w;
}

void tb__opwait_unref(opwait *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void tb__opwait_claim_cb(int status, const char *inst, uint64_t num, int live,
                         void *ud)
{
    opwait *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->status = status;
    w->num = num;
    w->live = live;
    snprintf(w->inst, sizeof w->inst, "%s", inst ? inst : "");
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    tb__opwait_unref(w);
}

void tb__opwait_done_cb(int status, void *ud)
{
    tb__opwait_claim_cb(status, "", 0, 0, ud);
}

int tb__opwait_wait(opwait *w, int rc, int timeout_ms, char inst[24],
                    uint64_t *num, int *live)
{
    if (rc) { /* the op was refused: its callback never runs */
        tb__opwait_unref(w);
        tb__opwait_unref(w);
        return rc;
    }
    struct timespec ts;
    tb__deadline_ts(&ts, timeout_ms);
    pthread_mutex_lock(&w->mu);
    while (!w->done && pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT)
        ;
    rc = w->done ? w->status : TB_ETIMEDOUT;
    if (w->done) {
        if (inst)
            snprintf(inst, 24, "%s", w->inst);
        if (num)
            *num = w->num;
        if (live)
            *live = w->live;
    }
    pthread_mutex_unlock(&w->mu);
    tb__opwait_unref(w);
    return rc;
}

int tb__cluster_whois(tb_app *app, const char *name, char holder[24],
                      uint64_t *id, int *live)
{
    if (!cl_ops(app))
        return TB_ENOENT;
    opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = cl_ops(app)->whois(app->bus, name, tb__opwait_claim_cb, w);
    return tb__opwait_wait(w, rc, app->cfg.redis.command_timeout_ms, holder, id,
                           live);
}

/* ---------------------------------------------------------------- claims */

int tb__cluster_claim(tb_app *app, const char *name, uint64_t id,
                      char holder[24])
{
    tb__cluster *c = app->cluster;
    holder[0] = '\0';
    opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = cl_ops(app)->claim(app->bus, name, id, tb__opwait_claim_cb, w);
    char inst[24] = "";
    rc = tb__opwait_wait(w, rc, app->cfg.redis.command_timeout_ms, inst, NULL,
                         NULL);
    if (rc == TB_EEXIST)
        snprintf(holder, 24, "%s", inst);
    if (rc == 0) {
        atomic_fetch_add(&c->claims, 1);
    } else if (rc == TB_EEXIST) {
        atomic_fetch_add(&c->claim_conflicts, 1);
    } else {
        atomic_fetch_add(&c->claim_errors, 1);
        /* The claim may have been made after all (a timeout, a link lost
         * with the request on it): undo it, confirmed. */
        if (rc != TB_EAGAIN && rc != TB_EINVAL && rc != TB_ENOMEM)
            cleanup_add(app, CL_RELEASE, name, id);
    }
    return rc;
}

void tb__cluster_release(tb_app *app, const char *name, uint64_t id)
{
    cleanup_add(app, CL_RELEASE, name, id);
}

void tb__cluster_def_del(tb_app *app, const char *name, uint64_t fence)
{
    cleanup_add(app, CL_DEF_DEL, name, fence);
}

void tb__cluster_lease_drop(tb_app *app, const char *name, uint64_t fence)
{
    cleanup_add(app, CL_LEASE_DROP, name, fence);
}

/* A re-asserted claim's answer: a name some other live instance took while
 * ours was not visible makes our task a duplicate. */
typedef struct reclaim {
    tb_app *app;
    uint64_t id;
    char name[];
} reclaim;

static void reclaimed(int status, const char *inst, uint64_t num, int live,
                      void *ud)
{
    (void)num;
    (void)live;
    reclaim *r = ud;
    tb_app *app = r->app;
    if (status == 0) {
        atomic_fetch_add(&app->cluster->reasserted, 1);
    } else if (status != TB_EEXIST) {
        /* Not known to be ours: try again at the next heartbeat. */
        tb__instances_reassert_later(app->instances);
    } else {
        atomic_fetch_add(&app->cluster->reassert_conflicts, 1);
        tb__log(TB_LOG_WARN,
                "cluster: task %s (id %" PRIu64 ") is a duplicate: instance "
                "%s took its name while this instance was cut off from "
                "Redis; cancelling ours",
                r->name, r->id, inst);
        pthread_mutex_lock(&app->reg_mu);
        for (tb_task *t = app->all_head; t; t = t->all_next) {
            if (t->id == r->id && !tb__task_finished(t)) {
                t->claimed = 0; /* the claim is the other instance's */
                if (t->single)
                    tb__singleton_lost(t);
                if (!t->error) {
                    /* A singleton's run says so as its own renewals do. */
                    char msg[160];
                    snprintf(msg, sizeof msg, "%s: instance %s holds the name",
                             t->single ? "lease lost" : "cancelled", inst);
                    t->error = strdup(msg);
                }
                break;
            }
        }
        pthread_mutex_unlock(&app->reg_mu);
        /* Requested, not waited for: this is the bus's thread. */
        tb__task_cancel_report(app, r->name, r->id, 0, NULL, NULL);
    }
    free(r);
}

void tb__cluster_reassert(tb_app *app, const char *why)
{
    if (!cl_ops(app))
        return;
    /* Copies first: the store's ops must not run under reg_mu. */
    size_t n = 0, cap = 0;
    reclaim **v = NULL;
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next) {
        if (!t->claimed || tb__task_finished(t))
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            reclaim **nv = realloc(v, nc * sizeof *nv);
            if (!nv)
                break;
            v = nv;
            cap = nc;
        }
        size_t len = strlen(t->name);
        reclaim *r = malloc(sizeof *r + len + 1);
        if (!r)
            break;
        r->app = app;
        r->id = t->id;
        memcpy(r->name, t->name, len + 1);
        v[n++] = r;
    }
    pthread_mutex_unlock(&app->reg_mu);
    if (n)
        tb__log(TB_LOG_INFO,
                "cluster: %s; claiming the names of its %zu task(s) again", why,
                n);
    for (size_t i = 0; i < n; i++)
        if (cl_ops(app)->claim(app->bus, v[i]->name, v[i]->id, reclaimed, v[i]))
            free(v[i]);
    free(v);
}
