/* api_history.c - the HTTP side of the history: checking a client's since,
 * and GET /history?events=p1,p2&since=<pos>&limit=N (docs/HISTORY.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "history.h"
#include "http.h"
#include "internal.h"

int tb__api_history_error(tb_http_req *req, int rc)
{
    if (rc == TB_ENOTCONN || rc == TB_ETIMEDOUT || rc == TB_EAGAIN)
        return tb_http_error(req, 503, "bus_unavailable",
                             "cannot read the history: %s", tb_strerror(rc));
    return tb_http_error(req, 500, "internal", "reading the history: %s",
                         tb_strerror(rc));
}

int tb__api_since(tb_http_req *req, char *out)
{
    out[0] = '\0';
    char buf[TB_POS_MAX + 8];
    int rc = tb_http_query(req, "since", buf, sizeof buf);
    if (rc == TB_ENOENT || rc == 0)
        return 0; /* none, or none yet: "since=" */
    tb_app *app = tb_http_app(req);
    if (app->cfg.core.history_size <= 0) {
        tb_http_error(req, 400, "history_off",
                      "since: this server keeps no history (history_size "
                      "is 0): events cannot be resumed");
        return -1;
    }
    tb__pos p;
    if (rc < 0 || tb__pos_parse(buf, (size_t)rc, &p) != 0) {
        tb_http_error(req, 400, "bad_since",
                      "since must be a position as events carry it "
                      "(\"pos\": <epoch>-<seq>)");
        return -1;
    }
    memcpy(out, buf, (size_t)rc + 1);
    return 0;
}

json_t *tb__api_recovery_json(int recovered, const char *pos, const char *epoch)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "recovered", json_boolean(recovered));
    json_object_set_new(o, "pos", json_string(pos));
    json_object_set_new(o, "epoch", json_string(epoch));
    return o;
}

/* The events of a page, each as its envelope. */
static json_t *events_json(const tb_history *h)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < h->n; i++) {
        size_t len;
        const char *env = tb_event_json(h->events[i], &len);
        json_t *v = env ? json_loadb(env, len, JSON_ALLOW_NUL, NULL) : NULL;
        if (!v || json_array_append_new(a, v)) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

typedef struct collect {
    tb_http_req *req;
    char **pats;
    int n, max;
} collect;

static int collect_one(const char *pat, void *arg)
{
    collect *c = arg;
    int count = c->n;
    if (tb__api_check_pattern(c->req, pat, &count, c->max))
        return 1;
    if (!(c->pats[c->n] = strdup(pat))) {
        tb_http_error(c->req, 500, "internal", "out of memory");
        return 1;
    }
    c->n++;
    return 0;
}

/* Answers req with an error (as tb_http_error) and returns 1: answered. */
#define refuse(...) (tb_http_error(__VA_ARGS__), 1)

/* GET /history: a page of the history's events matching ?events= after
 * ?since= (or from the oldest held), at most ?limit= (default and cap
 * history_page_max): {"events": [...], "recovered", "next", "more",
 * "epoch"}. Continue with since=next while more is true. */
static int get_history(tb_http_req *req, void *ud)
{
    (void)ud;
    tb_app *app = tb_http_app(req);
    const tb_app_config *cfg = &app->cfg;
    if (cfg->core.history_size <= 0)
        return tb_http_error(req, 400, "history_off",
                             "this server keeps no history (history_size "
                             "is 0)");
    char since[TB_POS_MAX];
    if (tb__api_since(req, since) != 0)
        return 0;
    size_t limit = (size_t)cfg->core.history_page_max;
    char lbuf[24];
    int rc = tb_http_query(req, "limit", lbuf, sizeof lbuf);
    if (rc != TB_ENOENT) {
        char *end = NULL;
        long long v = rc > 0 && lbuf[0] >= '0' && lbuf[0] <= '9'
                          ? strtoll(lbuf, &end, 10)
                          : -1;
        if (rc <= 0 || !end || *end || v < 1 || v > cfg->core.history_page_max)
            return tb_http_error(req, 400, "bad_limit",
                                 "limit must be a number of events in 1..%d "
                                 "(history_page_max)",
                                 cfg->core.history_page_max);
        limit = (size_t)v;
    }
    size_t cap = (size_t)cfg->ws.max_patterns * (TB_EVENT_NAME_MAX + 1) + 1;
    char *list = malloc(cap);
    char **pats = calloc((size_t)cfg->ws.max_patterns, sizeof *pats);
    collect c = {req, pats, 0, cfg->ws.max_patterns};
    int answered = 0;
    if (!list || !pats) {
        answered = refuse(req, 500, "internal", "out of memory");
    } else {
        rc = tb_http_query(req, "events", list, cap);
        if (rc == TB_ENOENT || rc == 0)
            answered = refuse(req, 400, "bad_query",
                              "events: the patterns to read, "
                              "comma-separated, are required");
        else if (rc < 0)
            answered = refuse(req, 400, "bad_query",
                              "events: too long, or a bad "
                              "percent-escape");
        else if (tb__api_each_pattern(list, collect_one, &c) != 0)
            answered = 1;
        else if (c.n == 0)
            answered =
                refuse(req, 400, "bad_query", "events: no pattern given");
    }
    free(list);
    tb_history h;
    memset(&h, 0, sizeof h);
    if (!answered) {
        rc = tb_history_read(app, (const char *const *)pats, c.n, since, limit,
                             &h);
        if (rc)
            answered = (tb__api_history_error(req, rc), 1);
    }
    for (int i = 0; i < c.n; i++)
        free(pats[i]);
    free(pats);
    if (answered)
        return 0;
    json_t *o = json_object();
    json_t *evs = events_json(&h);
    if (o && evs) {
        json_object_set_new(o, "events", evs);
        json_object_set_new(o, "recovered", json_boolean(h.recovered));
        json_object_set_new(o, "next", json_string(h.next));
        json_object_set_new(o, "more", json_boolean(h.more));
        json_object_set_new(o, "epoch", json_string(h.epoch));
    } else {
        json_decref(evs);
        json_decref(o);
        o = NULL;
    }
    tb_history_free(&h);
    return tb__api_respond(req, 200, o);
}

int tb__api_register_history(tb_app *app)
{
    return tb__app_route_as(app, "GET", "/history", get_history, NULL,
                            TB__HTTP_CLIENT);
}
