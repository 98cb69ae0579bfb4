/* api_ws.c - the built-in websocket endpoint, GET /ws?events=p1,p2.
 *
 * Each connection is a handler task ("ws:<request id>") that reads the
 * client's messages and holds the connection's subscription, which sends
 * every matching event as its JSON envelope from the worker's loop as it
 * is queued (no task waits for events: an idle connection holds one
 * task). A connection with ?since= also has a receiver task
 * ("receiver:<request id>", the Sanic pattern) while the history is
 * replayed (the replay waits for the client); once live, it hands the
 * subscription to the handler and ends. The client may send, as JSON
 * text:
 *   {"event": "name", "data": <any>}   dispatch (answered once published)
 *   {"subscribe": ["pattern", ...]}     add patterns
 *   {"unsubscribe": ["pattern", ...]}   remove patterns
 * each with an optional "ref" (any JSON value) echoed in the answer:
 *   {"ok": "dispatch", "id": "...", "name": "...", "ref": ...}
 *   {"ok": "subscribe" | "unsubscribe", "patterns": [...current...]}
 *     and, with history on, in a subscribe's answer "pos": a position
 *     read off the history's end after the patterns were in place, so
 *     that every event after it matching the connection's patterns (as
 *     of the answer) is delivered on this connection. A client that has
 *     no position yet (a fresh connection: send {"subscribe": []} first)
 *     resumes from it after a drop before its first event. Absent when
 *     the namespace has no event yet or the bus could not answer; live
 *     events at or before it may still follow (they were on their way).
 *   {"error": "<code>", "message": "...", "ref": ...}
 * Events are objects with "id" and "name" and never "ok" or "error".
 * With ?since=<pos> (history on, docs/HISTORY.md), the history's matching
 * events after pos come first, then once
 *   {"recovered": true|false, "pos": "...", "epoch": "..."}
 * then the live events (none of them again). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "http.h"
#include "internal.h"
#include "json.h"
#include "client_token.h"
#include "history.h"
#include "ws.h"

typedef struct conn_state {
    tb_ws *ws;
    tb_sub *sub;     /* the receiver's, once it runs */
    int ready;       /* the receiver has opened sub */
    char **patterns; /* current patterns, as the client gave them */
    int npatterns;
    int cap;
    char since[TB_POS_MAX]; /* ?since=: resume after it ("": don't) */
    int patterns_added;     /* the handler added ?events= */
    int replaying;          /* the receiver replays the history */
    int receiver_gone;      /* the receiver task has ended (or never ran) */
    int handler_done;       /* the handler is cleaning up */
    tb_task *handler;       /* the handler's task */
    int own_sub;            /* sub is the handler's: on_events delivers */
    int draining;           /* in on_events */
    int delivery_done;      /* on_events: no more events for this client */
} conn_state;

/* ---------------------------------------------------------------- receiver */

/* ?since=: once the handler has added the ?events= patterns, the
 * subscription resumes after since (the history's events first, then
 * {"recovered", "pos", "epoch"}, then live ones). 0, or the error told to
 * the client (the connection is then closed). */
static int resume(tb_task *self, conn_state *st)
{
    int rc = 0;
    while (!st->patterns_added && rc == 0)
        rc = tb_yield(self);
    if (rc == 0)
        rc = tb_sub_resume(self, st->sub, st->since);
    if (rc == 0) {
        st->replaying = 1;
        return 0;
    }
    if (rc == TB_ECANCELED)
        return rc;
    char msg[192];
    snprintf(msg, sizeof msg,
             "{\"error\":\"%s\",\"message\":\"cannot resume after %s: "
             "%s\"}",
             rc == TB_ENOTCONN || rc == TB_ETIMEDOUT || rc == TB_EAGAIN
                 ? "bus_unavailable"
                 : "resume_failed",
             st->since, tb_strerror(rc));
    tb_ws_send(st->ws, TB_WS_TEXT, msg, strlen(msg));
    tb_ws_close(st->ws, 1011, "cannot resume");
    return rc;
}

