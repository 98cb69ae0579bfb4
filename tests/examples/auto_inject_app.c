/* auto_inject_app.c - mirrors the snippet of Sanic's background-tasks guide
 * where a task function declared with an `app` parameter gets the app
 * injected automatically when it is passed to app.add_task() uncalled,
 * alongside one that is called with the app explicitly. In taskbus the first
 * kind asks its task for the app with tb_task_app(); the second is given the
 * app as its argument. Exits 0 only if both saw the very app that runs them. */
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

static tb_app *the_app;
static atomic_int auto_ok, explicit_ok, finished;

static void one_finished(tb_app *app)
{
    if (atomic_fetch_add(&finished, 1) + 1 == 2)
        tb_app_stop(app);
}

/* Like `async def auto_inject(app)`, added as app.add_task(auto_inject). */
static int auto_inject(tb_task *self, void *arg)
{
    (void)arg;
    tb_app *app = tb_task_app(self);
    if (tb_sleep(self, 10) == 0 && app == the_app) {
        printf("auto_inject: got the app (%d worker)\n", tb_app_workers(app));
        atomic_store(&auto_ok, 1);
    }
    one_finished(app);
    return 0;
}

/* Like `async def explicit_inject(app)`, added as
 * app.add_task(explicit_inject(app)). */
static int explicit_inject(tb_task *self, void *arg)
{
    tb_app *app = arg;
    if (tb_sleep(self, 10) == 0 && app == the_app && app == tb_task_app(self)) {
        printf("explicit_inject: got the app (%d worker)\n",
               tb_app_workers(app));
        atomic_store(&explicit_ok, 1);
    }
    one_finished(app);
    return 0;
}

int main(void)
{
    alarm(20);
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.core.workers = 1;
    int err = 0;
    the_app = tb_app_new(&cfg, &err);
    if (!the_app) {
        fprintf(stderr, "tb_app_new: %s\n", tb_strerror(err));
        return 1;
    }
    if (tb_task_add(the_app, auto_inject, NULL, NULL, NULL) != 0 ||
        tb_task_add(the_app, explicit_inject, the_app, NULL, NULL) != 0) {
        fprintf(stderr, "tb_task_add failed\n");
        return 1;
    }
    int rc = tb_app_run(the_app);
    tb_app_free(the_app);
    if (rc != 0 || !atomic_load(&auto_ok) || !atomic_load(&explicit_ok)) {
        fprintf(stderr, "FAIL: run=%s auto=%d explicit=%d\n", tb_err_name(rc),
                atomic_load(&auto_ok), atomic_load(&explicit_ok));
        return 1;
    }
    return 0;
}
