/* api_sse.c - the built-in SSE endpoint, GET /sse?events=p1,p2: each
 * matching event as a text/event-stream event, resumed after
 * Last-Event-ID or ?since= when the app keeps a history.
 *
 * The stream is a tb_ws served by the SSE writer (ws.c, sse.c): it takes
 * GET /ws's checks (patterns, client tokens, Origin) and limits (the send
 * queue's bounds, sse_max_clients), and holds a worker's task, not an HTTP
 * thread. Its handler task ("sse:<request id>") holds the subscription
 * and writes each event as
 *   id: <position>        (only for an event that has one)
 *   event: <name>
 *   data: <envelope>      (tb_event_json, as GET /ws sends it: one line)
 * and a blank line. A comment (": ready") tells that the subscription is
 * in place, with the stream's position as its id when it starts fresh; a
 * resumed stream replays the history after its position and then sends
 * "event: taskbus:recovered" with the websocket's {"recovered", "pos",
 * "epoch"}. The writer adds ": keep-alive" comments when idle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "history.h"
#include "http.h"
#include "internal.h"
#include "ws.h"

/* The event at the seam of a resumed stream. Event names never hold ':',
 * so it cannot be taken for one of the app's events. */
#define TB__SSE_RECOVERED "taskbus:recovered"

size_t tb__sse_frame(char *out, size_t outsz, const char *pos, const char *name,
                     const char *data, size_t len)
{
    size_t n = 0;
#define PUT(s, l)                                                              \
    do {                                                                       \
        if (n + (l) < outsz)                                                   \
            memcpy(out + n, (s), (l));                                         \
        n += (l);                                                              \
    } while (0)
    /* A field value ends at CR or LF: a position holding one (never one
     * of ours) is left out rather than let it start a field of its own. */
    if (pos && pos[0] && !pos[strcspn(pos, "\r\n")]) {
        PUT("id: ", 4);
        PUT(pos, strlen(pos));
        PUT("\n", 1);
    }
    PUT("event: ", 7);
    PUT(name, strcspn(name, "\r\n")); /* names are [A-Za-z0-9_.-] anyway */
    PUT("\n", 1);
    /* Each line of data is a data field; the client joins them with LF.
     * The envelope is compact JSON (one line), but whatever data holds
     * arrives whole. */
    for (size_t i = 0;;) {
        size_t j = i;
        while (j < len && data[j] != '\r' && data[j] != '\n')
            j++;
        PUT("data: ", 6);
        PUT(data + i, j - i);
        PUT("\n", 1);
        if (j >= len)
            break;
        if (data[j] == '\r' && j + 1 < len && data[j + 1] == '\n')
            j++; /* CRLF is one line end */
        i = j + 1;
    }
    PUT("\n", 1);
#undef PUT
    if (n < outsz)
        out[n] = '\0';
    return n;
}

/* Sends one SSE event (tb__sse_frame's). 0, or tb_ws_send's code. */
static int send_frame(tb_ws *ws, const char *pos, const char *name,
                      const char *data, size_t len)
{
    size_t need = tb__sse_frame(NULL, 0, pos, name, data, len);
    char *frame = malloc(need + 1);
    if (!frame)
        return TB_ENOMEM;
    tb__sse_frame(frame, need + 1, pos, name, data, len);
    int rc = tb_ws_send(ws, TB_WS_TEXT, frame, need);
    free(frame);
    return rc;
}

/* Sends ev to the stream as one SSE event, its position as its id. */
static int send_event(tb_ws *ws, const tb_event *ev)
{
    size_t len;
    const char *json = tb_event_json(ev, &len);
    if (!json)
        return TB_ENOMEM;
    return send_frame(ws, tb_event_pos(ev), tb_event_name(ev), json, len);
}

static int send_text(tb_ws *ws, const char *text)
{
    return tb_ws_send(ws, TB_WS_TEXT, text, strlen(text));
}

/* At the seam between a resumed stream's replay and its live events.
 * Resumed from a position: the recovered event, {"recovered", "pos",
 * "epoch"} as a websocket gets it. Else (a fresh stream): the ready
 * comment. Either with the seam's position as its id, so that a client
 * that gets no event before it reconnects still resumes from here. */