/* The replay is over: {"recovered": bool, "pos", "epoch"}. */
static int send_recovery(conn_state *st)
{
    tb_sub_recovery info;
    st->replaying = 0;
    if (tb_sub_recovery_info(st->sub, &info) != 0)
        return 0;
    json_t *o = tb__api_recovery_json(info.recovered, info.pos, info.epoch);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int rc = s ? tb_ws_send(st->ws, TB_WS_TEXT, s, strlen(s)) : TB_ENOMEM;
    free(s);
    return rc;
}

/* ev is larger than the whole send queue. Skipped, the next event's "pos"
 * would carry a resuming client past it: with history, closed before it
 * (1009; each resume meets it again until ws_send_queue_bytes is raised:
 * tb_app_new makes room for max_event_size). 1 if closed. */
static int too_large(conn_state *st, const tb_event *ev, int history)
{
    size_t len;
    tb_event_json(ev, &len);
    tb__log(TB_LOG_WARN,
            "ws /ws (request %s): event %s (%s, %zu bytes as JSON) is larger "
            "than ws_send_queue_bytes: %s",
            tb_ws_request_id(st->ws), tb_event_id(ev), tb_event_name(ev), len,
            history ? "closing the connection before it" : "not sent");
    if (history)
        tb_ws_close(st->ws, 1009,
                    "an event is larger than the send queue "
                    "(ws_send_queue_bytes)");
    return history;
}

/* Sends ev (the caller's reference, taken) to the client. 0, or 1 when
 * the connection takes no more events: closed, closing as a slow client
 * (1008), or closed before ev (too_large). */
static int deliver(conn_state *st, tb_event *ev, int history)
{
    int rc = tb_ws_send_event(st->ws, ev);
    int closed = rc == TB_EMSGSIZE && too_large(st, ev, history);
    tb_event_unref(ev);
    return closed || rc == TB_EPIPE || rc == TB_ENOSPC;
}

/* The connection's subscription, once it is the handler task's (from the
 * start, or after a ?since= replay), calls this on the worker as each
 * event is queued, so no task waits for its events (an idle connection
 * holds one task, not two). A delivery that waits for nothing needs no
 * task: sending only queues the frame, and the slow-client rule bounds
 * that queue. So the subscription never holds more than what one
 * delivery queues, and never drops: a client that cannot keep up is
 * closed as a slow client instead (1008), and resuming with the last
 * "pos" it got misses nothing. */
static void on_events(void *arg)
{
    conn_state *st = arg;
    if (st->draining)
        return; /* a send delivered more: the loop below takes it */
    st->draining = 1;
    int history = tb_app_get_config(tb_ws_app(st->ws))->core.history_size > 0;
    tb_event *ev;
    while (tb__sub_pop(st->sub, &ev) == 0) {
        if (st->delivery_done)
            tb_event_unref(ev);
        else
            st->delivery_done = deliver(st, ev, history);
    }
    st->draining = 0;
}

/* A connection with ?since=: the receiver task replays the history at the
 * client's pace (it waits for the send queue to drain), then hands the
 * subscription over to the handler (on_events) and ends. */
