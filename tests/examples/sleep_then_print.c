/* sleep_then_print.c - mirrors the first snippet of Sanic's background-tasks
 * guide: a coroutine that sleeps for a while and then prints "Server
 * successfully started!", handed to app.add_task() before the server runs
 * (there it waits five seconds; here 200 ms). Exits 0 only if the message was
 * printed, by a task that ran after the worker had started, and at least
 * 200 ms after that. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static atomic_llong started_at; /* worker after-start */
static atomic_llong printed_at;
static atomic_int printed;

static int on_after_start(tb_app *app, int worker, void *arg)
{
    (void)app;
    (void)worker;
    (void)arg;
    atomic_store(&started_at, now_ms());
    return 0;
}

/* The task: sleep, then announce. */
static int notify_server_started_after_200ms(tb_task *self, void *arg)
{
    (void)arg;
    if (tb_sleep(self, 200) != 0)
        return 1; /* cancelled: the app is stopping */
    if (printf("Server successfully started!\n") > 0) {
        fflush(stdout);
        atomic_store(&printed_at, now_ms());
        atomic_fetch_add(&printed, 1);
    }
    tb_app_stop(tb_task_app(self)); /* this example is done */
    return 0;
}

int main(void)
{
    alarm(20); /* a hang fails the example instead of blocking the run */

    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1; /* one process, as in the snippet */
    int err = 0;
    tb_app *app = tb_app_new(&cfg, &err);
    if (!app) {
        fprintf(stderr, "tb_app_new: %s\n", tb_strerror(err));
        return 1;
    }
    tb_app_add_listener(app, TB_WORKER_AFTER_START, on_after_start, NULL);

    /* app.add_task(notify_server_started_after_five_seconds()) */
    int rc =
        tb_task_add(app, notify_server_started_after_200ms, NULL, NULL, NULL);
    if (rc != 0) {
        fprintf(stderr, "tb_task_add: %s\n", tb_strerror(rc));
        return 1;
    }

    rc = tb_app_run(app);
    tb_app_free(app);

    long long waited = atomic_load(&printed_at) - atomic_load(&started_at);
    if (rc != 0 || atomic_load(&printed) != 1 ||
        atomic_load(&started_at) == 0 || waited < 195) {
        fprintf(stderr,
                "FAIL: run=%s printed=%d, %lld ms after the worker started\n",
                tb_err_name(rc), atomic_load(&printed), waited);
        return 1;
    }
    return 0;
}
