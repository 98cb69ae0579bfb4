/* api.c - the built-in JSON API: dispatch and wait for events, liveness
 * and readiness probes, the JSON pieces the API's modules share, and the
 * table of routes (the task routes are api_tasks.c's; see README).
 *
 * Handlers run on the HTTP server's threads; they may block (tb_task_cancel,
 * tb_dispatch_wait) but never run on a worker loop. Every JSON text is built
 * with jansson. */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "envelope.h"
#include "http.h"
#include "api.h"
#include "cluster.h"
#include "instances.h"
#include "internal.h"
#include "json.h"
#include "kinds.h"
#include "metrics.h"

#define HEALTH_DEADLINE_MS 1000
#define WAIT_TIMEOUT_MAX_S 300
#define WAIT_TIMEOUT_DEFAULT_MS 30000
#define WAIT_SUB_CAPACITY 64   /* events queued before the waiter takes one */
#define WAIT_SUBSCRIBE_MS 5000 /* for the wait task to start and subscribe */
#define WAIT_MARGIN_MS 1000    /* past its timeout, the task is stuck */
#define WAIT_SLICE_MS 100      /* how often a waiting handler checks stop */
#define WAIT_CANCEL_MS 1000    /* for a given-up wait task to end */

/* ---------------------------------------------------------------- JSON */

/* A JSON string of s. Task names may hold any bytes but controls: bytes
 * that are not UTF-8 become U+FFFD instead of losing the field. NULL on
 * ENOMEM. */
json_t *tb__api_jstr(const char *s)
{
    size_t n = strlen(s);
    if (tb__utf8_valid(s, n))
        return json_stringn(s, n);
    char *buf = malloc(3 * n + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (i + len <= n && tb__utf8_valid(s + i, len)) {
            memcpy(buf + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(buf, o);
    free(buf);
    return j;
}

/* A string, or null when s is empty. */
json_t *tb__api_jstr_or_null(const char *s)
{
    return s[0] ? tb__api_jstr(s) : json_null();
}

/* RFC 3339 UTC with microseconds ("2024-05-01T12:00:00.000001Z"), or null
 * for 0 (never happened). */
json_t *tb__api_jtime(int64_t us)
{
    if (us <= 0)
        return json_null();
    time_t sec = (time_t)(us / 1000000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm))
        return json_null();
    char date[32], buf[48];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, sizeof buf, "%s.%06dZ", date, (int)(us % 1000000));
    return json_string(buf);
}

json_t *tb__api_task_json(const tb_task_info *t)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "name", tb__api_jstr(t->name));
    json_object_set_new(o, "id", json_integer((json_int_t)t->id));
    json_object_set_new(o, "kind", tb__api_jstr(t->kind));
    json_object_set_new(o, "worker", json_integer(t->worker));
    json_object_set_new(o, "state", json_string(tb_task_state_name(t->state)));
    json_object_set_new(o, "created", tb__api_jtime(t->created_us));
    json_object_set_new(o, "started", tb__api_jtime(t->started_us));
    json_object_set_new(o, "ended", tb__api_jtime(t->ended_us));
    json_object_set_new(o, "result", json_integer(t->result));
    json_object_set_new(o, "error", tb__api_jstr_or_null(t->error));
    json_object_set_new(o, "cancel_requested",
                        json_boolean(t->cancel_requested));
    return o;
}

static json_t *bus_json(const tb_bus_info *b)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "name", tb__api_jstr(b->name));
    json_object_set_new(o, "state", json_string(tb_bus_state_name(b->state)));
    json_object_set_new(o, "since", tb__api_jtime(b->since_us));
    json_object_set_new(o, "attempts", json_integer((json_int_t)b->attempts));
    json_object_set_new(o, "reconnects",
                        json_integer((json_int_t)b->reconnects));
    json_object_set_new(o, "last_error", tb__api_jstr_or_null(b->last_error));
    json_object_set_new(o, "published", json_integer((json_int_t)b->published));
    json_object_set_new(o, "publish_failed",
                        json_integer((json_int_t)b->publish_failed));
    json_object_set_new(o, "received", json_integer((json_int_t)b->received));
    json_object_set_new(o, "duplicates",
                        json_integer((json_int_t)b->duplicates));
    json_object_set_new(o, "malformed", json_integer((json_int_t)b->malformed));
    json_object_set_new(o, "oversize", json_integer((json_int_t)b->oversize));
    json_object_set_new(o, "queued", json_integer(b->queued));
    return o;
}

