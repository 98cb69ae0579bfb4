/* bench_history.c - the cost of the history on the Redis bus (issue 12):
 * one app dispatches N events from a thread as fast as they are accepted
 * while a subscriber task on each of its 2 workers counts them; once with
 * history_size 0 (PUBLISH) and once with history on (the publish script),
 * in the same run against the same redis-server. Prints the dispatch and
 * delivery rates of each, their ratio, and Redis's CPU per event (INFO
 * cpu, before and after), then the time one subscription takes to resume
 * after N missed events (tb_sub_resume: the replay read from Redis page by
 * page; run_history.sh measures the same over a websocket). With -r (a
 * replica of that server), a third run with history on and
 * redis.wait_replicas 1, and the latency of tb_dispatch_wait one event at
 * a time with wait_replicas 0 and 1: the cost of the WAIT.
 *
 *   bench_history -p REDIS_PORT [-r REPLICA_PORT] [-n N]
 *
 * Run by tests/bench/run_history.sh, which starts the redis-server. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "taskbus/taskbus.h"

static int port;
static long total = 200000;
static atomic_long got[2];
static atomic_int ready_subs;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* used_cpu_sys + used_cpu_user of the server, in seconds. */
static double redis_cpu(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double sys = 0, user = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "used_cpu_sys:");
        const char *q = strstr(r->str, "used_cpu_user:");
        if (p)
            sys = atof(p + 13);
        if (q)
            user = atof(q + 14);
    }
    freeReplyObject(r);
    return sys + user;
}

static int counter(tb_task *self, void *ud)
{
    (void)ud;
    int w = tb_task_worker(self), err;
    tb_sub *s = tb_sub_open(self, "b.ev", 1 << 20, &err);
    if (!s)
        return err;
    atomic_fetch_add(&ready_subs, 1);
    tb_event *ev;
    while (tb_sub_next(self, s, -1, &ev) == 0) {
        atomic_fetch_add_explicit(&got[w], 1, memory_order_relaxed);
        tb_event_unref(ev);
    }
    return 0;
}

typedef struct run {
    int history, wait;
    double dispatch_s, deliver_s, redis_cpu_s;
    long lost;
} run;

static tb_app *app_new(int history, int wait, char *url)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 2;
    cfg.core.history_size = history;
    cfg.redis.wait_replicas = wait;
    cfg.core.sub_capacity = 1 << 20;
    cfg.redis.url = url;
    int err;
    tb_app *app = tb_app_new(&cfg, &err);
    if (!app) {
        fprintf(stderr, "tb_app_new: %s\n", tb_strerror(err));
        exit(1);
    }
    return app;
}

static void *app_main(void *arg)
{
    tb_app_run(arg);
    return NULL;
}

static void wait_connected(tb_app *app)
{
    for (int i = 0; i < 1000; i++) {
        tb_bus_info b;
        if (tb_bus_status(app, &b) == 0 && b.state == TB_BUS_CONNECTED)
            return;
        usleep(10000);
    }
    fprintf(stderr, "not connected to Redis\n");
    exit(1);
}

static void one_run(run *r, redisContext *rc, char *url)
{
    redisReply *x = redisCommand(rc, "FLUSHALL");
    freeReplyObject(x);
    atomic_store(&got[0], 0);
    atomic_store(&got[1], 0);
    atomic_store(&ready_subs, 0);
    tb_app *app = app_new(r->history, r->wait, url);
    tb_task_opts o = {.worker = TB_WORKER_ANY, .name = "counter"};
    tb_task_add(app, counter, NULL, &o, NULL); /* one per worker */
    pthread_t th;
    pthread_create(&th, NULL, app_main, app);
    wait_connected(app);
    while (atomic_load(&ready_subs) < 2)
        usleep(1000);
    double cpu0 = redis_cpu(rc);
    char data[128];
    memset(data, 'x', sizeof data);
    int64_t t0 = now_us();
    for (long i = 0; i < total; i++) {
        int rc2;
        while ((rc2 = tb_dispatch(app, "b.ev", data, sizeof data, NULL)) ==
               TB_ENOSPC)
            usleep(100);
        if (rc2) {
            fprintf(stderr, "dispatch: %s\n", tb_strerror(rc2));
            exit(1);
        }
    }
    int64_t t1 = now_us();
    int64_t deadline = t1 + 120 * 1000000LL;
    while ((atomic_load(&got[0]) < total || atomic_load(&got[1]) < total) &&
           now_us() < deadline)
        usleep(500);
    int64_t t2 = now_us();
    r->redis_cpu_s = redis_cpu(rc) - cpu0;
    r->dispatch_s = (double)(t1 - t0) / 1e6;
    r->deliver_s = (double)(t2 - t0) / 1e6;
    r->lost = 2 * total - atomic_load(&got[0]) - atomic_load(&got[1]);
    tb_app_stop(app);
    pthread_join(th, NULL);
    tb_app_free(app);
}

/* ---------------------------------------------------------------- latency */

/* The mean µs of n tb_dispatch_wait calls one after the other, with
 * wait_replicas wait (history on): what one publisher waiting for each
 * event pays for the WAIT. */
