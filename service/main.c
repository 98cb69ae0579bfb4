/* main.c - the taskbus binary: `taskbus serve` runs the service (the
 * default command); dispatch, tasks, watch and healthcheck are clients of a
 * running one. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

#include "http.h"
#include "kinds.h"

/* ---------------------------------------------------------------- helpers */

static void die_usage(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("taskbus: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    exit(2);
}

/* Reads a secret from a file: the whole file without a trailing newline.
 * Exits 2 naming the file (not its content) when unreadable or empty. */
static char *read_secret(const char *what, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die_usage("%s: cannot read %s: %s", what, path, strerror(errno));
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int big = !feof(f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (big || n == 0)
        die_usage("%s: %s must hold 1..1000 bytes", what, path);
    char *s = strdup(buf);
    explicit_bzero(buf, sizeof buf);
    if (!s)
        die_usage("out of memory");
    return s;
}

/* A whole decimal number in [min, max]. */
static long long num_arg(const char *what, const char *s, long long min,
                         long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max)
        die_usage("%s must be a whole number from %lld to %lld, not \"%s\"",
                  what, min, max, s);
    return v;
}

/* Seconds, possibly fractional ("1.5"), in [0, max_s]; returns ms. */
static int seconds_arg(const char *what, const char *s, double max_s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= 0) || v > max_s)
        die_usage("%s must be a number of seconds from 0 to %g, not \"%s\"",
                  what, max_s, s);
    return (int)(v * 1000 + 0.5);
}

/* ---------------------------------------------------------------- logging */

static int log_json;

/* --log-format json: one JSON object per line. (Text lines are the
 * library's default handler's.) */
static void json_handler(tb_log_level lvl, const char *msg, void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char when[40];
    time_t secs = ts.tv_sec;
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03dZ", (int)(ts.tv_nsec / 1000000));
    json_t *o = json_object();
    json_t *m = json_string(msg);
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    json_object_set_new(o, "ts", json_string(when));
    json_object_set_new(o, "level",
                        json_string((unsigned)lvl < 4 ? levels[lvl] : "?"));
    json_object_set_new(o, "msg", m ? m : json_string("(not UTF-8)"));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s) {
        fprintf(stderr, "%s\n", s);
        free(s);
    }
}

static tb_log_level level_arg(const char *what, const char *s)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return (tb_log_level)i;
    die_usage("%s must be debug, info, warn or error, not \"%s\"", what, s);
}

/* ---------------------------------------------------------------- serve */

/* The service's options: every setting of the library's table that has a
 * flag (tb_config_settings), then the binary's own below. */
enum kind {
    K_LIB,    /* a library setting: tb_config_set */
    K_FILE,   /* a secret read from the named file into .target */
    K_STR,    /* a string */
    K_INT,    /* an int in [min, max] */
    K_BOOL,   /* a flag without a value; env: 1/0, true/false */
    K_LOGFMT, /* text | json */
    K_LEVEL   /* debug | info | warn | error */
};

typedef struct setting {
    const char *flag; /* without "--" */
    const char *env;
    enum kind kind;
    size_t off;         /* offset in struct serve_opts */
    long long min, max; /* K_INT */
    const char *target; /* K_FILE: the library setting it fills */
    const char *help;
    const tb_config_setting *lib; /* K_LIB */
    const char *dflt;             /* the binary's own: the default, as text */
} setting;

typedef struct serve_opts {
    tb_app_config cfg;
    const char *token_file, *redis_password_file;
    int print_events, tick_s, quiet;
    int log_format_json;
    tb_log_level log_level;
    const char *exec_allow;
} serve_opts;

#define O(field) offsetof(serve_opts, field)

