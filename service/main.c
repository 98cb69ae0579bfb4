/* main.c - the taskbus binary: an app that prints every event it sees. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "taskbus/taskbus.h"

#include "kinds.h"

/* Until the service issue gives it full configuration, the binary serves
 * the built-in HTTP API (--listen, 127.0.0.1:8080 by default) and is an
 * observer: one task per worker prints every event that reaches it (from
 * this process, over HTTP, or over Redis from any instance or a plain
 * redis-cli PUBLISH), and a ticker dispatches demo.tick now and then. */

static int tick_seconds = 5;
static int quiet;

/* Each websocket client is a descriptor: take the hard limit, as servers
 * do (the soft default of 1024 would cap clients near 1000). */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Patterns for "every event": names have 1 to 8 segments and '*' matches
 * exactly one, so one pattern per length covers each event exactly once. */
static const char *const every_event[] = {
    "*",         "*.*",         "*.*.*",         "*.*.*.*",
    "*.*.*.*.*", "*.*.*.*.*.*", "*.*.*.*.*.*.*", "*.*.*.*.*.*.*.*",
};

static int watcher(tb_task *self, void *arg)
{
    (void)arg;
    int err;
    tb_sub *sub = tb_sub_open(self, NULL, 0, &err);
    for (size_t i = 0; sub && i < sizeof every_event / sizeof every_event[0];
         i++)
        if ((err = tb_sub_add(sub, every_event[i])) != 0)
            sub = NULL;
    if (!sub) {
        tb_task_fail(self, "cannot subscribe: %s", tb_strerror(err));
        return 1;
    }
    tb_event *ev;
    while (tb_sub_next(self, sub, -1, &ev) == 0) {
        size_t len;
        const char *data = tb_event_data(ev, &len);
        printf("worker %d: event %s id=%s origin=%s data=%.*s%s\n",
               tb_task_worker(self), tb_event_name(ev), tb_event_id(ev),
               tb_event_origin(ev), (int)(len > 200 ? 200 : len), data,
               len > 200 ? "..." : "");
        fflush(stdout);
        tb_event_unref(ev);
    }
    return 0;
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
            "  --quiet           do not print the events\n"
            "  --http-threads N  HTTP server threads (concurrent requests); "
            "default 64\n"
            "  --max-body BYTES  request body limit; default 1048576\n"
            "  --ws-max-clients N        open websockets; default 10000\n"
            "  --ws-max-message BYTES    largest client message; default "
            "1048576\n"
            "  --ws-send-queue-bytes N   per-client send queue; default "
            "1048576\n"
            "  --ws-send-queue-msgs N    the same in messages; default 4096\n"
            "  --ws-max-patterns N       patterns per /ws connection; "
            "default 64\n"
            "  --ws-ping-interval MS     0: no pings; default 20000\n"
            "  --ws-ping-timeout MS      default 20000\n"
            "  --ws-origins LIST         allowed Origins (comma-separated, "
            "or *); default any\n"
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
        {"quiet", no_argument, NULL, 'q'},
        {"http-threads", required_argument, NULL, 1000},
        {"max-body", required_argument, NULL, 1001},
        {"ws-max-clients", required_argument, NULL, 1002},
        {"ws-max-message", required_argument, NULL, 1003},
        {"ws-send-queue-bytes", required_argument, NULL, 1004},
        {"ws-send-queue-msgs", required_argument, NULL, 1005},
        {"ws-max-patterns", required_argument, NULL, 1006},
        {"ws-ping-interval", required_argument, NULL, 1007},
        {"ws-ping-timeout", required_argument, NULL, 1008},
        {"ws-origins", required_argument, NULL, 1009},
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
        case 'q':
            quiet = 1;
            break;
        case 1000:
            cfg.http_threads = int_arg("--http-threads", optarg, 1, 65536);
            break;
        case 1001:
            cfg.http_max_body =
                (size_t)int_arg("--max-body", optarg, 1, 512 << 20);
            break;
        case 1002:
            cfg.ws_max_clients =
                int_arg("--ws-max-clients", optarg, 1, 1 << 20);
            break;
        case 1003:
            cfg.ws_max_message =
                (size_t)int_arg("--ws-max-message", optarg, 1, 512 << 20);
            break;
        case 1004:
            cfg.ws_send_queue_bytes = (size_t)int_arg(
                "--ws-send-queue-bytes", optarg, 1024, 1 << 30);
            break;
        case 1005:
            cfg.ws_send_queue_msgs =
                int_arg("--ws-send-queue-msgs", optarg, 1, 1 << 24);
            break;
        case 1006:
            cfg.ws_max_patterns =
                int_arg("--ws-max-patterns", optarg, 1, 4096);
            break;
        case 1007:
            cfg.ws_ping_interval_ms =
                int_arg("--ws-ping-interval", optarg, 0, 86400000);
            break;
        case 1008:
            cfg.ws_ping_timeout_ms =
                int_arg("--ws-ping-timeout", optarg, 1, 86400000);
            break;
        case 1009:
            cfg.ws_allowed_origins = optarg;
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
    raise_fd_limit();
    tb_task_opts w = {.name = "watcher"};
    if ((!quiet && tb_task_add(app, watcher, NULL, &w, NULL) != 0) ||
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
