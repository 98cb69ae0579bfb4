/* api.h - JSON pieces the built-in HTTP API's modules share (private). */
#ifndef TASKBUS_API_H
#define TASKBUS_API_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

/* Each returns a new reference, or NULL on ENOMEM. */

/* A JSON string of s; bytes that are not UTF-8 become U+FFFD (task names
 * may hold any bytes but controls). */
json_t *tb__api_jstr(const char *s);
/* The same, or null when s is empty. */
json_t *tb__api_jstr_or_null(const char *s);
/* RFC 3339 UTC with microseconds, or null for 0 (never happened). */
json_t *tb__api_jtime(int64_t us);
/* A task as GET /tasks/{name} shows it. */
json_t *tb__api_task_json(const tb_task_info *t);

/* Answers req with o (consumed; NULL means the building ran out of
 * memory: 500). */
int tb__api_respond(tb_http_req *req, int status, json_t *o);

/* The answer to a dispatch the bus refused or did not confirm (rc, from
 * tb_dispatch_wait or tb_dispatch_many): 503 bus_down, shutting_down or
 * busy, 504 publish_timeout (after timeout_ms), 502 publish_failed, else
 * 500. what names the events in messages ("event <id>"); extra as in
 * tb__api_error_with. */
int tb__api_bus_error(tb_http_req *req, int rc, int timeout_ms,
                      const char *what, json_t *extra);

/* POST /events/{name}'s checks before the publish: the name, and the
 * client token's right to dispatch it. 0 with *name set (valid as long as
 * req), else req is answered (400 bad_name, 403) and its status returned. */
int tb__api_event_check(tb_http_req *req, const char **name);

/* POST /events/{name}'s answer to rc, what the publish of the event
 * (given id and name) came to: 202 {"id", "name"}, the 400/413 of the
 * event's checks, else tb__api_bus_error's. */
int tb__api_event_answer(tb_http_req *req, int rc, const char *id,
                         const char *name, int timeout_ms);

/* POST /events: a batch of events (api_batch.c). */
int tb__api_post_batch(tb_http_req *req, void *ud);

/* A batch's steps, shared by the handler and its asynchronous twin
 * (api_batch.c). enter: 0, or req answered 503 busy past
 * core.batch_max_concurrent (its status); 0 must be followed by leave.
 * prepare: the body's format, parse and rights: 0 with *b filled, else
 * req answered and its status. answer: the answer to the dispatch's rc
 * (tb__dispatch_many_start's or the confirmations'), given the ids,
 * statuses, the item at fault (bad; n when none) and its line. */
struct tb__batch;
int tb__api_batch_enter(tb_http_req *req);
void tb__api_batch_leave(tb_app *app);
int tb__api_batch_prepare(tb_http_req *req, struct tb__batch *b);
/* The NDJSON line to name in the answer for the item at fault (bad), or
 * for the one past redis.publish_queue_max; 0 when none. */
size_t tb__api_batch_line(tb_http_req *req, const struct tb__batch *b,
                          size_t bad);
int tb__api_batch_answer(tb_http_req *req, int rc, char (*ids)[TB_EVENT_ID_MAX],
                         const int *status, size_t n, size_t bad, size_t line,
                         int timeout_ms);

/* The front's twins of POST /events/{name} and POST /events
 * (tb__http_start_fn, api_post.c): they publish with a callback and
 * answer once every event is confirmed, on the caller's thread. */
struct tb__http_work;
int tb__api_post_event_start(tb_http_req *req, void (*done)(void *ud), void *ud,
                             struct tb__http_work **work);
int tb__api_post_batch_start(tb_http_req *req, void (*done)(void *ud), void *ud,
                             struct tb__http_work **work);

/* Like tb_http_error, with the fields of extra (consumed, may be NULL)
 * added to the {"error", "message"} body. Logs the same line. */