/* clang-format off */
static const setting own[] = {
    {"redis-password-file", "TASKBUS_REDIS_PASSWORD_FILE", K_FILE,
     O(redis_password_file), 0, 0, "redis.password",
     "file holding the Redis password (overrides the URL's)", NULL, "none"},
    {"token-file", "TASKBUS_TOKEN_FILE", K_FILE, O(token_file), 0, 0,
     "http.api_token", "file holding the API token", NULL, "none"},
    {"log-format", "TASKBUS_LOG_FORMAT", K_LOGFMT, O(log_format_json), 0, 0,
     NULL, "text or json (one JSON object per line)", NULL, "text"},
    {"log-level", "TASKBUS_LOG_LEVEL", K_LEVEL, O(log_level), 0, 0, NULL,
     "debug, info, warn or error", NULL, "info"},
    {"print-events", "TASKBUS_PRINT_EVENTS", K_BOOL, O(print_events), 0, 0,
     NULL, "print every event the workers receive to stdout", NULL, "off"},
    {"quiet", NULL, K_BOOL, O(quiet), 0, 0, NULL,
     "do not print events (overrides --print-events)", NULL, "on"},
    {"tick", "TASKBUS_TICK", K_INT, O(tick_s), 0, 86400, NULL,
     "dispatch demo.tick every N seconds (0: never)", NULL, "0"},
    {"exec-allow", "TASKBUS_EXEC_ALLOW", K_STR, O(exec_allow), 0, 0, NULL,
     "programs the exec task kind may run: comma-separated absolute paths "
     "(none: exec is off, spawns are 403)", NULL, "none"},
};
/* clang-format on */

#define NOWN (sizeof own / sizeof own[0])
#define MAX_SETTINGS 128

static setting settings[MAX_SETTINGS];
static size_t nsettings;

/* Where each setting's value came from: its flag or its variable. */
static const char *source[MAX_SETTINGS];

/* The binary's defaults where they differ from the library's. */
static void serve_defaults(serve_opts *o)
{
    memset(o, 0, sizeof *o);
    tb_app_config_init(&o->cfg);
    o->cfg.core.handle_signals = 1;
    o->cfg.http.listen = "127.0.0.1:8080";
    o->log_level = TB_LOG_INFO;
}

/* The library's settings that have a flag, then the binary's own. */
static void settings_init(void)
{
    if (nsettings)
        return;
    size_t n;
    const tb_config_setting *t = tb_config_settings(&n);
    for (size_t i = 0; i < n && nsettings < MAX_SETTINGS - NOWN; i++) {
        if (!t[i].flag)
            continue;
        settings[nsettings++] = (setting){.flag = t[i].flag,
                                          .env = t[i].env,
                                          .kind = K_LIB,
                                          .help = t[i].help,
                                          .lib = &t[i]};
    }
    for (size_t i = 0; i < NOWN; i++)
        settings[nsettings++] = own[i];
}

static void apply(serve_opts *o, const setting *st, const char *value,
                  const char *what)
{
    source[st - settings] = what;
    void *p = (char *)o + st->off;
    char err[256];
    switch (st->kind) {
    case K_LIB:
        if (st->lib->type == TB_CONFIG_BOOL && !value)
            value = "1";
        /* "off": the binary's word for no HTTP server. */
        int listen = strcmp(st->lib->name, "http.listen") == 0;
        if (listen && strcmp(value, "off") == 0)
            value = "";
        if (tb_config_set(&o->cfg, st->lib->name, value, err, sizeof err))
            die_usage("%s: %s%s", what, err,
                      listen ? " (or off: no HTTP server)" : "");
        break;
    case K_STR:
    case K_FILE:
        *(const char **)p = value;
        break;
    case K_INT:
        *(int *)p = (int)num_arg(what, value, st->min, st->max);
        break;
    case K_BOOL:
        if (!value || strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0)
            *(int *)p = 1;
        else if (strcmp(value, "0") == 0 || strcasecmp(value, "false") == 0)
            *(int *)p = 0;
        else
            die_usage("%s must be 1, 0, true or false, not \"%s\"", what,
                      value);
        break;
    case K_LOGFMT:
        if (strcmp(value, "json") == 0)
            *(int *)p = 1;
        else if (strcmp(value, "text") == 0)
            *(int *)p = 0;
        else
            die_usage("%s must be text or json, not \"%s\"", what, value);
        break;
    case K_LEVEL:
        *(tb_log_level *)p = level_arg(what, value);
        break;
    }
}