int tb__api_respond(tb_http_req *req, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return tb_http_error(req, 500, "internal", "out of memory");
    int rc = tb_http_respond_json(req, status, s);
    free(s);
    return rc;
}

int tb__api_error_with(tb_http_req *req, int status, const char *code,
                       json_t *extra, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!extra)
        return tb_http_error(req, status, code, "%s", msg);
    /* not_ready is a probe's answer, expected while starting, stopping or
     * reconnecting (each logged on its own): not an error. */
    tb__log(status >= 500 && strcmp(code, "not_ready") != 0 ? TB_LOG_ERROR
                                                            : TB_LOG_INFO,
            "http %s %s (request %s): %d %s: %s", tb_http_method(req),
            tb_http_path(req), tb_http_request_id(req), status, code, msg);
    json_object_set_new(extra, "error", json_string(code));
    json_t *m = tb__api_jstr(msg);
    json_object_set_new(extra, "message", m);
    return tb__api_respond(req, status, extra);
}

/* ---------------------------------------------------------------- events */

/* Decimal seconds [0-9]+(.[0-9]+)? in 0..max_s, to ms (truncated). Parsed
 * by hand: strtod also takes "inf", hex, blanks, and depends on the
 * locale's decimal point. */
static int parse_timeout(const char *s, long max_s, int *ms)
{
    long sec = 0, frac_ms = 0;
    int digits = 0, frac_nonzero = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        sec = sec * 10 + (*p - '0');
        if (sec > max_s)
            return TB_EINVAL;
    }
    if (digits == 0)
        return TB_EINVAL;
    if (*p == '.') {
        int fd = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, fd++) {
            if (fd < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            frac_nonzero |= *p != '0';
        }
        if (fd == 0)
            return TB_EINVAL;
        for (; fd < 3; fd++)
            frac_ms *= 10;
    }
    if (*p || (sec == max_s && frac_nonzero))
        return TB_EINVAL;
    *ms = (int)(sec * 1000 + frac_ms);
    return 0;
}

int tb__api_query_timeout(tb_http_req *req, long max_s, int *ms)
{
    char tbuf[32];
    int rc = tb_http_query(req, "timeout", tbuf, sizeof tbuf);
    return rc == TB_ENOENT || (rc >= 0 && parse_timeout(tbuf, max_s, ms) == 0);
}

int tb__api_bad_timeout(tb_http_req *req, long max_s)
{
    return tb_http_error(req, 400, "bad_timeout",
                         "timeout must be a number of seconds in 0..%ld",
                         max_s);
}

int tb__api_event_check(tb_http_req *req, const char **name)
{
    *name = tb_http_param(req, "name");
    int rc = tb_event_name_valid(*name);
    if (rc)
        tb_http_error(req, 400, "bad_name",
                      "bad event name: %s (1..%d dot-separated "
                      "segments of [A-Za-z0-9_-], at most %d bytes)",
                      tb_strerror(rc), TB_EVENT_SEGMENTS_MAX,
                      TB_EVENT_NAME_MAX);
    else if (!tb__jwt_allows(req->claims, TB__JWT_DISPATCH, *name))
        tb__http_forbidden(req, TB__JWT_DISPATCH, *name);
    return req->status;
}

int tb__api_event_answer(tb_http_req *req, int rc, const char *id,
                         const char *name, int timeout_ms)
{
    if (rc == 0) {
        json_t *o = json_object();
        if (o) {
            json_object_set_new(o, "id", json_string(id));
            json_object_set_new(o, "name", json_string(name));
        }
        return tb__api_respond(req, 202, o);
    }
    const tb_app_config *cfg = tb_app_get_config(tb_http_app(req));
    switch (rc) {
    case TB_EINVAL: /* the name is valid: the data is not UTF-8 */
        return tb_http_error(req, 400, "bad_data",
                             "event data must be UTF-8 text (JSON "
                             "included); encode binary data first");
    case TB_ENAMETOOLONG:
        return tb_http_error(req, 400, "bad_name", "event name too long");
    case TB_EMSGSIZE: {
        size_t len;
        tb_http_body(req, &len);
        return tb_http_error(req, 413, "too_large",
                             "event data is %zu bytes; max_event_size is %zu",
                             len, cfg->core.max_event_size);
    }
    default: {
        char what[64];
        snprintf(what, sizeof what, "event %s", id);
        return tb__api_bus_error(req, rc, timeout_ms, what, NULL);
    }
    }
}

