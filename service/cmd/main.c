/* main.c - the taskbus binary: picks the command (`taskbus serve` runs the
 * service and is the default; dispatch, tasks, instances, watch and healthcheck
 * are clients of a running one; config prints the settings), and the checks of
 * argument values every command shares. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

/* ---------------------------------------------------------------- arguments */

void cmd_die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("taskbus: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    exit(2);
}

char *cmd_read_secret(const char *what, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        cmd_die_usage("%s: cannot read %s: %s", what, path, strerror(errno));
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int big = !feof(f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (big || n == 0)
        cmd_die_usage("%s: %s must hold 1..1000 bytes", what, path);
    char *s = strdup(buf);
    explicit_bzero(buf, sizeof buf);
    if (!s)
        cmd_die_usage("out of memory");
    return s;
}

void cmd_forget(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

long long cmd_num_arg(const char *what, const char *s, long long min,
                      long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max)
        cmd_die_usage("%s must be a whole number from %lld to %lld, not \"%s\"",
                      what, min, max, s);
    return v;
}

int cmd_seconds_arg(const char *what, const char *s, double max_s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= 0) || v > max_s)
        cmd_die_usage("%s must be a number of seconds from 0 to %g, not \"%s\"",
                      what, max_s, s);
    return (int)(v * 1000 + 0.5);
}

/* ---------------------------------------------------------------- commands */

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
                cmd_options_usage(stdout);
                fputs("\nclient commands:\n", stdout);
                fputs(cmd_client_usage, stdout);
                return 0;
            }
        }
        return cmd_serve_main(argc, argv);
    }
    /* The command's own argv: argv[0] stays the program. */
    argv[1] = argv[0];
    argc--;
    argv++;
    static const struct {
        const char *name;
        int (*fn)(int argc, char **argv);
    } commands[] = {
        {"serve", cmd_serve_main},   {"dispatch", cmd_dispatch_main},
        {"tasks", cmd_tasks_main},   {"instances", cmd_instances_main},
        {"watch", cmd_watch_main},   {"healthcheck", cmd_healthcheck_main},
        {"config", cmd_config_main},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].fn(argc, argv);
    fprintf(stderr, "taskbus: unknown command \"%s\"\n%s", cmd,
            cmd_client_usage);
    return 2;
}