/* The source a setting was given by, or "--FLAG" when it was not given. */
static const char *src_of(const char *flag)
{
    static char dflt[64];
    for (size_t i = 0; i < nsettings; i++)
        if (strcmp(flag, settings[i].flag) == 0 && source[i])
            return source[i];
    snprintf(dflt, sizeof dflt, "--%s", flag);
    return dflt;
}

/* Wipes and frees a secret. */
static void forget(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Puts the decimal digits of v (width w, zero-padded) at p; returns the
 * end. Async-signal-safe. */
static char *digits(char *p, long v, int w)
{
    for (int i = w - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + w;
}

/* A second SIGTERM/SIGINT: one log line in the configured format, from the
 * signal handler, so only async-signal-safe calls (clock_gettime, write)
 * and arithmetic (civil date from days, Howard Hinnant's algorithm). */
static void second_signal(int sig)
{
    (void)sig;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long days = (long)(ts.tv_sec / 86400), sod = (long)(ts.tv_sec % 86400);
    long z = days + 719468, era = z / 146097, doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100),
         mp = (5 * doy + 2) / 153;
    long d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    long y = yoe + era * 400 + (m <= 2);
    char t[32], *p = t;
    p = digits(p, y, 4);
    *p++ = '-';
    p = digits(p, m, 2);
    *p++ = '-';
    p = digits(p, d, 2);
    *p++ = 'T';
    p = digits(p, sod / 3600, 2);
    *p++ = ':';
    p = digits(p, sod / 60 % 60, 2);
    *p++ = ':';
    p = digits(p, sod % 60, 2);
    *p++ = '.';
    p = digits(p, ts.tv_nsec / 1000000, 3);
    *p++ = 'Z';
    static const char msg[] = "second signal: exiting at once";
    char line[160], *q = line;
#define PUT(s, n) (memcpy(q, (s), (n)), q += (n))
    if (log_json) {
        PUT("{\"ts\":\"", 7);
        PUT(t, (size_t)(p - t));
        PUT("\",\"level\":\"warn\",\"msg\":\"", 24);
        PUT(msg, sizeof msg - 1);
        PUT("\"}\n", 3);
    } else {
        PUT(t, (size_t)(p - t));
        PUT(" WARN taskbus: ", 15);
        PUT(msg, sizeof msg - 1);
        PUT("\n", 1);
    }
#undef PUT
    ssize_t n = write(STDERR_FILENO, line, (size_t)(q - line));
    (void)n;
}

/* A setting's default as the binary has it, for --help and the README. */
static void default_text(const setting *st, const serve_opts *d, char *out,
                         size_t outsz)
{
    out[0] = '\0';
    if (st->kind == K_LIB) {
        if (tb_config_format(&d->cfg, st->lib, out, outsz) < 0)
            out[0] = '\0';
        if (!out[0])
            snprintf(out, outsz, "none");
    } else if (st->dflt) {
        snprintf(out, outsz, "%s", st->dflt);
    }
}

static void serve_usage(FILE *f)
{
    settings_init();
    serve_opts d;
    serve_defaults(&d);
    fprintf(f, "usage: taskbus [serve] [options]\n"
               "Runs the taskbus service: workers, the event bus (Redis with "
               "--redis-url, else in-process) and the HTTP API with "
               "websockets.\nEvery option is also an environment variable; "
               "a flag wins over its variable.\n\n");
    for (size_t i = 0; i < nsettings; i++) {
        const setting *st = &settings[i];
        char left[64], dflt[128];
        int flagonly = st->kind == K_BOOL ||
                       (st->kind == K_LIB && st->lib->type == TB_CONFIG_BOOL);
        snprintf(left, sizeof left, "--%s%s", st->flag, flagonly ? "" : " V");
        default_text(st, &d, dflt, sizeof dflt);
        if (dflt[0])
            fprintf(f, "  %-28s %s (default %s)\n", left, st->help, dflt);
        else
            fprintf(f, "  %-28s %s\n", left, st->help);
        if (st->env)
            fprintf(f, "  %-28s   env %s\n", "", st->env);
    }
    fprintf(f, "\nSIGTERM or SIGINT stops it gracefully (a second one at "
               "once); exit 0 after a clean stop.\n");
}

/* taskbus config --markdown: README's settings table, made from the same
 * table as the flags (a test checks that README holds exactly this). */
static int config_main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--markdown") != 0) {
        fprintf(stderr, "usage: taskbus config --markdown\n");
        return 2;
    }
    settings_init();
    serve_opts d;
    serve_defaults(&d);
    printf("| flag | variable | default | what |\n|---|---|---|---|\n");
    for (size_t i = 0; i < nsettings; i++) {
        const setting *st = &settings[i];
        char dflt[128];
        default_text(st, &d, dflt, sizeof dflt);
        printf("| `--%s` | %s%s%s | %s | %s |\n", st->flag, st->env ? "`" : "",
               st->env ? st->env : "-", st->env ? "`" : "",
               dflt[0] ? dflt : "-", st->help);
    }
    return 0;
}