static double latency_us(redisContext *rc, char *url, int wait, int n)
{
    redisReply *x = redisCommand(rc, "FLUSHALL");
    freeReplyObject(x);
    tb_app *app = app_new(10000, wait, url);
    pthread_t th;
    pthread_create(&th, NULL, app_main, app);
    wait_connected(app);
    char data[128];
    memset(data, 'x', sizeof data);
    int64_t t0 = now_us();
    for (int i = 0; i < n; i++) {
        int r = tb_dispatch_wait(app, "l.ev", data, sizeof data, 5000, NULL);
        if (r) {
            fprintf(stderr, "dispatch_wait: %s\n", tb_strerror(r));
            exit(1);
        }
    }
    double us = (double)(now_us() - t0) / n;
    tb_app_stop(app);
    pthread_join(th, NULL);
    tb_app_free(app);
    return us;
}

/* ---------------------------------------------------------------- resume */

static char since[TB_POS_MAX];
static long resumed;
static double resume_s;
static int resume_ok;

static int resumer(tb_task *self, void *ud)
{
    (void)ud;
    int err;
    tb_sub *s = tb_sub_open(self, "b.ev", 1024, &err);
    int64_t t0 = now_us();
    int rc = tb_sub_resume(self, s, since);
    tb_event *ev;
    while (rc == 0 && (rc = tb_sub_next(self, s, 5000, &ev)) == 0) {
        resumed++;
        tb_event_unref(ev);
    }
    tb_sub_recovery info;
    resume_ok = rc == TB_SUB_LIVE && tb_sub_recovery_info(s, &info) == 0 &&
                info.recovered;
    resume_s = (double)(now_us() - t0) / 1e6;
    tb_sub_close(s);
    tb_app_stop(tb_task_app(self));
    return 0;
}

static void resume_run(redisContext *rc, char *url, long missed)
{
    redisReply *x = redisCommand(rc, "FLUSHALL");
    freeReplyObject(x);
    tb_app *app = app_new((int)missed + 1000, 0, url); /* all of it held */
    pthread_t th;
    pthread_create(&th, NULL, app_main, app);
    wait_connected(app);
    char data[128];
    memset(data, 'x', sizeof data);
    tb_dispatch_wait(app, "b.ev", data, sizeof data, 5000, NULL);
    tb_history h;
    tb_history_read(app, NULL, 0, NULL, 1, &h);
    snprintf(since, sizeof since, "%s", h.next);
    tb_history_free(&h);
    for (long i = 0; i < missed; i++)
        while (tb_dispatch(app, "b.ev", data, sizeof data, NULL) == TB_ENOSPC)
            usleep(100);
    tb_dispatch_wait(app, "b.end", "", 0, 5000, NULL);
    tb_task_opts o = {.worker = 0, .name = "resumer"};
    tb_task_add(app, resumer, NULL, &o, NULL);
    pthread_join(th, NULL);
    tb_app_free(app);
}

int main(int argc, char **argv)
{
    int opt, replica = 0;
    while ((opt = getopt(argc, argv, "p:r:n:")) != -1) {
        if (opt == 'p')
            port = atoi(optarg);
        else if (opt == 'r')
            replica = atoi(optarg);
        else if (opt == 'n')
            total = atol(optarg);
        else {
            fprintf(stderr,
                    "usage: bench_history -p PORT [-r REPLICA_PORT] [-n N]\n");
            return 2;
        }
    }
    if (!port || total < 1) {
        fprintf(stderr,
                "usage: bench_history -p PORT [-r REPLICA_PORT] [-n N]\n");
        return 2;
    }
    tb_log_set_level(TB_LOG_WARN);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    redisContext *rc = redisConnect("127.0.0.1", port);
    if (!rc || rc->err) {
        fprintf(stderr, "cannot connect to Redis on %d\n", port);
        return 1;
    }
    run runs[3] = {
        {.history = 0}, {.history = 10000}, {.history = 10000, .wait = 1}};
    int nruns = replica ? 3 : 2;
    for (int i = 0; i < nruns; i++)
        one_run(&runs[i], rc, url);
    int bad = 0;
    for (int i = 0; i < nruns; i++) {
        run *r = &runs[i];
        printf("history %-5s: %ld events, dispatch %.0f/s, delivered to 2 "
               "workers %.0f/s, Redis CPU %.2f us/event, lost %ld\n",
               !r->history ? "off"
               : r->wait   ? "on, wait_replicas 1"
                           : "on",
               total, total / r->dispatch_s, total / r->deliver_s,
               r->redis_cpu_s * 1e6 / (double)total, r->lost);
        bad |= r->lost != 0;
    }
    printf("ratio on/off: dispatch %.0f %%, delivery %.0f %% (target: at "
           "least 60 %%)\n",
           100.0 * runs[0].dispatch_s / runs[1].dispatch_s,
           100.0 * runs[0].deliver_s / runs[1].deliver_s);
    if (replica) {
        printf("ratio wait_replicas 1 / 0 (history on): dispatch %.0f %%, "
               "delivery %.0f %%\n",
               100.0 * runs[1].dispatch_s / runs[2].dispatch_s,
               100.0 * runs[1].deliver_s / runs[2].deliver_s);
        double l0 = latency_us(rc, url, 0, 2000);
        double l1 = latency_us(rc, url, 1, 2000);
        printf("tb_dispatch_wait one at a time (history on), 2000 events: "
               "wait_replicas 0 %.0f us, 1 %.0f us per event (+%.0f us)\n",
               l0, l1, l1 - l0);
    }
    resume_run(rc, url, 10000);
    printf("resume after %d missed events: %ld replayed in %.3f s (%.0f/s), "
           "recovered %s\n",
           10000, resumed, resume_s, resumed / resume_s,
           resume_ok ? "true" : "FALSE");
    bad |= resumed != 10000 || !resume_ok;
    redisFree(rc);
    return bad;
}
