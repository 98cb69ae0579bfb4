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

/* reaper.c: the exec kind's children, so that a PID 1 reaper leaves them to
 * their task. Any thread. */
void tb__exec_children_lock(void);
void tb__exec_children_unlock(void);
void tb__exec_child_add(int pid); /* under the lock */
void tb__exec_child_remove(int pid);
/* Starts a thread that reaps every other exited child (orphans re-parented
 * to us when we run as PID 1 in a container). Idempotent. 0 or an error. */
int tb__reaper_start(void);

/* kind_exec.c: registers the "exec" kind {command, events?, grace?}: runs
 * command (a program path and arguments separated by blanks; no shell) as
 * a background task. Only programs in allow (comma-separated absolute
 * paths; NULL or "": none, every spawn is refused with TB_EPERM) may run.
 * allow is copied. */
int tb__kind_exec_register(tb_app *app, const char *allow);

#endif /* TASKBUS_KINDS_H */
