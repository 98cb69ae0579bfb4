/* serve.c - `taskbus serve`: runs the service. An app with the built-in
 * API, kinds and the exec kind, started from the options, stopped by
 * SIGTERM/SIGINT; and the demo tasks (--print-events, --tick). */
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

static int tick_seconds;

/* Prints every event: ">" matches every name. */
static int printer(tb_task *self, void *ud)
{
    (void)ud;
    int err;
    tb_sub *sub = tb_sub_open(self, ">", 0, &err);
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

/* Dispatches demo.tick {"n": N} every --tick seconds. */
static int ticker(tb_task *self, void *ud)
{
    (void)ud;
    for (unsigned n = 1; tb_sleep(self, tick_seconds * 1000) == 0; n++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "{\"n\":%u}", n);
        int rc =
            tb_dispatch(tb_task_app(self), "demo.tick", buf, (size_t)len, NULL);
        if (rc != 0)
            tb_log(TB_LOG_WARN, "demo.tick not dispatched: %s",
                   tb_strerror(rc));
    }
    return 0;
}

/* The ready line, then the ticker if --tick asks for one. */
static int on_ready(tb_app *app, int worker, void *ud)
{
    (void)worker;
    (void)ud;
    tb_bus_info bus;
    tb_bus_status(app, &bus);
    tb_log(TB_LOG_INFO, "taskbus %s ready: %d workers, %s bus (%s)",
           TB_VERSION_STRING, tb_app_workers(app), bus.name,
           tb_bus_state_name(bus.state));
    if (tick_seconds <= 0)
        return 0;
    tb_task_opts o = {.name = "ticker"};
    return tb_task_add(app, ticker, NULL, &o, NULL);
}

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

int cmd_serve_main(int argc, char **argv)
{
    cmd_serve_opts o;
    int rc = cmd_options_parse(&o, argc, argv);
    if (rc >= 0)
        return rc;

    cmd_log_setup(o.log_format_json, o.log_level);
    char *token_secret = NULL, *redis_secret = NULL, *jwt_secret = NULL;
    char *sentinel_secret = NULL;
    if (o.token_file)
        o.cfg.http.api_token = token_secret =
            cmd_read_secret(cmd_options_source("token-file"), o.token_file);
    if (o.redis_password_file)
        o.cfg.redis.password = redis_secret = cmd_read_secret(
            cmd_options_source("redis-password-file"), o.redis_password_file);
    if (o.jwt_secret_file)
        o.cfg.http.jwt_secret = jwt_secret = cmd_read_secret(
            cmd_options_source("jwt-secret-file"), o.jwt_secret_file);
    if (o.redis_sentinel_password_file)
        o.cfg.redis.sentinel_password = sentinel_secret =
            cmd_read_secret(cmd_options_source("redis-sentinel-password-file"),
                            o.redis_sentinel_password_file);
    if (o.quiet)
        o.print_events = 0;
    tick_seconds = o.tick_s;

    cmd_options_log(&o);
    int err;
    tb_app *app = tb_app_new(&o.cfg, &err);
    if (!app) {
        cmd_forget(token_secret);
        cmd_forget(redis_secret);
        cmd_forget(jwt_secret);
        cmd_forget(sentinel_secret);
        fprintf(stderr,
                "taskbus: invalid configuration: %s (see the log line "
                "above)\n",
                tb_strerror(err));
        return 2;
    }
    raise_fd_limit();
    if (getpid() == 1 && cmd_reaper_start() != 0)
        tb_log(TB_LOG_WARN, "running as PID 1 without a zombie reaper");
    tb_task_opts p = {.name = "printer"};
    if ((o.print_events && tb_task_add(app, printer, NULL, &p, NULL) != 0) ||
        tb_app_add_listener(app, TB_MAIN_READY, on_ready, NULL) != 0 ||
        tb_app_add_builtin_kinds(app) != 0 ||
        cmd_kind_exec_register(app, o.exec_allow) != 0 ||
        (o.cfg.http.listen && tb_app_add_api(app) != 0) ||
        (o.cfg.http.listen && !o.no_dashboard &&
         tb_app_add_dashboard(app) != 0)) {
        tb_app_free(app);
        cmd_forget(token_secret);
        cmd_forget(redis_secret);
        cmd_forget(jwt_secret);
        cmd_forget(sentinel_secret);
        return 1;
    }
    rc = tb_app_run(app);
    tb_app_free(app);
    cmd_forget(token_secret);
    cmd_forget(redis_secret);
    cmd_forget(jwt_secret);
    cmd_forget(sentinel_secret);
    if (rc == 0)
        tb_log(TB_LOG_INFO, "taskbus stopped cleanly");
    else
        tb_log(TB_LOG_ERROR, "taskbus stopped: %s", tb_strerror(rc));
    return rc == 0 ? 0 : 1;
}
