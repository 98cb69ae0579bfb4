/* kinds.h - task kinds: named task functions spawned with JSON arguments
 * (private part: the service's built-in kinds and their HTTP endpoint). */
#ifndef TASKBUS_KINDS_H
#define TASKBUS_KINDS_H

#include "taskbus/taskbus.h"

/* Registers the built-in kinds: sleep, delay, interval and relay (see
 * kinds.c for their arguments). Only before tb_app_run. Returns 0 or
 * tb_task_kind's error. */
int tb__kinds_register_builtin(tb_app *app);

/* Registers POST /tasks (spawn a task of a kind). Only before tb_app_run.
 * Returns 0 or tb_app_route's error. */
int tb__api_register_kinds(tb_app *app);

/* Drops app's kinds. Runs by itself from a MAIN_STOP listener; an app freed
 * without ever running needs this call from tb_app_free. Idempotent. */
void tb__kinds_free(tb_app *app);

#endif /* TASKBUS_KINDS_H */
