/* kinds.c - task kinds: task functions registered by name, spawned with
 * JSON arguments validated against what the kind declares; the built-in
 * kinds (sleep, delay, interval, relay) and POST /tasks (GET /kinds is
 * kinds_list.c's).
 *
 * An app's kinds hang off the app (app->kinds) and are freed with it
 * (tb__kinds_free from tb_app_free). They are registered before tb_app_run
 * and never change after, so spawns read them without a lock; a task's
 * tb_kind_args is a self-contained copy. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "envelope.h"
#include "internal.h"
#include "json.h"
#include "api.h"
#include "kinds.h"
#include "cluster.h"
#include "singleton.h"

#define ARG_NAME_MAX 64

/* ---------------------------------------------------------------- registry */

typedef struct kind {
    struct kind *next;
    char name[TB_KIND_NAME_MAX + 1];
    tb_task_fn fn;
    tb_kind_check_fn check; /* after the spec's checks; may be NULL */
    void *check_ud;
    void (*check_ud_free)(void *);
    size_t nspec;
    tb_arg_spec *spec; /* names owned */
} kind;

typedef struct app_kinds {
    kind *head, *tail;
} app_kinds;

static app_kinds *find_app(tb_app *app)
{
    return app->kinds;
}

static kind *find_kind(app_kinds *a, const char *name)
{
    for (kind *k = a ? a->head : NULL; k; k = k->next)
        if (strcmp(k->name, name) == 0)
            return k;
    return NULL;
}

size_t tb__kinds_info(tb_app *app, tb__kind_info *out, size_t max)
{
    size_t n = 0;
    for (kind *k = find_app(app) ? find_app(app)->head : NULL; k;
         k = k->next, n++)
        if (n < max)
            out[n] = (tb__kind_info){k->name, k->nspec, k->spec};
    return n;
}

static void kind_free(kind *k)
{
    if (k->check_ud_free)
        k->check_ud_free(k->check_ud);
    for (size_t i = 0; i < k->nspec; i++)
        free((char *)k->spec[i].name);
    free(k->spec);
    free(k);
}

void tb__kinds_free(tb_app *app)
{
    app_kinds *a = app->kinds;
    app->kinds = NULL;
    if (!a)
        return;
    for (kind *k = a->head, *next; k; k = next) {
        next = k->next;
        kind_free(k);
    }
    free(a);
}

static int kind_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TB_KIND_NAME_MAX)
        return 0;
    for (; *s; s++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789_.-",
                    *s))
            return 0;
    return 1;
}

/* A checked copy of spec in *k, or TB_EINVAL / TB_ENOMEM. */
static int copy_spec(kind *k, const tb_arg_spec *spec)
{
    size_t n = 0;
    while (spec && spec[n].name)
        n++;
    k->spec = calloc(n + 1, sizeof *k->spec);
    if (!k->spec)
        return TB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const tb_arg_spec *s = &spec[i];
        size_t len = strlen(s->name);
        if (len == 0 || len > ARG_NAME_MAX || s->type < TB_ARG_NUMBER ||
            s->type > TB_ARG_BOOL)
            return TB_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(spec[j].name, s->name) == 0)
                return TB_EINVAL;
        k->spec[i] = *s;
        k->spec[i].name = strdup(s->name);
        if (!k->spec[i].name)
            return TB_ENOMEM;
        k->nspec = i + 1;
    }
    return 0;
}