/* POST /events/{name}: the body is the event's data, as is. 202 once the
 * bus has confirmed it. (The front's twin: tb__api_post_event_start.) */
static int post_event(tb_http_req *req, void *ud)
{
    (void)ud;
    const char *name;
    if (tb__api_event_check(req, &name))
        return 0;
    size_t len;
    const void *data = tb_http_body(req, &len);
    tb_app *app = tb_http_app(req);
    int timeout_ms = tb_app_get_config(app)->redis.command_timeout_ms;
    char id[TB_EVENT_ID_MAX] = "";
    int rc = tb_dispatch_wait(app, name, data, len, timeout_ms, id);
    return tb__api_event_answer(req, rc, id, name, timeout_ms);
}

int tb__api_bus_error(tb_http_req *req, int rc, int timeout_ms,
                      const char *what, json_t *extra)
{
    tb_app *app = tb_http_app(req);
    tb_bus_info bus;
    switch (rc) {
    case TB_ENOTCONN:
        if (tb_bus_status(app, &bus) != 0)
            memset(&bus, 0, sizeof bus);
        return tb__api_error_with(
            req, 503, "bus_down", extra, "event bus %s is %s: %s; retry later",
            bus.name, tb_bus_state_name(bus.state),
            bus.last_error[0] ? bus.last_error : "no error recorded");
    case TB_ESHUTDOWN:
        return tb__api_error_with(req, 503, "shutting_down", extra,
                                  "the app is stopping or stopped");
    case TB_ENOSPC:
        return tb__api_error_with(
            req, 503, "busy", extra,
            "publish queue full (publish_queue_max %d events await the "
            "bus); retry later",
            tb_app_get_config(app)->redis.publish_queue_max);
    case TB_ENOTREPLICATED:
        return tb__api_error_with(
            req, 504, "not_replicated", extra,
            "%s was published, but fewer than redis.wait_replicas (%d) "
            "Redis replicas confirmed it within %d ms: a failover may lose "
            "it (do not resend blindly: it may have been delivered)",
            what, tb_app_get_config(app)->redis.wait_replicas,
            tb_app_get_config(app)->redis.wait_timeout_ms);
    case TB_ETIMEDOUT:
        return tb__api_error_with(req, 504, "publish_timeout", extra,
                                  "the bus did not confirm %s within %d ms; "
                                  "it may still be published",
                                  what, timeout_ms);
    case TB_EIO:
        return tb__api_error_with(req, 502, "publish_failed", extra,
                                  "the bus refused %s: not published", what);
    default:
        return tb__api_error_with(req, 500, "internal", extra,
                                  "dispatch failed: %s", tb_strerror(rc));
    }
}

/* ---- long poll ----
 *
 * Handlers run on server threads, and tb_sub_next only inside a task: a
 * GET /events/{pattern} adds a short-lived task (kind "http.wait", named
 * "http.wait:<request id>") that subscribes, tells the handler, waits for
 * one event and hands it over. The waiter below is shared by both and freed
 * by whichever lets go last: the handler gives up (on stop, or if the task's
 * worker is stuck) while the task may still be about to answer. */
typedef struct waiter {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    char pattern[TB__ROUTE_VALUE_MAX + 1];
    int timeout_ms;
    char since[TB_POS_MAX]; /* resume after it ("": live only) */
    tb_sub_recovery lost;   /* rc TB_SUB_LIVE: since was not recovered */
    /* under mu */
    int subscribed;        /* 1, or the tb_sub_open error */
    int64_t subscribed_us; /* tb__mono_us() then */
    int done;              /* the wait is over: rc and ev are set */
    int rc;                /* tb_sub_next's */
    int hist_failed;       /* rc is of reading the history (resume, replay),
                              not of the wait */
    tb_event *ev;          /* on rc 0; owned by the waiter until taken */
    int task_ended;        /* the task's arg_free ran */
} waiter;

