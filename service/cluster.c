/* cluster.c - one app across instances: task names claimed across the
 * cluster, and get, list and cancel answered for every instance by asking
 * the instance that runs the task. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "cluster.h"
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
 *
 * Calls. Each instance listens on a control channel of its own; a call is
 * a JSON request published there ({"t":"req","op","rid","from",...}) and
 * answered on the caller's channel ({"t":"rep","rid","from","status",
 * "tasks",...}). The caller blocks on a condition variable until the
 * answer or its deadline; an answer that comes later finds no caller and
 * is dropped. get and list are answered on the bus's thread (a registry
 * walk under its lock, bounded by the page size); cancel needs to wait for
 * the task's end, so it runs in a hidden task of its own (which suspends
 * instead of blocking anything).
 *
 * Messages come through Redis, where anyone with access can publish: each
 * is bounded by the bus (TB__CLUSTER_MSG_MAX), parsed with a depth bound,
 * and checked field by field; what fails is counted and logged at a
 * bounded rate. A valid request is obeyed: protect Redis with a password
 * or an ACL. */

#define INST_MAX 24
#define PAGE_HARD_MAX 1000 /* tasks in one list answer (the setting's max) */
#define WIRE_TIMEOUT_MAX_MS (3600 * 1000) /* a cancel's timeout on the wire */
/* Bytes of task objects one list answer holds at most, below the bus's
 * message bound with room for the envelope. */
#define PAGE_BYTES_MAX (TB__CLUSTER_MSG_MAX - 4096)

typedef struct call {
    struct call *next;
    uint64_t rid;
    atomic_int refs; /* the caller's + the send callback's */
    int done;
    int status; /* a send failure, or 0 */
    json_t *reply;
    pthread_cond_t cv;
} call;

struct tb__cluster {
    tb_app *app;
    pthread_mutex_t mu; /* guards calls, next_rid, every call's fields, and
                           the cleanups */
    call *calls;
    struct cleanup *cleanups;
    size_t ncleanups;
    uint64_t next_rid;
    atomic_uint_fast64_t claims, claim_conflicts, claim_errors;
    atomic_uint_fast64_t reasserted, reassert_conflicts;
    atomic_uint_fast64_t remote_calls, remote_failures, remote_cancels;
    atomic_uint_fast64_t messages_bad;
    tb__ratelog bad; /* bad messages; the bus's thread */
};

static const tb__cluster_ops *ops(const tb_app *app)
{
    return app->bus ? app->bus->ops->cluster : NULL;
}

/* A caller's wait for an answer that takes timeout_ms to come: plus the
 * round trip's bound, without overflowing. */
static int wait_ms(const tb_app *app, int timeout_ms)
{
    int64_t w = (int64_t)timeout_ms + app->cfg.redis.command_timeout_ms;
    return w > INT_MAX ? INT_MAX : (int)w;
}

int tb__cluster_on(const tb_app *app)
{
    return ops(app) != NULL;
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
    const tb__cluster_ops *o = ops(app);
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
    if (!ops(app) || !c)
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
        pthread_mutex_unlock(&c->mu);
        free(x);
        if (tb__ratelog_ok(&c->bad, tb__mono_us()))
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
    if (!ops(app) || !c)
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
    if (!ops(app))
        return TB_ENOENT;
    opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = ops(app)->whois(app->bus, name, tb__opwait_claim_cb, w);
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
    int rc = ops(app)->claim(app->bus, name, id, tb__opwait_claim_cb, w);
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
    if (!ops(app))
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
        if (ops(app)->claim(app->bus, v[i]->name, v[i]->id, reclaimed, v[i]))
            free(v[i]);
    free(v);
}

/* ---------------------------------------------------------------- objects */

json_t *tb__cluster_task_json(tb_app *app, const tb_task *t)
{
    tb_task_info info;
    tb__task_info_fill(t, &info);
    json_t *o = tb__api_task_json(&info);
    if (!o)
        return NULL;
    json_object_set_new(o, "instance", json_string(app->instance));
    if (t->single)
        tb__singleton_task_json(t, o);
    return o;
}

/* This instance's tasks named name, lowest id first (hidden ones never):
 * a new array, or NULL on ENOMEM. */
static json_t *local_named(tb_app *app, const char *name)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next)
        if (!t->hidden && strcmp(t->name, name) == 0)
            json_array_append_new(arr, tb__cluster_task_json(app, t));
    pthread_mutex_unlock(&app->reg_mu);
    return arr;
}

/* Up to limit of this instance's tasks with id > after and state st (-1:
 * any), by id; *more: others follow. A new array, or NULL. */
