/* cluster_tasks.c - get, list and cancel for the whole cluster, by
 * asking the instance that runs the task; and the public C API over them. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cluster_impl.h"
#include "instances.h"
#include "json.h"
#include "singleton.h"

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
    json_t *tasks = tb__cl_local_named(app, name);
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

/* The lost object of name (task id of instance holder) into *out: 0, or
 * TB_ENOMEM. */
static int lost(json_t **out, const char *name, uint64_t id, const char *holder)
{
    *out = tb__cl_lost_json(name, id, holder);
    return *out ? 0 : TB_ENOMEM;
}

/* Who holds name's claim, for get and cancel. 1 when that answers the
 * call already: *rc is then 0 with a lost object in *out (the holder's
 * heartbeat expired), or the error that kept us from asking. Else 0 with
 * *rc 0 (claimed by holder for task id) or TB_ENOENT (not claimed). */
static int locate(tb_app *app, const char *name, char holder[INST_MAX],
                  uint64_t *id, json_t **out, int *rc)
{
    int live;
    *rc = tb__cluster_whois(app, name, holder, id, &live);
    if (*rc == 0 && !live) {
        *rc = lost(out, name, *id, holder);
        return 1;
    }
    return *rc != 0 && *rc != TB_ENOENT;
}

int tb__cluster_get(tb_app *app, const char *name, int local, json_t **out)
{
    *out = NULL;
    if (local || !cl_ops(app))
        return get_local(app, name, out);
    int tmo = app->cfg.redis.command_timeout_ms;
    char holder[INST_MAX];
    uint64_t id;
    int rc;
    if (locate(app, name, holder, &id, out, &rc))
        return rc;
    if (rc == 0 && strcmp(holder, app->instance) != 0) {
        json_t *reply = NULL;
        json_t *req = json_pack("{s:s,s:s}", "op", "get", "name", name);
        rc = req ? tb__cl_call1(app, holder, req, tmo, &reply) : TB_ENOMEM;
        json_decref(req);
        if (rc == TB_EPIPE) /* nobody listens there: it has just died */
            return lost(out, name, id, holder);
        if (rc == 0 && (rc = tb__cl_reply_status(reply)) == 0) {
            json_t *tasks = json_incref(json_object_get(reply, "tasks"));
            *out = first_of(tasks, json_array_size(tasks));
            rc = *out ? 0 : TB_EPROTO;
        }
        json_decref(reply);
        return rc;
    }
    /* Held here, or not claimed (pre-run replicas, per-request tasks):
     * every instance is asked, this one first. */
    json_t *all = tb__cl_local_named(app, name);
    if (!all)
        return TB_ENOMEM;
    if (rc == TB_ENOENT) {
        char ids[SCATTER_MAX][INST_MAX];
        json_t *replies[SCATTER_MAX] = {0};
        json_t *req = json_pack("{s:s,s:s}", "op", "get", "name", name);
        size_t m = req ? tb__cl_scatter(app, req, tmo, ids, replies) : 0;
        json_decref(req);
        for (size_t i = 0; i < m; i++) {
            if (replies[i] && tb__cl_reply_status(replies[i]) == 0)
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
    int rc =
        tb__cl_call1(app, instance, req, cl_wait_ms(app, timeout_ms), &reply);
    json_decref(req);
    if (rc == 0) {
        rc = tb__cl_reply_status(reply);
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
    size_t n = tb__cl_live_instances(app, ids, SCATTER_MAX);
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
    int rc;
    if (locate(app, name, holder, &id, out, &rc))
        return rc;
    if (rc == 0 && strcmp(holder, app->instance) != 0) {
        rc = cancel_remote(app, holder, name, id, timeout_ms, out);
        /* Nobody listens on its channel, or it stopped answering and its
         * heartbeat expired meanwhile: gone. */
        if (rc == TB_EPIPE ||
            (rc == TB_ETIMEDOUT && !*out && !is_live(app, holder)))
            return lost(out, name, id, holder);
        if (rc == 0 && *out)
            json_object_set_new(*out, "replicas", json_integer(1));
        return rc;
    }
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
    size_t m = req ? tb__cl_scatter(app, req, cl_wait_ms(app, timeout_ms), ids,
                                    replies)
                   : 0;
    json_decref(req);
    for (size_t i = 0; i < m; i++) {
        int st = replies[i] ? tb__cl_reply_status(replies[i]) : TB_ETIMEDOUT;
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
    int rc = cl_ops(app)->def_del(app->bus, name, 0, tb__opwait_done_cb, w);
    return tb__opwait_wait(w, rc, app->cfg.redis.command_timeout_ms, NULL, NULL,
                           NULL);
}

int tb__cluster_cancel(tb_app *app, const char *name, int timeout_ms, int local,
                       json_t **out)
{
    *out = NULL;
    if (local || !cl_ops(app))
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

/* Whether a task object of another instance's page is one f keeps: that
 * instance filtered already, but what crosses the bus is not ours to
 * trust (nor is it, from an older instance that ignores "kind"). Not for
 * our own page: the registry was filtered on the kind's bytes, while the
 * object shows them made UTF-8, so a second look could drop a task the
 * first kept. */
static int keeps(const tb__task_filter *f, json_t *t)
{
    if (!f)
        return 1;
    const char *st = json_string_value(json_object_get(t, "state"));
    if (f->state >= 0 &&
        (!st || strcmp(st, tb_task_state_name((tb_task_state)f->state))))
        return 0;
    json_t *k = json_object_get(t, "kind");
    return tb__task_kind_is(json_string_value(k), f->kind);
}

/* One instance's page: ours read directly, another's asked for. A new
 * array, or NULL: with *failed set when the instance did not answer, else
 * out of memory (the request could not even be made: not the instance's
 * fault). */
static json_t *page_of(tb_app *app, const char *inst, uint64_t from,
                       size_t need, const tb__task_filter *f, int *more,
                       int *failed)
{
    *more = *failed = 0;
    if (!strcmp(inst, app->instance))
        return tb__cl_local_page(app, from, need, f, more);
    json_t *req =
        json_pack("{s:s,s:I,s:I,s:i}", "op", "list", "after", (json_int_t)from,
                  "limit", (json_int_t)need, "state", f ? f->state : -1);
    if (req && f && f->kind &&
        json_object_set_new(req, "kind", json_string(f->kind))) {
        json_decref(req);
        req = NULL;
    }
    if (!req)
        return NULL;
    json_t *reply = NULL, *page = NULL;
    int rc =
        tb__cl_call1(app, inst, req, app->cfg.redis.command_timeout_ms, &reply);
    json_decref(req);
    if (rc == TB_ENOMEM)
        return NULL;
    if (rc == 0 && tb__cl_reply_status(reply) == 0 &&
        json_is_array(json_object_get(reply, "tasks"))) {
        page = json_incref(json_object_get(reply, "tasks"));
        *more = json_is_true(json_object_get(reply, "more"));
        if (json_array_size(page) > need) /* not ours to trust */
            *more = 1;
    } else {
        *failed = 1;
    }
    json_decref(reply);
    return page;
}

/* The first of ids[i..n) whose tasks f may keep (?instance= keeps one
 * instance's), or n. */
static size_t listed_from(const tb__task_filter *f, char (*ids)[INST_MAX],
                          size_t i, size_t n)
{
    while (i < n && f && f->instance && strcmp(ids[i], f->instance) != 0)
        i++;
    return i;
}

int tb__cluster_list(tb_app *app, const char *cursor, size_t limit,
                     const tb__task_filter *f, int local, json_t **tasks,
                     char *next, json_t **unreachable)
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
    if (local || !cl_ops(app))
        snprintf(ids[0], INST_MAX, "%s", app->instance);
    else
        n = tb__cl_live_instances(app, ids, SCATTER_MAX);
    /* ?instance=: that one only (when it is live). */
    for (size_t i = listed_from(f, ids, 0, n); i < n;
         i = listed_from(f, ids, i + 1, n)) {
        int cmp = start[0] ? strcmp(ids[i], start) : 1;
        if (cmp < 0)
            continue; /* before the cursor's instance */
        uint64_t from = cmp == 0 ? after : 0;
        size_t need = limit - json_array_size(*tasks);
        int mine = !strcmp(ids[i], app->instance), more, failed;
        json_t *page = page_of(app, ids[i], from, need, f, &more, &failed);
        if (failed) {
            json_array_append_new(*unreachable, json_string(ids[i]));
            continue;
        }
        if (!page)
            goto nomem;
        size_t k = 0, got = json_array_size(page);
        json_int_t seen = 0; /* the last task id looked at, kept or not */
        json_t *t;
        json_array_foreach(page, k, t)
        {
            if (json_array_size(*tasks) >= limit)
                break;
            seen = json_integer_value(json_object_get(t, "id"));
            if (mine || keeps(f, t))
                json_array_append(*tasks, t);
        }
        json_decref(page);
        if (json_array_size(*tasks) >= limit) {
            /* Full: the next page starts after the last task, here or at
             * the next instance the filter lets in (none: this was the
             * last page). */
            json_t *last = json_array_get(*tasks, json_array_size(*tasks) - 1);
            json_int_t lid = json_integer_value(json_object_get(last, "id"));
            size_t j = listed_from(f, ids, i + 1, n);
            if (more || k < got)
                snprintf(next, TB_CURSOR_MAX, "%s.%" JSON_INTEGER_FORMAT,
                         ids[i], lid);
            else if (j < n)
                snprintf(next, TB_CURSOR_MAX, "%s.0", ids[j]);
            break;
        }
        if (more && seen > 0) {
            /* The instance stopped short of need (its answer's byte bound,
             * or tasks it should not have sent): a short page, so that the
             * rest of this instance is not skipped. */
            snprintf(next, TB_CURSOR_MAX, "%s.%" JSON_INTEGER_FORMAT, ids[i],
                     seen);
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
    int rc = tb__cluster_list(app, cursor, limit, NULL, 0, &tasks, next,
                              &unreachable);
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