static int receiver(tb_task *self, void *arg)
{
    conn_state *st = arg;
    int err;
    /* Room for as many events as the client's send queue: beyond that the
     * client is too slow anyway. */
    tb_app *app = tb_ws_app(st->ws);
    tb_sub *sub = tb_sub_open(self, NULL,
                              tb_app_get_config(app)->ws.send_queue_msgs, &err);
    if (!sub)
        return err; /* receiver_gone tells the handler */
    st->sub = sub;
    st->ready = 1;
    int history = tb_app_get_config(app)->core.history_size > 0;
    if (resume(self, st) != 0)
        goto out;
    for (;;) {
        tb_event *ev;
        int rc = tb_sub_next(self, sub, -1, &ev);
        if (rc == TB_SUB_LIVE) {
            rc = send_recovery(st);
            if (rc == TB_EPIPE || rc == TB_ENOSPC || st->handler_done)
                break;
            /* Live: the rest needs no task, as without ?since=. The
             * handler takes the subscription over and this task ends. */
            tb__sub_move(sub, st->handler);
            tb__sub_notify(sub, on_events, st);
            st->own_sub = 1;
            on_events(st); /* what came meanwhile */
            tb__resume_settle(sub);
            return 0;
        }
        if (rc)
            break; /* cancelled: the connection is done */
        /* A replay goes at the client's pace: it could otherwise fill the
         * send queue at once, and be closed as a slow client. */
        if (st->replaying && tb__ws_wait_drained(self, st->ws) != 0) {
            tb_event_unref(ev);
            break;
        }
        if (deliver(st, ev, history))
            break;
    }
out:
    st->sub = NULL; /* closed with this task */
    /* Cancelled from outside (DELETE /tasks/receiver:<id>) while the
     * connection is open: it could not get events any more, so close it
     * (the handler then cleans up). A no-op when the handler is closing. */
    if (!st->handler_done && tb_app_is_running(tb_ws_app(st->ws)))
        tb_ws_close(st->ws, 1011, "the receiver task ended");
    return 0;
}

/* ---------------------------------------------------------------- replies */

static void send_json(tb_ws *ws, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s) {
        tb_ws_send(ws, TB_WS_TEXT, s, strlen(s));
        free(s);
    }
    json_decref(o);
}

/* {"error": code, "message": msg, "ref": ref}. msg may quote the client's
 * text cut short by a "%.64s" (in the middle of a character): such bytes
 * become U+FFFD rather than losing the message. NULL on ENOMEM. */
static json_t *error_json(json_t *ref, const char *code, const char *msg)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "error", json_string(code));
    json_object_set_new(o, "message", tb__api_jstr(msg));
    if (ref)
        json_object_set(o, "ref", ref);
    return o;
}

/* Logs and sends {"error": code, "message": msg} with "pattern" (when not
 * NULL) and "ref" (when the message had one). */
static void reply_error_with(tb_ws *ws, json_t *ref, const char *code,
                             const char *pattern, const char *msg)
{
    const char *sub = tb__ws_sub(ws);
    tb__log(TB_LOG_INFO, "ws /ws (request %s%s%s%s): %s: %s",
            tb_ws_request_id(ws), sub[0] ? ", sub \"" : "", sub,
            sub[0] ? "\"" : "", code, msg);
    json_t *o = error_json(ref, code, msg);
    if (o && pattern)
        json_object_set_new(o, "pattern", tb__api_jstr(pattern));
    send_json(ws, o);
}