int tb_app_add_kind(tb_app *app, const char *name, tb_task_fn fn,
                    const tb_arg_spec *spec)
{
    if (!app || !name || !fn || !kind_name_valid(name))
        return TB_EINVAL;
    if (atomic_load(&app->state) != TB__APP_NEW)
        return TB_EBUSY;
    kind *k = calloc(1, sizeof *k);
    if (!k)
        return TB_ENOMEM;
    memcpy(k->name, name, strlen(name) + 1);
    k->fn = fn;
    int rc = copy_spec(k, spec);
    if (rc) {
        kind_free(k);
        return rc;
    }
    app_kinds *a = find_app(app);
    if (find_kind(a, name)) {
        rc = TB_EEXIST;
    } else if (!a) {
        if (!(a = calloc(1, sizeof *a)))
            rc = TB_ENOMEM;
        else
            app->kinds = a;
    }
    if (rc == 0) {
        if (a->tail)
            a->tail->next = k;
        else
            a->head = k;
        a->tail = k;
    }
    if (rc)
        kind_free(k);
    return rc;
}

/* ---------------------------------------------------------------- args */

typedef struct karg {
    char *name;
    tb_arg_type type;
    int present;
    double num;
    long long i;
    int b;
    char *s;
} karg;

struct tb_kind_args {
    size_t n;
    karg v[];
};

static void kargs_free(void *p)
{
    tb_kind_args *a = p;
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].name);
        free(a->v[i].s);
    }
    free(a);
}

static const karg *kget(const tb_kind_args *a, const char *name)
{
    for (size_t i = 0; a && name && i < a->n; i++)
        if (a->v[i].present && strcmp(a->v[i].name, name) == 0)
            return &a->v[i];
    return NULL;
}

double tb_kind_number(const tb_kind_args *a, const char *name, double dflt)
{
    const karg *v = kget(a, name);
    if (v && v->type == TB_ARG_NUMBER)
        return v->num;
    if (v && v->type == TB_ARG_INT)
        return (double)v->i;
    return dflt;
}

long long tb_kind_int(const tb_kind_args *a, const char *name, long long dflt)
{
    const karg *v = kget(a, name);
    return v && v->type == TB_ARG_INT ? v->i : dflt;
}

const char *tb_kind_string(const tb_kind_args *a, const char *name)
{
    const karg *v = kget(a, name);
    return v && v->s ? v->s : NULL;
}

int tb_kind_bool(const tb_kind_args *a, const char *name, int dflt)
{
    const karg *v = kget(a, name);
    return v && v->type == TB_ARG_BOOL ? v->b : dflt;
}

static void errf(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errsz, const char *fmt, ...)
{
    if (!err || errsz == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsz, fmt, ap);
    va_end(ap);
}

/* Stores member val of spec s in v, or returns TB_EINVAL with err set. */
static int take(karg *v, const tb_arg_spec *s, json_t *val, char *err,
                size_t errsz)
{
    static const char *const want[] = {
        [TB_ARG_NUMBER] = "a number",
        [TB_ARG_INT] = "an integer",
        [TB_ARG_STRING] = "a string",
        [TB_ARG_EVENT_NAME] = "an event "
                              "name "
                              "string",
        [TB_ARG_PATTERN] = "a pattern string",
        [TB_ARG_BOOL] = "true or false",
    };
    int ok;
    switch (s->type) {
    case TB_ARG_NUMBER:
        ok = json_is_number(val);
        break;
    case TB_ARG_INT:
        ok = json_is_integer(val);
        break;
    case TB_ARG_BOOL:
        ok = json_is_boolean(val);
        break;
    default:
        ok = json_is_string(val);
        break;
    }
    if (!ok) {
        errf(err, errsz, "args.%s: must be %s", s->name, want[s->type]);
        return TB_EINVAL;
    }
    if (s->type == TB_ARG_NUMBER || s->type == TB_ARG_INT) {
        v->num = json_number_value(val);
        v->i = s->type == TB_ARG_INT ? (long long)json_integer_value(val) : 0;
        double x = s->type == TB_ARG_INT ? (double)v->i : v->num;
        if (s->min < s->max && (x < s->min || x > s->max)) {
            errf(err, errsz, "args.%s: %.15g is out of range %.15g..%.15g",
                 s->name, x, s->min, s->max);
            return TB_EINVAL;
        }
    } else if (s->type == TB_ARG_BOOL) {
        v->b = json_is_true(val);
    } else {
        const char *str = json_string_value(val);
        int rc = s->type == TB_ARG_EVENT_NAME ? tb_event_name_valid(str)
                 : s->type == TB_ARG_PATTERN  ? tb_pattern_valid(str)
                                              : 0;
        if (rc) {
            const char *why = s->type == TB_ARG_PATTERN
                                  ? tb__pattern_problem(str)
                                  : tb_strerror(rc);
            errf(err, errsz,
                 "args.%s: bad %s \"%.80s\": %s (1..%d dot-separated "
                 "segments, at most %d bytes%s)",
                 s->name,
                 s->type == TB_ARG_EVENT_NAME ? "event name" : "pattern", str,
                 why, TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX,
                 s->type == TB_ARG_PATTERN ? "; \"*\", \"<param>\", a last "
                                             "\">\""
                                           : "");
            return TB_EINVAL;
        }
        if (!(v->s = strdup(str)))
            return TB_ENOMEM;
    }
    v->present = 1;
    return 0;
}

