/* api_batch.c - POST /events: dispatching a batch of events in one
 * request, all of them or (when one is refused) none. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "api.h"
#include "batch.h"
#include "http.h"
#include "internal.h"

/* The body's format from its Content-Type: application/json is an array,
 * application/x-ndjson (or jsonl) one item a line; none: an array when
 * the body starts with '[' (after a BOM and blanks), else NDJSON. 0 for any
 * other type. */
static int body_format(const char *ctype, const char *body, size_t len,
                       tb__batch_format *fmt)
{
    if (!ctype || !ctype[0]) {
        size_t i = tb__batch_bom(body, len);
        while (i < len && strchr(" \t\r\n", body[i]))
            i++;
        *fmt = i < len && body[i] == '[' ? TB__BATCH_ARRAY : TB__BATCH_NDJSON;
        return 1;
    }
    size_t n = strcspn(ctype, "; \t");
    static const struct {
        const char *type;
        tb__batch_format fmt;
    } types[] = {
        {"application/json", TB__BATCH_ARRAY},
        {"application/x-ndjson", TB__BATCH_NDJSON},
        {"application/ndjson", TB__BATCH_NDJSON},
        {"application/jsonl", TB__BATCH_NDJSON},
        {"application/x-jsonlines", TB__BATCH_NDJSON},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strlen(types[i].type) == n &&
            !strncasecmp(ctype, types[i].type, n)) {
            *fmt = types[i].fmt;
            return 1;
        }
    }
    return 0;
}

/* {"index": i, "line": l} of the item at fault (index null: the body). */
static json_t *where(size_t index, size_t line)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "index",
                        index == SIZE_MAX ? json_null()
                                          : json_integer((json_int_t)index));
    if (line)
        json_object_set_new(o, "line", json_integer((json_int_t)line));
    return o;
}

/* What is known of an event after the bus failed some: "published"
 * (confirmed), "refused" (Redis said no: not published), "not_replicated"
 * (published, but fewer than redis.wait_replicas replicas confirmed it) or
 * "unknown" (not confirmed in time or given up: it may be published). */
static int status_class(int st)
{
    return st == 0 ? 0 : st == TB_EIO ? 1 : st == TB_ENOTREPLICATED ? 3 : 2;
}

static const char *event_status(int st)
{
    static const char *const names[] = {"published", "refused", "unknown",
                                        "not_replicated"};
    return names[status_class(st)];
}

/* {"ids": [...], "status": [...]}: what became of each event after the
 * bus failed some (null id: never taken). */
static json_t *outcome(char (*ids)[TB_EVENT_ID_MAX], const int *status,
                       size_t n)
{
    json_t *o = json_object(), *ja = json_array(), *sa = json_array();
    if (!o || !ja || !sa) {
        json_decref(o);
        json_decref(ja);
        json_decref(sa);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(ja,
                              ids[i][0] ? json_string(ids[i]) : json_null());
        json_array_append_new(sa, json_string(event_status(status[i])));
    }
    json_object_set_new(o, "ids", ja);
    json_object_set_new(o, "status", sa);
    return o;
}

/* The message's subject for a batch the bus failed in part: each status
 * present, counted ("2 of the batch's 64 events (status "refused"), 62
 * (status "unknown")"). */
static void failed_what(const int *status, size_t n, char *what, size_t cap)
{
    size_t count[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < n; i++)
        count[status_class(status[i])]++;
    static const char *const names[] = {"published", "refused", "unknown",
                                        "not_replicated"};
    size_t at = (size_t)snprintf(what, cap, "%zu of the batch's %zu events",
                                 n - count[0], n);
    const char *sep = " (";
    for (int k = 1; k < 4 && at < cap; k++) {
        if (!count[k])
            continue;
        at += (size_t)snprintf(what + at, cap - at, "%s%zu \"%s\"", sep,
                               count[k], names[k]);
        sep = ", ";
    }
    if (at < cap && count[0])
        at += (size_t)snprintf(what + at, cap - at, "%s%zu \"published\"", sep,
                               count[0]);
    if (at < cap)
        snprintf(what + at, cap - at, "; see \"status\")");
}

/* Checks the client token's right to each name: nothing is dispatched
 * unless it may dispatch them all. 0, or the answer's return. */
static int check_rights(tb_http_req *req, const tb__batch *b, int *answered)
{
    *answered = 0;
    for (size_t i = 0; i < b->n; i++) {
        const char *name = b->items[i].name;
        if (tb__jwt_allows(req->claims, TB__JWT_DISPATCH, name))
            continue;
        char msg[TB__JWT_FORBIDDEN_MAX];
        tb__jwt_forbidden_message(req->claims, TB__JWT_DISPATCH, name, msg);
        json_t *extra = where(i, b->lines[i]);
        if (extra)
            json_object_set_new(extra, "pattern", json_string(name));
        *answered = 1;
        return tb__api_error_with(req, 403, "forbidden", extra,
                                  "item %zu: %s; nothing was dispatched", i,
                                  msg);
    }
    return 0;
}

