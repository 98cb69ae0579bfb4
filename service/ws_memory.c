/* ws_memory.c - the bytes websockets and SSE streams hold, counted
 * exactly across workers, and ws_memory_max: past it, the biggest
 * connections anywhere are closed. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "ws_impl.h"

/* ---------------------------------------------------------------- memory */

/* What ws holds counts in two sums: the app's (the ws_memory_max gauge)
 * and the app's part of it held by connections that cannot be shed any
 * more (closed for the cap, or ended). Each change of held_conn or
 * held_core passes here, so the sums are exact: back to 0 when every
 * connection is freed. Growth raises its worker's ws_biggest (which
 * worker sheds next). On ws's worker, or at its last reference. */
void tb__wsm_add(tb_ws *ws, long long delta)
{
    if (!delta)
        return;
    atomic_fetch_add(&ws->app->ws_memory, delta);
    if (ws->shed) {
        atomic_fetch_add(&ws->app->ws_memory_shed, delta);
    } else if (delta > 0) {
        long long h = (long long)(ws->held_conn + ws->held_core);
        if (h > atomic_load(&ws->w->ws_biggest))
            atomic_store(&ws->w->ws_biggest, h);
    }
}

/* ws can no longer be shed: what it holds stops choosing who is. */
void tb__wsm_settle(tb_ws *ws)
{
    if (ws->shed)
        return;
    ws->shed = 1;
    atomic_fetch_add(&ws->app->ws_memory_shed,
                     (long long)(ws->held_conn + ws->held_core));
}

void tb__wsm_core_held(tb_ws *ws, long long delta)
{
    ws->held_core = (size_t)((long long)ws->held_core + delta);
    tb__wsm_add(ws, delta);
}

/* ---------------------------------------------------------------- shed */

/* ws_memory_max. Past the cap, connections are closed (1008) biggest
 * first until what the others hold is under 7/8 of it: the gap keeps a
 * total hovering at the cap from closing one connection per read. Only
 * the worker serving a connection may close it, and no worker sees the
 * others' lists, so each publishes the size of its biggest sheddable
 * connection and the worker with the biggest one sheds, one connection
 * at a time, handing over when another's is bigger: an attack spread
 * evenly over many workers closes the biggest connections anywhere, not
 * every connection with an event in flight on the worker holding the
 * most. A closed connection's bytes count until it ends (what it had
 * read is dropped at once; its unsent output is written before the close
 * frame, within the close timeout), and so do those of one ended and not
 * yet freed (its receive queue, until the handler lets go), but neither
 * can be shed nor decides who is. */

static long long mem_low(const tb_app *app)
{
    long long cap = (long long)app->cfg.ws.memory_max;
    return cap - cap / 8;
}

/* Whether the connections not yet closed for the cap hold too much. */
static int over_cap(tb_app *app)
{
    long long total = atomic_load(&app->ws_memory);
    return total > (long long)app->cfg.ws.memory_max &&
           total - atomic_load(&app->ws_memory_shed) > mem_low(app);
}

static size_t held(const tb_ws *ws)
{
    return ws->held_conn + ws->held_core;
}

static void shed_one(tb_ws *ws)
{
    tb_app *app = ws->app;
    size_t h = held(ws);
    tb__wsm_settle(ws);
    uint64_t n = atomic_fetch_add(&app->ws_memory_closes, 1) + 1;
    uint64_t since;
    if (tb__ws_log_due(&app->ws_memory_logged_us, &app->ws_memory_logged_n, n,
                       &since))
        tb__log(TB_LOG_WARN,
                "%s %s (request %s, %s%s%s%s): holds %zu bytes, the most, "
                "while websockets and SSE streams hold %lld (ws_memory_max "
                "%zu): closing with 1008 (%" PRIu64 " such close(s) since "
                "the last line, %" PRIu64 " in all; at most one line a "
                "second)",
                KIND(ws), ws->path, ws->request_id, ws->peer,
                ws->claims ? ", sub \"" : "", tb__ws_sub(ws),
                ws->claims ? "\"" : "", h,
                (long long)atomic_load(&app->ws_memory), app->cfg.ws.memory_max,
                since, n);
    ws->ops->shed(ws->conn, 1008, "memory limit (ws_memory_max)");
}

