/* main.c - the taskbus binary: for now, a demo app on the in-process bus. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

/* A pre-run named task: one replica per worker, each logging the events
 * it sees until the app stops. */
static int watcher(tb_task *self, void *arg)
{
    (void)arg;
    tb_event *ev;
    while (tb_event_wait(self, "demo.*", -1, &ev) == 0) {
        size_t len;
        const char *data = tb_event_data(ev, &len);
        printf("worker %d: event %s (%zu bytes): %.*s\n", tb_task_worker(self),
               tb_event_name(ev), len, (int)(len > 80 ? 80 : len), data);
        fflush(stdout);
        tb_event_unref(ev);
    }
    return 0;
}

/* Dispatches demo.tick every second, as any worker's task could. */
static int ticker(tb_task *self, void *arg)
{
    (void)arg;
    for (unsigned n = 1; tb_sleep(self, 1000) == 0; n++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "{\"n\":%u}", n);
        tb_dispatch(tb_task_app(self), "demo.tick", buf, (size_t)len, NULL);
    }
    return 0;
}

static int ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    tb_task_opts o = {.name = "ticker", .worker = TB_WORKER_ANY};
    int rc = tb_task_add(app, ticker, NULL, &o, NULL);
    fprintf(stderr,
            "taskbus %s: %d workers on the in-process bus; Ctrl-C stops\n",
            TB_VERSION_STRING, tb_app_workers(app));
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("taskbus %s\n", TB_VERSION_STRING);
        return 0;
    }
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.handle_signals = 1;
    int err;
    tb_app *app = tb_app_new(&cfg, &err);
    if (!app) {
        fprintf(stderr, "taskbus: cannot create the app: %s\n",
                tb_strerror(err));
        return 2;
    }
    tb_task_opts w = {.name = "watcher"};
    if (tb_task_add(app, watcher, NULL, &w, NULL) != 0 ||
        tb_app_on(app, TB_MAIN_READY, ready, NULL) != 0) {
        tb_app_free(app);
        return 1;
    }
    int rc = tb_app_run(app);
    tb_app_free(app);
    return rc == 0 ? 0 : 1;
}
