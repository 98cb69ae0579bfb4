/* kinds.h - task kinds: named task functions spawned with JSON arguments
 * (private part: their HTTP endpoint and their end with the app). */
#ifndef TASKBUS_KINDS_H
#define TASKBUS_KINDS_H

#include "taskbus/taskbus.h"

/* Registers POST /tasks (spawn a task of a kind) and GET /kinds (the kinds
 * and their argument specs). Only before tb_app_run. Returns 0 or
 * tb_app_add_route's error. */
int tb__api_register_kinds(tb_app *app);

struct tb__add_extra;

/* tb_task_spawn with tb__task_add's extra (may be NULL). */
int tb__kind_spawn(tb_app *app, const char *kind, const char *args_json,
                   const tb_task_opts *opts, struct tb__add_extra *x,
                   uint64_t *id_out, char *err, size_t errsz);

/* Checks kind and args_json as tb_task_spawn does, without spawning: 0, or
 * TB_ENOENT (*stage 0: no such kind), TB_EINVAL / the check's TB_EPERM
 * (*stage 1), with a message in err. */
int tb__kind_check(tb_app *app, const char *kind, const char *args_json,
                   char *err, size_t errsz, int *stage);

/* Drops app's kinds and runs their checks' ud_free (from tb_app_free).
 * Idempotent. */
void tb__kinds_free(tb_app *app);

#endif /* TASKBUS_KINDS_H */
