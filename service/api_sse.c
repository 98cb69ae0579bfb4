/* api_sse.c - the built-in SSE endpoint, GET /sse?events=p1,p2: each
 * matching event as a text/event-stream event.
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
 * in place; the writer adds ": keep-alive" comments when idle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "http.h"
#include "internal.h"
#include "ws.h"

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

/* Sends ev to the stream as one SSE event. 0, or tb_ws_send's code. */
static int send_event(tb_ws *ws, const tb_event *ev)
{
    size_t len;
    const char *json = tb_event_json(ev, &len);
    if (!json)
        return TB_ENOMEM;
    const char *pos = NULL; /* positions come with history */
    size_t need = tb__sse_frame(NULL, 0, pos, tb_event_name(ev), json, len);
    char *frame = malloc(need + 1);
    if (!frame)
        return TB_ENOMEM;
    tb__sse_frame(frame, need + 1, pos, tb_event_name(ev), json, len);
    int rc = tb_ws_send(ws, TB_WS_TEXT, frame, need);
    free(frame);
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

static int sse_handler(tb_task *self, tb_ws *ws, void *ud)
{
    (void)ud;
    const tb_app_config *cfg = tb_app_get_config(tb_ws_app(ws));
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
    static const char ready[] = ": ready\n\n";
    tb_ws_send(ws, TB_WS_TEXT, ready, sizeof ready - 1);
    uint64_t dropped_told = 0;
    for (;;) {
        tb_event *ev;
        if (tb_sub_next(self, sub, -1, &ev) != 0)
            break; /* cancelled: the client went, or the app stops */
        int rc = send_event(ws, ev);
        tb_event_unref(ev);
        if (rc == TB_EPIPE || rc == TB_ENOSPC)
            break; /* closed, or closing as a slow client */
        if (rc == TB_EMSGSIZE)
            log_line(ws, TB_LOG_WARN,
                     "an event over ws_send_queue_bytes was not sent");
        uint64_t d = tb_sub_dropped(sub);
        if (d != dropped_told) {
            /* EventSource shows no comment, but curl users and the log
             * do; with positions, a client resumes past the gap. */
            char msg[96];
            snprintf(msg, sizeof msg, ": %llu events dropped\n\n",
                     (unsigned long long)(d - dropped_told));
            dropped_told = d;
            log_line(ws, TB_LOG_WARN,
                     "events came faster than this stream took them");
            tb_ws_send(ws, TB_WS_TEXT, msg, strlen(msg));
        }
    }
    return 0; /* the subscription closes with this task */
}

/* Before the hand-over: the ?events= patterns must be valid and allowed,
 * and there must be some (a stream of nothing is a mistake). */
static int sse_check(tb_http_req *req, void *ud)
{
    (void)ud;
    if (tb__api_events_check(req) == 0)
        tb_http_error(req, 400, "missing_events",
                      "events: name the patterns to stream, e.g. "
                      "/sse?events=orders.*,jobs.done");
    return 0;
}

int tb__api_register_sse(tb_app *app)
{
    return tb__sse_add_endpoint(app, "/sse", sse_handler, sse_check, NULL);
}