static json_t *local_page(tb_app *app, uint64_t after, size_t limit, int st,
                          int *more)
{
    json_t *arr = json_array();
    *more = 0;
    if (!arr)
        return NULL;
    size_t bytes = 0;
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next) {
        if (t->id <= after || t->hidden || (st >= 0 && (int)t->state != st))
            continue;
        if (json_array_size(arr) >= limit) {
            *more = 1;
            break;
        }
        json_t *o = tb__cluster_task_json(app, t);
        /* A page must fit in one message to another instance, whatever
         * the names hold (each byte may take six to escape). */
        size_t len = o ? json_dumpb(o, NULL, 0, JSON_COMPACT) + 1 : 0;
        if (json_array_size(arr) > 0 && bytes + len > PAGE_BYTES_MAX) {
            json_decref(o);
            *more = 1;
            break;
        }
        bytes += len;
        json_array_append_new(arr, o);
    }
    pthread_mutex_unlock(&app->reg_mu);
    return arr;
}

static json_t *lost_json(const char *name, uint64_t id, const char *inst)
{
    return json_pack("{s:s,s:I,s:s,s:s,s:i}", "name", name, "id",
                     (json_int_t)id, "instance", inst, "state", "lost",
                     "replicas", 1);
}

/* ---------------------------------------------------------------- calls */

static void call_unref(call *k)
{
    if (atomic_fetch_sub(&k->refs, 1) != 1)
        return;
    json_decref(k->reply);
    pthread_cond_destroy(&k->cv);
    free(k);
}

/* A call in flight: made by call_start, ended by call_finish. */
typedef struct pending {
    call *k;
    char to[INST_MAX];
} pending;

typedef struct sent_ctx {
    tb__cluster *c;
    call *k;
} sent_ctx;

static void on_sent(int status, void *ud)
{
    sent_ctx *s = ud;
    if (status) {
        pthread_mutex_lock(&s->c->mu);
        if (!s->k->done) {
            s->k->done = 1;
            s->k->status = status;
            pthread_cond_signal(&s->k->cv);
        }
        pthread_mutex_unlock(&s->c->mu);
    }
    call_unref(s->k);
    free(s);
}

/* Sends req (borrowed; rid, from and t are set here) to instance to. 0 with
 * p filled, or a TB_E* code. */
static int call_start(tb_app *app, const char *to, json_t *req, pending *p)
{
    tb__cluster *c = app->cluster;
    call *k = calloc(1, sizeof *k);
    sent_ctx *s = malloc(sizeof *s);
    if (!k || !s) {
        free(k);
        free(s);
        return TB_ENOMEM;
    }
    atomic_init(&k->refs, 2);
    tb__cond_init_mono(&k->cv);
    pthread_mutex_lock(&c->mu);
    k->rid = ++c->next_rid;
    k->next = c->calls;
    c->calls = k;
    pthread_mutex_unlock(&c->mu);
    json_object_set_new(req, "t", json_string("req"));
    json_object_set_new(req, "rid", json_integer((json_int_t)k->rid));
    json_object_set_new(req, "from", json_string(app->instance));
    char *msg = json_dumps(req, JSON_COMPACT);
    s->c = c;
    s->k = k;
    int rc = msg ? ops(app)->send(app->bus, to, msg, strlen(msg), on_sent, s)
                 : TB_ENOMEM;
    free(msg);
    atomic_fetch_add(&c->remote_calls, 1);
    if (rc) {
        free(s);
        atomic_fetch_sub(&k->refs, 1); /* the send callback never runs */
        pthread_mutex_lock(&c->mu);
        k->done = 1;
        k->status = rc;
        pthread_mutex_unlock(&c->mu);
    }
    p->k = k;
    snprintf(p->to, sizeof p->to, "%s", to);
    return 0;
}

/* Waits for p's answer until deadline ts; takes it off the pending list.
 * 0 with *reply (new reference), or TB_ETIMEDOUT, or the send's failure
 * (TB_ENOENT: nobody listens on that instance's channel). */
