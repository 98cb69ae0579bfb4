/* kinds.h - task kinds: named task functions spawned with JSON arguments
 * (private part: their HTTP endpoint and their end with the app). */
#ifndef TASKBUS_KINDS_H
#define TASKBUS_KINDS_H

#include "taskbus/taskbus.h"

/* Registers POST /tasks (spawn a task of a kind) and GET /kinds (the kinds
 * and their argument specs). Only before tb_app_run. Returns 0 or
 * tb_app_add_route's error. */
int tb__api_register_kinds(tb_app *app);

/* One kind as kinds.c holds it; the pointers live as long as the app. */
typedef struct tb__kind_info {
    const char *name;
    size_t nspec;
    const tb_arg_spec *spec;
} tb__kind_info;

/* Up to max of app's kinds into out (out may be NULL when max is 0), in
 * the order they were added; returns how many the app has. No lock: the
 * kinds never change once the app runs. */
size_t tb__kinds_info(tb_app *app, tb__kind_info *out, size_t max);

/* GET /kinds (kinds_list.c): {"kinds": [{"name", "args": [{"name",
 * "type", "required", "min"?, "max"?}]}]}, sorted by name. A tb_http_fn;
 * a 500 when out of memory. */
int tb__kinds_get(tb_http_req *req, void *ud);

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