/* "a, b, c" of k's argument names into buf. */
static const char *arg_names(const kind *k, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < k->nspec && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "",
                                 k->spec[i].name);
    return buf;
}

/* Parses and checks args_json against k into a new tb_kind_args. */
static int validate(const kind *k, const char *args_json, int max_depth,
                    tb_kind_args **out, char *err, size_t errsz)
{
    json_t *root = NULL;
    if (args_json && args_json[0]) {
        json_error_t jerr;
        root = tb__json_loadb(args_json, strlen(args_json),
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                              max_depth, &jerr);
        if (!root) {
            errf(err, errsz, "args: invalid JSON: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
            return TB_EINVAL;
        }
        if (!json_is_object(root) && !json_is_null(root)) {
            json_decref(root);
            errf(err, errsz, "args must be a JSON object");
            return TB_EINVAL;
        }
    }
    tb_kind_args *a = calloc(1, sizeof *a + k->nspec * sizeof a->v[0]);
    int rc = a ? 0 : TB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < k->nspec; i++) {
        a->n = i + 1;
        a->v[i].type = k->spec[i].type;
        if (!(a->v[i].name = strdup(k->spec[i].name)))
            rc = TB_ENOMEM;
    }
    const char *key;
    json_t *val;
    json_object_foreach(json_is_object(root) ? root : NULL, key, val)
    {
        if (rc)
            break;
        size_t i = 0;
        while (i < k->nspec && strcmp(k->spec[i].name, key) != 0)
            i++;
        if (i == k->nspec) {
            char names[512];
            errf(err, errsz,
                 "args.%.80s: unknown member (kind \"%s\" takes %s)", key,
                 k->name,
                 k->nspec ? arg_names(k, names, sizeof names) : "no arguments");
            rc = TB_EINVAL;
        } else {
            rc = take(&a->v[i], &k->spec[i], val, err, errsz);
        }
    }
    for (size_t i = 0; rc == 0 && i < k->nspec; i++) {
        if (k->spec[i].required && !a->v[i].present) {
            errf(err, errsz, "args.%s: missing (required by kind \"%s\")",
                 k->spec[i].name, k->name);
            rc = TB_EINVAL;
        }
    }
    json_decref(root);
    if (rc) {
        if (rc == TB_ENOMEM)
            errf(err, errsz, "out of memory");
        kargs_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

enum {
    STAGE_KIND, /* looking the kind up */
    STAGE_ARGS, /* validating the args */
    STAGE_ADD   /* tb_task_add */
};

/* tb_task_spawn, also telling which stage failed; x as tb__task_add's. */
static int spawn_x(tb_app *app, const char *kind_name, const char *args_json,
                   const tb_task_opts *opts, tb__add_extra *x, uint64_t *id_out,
                   char *err, size_t errsz, int *stage)
{
    *stage = STAGE_KIND;
    errf(err, errsz, "%s", "");
    if (!app || !kind_name) {
        errf(err, errsz, "no app or kind");
        return TB_EINVAL;
    }
    tb_kind_args *args = NULL;
    tb_task_fn fn = NULL;
    char kname[TB_KIND_NAME_MAX + 1];
    const kind *k = find_kind(find_app(app), kind_name);
    int rc = k ? 0 : TB_ENOENT;
    if (k) {
        *stage = STAGE_ARGS;
        fn = k->fn;
        memcpy(kname, k->name, sizeof kname);
        rc = validate(k, args_json, app->cfg.core.json_max_depth, &args, err,
                      errsz);
        if (rc == 0 && k->check &&
            (rc = k->check(args, k->check_ud, err, errsz)) != 0) {
            kargs_free(args);
            args = NULL;
        }
    }
    if (rc == TB_ENOENT) {
        errf(err, errsz, "no task kind named \"%.80s\"", kind_name);
    }
    if (rc)
        return rc;
    *stage = STAGE_ADD;
    tb_task_opts o;
    if (opts) {
        o = *opts;
    } else {
        memset(&o, 0, sizeof o);
        o.worker = TB_WORKER_ANY;
    }
    o.kind = kname;
    o.ud_free = kargs_free;
    rc = tb__task_add(app, fn, args, &o, x, id_out);
    if (rc) {
        kargs_free(args);
        errf(err, errsz, "task \"%.80s\": %s", o.name ? o.name : "(unnamed)",
             tb_strerror(rc));
    }
    return rc;
}

static int spawn(tb_app *app, const char *kind_name, const char *args_json,
                 const tb_task_opts *opts, uint64_t *id_out, char *err,
                 size_t errsz, int *stage)
{
    if (opts && (opts->flags & TB_TASK_SINGLETON)) {
        *stage = STAGE_KIND;
        int rc = tb__kind_check(app, kind_name, args_json, err, errsz, stage);
        if (rc)
            return rc;
        *stage = STAGE_ADD;
        char holder[24];
        rc = tb__singleton_spawn(app, kind_name, args_json, opts, 0, id_out,
                                 holder, err, errsz);
        return rc;
    }
    return spawn_x(app, kind_name, args_json, opts, NULL, id_out, err, errsz,
                   stage);
}

int tb__kind_spawn(tb_app *app, const char *kind, const char *args_json,
                   const tb_task_opts *opts, tb__add_extra *x, uint64_t *id_out,
                   char *err, size_t errsz)
{
    int stage;
    return spawn_x(app, kind, args_json, opts, x, id_out, err, errsz, &stage);
}

int tb__kind_check(tb_app *app, const char *kind_name, const char *args_json,
                   char *err, size_t errsz, int *stage)
{
    errf(err, errsz, "%s", "");
    *stage = STAGE_KIND;
    const kind *k = kind_name ? find_kind(find_app(app), kind_name) : NULL;
    if (!k) {
        errf(err, errsz, "no task kind named \"%.80s\"",
             kind_name ? kind_name : "");
        return TB_ENOENT;
    }
    *stage = STAGE_ARGS;
    tb_kind_args *args = NULL;
    int rc =
        validate(k, args_json, app->cfg.core.json_max_depth, &args, err, errsz);
    if (rc == 0 && k->check)
        rc = k->check(args, k->check_ud, err, errsz);
    kargs_free(args);
    return rc;
}

int tb_task_spawn(tb_app *app, const char *kind, const char *args_json,
                  const tb_task_opts *opts, uint64_t *id_out, char *err,
                  size_t errsz)
{
    int stage;
    return spawn(app, kind, args_json, opts, id_out, err, errsz, &stage);
}

/* ---------------------------------------------------------------- built-in */

static int64_t to_ms(double seconds)
{
    return (int64_t)(seconds * 1000.0 + 0.5); /* seconds >= 0 */
}

/* Dispatches event with data (may be NULL) from self, caused by cause (may
 * be NULL); on an error that retrying cannot fix, fails self and returns
 * the error. A bus that is down or full only costs this one event (logged),
 * and so does a cause at event_max_hops (logged by tb_dispatch_from). */
static int emit(tb_task *self, const tb_event *cause, const char *event,
                const char *data, size_t len)
{
    int rc = tb_dispatch_from(tb_task_app(self), cause, event, data ? data : "",
                              data ? len : 0, NULL);
    if (rc == TB_ELOOP)
        return 0;
    if (rc == TB_ENOTCONN || rc == TB_ENOSPC) {
        tb__log(TB_LOG_WARN, "task \"%s\": event \"%s\" not dispatched: %s",
                tb_task_name(self), event, tb_strerror(rc));
        return 0;
    }
    if (rc)
        tb_task_fail(self, "dispatch of event \"%s\" failed: %s", event,
                     tb_strerror(rc));
    return rc;
}

/* sleep {seconds}: sleeps, then is done. */
static int kind_sleep(tb_task *self, void *arg)
{
    int rc = tb_sleep(self, to_ms(tb_kind_number(arg, "seconds", 0)));
    return rc == TB_ECANCELED ? rc : 0;
}

/* delay {seconds, event, data?}: sleeps, then dispatches event once. */
static int kind_delay(tb_task *self, void *arg)
{
    int rc = tb_sleep(self, to_ms(tb_kind_number(arg, "seconds", 0)));
    if (rc)
        return rc;
    const char *data = tb_kind_string(arg, "data");
    return emit(self, NULL, tb_kind_string(arg, "event"), data,
                data ? strlen(data) : 0);
}

/* interval {seconds, event, data?, count?}: dispatches event every seconds
 * (on a fixed schedule: a slow dispatch does not shift the later ones),
 * count times or until cancelled. */
static int kind_interval(tb_task *self, void *arg)
{
    int64_t period_us =
        (int64_t)(tb_kind_number(arg, "seconds", 1) * 1e6 + 0.5);
    long long count = tb_kind_int(arg, "count", 0);
    const char *event = tb_kind_string(arg, "event");
    const char *data = tb_kind_string(arg, "data");
    size_t len = data ? strlen(data) : 0;
    int64_t next = tb__mono_us();
    for (long long i = 0; count <= 0 || i < count; i++) {
        next += period_us;
        int64_t wait_us = next - tb__mono_us();
        int rc = tb_sleep(self, wait_us > 0 ? (wait_us + 999) / 1000 : 0);
        if (rc)
            return rc;
        if ((rc = emit(self, NULL, event, data, len)) != 0)
            return rc;
    }
    return 0;
}

/* relay {pattern, event}: dispatches event, with the same data, for each
 * event matching pattern, until cancelled. Each relayed event counts one
 * hop more than its cause, so relays that feed each other in a cycle stop
 * at event_max_hops. */
static int kind_relay(tb_task *self, void *arg)
{
    const char *pattern = tb_kind_string(arg, "pattern");
    const char *event = tb_kind_string(arg, "event");
    if (tb_pattern_match(pattern, event)) {
        tb_task_fail(self,
                     "event \"%s\" matches pattern \"%s\": the relay would "
                     "feed itself",
                     event, pattern);
        return TB_EINVAL;
    }
    int rc = 0;
    tb_sub *sub = tb_sub_open(self, pattern, 0, &rc);
    if (!sub) {
        tb_task_fail(self, "cannot subscribe to \"%s\": %s", pattern,
                     tb_strerror(rc));
        return rc;
    }
    for (;;) {
        tb_event *ev = NULL;
        rc = tb_sub_next(self, sub, -1, &ev);
        if (rc)
            break;
        size_t len;
        const char *data = tb_event_data(ev, &len);
        rc = emit(self, ev, event, data, len);
        tb_event_unref(ev);
        if (rc)
            break;
    }
    tb_sub_close(sub);
    return rc;
}

int tb_app_add_builtin_kinds(tb_app *app)
{
    static const tb_arg_spec sleep_spec[] = {
        {"seconds", TB_ARG_NUMBER, 1, 0, 86400},
        {NULL, 0, 0, 0, 0},
    };
    static const tb_arg_spec delay_spec[] = {
        {"seconds", TB_ARG_NUMBER, 1, 0, 86400},
        {"event", TB_ARG_EVENT_NAME, 1, 0, 0},
        {"data", TB_ARG_STRING, 0, 0, 0},
        {NULL, 0, 0, 0, 0},
    };
    static const tb_arg_spec interval_spec[] = {
        {"seconds", TB_ARG_NUMBER, 1, 0.001, 86400},
        {"event", TB_ARG_EVENT_NAME, 1, 0, 0},
        {"data", TB_ARG_STRING, 0, 0, 0},
        {"count", TB_ARG_INT, 0, 1, 1e9},
        {NULL, 0, 0, 0, 0},
    };
    static const tb_arg_spec relay_spec[] = {
        {"pattern", TB_ARG_PATTERN, 1, 0, 0},
        {"event", TB_ARG_EVENT_NAME, 1, 0, 0},
        {NULL, 0, 0, 0, 0},
    };
    static const struct {
        const char *name;
        tb_task_fn fn;
        const tb_arg_spec *spec;
    } kinds[] = {
        {"sleep", kind_sleep, sleep_spec},
        {"delay", kind_delay, delay_spec},
        {"interval", kind_interval, interval_spec},
        {"relay", kind_relay, relay_spec},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        int rc =
            tb_app_add_kind(app, kinds[i].name, kinds[i].fn, kinds[i].spec);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- HTTP */

/* The spawned task as GET /tasks/{name} shows it, plus "replicas". If it
 * is already gone (purged or replaced), its name, id and kind. */
static json_t *spawned_json(tb_app *app, const char *name, uint64_t id,
                            const char *kind_name)
{
    json_t *o = NULL;
    int n = 0;
    pthread_mutex_lock(&app->reg_mu);
    for (tb_task *t = app->all_head; t; t = t->all_next) {
        if (t->hidden || strcmp(t->name, name) != 0)
            continue;
        n++;
        if (t->id == id && !o)
            o = tb__cluster_task_json(app, t);
    }
    pthread_mutex_unlock(&app->reg_mu);
    if (o) {
        json_object_set_new(o, "replicas", json_integer(n));
        return o;
    }
    o = json_object();
    if (o) {
        json_object_set_new(o, "name", tb__api_jstr(name));
        json_object_set_new(o, "id", json_integer((json_int_t)id));
        json_object_set_new(o, "kind", json_string(kind_name));
        json_object_set_new(o, "instance",
                            id ? json_string(app->instance) : json_null());
    }
    return o;
}

/* POST /tasks {"kind", "name"?, "args"?, "worker"?, "singleton"?,
 * "every"?}: 201 with the task. */
static int post_task(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    size_t len;
    const char *body = tb_http_body(req, &len);
    json_error_t jerr;
    json_t *root = tb__json_loadb(body, len, JSON_REJECT_DUPLICATES,
                                  app->cfg.core.json_max_depth, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return tb_http_error(req, 400, "bad_json",
                             "the body must be a JSON object {\"kind\", "
                             "\"name\", \"args\", \"worker\"}%s%s",
                             root ? "" : ": ", root ? "" : jerr.text);
    }
    const char *key;
    json_t *val;
    char msg[160] = "";
    json_object_foreach(root, key, val)
    {
        const char *want = NULL;
        if (strcmp(key, "kind") == 0 || strcmp(key, "name") == 0)
            want = json_is_string(val) ? NULL : "a string";
        else if (strcmp(key, "args") == 0)
            want =
                json_is_object(val) || json_is_null(val) ? NULL : "an object";
        else if (strcmp(key, "worker") == 0)
            want = json_is_integer(val) ? NULL : "an integer";
        else if (strcmp(key, "singleton") == 0)
            want = json_is_boolean(val) ? NULL : "true or false";
        else if (strcmp(key, "every") == 0)
            want = json_is_string(val) ? NULL : "a duration such as \"30s\"";
        else
            want = "absent (expected kind, name, args, worker, singleton, "
                   "every)";
        if (want) {
            /* key lives in root: format before letting go of it. */
            snprintf(msg, sizeof msg, "member \"%.80s\" must be %s", key, want);
            break;
        }
    }
    if (msg[0]) {
        json_decref(root);
        return tb_http_error(req, 400, "bad_request", "%s", msg);
    }
    const char *kind_name = json_string_value(json_object_get(root, "kind"));
    if (!kind_name) {
        json_decref(root);
        return tb_http_error(req, 400, "bad_request",
                             "member \"kind\" is required");
    }
    tb_task_opts o;
    memset(&o, 0, sizeof o);
    o.name = json_string_value(json_object_get(root, "name"));
    o.worker = TB_WORKER_ANY;
    json_t *w = json_object_get(root, "worker");
    if (w) {
        json_int_t wi = json_integer_value(w);
        int n = tb_app_workers(app);
        if (wi < 0 || wi >= n) {
            json_decref(root);
            return tb_http_error(req, 400, "bad_worker",
                                 "worker must be in 0..%d", n - 1);
        }
        o.worker = (int)wi;
    }
    int singleton = json_is_true(json_object_get(root, "singleton"));
    int64_t every_ms = 0;
    json_t *every = json_object_get(root, "every");
    if (every) {
        int min = app->cfg.core.periodic_min_ms;
        if (tb__duration_ms(json_string_value(every), &every_ms) != 0 ||
            every_ms < min || every_ms > TB_PERIODIC_MAX_MS) {
            json_decref(root);
            return tb_http_error(
                req, 400, "bad_every",
                "every must be a duration such as \"500ms\", \"30s\", "
                "\"5m\" or \"1h\" from %d ms (core.periodic_min_ms) to "
                "7 days",
                min);
        }
        singleton = 1; /* once per tick for the whole cluster */
    }
    if (singleton && (!o.name || w)) {
        json_decref(root);
        return tb_http_error(req, 400, "bad_request",
                             "a singleton or periodic task needs a \"name\" "
                             "and takes no \"worker\"");
    }
    json_t *args = json_object_get(root, "args");
    char *args_json =
        args ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (args && !args_json) {
        json_decref(root);
        return tb_http_error(req, 500, "internal", "out of memory");
    }
    char err[512];
    uint64_t id = 0;
    int stage;
    tb__add_extra x = {0};
    int rc;
    /* ?scope=local: the name is unique on this instance only (not claimed
     * across the cluster). */
    char scope[16];
    int qs = tb_http_query(req, "scope", scope, sizeof scope);
    if (qs != TB_ENOENT) {
        int local = qs >= 0 && !strcmp(scope, "local");
        if ((!local && (qs < 0 || strcmp(scope, "cluster") != 0)) ||
            (local && singleton)) {
            free(args_json);
            json_decref(root);
            return tb_http_error(req, 400, "bad_scope",
                                 "scope must be cluster (the default: the "
                                 "name is unique across the cluster) or "
                                 "local (unique on this instance only; not "
                                 "for singleton or periodic tasks)");
        }
        if (local)
            x.iflags |= TB__TASK_LOCAL;
    }
    if (singleton) {
        o.flags |= TB_TASK_SINGLETON;
        rc = tb__kind_check(app, kind_name, args_json, err, sizeof err, &stage);
        if (rc == 0) {
            stage = STAGE_ADD;
            rc = tb__singleton_spawn(app, kind_name, args_json, &o, every_ms,
                                     &id, x.holder, err, sizeof err);
        }
    } else {
        rc = spawn_x(app, kind_name, args_json, &o, &x, &id, err, sizeof err,
                     &stage);
    }
    free(args_json);
    json_t *out = NULL;
    if (rc == 0) {
        char gen[32];
        if (!o.name) {
            snprintf(gen, sizeof gen, "task-%llu", (unsigned long long)id);
            o.name = gen;
        }
        out = spawned_json(app, o.name, id, kind_name);
    }
    json_decref(root); /* o.name and kind_name pointed into it */
    if (rc == 0) {
        char *s = out ? json_dumps(out, JSON_COMPACT) : NULL;
        json_decref(out);
        if (!s)
            return tb_http_error(req, 500, "internal", "out of memory");
        rc = tb_http_respond_json(req, 201, s);
        free(s);
        return rc;
    }
    if (rc == TB_ENOENT && stage == STAGE_KIND)
        return tb_http_error(req, 404, "unknown_kind", "%s", err);
    if (rc == TB_EINVAL && stage == STAGE_ARGS)
        return tb_http_error(req, 400, "bad_args", "%s", err);
    if (rc == TB_EPERM && stage == STAGE_ARGS)
        return tb_http_error(req, 403, "not_allowed", "%s", err);
    switch (rc) {
    case TB_EEXIST: {
        json_t *extra = json_object();
        if (extra)
            /* The holder's instance; for a singleton that no instance
             * runs right now (between an owner's death and a takeover),
             * null. A task's name held here has no holder set. */
            json_object_set_new(extra, "instance",
                                x.holder[0] ? json_string(x.holder)
                                : singleton ? json_null()
                                            : json_string(app->instance));
        return tb__api_error_with(req, 409, "name_taken", extra,
                                  "%s: cancel it first, or pick another name",
                                  err);
    }
    case TB_ENOTCONN:
        return tb_http_error(req, 503, "redis_unavailable",
                             "%s: the name cannot be claimed across the "
                             "cluster while Redis is unreachable",
                             err);
    case TB_EAGAIN:
        return tb_http_error(req, 503, "not_registered",
                             "%s: this instance's record is not in Redis "
                             "yet (its next heartbeat puts it back): retry",
                             err);
    case TB_ETIMEDOUT:
        return tb_http_error(req, 503, "redis_timeout",
                             "%s: Redis did not answer the name's claim in "
                             "time",
                             err);
    case TB_EMSGSIZE: /* a singleton's arguments */
        return tb_http_error(req, 400, "bad_args", "%s", err);
    case TB_EINVAL:
    case TB_ENAMETOOLONG:
        return tb_http_error(req, 400, "bad_name",
                             "%s (a task name is 1..%d bytes, no control "
                             "characters, not \".\" or \"..\")",
                             err, TB_TASK_NAME_MAX);
    case TB_ESHUTDOWN:
        return tb_http_error(req, 503, "shutting_down",
                             "the app is stopping or stopped");
    default:
        return tb_http_error(req, 500, "internal", "%s", err);
    }
}

int tb__api_register_kinds(tb_app *app)
{
    int rc = tb_app_add_route(app, "POST", "/tasks", post_task, NULL);
    return rc ? rc
              : tb_app_add_route(app, "GET", "/kinds", tb__kinds_get, NULL);
}

int tb_app_add_kind_check(tb_app *app, const char *kind_name,
                          tb_kind_check_fn fn, void *ud,
                          void (*ud_free)(void *ud))
{
    if (!app || !kind_name || !fn)
        return TB_EINVAL;
    if (atomic_load(&app->state) != TB__APP_NEW)
        return TB_EBUSY;
    kind *k = find_kind(find_app(app), kind_name);
    if (!k)
        return TB_ENOENT;
    if (k->check)
        return TB_EEXIST;
    k->check = fn;
    k->check_ud = ud;
    k->check_ud_free = ud_free;
    return 0;
}
