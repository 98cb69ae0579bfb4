/* instances.c - the instance registry: this instance's record in the bus's
 * shared store, renewed by a heartbeat, and the live instances it reads. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "cluster.h"
#include "instances.h"
#include "internal.h"
#include "json.h"

/* How it works (docs/CLUSTER.md has the protocol).
 *
 * A thread of its own ("tb-instances") wakes every core.instance_heartbeat_ms
 * and asks the bus's store (tb__kv_ops) to put this instance's record in
 * group "instance" for core.instance_ttl_ms, then to list the group. Each
 * put sets the whole record again, so after a Redis restart (the records
 * are gone) the next heartbeat that reaches Redis registers us again. The
 * list's answer (on the bus's thread) is checked record by record and kept
 * as the last list: GET /instances and the metrics read that, so a request
 * never waits on Redis.
 *
 * Why its own thread rather than a worker loop's timer or the bus thread:
 * a task that keeps its worker busy (a CPU-bound step between suspension
 * points) would delay a worker's timer past the TTL and make a healthy
 * instance vanish; and the memory bus has no thread, while the Redis bus's
 * loop is the adapter's, which the core does not schedule on. A thread
 * that sleeps on a condition variable costs nothing between beats, and the
 * store's ops never block it. */

#define GROUP "instance"

struct tb__instances {
    tb_app *app;
    tb__bus *bus;
    const tb__kv_ops *kv;            /* NULL: the bus has no store; just us */
    char self[TB__KV_VALUE_MAX + 1]; /* our record, JSON */
    size_t selflen;
    int64_t heartbeat_ms, ttl_ms;

    pthread_t thread;
    int started;
    pthread_mutex_t mu; /* guards what follows */
    pthread_cond_t cv;
    int stop;
    json_t *last;    /* the instances last read, by id; never NULL */
    int del_done;    /* stop: the store answered our delete */
    int put_failed;  /* the last put failed (logged once per run) */
    int puts_ok;     /* puts that succeeded */
    int reassert;    /* our record was found missing: claim again */
    tb__ratelog bad; /* skipped records; the list callback's thread */
};

/* ------------------------------------------------------------ records */

static int str_field(json_t *o, const char *k, size_t max, int nullable)
{
    json_t *v = json_object_get(o, k);
    if (nullable && json_is_null(v))
        return 1;
    return json_is_string(v) && json_string_length(v) >= 1 &&
           json_string_length(v) <= max;
}

json_t *tb__instance_parse(const char *id, size_t idlen, const char *value,
                           size_t len, const char **why)
{
    *why = NULL;
    if (!tb__kv_name_ok(id, idlen, TB__KV_ID_MAX)) {
        *why = "bad id";
        return NULL;
    }
    if (len > TB__KV_VALUE_MAX) {
        *why = "oversize";
        return NULL;
    }
    json_error_t jerr;
    json_t *o = tb__json_loadb(value, len, JSON_REJECT_DUPLICATES, 4, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        *why = "not a JSON object";
        return NULL;
    }
    json_t *jid = json_object_get(o, "id");
    json_t *w = json_object_get(o, "workers");
    if (!json_is_string(jid) || json_string_length(jid) != idlen ||
        memcmp(json_string_value(jid), id, idlen) != 0)
        *why = "id does not match its key";
    else if (!str_field(o, "host", 255, 0) || !str_field(o, "listen", 64, 1) ||
             !str_field(o, "version", 32, 0) ||
             !str_field(o, "started", 40, 0) || !str_field(o, "bus", 16, 0))
        *why = "missing or oversize field";
    else if (!json_is_integer(w) || json_integer_value(w) < 1 ||
             json_integer_value(w) > 65536)
        *why = "bad workers";
    if (*why) {
        json_decref(o);
        return NULL;
    }
    /* Only the fields we know, so that nothing else travels on. */
    json_t *rec = json_pack(
        "{s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "id", jid, "host",
        json_object_get(o, "host"), "listen", json_object_get(o, "listen"),
        "version", json_object_get(o, "version"), "workers", w, "started",
        json_object_get(o, "started"), "bus", json_object_get(o, "bus"));
    json_decref(o);
    if (!rec)
        *why = "out of memory";
    return rec;
}