static void waiter_unref(waiter *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    tb_event_unref(w->ev);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* The task's arg_free: runs when the task has ended, even if it never ran
 * (cancelled while pending), so the handler never waits for nothing. */
static void waiter_task_release(void *arg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->task_ended = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    waiter_unref(w);
}

/* The "http.wait" task. The subscription is open before the handler hears
 * of it, so an event dispatched from then on is not missed. */
static int wait_task(tb_task *self, void *arg)
{
    waiter *w = arg;
    int err = 0;
    tb_sub *sub = tb_sub_open(self, w->pattern, WAIT_SUB_CAPACITY, &err);
    pthread_mutex_lock(&w->mu);
    w->subscribed = sub ? 1 : err ? err : TB_ENOMEM;
    w->subscribed_us = tb__mono_us();
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (!sub) {
        tb_task_fail(self, "cannot subscribe to %s: %s", w->pattern,
                     tb_strerror(err));
        return 1;
    }
    tb_event *ev = NULL;
    int rc = w->since[0] ? tb_sub_resume(self, sub, w->since) : 0;
    /* Until TB_SUB_LIVE, an error is the history's: a replay does not
     * wait, so its TB_ETIMEDOUT is a read's, not the poll's. */
    int replaying = w->since[0] != 0,
        hist_failed = rc != 0 && rc != TB_ECANCELED;
    int64_t end_us = tb__mono_us() + (int64_t)w->timeout_ms * 1000;
    while (rc == 0) {
        int64_t left_ms = (end_us - tb__mono_us()) / 1000;
        rc = tb_sub_next(self, sub, left_ms > 0 ? (int)left_ms : 0, &ev);
        if (replaying && rc != 0 && rc != TB_SUB_LIVE && rc != TB_ECANCELED)
            hist_failed = 1;
        if (rc != TB_SUB_LIVE)
            break;
        replaying = 0;
        /* The history had nothing after since: wait for a live one. */
        tb_sub_recovery_info(sub, &w->lost);
        if (w->lost.recovered)
            rc = 0;
    }
    tb_sub_close(sub);
    pthread_mutex_lock(&w->mu);
    w->rc = rc;
    w->hist_failed = hist_failed;
    w->ev = rc == 0 ? ev : NULL;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* An event's data as JSON: the value itself when it is a JSON object or
 * array, else a string. */
static json_t *event_data_json(const tb_event *ev)
{
    size_t len;
    const char *d = tb_event_data(ev, &len);
    size_t i = 0;
    while (i < len &&
           (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n'))
        i++;
    if (i < len && (d[i] == '{' || d[i] == '[')) {
        json_error_t jerr;
        json_t *v = tb__json_loadb(d, len, JSON_ALLOW_NUL, ev->max_depth - 1,
                                   &jerr); /* objects, arrays only */
        if (v)
            return v;
    }
    if (tb__utf8_valid(d, len))
        return json_stringn(d, len);
    return tb__api_jstr(d); /* not UTF-8 (a foreign publisher): U+FFFD */
}

static json_t *event_json(const tb_event *ev)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "id", tb__api_jstr(tb_event_id(ev)));
    json_object_set_new(o, "name", tb__api_jstr(tb_event_name(ev)));
    json_object_set_new(o, "data", event_data_json(ev));
    json_object_set_new(o, "ts", json_integer(tb_event_ts_us(ev)));
    json_object_set_new(o, "origin", tb__api_jstr(tb_event_origin(ev)));
    if (tb_event_pos(ev)[0])
        json_object_set_new(o, "pos", json_string(tb_event_pos(ev)));
    return o;
}

/* Adds the wait task, named after the request (a reused X-Request-ID that a
 * live wait holds gets a suffix). *name gets the name. */
static int wait_task_add(tb_http_req *req, waiter *w, char *name, size_t size,
                         uint64_t *id)
{
    tb_app *app = tb_http_app(req);
    snprintf(name, size, "http.wait:%s", tb_http_request_id(req));
    tb_task_opts o;
    memset(&o, 0, sizeof o);
    o.worker = TB_WORKER_ANY;
    o.kind = "http.wait";
    o.flags = TB_TASK_EPHEMERAL | TB__TASK_LOCAL; /* no finished entry
                                                  per request */
    o.ud_free = waiter_task_release;
    o.name = name;
    int rc = tb__task_add(app, wait_task, w, &o, NULL, id);
    if (rc == TB_EEXIST) {
        snprintf(name, size, "http.wait:%s-%" PRIu64, tb_http_request_id(req),
                 (uint64_t)atomic_fetch_add(&app->event_seq, 1) + 1);
        rc = tb__task_add(app, wait_task, w, &o, NULL, id);
    }
    return rc;
}

/* The long poll's wait: a task waits for the event, this server thread
 * for the task. Every slice it checks whether the app is stopping (the
 * server's stop waits for this handler) and whether the client has gone
 * (then the task is cancelled at once: nobody would get its answer). */
static int wait_answer(tb_http_req *req, tb_app *app, const char *pattern,
                       const char *since, int timeout_ms)
{
    waiter *w = calloc(1, sizeof *w);
    if (!w)
        return tb_http_error(req, 500, "internal", "out of memory");
    atomic_init(&w->refs, 2); /* the handler's, the task's */
    pthread_mutex_init(&w->mu, NULL);
    tb__cond_init_mono(&w->cv);
    snprintf(w->pattern, sizeof w->pattern, "%s", pattern);
    snprintf(w->since, sizeof w->since, "%s", since);
    w->timeout_ms = timeout_ms;

    char name[TB_TASK_NAME_MAX + 1];
    uint64_t task_id = 0;
    int rc = wait_task_add(req, w, name, sizeof name, &task_id);
    if (rc) {
        waiter_unref(w); /* arg_free is not called on error */
        waiter_unref(w);
        if (rc == TB_ESHUTDOWN)
            return tb_http_error(req, 503, "shutting_down",
                                 "the app is stopping or stopped");
        return tb_http_error(req, 500, "internal", "cannot start the wait: %s",
                             tb_strerror(rc));
    }

    int64_t start_us = tb__mono_us();
    int stopping = 0, stuck = 0, logged = 0, gone = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->done && !w->task_ended) {
        if (atomic_load(&app->state) != TB__APP_RUNNING) {
            stopping = 1;
            break;
        }
        if (w->subscribed == 1 && !logged) {
            logged = 1;
            tb__log(TB_LOG_DEBUG,
                    "http GET %s (request %s): waiting up to %d ms in task %s",
                    tb_http_path(req), tb_http_request_id(req), timeout_ms,
                    name);
        }
        int64_t deadline_us =
            w->subscribed == 1
                ? w->subscribed_us +
                      (int64_t)(timeout_ms + WAIT_MARGIN_MS) * 1000
                : start_us + (int64_t)WAIT_SUBSCRIBE_MS * 1000;
        int64_t left_ms = (deadline_us - tb__mono_us()) / 1000;
        if (left_ms <= 0) {
            stuck = 1;
            break;
        }
        struct timespec ts;
        tb__deadline_ts(&ts,
                        left_ms < WAIT_SLICE_MS ? (int)left_ms : WAIT_SLICE_MS);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        if (w->done || w->task_ended)
            break;
        pthread_mutex_unlock(&w->mu); /* a syscall or two */
        gone = tb__http_client_gone(req);
        pthread_mutex_lock(&w->mu);
        if (gone)
            break;
    }
    int done = w->done, ended = w->task_ended, sub_rc = w->subscribed;
    int wait_rc = w->rc, hist_failed = w->hist_failed;
    tb_sub_recovery lost = w->lost;
    tb_event *ev = w->ev;
    w->ev = NULL;
    pthread_mutex_unlock(&w->mu);
    if (!done && !ended) {
        /* Given up: the task must not outlive the request for long. By id
         * too: had it just ended, its name could already be another
         * request's (a client's X-Request-ID names it). */
        int crc = tb__task_cancel_report(app, name, task_id, WAIT_CANCEL_MS,
                                         NULL, NULL);
        if (crc != 0 && crc != TB_ENOENT)
            tb__log(TB_LOG_WARN, "http: cancel of wait task %s: %s", name,
                    tb_strerror(crc));
    }
    waiter_unref(w);

    if (gone) {
        tb_event_unref(ev); /* came too late: nobody to give it to */
        atomic_fetch_add(&app->http_longpolls_abandoned, 1);
        tb__log(TB_LOG_DEBUG,
                "http GET %s (request %s): the client closed the connection "
                "after %lld ms; wait task %s cancelled",
                tb_http_path(req), tb_http_request_id(req),
                (long long)((tb__mono_us() - start_us) / 1000), name);
        return tb__http_abandon(req);
    }
    if (done && wait_rc == 0) {
        /* The envelope, as websockets and Redis carry it (ts in µs). */
        const char *env = tb_event_json(ev, NULL);
        if (env) {
            int rc = tb_http_respond_json(req, 200, env);
            tb_event_unref(ev);
            return rc;
        }
        json_t *o = event_json(ev); /* data not UTF-8: made readable */
        tb_event_unref(ev);
        return tb__api_respond(req, 200, o);
    }
    if (done && hist_failed)
        return tb__api_history_error(req, wait_rc);
    if (done && wait_rc == TB_ETIMEDOUT)
        return tb_http_respond(req, 204, NULL, "", 0);
    if (done && wait_rc == TB_SUB_LIVE)
        return tb__api_error_with(
            req, 410, "history_gone",
            tb__api_recovery_json(0, lost.pos, lost.epoch),
            "events after %s are no longer all in the history (or it is of "
            "another epoch): reload, then poll with since=pos",
            since);
    if (done && wait_rc != TB_ECANCELED)
        return tb_http_error(req, 500, "internal", "cannot resume: %s",
                             tb_strerror(wait_rc));
    if (sub_rc < 0)
        return tb_http_error(req, 500, "internal", "cannot subscribe: %s",
                             tb_strerror(sub_rc));
    if (stuck)
        return tb_http_error(req, 503, "worker_stuck",
                             "the wait task %s did not answer within %d ms "
                             "of its timeout (a worker loop is blocked?)",
                             name, WAIT_MARGIN_MS);
    if (stopping || atomic_load(&app->state) != TB__APP_RUNNING)
        return tb_http_error(req, 503, "shutting_down",
                             "the app is stopping or stopped");
    return tb_http_error(req, 503, "cancelled",
                         "the wait task %s was cancelled", name);
}

/* GET /events/{pattern}[?timeout=S]: the next event matching pattern within
 * S seconds: 200 with it, 204 on timeout. */
static int wait_event(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    const char *pattern = tb_http_param(req, "pattern");
    const char *why = tb__pattern_problem(pattern);
    if (why)
        return tb_http_error(req, 400, "bad_pattern",
                             "bad event pattern \"%.210s\": %s; a pattern is "
                             "1..%d " TB__PATTERN_SYNTAX,
                             pattern ? pattern : "", why,
                             TB_EVENT_SEGMENTS_MAX);
    if (!tb__jwt_allows(req->claims, TB__JWT_SUBSCRIBE, pattern))
        return tb__http_forbidden(req, TB__JWT_SUBSCRIBE, pattern);
    int timeout_ms = WAIT_TIMEOUT_DEFAULT_MS;
    int rc;
    if (!tb__api_query_timeout(req, WAIT_TIMEOUT_MAX_S, &timeout_ms))
        return tb__api_bad_timeout(req, WAIT_TIMEOUT_MAX_S);
    char since[TB_POS_MAX];
    if (tb__api_since(req, since) != 0)
        return 0;
    if (req->claims) {
        /* The client's rights end with its token: so does its wait (204,
         * as any wait that times out). */
        int64_t left_ms = (req->claims->until_us - tb__now_us()) / 1000;
        if (left_ms < timeout_ms)
            timeout_ms = left_ms > 0 ? (int)left_ms : 0;
    }
    int st = atomic_load(&app->state);
    if (st == TB__APP_NEW || st == TB__APP_STARTING)
        return tb_http_error(req, 503, "not_running",
                             "the app's workers are not running");
    if (st != TB__APP_RUNNING)
        return tb_http_error(req, 503, "shutting_down",
                             "the app is stopping or stopped");

    /* Each waiting long poll holds an HTTP thread: past http_longpoll_max
     * (below http_threads) other requests would find none left. */
    int max = app->cfg.http.longpoll_max;
    if (atomic_fetch_add(&app->http_longpolls, 1) >= max) {
        atomic_fetch_sub(&app->http_longpolls, 1);
        atomic_fetch_add(&app->http_longpolls_refused, 1);
        tb__http_close_after(req); /* its thread is wanted */
        char msg[224];
        snprintf(msg, sizeof msg,
                 "%d long polls are waiting, the limit (http_longpoll_max); "
                 "retry later, or subscribe on a websocket (GET /ws)",
                 max);
        return tb__http_error_headers(req, 503, "too_many_waits",
                                      "Retry-After: 1\r\n", msg);
    }
    rc = wait_answer(req, app, pattern, since, timeout_ms);
    atomic_fetch_sub(&app->http_longpolls, 1);
    return rc;
}

/* ---------------------------------------------------------------- health */

/* Shared by a /healthz request and the calls it posts to the workers:
 * freed by whichever lets go last, since a stuck worker answers (if ever)
 * after the request gave up waiting. The front's requests (healthz_start)
 * are told by done; the others wait on cv. */
typedef struct probe {
    tb__http_work base; /* first: healthz_start's handle on it */
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;            /* workers that have not answered */
    int n;                  /* workers asked */
    void (*done)(void *ud); /* under mu; NULL once the answer has begun */
    void *ud;
    unsigned char answered[]; /* per worker */
} probe;

static void probe_unref(probe *p)
{
    if (atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void probe_drop(void *arg)
{
    probe_unref(arg);
}

/* Runs on worker's loop. */
static void probe_answer(tb_app *app, int worker, void *arg)
{
    (void)app;
    probe *p = arg;
    pthread_mutex_lock(&p->mu);
    p->answered[worker] = 1;
    if (--p->pending == 0) {
        if (p->done) {
            p->done(p->ud);
            p->done = NULL;
        }
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    probe_unref(p);
}

/* 503 not_running unless the workers' loops run: a worker whose loop has
 * exited would never run the call (the server stops before the workers
 * do). Then a probe posted to every worker (done(ud) told when the last
 * has answered, or NULL), or NULL with req answered. */
static probe *probe_start(tb_http_req *req, void (*done)(void *), void *ud)
{
    tb_app *app = tb_http_app(req);
    int st = atomic_load(&app->state);
    if (st != TB__APP_RUNNING && st != TB__APP_STOPPING) {
        tb_http_error(req, 503, "not_running",
                      "the app's workers are not running");
        return NULL;
    }
    int n = app->nworkers;
    probe *p = calloc(1, sizeof *p + (size_t)n);
    if (!p) {
        tb_http_error(req, 500, "internal", "out of memory");
        return NULL;
    }
    atomic_init(&p->refs, 1);
    pthread_mutex_init(&p->mu, NULL);
    tb__cond_init_mono(&p->cv);
    p->pending = p->n = n;
    p->done = done;
    p->ud = ud;
    p->base.timeout_ms = HEALTH_DEADLINE_MS;
    /* Under mu: a worker that answers at once must not tell done before
     * the caller has the probe (healthz_start returns it as *work). */
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < n; i++) {
        atomic_fetch_add(&p->refs, 1);
        if (tb__worker_call(&app->workers[i], probe_answer, probe_drop, p)) {
            atomic_fetch_sub(&p->refs, 1);
            tb__log(TB_LOG_ERROR, "healthz: cannot post to worker %d", i);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return p;
}

/* The answer from what p has seen: 200 {"status": "ok", "workers"}, or 503
 * worker_stuck naming the workers that have not answered. Ends the
 * caller's hold on p. */
static int probe_respond(tb_http_req *req, probe *p)
{
    pthread_mutex_lock(&p->mu);
    p->done = NULL; /* never told after this */
    int n = p->n, ok = p->pending == 0;
    json_t *stuck = ok ? NULL : json_array();
    char names[256] = "";
    size_t used = 0;
    for (int i = 0; !ok && i < n; i++) {
        if (p->answered[i])
            continue;
        json_array_append_new(stuck, json_integer(i));
        if (used < sizeof names)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%d",
                                     used ? ", " : "", i);
    }
    pthread_mutex_unlock(&p->mu);
    probe_unref(p);

    if (!ok) {
        json_t *extra = json_object();
        if (extra) {
            json_object_set_new(extra, "workers", json_integer(n));
            json_object_set_new(extra, "stuck", stuck);
        } else {
            json_decref(stuck);
        }
        return tb__api_error_with(req, 503, "worker_stuck", extra,
                                  "worker(s) %s did not answer within %d ms",
                                  names, HEALTH_DEADLINE_MS);
    }
    json_t *o = json_object();
    if (o) {
        json_object_set_new(o, "status", json_string("ok"));
        json_object_set_new(o, "workers", json_integer(n));
    }
    return tb__api_respond(req, 200, o);
}

/* GET /healthz: every worker loop runs a posted call within the deadline. */
static int healthz(tb_http_req *req, void *ud)
{
    (void)ud;
    probe *p = probe_start(req, NULL, NULL);
    if (!p)
        return req->status;
    struct timespec ts;
    tb__deadline_ts(&ts, HEALTH_DEADLINE_MS);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0 &&
           pthread_cond_timedwait(&p->cv, &p->mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&p->mu);
    return probe_respond(req, p);
}

/* The front's twin (tb__http_start_fn): the answer is made when the last
 * worker has answered (done), or at base.timeout_ms (why TB_ETIMEDOUT),
 * on the front's thread, with healthz's answers. */
static int probe_work_answer(tb_http_req *req, tb__http_work *w, int why)
{
    probe *p = (probe *)w;
    if (why == TB__HTTP_GONE) { /* release lets go */
        /* Unlike a publish, a probe holds nothing of the client's: done
         * now, so that the caller frees its place (the front's
         * http.threads slots) instead of holding it until a stuck worker
         * answers, if ever. */
        pthread_mutex_lock(&p->mu);
        if (p->done) {
            p->done(p->ud);
            p->done = NULL;
        }
        pthread_mutex_unlock(&p->mu);
        tb__http_abandon(req);
        return req->status;
    }
    return probe_respond(req, p);
}

static void probe_work_release(tb__http_work *w)
{
    probe *p = (probe *)w;
    pthread_mutex_lock(&p->mu);
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    probe_unref(p);
}

static int healthz_start(tb_http_req *req, void (*done)(void *ud), void *ud,
                         tb__http_work **work)
{
    *work = NULL;
    probe *p = probe_start(req, done, ud);
    if (!p)
        return req->status;
    p->base.answer = probe_work_answer;
    p->base.release = probe_work_release;
    *work = &p->base;
    return 0;
}

/* GET /readyz: running, and the bus connected. */
static int readyz(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    tb_bus_info bus;
    if (tb_bus_status(app, &bus) != 0)
        return tb_http_error(req, 500, "internal", "no bus status");
    if (tb_app_is_running(app) && bus.state == TB_BUS_CONNECTED) {
        json_t *o = json_object();
        if (o) {
            json_object_set_new(o, "status", json_string("ready"));
            json_object_set_new(o, "bus", bus_json(&bus));
        }
        return tb__api_respond(req, 200, o);
    }
    char reason[320];
    int st = atomic_load(&app->state);
    if (st == TB__APP_NEW || st == TB__APP_STARTING)
        snprintf(reason, sizeof reason, "starting");
    else if (st != TB__APP_RUNNING)
        snprintf(reason, sizeof reason, "stopping");
    else
        snprintf(reason, sizeof reason, "bus %s%s%s",
                 tb_bus_state_name(bus.state), bus.last_error[0] ? ": " : "",
                 bus.last_error);
    json_t *extra = json_object();
    if (extra)
        json_object_set_new(extra, "bus", bus_json(&bus));
    return tb__api_error_with(req, 503, "not_ready", extra, "%s", reason);
}

/* ---------------------------------------------------------------- routes */

int tb_app_add_api(tb_app *app)
{
    /* With an API token: the probes stay open, and the event routes also
     * take client tokens (they check the claims). */
    static const struct {
        const char *method, *path;
        tb_http_fn fn;
        tb__http_access access;
        tb__http_start_fn start; /* the front's twin of fn, or NULL */
    } routes[] = {
        {"POST", "/events", tb__api_post_batch, TB__HTTP_CLIENT,
         tb__api_post_batch_start},
        {"POST", "/events/{name}", post_event, TB__HTTP_CLIENT,
         tb__api_post_event_start},
        {"GET", "/events/{pattern}", wait_event, TB__HTTP_CLIENT, NULL},
        {"GET", "/healthz", healthz, TB__HTTP_OPEN, healthz_start},
        {"GET", "/readyz", readyz, TB__HTTP_OPEN, NULL},
        {"GET", "/metrics", tb__metrics_handler, TB__HTTP_ADMIN, NULL},
        {"GET", "/instances", tb__instances_handler, TB__HTTP_ADMIN, NULL},
        {"GET", "/stats", tb__stats_handler, TB__HTTP_ADMIN, NULL},
    };
    /* GET, DELETE /tasks/{name}, GET /tasks, POST /tasks/purge
     * (api_tasks.c), then the rest. */
    int rc = tb__api_register_tasks(app);
    for (size_t i = 0; rc == 0 && i < sizeof routes / sizeof routes[0]; i++)
        rc = routes[i].start
                 ? tb__app_route_async(app, routes[i].method, routes[i].path,
                                       routes[i].fn, routes[i].start,
                                       routes[i].access)
                 : tb__app_route_as(app, routes[i].method, routes[i].path,
                                    routes[i].fn, NULL, routes[i].access);
    if (rc == 0)
        rc = tb__api_register_ws(app);
    if (rc == 0)
        rc = tb__api_register_sse(app);
    if (rc == 0)
        rc = tb__api_register_history(app);
    if (rc)
        return rc;
    /* POST /tasks: spawning task kinds by name (kinds.c). */
    return tb__api_register_kinds(app);
}
