/* named_task.c - mirrors the snippet of Sanic's background-tasks guide on
 * named tasks: add a task under the name "dummy_task", look it up with
 * app.get_task(), stop it with app.cancel_task(), and drop finished tasks
 * with app.purge_tasks(). Here a handler-like task does the same with
 * tb_task_get, tb_task_cancel and tb_task_purge. Exits 0 only if the task
 * was found running, ended cancelled, and was gone after the purge. */
#include <stdio.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

static int failures;

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond);            \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static int dummy_task(tb_task *self, void *arg)
{
    (void)arg;
    while (tb_sleep(self, 1000) == 0)
        printf("dummy_task still running\n");
    return 0;
}

/* What the Sanic snippet does in its route handlers, in order. */
static int handler(tb_task *self, void *arg)
{
    (void)arg;
    tb_app *app = tb_task_app(self);

    /* app.add_task(dummy_task, name="dummy_task") */
    tb_task_opts opts = {.name = "dummy_task", .worker = TB_WORKER_ANY};
    EXPECT(tb_task_add(app, dummy_task, NULL, &opts, NULL) == 0);

    /* task = app.get_task("dummy_task") */
    tb_task_info info;
    EXPECT(tb_task_get(app, "dummy_task", &info) == 1);
    printf("got %s on worker %d: %s\n", info.name, info.worker,
           tb_task_state_name(info.state));
    EXPECT(info.state == TB_TASK_PENDING || info.state == TB_TASK_RUNNING);

    /* await app.cancel_task("dummy_task") */
    EXPECT(tb_task_cancel(app, "dummy_task", 5000) == 0);
    EXPECT(tb_task_get(app, "dummy_task", &info) == 1);
    printf("after cancel: %s\n", tb_task_state_name(info.state));
    EXPECT(info.state == TB_TASK_CANCELLED);

    /* app.purge_tasks() */
    EXPECT(tb_task_purge(app) >= 1);
    EXPECT(tb_task_get(app, "dummy_task", NULL) == TB_ENOENT);

    tb_app_stop(app);
    return 0;
}

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    tb_task_opts opts = {.name = "handler", .worker = TB_WORKER_ANY};
    int rc = tb_task_add(app, handler, NULL, &opts, NULL);
    if (rc != 0) {
        fprintf(stderr, "tb_task_add(handler): %s\n", tb_strerror(rc));
        failures++;
        tb_app_stop(app);
    }
    return 0;
}

int main(void)
{
    alarm(20);
    int err = 0;
    tb_app *app = tb_app_new(NULL, &err);
    if (!app) {
        fprintf(stderr, "tb_app_new: %s\n", tb_strerror(err));
        return 1;
    }
    tb_app_add_listener(app, TB_MAIN_READY, on_ready, NULL);
    int rc = tb_app_run(app);
    tb_app_free(app);
    EXPECT(rc == 0);
    return failures == 0 ? 0 : 1;
}