static int tick_seconds;

/* Prints every event: one subscription with a pattern per name length
 * ('*' matches one segment; names have 1..8). */
static int printer(tb_task *self, void *arg)
{
    (void)arg;
    static const char *const every_event[] = {
        "*",         "*.*",         "*.*.*",         "*.*.*.*",
        "*.*.*.*.*", "*.*.*.*.*.*", "*.*.*.*.*.*.*", "*.*.*.*.*.*.*.*",
    };
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
            tb_log(TB_LOG_WARN, "demo.tick not dispatched: %s",
                   tb_strerror(rc));
    }
    return 0;
}

static int on_ready(tb_app *app, int worker, void *arg)
{
    (void)worker;
    (void)arg;
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

/* The start line: every setting's effective value, secrets only as
 * set/none (a URL without its password). */
static void log_config(const serve_opts *o)
{
    char line[4096];
    size_t n = (size_t)snprintf(line, sizeof line,
                                "taskbus %s starting:", TB_VERSION_STRING);
    for (size_t i = 0; i < nsettings && n < sizeof line; i++) {
        const setting *st = &settings[i];
        if (st->kind != K_LIB)
            continue;
        char v[700];
        if (strcmp(st->lib->name, "redis.url") == 0 && !o->cfg.redis.url)
            snprintf(v, sizeof v, "none (in-process bus)");
        else if (st->lib->type == TB_CONFIG_SECRET)
            snprintf(v, sizeof v, "%s",
                     tb_config_format(&o->cfg, st->lib, v, sizeof v) > 0
                         ? "set"
                         : "none");
        else if (tb_config_format(&o->cfg, st->lib, v, sizeof v) <= 0)
            snprintf(v, sizeof v, "none");
        n += (size_t)snprintf(line + n, sizeof line - n, " %s=%s", st->flag, v);
    }
    if (n < sizeof line)
        snprintf(line + n, sizeof line - n, "%s%s log=%s",
                 o->cfg.redis.password ? " redis-password=file" : "",
                 o->token_file ? " token-from=file" : "",
                 o->log_format_json ? "json" : "text");
    tb_log(TB_LOG_INFO, "%s", line);
    if (o->exec_allow && o->exec_allow[0])
        tb_log(TB_LOG_INFO, "exec task kind allows: %s", o->exec_allow);
}

static int serve_main(int argc, char **argv)
{
    serve_opts o;
    serve_defaults(&o);
    settings_init();

    /* Environment first, then flags over it. */
    for (size_t i = 0; i < nsettings; i++) {
        const char *v = settings[i].env ? getenv(settings[i].env) : NULL;
        if (v && *v)
            apply(&o, &settings[i], v, settings[i].env);
    }
    struct option lopts[MAX_SETTINGS + 3];
    for (size_t i = 0; i < nsettings; i++) {
        int flagonly = settings[i].kind == K_BOOL ||
                       (settings[i].kind == K_LIB &&
                        settings[i].lib->type == TB_CONFIG_BOOL);
        lopts[i] = (struct option){settings[i].flag,
                                   flagonly ? no_argument : required_argument,
                                   NULL, 1000 + (int)i};
    }
    lopts[nsettings] = (struct option){"help", no_argument, NULL, 'h'};
    lopts[nsettings + 1] = (struct option){"version", no_argument, NULL, 'V'};
    lopts[nsettings + 2] = (struct option){NULL, 0, NULL, 0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        if (c == 'h') {
            serve_usage(stdout);
            return 0;
        }
        if (c == 'V') {
            printf("taskbus %s\n", TB_VERSION_STRING);
            return 0;
        }
        if (c < 1000 || c >= 1000 + (int)nsettings) {
            fprintf(stderr, "taskbus serve --help lists the options\n");
            return 2;
        }
        static char whats[MAX_SETTINGS][48];
        char *what = whats[c - 1000];
        snprintf(what, sizeof whats[0], "--%s", settings[c - 1000].flag);
        apply(&o, &settings[c - 1000], optarg, what);
    }
    if (optind < argc)
        die_usage("unexpected argument \"%s\" (taskbus serve --help)",
                  argv[optind]);

    log_json = o.log_format_json;
    tb_log_set_handler(log_json ? json_handler : NULL, NULL);
    tb_log_set_level(o.log_level);
    tb_app_set_second_signal_hook(second_signal);
    char *token_secret = NULL, *redis_secret = NULL;
    if (o.token_file)
        o.cfg.http.api_token = token_secret =
            read_secret(src_of("token-file"), o.token_file);
    if (o.redis_password_file)
        o.cfg.redis.password = redis_secret =
            read_secret(src_of("redis-password-file"), o.redis_password_file);
    if (o.quiet)
        o.print_events = 0;
    tick_seconds = o.tick_s;

    log_config(&o);
    int err;
    tb_app *app = tb_app_new(&o.cfg, &err);
    if (!app) {
        forget(token_secret);
        forget(redis_secret);
        fprintf(stderr,
                "taskbus: invalid configuration: %s (see the log line "
                "above)\n",
                tb_strerror(err));
        return 2;
    }
    raise_fd_limit();
    if (getpid() == 1 && tb__reaper_start() != 0)
        tb_log(TB_LOG_WARN, "running as PID 1 without a zombie reaper");
    tb_task_opts p = {.name = "printer"};
    if ((o.print_events && tb_task_add(app, printer, NULL, &p, NULL) != 0) ||
        tb_app_add_listener(app, TB_MAIN_READY, on_ready, NULL) != 0 ||
        tb_app_add_builtin_kinds(app) != 0 ||
        tb__kind_exec_register(app, o.exec_allow) != 0 ||
        (o.cfg.http.listen && tb_app_add_api(app) != 0)) {
        tb_app_free(app);
        forget(token_secret);
        forget(redis_secret);
        return 1;
    }
    int rc = tb_app_run(app);
    tb_app_free(app);
    forget(token_secret);
    forget(redis_secret);
    if (rc == 0)
        tb_log(TB_LOG_INFO, "taskbus stopped cleanly");
    else
        tb_log(TB_LOG_ERROR, "taskbus stopped: %s", tb_strerror(rc));
    return rc == 0 ? 0 : 1;
}

/* ---------------------------------------------------------------- clients */

typedef struct client {
    char host[300];
    int port;
    char prefix[256]; /* path prefix of the URL, "" or "/x" */
    char *token;
    int timeout_ms;
} client;

/* "http://host:port[/prefix]" or "host:port". */
static void parse_url(client *cl, const char *url)
{
    const char *p = url;
    if (strncmp(p, "https://", 8) == 0)
        die_usage("--url: https is not supported (civetweb 1.15 was built "
                  "without a client TLS path here); use http://");
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[300];
    if (hp == 0 || hp >= sizeof hostport)
        die_usage("--url: bad URL \"%s\" (want http://host:port)", url);
    memcpy(hostport, p, hp);
    hostport[hp] = '\0';
    char *colon = strrchr(hostport, ':');
    cl->port = 80;
    if (colon) {
        *colon = '\0';
        cl->port = (int)num_arg("--url port", colon + 1, 1, 65535);
    }
    if (strcmp(hostport, "0.0.0.0") == 0 || hostport[0] == '\0')
        snprintf(hostport, sizeof hostport, "127.0.0.1");
    snprintf(cl->host, sizeof cl->host, "%s", hostport);
    snprintf(cl->prefix, sizeof cl->prefix, "%s", slash ? slash : "");
    size_t n = strlen(cl->prefix);
    while (n && cl->prefix[n - 1] == '/')
        cl->prefix[--n] = '\0';
}

/* The default URL: TASKBUS_URL, else the local service's TASKBUS_LISTEN. */
static void client_defaults(client *cl)
{
    memset(cl, 0, sizeof *cl);
    const char *u = getenv("TASKBUS_URL");
    const char *l = getenv("TASKBUS_LISTEN");
    if (u && *u)
        parse_url(cl, u);
    else if (l && *l && strcmp(l, "off") != 0)
        parse_url(cl, l);
    else
        parse_url(cl, "http://127.0.0.1:8080");
    const char *t = getenv("TASKBUS_TOKEN");
    const char *tf = getenv("TASKBUS_TOKEN_FILE");
    if (t && *t)
        cl->token = strdup(t);
    else if (tf && *tf)
        cl->token = read_secret("TASKBUS_TOKEN_FILE", tf);
    cl->timeout_ms = 30000;
}

/* Percent-encodes s for a path segment or a query value. */
static void encode(char *out, size_t outsz, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s && n + 4 < outsz; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') || strchr("-._~*<>", ch)) {
            out[n++] = (char)ch;
        } else {
            out[n++] = '%';
            out[n++] = hex[ch >> 4];
            out[n++] = hex[ch & 15];
        }
    }
    out[n] = '\0';
}