/* On w's thread: offers to the sockets the output w's connections (but
 * skip, which is reporting) queued this loop turn, so that what the cap
 * closes is what sockets do not take, not what no socket was offered yet
 * (one event to many clients is a copy each until the turn ends). */
static void offer_local(tb__worker *w, const tb_ws *skip)
{
    for (tb_ws *ws = w->ws_head; ws; ws = ws->wnext)
        if (ws != skip && ws->conn && !ws->shed)
            ws->ops->offer(ws->conn);
}

static int post_shed(tb__worker *to);

/* The worker whose biggest sheddable connection is the biggest; w on a
 * tie. */
static tb__worker *biggest_worker(tb_app *app, tb__worker *w)
{
    tb__worker *big = w;
    for (int i = 0; i < app->nworkers; i++)
        if (atomic_load(&app->workers[i].ws_biggest) >
            atomic_load(&big->ws_biggest))
            big = &app->workers[i];
    return big;
}

/* On w's thread: while the cap is exceeded, closes w's biggest
 * connection as long as no other worker has published a bigger one;
 * else hands over to that worker (forward 0: shed here regardless). Each walk
 * makes w's ws_biggest exact, so a worker asked on a stale figure hands back at
 * once, and the small connections of a worker are not swept while bigger ones
 * stay elsewhere. */
static void shed_local(tb__worker *w, int forward)
{
    if (w->ws_shedding)
        return; /* a connection closed here has reported what it freed */
    w->ws_shedding = 1;
    tb_app *app = w->app;
    while (over_cap(app)) {
        tb_ws *big = NULL;
        for (tb_ws *ws = w->ws_head; ws; ws = ws->wnext)
            if (!ws->shed && ws->conn && (!big || held(ws) > held(big)))
                big = ws;
        long long mine = big ? (long long)held(big) : 0;
        atomic_store(&w->ws_biggest, mine);
        tb__worker *other = biggest_worker(app, w);
        if (forward && other != w) {
            if (post_shed(other) == 0)
                break;
            forward = 0; /* out of memory: do what can be done here */
        }
        if (mine == 0)
            break;
        shed_one(big);
    }
    w->ws_shedding = 0;
}

static void shed_on_worker(tb_app *app, int wi, void *arg)
{
    (void)arg;
    tb__worker *w = &app->workers[wi];
    atomic_store(&w->ws_shed_posted, 0);
    if (w->stopping || !over_cap(app))
        return;
    offer_local(w, NULL);
    shed_local(w, 1);
}

static void shed_drop(void *arg)
{
    atomic_store(&((tb__worker *)arg)->ws_shed_posted, 0);
}

/* Asks to's loop to shed (once: a call on its way is enough). 0, or
 * TB_ENOMEM. */
static int post_shed(tb__worker *to)
{
    if (atomic_exchange(&to->ws_shed_posted, 1))
        return 0;
    if (tb__worker_call(to, shed_on_worker, shed_drop, to) == 0)
        return 0;
    atomic_store(&to->ws_shed_posted, 0);
    return TB_ENOMEM;
}

/* On self's worker, after what self holds grew. */
static void check_cap(tb_ws *self)
{
    tb__worker *w = self->w;
    tb_app *app = w->app;
    if (!over_cap(app) || w->ws_shedding)
        return;
    offer_local(w, self);
    if (over_cap(app))
        shed_local(w, 1);
}

void tb__ws_on_held(tb_ws *ws, size_t bytes)
{
    long long delta = (long long)bytes - (long long)ws->held_conn;
    ws->held_conn = bytes;
    tb__wsm_add(ws, delta);
    if (delta > 0)
        check_cap(ws);
}

int tb__ws_would_pass(const tb_ws *ws, size_t bytes)
{
    long long delta = (long long)bytes - (long long)ws->held_conn;
    return delta > 0 && atomic_load(&ws->app->ws_memory) + delta >
                            (long long)ws->app->cfg.ws.memory_max;
}

long long tb__ws_memory(tb_app *app)
{
    return atomic_load(&app->ws_memory);
}