static void reply_error(tb_ws *ws, json_t *ref, const char *code,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void reply_error(tb_ws *ws, json_t *ref, const char *code,
                        const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error_with(ws, ref, code, NULL, msg);
}

/* A client token's claims do not allow right on pattern: "forbidden",
 * naming the pattern in the answer's "pattern". */
static void reply_forbidden(tb_ws *ws, json_t *ref, tb__jwt_right right,
                            const char *pattern)
{
    char msg[TB__JWT_FORBIDDEN_MAX];
    tb__jwt_forbidden_message(tb__ws_claims(ws), right, pattern, msg);
    reply_error_with(ws, ref, "forbidden", pattern, msg);
}

static json_t *patterns_json(const conn_state *st)
{
    json_t *a = json_array();
    for (int i = 0; i < st->npatterns; i++)
        json_array_append_new(a, json_string(st->patterns[i]));
    return a;
}

/* ---------------------------------------------------------------- patterns */

static int find_pattern(const conn_state *st, const char *p)
{
    for (int i = 0; i < st->npatterns; i++)
        if (strcmp(st->patterns[i], p) == 0)
            return i;
    return -1;
}

/* Adds p (already valid). 0, TB_ENOSPC (ws_max_patterns), TB_ENOMEM. */
static int add_pattern(conn_state *st, const char *p, int max)
{
    if (!st->sub)
        return TB_EPIPE; /* the receiver has ended: closing */
    if (find_pattern(st, p) >= 0)
        return 0;
    if (st->npatterns >= max)
        return TB_ENOSPC;
    if (st->npatterns == st->cap) {
        int ncap = st->cap ? st->cap * 2 : 4;
        char **v = realloc(st->patterns, (size_t)ncap * sizeof *v);
        if (!v)
            return TB_ENOMEM;
        st->patterns = v;
        st->cap = ncap;
    }
    char *copy = strdup(p);
    if (!copy)
        return TB_ENOMEM;
    int rc = tb_sub_add(st->sub, p);
    if (rc && rc != TB_EEXIST) {
        free(copy);
        return rc;
    }
    st->patterns[st->npatterns++] = copy;
    return 0;
}

static void remove_pattern(conn_state *st, const char *p)
{
    int i = find_pattern(st, p);
    if (i < 0)
        return;
    if (st->sub)
        tb_sub_remove(st->sub, p);
    free(st->patterns[i]);
    st->patterns[i] = st->patterns[--st->npatterns];
}

/* ---------------------------------------------------------------- messages */

static void do_dispatch(tb_task *self, conn_state *st, json_t *ref,
                        json_t *name, json_t *data)
{
    (void)self; /* tb_dispatch_wait suspends the calling task */
    tb_ws *ws = st->ws;
    const char *n = json_string_value(name); /* checked by the parse */
    /* An invalid name gets bad_name below, not forbidden. */
    if (tb_event_name_valid(n) == 0 &&
        !tb__jwt_allows(tb__ws_claims(ws), TB__JWT_DISPATCH, n)) {
        reply_forbidden(ws, ref, TB__JWT_DISPATCH, n);
        return;
    }
    char *owned;
    const char *d;
    size_t len;
    if (tb__json_event_data(data, &d, &len, &owned)) {
        reply_error(ws, ref, "internal", "out of memory");
        return;
    }
    char id[TB_EVENT_ID_MAX];
    tb_app *app = tb_ws_app(ws);
    int rc = tb_dispatch_wait(app, n, d, len, TB_TIMEOUT_DEFAULT, id);
    free(owned);
    switch (rc) {
    case 0: {
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_string("dispatch"));
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "name", json_string(n));
        if (ref)
            json_object_set(o, "ref", ref);
        send_json(ws, o);
        return;
    }
    case TB_EINVAL:
    case TB_ENAMETOOLONG:
        if (tb_event_name_valid(n) != 0) {
            reply_error(ws, ref, "bad_name",
                        "\"%.200s\" is not a valid event name: 1..%d "
                        "dot-separated segments of [A-Za-z0-9_-], at most "
                        "%d bytes",
                        n, TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX);
        } else {
            reply_error(ws, ref, "bad_data", "the event data is not UTF-8");
        }
        return;
    case TB_EMSGSIZE:
        reply_error(ws, ref, "too_large",
                    "the event data is %zu bytes, over max_event_size (%zu)",
                    len, tb_app_get_config(app)->core.max_event_size);
        return;
    case TB_ENOTCONN:
        reply_error(ws, ref, "bus_down",
                    "the event bus is not connected; try again later");
        return;
    case TB_ENOSPC:
        reply_error(ws, ref, "queue_full",
                    "too many events wait to be published; try again later");
        return;
    case TB_ETIMEDOUT:
        reply_error(ws, ref, "timeout",
                    "the event bus did not confirm the event in time (it "
                    "may still be published)");
        return;
    case TB_ENOTREPLICATED:
        reply_error(ws, ref, "not_replicated",
                    "event %s was published, but fewer Redis replicas than "
                    "redis.wait_replicas confirmed it: a failover may lose it",
                    id);
        return;
    case TB_ECANCELED:
    case TB_ESHUTDOWN:
        reply_error(ws, ref, "stopping", "the connection is closing");
        return;
    default:
        reply_error(ws, ref, "internal", "dispatch failed: %s",
                    tb_strerror(rc));
        return;
    }
}

