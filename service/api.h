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

/* api_ws.c: GET /ws. */
int tb__api_register_ws(tb_app *app);

#endif /* TASKBUS_API_H */
