/* task.c - named background tasks: the app-wide registry (names, ids,
 * states, results) and the calls that act on tasks by name: add, cancel,
 * join, get, list, purge. A task's life on its worker is task_run.c. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "cluster.h"
#include "internal.h"
#include "kinds.h"
#include "singleton.h"

/* Room for a generated name, "task-<up to 20 digits>", and its NUL. */
#define GENERATED_NAME_MAX 32

const char *tb_task_state_name(tb_task_state s)
{
    switch (s) {
    case TB_TASK_PENDING:
        return "pending";
    case TB_TASK_RUNNING:
        return "running";
    case TB_TASK_DONE:
        return "done";
    case TB_TASK_FAILED:
        return "failed";
    case TB_TASK_CANCELLED:
        return "cancelled";
    case TB_TASK_LOST:
        return "lost";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- registry */

void tb__task_registry_drop(tb_app *app, tb_task *t)
{
    tb__htab_remove(&app->names, &t->node);
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        app->all_head = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    else
        app->all_tail = t->all_prev;
    tb__task_unref(t);
}

static tb_task *task_of(tb__hnode *n)
{
    return (tb_task *)((char *)n - offsetof(tb_task, node));
}

static tb_task *first_named(tb_app *app, const char *name)
{
    tb__hnode *n = tb__htab_find(&app->names, name, strlen(name));
    return n ? task_of(n) : NULL;
}

static tb_task *next_named(tb_task *t)
{
    tb__hnode *n = tb__htab_next_same(&t->node);
    return n ? task_of(n) : NULL;
}

/* Inserts t (reg_mu held): assigns its id unless it has one (taken while
 * its name was claimed), and its name if it has none. The list stays
 * ordered by id. */
static int registry_insert(tb_app *app, tb_task *t)
{
    if (!t->id)
        t->id = ++app->next_id;
    if (!t->name[0]) /* task_alloc reserved room for this */
        snprintf(t->name, GENERATED_NAME_MAX, "task-%" PRIu64, t->id);
    if (tb__htab_insert(&app->names, &t->node, t->name, strlen(t->name)))
        return TB_ENOMEM;
    tb_task *after = app->all_tail; /* the new task goes after this one */
    while (after && after->id > t->id)
        after = after->all_prev;
    t->all_prev = after;
    t->all_next = after ? after->all_next : app->all_head;
    if (t->all_next)
        t->all_next->all_prev = t;
    else
        app->all_tail = t;
    if (after)
        after->all_next = t;
    else
        app->all_head = t;
    return 0;
}

/* A name being claimed across the cluster by a tb__task_add in flight:
 * another add of it here waits for that one's outcome (see tb__task_add).
 * On the adder's stack. */
typedef struct tb__claiming {
    struct tb__claiming *next;
    const char *name;
} tb__claiming;

static int claiming(tb_app *app, const char *name)
{
    for (tb__claiming *c = app->claiming; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return 1;
    return 0;
}

/* reg_mu held. Wakes the adds waiting for the outcome. */
static void claiming_drop(tb_app *app, tb__claiming *me)
{
    for (tb__claiming **pp = &app->claiming; *pp; pp = &(*pp)->next) {
        if (*pp == me) {
            *pp = me->next;
            break;
        }
    }
    if (app->thread_waiters)
        pthread_cond_broadcast(&app->done_cv);
}

/* Task names: 1..TB_TASK_NAME_MAX bytes, no control characters, not "." or
 * "..": a browser removes those from a URL's path as dot-segments, so
 * /tasks/{name} could never address such a task. */
static int name_check(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || !strcmp(name, ".") || !strcmp(name, ".."))
        return TB_EINVAL;
    if (n > TB_TASK_NAME_MAX)
        return TB_ENAMETOOLONG;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f)
            return TB_EINVAL;
    }
    return 0;
}

/* The cancel path touches nearly every line of a task; 40 bytes more since
 * 77b1e23 cost cancel+join about a tenth of its rate (docs/BENCHMARKS.md,
 * section 1). Grow it only knowingly. */
