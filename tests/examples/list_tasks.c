/* list_tasks.c - mirrors the snippet of Sanic's background-tasks guide that
 * walks app.tasks and prints each task's name (`for task in app.tasks:
 * print(task.get_name())`). Here a few named tasks are added and
 * tb_task_list() prints name, worker and state for each. Exits 0 only if
 * every added name appears in the listing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

static const char *const names[] = {"task-a", "task-b", "task-c", "ticker"};
#define NNAMES (sizeof names / sizeof names[0])
static int missing = -1;

static int idle(tb_task *self, void *arg)
{
    (void)arg;
    while (tb_sleep(self, 1000) == 0)
        ;
    return 0;
}

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    for (size_t i = 0; i < NNAMES; i++) {
        tb_task_opts opts = {.name = names[i], .worker = TB_WORKER_ANY};
        int rc = tb_task_add(app, idle, NULL, &opts, NULL);
        if (rc != 0)
            fprintf(stderr, "tb_task_add(%s): %s\n", names[i], tb_strerror(rc));
    }

    /* for task in app.tasks: print(task.get_name()) */
    tb_task_info *tasks = NULL;
    size_t n = 0;
    if (tb_task_list(app, &tasks, &n) < 0) {
        fprintf(stderr, "tb_task_list failed\n");
    } else {
        missing = 0;
        for (size_t i = 0; i < n; i++)
            printf("%-10s worker %d  %s\n", tasks[i].name, tasks[i].worker,
                   tb_task_state_name(tasks[i].state));
        for (size_t k = 0; k < NNAMES; k++) {
            int found = 0;
            for (size_t i = 0; i < n; i++)
                found |= strcmp(tasks[i].name, names[k]) == 0;
            if (!found) {
                fprintf(stderr, "FAIL: %s is not listed\n", names[k]);
                missing++;
            }
        }
        free(tasks);
    }
    tb_app_stop(app); /* the idle tasks are cancelled on the way out */
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
    if (rc != 0)
        fprintf(stderr, "FAIL: run=%s\n", tb_err_name(rc));
    return rc == 0 && missing == 0 ? 0 : 1;
}