static int call_finish(tb_app *app, pending *p, const struct timespec *ts,
                       json_t **reply)
{
    tb__cluster *c = app->cluster;
    call *k = p->k;
    *reply = NULL;
    pthread_mutex_lock(&c->mu);
    while (!k->done && pthread_cond_timedwait(&k->cv, &c->mu, ts) != ETIMEDOUT)
        ;
    int rc = k->done ? k->status : TB_ETIMEDOUT;
    if (rc == TB_ENOENT)
        rc = TB_EPIPE; /* the PUBLISH reached nobody: that instance is gone */
    if (rc == 0) {
        *reply = k->reply;
        k->reply = NULL;
    }
    for (call **pp = &c->calls; *pp; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (rc)
        atomic_fetch_add(&c->remote_failures, 1);
    call_unref(k);
    return rc;
}

/* One call, waited for at most timeout_ms. */
static int call1(tb_app *app, const char *to, json_t *req, int timeout_ms,
                 json_t **reply)
{
    pending p;
    int rc = call_start(app, to, req, &p);
    if (rc)
        return rc;
    struct timespec ts;
    tb__deadline_ts(&ts, timeout_ms);
    return call_finish(app, &p, &ts, reply);
}

/* A reply's status as a TB_E* code. */
static int reply_status(json_t *reply)
{
    const char *s = json_string_value(json_object_get(reply, "status"));
    if (!s)
        return TB_EPROTO;
    if (!strcmp(s, "ok"))
        return 0;
    if (!strcmp(s, "not_found"))
        return TB_ENOENT;
    if (!strcmp(s, "timeout"))
        return TB_ETIMEDOUT;
    if (!strcmp(s, "stopping"))
        return TB_ESHUTDOWN;
    return TB_EIO;
}

/* The live instances, sorted, this one included: n ids of INST_MAX. */
static size_t live_instances(tb_app *app, char (*ids)[INST_MAX], size_t max)
{
    size_t n = app->instances ? tb__instances_ids(app->instances, ids, max) : 0;
    if (n == 0 && max > 0) {
        snprintf(ids[0], INST_MAX, "%s", app->instance);
        n = 1;
    }
    return n;
}

#define SCATTER_MAX 256 /* instances one call asks at most */

/* Sends a copy of req to every live instance but this one and waits for
 * all their answers until timeout_ms. replies[i] (new references, NULL
 * for no answer) and ids[i] for i < return value. */
static size_t scatter(tb_app *app, json_t *req, int timeout_ms,
                      char (*ids)[INST_MAX], json_t **replies)
{
    char all[SCATTER_MAX][INST_MAX];
    size_t n = live_instances(app, all, SCATTER_MAX), m = 0;
    pending *ps = calloc(n ? n : 1, sizeof *ps);
    if (!ps)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(all[i], app->instance))
            continue;
        json_t *copy = json_deep_copy(req);
        if (!copy)
            continue;
        if (call_start(app, all[i], copy, &ps[m]) == 0) {
            snprintf(ids[m], INST_MAX, "%s", all[i]);
            m++;
        }
        json_decref(copy);
    }
    struct timespec ts;
    tb__deadline_ts(&ts, timeout_ms);
    for (size_t i = 0; i < m; i++)
        if (call_finish(app, &ps[i], &ts, &replies[i]) != 0)
            replies[i] = NULL;
    free(ps);
    return m;
}

/* ---------------------------------------------------------------- answers */

static void answer(tb_app *app, const char *to, json_int_t rid,
                   const char *status, json_t *extra /* stolen, may be NULL */)
{
    json_t *o = extra ? extra : json_object();
    if (!o)
        return;
    json_object_set_new(o, "t", json_string("rep"));
    json_object_set_new(o, "rid", json_integer(rid));
    json_object_set_new(o, "from", json_string(app->instance));
    json_object_set_new(o, "status", json_string(status));
    char *msg = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (msg && ops(app))
        ops(app)->send(app->bus, to, msg, strlen(msg), NULL, NULL);
    free(msg);
}

/* A cancel asked by another instance: runs in a hidden task, so that
 * waiting for the end suspends rather than blocks. */
typedef struct cancel_job {
    json_int_t rid;
    uint64_t id; /* 0: every task with the name */
    int timeout_ms;
    char from[INST_MAX];
    char name[];
} cancel_job;

static int cancel_task_fn(tb_task *self, void *ud)
{
    cancel_job *j = ud;
    tb_app *app = tb_task_app(self);
    tb_task_info info;
    int count = 0;
    int rc = tb__task_cancel_report(app, j->name, j->id, j->timeout_ms, &info,
                                    &count);
    atomic_fetch_add(&app->cluster->remote_cancels, 1);
    if (rc != 0 && rc != TB_ETIMEDOUT) {
        answer(app, j->from, j->rid,
               rc == TB_ENOENT      ? "not_found"
               : rc == TB_ECANCELED ? "stopping"
                                    : "error",
               NULL);
        return 0;
    }
    json_t *task = tb__api_task_json(&info);
    json_t *tasks = json_array();
    if (task) {
        json_object_set_new(task, "instance", json_string(app->instance));
        json_object_set_new(task, "replicas", json_integer(count));
    }
    json_array_append_new(tasks, task);
    answer(app, j->from, j->rid, rc == 0 ? "ok" : "timeout",
           json_pack("{s:o}", "tasks", tasks));
    return 0;
}

static int str_ok(json_t *v, size_t min, size_t max)
{
    return json_is_string(v) && json_string_length(v) >= min &&
           json_string_length(v) <= max;
}

static int inst_ok(json_t *v)
{
    if (!str_ok(v, 1, 20))
        return 0;
    const char *s = json_string_value(v);
    return strspn(s, "0123456789abcdef") == strlen(s);
}