_Static_assert(sizeof(void *) != 8 || sizeof(tb_task) <= 288,
               "tb_task grew past 288 bytes: see docs/BENCHMARKS.md section 1");

static tb_task *task_alloc(tb_app *app, tb_task_fn fn, void *arg,
                           const tb_task_opts *o)
{
    /* The name lives in the same allocation, next to the hash node that
     * lookups compare it through: one cache miss fewer per lookup. */
    size_t nlen = o->name ? strlen(o->name) + 1 : GENERATED_NAME_MAX;
    tb_task *t = calloc(1, sizeof *t + nlen);
    if (!t)
        return NULL;
    t->name = t->name_buf;
    if (o->name)
        memcpy(t->name, o->name, nlen);
    if (o->kind && !(t->kind = strdup(o->kind))) {
        free(t);
        return NULL;
    }
    t->app = app;
    t->fn = fn;
    t->arg = arg;
    t->arg_free = o->ud_free;
    t->ephemeral = (o->flags & TB_TASK_EPHEMERAL) != 0;
    t->hidden = (o->flags & TB__TASK_HIDDEN) != 0;
    t->state = TB_TASK_PENDING;
    t->created_us = tb__now_us();
    return t;
}

/* ---------------------------------------------------------------- add */

static int least_loaded(tb_app *app)
{
    int best = 0, best_load = INT32_MAX;
    for (int i = 0; i < app->nworkers; i++) {
        int l =
            atomic_load_explicit(&app->workers[i].load, memory_order_relaxed);
        if (l < best_load) {
            best = i;
            best_load = l;
        }
    }
    return best;
}

static int add_prerun(tb_app *app, tb_task_fn fn, void *arg,
                      const tb_task_opts *o)
{
    tb__prerun *p = calloc(1, sizeof *p);
    if (!p)
        return TB_ENOMEM;
    if ((o->name && !(p->name = strdup(o->name))) ||
        (o->kind && !(p->kind = strdup(o->kind)))) {
        free(p->name);
        free(p);
        return TB_ENOMEM;
    }
    p->fn = fn;
    p->arg = arg;
    p->arg_free = o->ud_free;
    p->flags = o->flags & TB_TASK_SINGLETON;
    if (app->prerun_tail)
        app->prerun_tail->next = p;
    else
        app->prerun = p;
    app->prerun_tail = p;
    return 0;
}

int tb_task_add(tb_app *app, tb_task_fn fn, void *arg, const tb_task_opts *opts,
                uint64_t *id_out)
{
    if (opts && (opts->flags & (TB__TASK_LOCAL | TB__TASK_HIDDEN))) {
        /* The internal flags are the core's own. */
        tb_task_opts o = *opts;
        o.flags &= ~(unsigned)(TB__TASK_LOCAL | TB__TASK_HIDDEN);
        return tb__task_add(app, fn, arg, &o, NULL, id_out);
    }
    return tb__task_add(app, fn, arg, opts, NULL, id_out);
}

/* Whether an add of o's name claims it across the cluster: a name given
 * by the caller, while running, with a bus that has a cluster, and not a
 * per-request or helper task. */
static int wants_claim(tb_app *app, const tb_task_opts *o, unsigned iflags)
{
    return o->name && app->bus && app->bus->ops->cluster &&
           !(iflags & (TB__TASK_LOCAL | TB__TASK_HIDDEN));
}

