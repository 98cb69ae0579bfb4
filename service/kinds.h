/* kinds.h - task kinds: named task functions spawned with JSON arguments
 * (private part: the service's built-in kinds and their HTTP endpoint). */
#ifndef TASKBUS_KINDS_H
#define TASKBUS_KINDS_H

#include "taskbus/taskbus.h"

/* Registers the built-in kinds: sleep, delay, interval and relay (see
 * kinds.c for their arguments). Only before tb_app_run. Returns 0 or
 * tb_app_add_kind's error. */
int tb__kinds_register_builtin(tb_app *app);

/* Registers POST /tasks (spawn a task of a kind). Only before tb_app_run.
 * Returns 0 or tb_app_add_route's error. */
int tb__api_register_kinds(tb_app *app);

/* Drops app's kinds. Runs by itself from a MAIN_STOP listener; an app freed
 * without ever running needs this call from tb_app_free. Idempotent. */
void tb__kinds_free(tb_app *app);

/* A kind's own check of validated args, run by tb_task_spawn after the
 * spec's: 0, or an error (TB_EPERM: POST /tasks answers 403 not_allowed;
 * TB_EINVAL: 400 bad_args) with a message in err. Any thread. */
typedef int (*tb__kind_check_fn)(const tb_kind_args *args, void *ud, char *err,
                                 size_t errsz);
/* Sets kind name's check (before tb_app_run); ud_free(ud) (may be NULL)
 * runs when the kinds are freed, and on error here. 0 or TB_ENOENT. */
int tb__task_kind_check(tb_app *app, const char *name, tb__kind_check_fn fn,
                        void *ud, void (*ud_free)(void *));

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
