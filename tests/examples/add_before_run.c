/* add_before_run.c - mirrors the snippet of Sanic's background-tasks guide
 * that adds tasks before app.run(): one passed as the bare callable
 * (app.add_task(slow_work)) and one as an already-built coroutine with its
 * arguments bound (app.add_task(slow_work(...))). Sanic starts such tasks in
 * every worker once it is up. Here the "callable" takes the app from
 * tb_task_app() and the "pre-built" one is a function bound to an argument
 * struct. Exits 0 only if, with 2 workers, each ran exactly once per worker. */
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

#define WORKERS 2

static atomic_int callable_runs[WORKERS];
static atomic_int prebuilt_runs[WORKERS];
static atomic_int total;

static void ran(tb_app *app)
{
    if (atomic_fetch_add(&total, 1) + 1 == 2 * WORKERS)
        tb_app_stop(app); /* everyone has run everywhere */
}

/* app.add_task(slow_work): the app comes from the task itself. */
static int slow_work(tb_task *self, void *arg)
{
    (void)arg;
    tb_sleep(self, 20);
    atomic_fetch_add(&callable_runs[tb_task_worker(self)], 1);
    ran(tb_task_app(self));
    return 0;
}

/* app.add_task(slow_work_with(greeting="hello", delay_ms=30)) */
struct slow_work_args {
    const char *greeting;
    int delay_ms;
};

static int slow_work_with(tb_task *self, void *arg)
{
    const struct slow_work_args *a = arg;
    tb_sleep(self, a->delay_ms);
    printf("%s from worker %d\n", a->greeting, tb_task_worker(self));
    atomic_fetch_add(&prebuilt_runs[tb_task_worker(self)], 1);
    ran(tb_task_app(self));
    return 0;
}

int main(void)
{
    alarm(20);
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = WORKERS;
    int err = 0;
    tb_app *app = tb_app_new(&cfg, &err);
    if (!app) {
        fprintf(stderr, "tb_app_new: %s\n", tb_strerror(err));
        return 1;
    }
    static const struct slow_work_args args = {"hello", 30};
    if (tb_task_add(app, slow_work, NULL, NULL, NULL) != 0 ||
        tb_task_add(app, slow_work_with, (void *)&args, NULL, NULL) != 0) {
        fprintf(stderr, "tb_task_add failed\n");
        return 1;
    }
    int rc = tb_app_run(app);
    tb_app_free(app);

    int ok = rc == 0;
    for (int w = 0; w < WORKERS; w++) {
        int c = atomic_load(&callable_runs[w]),
            p = atomic_load(&prebuilt_runs[w]);
        if (c != 1 || p != 1) {
            fprintf(stderr,
                    "FAIL: worker %d ran the callable %d times and "
                    "the pre-built task %d times\n",
                    w, c, p);
            ok = 0;
        }
    }
    if (rc != 0)
        fprintf(stderr, "FAIL: run=%s\n", tb_err_name(rc));
    return ok ? 0 : 1;
}