int tb__task_add(tb_app *app, tb_task_fn fn, void *arg,
                 const tb_task_opts *opts, tb__add_extra *x, uint64_t *id_out)
{
    static const tb_task_opts defaults = {.worker = TB_WORKER_ANY};
    const tb_task_opts *o = opts ? opts : &defaults;
    unsigned iflags =
        (x ? x->iflags : 0) | (o->flags & (TB__TASK_LOCAL | TB__TASK_HIDDEN));
    if (x)
        x->holder[0] = '\0';
    if (!app || !fn)
        return TB_EINVAL;
    if (o->name) {
        int rc = name_check(o->name);
        if (rc)
            return rc;
    }
    if (o->worker != TB_WORKER_ANY &&
        (o->worker < 0 || o->worker >= app->cfg.core.workers))
        return TB_EINVAL;
    if ((o->flags & TB_TASK_SINGLETON) && !o->name)
        return TB_EINVAL; /* the cluster finds a singleton by its name */
    if (id_out)
        *id_out = 0;

    tb_task *t = task_alloc(app, fn, arg, o);
    if (!t)
        return TB_ENOMEM;
    atomic_init(&t->refs, 1);
    t->hidden = (iflags & TB__TASK_HIDDEN) != 0;
    if (x) {
        t->fence = x->fence;
        if ((t->single = x->single))
            tb__singleton_hold(t->single);
    }
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&app->reg_mu);
        if (app->mode != TB__MODE_ACCEPT) {
            int rc = TB_ESHUTDOWN;
            if (app->mode == TB__MODE_PRERUN)
                rc = x && x->single ? TB_EINVAL /* singleton.c's runs */
                                    : add_prerun(app, fn, arg, o);
            pthread_mutex_unlock(&app->reg_mu);
            tb__task_unref(t);
            return rc;
        }
        if ((o->flags & TB_TASK_SINGLETON) && !(x && x->single)) {
            /* While running, a singleton is a kind's (tb_task_spawn): the
             * other instances must be able to run it too. */
            pthread_mutex_unlock(&app->reg_mu);
            tb__task_unref(t);
            return TB_EINVAL;
        }
        /* A live holder of the name refuses the add (or, with REPLACE, is
         * cancelled first); finished holders simply give the name up. */
        int live = 0;
        if (o->name) {
            for (tb_task *h = first_named(app, o->name); h; h = next_named(h))
                live |= !tb__task_finished(h);
            if (!live && claiming(app, o->name)) {
                /* Another add here is claiming the name in Redis: wait
                 * for its outcome (bounded by its claim's timeout), then
                 * look again: its task holds the name now, or this add
                 * claims in turn and Redis names the holder. Refusing at
                 * once named this instance as the holder of a name that
                 * another instance may win. */
                app->thread_waiters++;
                while (claiming(app, o->name))
                    pthread_cond_wait(&app->done_cv, &app->reg_mu);
                app->thread_waiters--;
                pthread_mutex_unlock(&app->reg_mu);
                continue;
            }
        }
        if (live) {
            pthread_mutex_unlock(&app->reg_mu);
            int rc = TB_EEXIST;
            if (o->flags & TB_TASK_REPLACE) {
                rc = attempt < 3
                         ? tb_task_cancel(app, o->name, TB_TIMEOUT_DEFAULT)
                         : TB_EBUSY;
                if (rc == 0 || rc == TB_ENOENT)
                    continue;
            }
            tb__task_unref(t);
            return rc;
        }
        if (wants_claim(app, o, iflags)) {
            /* Claimed across the cluster before it exists here: the name
             * is marked as being claimed meanwhile, so that a second add
             * of it on this instance waits for the outcome (above). */
            tb__claiming me = {app->claiming, o->name};
            app->claiming = &me;
            if (!t->id)
                t->id = ++app->next_id;
            pthread_mutex_unlock(&app->reg_mu);
            char holder[24] = "";
            int rc = tb__cluster_claim(app, o->name, t->id, holder);
            pthread_mutex_lock(&app->reg_mu);
            claiming_drop(app, &me);
            if (rc == 0 && app->mode != TB__MODE_ACCEPT)
                rc = TB_ESHUTDOWN;
            if (rc) {
                pthread_mutex_unlock(&app->reg_mu);
                if (rc == TB_ESHUTDOWN)
                    tb__cluster_release(app, o->name, t->id);
                if (rc == TB_EEXIST && (o->flags & TB_TASK_REPLACE) &&
                    attempt < 3) {
                    /* The holder is on another instance: its cancel is a
                     * call there, which a worker's loop must not wait for
                     * (as a local cancel, it reports TB_EINPROGRESS). */
                    int crc = tb__worker_current()
                                  ? TB_EINPROGRESS
                                  : tb__cluster_cancel_on(
                                        app, holder, o->name,
                                        app->cfg.core.graceful_timeout_ms);
                    if (crc == 0 || crc == TB_ENOENT)
                        continue;
                    rc = crc;
                }
                if (x && rc == TB_EEXIST)
                    snprintf(x->holder, sizeof x->holder, "%s", holder);
                tb__task_unref(t);
                return rc;
            }
            t->claimed = 1;
            /* The registry lock was let go: look for a holder again. A
             * local add of the name cannot have slipped in (it saw the
             * claim in flight), but a pre-run replica could not either:
             * the checks above still hold. */
        }
        if (o->name) {
            tb_task *h = first_named(app, o->name);
            while (h) {
                tb_task *next = next_named(h);
                tb__task_registry_drop(app, h);
                h = next;
            }
        }
        int rc = registry_insert(app, t);
        if (rc) {
            pthread_mutex_unlock(&app->reg_mu);
            if (t->claimed)
                tb__cluster_release(app, t->name, t->id);
            tb__task_unref(t);
            return rc;
        }
        int wi = o->worker == TB_WORKER_ANY ? least_loaded(app) : o->worker;
        tb__worker *w = &app->workers[wi];
        t->worker = wi;
        t->w = w;
        atomic_fetch_add(&w->load, 1);
        if (id_out)
            *id_out = t->id;
        if (tb__worker_current() == w) {
            /* refs: the registry's (from alloc) + the worker's. */
            tb__task_ref(t);
            pthread_mutex_unlock(&app->reg_mu);
            tb__task_start_on_worker(t);
            return 0;
        }
        /* refs: registry + worker + the SPAWN message's. Posting under
         * reg_mu orders this SPAWN before any STOP that the shutdown posts
         * after closing the registry. */
        atomic_fetch_add(&t->refs, 2);
        rc = tb__worker_post(w, TB__MSG_SPAWN, t, 0, 0);
        if (rc) {
            atomic_fetch_sub(&w->load, 1);
            atomic_fetch_sub(&t->refs, 2);
            int claimed = t->claimed;
            uint64_t id = t->id;
            char *name = claimed ? strdup(t->name) : NULL;
            tb__task_registry_drop(app, t);
            pthread_mutex_unlock(&app->reg_mu);
            if (name)
                tb__cluster_release(app, name, id);
            free(name);
            return rc;
        }
        pthread_mutex_unlock(&app->reg_mu);
        return 0;
    }
}