/* With history on: o's "pos", the history's end as read now (after the
 * patterns were added, as /sse reads its ": ready" id), so that every
 * event after it that matches reaches the subscription. Left out when
 * there is none yet, or the bus does not answer (the subscription holds
 * all the same). */
static void add_pos(tb_task *self, conn_state *st, json_t *o)
{
    if (tb_app_get_config(tb_ws_app(st->ws))->core.history_size == 0)
        return;
    tb__hist_page pg;
    int rc = tb__history_fetch_task(self, 0, 0, &pg);
    if (rc == 0 && pg.epoch[0]) {
        char pos[TB_POS_MAX];
        tb__pos_format(pos, pg.epoch, pg.top);
        json_object_set_new(o, "pos", json_string(pos));
    } else if (rc != 0 && rc != TB_ECANCELED && rc != TB_ENOTSUP) {
        tb__log(TB_LOG_WARN,
                "ws /ws (request %s): subscribe answered without \"pos\": "
                "cannot read the history's end: %s",
                tb_ws_request_id(st->ws), tb_strerror(rc));
    }
    tb__hist_page_release(&pg);
}

static void do_subscribe(tb_task *self, conn_state *st, json_t *ref, json_t *v,
                         int add)
{
    tb_ws *ws = st->ws;
    const char *what = add ? "subscribe" : "unsubscribe";
    int max = tb_app_get_config(tb_ws_app(ws))->ws.max_patterns;
    size_t i;
    json_t *p;
    if (add) {
        /* All or nothing: what the token allows, then what is new. */
        json_array_foreach(v, i, p)
        {
            const char *s = json_string_value(p);
            if (!tb__jwt_allows(tb__ws_claims(ws), TB__JWT_SUBSCRIBE, s)) {
                reply_forbidden(ws, ref, TB__JWT_SUBSCRIBE, s);
                return;
            }
        }
        int fresh = 0;
        json_array_foreach(v, i, p)
        {
            const char *s = json_string_value(p);
            int dup = find_pattern(st, s) >= 0;
            for (size_t j = 0; !dup && j < i; j++)
                dup = strcmp(json_string_value(json_array_get(v, j)), s) == 0;
            fresh += !dup;
        }
        if (st->npatterns + fresh > max) {
            reply_error(ws, ref, "too_many_patterns",
                        "a connection may hold %d patterns (ws_max_patterns); "
                        "it holds %d and asked for %d more",
                        max, st->npatterns, fresh);
            return;
        }
    }
    json_array_foreach(v, i, p)
    {
        if (add) {
            int rc = add_pattern(st, json_string_value(p), max);
            if (rc) {
                reply_error(ws, ref, "internal", "subscribe failed: %s",
                            tb_strerror(rc));
                return;
            }
        } else {
            remove_pattern(st, json_string_value(p));
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_string(what));
    json_object_set_new(o, "patterns", patterns_json(st));
    if (add && o)
        add_pos(self, st, o);
    if (ref)
        json_object_set(o, "ref", ref);
    send_json(ws, o);
}

/* Sets cmd's error: code (static) and the message for the client. */
static int cmd_error(tb__ws_cmd *cmd, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int cmd_error(tb__ws_cmd *cmd, const char *code, const char *fmt, ...)
{
    cmd->kind = 0;
    cmd->error = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd->message, sizeof cmd->message, fmt, ap);
    va_end(ap);
    return TB_EINVAL;
}

/* Checks that v is an array of valid patterns (what: the member). */
static int check_patterns(tb__ws_cmd *cmd, const char *what, json_t *v)
{
    if (!json_is_array(v))
        return cmd_error(cmd, "bad_type",
                         "\"%s\" must be an array of event patterns", what);
    size_t i;
    json_t *p;
    json_array_foreach(v, i, p)
    {
        if (!json_is_string(p))
            return cmd_error(cmd, "bad_type",
                             "\"%s\"[%zu] must be a string (an event pattern)",
                             what, i);
        const char *pat = json_string_value(p);
        const char *why = strlen(pat) != json_string_length(p)
                              ? "a NUL character (\\u0000) in it"
                              : tb__pattern_problem(pat);
        if (why)
            return cmd_error(cmd, "bad_pattern",
                             "\"%s\"[%zu] is not a valid event pattern: %s; "
                             "a pattern is " TB__PATTERN_SYNTAX
                             ", at most %d bytes",
                             what, i, why, TB_EVENT_NAME_MAX);
    }
    return 0;
}

/* Checks the event name of a dispatch. */
static int check_event(tb__ws_cmd *cmd, json_t *name)
{
    if (!json_is_string(name))
        return cmd_error(cmd, "bad_type", "\"event\" must be a string");
    const char *n = json_string_value(name);
    if (strlen(n) != json_string_length(name))
        return cmd_error(cmd, "bad_name",
                         "an event name cannot hold \\u0000: it is 1..%d "
                         "dot-separated segments of [A-Za-z0-9_-], at most %d "
                         "bytes",
                         TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX);
    if (tb_event_name_valid(n) != 0)
        return cmd_error(cmd, "bad_name",
                         "\"%.200s\" is not a valid event name: 1..%d "
                         "dot-separated segments of [A-Za-z0-9_-], at most "
                         "%d bytes",
                         n, TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX);
    return 0;
}

int tb__ws_cmd_parse(const void *data, size_t len, int binary, int max_depth,
                     tb__ws_cmd *cmd)
{
    memset(cmd, 0, sizeof *cmd);
    if (binary)
        return cmd_error(cmd, "bad_message",
                         "binary messages are not understood: send JSON text");
    json_error_t jerr;
    /* JSON_ALLOW_NUL: event data may hold U+0000; names and patterns are
     * checked for it. */
    json_t *o = tb__json_loadb(
        data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL,
        max_depth, &jerr);
    if (!o)
        return cmd_error(cmd, "bad_json", "the message is not JSON: %s",
                         jerr.text);
    cmd->root = o;
    if (!json_is_object(o))
        return cmd_error(cmd, "bad_message",
                         "a message must be a JSON object: {\"event\", "
                         "\"data\"}, {\"subscribe\": [...]} or "
                         "{\"unsubscribe\": [...]}");
    cmd->ref = json_object_get(o, "ref");
    const char *key;
    json_t *val;
    json_t *event = NULL, *sub = NULL, *unsub = NULL;
    json_object_foreach(o, key, val)
    {
        if (strcmp(key, "event") == 0)
            event = val;
        else if (strcmp(key, "data") == 0)
            cmd->data = val;
        else if (strcmp(key, "subscribe") == 0)
            sub = val;
        else if (strcmp(key, "unsubscribe") == 0)
            unsub = val;
        else if (strcmp(key, "ref") != 0)
            return cmd_error(cmd, "unknown_field",
                             "unknown field \"%.64s\": a message has "
                             "\"event\" and \"data\", or \"subscribe\", or "
                             "\"unsubscribe\" (and an optional \"ref\")",
                             key);
    }
    int actions = (event != NULL) + (sub != NULL) + (unsub != NULL);
    if (actions != 1 || (cmd->data && !event))
        return cmd_error(cmd, "bad_message",
                         "a message does one thing: {\"event\", \"data\"}, "
                         "{\"subscribe\": [...]} or {\"unsubscribe\": [...]}");
    if (event) {
        cmd->kind = TB__WS_CMD_DISPATCH;
        cmd->event = event;
        return check_event(cmd, event);
    }
    cmd->kind = sub ? TB__WS_CMD_SUBSCRIBE : TB__WS_CMD_UNSUBSCRIBE;
    cmd->patterns = sub ? sub : unsub;
    return check_patterns(cmd, sub ? "subscribe" : "unsubscribe",
                          cmd->patterns);
}

json_t *tb__ws_cmd_error_json(const tb__ws_cmd *cmd)
{
    return error_json(cmd->ref, cmd->error, cmd->message);
}

void tb__ws_cmd_free(tb__ws_cmd *cmd)
{
    json_decref(cmd->root);
    memset(cmd, 0, sizeof *cmd);
}

static void handle(tb_task *self, conn_state *st, const tb_ws_msg *m)
{
    tb__ws_cmd cmd;
    int rc = tb__ws_cmd_parse(m->data, m->len, m->type != TB_WS_TEXT,
                              tb_ws_app(st->ws)->cfg.core.json_max_depth, &cmd);
    if (rc)
        reply_error(st->ws, cmd.ref, cmd.error, "%s", cmd.message);
    else if (cmd.kind == TB__WS_CMD_DISPATCH)
        do_dispatch(self, st, cmd.ref, cmd.event, cmd.data);
    else
        do_subscribe(self, st, cmd.ref, cmd.patterns,
                     cmd.kind == TB__WS_CMD_SUBSCRIBE);
    tb__ws_cmd_free(&cmd);
}

/* ---------------------------------------------------------------- endpoint */

int tb__api_each_pattern(const char *list, int (*fn)(const char *, void *),
                         void *arg)
{
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n) {
            char pat[TB_EVENT_NAME_MAX + 2];
            if (n > TB_EVENT_NAME_MAX)
                n = TB_EVENT_NAME_MAX + 1; /* invalid: too long */
            memcpy(pat, p, n);
            pat[n] = '\0';
            int rc = fn(pat, arg);
            if (rc)
                return rc;
        }
        p += strcspn(p, ",");
        if (*p == ',')
            p++;
    }
    return 0;
}

