/* metrics.h - Prometheus metrics: HTTP request counters and GET /metrics
 * (private). */
#ifndef TASKBUS_METRICS_H
#define TASKBUS_METRICS_H

#include <stddef.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

/* The app's request counters (app->metrics). */
typedef struct tb__metrics tb__metrics;

/* A new, empty set of counters, or NULL when out of memory. Free with
 * tb__metrics_free (NULL is a no-op). */
tb__metrics *tb__metrics_new(void);
void tb__metrics_free(tb__metrics *m);

/* Counts one answered request: route is the matched template (kept as a
 * pointer: it must live as long as m, as the router's templates do) or NULL
 * for "unmatched"; method is copied; seconds is how long it took. At most
 * TB__METRICS_SERIES (route, method, status) series are kept; past that,
 * requests count under route="other". Any thread. */
#define TB__METRICS_SERIES 256
void tb__metrics_count(tb__metrics *m, const char *route, const char *method,
                       int status, double seconds);

/* s escaped as a Prometheus label value (backslash, double quote and
 * newline become \\, \" and \n). Returns a malloc'd string the caller
 * frees, or NULL when out of memory. */
char *tb__metrics_escape(const char *s);

/* The exposition text (format 0.0.4) of app's metrics: bus, tasks and HTTP
 * requests. Returns a malloc'd, NUL-terminated text the caller frees and
 * sets *len, or NULL when out of memory. Any thread. */
char *tb__metrics_render(tb_app *app, size_t *len);

/* GET /metrics: answers tb__metrics_render's text as
 * "text/plain; version=0.0.4". */
int tb__metrics_handler(tb_http_req *req, void *ud);

/* The same counters (and a few gauges) as one JSON object for GET /stats:
 * instance, version, started, uptime_s, uptime_ms, workers, and the groups
 * bus, events, tasks, ws, sse, longpolls, history, cluster, singletons,
 * http (README's API list names every member). Counters only grow while
 * the process lives, so a client polling it computes rates. A new
 * reference, or NULL out of memory. Any thread. */
json_t *tb__stats_json(tb_app *app);

/* GET /stats[?scope=local|cluster]: tb__stats_json, or with
 * scope=cluster the sums of its numbers over every live instance (asked
 * over the cluster calls, at most redis.command_timeout_ms); 400 bad_scope
 * for another scope. */
int tb__stats_handler(tb_http_req *req, void *ud);

#endif /* TASKBUS_METRICS_H */