static int send_seam(tb_ws *ws, tb_sub *sub, int resumed)
{
    tb_sub_recovery info;
    if (tb_sub_recovery_info(sub, &info) != 0)
        return 0;
    if (!resumed) {
        char b[TB_POS_MAX + 32];
        snprintf(b, sizeof b, "%s%s%s: ready\n\n", info.pos[0] ? "id: " : "",
                 info.pos, info.pos[0] ? "\n" : "");
        return send_text(ws, b);
    }
    json_t *o = tb__api_recovery_json(info.recovered, info.pos, info.epoch);
    char *json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!json)
        return TB_ENOMEM;
    int rc = send_frame(ws, info.pos, TB__SSE_RECOVERED, json, strlen(json));
    free(json);
    return rc;
}

typedef struct add_ctx {
    tb_sub *sub;
    int rc;
} add_ctx;

static int add_one(const char *pat, void *arg)
{
    add_ctx *a = arg;
    int rc = tb_sub_add(a->sub, pat);
    if (rc && rc != TB_EEXIST)
        a->rc = rc;
    return a->rc;
}

/* Subscribes sub to the stream's ?events= (checked before the hand-over).
 * 0 or a TB_E* code. */
static int subscribe(tb_ws *ws, tb_sub *sub, const tb_app_config *cfg)
{
    size_t cap = (size_t)cfg->ws.max_patterns * (TB_EVENT_NAME_MAX + 1) + 1;
    char *list = malloc(cap);
    if (!list)
        return TB_ENOMEM;
    add_ctx a = {sub, 0};
    int rc = tb_ws_query(ws, "events", list, cap);
    if (rc >= 0)
        tb__api_each_pattern(list, add_one, &a);
    free(list);
    return rc < 0 ? rc : a.rc;
}

static void log_line(tb_ws *ws, int level, const char *what)
{
    const char *sub = tb__ws_sub(ws);
    tb__log(level, "sse /sse (request %s%s%s%s): %s", tb_ws_request_id(ws),
            sub[0] ? ", sub \"" : "", sub, sub[0] ? "\"" : "", what);
}

/* Where the stream resumes: the Last-Event-ID of an EventSource that
 * reconnects (it sends the URL's ?since= again, older than the last id it
 * got), else ?since=; both checked by sse_check. "": from now. */
static void since_of(tb_ws *ws, char out[TB_POS_MAX])
{
    const char *lei = tb__ws_last_event_id(ws);
    if (lei[0])
        snprintf(out, TB_POS_MAX, "%s", lei);
    else if (tb_ws_query(ws, "since", out, TB_POS_MAX) < 0)
        out[0] = '\0';
}

/* Resumes sub from the stream's position (or from now, so that the seam
 * gives the client a position). 0, or the failure, logged; the stream
 * then closes saying why, and an EventSource comes back later. */
static int resume(tb_task *self, tb_ws *ws, tb_sub *sub, const char *since)
{
    int rc = tb_sub_resume(self, sub, since[0] ? since : NULL);
    if (rc == 0 || rc == TB_ECANCELED)
        return rc;
    char msg[128];
    snprintf(msg, sizeof msg, "cannot resume after \"%s\": %s", since,
             tb_strerror(rc));
    log_line(ws, TB_LOG_WARN, msg);
    tb_ws_close(ws, 1011,
                rc == TB_ENOTCONN || rc == TB_ETIMEDOUT || rc == TB_EAGAIN
                    ? "cannot resume: the event bus is unavailable"
                    : "cannot resume");
    return rc;
}