/* One request; prints the body (stdout on 2xx, stderr otherwise). Exit
 * codes: 0 on 2xx, 1 on an HTTP error, 3 when the service is unreachable. */
static int request(client *cl, const char *method, const char *path,
                   const char *body, size_t len, int quiet)
{
    char target[2048];
    snprintf(target, sizeof target, "%s%s", cl->prefix, path);
    int status = 0;
    char *resp = NULL;
    size_t rlen = 0;
    char err[256] = "";
    const char *ctype = NULL;
    if (body) {
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_DECODE_ANY, &je);
        ctype = j ? "application/json" : "text/plain; charset=utf-8";
        json_decref(j);
    }
    int rc = tb__http_client(cl->host, cl->port, method, target, cl->token,
                             ctype, body, len, cl->timeout_ms, &status, &resp,
                             &rlen, err, sizeof err);
    if (rc) {
        fprintf(stderr, "taskbus: %s http://%s:%d%s: %s\n", method, cl->host,
                cl->port, target, err[0] ? err : tb_strerror(rc));
        return 3;
    }
    int ok = status >= 200 && status < 300;
    if (!quiet || !ok) {
        FILE *f = ok ? stdout : stderr;
        if (rlen)
            fprintf(f, "%s%s", resp, resp[rlen - 1] == '\n' ? "" : "\n");
        else if (!ok)
            fprintf(f, "HTTP %d\n", status);
    }
    free(resp);
    return ok ? 0 : 1;
}

