/* bus_memory.c - the in-process event bus: fan-out to this app's workers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters.h"

static int mem_start(tb__bus *bus)
{
    (void)bus;
    tb__log(TB_LOG_INFO, "event bus: in-process (no Redis configured): "
                         "events stay inside this process");
    return 0;
}

/* One record of the shared store: in this process, the cluster is this
 * instance. */
typedef struct mem_rec {
    struct mem_rec *next;
    char group[33];
    char id[TB__KV_ID_MAX + 1];
    int64_t expires_us; /* monotonic */
    size_t len;
    char *value;
} mem_rec;

typedef struct mem_bus {
    tb__bus bus;
    int64_t since_us;
    atomic_uint_fast64_t published;
    pthread_mutex_t kv_mu; /* guards recs */
    mem_rec *recs;
    int has_history; /* core.history_size > 0: ring is set up */
    tb__hist_ring ring;
} mem_bus;

static void deliver(void *ud, tb_event *ev)
{
    tb__app_deliver(ud, ev);
}

static int mem_publish(tb__bus *bus, tb_event *ev, tb__publish_cb cb, void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    if (m->has_history)
        tb__hist_ring_publish(&m->ring, ev, deliver, bus->app);
    else
        tb__app_deliver(bus->app, ev);
    atomic_fetch_add_explicit(&m->published, 1, memory_order_relaxed);
    if (cb)
        cb(0, ud); /* in every worker's inbox: as published as it gets */
    return 0;
}

/* In order; without history, one post per worker for the lot. */
static int mem_publish_many(tb__bus *bus, tb_event *const *evs, size_t n,
                            tb__publish_cb cb, void *const *uds)
{
    mem_bus *m = (mem_bus *)bus;
    if (m->has_history) {
        for (size_t i = 0; i < n; i++)
            tb__hist_ring_publish(&m->ring, evs[i], deliver, bus->app);
    } else {
        tb__app_deliver_batch(bus->app, evs, n);
    }
    atomic_fetch_add_explicit(&m->published, n, memory_order_relaxed);
    for (size_t i = 0; cb && i < n; i++)
        cb(0, uds ? uds[i] : NULL);
    return 0;
}

static void mem_status(tb__bus *bus, tb_bus_info *out)
{
    mem_bus *m = (mem_bus *)bus;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "memory");
    out->state = TB_BUS_CONNECTED;
    out->since_us = m->since_us;
    out->published = atomic_load(&m->published);
    out->received = out->published;
}

static void mem_stop(tb__bus *bus)
{
    (void)bus;
}

/* --------------------------------------------------------------- store */

static void rec_free(mem_rec *r)
{
    free(r->value);
    free(r);
}

/* Unlinks and frees group/id (id NULL: none) and every expired record.
 * kv_mu held. Returns 1 when group/id was there (and live). */
static int sweep(mem_bus *m, const char *group, const char *id, int64_t now)
{
    int found = 0;
    for (mem_rec **pp = &m->recs; *pp;) {
        mem_rec *r = *pp;
        int mine = id && !strcmp(r->group, group) && !strcmp(r->id, id);
        found |= mine && r->expires_us > now;
        if (mine || r->expires_us <= now) {
            *pp = r->next;
            rec_free(r);
            continue;
        }
        pp = &r->next;
    }
    return found;
}

static int mem_kv_put(tb__bus *bus, const char *group, const char *id,
                      const char *value, size_t len, int64_t ttl_ms,
                      tb__kv_done_cb cb, void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    if (!tb__kv_name_ok(group, strlen(group), 32) ||
        !tb__kv_name_ok(id, strlen(id), TB__KV_ID_MAX) || !len ||
        len > TB__KV_VALUE_MAX || ttl_ms <= 0)
        return TB_EINVAL;
    mem_rec *r = calloc(1, sizeof *r);
    char *v = malloc(len + 1);
    if (!r || !v) {
        free(r);
        free(v);
        return TB_ENOMEM;
    }
    memcpy(v, value, len);
    v[len] = '\0';
    r->value = v;
    r->len = len;
    snprintf(r->group, sizeof r->group, "%s", group);
    snprintf(r->id, sizeof r->id, "%s", id);
    int64_t now = tb__mono_us();
    r->expires_us = now + ttl_ms * 1000;
    pthread_mutex_lock(&m->kv_mu);
    int replaced = sweep(m, group, id, now);
    r->next = m->recs;
    m->recs = r;
    pthread_mutex_unlock(&m->kv_mu);
    if (cb)
        cb(replaced ? 0 : TB__KV_CREATED, ud);
    return 0;
}