/* ---------------------------------------------------------------- replicas */

void tb__task_start_prerun(tb__worker *w)
{
    tb_app *app = w->app;
    for (tb__prerun *p = app->prerun; p; p = p->next) {
        if (p->flags & TB_TASK_SINGLETON)
            continue; /* one run in the cluster: singleton.c's */
        tb_task_opts o = {.name = p->name, .kind = p->kind};
        tb_task *t = task_alloc(app, p->fn, p->arg, &o);
        if (!t) {
            tb__log(TB_LOG_ERROR, "worker %d: no memory to start task %s",
                    w->index, p->name ? p->name : "(unnamed)");
            continue;
        }
        t->arg_free = NULL; /* the app frees a pre-run task's arg, once */
        t->replica = p->name != NULL;
        t->worker = w->index;
        t->w = w;
        atomic_init(&t->refs, 2);
        pthread_mutex_lock(&app->reg_mu);
        int rc = app->mode == TB__MODE_ACCEPT ? registry_insert(app, t)
                                              : TB_ESHUTDOWN;
        pthread_mutex_unlock(&app->reg_mu);
        if (rc) {
            tb__log(TB_LOG_ERROR, "worker %d: cannot start task %s: %s",
                    w->index, p->name ? p->name : "(unnamed)", tb_strerror(rc));
            free(t->kind);
            free(t);
            continue;
        }
        atomic_fetch_add(&w->load, 1);
        tb__task_start_on_worker(t);
    }
}

/* ------------------------------------------------------------------ by name */

