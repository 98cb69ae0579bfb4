/* ws_receiver_core.c - mirrors the websocket snippet of Sanic's
 * background-tasks guide, reduced to its core: a websocket handler starts a
 * named receiver task ("receiver:<request id>") that loops on
 * app.event("my.custom.event") and forwards what it gets, and when the
 * handler ends it cancels that task and purges it. Here an "owner" task
 * stands in for the handler of request "abc123": it starts the receiver,
 * dispatches some events, then cancels and purges it. Exits 0 only if the
 * receiver saw the events, ended cancelled, and left the task list. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <taskbus/taskbus.h>

#define EVENTS 5

static atomic_int received;
static atomic_int receiver_listening; /* bumped each time it starts to wait */
static int failures;

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond);            \
            failures++;                                                        \
        }                                                                      \
    } while (0)

/* while True: await app.event("my.custom.event"); await ws.send(...) */
static int receiver(tb_task *self, void *arg)
{
    (void)arg;
    for (;;) {
        tb_event *ev = NULL;
        atomic_fetch_add(&receiver_listening, 1);
        int rc = tb_event_wait(self, "my.custom.event", -1, &ev);
        if (rc != 0)
            return 0; /* TB_ECANCELED: the owner is done with us */
        size_t len = 0;
        const char *data = tb_event_data(ev, &len);
        printf("%s: would send \"%.*s\"\n", tb_task_name(self), (int)len, data);
        atomic_fetch_add(&received, 1);
        tb_event_unref(ev);
    }
}

static int owner(tb_task *self, void *arg)
{
    const char *request_id = arg;
    tb_app *app = tb_task_app(self);
    char name[64];
    snprintf(name, sizeof name, "receiver:%s", request_id);

    /* On the owner's worker, as Sanic's receiver shares its handler's
     * process. */
    tb_task_opts opts = {.name = name, .worker = tb_task_worker(self)};
    EXPECT(tb_task_add(app, receiver, NULL, &opts, NULL) == 0);

    for (int i = 0; i < EVENTS; i++) {
        /* Like app.event(), the receiver only sees events sent while it
         * waits. It counts itself listening just before it waits, and we
         * share a thread, so once we see the count it is waiting. */
        for (int t = 0; t < 2000 && atomic_load(&receiver_listening) <= i; t++)
            tb_sleep(self, 1);
        char msg[32];
        int n = snprintf(msg, sizeof msg, "message %d", i);
        EXPECT(tb_dispatch(app, "my.custom.event", msg, (size_t)n, NULL) == 0);
        for (int t = 0; t < 2000 && atomic_load(&received) <= i; t++)
            tb_sleep(self, 1);
    }

    /* finally: await app.cancel_task(name); app.purge_tasks() */
    EXPECT(tb_task_cancel(app, name, 5000) == 0);
    tb_task_info info;
    EXPECT(tb_task_get(app, name, &info) == 1);
    EXPECT(info.state == TB_TASK_CANCELLED);
    EXPECT(tb_task_purge(app) >= 1);

    tb_task_info *tasks = NULL;
    size_t n = 0;
    EXPECT(tb_task_list(app, &tasks, &n) >= 0);
    for (size_t i = 0; i < n; i++)
        EXPECT(strcmp(tasks[i].name, name) != 0);
    free(tasks);

    tb_app_stop(app);
    return 0;
}

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    tb_task_opts opts = {.name = "ws-handler", .worker = TB_WORKER_ANY};
    if (tb_task_add(app, owner, "abc123", &opts, NULL) != 0) {
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
    EXPECT(atomic_load(&received) == EVENTS);
    printf("receiver saw %d of %d events\n", atomic_load(&received), EVENTS);
    return failures == 0 ? 0 : 1;
}