typedef struct check_ctx {
    tb_http_req *req;
    int count;
    int max;
} check_ctx;

int tb__api_check_pattern(tb_http_req *req, const char *pat, int *count,
                          int max)
{
    const char *why = tb__pattern_problem(pat);
    if (why) {
        tb_http_error(req, 400, "bad_pattern",
                      "events: \"%.210s\" is not a valid event pattern: %s; "
                      "a pattern is " TB__PATTERN_SYNTAX ", at most %d bytes",
                      pat, why, TB_EVENT_NAME_MAX);
        return 1;
    }
    if (++*count > max) {
        tb_http_error(req, 400, "too_many_patterns",
                      "events: more than %d patterns (ws_max_patterns)", max);
        return 1;
    }
    if (!tb__jwt_allows(req->claims, TB__JWT_SUBSCRIBE, pat)) {
        tb__http_forbidden(req, TB__JWT_SUBSCRIBE, pat);
        return 1;
    }
    return 0;
}

static int check_one(const char *pat, void *arg)
{
    check_ctx *c = arg;
    return tb__api_check_pattern(c->req, pat, &c->count, c->max);
}

int tb__api_events_check(tb_http_req *req)
{
    /* Room for ws_max_patterns patterns of the longest kind and commas. */
    const tb_app_config *cfg = tb_app_get_config(tb_http_app(req));
    size_t cap = (size_t)cfg->ws.max_patterns * (TB_EVENT_NAME_MAX + 1) + 1;
    char *list = malloc(cap);
    if (!list) {
        tb_http_error(req, 500, "internal", "out of memory");
        return -1;
    }
    check_ctx c = {req, 0, cfg->ws.max_patterns};
    int rc = tb_http_query(req, "events", list, cap);
    if (rc == TB_ENAMETOOLONG)
        tb_http_error(req, 400, "too_many_patterns",
                      "events: longer than %d patterns can be "
                      "(ws_max_patterns)",
                      cfg->ws.max_patterns);
    else if (rc == TB_EINVAL)
        tb_http_error(req, 400, "bad_query", "events: a bad percent-escape");
    else if (rc >= 0)
        tb__api_each_pattern(list, check_one, &c);
    free(list);
    return req->status ? -1 : c.count;
}