static const struct option client_opts[] = {
    {"url", required_argument, NULL, 'u'},
    {"token", required_argument, NULL, 'k'},
    {"token-file", required_argument, NULL, 'K'},
    {"timeout", required_argument, NULL, 't'},
    {"state", required_argument, NULL, 's'},
    {"name", required_argument, NULL, 'n'},
    {"args", required_argument, NULL, 'a'},
    {"worker", required_argument, NULL, 'w'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char client_usage[] =
    "usage:\n"
    "  taskbus dispatch NAME [DATA|-]      dispatch an event (DATA, or stdin "
    "with -)\n"
    "  taskbus tasks [list] [--state S]    list tasks\n"
    "  taskbus tasks get NAME              one task\n"
    "  taskbus tasks cancel NAME [--timeout S]  cancel and wait\n"
    "  taskbus tasks purge                 drop finished tasks\n"
    "  taskbus tasks spawn KIND [--name N] [--args JSON] [--worker W]\n"
    "  taskbus watch PATTERN...            print events as they arrive "
    "(websocket)\n"
    "  taskbus healthcheck                 exit 0 if /healthz answers 200\n"
    "  taskbus config --markdown           the settings as a Markdown table\n"
    "common options: --url http://HOST:PORT (env TASKBUS_URL; default the "
    "local service, from TASKBUS_LISTEN or 127.0.0.1:8080), --token T (env "
    "TASKBUS_TOKEN), --token-file F (env TASKBUS_TOKEN_FILE), --timeout S\n"
    "exit status: 0 success, 1 the service answered an error, 2 bad usage, "
    "3 the service is unreachable\n";

typedef struct client_args {
    const char *state, *name, *args, *worker, *timeout;
} client_args;

/* Parses the common options; leaves the positional arguments in
 * argv[optind..]. */
static void client_parse(client *cl, client_args *a, int argc, char **argv)
{
    client_defaults(cl);
    memset(a, 0, sizeof *a);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", client_opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            parse_url(cl, optarg);
            break;
        case 'k':
            free(cl->token);
            cl->token = strdup(optarg);
            break;
        case 'K':
            free(cl->token);
            cl->token = read_secret("--token-file", optarg);
            break;
        case 't':
            a->timeout = optarg;
            cl->timeout_ms = seconds_arg("--timeout", optarg, 3600) + 5000;
            break;
        case 's':
            a->state = optarg;
            break;
        case 'n':
            a->name = optarg;
            break;
        case 'a':
            a->args = optarg;
            break;
        case 'w':
            a->worker = optarg;
            break;
        case 'h':
            fputs(client_usage, stdout);
            exit(0);
        default:
            fputs(client_usage, stderr);
            exit(2);
        }
    }
}