/* The tasks a cancel or join acts on: refs to every task with one name. */
typedef struct named_set {
    tb_task **v;
    int n;
    tb_task *small[4];
} named_set;

/* Collects refs to every task named name, or only to the one with id
 * only_id when it is not 0 (reg_mu held). Returns the count or TB_ENOMEM;
 * release with release_all. */
static int collect_named_id(tb_app *app, const char *name, uint64_t only_id,
                            named_set *set)
{
    const int small = (int)(sizeof set->small / sizeof set->small[0]);
    int n = 0;
    set->v = set->small;
    /* One walk of the chain in the common case (one or a few holders). */
    for (tb_task *t = first_named(app, name); t; t = next_named(t)) {
        if (only_id && t->id != only_id)
            continue;
        if (n < small)
            set->small[n] = t;
        n++;
    }
    if (n > small) {
        if (!(set->v = malloc((size_t)n * sizeof *set->v))) {
            set->n = 0;
            return TB_ENOMEM;
        }
        int i = 0;
        for (tb_task *t = first_named(app, name); t; t = next_named(t))
            if (!only_id || t->id == only_id)
                set->v[i++] = t;
    }
    for (int i = 0; i < n; i++)
        tb__task_ref(set->v[i]);
    set->n = n;
    return n;
}

static int collect_named(tb_app *app, const char *name, named_set *set)
{
    return collect_named_id(app, name, 0, set);
}

static void release_all(named_set *set)
{
    for (int i = 0; i < set->n; i++)
        tb__task_unref(set->v[i]);
    if (set->v != set->small)
        free(set->v);
}

static int all_finished_locked(tb_task **v, int n, const tb_task *except)
{
    for (int i = 0; i < n; i++)
        if (v[i] != except && !tb__task_finished(v[i]))
            return 0;
    return 1;
}

int tb_task_join(tb_task *self, const char *name, int timeout_ms, int *result,
                 tb_task_state *state)
{
    int rc = tb__task_enter(self, "tb_task_join");
    if (rc)
        return rc;
    if (!name)
        return TB_EINVAL;
    tb_app *app = self->app;
    named_set set;
    pthread_mutex_lock(&app->reg_mu);
    int n = collect_named(app, name, &set);
    pthread_mutex_unlock(&app->reg_mu);
    tb_task **v = set.v;
    if (n < 0)
        return n;
    if (n == 0)
        return TB_ENOENT;
    for (int i = 0; i < n; i++) {
        if (v[i] == self) {
            release_all(&set);
            return TB_EDEADLK;
        }
    }
    tb__deadline dl = {.timeout_ms = timeout_ms};
    for (int i = 0; i < n && rc == 0; i++)
        rc = tb__task_wait_finished(self, v[i], &dl, "tb_task_join");
    if (rc == 0) {
        pthread_mutex_lock(&app->reg_mu);
        tb_task *first = v[0];
        for (int i = 1; i < n; i++)
            if (v[i]->id < first->id)
                first = v[i];
        if (result)
            *result = first->result;
        if (state)
            *state = first->state;
        pthread_mutex_unlock(&app->reg_mu);
    }
    release_all(&set);
    return rc;
}

int tb_task_cancel(tb_app *app, const char *name, int timeout_ms)
{
    return tb__task_cancel_report(app, name, 0, timeout_ms, NULL, NULL);
}