static int sse_handler(tb_task *self, tb_ws *ws, void *ud)
{
    (void)ud;
    const tb_app_config *cfg = tb_app_get_config(tb_ws_app(ws));
    int history = cfg->core.history_size > 0;
    int err;
    /* Room for as many events as the send queue: beyond that the client
     * is too slow anyway. */
    tb_sub *sub = tb_sub_open(self, NULL, cfg->ws.send_queue_msgs, &err);
    if (!sub || (err = subscribe(ws, sub, cfg)) != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "cannot subscribe: %s", tb_strerror(err));
        log_line(ws, TB_LOG_ERROR, msg);
        return err; /* the stream closes */
    }
    char since[TB_POS_MAX] = "";
    if (history) {
        since_of(ws, since);
        if (resume(self, ws, sub, since) != 0)
            return 0;
    }
    /* Without a since, the seam comes first and says ready with its id. */
    if (!history || since[0])
        send_text(ws, ": ready\n\n");
    int replaying = history;
    uint64_t dropped_told = 0;
    for (;;) {
        tb_event *ev;
        int rc = tb_sub_next(self, sub, -1, &ev);
        if (rc == TB_SUB_LIVE) {
            replaying = 0;
            dropped_told = tb_sub_dropped(sub);
            rc = send_seam(ws, sub, since[0] != '\0');
            if (rc == TB_EPIPE || rc == TB_ENOSPC)
                break;
            continue;
        }
        if (rc != 0)
            break; /* cancelled: the client went, or the app stops */
        /* A replay goes at the client's pace (as on /ws): it could
         * otherwise fill the send queue at once and be closed as a slow
         * client in the middle of its recovery. */
        if (replaying)
            rc = tb__ws_wait_drained(self, ws);
        if (rc != 0) {
            tb_event_unref(ev);
            break;
        }
        uint64_t d = tb_sub_dropped(sub);
        if (!replaying && d != dropped_told) { /* replay reads them again */
            log_line(ws, TB_LOG_WARN,
                     "events came faster than this stream took them");
            if (history) {
                /* A subscription drops its oldest events: ev may come
                 * after the gap, and sent it would move the client's
                 * Last-Event-ID past events it never got. Closed here
                 * instead, the client resumes from the last event before
                 * the gap and misses nothing. */
                tb_event_unref(ev);
                tb_ws_close(ws, 1008, "events dropped: reconnect to resume");
                break;
            }
            /* EventSource shows no comment, but curl users do. */
            char msg[96];
            snprintf(msg, sizeof msg, ": %llu events dropped\n\n",
                     (unsigned long long)(d - dropped_told));
            dropped_told = d;
            send_text(ws, msg);
        }
        rc = send_event(ws, ev);
        if (rc == TB_EMSGSIZE) {
            /* Larger than the whole send queue (its data grew in JSON's
             * escapes). Skipped, the next event's id would carry the
             * client past it: with history, end the stream before it
             * instead, loudly (each resume meets it again until
             * ws_send_queue_bytes is raised). */
            char msg[200];
            size_t len;
            tb_event_json(ev, &len);
            snprintf(msg, sizeof msg,
                     "event %s (%s, %zu bytes as JSON) is larger than "
                     "ws_send_queue_bytes: %s",
                     tb_event_id(ev), tb_event_name(ev), len,
                     history ? "closing the stream before it" : "not sent");
            log_line(ws, TB_LOG_WARN, msg);
            if (history) {
                tb_event_unref(ev);
                tb_ws_close(ws, 1009,
                            "an event is larger than the send "
                            "queue (ws_send_queue_bytes)");
                break;
            }
            send_text(ws, ": an event too large for the send queue was "
                          "not sent\n\n");
        }
        tb_event_unref(ev);
        if (rc == TB_EPIPE || rc == TB_ENOSPC)
            break; /* closed, or closing as a slow client */
    }
    return 0; /* the subscription closes with this task */
}

/* Before the hand-over: the ?events= patterns must be valid and allowed,
 * and there must be some (a stream of nothing is a mistake); ?since= and
 * Last-Event-ID must be positions. A Last-Event-ID to a server that keeps
 * no history (any more) is ignored, not refused: an EventSource refused
 * once never comes back. */
static int sse_check(tb_http_req *req, void *ud)
{
    (void)ud;
    int n = tb__api_events_check(req);
    if (n == 0)
        tb_http_error(req, 400, "missing_events",
                      "events: name the patterns to stream, e.g. "
                      "/sse?events=orders.*,jobs.done");
    char since[TB_POS_MAX];
    if (n <= 0 || tb__api_since(req, since) != 0)
        return 0;
    const char *lei = tb_http_header(req, "Last-Event-ID");
    size_t len = lei ? strlen(lei) : 0;
    tb__pos p;
    if (len && tb_app_get_config(tb_http_app(req))->core.history_size > 0 &&
        (len >= TB_POS_MAX || tb__pos_parse(lei, len, &p) != 0))
        tb_http_error(req, 400, "bad_since",
                      "Last-Event-ID must be a position as this stream's "
                      "events carry it (id: <epoch>-<seq>)");
    return 0;
}

int tb__api_register_sse(tb_app *app)
{
    return tb__sse_add_endpoint(app, "/sse", sse_handler, sse_check, NULL);
}