/* Before the upgrade: the ?events= patterns and ?since= must be valid. */
static int ws_check(tb_http_req *req, void *ud)
{
    (void)ud;
    char since[TB_POS_MAX];
    if (tb__api_events_check(req) >= 0)
        tb__api_since(req, since); /* answers 400 when it is bad */
    return 0;
}

typedef struct add_ctx {
    conn_state *st;
    int max;
} add_ctx;

static int add_one(const char *pat, void *arg)
{
    add_ctx *a = arg;
    return add_pattern(a->st, pat, a->max);
}

/* The receiver's arg_free: runs when it ends, even if it never ran. */
static void receiver_gone(void *arg)
{
    ((conn_state *)arg)->receiver_gone = 1;
}

/* Starts the receiver task of a connection with ?since= (name: its
 * "receiver:<request id>"). 0, or the error told to the client. */
static int start_receiver(tb_ws *ws, conn_state *st, const char *name)
{
    tb_task_opts opts = {.name = name,
                         .worker = tb_ws_worker(ws),
                         .kind = "ws.receiver",
                         .flags = TB_TASK_EPHEMERAL | TB__TASK_LOCAL,
                         .ud_free = receiver_gone};
    int rc = tb__task_add(tb_ws_app(ws), receiver, st, &opts, NULL, NULL);
    if (rc)
        reply_error(ws, NULL, "internal", "cannot start the receiver: %s",
                    tb_strerror(rc));
    return rc;
}