int tb__api_error_with(tb_http_req *req, int status, const char *code,
                       json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ?timeout=S into *ms when given (else *ms is left as it is): 1, or 0
 * when it is not decimal seconds in 0..max_s (answer with
 * tb__api_bad_timeout: 400 bad_timeout). */
int tb__api_query_timeout(tb_http_req *req, long max_s, int *ms);
int tb__api_bad_timeout(tb_http_req *req, long max_s);

/* api_tasks.c: GET /tasks, GET and DELETE /tasks/{name}, POST
 * /tasks/purge (admin routes). */
int tb__api_register_tasks(tb_app *app);

/* api_ws.c: GET /ws. */
int tb__api_register_ws(tb_app *app);
/* api_sse.c: GET /sse. */
int tb__api_register_sse(tb_app *app);

/* Writes one SSE event into out (outsz bytes; NUL-terminated when it
 * fits): "id: pos" (left out when pos is NULL, empty or holds CR or LF),
 * "event: name", one "data: " line per line of data (len bytes; CR, LF
 * and CRLF end lines) and a blank line. Returns its length: when that is
 * not below outsz, out holds only part of it (out may be NULL with outsz
 * 0 to measure). */
size_t tb__sse_frame(char *out, size_t outsz, const char *pos, const char *name,
                     const char *data, size_t len);

/* Checks req's ?events= list as GET /ws and GET /sse take it: each
 * pattern valid (400 bad_pattern), at most ws_max_patterns of them (400
 * too_many_patterns), each allowed by req's client token (403 forbidden,
 * naming it). Returns how many there are (0: none given), or -1 when req
 * was answered. */
int tb__api_events_check(tb_http_req *req);

/* An ?events= list: comma-separated patterns. Calls fn for each (a
 * pattern over TB_EVENT_NAME_MAX bytes is cut one byte over: invalid);
 * stops at the first non-zero return and returns it. */
int tb__api_each_pattern(const char *list, int (*fn)(const char *, void *),
                         void *arg);

/* Checks one pattern of a client's ?events= (valid, the count+1th of at
 * most max, allowed by its token): 0, or 1 once req is answered (400
 * bad_pattern or too_many_patterns, 403). Counts it in *count. */
int tb__api_check_pattern(tb_http_req *req, const char *pat, int *count,
                          int max);

/* api_history.c: GET /history. */
int tb__api_register_history(tb_app *app);

/* The request's ?since= into out (TB_POS_MAX bytes; "" when absent or
 * empty):
 * 0, or -1 once req is answered 400 (history_off: the app keeps no
 * history; bad_since: not a position). */
int tb__api_since(tb_http_req *req, char *out);

/* Answers req for a failed history read (tb_history_read, tb_sub_resume,
 * a replay's tb_sub_next) rc: 503 bus_unavailable when the bus could not
 * answer (TB_ENOTCONN, TB_ETIMEDOUT, TB_EAGAIN: not connected, no answer
 * in time, Redis had forgotten the script), else 500 internal. Returns
 * what tb_http_error returns. */
int tb__api_history_error(tb_http_req *req, int rc);

/* {"recovered": bool, "pos": pos, "epoch": epoch}: where a resume's
 * replay ended (tb_sub_recovery). NULL on ENOMEM. */
json_t *tb__api_recovery_json(int recovered, const char *pos,
                              const char *epoch);

/* A message from a /ws client, parsed and checked: what it asks for, or
 * the error it is answered with. */
typedef enum {
    TB__WS_CMD_DISPATCH = 1, /* {"event": name, "data": any} */
    TB__WS_CMD_SUBSCRIBE,    /* {"subscribe": [pattern...]} */
    TB__WS_CMD_UNSUBSCRIBE   /* {"unsubscribe": [pattern...]} */
} tb__ws_cmd_kind;

typedef struct tb__ws_cmd {
    int kind;          /* a tb__ws_cmd_kind; 0 on error */
    json_t *root;      /* the parsed message (owned), NULL if none */
    json_t *ref;       /* its "ref" (echoed in the answer), or NULL */
    json_t *event;     /* DISPATCH: a valid event name (a JSON string) */
    json_t *data;      /* DISPATCH: its data, or NULL */
    json_t *patterns;  /* (UN)SUBSCRIBE: an array of valid patterns */
    const char *error; /* on error: the code (static) */
    char message[512]; /* on error: what to tell the client */
} tb__ws_cmd;

/* Parses the client message data (len bytes; binary: it came as a binary
 * frame) with JSON nested at most max_depth deep into *cmd. Returns 0, or
 * TB_EINVAL with cmd->error and cmd->message set (cmd->ref too when the
 * message got that far). The pointers in cmd point into cmd->root: free
 * it with tb__ws_cmd_free, whatever the result. */
int tb__ws_cmd_parse(const void *data, size_t len, int binary, int max_depth,
                     tb__ws_cmd *cmd);
/* The answer to a cmd that failed to parse, as the client gets it:
 * {"error", "message", "ref"?}. A new reference, or NULL on ENOMEM. */
json_t *tb__ws_cmd_error_json(const tb__ws_cmd *cmd);
void tb__ws_cmd_free(tb__ws_cmd *cmd);

#endif /* TASKBUS_API_H */