int tb__api_batch_answer(tb_http_req *req, int rc, char (*ids)[TB_EVENT_ID_MAX],
                         const int *status, size_t n, size_t bad, size_t line,
                         int timeout_ms)
{
    const tb_app_config *cfg = tb_app_get_config(tb_http_app(req));
    size_t qmax = (size_t)cfg->redis.publish_queue_max;
    if (rc == 0) {
        json_t *o = json_object(), *ja = json_array();
        for (size_t i = 0; ja && i < n; i++)
            json_array_append_new(ja, json_string(ids[i]));
        if (o)
            json_object_set_new(o, "ids", ja);
        else
            json_decref(ja);
        return tb__api_respond(req, 202, o);
    }
    if (rc == TB_EMSGSIZE && bad == n)
        return tb__api_error_with(
            req, 413, "too_many_events", where(qmax, line),
            "the bus queues at most %d events (redis.publish_queue_max): a "
            "batch of %zu can never be taken; split it; nothing was "
            "dispatched",
            cfg->redis.publish_queue_max, n);
    if (bad < n)
        /* The parse checks what tb_dispatch_many does: kept in step. */
        return tb__api_error_with(req, rc == TB_EMSGSIZE ? 413 : 400,
                                  rc == TB_EMSGSIZE ? "too_large" : "bad_data",
                                  where(bad, line),
                                  "item %zu refused: %s; nothing was "
                                  "dispatched",
                                  bad, tb_strerror(rc));
    if (ids[0][0] == '\0')
        /* Not taken (503): nothing dispatched, no statuses to give. */
        return tb__api_bus_error(req, rc, timeout_ms, "the batch", NULL);
    char what[160];
    failed_what(status, n, what, sizeof what);
    return tb__api_bus_error(req, rc, timeout_ms, what,
                             outcome(ids, status, n));
}

/* Dispatches b's events and answers. b is freed (and emptied) once the bus
 * has the events, before the wait for its confirmations: a big body's
 * parse is not held while Redis answers. */
static int dispatch(tb_http_req *req, tb__batch *b)
{
    tb_app *app = tb_http_app(req);
    const tb_app_config *cfg = tb_app_get_config(app);
    size_t n = b->n;
    char(*ids)[TB_EVENT_ID_MAX] = malloc((n ? n : 1) * sizeof *ids);
    int *status = malloc((n ? n : 1) * sizeof *status);
    if (!ids || !status) {
        free(ids);
        free(status);
        tb__batch_free(b);
        return tb_http_error(req, 500, "internal", "out of memory");
    }
    int timeout_ms = cfg->redis.command_timeout_ms;
    size_t bad = n;
    tb__many *m;
    int rc = tb__dispatch_many_start(app, b->items, n, timeout_ms, ids, status,
                                     &bad, &m);
    size_t line = tb__api_batch_line(req, b, bad);
    tb__batch_free(b);
    if (rc == 0 && m)
        rc = tb__dispatch_many_wait(m, status);
    int ret =
        tb__api_batch_answer(req, rc, ids, status, n, bad, line, timeout_ms);
    free(ids);
    free(status);
    return ret;
}

size_t tb__api_batch_line(tb_http_req *req, const tb__batch *b, size_t bad)
{
    const tb_app_config *cfg = tb_app_get_config(tb_http_app(req));
    size_t qmax = (size_t)cfg->redis.publish_queue_max, n = b->n;
    return bad < n ? b->lines[bad] : qmax < n ? b->lines[qmax] : 0;
}

int tb__api_batch_enter(tb_http_req *req)
{
    tb_app *app = tb_http_app(req);
    int max = tb_app_get_config(app)->core.batch_max_concurrent;
    if (atomic_fetch_add(&app->batches_in, 1) < max)
        return 0;
    atomic_fetch_sub(&app->batches_in, 1);
    tb_http_error(req, 503, "busy",
                  "the service handles at most %d batches at "
                  "once (core.batch_max_concurrent); retry "
                  "later",
                  max);
    return req->status;
}

void tb__api_batch_leave(tb_app *app)
{
    atomic_fetch_sub(&app->batches_in, 1);
}

/* A batch's parse can take ~20 x max_event_size for one item's tree and
 * holds its events until the bus confirms them: core.batch_max_concurrent
 * bounds how many requests do so at once. */
int tb__api_post_batch(tb_http_req *req, void *ud)
{
    (void)ud;
    if (tb__api_batch_enter(req))
        return 0;
    tb__batch b;
    if (tb__api_batch_prepare(req, &b) == 0)
        dispatch(req, &b); /* it frees b */
    tb__api_batch_leave(tb_http_app(req));
    return 0;
}

int tb__api_batch_prepare(tb_http_req *req, tb__batch *b)
{
    tb_app *app = tb_http_app(req);
    const tb_app_config *cfg = tb_app_get_config(app);
    size_t len;
    const char *body = tb_http_body(req, &len);
    tb__batch_format fmt;
    if (!body_format(tb_http_header(req, "Content-Type"), body, len, &fmt)) {
        tb_http_error(req, 415, "bad_content_type",
                      "a batch is application/json (an array of "
                      "{\"name\", \"data\"} objects) or "
                      "application/x-ndjson (one object a line)");
        return req->status;
    }
    tb__batch_err e;
    if (tb__batch_parse(body, len, fmt, (size_t)cfg->core.batch_max_events,
                        cfg->core.max_event_size, cfg->core.json_max_depth, b,
                        &e) != 0) {
        tb__api_error_with(req, e.status, e.code, where(e.index, e.line),
                           "%s; nothing was dispatched", e.message);
        return req->status;
    }
    int answered;
    check_rights(req, b, &answered);
    if (!answered)
        return 0;
    tb__batch_free(b);
    return req->status;
}
