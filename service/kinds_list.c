/* kinds_list.c - GET /kinds: the app's task kinds and the arguments each
 * declares, as JSON for a form that spawns any kind.
 *
 * The kinds are registered before tb_app_run and never change after
 * (kinds.c), so this reads them without a lock. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "kinds.h"

/* The JSON number for a spec bound: an integer when it is one (86400, not
 * 86400.0), so a form can show it as written. */
static json_t *bound_json(double x)
{
    if (x > -9007199254740992.0 && x < 9007199254740992.0 &&
        x == (double)(json_int_t)x)
        return json_integer((json_int_t)x);
    return json_real(x);
}

static int kind_cmp(const void *a, const void *b)
{
    return strcmp(((const tb__kind_info *)a)->name,
                  ((const tb__kind_info *)b)->name);
}

/* One kind as GET /kinds lists it, or NULL (out of memory). */
static json_t *kind_json(const tb__kind_info *k)
{
    static const char *const type_name[] = {
        [TB_ARG_NUMBER] = "number",   [TB_ARG_INT] = "int",
        [TB_ARG_STRING] = "string",   [TB_ARG_EVENT_NAME] = "event_name",
        [TB_ARG_PATTERN] = "pattern", [TB_ARG_BOOL] = "bool",
    };
    json_t *o = json_object(), *args = json_array();
    if (!o || !args || json_object_set_new(o, "name", json_string(k->name)) ||
        json_object_set(o, "args", args)) {
        json_decref(o);
        json_decref(args);
        return NULL;
    }
    json_decref(args); /* o holds it */
    for (size_t i = 0; i < k->nspec; i++) {
        const tb_arg_spec *s = &k->spec[i];
        json_t *a = json_object();
        if (!a || json_array_append_new(args, a) ||
            json_object_set_new(a, "name", tb__api_jstr(s->name)) ||
            json_object_set_new(a, "type", json_string(type_name[s->type])) ||
            json_object_set_new(a, "required", json_boolean(s->required))) {
            json_decref(o);
            return NULL;
        }
        /* Only a real range: min < max is when kinds.c enforces one. A
         * side of -INFINITY or INFINITY bounds nothing (and has no JSON
         * number): left out. */
        if ((s->type == TB_ARG_NUMBER || s->type == TB_ARG_INT) &&
            s->min < s->max &&
            ((isfinite(s->min) &&
              json_object_set_new(a, "min", bound_json(s->min))) ||
             (isfinite(s->max) &&
              json_object_set_new(a, "max", bound_json(s->max))))) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int tb__kinds_get(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    size_t n = tb__kinds_info(app, NULL, 0);
    tb__kind_info *sorted = calloc(n ? n : 1, sizeof *sorted);
    json_t *list = json_array(), *root = json_object();
    int ok =
        sorted && list && root && json_object_set(root, "kinds", list) == 0;
    if (ok) {
        tb__kinds_info(app, sorted, n);
        qsort(sorted, n, sizeof *sorted, kind_cmp);
    }
    for (size_t i = 0; ok && i < n; i++)
        ok = json_array_append_new(list, kind_json(&sorted[i])) == 0;
    free(sorted);
    json_decref(list);
    if (!ok) {
        json_decref(root);
        root = NULL; /* 500 */
    }
    return tb__api_respond(req, 200, root);
}
