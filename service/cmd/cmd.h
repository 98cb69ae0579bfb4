/* cmd.h - the taskbus binary's own header: its commands and what they share.
 *
 * The binary is a user of libtaskbus like any other program: it includes
 * taskbus/taskbus.h and nothing of service/ or adapters/ (its build has
 * neither directory on the include path), so it links against a shared
 * libtaskbus too. Its names across files carry cmd_, so that a tb__ here
 * would stand out as a reach into the library's insides. */
#ifndef TASKBUS_CMD_H
#define TASKBUS_CMD_H

#include <stdio.h>

#include "taskbus/taskbus.h"

/* ---------------------------------------------------------------- main.c */

/* Prints "taskbus: <message>" to stderr and exits 2 (bad usage). */
void cmd_die_usage(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* Reads a secret from the file at path: the whole file without a trailing
 * newline, in a malloc'd string the caller wipes and frees with
 * cmd_forget. Exits 2 naming what (the flag or variable) and the file, not
 * its content, when unreadable, empty or over 1000 bytes. */
char *cmd_read_secret(const char *what, const char *path);

/* Wipes and frees a secret from cmd_read_secret. NULL is a no-op. */
void cmd_forget(char *s);

/* A whole decimal number in [min, max], or exit 2 naming what. */
long long cmd_num_arg(const char *what, const char *s, long long min,
                      long long max);

/* Seconds, possibly fractional ("1.5"), in [0, max_s]: returns ms, or
 * exits 2 naming what. */
int cmd_seconds_arg(const char *what, const char *s, double max_s);

/* ------------------------------------------------------------- options.c */

/* taskbus serve's options: the library's settings (cfg) and the binary's
 * own. The strings point into argv or the environment. */
typedef struct cmd_serve_opts {
    tb_app_config cfg;
    const char *token_file, *redis_password_file, *jwt_secret_file;
    const char *redis_sentinel_password_file;
    int print_events, tick_s, quiet;
    int no_dashboard; /* not registering tb_app_add_dashboard */
    int log_format_json;
    tb_log_level log_level;
    const char *exec_allow;
} cmd_serve_opts;

/* Fills *o from the TASKBUS_* variables, then the flags over them, each
 * checked (exit 2 naming the flag or variable on a bad value). Returns -1
 * to go on and serve, or the exit status after --help or --version (0) or
 * an unknown option (2). */
int cmd_options_parse(cmd_serve_opts *o, int argc, char **argv);

/* The flag or variable a setting's value came from, or "--FLAG" when it
 * was not given. Static storage, valid until the next call. */
const char *cmd_options_source(const char *flag);

/* taskbus serve --help: every option with its variable and default. */
void cmd_options_usage(FILE *f);

/* Logs the start line: every setting's effective value, secrets only as
 * set/none, the Redis URL without its password. */
void cmd_options_log(const cmd_serve_opts *o);

/* taskbus config --markdown: README's settings table. Returns the exit
 * status. */
int cmd_config_main(int argc, char **argv);

/* ------------------------------------------------------------- logging.c */

/* Sends the library's log lines (tb_log) to stderr: text lines (the
 * library's default handler) or, with json, one JSON object per line; sets
 * the level; and makes the line of a second SIGTERM/SIGINT the same
 * format. Before tb_app_run. */
void cmd_log_setup(int json, tb_log_level level);

/* --------------------------------------------------------------- serve.c */

/* taskbus serve (the default command): runs the service until a signal
 * stops it. argv[0] is the program. Returns the exit status. */
int cmd_serve_main(int argc, char **argv);

/* -------------------------------------------------------------- client.c */

/* The client commands' usage, for taskbus --help. */
extern const char cmd_client_usage[];

/* taskbus dispatch, tasks, instances, watch, healthcheck: clients of a
 * running service over its HTTP API. argv[0] is the program. Each returns the
 * exit status: 0 success, 1 the service answered an error, 2 bad usage, 3 the
 * service is unreachable. */
int cmd_dispatch_main(int argc, char **argv);
int cmd_tasks_main(int argc, char **argv);
int cmd_instances_main(int argc, char **argv);
int cmd_watch_main(int argc, char **argv);
int cmd_healthcheck_main(int argc, char **argv);

/* ----------------------------------------------------------- kind_exec.c */

/* Registers the "exec" kind {command, events?, grace?}: runs command (a
 * program path and arguments separated by blanks; no shell) as a
 * background task. Only programs in allow (comma-separated absolute
 * paths; NULL or "": none, every spawn is refused with TB_EPERM) may run.
 * allow is copied. Before tb_app_run. 0, TB_EINVAL (a relative path, logged),
 * TB_ENOMEM, or tb_app_add_kind's errors. */
int cmd_kind_exec_register(tb_app *app, const char *allow);

/* -------------------------------------------------------------- reaper.c */

/* The exec kind's children, so that the PID 1 reaper leaves their exit
 * status to their task: spawn and add under the lock. Any thread. */
void cmd_exec_children_lock(void);
void cmd_exec_children_unlock(void);
void cmd_exec_child_add(int pid); /* under the lock */
void cmd_exec_child_remove(int pid);

/* Starts a thread that reaps every other exited child (orphans re-parented
 * to us when we run as PID 1 in a container). Idempotent. 0 or TB_EAGAIN. */
int cmd_reaper_start(void);

#endif /* TASKBUS_CMD_H */
