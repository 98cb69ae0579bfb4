/* kinds.h - task kinds: named task functions spawned with JSON arguments
 * (private part: their HTTP endpoint and their end with the app). */
#ifndef TASKBUS_KINDS_H
#define TASKBUS_KINDS_H

#include "taskbus/taskbus.h"

/* Registers POST /tasks (spawn a task of a kind). Only before tb_app_run.
 * Returns 0 or tb_app_add_route's error. */
int tb__api_register_kinds(tb_app *app);

/* Drops app's kinds and runs their checks' ud_free (from tb_app_free).
 * Idempotent. */
void tb__kinds_free(tb_app *app);

#endif /* TASKBUS_KINDS_H */