static char *read_stdin(size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    *len = n;
    return buf;
}

static int dispatch_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    int npos = argc - optind;
    if (npos < 1 || npos > 2)
        die_usage("dispatch wants NAME and at most one DATA argument");
    char path[1024], enc[700];
    encode(enc, sizeof enc, argv[optind]);
    snprintf(path, sizeof path, "/events/%s", enc);
    const char *data = npos == 2 ? argv[optind + 1] : "";
    size_t len = strlen(data);
    char *owned = NULL;
    if (strcmp(data, "-") == 0) {
        owned = read_stdin(&len);
        if (!owned)
            die_usage("out of memory reading stdin");
        data = owned;
    }
    int rc = request(&cl, "POST", path, data, len, 0);
    free(owned);
    free(cl.token);
    return rc;
}

static int tasks_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    const char *sub = optind < argc ? argv[optind++] : "list";
    char path[1024], enc[700];
    int rc;
    if (strcmp(sub, "list") == 0) {
        if (a.state) {
            encode(enc, sizeof enc, a.state);
            snprintf(path, sizeof path, "/tasks?state=%s", enc);
        } else {
            snprintf(path, sizeof path, "/tasks");
        }
        rc = request(&cl, "GET", path, NULL, 0, 0);
    } else if (strcmp(sub, "get") == 0 || strcmp(sub, "cancel") == 0) {
        if (optind != argc - 1)
            die_usage("tasks %s wants one task NAME", sub);
        encode(enc, sizeof enc, argv[optind]);
        if (sub[0] == 'g') {
            snprintf(path, sizeof path, "/tasks/%s", enc);
            rc = request(&cl, "GET", path, NULL, 0, 0);
        } else {
            snprintf(path, sizeof path, "/tasks/%s%s%s", enc,
                     a.timeout ? "?timeout=" : "", a.timeout ? a.timeout : "");
            rc = request(&cl, "DELETE", path, NULL, 0, 0);
        }
    } else if (strcmp(sub, "purge") == 0) {
        rc = request(&cl, "POST", "/tasks/purge", "", 0, 0);
    } else if (strcmp(sub, "spawn") == 0) {
        if (optind != argc - 1)
            die_usage("tasks spawn wants one KIND");
        json_t *o = json_object();
        json_object_set_new(o, "kind", json_string(argv[optind]));
        if (a.name)
            json_object_set_new(o, "name", json_string(a.name));
        if (a.args) {
            json_error_t je;
            json_t *args = json_loads(a.args, 0, &je);
            if (!args)
                die_usage("--args is not JSON: %s", je.text);
            json_object_set_new(o, "args", args);
        }
        if (a.worker)
            json_object_set_new(
                o, "worker",
                json_integer(num_arg("--worker", a.worker, 0, 255)));
        char *body = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!body)
            die_usage("out of memory");
        rc = request(&cl, "POST", "/tasks", body, strlen(body), 0);
        free(body);
    } else {
        die_usage("tasks: unknown subcommand \"%s\" (list, get, cancel, "
                  "purge, spawn)",
                  sub);
    }
    free(cl.token);
    return rc;
}

