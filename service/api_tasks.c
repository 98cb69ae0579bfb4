/* api_tasks.c - the task routes of the built-in API: GET /tasks (paged,
 * filtered, across the cluster), GET and DELETE /tasks/{name}, POST
 * /tasks/purge. (POST /tasks, spawning a kind, is kinds.c's.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "cluster.h"
#include "envelope.h"
#include "http.h"
#include "internal.h"

#define CANCEL_TIMEOUT_MAX_S 3600

static int parse_state(const char *s, tb_task_state *out)
{
    for (int i = TB_TASK_PENDING; i <= TB_TASK_CANCELLED; i++) {
        if (strcmp(s, tb_task_state_name((tb_task_state)i)) == 0) {
            *out = (tb_task_state)i;
            return 0;
        }
    }
    return TB_EINVAL;
}

/* ?scope=local|cluster (default cluster): 1 for local, 0 for cluster, -1
 * when it is neither. */
static int query_scope(tb_http_req *req)
{
    char sbuf[16];
    int rc = tb_http_query(req, "scope", sbuf, sizeof sbuf);
    if (rc == TB_ENOENT)
        return 0;
    if (rc >= 0 && !strcmp(sbuf, "local"))
        return 1;
    if (rc >= 0 && !strcmp(sbuf, "cluster"))
        return 0;
    return -1;
}

static int bad_scope(tb_http_req *req)
{
    return tb_http_error(req, 400, "bad_scope",
                         "scope must be local (this instance) or cluster "
                         "(every instance: the default)");
}

/* The answer to a cluster call that could not ask the cluster. */
static int cluster_error(tb_http_req *req, int rc, const char *what)
{
    if (rc == TB_ENOTCONN)
        return tb_http_error(req, 503, "redis_unavailable",
                             "%s: Redis is unreachable, so the other "
                             "instances cannot be asked; ?scope=local "
                             "answers for this instance",
                             what);
    if (rc == TB_ETIMEDOUT)
        return tb_http_error(req, 504, "instance_timeout",
                             "%s: the instance that holds it did not answer "
                             "in time",
                             what);
    return tb_http_error(req, 500, "internal", "%s: %s", what, tb_strerror(rc));
}

/* 1 if s (len bytes) is a ?kind= value: 1..TB_KIND_NAME_MAX bytes of
 * UTF-8 (it travels to the other instances as a JSON string), no control
 * characters (the decoder already refused a NUL). */
