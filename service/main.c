/* main.c - the taskbus binary: an app that prints every event it sees. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

#include "kinds.h"

/* Until the service issue gives it full configuration, the binary serves
 * the built-in HTTP API (--listen, 127.0.0.1:8080 by default) and is an
 * observer: one task per worker prints every event that reaches it (from
 * this process, over HTTP, or over Redis from any instance or a plain
 * redis-cli PUBLISH), and a ticker dispatches demo.tick now and then. */

static int tick_seconds = 5;

/* Patterns for "every event": names have 1 to 8 segments and '*' matches
 * exactly one, so one pattern per length covers each event exactly once. */
static const char *const every_event[] = {
    "*",         "*.*",         "*.*.*",         "*.*.*.*",
    "*.*.*.*.*", "*.*.*.*.*.*", "*.*.*.*.*.*.*", "*.*.*.*.*.*.*.*",
};

static int watcher(tb_task *self, void *arg)
{
    (void)arg;
    enum {
        N = sizeof every_event / sizeof every_event[0]
    };
    tb_sub *subs[N];
    for (int i = 0; i < N; i++) {
        int err;
        if (!(subs[i] = tb_sub_open(self, every_event[i], 0, &err))) {
            tb_task_fail(self, "cannot subscribe: %s", tb_strerror(err));
            return 1;
        }
    }
    /* A round-robin over the subscriptions with short waits keeps this
     * simple; a task that needs order across patterns would use one. */
    for (;;) {
        int got = 0;
        for (int i = 0; i < N; i++) {
            tb_event *ev;
            int rc =
                tb_sub_next(self, subs[i], i == N - 1 && !got ? 200 : 0, &ev);
            if (rc == TB_ECANCELED)
                return 0;
            if (rc != 0)
                continue;
            got = 1;
            size_t len;
            const char *data = tb_event_data(ev, &len);
            printf("worker %d: event %s id=%s origin=%s data=%.*s%s\n",
                   tb_task_worker(self), tb_event_name(ev), tb_event_id(ev),
                   tb_event_origin(ev), (int)(len > 200 ? 200 : len), data,
                   len > 200 ? "..." : "");
            fflush(stdout);
            tb_event_unref(ev);
        }
    }
}

static int ticker(tb_task *self, void *arg)
{
    (void)arg;
    for (unsigned n = 1; tb_sleep(self, tick_seconds * 1000) == 0; n++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "{\"n\":%u}", n);
        int rc =
            tb_dispatch(tb_task_app(self), "demo.tick", buf, (size_t)len, NULL);
        if (rc != 0)
            fprintf(stderr, "taskbus: demo.tick not dispatched: %s\n",
                    tb_strerror(rc));
    }
    return 0;
}

static int ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
    tb_bus_info bus;
    tb_bus_status(app, &bus);
    fprintf(stderr, "taskbus %s: %d workers, %s bus (%s), namespace %s\n",
            TB_VERSION_STRING, tb_app_workers(app), bus.name,
            tb_bus_state_name(bus.state),
            tb_app_get_config(app)->event_namespace);
    if (tick_seconds <= 0)
        return 0;
    tb_task_opts o = {.name = "ticker"};
    return tb_task_add(app, ticker, NULL, &o, NULL);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: taskbus [options]\n"
            "Runs an app that prints every event it receives.\n\n"
            "  --redis-url URL   Redis bus (env TASKBUS_REDIS_URL); default: "
            "the in-process bus\n"
            "  --namespace NS    event namespace (env TASKBUS_NAMESPACE); "
            "default taskbus\n"
            "  --workers N       worker threads (env TASKBUS_WORKERS); "
            "default 2\n"
            "  --listen ADDR     HTTP API address, IPv4:port (env "
            "TASKBUS_LISTEN); default 127.0.0.1:8080; \"off\": none\n"
            "  --token TOKEN     API token required by the HTTP API (env "
            "TASKBUS_TOKEN)\n"
            "  --tick SECONDS    dispatch demo.tick every SECONDS, 0: never; "
            "default 5\n"
            "  --version, --help\n");
}

/* Parses a whole decimal int in [min, max]; exits 2 naming the option. */
static int int_arg(const char *what, const char *s, int min, int max)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < min || v > max) {
        fprintf(stderr,
                "taskbus: %s must be a whole number from %d to %d, "
                "not \"%s\"\n",
                what, min, max, s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.handle_signals = 1;
    const char *env;
    if ((env = getenv("TASKBUS_REDIS_URL")) && *env)
        cfg.redis_url = env;
    if ((env = getenv("TASKBUS_NAMESPACE")) && *env)
        cfg.event_namespace = env;
    if ((env = getenv("TASKBUS_WORKERS")) && *env)
        cfg.workers = int_arg("TASKBUS_WORKERS", env, 1, 256);
    cfg.http_listen = "127.0.0.1:8080";
    if ((env = getenv("TASKBUS_LISTEN")) && *env)
        cfg.http_listen = env;
    if ((env = getenv("TASKBUS_TOKEN")) && *env)
        cfg.api_token = env;

    static const struct option opts[] = {
        {"redis-url", required_argument, NULL, 'r'},
        {"namespace", required_argument, NULL, 'n'},
        {"workers", required_argument, NULL, 'w'},
        {"tick", required_argument, NULL, 't'},
        {"listen", required_argument, NULL, 'l'},
        {"token", required_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            cfg.redis_url = optarg;
            break;
        case 'n':
            cfg.event_namespace = optarg;
            break;
        case 'w':
            cfg.workers = int_arg("--workers", optarg, 1, 256);
            break;
        case 't':
            tick_seconds = int_arg("--tick", optarg, 0, 86400);
            break;
        case 'l':
            cfg.http_listen = optarg;
            break;
        case 'k':
            cfg.api_token = optarg;
            break;
        case 'V':
            printf("taskbus %s\n", TB_VERSION_STRING);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "taskbus: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    if (strcmp(cfg.http_listen, "off") == 0)
        cfg.http_listen = NULL;
    int err;
    tb_app *app = tb_app_new(&cfg, &err);
    if (!app) {
        fprintf(stderr,
                "taskbus: invalid configuration: %s (see the log "
                "line above)\n",
                tb_strerror(err));
        return 2;
    }
    tb_task_opts w = {.name = "watcher"};
    if (tb_task_add(app, watcher, NULL, &w, NULL) != 0 ||
        tb_app_on(app, TB_MAIN_READY, ready, NULL) != 0 ||
        tb__kinds_register_builtin(app) != 0 ||
        (cfg.http_listen && tb_api_register(app) != 0)) {
        tb_app_free(app);
        return 1;
    }
    int rc = tb_app_run(app);
    tb_app_free(app);
    return rc == 0 ? 0 : 1;
}