static volatile sig_atomic_t watch_stop;

static void on_watch_signal(int sig)
{
    (void)sig;
    watch_stop = 1;
}

static void print_text(const char *text, size_t len, void *ud)
{
    (void)ud;
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static int watch_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    if (optind >= argc)
        die_usage("watch wants at least one event PATTERN");
    char target[4096];
    size_t n =
        (size_t)snprintf(target, sizeof target, "%s/ws?events=", cl.prefix);
    for (int i = optind; i < argc && n < sizeof target; i++) {
        char enc[700];
        encode(enc, sizeof enc, argv[i]);
        n += (size_t)snprintf(target + n, sizeof target - n, "%s%s",
                              i > optind ? "," : "", enc);
    }
    if (cl.token && n < sizeof target) {
        char enc[800];
        encode(enc, sizeof enc, cl.token);
        snprintf(target + n, sizeof target - n, "&token=%s", enc);
    }
    struct sigaction sa = {.sa_handler = on_watch_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char err[256] = "";
    int rc = tb__ws_client_watch(cl.host, cl.port, target, print_text, NULL,
                                 &watch_stop, err, sizeof err);
    if (rc == TB_ENOTCONN) {
        /* civetweb's client does not say what the server answered: ask
         * again without the upgrade (401, 400 bad_pattern... come back the
         * same; 426 means the upgrade itself failed). */
        char probe[4096];
        snprintf(probe, sizeof probe, "%s", target + strlen(cl.prefix));
        int prc = request(&cl, "GET", probe, NULL, 0, 1);
        explicit_bzero(probe, sizeof probe);
        if (prc == 3)
            return 3;
        fprintf(stderr, "taskbus: watch: cannot open ws://%s:%d%s/ws: %s\n",
                cl.host, cl.port, cl.prefix, err[0] ? err : "refused");
        free(cl.token);
        return 1;
    }
    explicit_bzero(target, sizeof target);
    free(cl.token);
    if (rc) {
        fprintf(stderr, "taskbus: watch: %s\n", err);
        return 1;
    }
    return 0;
}

static int healthcheck_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    if (!a.timeout)
        cl.timeout_ms = 3000;
    return request(&cl, "GET", "/healthz", NULL, 0, 1) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    if (!cmd) {
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--version") == 0) {
                printf("taskbus %s\n", TB_VERSION_STRING);
                return 0;
            }
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                serve_usage(stdout);
                fputs("\nclient commands:\n", stdout);
                fputs(client_usage, stdout);
                return 0;
            }
        }
        return serve_main(argc, argv);
    }
    /* The command's own argv: argv[0] stays the program. */
    argv[1] = argv[0];
    argc--;
    argv++;
    if (strcmp(cmd, "serve") == 0)
        return serve_main(argc, argv);
    if (strcmp(cmd, "dispatch") == 0)
        return dispatch_main(argc, argv);
    if (strcmp(cmd, "tasks") == 0)
        return tasks_main(argc, argv);
    if (strcmp(cmd, "watch") == 0)
        return watch_main(argc, argv);
    if (strcmp(cmd, "healthcheck") == 0)
        return healthcheck_main(argc, argv);
    if (strcmp(cmd, "config") == 0)
        return config_main(argc, argv);
    fprintf(stderr, "taskbus: unknown command \"%s\"\n%s", cmd, client_usage);
    return 2;
}