int tb__task_cancel_report(tb_app *app, const char *name, uint64_t only_id,
                           int timeout_ms, tb_task_info *out, int *count)
{
    if (!app || !name)
        return TB_EINVAL;
    if (timeout_ms == TB_TIMEOUT_DEFAULT)
        timeout_ms = app->cfg.core.graceful_timeout_ms;
    tb_task *self = tb_task_current();
    if (self && self->app != app)
        self = NULL;
    named_set set;
    pthread_mutex_lock(&app->reg_mu);
    int n = collect_named_id(app, name, only_id, &set);
    tb_task **v = set.v;
    if (n <= 0) {
        pthread_mutex_unlock(&app->reg_mu);
        return n == 0 ? TB_ENOENT : n;
    }
    int self_target = 0;
    for (int i = 0; i < n; i++) {
        tb_task *t = v[i];
        if (tb__task_finished(t))
            continue;
        if (t == self) {
            /* Its own cancel is delivered after it has waited for the
             * others, or the wait itself would consume it. */
            atomic_store(&t->cancel_requested, 1);
            self_target = 1;
            continue;
        }
        tb__task_request_cancel(t);
        if (tb__worker_current() == t->w) {
            tb__task_deliver_cancel(t);
        } else {
            tb__task_ref(t);
            if (tb__worker_post(t->w, TB__MSG_CANCEL, t, 0, 0))
                tb__task_unref(t);
        }
    }

    int rc = 0;
    if (self) {
        pthread_mutex_unlock(&app->reg_mu);
        tb__deadline dl = {.timeout_ms = timeout_ms};
        for (int i = 0; i < n && rc == 0; i++)
            if (v[i] != self)
                rc = tb__task_wait_finished(self, v[i], &dl, "tb_task_cancel");
        if (self_target)
            atomic_store(&self->cancel_pending, 1);
    } else if (tb__worker_current() && tb__worker_current()->app == app) {
        /* A worker's loop must never block: report and let the cancel
         * complete on its own. */
        rc = all_finished_locked(v, n, NULL) ? 0 : TB_EINPROGRESS;
        pthread_mutex_unlock(&app->reg_mu);
    } else {
        struct timespec ts;
        tb__deadline_ts(&ts, timeout_ms < 0 ? 0 : timeout_ms);
        app->thread_waiters++;
        while (!all_finished_locked(v, n, NULL)) {
            if (timeout_ms < 0) { /* no limit */
                pthread_cond_wait(&app->done_cv, &app->reg_mu);
                continue;
            }
            if (pthread_cond_timedwait(&app->done_cv, &app->reg_mu, &ts) ==
                ETIMEDOUT) {
                if (!all_finished_locked(v, n, NULL))
                    rc = TB_ETIMEDOUT;
                break;
            }
        }
        app->thread_waiters--;
        pthread_mutex_unlock(&app->reg_mu);
    }
    if (out || count) {
        /* The tasks this call cancelled, as they are now: not whatever
         * holds the name by then (a new task may have taken it). */
        pthread_mutex_lock(&app->reg_mu);
        tb_task *first = v[0];
        for (int i = 1; i < n; i++)
            if (v[i]->id < first->id)
                first = v[i];
        if (out)
            tb__task_info_fill(first, out);
        if (count)
            *count = n;
        pthread_mutex_unlock(&app->reg_mu);
    }
    release_all(&set);
    return rc;
}

/* ---------------------------------------------------------------- queries */

void tb__task_info_fill(const tb_task *t, tb_task_info *o)
{
    memset(o, 0, sizeof *o);
    o->id = t->id;
    snprintf(o->name, sizeof o->name, "%s", t->name ? t->name : "");
    snprintf(o->kind, sizeof o->kind, "%s", t->kind ? t->kind : "");
    o->worker = t->worker;
    o->state = t->state;
    o->created_us = t->created_us;
    o->started_us = t->started_us;
    o->ended_us = t->ended_us;
    o->result = t->result;
    if (t->error)
        snprintf(o->error, sizeof o->error, "%s", t->error);
    else if (t->state == TB_TASK_CANCELLED)
        snprintf(o->error, sizeof o->error, "cancelled");
    o->cancel_requested = atomic_load(&t->cancel_requested);
}

int tb_task_get(tb_app *app, const char *name, tb_task_info *out)
{
    if (!app || !name)
        return TB_EINVAL;
    pthread_mutex_lock(&app->reg_mu);
    int n = 0;
    const tb_task *first = NULL;
    for (tb_task *t = first_named(app, name); t; t = next_named(t)) {
        if (!first || t->id < first->id)
            first = t;
        n++;
    }
    if (first && out)
        tb__task_info_fill(first, out);
    pthread_mutex_unlock(&app->reg_mu);
    return n ? n : TB_ENOENT;
}