static int mem_kv_del(tb__bus *bus, const char *group, const char *id,
                      tb__kv_done_cb cb, void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    if (!tb__kv_name_ok(group, strlen(group), 32) ||
        !tb__kv_name_ok(id, strlen(id), TB__KV_ID_MAX))
        return TB_EINVAL;
    pthread_mutex_lock(&m->kv_mu);
    sweep(m, group, id, tb__mono_us());
    pthread_mutex_unlock(&m->kv_mu);
    if (cb)
        cb(0, ud);
    return 0;
}

/* Copies the group's live records out under the lock, then runs cb
 * without it (cb may call put or del). */
static int mem_kv_list(tb__bus *bus, const char *group, tb__kv_list_cb cb,
                       void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    if (!tb__kv_name_ok(group, strlen(group), 32))
        return TB_EINVAL;
    size_t n = 0, cap = 0;
    tb__kv_rec *recs = NULL;
    int rc = 0;
    pthread_mutex_lock(&m->kv_mu);
    sweep(m, group, NULL, tb__mono_us());
    for (mem_rec *r = m->recs; r && n < TB__KV_LIST_MAX; r = r->next) {
        if (strcmp(r->group, group) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            tb__kv_rec *nr = realloc(recs, nc * sizeof *nr);
            if (!nr) {
                rc = TB_ENOMEM;
                break;
            }
            recs = nr;
            cap = nc;
        }
        char *id = strdup(r->id);
        char *v = malloc(r->len + 1);
        if (!id || !v) {
            free(id);
            free(v);
            rc = TB_ENOMEM;
            break;
        }
        memcpy(v, r->value, r->len + 1);
        recs[n++] = (tb__kv_rec){id, strlen(id), v, r->len};
    }
    pthread_mutex_unlock(&m->kv_mu);
    if (rc == 0 && cb)
        cb(0, recs, n, 0, ud);
    for (size_t i = 0; i < n; i++) {
        free((char *)recs[i].id);
        free((char *)recs[i].value);
    }
    free(recs);
    return rc;
}

static const tb__kv_ops memory_kv = {
    .put = mem_kv_put,
    .del = mem_kv_del,
    .list = mem_kv_list,
};

/* -------------------------------------------------------------- history */

static int
mem_history(tb__bus *bus, uint64_t after, size_t count,
            void (*cb)(int status, const tb__hist_page *pg, void *ud), void *ud)
{
    mem_bus *m = (mem_bus *)bus;
    if (!m->has_history)
        return TB_ENOTSUP;
    tb__hist_page pg;
    int rc = tb__hist_ring_read(&m->ring, after, count, &pg);
    if (rc)
        return rc;
    cb(0, &pg, ud);
    tb__hist_page_release(&pg);
    return 0;
}

static void mem_free(tb__bus *bus)
{
    mem_bus *m = (mem_bus *)bus;
    if (m->has_history)
        tb__hist_ring_destroy(&m->ring);
    while (m->recs) {
        mem_rec *r = m->recs;
        m->recs = r->next;
        rec_free(r);
    }
    pthread_mutex_destroy(&m->kv_mu);
    free(m);
}

static const tb__bus_ops memory_ops = {
    .name = "memory",
    .start = mem_start,
    .publish = mem_publish,
    .publish_many = mem_publish_many,
    .status = mem_status,
    .stop = mem_stop,
    .free = mem_free,
    .kv = &memory_kv,
    .history = mem_history,
    .history_sync = 1,
};

tb__bus *tb__bus_memory_new(tb_app *app)
{
    mem_bus *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->bus.ops = &memory_ops;
    m->bus.app = app;
    m->since_us = tb__now_us();
    atomic_init(&m->published, 0);
    const tb_app_config *c = tb_app_get_config(app);
    if (c->core.history_size > 0) {
        if (tb__hist_ring_init(&m->ring, (size_t)c->core.history_size,
                               c->core.history_max_bytes,
                               c->core.history_ttl_ms) != 0) {
            free(m);
            return NULL;
        }
        m->has_history = 1;
    }
    pthread_mutex_init(&m->kv_mu, NULL);
    return &m->bus;
}