static void bad_message(tb_app *app, size_t len, const char *why)
{
    tb__cluster *c = app->cluster;
    atomic_fetch_add(&c->messages_bad, 1);
    if (tb__ratelog_ok(&c->bad, tb__mono_us()))
        tb__log(TB_LOG_WARN,
                "cluster: a %zu-byte message on this instance's control "
                "channel was dropped: %s",
                len, why);
}

static void on_reply(tb_app *app, json_t *m, size_t len)
{
    tb__cluster *c = app->cluster;
    json_t *rid = json_object_get(m, "rid");
    if (!json_is_integer(rid) || !str_ok(json_object_get(m, "status"), 1, 16)) {
        bad_message(app, len, "an answer without rid or status");
        return;
    }
    pthread_mutex_lock(&c->mu);
    for (call *k = c->calls; k; k = k->next) {
        if (k->rid == (uint64_t)json_integer_value(rid) && !k->done) {
            /* A copy of its own for the caller's thread: jansson's
             * reference counts are not safe to share between threads
             * (json_decref reads the count unlocked; ThreadSanitizer
             * reports it). No copy (ENOMEM): the call times out. */
            k->reply = json_deep_copy(m);
            if (k->reply) {
                k->done = 1;
                pthread_cond_signal(&k->cv);
            }
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

static void on_request(tb_app *app, json_t *m, size_t len)
{
    json_t *from = json_object_get(m, "from");
    json_t *rid = json_object_get(m, "rid");
    const char *op = json_string_value(json_object_get(m, "op"));
    if (!inst_ok(from) || !json_is_integer(rid) || !op) {
        bad_message(app, len, "a request without from, rid or op");
        return;
    }
    const char *to = json_string_value(from);
    json_int_t r = json_integer_value(rid);
    json_t *name = json_object_get(m, "name");
    if (!strcmp(op, "get")) {
        if (!str_ok(name, 1, TB_TASK_NAME_MAX)) {
            bad_message(app, len, "get without a valid name");
            return;
        }
        json_t *tasks = local_named(app, json_string_value(name));
        if (!tasks || json_array_size(tasks) == 0) {
            json_decref(tasks);
            answer(app, to, r, "not_found", NULL);
            return;
        }
        answer(app, to, r, "ok", json_pack("{s:o}", "tasks", tasks));
    } else if (!strcmp(op, "list")) {
        json_t *after = json_object_get(m, "after");
        json_t *limit = json_object_get(m, "limit");
        json_t *state = json_object_get(m, "state");
        if (!json_is_integer(after) || json_integer_value(after) < 0 ||
            !json_is_integer(limit) || json_integer_value(limit) < 1 ||
            json_integer_value(limit) > PAGE_HARD_MAX ||
            !json_is_integer(state) || json_integer_value(state) < -1 ||
            json_integer_value(state) > TB_TASK_CANCELLED) {
            bad_message(app, len, "list with a bad after, limit or state");
            return;
        }
        int more;
        json_t *tasks = local_page(app, (uint64_t)json_integer_value(after),
                                   (size_t)json_integer_value(limit),
                                   (int)json_integer_value(state), &more);
        if (!tasks)
            return;
        answer(app, to, r, "ok",
               json_pack("{s:o,s:b}", "tasks", tasks, "more", more));
    } else if (!strcmp(op, "cancel")) {
        json_t *id = json_object_get(m, "id");
        json_t *tmo = json_object_get(m, "timeout_ms");
        if (!str_ok(name, 1, TB_TASK_NAME_MAX) ||
            (id && (!json_is_integer(id) || json_integer_value(id) < 0)) ||
            !json_is_integer(tmo) || json_integer_value(tmo) < 0 ||
            json_integer_value(tmo) > 3600 * 1000) {
            bad_message(app, len, "cancel with a bad name, id or timeout_ms");
            return;
        }
        size_t nlen = json_string_length(name);
        cancel_job *j = calloc(1, sizeof *j + nlen + 1);
        if (!j)
            return;
        j->rid = r;
        j->id = id ? (uint64_t)json_integer_value(id) : 0;
        j->timeout_ms = (int)json_integer_value(tmo);
        snprintf(j->from, sizeof j->from, "%s", to);
        memcpy(j->name, json_string_value(name), nlen + 1);
        char tname[64];
        snprintf(tname, sizeof tname, "tb.cancel.%s.%" JSON_INTEGER_FORMAT, to,
                 r);
        tb_task_opts o = {.name = tname,
                          .worker = TB_WORKER_ANY,
                          .flags = TB_TASK_EPHEMERAL | TB__TASK_HIDDEN,
                          .ud_free = free};
        int rc = tb__task_add(app, cancel_task_fn, j, &o, NULL, NULL);
        if (rc) {
            free(j);
            answer(app, to, r, rc == TB_ESHUTDOWN ? "stopping" : "error", NULL);
        }
    } else {
        bad_message(app, len, "an unknown op");
    }
}

void tb__cluster_message(tb_app *app, const char *msg, size_t len)
{
    if (!app->cluster)
        return;
    if (len > TB__CLUSTER_MSG_MAX) {
        bad_message(app, len, "larger than a control message may be");
        return;
    }
    json_error_t jerr;
    json_t *m = tb__json_loadb(msg, len, JSON_REJECT_DUPLICATES, 8, &jerr);
    const char *t = json_string_value(json_object_get(m, "t"));
    if (!m || !json_is_object(m) || !t) {
        bad_message(app, len, "not a JSON object with \"t\"");
    } else if (!strcmp(t, "rep")) {
        on_reply(app, m, len);
    } else if (!strcmp(t, "req")) {
        on_request(app, m, len);
    } else {
        bad_message(app, len, "\"t\" is neither req nor rep");
    }
    json_decref(m);
}

/* ---------------------------------------------------------------- get */

/* The first of tasks (lowest instance id in order received, lowest task
 * id), with "replicas" = total. Takes tasks. */
static json_t *first_of(json_t *tasks, size_t total)
{
    json_t *first = json_array_get(tasks, 0);
    json_t *o = first ? json_deep_copy(first) : NULL;
    json_decref(tasks);
    if (o)
        json_object_set_new(o, "replicas", json_integer((json_int_t)total));
    return o;
}

static int get_local(tb_app *app, const char *name, json_t **out)
{
    json_t *tasks = local_named(app, name);
    if (!tasks)
        return TB_ENOMEM;
    size_t n = json_array_size(tasks);
    if (!n) {
        json_decref(tasks);
        return TB_ENOENT;
    }
    *out = first_of(tasks, n);
    return *out ? 0 : TB_ENOMEM;
}

int tb__cluster_get(tb_app *app, const char *name, int local, json_t **out)
{
    *out = NULL;
    if (local || !ops(app))
        return get_local(app, name, out);
    int tmo = app->cfg.redis.command_timeout_ms;
    char holder[INST_MAX];
    uint64_t id;
    int live;
    int rc = tb__cluster_whois(app, name, holder, &id, &live);
    if (rc == 0 && !live) {
        *out = lost_json(name, id, holder);
        return *out ? 0 : TB_ENOMEM;
    }
    if (rc == 0 && strcmp(holder, app->instance) != 0) {
        json_t *reply = NULL;
        json_t *req = json_pack("{s:s,s:s}", "op", "get", "name", name);
        rc = req ? call1(app, holder, req, tmo, &reply) : TB_ENOMEM;
        json_decref(req);
        if (rc == TB_EPIPE) { /* nobody listens there: it has just died */
            *out = lost_json(name, id, holder);
            return *out ? 0 : TB_ENOMEM;
        }
        if (rc == 0 && (rc = reply_status(reply)) == 0) {
            json_t *tasks = json_incref(json_object_get(reply, "tasks"));
            *out = first_of(tasks, json_array_size(tasks));
            rc = *out ? 0 : TB_EPROTO;
        }
        json_decref(reply);
        return rc;
    }
    if (rc != 0 && rc != TB_ENOENT)
        return rc;
    /* Held here, or not claimed (pre-run replicas, per-request tasks):
     * every instance is asked, this one first. */
    json_t *all = local_named(app, name);
    if (!all)
        return TB_ENOMEM;
    if (rc == TB_ENOENT) {
        char ids[SCATTER_MAX][INST_MAX];
        json_t *replies[SCATTER_MAX] = {0};
        json_t *req = json_pack("{s:s,s:s}", "op", "get", "name", name);
        size_t m = req ? scatter(app, req, tmo, ids, replies) : 0;
        json_decref(req);
        for (size_t i = 0; i < m; i++) {
            if (replies[i] && reply_status(replies[i]) == 0)
                json_array_extend(all, json_object_get(replies[i], "tasks"));
            json_decref(replies[i]);
        }
    }
    size_t n = json_array_size(all);
    if (!n) {
        json_decref(all);
        return TB_ENOENT;
    }
    *out = first_of(all, n);
    return *out ? 0 : TB_ENOMEM;
}

/* ---------------------------------------------------------------- cancel */

static int cancel_local(tb_app *app, const char *name, int timeout_ms,
                        json_t **out)
{
    tb_task_info info;
    int count = 0;
    int rc = tb__task_cancel_report(app, name, 0, timeout_ms, &info, &count);
    if (rc != 0 && rc != TB_ETIMEDOUT)
        return rc == TB_EINVAL || rc == TB_ENAMETOOLONG ? TB_ENOENT : rc;
    json_t *o = tb__api_task_json(&info);
    if (o) {
        json_object_set_new(o, "instance", json_string(app->instance));
        json_object_set_new(o, "replicas", json_integer(count));
    }
    *out = o;
    return rc;
}

/* Asks instance to cancel name; the answer's first task in *out. */
static int cancel_remote(tb_app *app, const char *instance, const char *name,
                         uint64_t id, int timeout_ms, json_t **out)
{
    *out = NULL;
    if (timeout_ms < 0 || timeout_ms > WIRE_TIMEOUT_MAX_MS)
        timeout_ms = WIRE_TIMEOUT_MAX_MS;
    json_t *req = json_pack("{s:s,s:s,s:i}", "op", "cancel", "name", name,
                            "timeout_ms", timeout_ms);
    if (!req)
        return TB_ENOMEM;
    if (id)
        json_object_set_new(req, "id", json_integer((json_int_t)id));
    json_t *reply = NULL;
    int rc = call1(app, instance, req, wait_ms(app, timeout_ms), &reply);
    json_decref(req);
    if (rc == 0) {
        rc = reply_status(reply);
        json_t *t = json_array_get(json_object_get(reply, "tasks"), 0);
        if (t && (rc == 0 || rc == TB_ETIMEDOUT))
            *out = json_deep_copy(t);
        else if (rc == 0)
            rc = TB_EPROTO;
    }
    json_decref(reply);
    return rc;
}

int tb__cluster_cancel_on(tb_app *app, const char *instance, const char *name,
                          int timeout_ms)
{
    json_t *o = NULL;
    int rc = cancel_remote(app, instance, name, 0, timeout_ms, &o);
    json_decref(o);
    return rc;
}

/* Whether instance is in the last list of live instances. */
static int is_live(tb_app *app, const char *instance)
{
    char ids[SCATTER_MAX][INST_MAX];
    size_t n = live_instances(app, ids, SCATTER_MAX);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(ids[i], instance))
            return 1;
    return 0;
}

static int cancel_cluster(tb_app *app, const char *name, int timeout_ms,
                          json_t **out)
{
    char holder[INST_MAX];
    uint64_t id;
    int live;
    int rc = tb__cluster_whois(app, name, holder, &id, &live);
    if (rc == 0 && !live) {
        *out = lost_json(name, id, holder);
        return *out ? 0 : TB_ENOMEM;
    }
    if (rc == 0 && strcmp(holder, app->instance) != 0) {
        rc = cancel_remote(app, holder, name, id, timeout_ms, out);
        if (rc == TB_EPIPE) { /* nobody listens on its channel: gone */
            *out = lost_json(name, id, holder);
            return *out ? 0 : TB_ENOMEM;
        } else if (rc == TB_ETIMEDOUT && !*out && !is_live(app, holder)) {
            *out = lost_json(name, id, holder);
            return *out ? 0 : TB_ENOMEM;
        }
        if (rc == 0 && *out)
            json_object_set_new(*out, "replicas", json_integer(1));
        return rc;
    }
    if (rc != 0 && rc != TB_ENOENT)
        return rc;
    /* Held here, or not claimed: cancel it wherever it is. */
    int lrc = cancel_local(app, name, timeout_ms, out);
    if (rc == 0) /* ours */
        return lrc;
    int total = 0, timed_out = lrc == TB_ETIMEDOUT;
    if (timeout_ms < 0 || timeout_ms > WIRE_TIMEOUT_MAX_MS)
        timeout_ms = WIRE_TIMEOUT_MAX_MS;
    if (*out)
        total = (int)json_integer_value(json_object_get(*out, "replicas"));
    char ids[SCATTER_MAX][INST_MAX];
    json_t *replies[SCATTER_MAX] = {0};
    json_t *req = json_pack("{s:s,s:s,s:i}", "op", "cancel", "name", name,
                            "timeout_ms", timeout_ms);
    size_t m =
        req ? scatter(app, req, wait_ms(app, timeout_ms), ids, replies) : 0;
    json_decref(req);
    for (size_t i = 0; i < m; i++) {
        int st = replies[i] ? reply_status(replies[i]) : TB_ETIMEDOUT;
        json_t *t = json_array_get(json_object_get(replies[i], "tasks"), 0);
        if ((st == 0 || st == TB_ETIMEDOUT) && t) {
            total += (int)json_integer_value(json_object_get(t, "replicas"));
            if (!*out)
                *out = json_deep_copy(t);
            timed_out |= st == TB_ETIMEDOUT;
        }
        json_decref(replies[i]);
    }
    if (!*out)
        return TB_ENOENT;
    json_object_set_new(*out, "replicas", json_integer(total));
    return timed_out ? TB_ETIMEDOUT : 0;
}

/* Deletes name's singleton definition (waited for): 0 when there was one,
 * TB_ENOENT when there was none, or an error. */
static int def_del_wait(tb_app *app, const char *name)
{
    tb__opwait *w = tb__opwait_new();
    if (!w)
        return TB_ENOMEM;
    int rc = ops(app)->def_del(app->bus, name, 0, tb__opwait_done_cb, w);
    return tb__opwait_wait(w, rc, app->cfg.redis.command_timeout_ms, NULL, NULL,
                           NULL);
}

int tb__cluster_cancel(tb_app *app, const char *name, int timeout_ms, int local,
                       json_t **out)
{
    *out = NULL;
    if (local || !ops(app))
        return cancel_local(app, name, timeout_ms, out);
    int rc = cancel_cluster(app, name, timeout_ms, out);
    /* A singleton between runs (its instance died, or no instance can run
     * it) has no live task to cancel: its definition goes, so that it is
     * not started again. (A run that was cancelled deletes it itself.) */
    const char *st = json_string_value(json_object_get(*out, "state"));
    if (rc == TB_ENOENT || (rc == 0 && st && !strcmp(st, "lost"))) {
        if (def_del_wait(app, name) == 0) {
            if (!*out)
                *out = json_pack("{s:s,s:s,s:b,s:n,s:i}", "name", name, "state",
                                 "cancelled", "singleton", 1, "instance",
                                 "replicas", 0);
            else
                json_object_set_new(*out, "singleton", json_true());
            return *out ? 0 : TB_ENOMEM;
        }
    }
    return rc;
}

/* ---------------------------------------------------------------- list */

/* A cursor: "<instance>.<task id>", the last task of the page before. */
static int cursor_parse(const char *s, char inst[INST_MAX], uint64_t *after)
{
    const char *dot = strchr(s, '.');
    size_t ilen = dot ? (size_t)(dot - s) : 0;
    if (!dot || ilen < 1 || ilen > 20 || strspn(s, "0123456789abcdef") != ilen)
        return TB_EINVAL;
    const char *d = dot + 1;
    size_t dl = strlen(d);
    if (dl < 1 || dl > 20 || strspn(d, "0123456789") != dl)
        return TB_EINVAL;
    errno = 0;
    unsigned long long v = strtoull(d, NULL, 10);
    if (errno)
        return TB_EINVAL;
    memcpy(inst, s, ilen);
    inst[ilen] = '\0';
    *after = v;
    return 0;
}

int tb__cluster_list(tb_app *app, const char *cursor, size_t limit, int st,
                     int local, json_t **tasks, char *next,
                     json_t **unreachable)
{
    /* cursor may be next itself (the C API's natural loop): read it before
     * next is written. */
    char start[INST_MAX] = "";
    uint64_t after = 0;
    int bad = cursor && cursor[0] && cursor_parse(cursor, start, &after) != 0;
    *tasks = json_array();
    *unreachable = json_array();
    next[0] = '\0';
    if (!*tasks || !*unreachable)
        goto nomem;
    if (bad) {
        json_decref(*tasks);
        json_decref(*unreachable);
        *tasks = *unreachable = NULL;
        return TB_EINVAL;
    }
    if (limit > PAGE_HARD_MAX)
        limit = PAGE_HARD_MAX;
    char ids[SCATTER_MAX][INST_MAX];
    size_t n = 1;
    if (local || !ops(app))
        snprintf(ids[0], INST_MAX, "%s", app->instance);
    else
        n = live_instances(app, ids, SCATTER_MAX);
    for (size_t i = 0; i < n; i++) {
        int cmp = start[0] ? strcmp(ids[i], start) : 1;
        if (cmp < 0)
            continue; /* before the cursor's instance */
        uint64_t from = cmp == 0 ? after : 0;
        size_t need = limit - json_array_size(*tasks);
        int more = 0;
        json_t *page = NULL;
        if (!strcmp(ids[i], app->instance)) {
            page = local_page(app, from, need, st, &more);
            if (!page)
                goto nomem;
        } else {
            json_t *req = json_pack("{s:s,s:I,s:I,s:i}", "op", "list", "after",
                                    (json_int_t)from, "limit", (json_int_t)need,
                                    "state", st);
            json_t *reply = NULL;
            int rc = req ? call1(app, ids[i], req,
                                 app->cfg.redis.command_timeout_ms, &reply)
                         : TB_ENOMEM;
            json_decref(req);
            if (rc == 0 && reply_status(reply) == 0 &&
                json_is_array(json_object_get(reply, "tasks"))) {
                page = json_incref(json_object_get(reply, "tasks"));
                more = json_is_true(json_object_get(reply, "more"));
                if (json_array_size(page) > need) /* not ours to trust */
                    more = 1;
            } else {
                json_array_append_new(*unreachable, json_string(ids[i]));
            }
            json_decref(reply);
        }
        size_t k = 0, got = json_array_size(page);
        json_t *t;
        json_array_foreach(page, k, t)
        {
            if (json_array_size(*tasks) >= limit)
                break;
            json_array_append(*tasks, t);
        }
        json_decref(page);
        if (json_array_size(*tasks) >= limit) {
            /* Full: the next page starts after the last task, here or at
             * the next instance. */
            json_t *last = json_array_get(*tasks, json_array_size(*tasks) - 1);
            json_int_t lid = json_integer_value(json_object_get(last, "id"));
            if (more || k < got)
                snprintf(next, TB_CURSOR_MAX, "%s.%" JSON_INTEGER_FORMAT,
                         ids[i], lid);
            else if (i + 1 < n)
                snprintf(next, TB_CURSOR_MAX, "%s.0", ids[i + 1]);
            break;
        }
    }
    return 0;
nomem:
    json_decref(*tasks);
    json_decref(*unreachable);
    *tasks = *unreachable = NULL;
    return TB_ENOMEM;
}

/* ---------------------------------------------------------------- C API */

/* "2026-12-06T11:05:02.123456Z" (tb__api_jtime's) to µs; null: 0. */
static int64_t jtime_us(json_t *v)
{
    const char *s = json_string_value(v);
    struct tm tm;
    int us = 0;
    memset(&tm, 0, sizeof tm);
    if (!s ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%6dZ", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &us) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000000 + us;
}

static void task_from_json(json_t *o, tb_cluster_task *out)
{
    memset(out, 0, sizeof *out);
    tb_task_info *i = &out->task;
    const char *s;
    i->id = (uint64_t)json_integer_value(json_object_get(o, "id"));
    if ((s = json_string_value(json_object_get(o, "name"))))
        snprintf(i->name, sizeof i->name, "%s", s);
    if ((s = json_string_value(json_object_get(o, "kind"))))
        snprintf(i->kind, sizeof i->kind, "%s", s);
    if ((s = json_string_value(json_object_get(o, "error"))))
        snprintf(i->error, sizeof i->error, "%s", s);
    if ((s = json_string_value(json_object_get(o, "instance"))))
        snprintf(out->instance, sizeof out->instance, "%s", s);
    i->worker = (int)json_integer_value(json_object_get(o, "worker"));
    i->result = (int)json_integer_value(json_object_get(o, "result"));
    i->cancel_requested = json_is_true(json_object_get(o, "cancel_requested"));
    i->created_us = jtime_us(json_object_get(o, "created"));
    i->started_us = jtime_us(json_object_get(o, "started"));
    i->ended_us = jtime_us(json_object_get(o, "ended"));
    i->state = TB_TASK_LOST;
    s = json_string_value(json_object_get(o, "state"));
    for (int st = TB_TASK_PENDING; s && st <= TB_TASK_LOST; st++)
        if (!strcmp(s, tb_task_state_name((tb_task_state)st)))
            i->state = (tb_task_state)st;
    out->replicas = (int)json_integer_value(json_object_get(o, "replicas"));
    out->fence = (uint64_t)json_integer_value(json_object_get(o, "fence"));
}

int tb_cluster_get(tb_app *app, const char *name, tb_cluster_task *out)
{
    if (!app || !name || !out)
        return TB_EINVAL;
    if (tb__worker_current())
        return TB_EDEADLK; /* would block a worker's loop */
    json_t *o = NULL;
    int rc = tb__cluster_get(app, name, 0, &o);
    if (rc == 0)
        task_from_json(o, out);
    json_decref(o);
    return rc;
}

int tb_cluster_cancel(tb_app *app, const char *name, int timeout_ms,
                      tb_cluster_task *out)
{
    if (!app || !name)
        return TB_EINVAL;
    if (tb__worker_current())
        return TB_EDEADLK; /* would block a worker's loop */
    if (timeout_ms == TB_TIMEOUT_DEFAULT)
        timeout_ms = app->cfg.core.graceful_timeout_ms;
    json_t *o = NULL;
    int rc = tb__cluster_cancel(app, name, timeout_ms, 0, &o);
    if (out) {
        memset(out, 0, sizeof *out);
        if (o)
            task_from_json(o, out);
    }
    json_decref(o);
    return rc;
}

int tb_cluster_list(tb_app *app, const char *cursor, size_t limit,
                    tb_cluster_task **out, size_t *n, char *next,
                    size_t *skipped)
{
    if (!app || !out || !n || !next || limit < 1 || limit > PAGE_HARD_MAX)
        return TB_EINVAL;
    if (tb__worker_current())
        return TB_EDEADLK; /* would block a worker's loop */
    *out = NULL;
    *n = 0;
    json_t *tasks, *unreachable;
    int rc =
        tb__cluster_list(app, cursor, limit, -1, 0, &tasks, next, &unreachable);
    if (rc)
        return rc;
    size_t count = json_array_size(tasks);
    if (skipped)
        *skipped = json_array_size(unreachable);
    if (count) {
        *out = calloc(count, sizeof **out);
        if (!*out) {
            json_decref(tasks);
            json_decref(unreachable);
            return TB_ENOMEM;
        }
        for (size_t i = 0; i < count; i++)
            task_from_json(json_array_get(tasks, i), &(*out)[i]);
        *n = count;
    }
    json_decref(tasks);
    json_decref(unreachable);
    return 0;
}