static int ws_handler(tb_task *self, tb_ws *ws, void *ud)
{
    (void)ud;
    tb_app *app = tb_ws_app(ws);
    const tb_app_config *cfg = tb_app_get_config(app);
    conn_state st = {.ws = ws, .handler = self};
    /* Checked before the upgrade (ws_check). */
    if (tb_ws_query(ws, "since", st.since, sizeof st.since) < 0)
        st.since[0] = '\0';
    char name[TB_TASK_NAME_MAX + 1];
    snprintf(name, sizeof name, "receiver:%s", tb_ws_request_id(ws));
    int rc;
    if (st.since[0]) {
        rc = start_receiver(ws, &st, name);
        if (rc)
            return rc;
    } else {
        /* Room for as many events as the client's send queue. */
        st.sub = tb_sub_open(self, NULL, cfg->ws.send_queue_msgs, &rc);
        if (!st.sub) {
            reply_error(ws, NULL, "internal", "cannot subscribe: %s",
                        tb_strerror(rc));
            return rc;
        }
        tb__sub_notify(st.sub, on_events, &st);
        st.own_sub = 1;
        st.ready = 1;
        st.receiver_gone = 1; /* none */
    }
    while (!st.ready && !st.receiver_gone && rc == 0)
        rc = tb_yield(self);
    if (rc == 0 && st.ready) {
        size_t cap = (size_t)cfg->ws.max_patterns * (TB_EVENT_NAME_MAX + 1) + 1;
        char *list = malloc(cap);
        if (list && tb_ws_query(ws, "events", list, cap) >= 0) {
            add_ctx a = {&st, cfg->ws.max_patterns};
            tb__api_each_pattern(list, add_one, &a);
        }
        free(list);
        st.patterns_added = 1; /* the receiver may resume now */
        tb_ws_msg m;
        while (tb_ws_recv(self, ws, -1, &m) == 0)
            handle(self, &st, &m);
    }
    /* The socket closed (or the app stops): cancel the receiver (if it
     * still replays) and wait for it; being ephemeral, it leaves the task
     * list as it ends. The handler's subscription closes here: on_events's
     * state is this frame. */
    st.handler_done = 1;
    if (st.since[0] && !st.own_sub)
        tb_task_cancel(app, name, TB_TIMEOUT_DEFAULT);
    if (st.own_sub)
        tb_sub_close(st.sub);
    for (int i = 0; i < st.npatterns; i++)
        free(st.patterns[i]);
    free(st.patterns);
    return 0;
}

int tb__api_register_ws(tb_app *app)
{
    return tb__ws_add_client_endpoint(app, "/ws", ws_handler, ws_check, NULL);
}
