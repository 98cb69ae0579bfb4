/* options.c - taskbus serve's options: the library's settings table
 * (tb_config_settings) plus the binary's own, read from TASKBUS_* variables
 * and flags; and what is made from that list: --help, `taskbus config
 * --markdown` (README's table) and the start log line. */
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

/* debug | info | warn | error, or exit 2 naming what. */
static tb_log_level level_arg(const char *what, const char *s)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return (tb_log_level)i;
    cmd_die_usage("%s must be debug, info, warn or error, not \"%s\"", what, s);
}

/* ---------------------------------------------------------------- table */

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
    size_t off;         /* offset in cmd_serve_opts */
    long long min, max; /* K_INT */
    const char *target; /* K_FILE: the library setting it fills */
    const char *help;
    const tb_config_setting *lib; /* K_LIB */
    const char *dflt;             /* the binary's own: the default, as text */
} setting;

#define O(field) offsetof(cmd_serve_opts, field)

/* clang-format off */
static const setting own[] = {
    {"redis-password-file", "TASKBUS_REDIS_PASSWORD_FILE", K_FILE,
     O(redis_password_file), 0, 0, "redis.password",
     "file holding the Redis password (overrides the URL's)", NULL, "none"},
    {"redis-sentinel-password-file", "TASKBUS_REDIS_SENTINEL_PASSWORD_FILE",
     K_FILE, O(redis_sentinel_password_file), 0, 0, "redis.sentinel_password",
     "file holding the sentinels' password (redis-sentinel:// URLs)", NULL,
     "none"},
    {"token-file", "TASKBUS_TOKEN_FILE", K_FILE, O(token_file), 0, 0,
     "http.api_token", "file holding the API token", NULL, "none"},
    {"jwt-secret-file", "TASKBUS_JWT_SECRET_FILE", K_FILE, O(jwt_secret_file),
     0, 0, "http.jwt_secret", "file holding the HS256 key of client tokens",
     NULL, "none"},
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
    {"no-dashboard", "TASKBUS_NO_DASHBOARD", K_BOOL, O(no_dashboard), 0, 0,
     NULL, "do not serve the web dashboard at / and /ui/", NULL, "off"},
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
static void serve_defaults(cmd_serve_opts *o)
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

static void apply(cmd_serve_opts *o, const setting *st, const char *value,
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
            cmd_die_usage("%s: %s%s", what, err,
                          listen ? " (or off: no HTTP server)" : "");
        break;
    case K_STR:
    case K_FILE:
        *(const char **)p = value;
        break;
    case K_INT:
        *(int *)p = (int)cmd_num_arg(what, value, st->min, st->max);
        break;
    case K_BOOL:
        if (!value || strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0)
            *(int *)p = 1;
        else if (strcmp(value, "0") == 0 || strcasecmp(value, "false") == 0)
            *(int *)p = 0;
        else
            cmd_die_usage("%s must be 1, 0, true or false, not \"%s\"", what,
                          value);
        break;
    case K_LOGFMT:
        if (strcmp(value, "json") == 0)
            *(int *)p = 1;
        else if (strcmp(value, "text") == 0)
            *(int *)p = 0;
        else
            cmd_die_usage("%s must be text or json, not \"%s\"", what, value);
        break;
    case K_LEVEL:
        *(tb_log_level *)p = level_arg(what, value);
        break;
    }
}

/* ---------------------------------------------------------------- text */

const char *cmd_options_source(const char *flag)
{
    static char dflt[64];
    for (size_t i = 0; i < nsettings; i++)
        if (strcmp(flag, settings[i].flag) == 0 && source[i])
            return source[i];
    snprintf(dflt, sizeof dflt, "--%s", flag);
    return dflt;
}

/* A setting's default as the binary has it, for --help and the README. */
static void default_text(const setting *st, const cmd_serve_opts *d, char *out,
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

void cmd_options_usage(FILE *f)
{
    settings_init();
    cmd_serve_opts d;
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

/* README's settings table is this output: the service suite checks it. */
int cmd_config_main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--markdown") != 0) {
        fprintf(stderr, "usage: taskbus config --markdown\n");
        return 2;
    }
    settings_init();
    cmd_serve_opts d;
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

void cmd_options_log(const cmd_serve_opts *o)
{
    char line[4096];
    size_t n = (size_t)snprintf(line, sizeof line,
                                "taskbus %s starting:", TB_VERSION_STRING);
    for (size_t i = 0; i < nsettings && n < sizeof line; i++) {
        const setting *st = &settings[i];
        if (st->kind != K_LIB)
            continue;
        char v[700];
        int rc;
        if (strcmp(st->lib->name, "redis.url") == 0 && !o->cfg.redis.url)
            snprintf(v, sizeof v, "none (in-process bus)");
        else if (st->lib->type == TB_CONFIG_SECRET)
            snprintf(v, sizeof v, "%s",
                     tb_config_format(&o->cfg, st->lib, v, sizeof v) > 0
                         ? "set"
                         : "none");
        else if ((rc = tb_config_format(&o->cfg, st->lib, v, sizeof v)) <= 0)
            snprintf(v, sizeof v, "%s",
                     rc == TB_ENAMETOOLONG ? "(too long to show)" : "none");
        n += (size_t)snprintf(line + n, sizeof line - n, " %s=%s", st->flag, v);
    }
    if (n < sizeof line)
        snprintf(line + n, sizeof line - n, "%s%s%s%s log=%s",
                 o->cfg.redis.password ? " redis-password=file" : "",
                 o->cfg.redis.sentinel_password
                     ? " redis-sentinel-password=file"
                     : "",
                 o->token_file ? " token-from=file" : "",
                 o->jwt_secret_file ? " jwt-secret-from=file" : "",
                 o->log_format_json ? "json" : "text");
    tb_log(TB_LOG_INFO, "%s", line);
    if (o->exec_allow && o->exec_allow[0])
        tb_log(TB_LOG_INFO, "exec task kind allows: %s", o->exec_allow);
}

/* ---------------------------------------------------------------- parse */

int cmd_options_parse(cmd_serve_opts *o, int argc, char **argv)
{
    serve_defaults(o);
    settings_init();

    /* Environment first, then flags over it. */
    for (size_t i = 0; i < nsettings; i++) {
        const char *v = settings[i].env ? getenv(settings[i].env) : NULL;
        if (v && *v)
            apply(o, &settings[i], v, settings[i].env);
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
            cmd_options_usage(stdout);
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
        apply(o, &settings[c - 1000], optarg, what);
    }
    if (optind < argc)
        cmd_die_usage("unexpected argument \"%s\" (taskbus serve --help)",
                      argv[optind]);
    return -1;
}
