/* api.h - JSON pieces the built-in HTTP API's modules share (private). */
#ifndef TASKBUS_API_H
#define TASKBUS_API_H

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

/* Like tb_http_error, with the fields of extra (consumed, may be NULL)
 * added to the {"error", "message"} body. Logs the same line. */
int tb__api_error_with(tb_http_req *req, int status, const char *code,
                       json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* api_ws.c: GET /ws. */
int tb__api_register_ws(tb_app *app);

#endif /* TASKBUS_API_H */