/* Our record: the caller owns the string (json_dumps). */
static char *self_record(tb_app *app, const char *bus, int64_t started_us)
{
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        snprintf(host, sizeof host, "unknown");
    const char *listen = app->cfg.http.listen;
    json_t *o = json_pack(
        "{s:s,s:s,s:o,s:s,s:i,s:o,s:s}", "id", app->instance, "host", host,
        "listen", listen && listen[0] ? json_string(listen) : json_null(),
        "version", TB_VERSION_STRING, "workers", app->nworkers, "started",
        tb__api_jtime(started_us), "bus", bus);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

/* ------------------------------------------------------------ heartbeat */

static void on_put(int status, void *ud)
{
    tb__instances *in = ud;
    pthread_mutex_lock(&in->mu);
    int was = in->put_failed;
    in->put_failed = status < 0;
    /* Created rather than renewed: Redis did not have it (the first put,
     * a restart, a partition or pause longer than the TTL): the claims
     * made meanwhile looked dead to the others; claim them again. */
    if (status == TB__KV_CREATED)
        in->reassert = 1;
    if (status >= 0)
        in->puts_ok++;
    pthread_mutex_unlock(&in->mu);
    if (status < 0 && !was)
        tb__log(TB_LOG_WARN,
                "instances: cannot renew this instance's record: %s; "
                "retrying every heartbeat",
                tb_strerror(status));
    else if (status >= 0 && was)
        tb__log(TB_LOG_INFO, "instances: this instance's record renewed "
                             "again");
}

/* The store's answer to a list: keep the valid records as the last list.
 * Runs on the bus's thread (the heartbeat's for the memory bus). */
static void on_list(int status, const tb__kv_rec *recs, size_t n,
                    size_t dropped, void *ud)
{
    tb__instances *in = ud;
    int64_t now = tb__mono_us();
    tb__ratelog_flush(&in->bad, now);
    if (status != 0)
        return; /* keep the last list; the put's line says why */
    json_t *by_id = json_object();
    if (!by_id)
        return;
    if (dropped && tb__ratelog_ok(&in->bad, now))
        tb__log(TB_LOG_WARN,
                "instances: %zu record(s) under %s:* out of bounds; skipped",
                dropped, GROUP);
    for (size_t i = 0; i < n; i++) {
        const char *why;
        json_t *o = tb__instance_parse(recs[i].id, recs[i].idlen, recs[i].value,
                                       recs[i].len, &why);
        if (!o) {
            if (tb__ratelog_ok(&in->bad, now)) {
                char id[TB__KV_ID_MAX * 4 + 1];
                tb__log(
                    TB_LOG_WARN, "instances: record %s (%zu bytes) skipped: %s",
                    tb__log_printable(id, sizeof id, recs[i].id, recs[i].idlen),
                    recs[i].len, why);
            }
            continue;
        }
        json_object_set_new(by_id, json_string_value(json_object_get(o, "id")),
                            o);
    }
    pthread_mutex_lock(&in->mu);
    json_decref(in->last);
    in->last = by_id;
    pthread_mutex_unlock(&in->mu);
}

static void reaped(int status, void *ud)
{
    (void)status;
    (void)ud;
}

static void beat(tb__instances *in)
{
    if (!in->kv)
        return;
    int rc = in->kv->put(in->bus, GROUP, in->app->instance, in->self,
                         in->selflen, in->ttl_ms, on_put, in);
    if (rc != 0)
        on_put(rc, in);
    in->kv->list(in->bus, GROUP, on_list, in);
    const tb__cluster_ops *cl = in->bus->ops->cluster;
    if (cl) {
        cl->reap(in->bus, in->app->cfg.core.lost_keep_ms, reaped, NULL);
        tb__cluster_retry(in->app);
    }
    pthread_mutex_lock(&in->mu);
    int again = in->reassert;
    in->reassert = 0;
    pthread_mutex_unlock(&in->mu);
    if (atomic_exchange(&in->app->store_lost, 0))
        tb__cluster_reassert(in->app, "the bus moved to a new Redis master, "
                                      "which may lack our last claims");
    else if (again)
        tb__cluster_reassert(in->app,
                             "this instance's record was gone from Redis");
}

void tb__bus_store_lost(tb_app *app)
{
    /* A flag, not a call into the registry: the bus may run before the
     * heartbeat starts or after it stops; the next beat, if any, acts. */
    atomic_store(&app->store_lost, 1);
}

void tb__bus_unreplicated(tb_app *app, uint64_t n)
{
    atomic_fetch_add_explicit(&app->pub_unreplicated, n, memory_order_relaxed);
}

static void *beat_main(void *arg)
{
    tb__instances *in = arg;
    pthread_mutex_lock(&in->mu);
    while (!in->stop) {
        pthread_mutex_unlock(&in->mu);
        beat(in);
        pthread_mutex_lock(&in->mu);
        struct timespec ts;
        tb__deadline_ts(&ts, (int)in->heartbeat_ms);
        while (!in->stop &&
               pthread_cond_timedwait(&in->cv, &in->mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

tb__instances *tb__instances_start(tb_app *app)
{
    tb__instances *in = calloc(1, sizeof *in);
    if (!in)
        return NULL;
    in->app = app;
    in->bus = app->bus;
    in->kv = app->bus->ops->kv;
    in->heartbeat_ms = app->cfg.core.instance_heartbeat_ms;
    in->ttl_ms = app->cfg.core.instance_ttl_ms;
    in->bad.who = "instances";
    in->bad.what = "skipped-record lines";
    pthread_mutex_init(&in->mu, NULL);
    tb__cond_init_mono(&in->cv);
    char *rec = self_record(app, app->bus->ops->name, tb__now_us());
    json_error_t jerr;
    json_t *self = rec ? json_loadb(rec, strlen(rec), 0, &jerr) : NULL;
    in->last = json_object();
    if (!rec || strlen(rec) > TB__KV_VALUE_MAX || !self || !in->last) {
        free(rec);
        json_decref(self);
        tb__instances_free(in);
        return NULL;
    }
    in->selflen = strlen(rec);
    memcpy(in->self, rec, in->selflen + 1);
    free(rec);
    json_object_set_new(in->last, app->instance, self);

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&in->thread, NULL, beat_main, in);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        tb__log(TB_LOG_ERROR,
                "instances: cannot create the heartbeat "
                "thread: %s; this instance is not registered",
                strerror(rc));
        return in; /* GET /instances still lists us */
    }
    pthread_setname_np(in->thread, "tb-instances");
    in->started = 1;
    return in;
}

static void on_del(int status, void *ud)
{
    tb__instances *in = ud;
    (void)status;
    pthread_mutex_lock(&in->mu);
    in->del_done = 1;
    pthread_cond_broadcast(&in->cv);
    pthread_mutex_unlock(&in->mu);
}

void tb__instances_stop(tb__instances *in)
{
    if (!in || !in->started)
        return;
    pthread_mutex_lock(&in->mu);
    in->stop = 1;
    pthread_cond_broadcast(&in->cv);
    pthread_mutex_unlock(&in->mu);
    pthread_join(in->thread, NULL);
    in->started = 0;
    if (!in->kv)
        return;
    /* Leave at once rather than when the TTL runs out, with our claims;
     * wait for the answer (bounded), since the bus stops next and would
     * give it up. */
    const tb__cluster_ops *cl = in->bus->ops->cluster;
    int rc = cl ? cl->leave(in->bus, on_del, in)
                : in->kv->del(in->bus, GROUP, in->app->instance, on_del, in);
    if (rc != 0) {
        tb__log(TB_LOG_WARN,
                "instances: cannot remove this instance's record (%s); it "
                "expires within %" PRId64 " ms",
                tb_strerror(rc), in->ttl_ms);
        return;
    }
    struct timespec ts;
    tb__deadline_ts(&ts, in->app->cfg.redis.command_timeout_ms);
    pthread_mutex_lock(&in->mu);
    while (!in->del_done &&
           pthread_cond_timedwait(&in->cv, &in->mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&in->mu);
}

void tb__instances_free(tb__instances *in)
{
    if (!in)
        return;
    tb__instances_stop(in);
    tb__ratelog_flush(&in->bad, INT64_MAX);
    json_decref(in->last);
    pthread_cond_destroy(&in->cv);
    pthread_mutex_destroy(&in->mu);
    free(in);
}

/* ------------------------------------------------------------ reading */

static int by_id(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t **)a, "id"));
    const char *y = json_string_value(json_object_get(*(json_t **)b, "id"));
    return strcmp(x, y);
}

json_t *tb__instances_json(tb__instances *in)
{
    json_t *arr = json_array();
    json_t *out = json_object();
    if (!arr || !out) {
        json_decref(arr);
        json_decref(out);
        return NULL;
    }
    pthread_mutex_lock(&in->mu);
    json_t *last = json_deep_copy(in->last);
    pthread_mutex_unlock(&in->mu);
    if (!last) {
        json_decref(arr);
        json_decref(out);
        return NULL;
    }
    if (!json_object_get(last, in->app->instance)) {
        /* Not read back yet (the store was unreachable): we are live. */
        json_error_t jerr;
        json_t *self = json_loads(in->self, 0, &jerr);
        if (self)
            json_object_set_new(last, in->app->instance, self);
    }
    size_t n = json_object_size(last), i = 0;
    json_t **v = calloc(n ? n : 1, sizeof *v);
    const char *k;
    json_t *o;
    if (v)
        json_object_foreach(last, k, o) v[i++] = o;
    qsort(v, i, sizeof *v, by_id);
    for (size_t j = 0; j < i; j++) {
        json_object_set_new(
            v[j], "self",
            json_boolean(!strcmp(json_string_value(json_object_get(v[j], "id")),
                                 in->app->instance)));
        json_array_append(arr, v[j]);
    }
    free(v);
    json_decref(last);
    json_object_set_new(out, "instances", arr);
    return out;
}

void tb__instances_reassert_later(tb__instances *in)
{
    if (!in)
        return;
    pthread_mutex_lock(&in->mu);
    in->reassert = 1;
    pthread_mutex_unlock(&in->mu);
}

size_t tb__instances_ids(tb__instances *in, char (*ids)[24], size_t max)
{
    size_t n = 0;
    int self = 0;
    pthread_mutex_lock(&in->mu);
    const char *k;
    json_t *o;
    json_object_foreach(in->last, k, o)
    {
        /* Ours are 16 hex digits; a record someone wrote by hand under
         * another id cannot be called (nor paged through). */
        size_t kl = strlen(k);
        if (n >= max || kl > 20 || strspn(k, "0123456789abcdef") != kl)
            continue;
        snprintf(ids[n++], 24, "%s", k);
        self |= !strcmp(k, in->app->instance);
    }
    pthread_mutex_unlock(&in->mu);
    if (!self && n < max)
        snprintf(ids[n++], 24, "%s", in->app->instance);
    qsort(ids, n, sizeof ids[0], (int (*)(const void *, const void *))strcmp);
    return n;
}

size_t tb__instances_count(tb__instances *in)
{
    if (!in)
        return 0;
    pthread_mutex_lock(&in->mu);
    size_t n = json_object_size(in->last);
    int self = json_object_get(in->last, in->app->instance) != NULL;
    pthread_mutex_unlock(&in->mu);
    return n + !self;
}

int tb__instances_handler(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    if (!app->instances)
        return tb_http_error(req, 503, "not_running",
                             "the app is not running: no instance registry");
    json_t *o = tb__instances_json(app->instances);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return tb_http_error(req, 500, "internal", "out of memory");
    int rc = tb_http_respond_json(req, 200, s);
    free(s);
    return rc;
}