static int kind_filter_ok(const char *s, int len)
{
    if (len < 1 || len > TB_KIND_NAME_MAX || !tb__utf8_valid(s, (size_t)len))
        return 0;
    for (int i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* GET /tasks[?state=...][&kind=K][&instance=I][&limit=N][&cursor=C]
 * [&scope=local] */
static int list_tasks(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    char sbuf[16];
    tb_task_state want = TB_TASK_PENDING;
    int rc = tb_http_query(req, "state", sbuf, sizeof sbuf);
    int filter = rc != TB_ENOENT;
    if (filter && (rc < 0 || parse_state(sbuf, &want) != 0))
        return tb_http_error(req, 400, "bad_state",
                             "state must be pending, running, done, failed "
                             "or cancelled");
    tb__task_filter f = {filter ? (int)want : -1, NULL, NULL};
    char kbuf[TB_KIND_NAME_MAX + 1];
    rc = tb_http_query(req, "kind", kbuf, sizeof kbuf);
    if (rc != TB_ENOENT) {
        if (rc < 0 || !kind_filter_ok(kbuf, rc))
            return tb_http_error(req, 400, "bad_kind",
                                 "kind must be a task's kind exactly: 1..%d "
                                 "bytes of UTF-8, no control characters",
                                 TB_KIND_NAME_MAX);
        f.kind = kbuf;
    }
    char ibuf[sizeof app->instance];
    rc = tb_http_query(req, "instance", ibuf, sizeof ibuf);
    if (rc != TB_ENOENT) {
        if (rc < 1 || strspn(ibuf, "0123456789abcdef") != (size_t)rc)
            return tb_http_error(req, 400, "bad_instance",
                                 "instance must be an instance id as GET "
                                 "/instances lists it (up to %zu lowercase "
                                 "hex digits)",
                                 sizeof app->instance - 1);
        f.instance = ibuf;
    }
    int local = query_scope(req);
    if (local < 0)
        return bad_scope(req);
    int page_max = tb_app_get_config(app)->http.tasks_page_max;
    long limit = page_max;
    char lbuf[16];
    rc = tb_http_query(req, "limit", lbuf, sizeof lbuf);
    if (rc != TB_ENOENT) {
        /* Digits only: strtol would also take " 50", "+5" and "-0". */
        int digits =
            rc >= 0 && lbuf[0] && strspn(lbuf, "0123456789") == strlen(lbuf);
        limit = digits ? strtol(lbuf, NULL, 10) : -1;
        if (!digits || limit < 1 || limit > page_max)
            return tb_http_error(req, 400, "bad_limit",
                                 "limit must be 1..%d (http.tasks_page_max)",
                                 page_max);
    }
    char cursor[TB_CURSOR_MAX] = "";
    rc = tb_http_query(req, "cursor", cursor, sizeof cursor);
    if (rc < 0 && rc != TB_ENOENT)
        return tb_http_error(req, 400, "bad_cursor",
                             "cursor must be the \"cursor\" of an earlier "
                             "page");
    json_t *tasks = NULL, *unreachable = NULL;
    char next[TB_CURSOR_MAX];
    rc = tb__cluster_list(app, cursor, (size_t)limit, &f, local, &tasks, next,
                          &unreachable);
    if (rc == TB_EINVAL)
        return tb_http_error(req, 400, "bad_cursor",
                             "cursor must be the \"cursor\" of an earlier "
                             "page");
    if (rc)
        return tb_http_error(req, 500, "internal", "out of memory");
    json_t *o = json_object();
    if (o) {
        json_object_set_new(o, "tasks", tasks);
        json_object_set_new(o, "cursor",
                            next[0] ? json_string(next) : json_null());
        if (json_array_size(unreachable))
            json_object_set_new(o, "unreachable", unreachable);
        else
            json_decref(unreachable);
    } else {
        json_decref(tasks);
        json_decref(unreachable);
    }
    return tb__api_respond(req, 200, o);
}

static int not_found(tb_http_req *req, const char *name)
{
    return tb_http_error(req, 404, "not_found", "no task named \"%s\"", name);
}

/* GET /tasks/{name}[?scope=local] */
static int get_task(tb_http_req *req, void *ud)
{
    (void)ud;
    const char *name = tb_http_param(req, "name");
    int local = query_scope(req);
    if (local < 0)
        return bad_scope(req);
    json_t *o = NULL;
    int rc = tb__cluster_get(tb_http_app(req), name, local, &o);
    if (rc == TB_ENOENT)
        return not_found(req, name);
    if (rc)
        return cluster_error(req, rc, name);
    return tb__api_respond(req, 200, o);
}

/* DELETE /tasks/{name}[?timeout=S][&scope=local]: cancels where it runs
 * and waits for its end. */
static int cancel_task(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    const char *name = tb_http_param(req, "name");
    int timeout_ms = tb_app_get_config(app)->core.graceful_timeout_ms;
    if (!tb__api_query_timeout(req, CANCEL_TIMEOUT_MAX_S, &timeout_ms))
        return tb__api_bad_timeout(req, CANCEL_TIMEOUT_MAX_S);
    int local = query_scope(req);
    if (local < 0)
        return bad_scope(req);
    json_t *task = NULL;
    int rc = tb__cluster_cancel(app, name, timeout_ms, local, &task);
    if (rc == TB_ENOENT || rc == TB_EINVAL || rc == TB_ENAMETOOLONG)
        return not_found(req, name);
    if (rc == TB_ETIMEDOUT) {
        /* The task this cancel ended (or is still ending), not whatever
         * holds the name now: a new task may have taken it meanwhile. */
        json_t *extra = json_object();
        if (extra)
            json_object_set_new(extra, "task", task ? task : json_null());
        else
            json_decref(task);
        return tb__api_error_with(req, 504, "cancel_timeout", extra,
                                  "task \"%s\" is still cancelling after %d "
                                  "ms",
                                  name, timeout_ms);
    }
    if (rc)
        return cluster_error(req, rc, name);
    return tb__api_respond(req, 200, task);
}

/* POST /tasks/purge */
static int purge_tasks(tb_http_req *req, void *ud)
{
    (void)ud;
    int n = tb_task_purge(tb_http_app(req));
    if (n < 0)
        return tb_http_error(req, 500, "internal", "purge failed: %s",
                             tb_strerror(n));
    json_t *o = json_object();
    if (o)
        json_object_set_new(o, "purged", json_integer(n));
    return tb__api_respond(req, 200, o);
}

int tb__api_register_tasks(tb_app *app)
{
    static const struct {
        const char *method, *path;
        tb_http_fn fn;
    } routes[] = {
        {"GET", "/tasks", list_tasks},
        {"GET", "/tasks/{name}", get_task},
        {"DELETE", "/tasks/{name}", cancel_task},
        {"POST", "/tasks/purge", purge_tasks},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int rc = tb__app_route_as(app, routes[i].method, routes[i].path,
                                  routes[i].fn, NULL, TB__HTTP_ADMIN);
        if (rc)
            return rc;
    }
    return 0;
}