int tb_task_list(tb_app *app, tb_task_info **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&app->reg_mu);
    size_t count = 0;
    for (tb_task *t = app->all_head; t; t = t->all_next)
        count += !t->hidden;
    tb_task_info *v = NULL;
    if (count) {
        v = malloc(count * sizeof *v);
        if (!v) {
            pthread_mutex_unlock(&app->reg_mu);
            return TB_ENOMEM;
        }
        size_t i = 0;
        for (tb_task *t = app->all_head; t; t = t->all_next)
            if (!t->hidden)
                tb__task_info_fill(t, &v[i++]);
    }
    pthread_mutex_unlock(&app->reg_mu);
    *out = v;
    *n = count;
    return (int)count;
}

void tb__task_forget(tb_app *app, const char *name, uint64_t id)
{
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = first_named(app, name); t; t = next_named(t)) {
        if (t->id == id && tb__task_finished(t)) {
            tb__task_registry_drop(app, t);
            break;
        }
    }
    pthread_mutex_unlock(&app->reg_mu);
}

int tb_task_add_every(tb_app *app, tb_task_fn fn, void *ud,
                      const tb_task_opts *opts, int64_t every_ms)
{
    if (!app || !fn || !opts || !opts->name)
        return TB_EINVAL;
    int rc = name_check(opts->name);
    if (rc)
        return rc;
    if (every_ms < app->cfg.core.periodic_min_ms ||
        every_ms > TB_PERIODIC_MAX_MS)
        return TB_EINVAL;
    tb_task_opts o = *opts;
    o.flags |= TB_TASK_SINGLETON;
    pthread_mutex_lock(&app->reg_mu);
    rc = app->mode == TB__MODE_PRERUN ? add_prerun(app, fn, ud, &o) : TB_EBUSY;
    if (rc == 0)
        app->prerun_tail->every_ms = every_ms;
    pthread_mutex_unlock(&app->reg_mu);
    return rc;
}

int tb_task_spawn_every(tb_app *app, const char *kind, const char *args_json,
                        const tb_task_opts *opts, int64_t every_ms,
                        uint64_t *id_out, char *err, size_t errsz)
{
    char scratch[8];
    if (!err || !errsz) {
        err = scratch;
        errsz = sizeof scratch;
    }
    err[0] = '\0';
    if (id_out)
        *id_out = 0;
    if (!app || !opts || !opts->name) {
        snprintf(err, errsz, "a periodic task needs a name");
        return TB_EINVAL;
    }
    if (every_ms < app->cfg.core.periodic_min_ms ||
        every_ms > TB_PERIODIC_MAX_MS) {
        snprintf(err, errsz, "every_ms must be in %d..%lld",
                 app->cfg.core.periodic_min_ms, (long long)TB_PERIODIC_MAX_MS);
        return TB_EINVAL;
    }
    int stage;
    int rc = tb__kind_check(app, kind, args_json, err, errsz, &stage);
    if (rc)
        return rc;
    char holder[24];
    return tb__singleton_spawn(app, kind, args_json, opts, every_ms, id_out,
                               holder, err, errsz);
}

uint64_t tb_task_fence(const tb_task *self)
{
    return self ? self->fence : 0;
}

int tb_task_purge(tb_app *app)
{
    int n = 0;
    pthread_mutex_lock(&app->reg_mu);
    tb_task *t = app->all_head;
    while (t) {
        tb_task *next = t->all_next;
        if (tb__task_finished(t)) {
            tb__task_registry_drop(app, t);
            n++;
        }
        t = next;
    }
    pthread_mutex_unlock(&app->reg_mu);
    return n;
}

void tb__task_free_registry(tb_app *app)
{
    tb_task *t = app->all_head;
    while (t) {
        tb_task *next = t->all_next;
        tb__task_disarm_timer(t); /* it lives on the stack freed next */
        t->timer = NULL;
        if (t->co) {
            tb__coro_free(t->co);
            t->co = NULL;
        }
        tb__task_registry_drop(app, t);
        t = next;
    }
}
