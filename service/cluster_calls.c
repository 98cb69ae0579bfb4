/* cluster_calls.c - the calls between instances: requests on each
 * instance's control channel, their answers, and the task objects they
 * carry. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cluster_impl.h"
#include "instances.h"
#include "json.h"
#include "metrics.h"
#include "singleton.h"

/* How it works.
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
json_t *tb__cl_local_named(tb_app *app, const char *name)
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

int tb__task_kind_is(const char *kind, const char *want)
{
    return !want || (kind && strcmp(kind, want) == 0);
}

json_t *tb__cl_local_page(tb_app *app, uint64_t after, size_t limit,
                          const tb__task_filter *f, int *more)
{
    int st = f ? f->state : -1;
    const char *kind = f ? f->kind : NULL;
    json_t *arr = json_array();
    *more = 0;
    if (!arr)
        return NULL;
    size_t bytes = 0;
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next) {
        if (t->id <= after || t->hidden || (st >= 0 && (int)t->state != st) ||
            !tb__task_kind_is(t->kind, kind))
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

json_t *tb__cl_lost_json(const char *name, uint64_t id, const char *inst)
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
    int rc = msg ? cl_ops(app)->send(app->bus, to, msg, strlen(msg), on_sent, s)
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
int tb__cl_call1(tb_app *app, const char *to, json_t *req, int timeout_ms,
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
int tb__cl_reply_status(json_t *reply)
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
size_t tb__cl_live_instances(tb_app *app, char (*ids)[INST_MAX], size_t max)
{
    size_t n = app->instances ? tb__instances_ids(app->instances, ids, max) : 0;
    if (n == 0 && max > 0) {
        snprintf(ids[0], INST_MAX, "%s", app->instance);
        n = 1;
    }
    return n;
}

/* Sends a copy of req to every live instance but this one and waits for
 * all their answers until timeout_ms. replies[i] (new references, NULL
 * for no answer) and ids[i] for i < return value. */
size_t tb__cl_scatter(tb_app *app, json_t *req, int timeout_ms,
                      char (*ids)[INST_MAX], json_t **replies)
{
    char all[SCATTER_MAX][INST_MAX];
    size_t n = tb__cl_live_instances(app, all, SCATTER_MAX), m = 0;
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

int tb__cluster_stats_all(tb_app *app, json_t **stats, json_t **unreachable)
{
    *stats = json_array();
    *unreachable = json_array();
    json_t *req = json_pack("{s:s}", "op", "stats");
    int rc = *stats && *unreachable && req ? 0 : TB_ENOMEM;
    char ids[SCATTER_MAX][INST_MAX];
    json_t *replies[SCATTER_MAX] = {0};
    size_t m = rc == 0 && cl_ops(app)
                   ? tb__cl_scatter(app, req, app->cfg.redis.command_timeout_ms,
                                    ids, replies)
                   : 0;
    json_decref(req);
    for (size_t i = 0; i < m; i++) {
        /* What came back is another process's word: an object is all
         * that is asked of it here (the caller adds only its numbers). */
        json_t *st = json_object_get(replies[i], "stats");
        int ok = replies[i] && tb__cl_reply_status(replies[i]) == 0 &&
                 json_is_object(st);
        if (rc == 0 &&
            (ok ? json_array_append(*stats, st)
                : json_array_append_new(*unreachable, json_string(ids[i]))))
            rc = TB_ENOMEM;
        json_decref(replies[i]);
    }
    if (rc) {
        json_decref(*stats);
        json_decref(*unreachable);
        *stats = *unreachable = NULL;
    }
    return rc;
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
    if (msg && cl_ops(app))
        cl_ops(app)->send(app->bus, to, msg, strlen(msg), NULL, NULL);
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
        json_t *tasks = tb__cl_local_named(app, json_string_value(name));
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
        json_t *kind = json_object_get(m, "kind");
        if (!json_is_integer(after) || json_integer_value(after) < 0 ||
            !json_is_integer(limit) || json_integer_value(limit) < 1 ||
            json_integer_value(limit) > PAGE_HARD_MAX ||
            !json_is_integer(state) || json_integer_value(state) < -1 ||
            json_integer_value(state) > TB_TASK_CANCELLED ||
            (kind &&
             (!str_ok(kind, 1, TB_KIND_NAME_MAX) ||
              strlen(json_string_value(kind)) != json_string_length(kind)))) {
            bad_message(app, len,
                        "list with a bad after, limit, state or kind");
            return;
        }
        int more;
        tb__task_filter f = {(int)json_integer_value(state),
                             json_string_value(kind), NULL};
        json_t *tasks =
            tb__cl_local_page(app, (uint64_t)json_integer_value(after),
                              (size_t)json_integer_value(limit), &f, &more);
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
    } else if (!strcmp(op, "stats")) {
        /* GET /stats's object, a few KiB: far below the message bound. */
        json_t *st = tb__stats_json(app);
        answer(app, to, r, st ? "ok" : "error",
               st ? json_pack("{s:o}", "stats", st) : NULL);
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
