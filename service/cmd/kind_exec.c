/* kind_exec.c - the "exec" task kind: runs an allowed command as a
 * background task.
 *
 *   POST /tasks {"kind": "exec", "name": "backup",
 *                "args": {"command": "/usr/local/bin/backup --full",
 *                         "events": true, "grace": 5}}
 *
 * The command is split on blanks (no shell, no quoting) and its program
 * must be in the operator's allow-list (exact absolute paths); anything
 * else is refused with TB_EPERM (POST /tasks: 403). Each line the command
 * writes becomes an event task.<name>.stdout or task.<name>.stderr (data:
 * the line) when "events" is true and the task's name is a valid event
 * segment, else a log line. The exit status is the task's result (0: done;
 * else failed, with the status or signal in its error). Cancelling sends
 * SIGTERM, then SIGKILL after "grace" seconds.
 *
 * The child is watched from the blocking-call pool (tb_run_blocking): each
 * running command holds one of the app's blocking_threads. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

extern char **environ;

#define LINE_MAX_BYTES 8192 /* a longer line is cut into pieces */
#define MAX_ARGS 64
#define EXIT_DRAIN_MS 1000 /* output read after the command exited */

typedef struct allow_list {
    size_t n;
    char **paths;
} allow_list;

static void allow_free(void *p)
{
    allow_list *a = p;
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        free(a->paths[i]);
    free(a->paths);
    free(a);
}

/* The program: the command's first blank-separated word. */
static size_t program_len(const char *cmd)
{
    cmd += strspn(cmd, " \t");
    return strcspn(cmd, " \t");
}

static int exec_check(const tb_kind_args *args, void *ud, char *err,
                      size_t errsz)
{
    const allow_list *a = ud;
    const char *cmd = tb_kind_string(args, "command");
    cmd += strspn(cmd, " \t");
    size_t n = program_len(cmd);
    if (n == 0) {
        snprintf(err, errsz, "args.command is empty");
        return TB_EINVAL;
    }
    if (!a || a->n == 0) {
        snprintf(err, errsz,
                 "the exec kind is off: the operator allows no commands "
                 "(exec_allow / --exec-allow)");
        return TB_EPERM;
    }
    for (size_t i = 0; i < a->n; i++)
        if (strlen(a->paths[i]) == n && strncmp(a->paths[i], cmd, n) == 0)
            return 0;
    snprintf(err, errsz,
             "program \"%.*s\" is not in the allow-list (--exec-allow)",
             (int)(n > 200 ? 200 : n), cmd);
    return TB_EPERM;
}

typedef struct job {
    tb_task *task;
    tb_app *app;
    char *argv[MAX_ARGS + 1];
    char *buf; /* the split command */
    int events;
    int64_t grace_ms;
    char ev_out[TB_EVENT_NAME_MAX + 1], ev_err[TB_EVENT_NAME_MAX + 1];
    int status;      /* from waitpid */
    int spawn_errno; /* posix_spawn's error, or 0 */
    int status_lost; /* the child was reaped by someone else */
    int signalled;   /* we sent SIGTERM (cancel) */
    int killed;      /* ... and SIGKILL after the grace */
    char line[2][LINE_MAX_BYTES + 1];
    size_t llen[2];
} job;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One complete line (or a piece of a long one) from stream s (0 stdout,
 * 1 stderr). */
static void emit_line(job *j, int s, const char *text, size_t len)
{
    const char *ev = s ? j->ev_err : j->ev_out;
    if (j->events && ev[0]) {
        int rc = tb_dispatch(j->app, ev, text, len, NULL);
        if (rc == 0)
            return;
        if (rc == TB_EINVAL) { /* not UTF-8: say so in the log instead */
            tb_log(TB_LOG_INFO, "task \"%s\" %s (not UTF-8, %zu bytes)",
                   tb_task_name(j->task), s ? "stderr" : "stdout", len);
            return;
        }
        tb_log(TB_LOG_WARN, "task \"%s\": event %s not dispatched: %s",
               tb_task_name(j->task), ev, tb_strerror(rc));
    }
    tb_log(s ? TB_LOG_WARN : TB_LOG_INFO, "task \"%s\" %s: %.*s",
           tb_task_name(j->task), s ? "stderr" : "stdout",
           (int)(len > 2000 ? 2000 : len), text);
}

/* Takes n bytes read from stream s; emits every complete line. */
static void take(job *j, int s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            size_t l = j->llen[s];
            if (l && j->line[s][l - 1] == '\r')
                l--;
            emit_line(j, s, j->line[s], l);
            j->llen[s] = 0;
            continue;
        }
        if (j->llen[s] == LINE_MAX_BYTES) {
            emit_line(j, s, j->line[s], j->llen[s]);
            j->llen[s] = 0;
        }
        j->line[s][j->llen[s]++] = p[i];
    }
}

/* On a blocking-pool thread: spawns the command, forwards its output,
 * waits for it; on the task's cancel, SIGTERM then SIGKILL. */
static int run(void *arg)
{
    job *j = arg;
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        j->spawn_errno = errno;
        return -1;
    }
    if (pipe2(err, O_CLOEXEC) != 0) {
        j->spawn_errno = errno;
        close(out[0]);
        close(out[1]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    /* Nothing else of ours (sockets, pipes) leaks into the command. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    /* The child starts with default signal handling and no blocked
     * signals, whatever this thread has; and its own process group, so
     * that SIGTERM reaches what it starts too. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
    /* The command does not get the service's own settings (its token,
     * the Redis URL with its password). */
    size_t nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    char **env = malloc((nenv + 1) * sizeof *env);
    size_t k = 0;
    for (char **e = environ; env && *e; e++)
        if (strncmp(*e, "TASKBUS_", 8) != 0)
            env[k++] = *e;
    if (env)
        env[k] = NULL;
    pid_t pid;
    /* Spawned and registered as one step for the PID 1 reaper, which
     * must leave this child's exit status to us. */
    cmd_exec_children_lock();
    int rc =
        env ? posix_spawn(&pid, j->argv[0], &fa, &at, j->argv, env) : ENOMEM;
    if (rc == 0)
        cmd_exec_child_add(pid);
    cmd_exec_children_unlock();
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(out[1]);
    close(err[1]);
    if (rc != 0) {
        j->spawn_errno = rc;
        close(out[0]);
        close(err[0]);
        return -1;
    }
    struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    int64_t kill_at = 0, exited_at = 0;
    int exited = 0;
    char buf[4096];
    while (open_fds > 0 || !exited) {
        if (!j->signalled && tb_task_cancelled(j->task)) {
            j->signalled = 1;
            kill(-pid, SIGTERM);
            kill_at = now_ms() + j->grace_ms;
        }
        if (j->signalled && !j->killed && now_ms() >= kill_at) {
            j->killed = 1;
            kill(-pid, SIGKILL);
        }
        if (open_fds > 0) {
            int n = poll(fds, 2, 100);
            for (int s = 0; n > 0 && s < 2; s++) {
                if (fds[s].fd < 0 || !fds[s].revents)
                    continue;
                ssize_t r = read(fds[s].fd, buf, sizeof buf);
                if (r > 0) {
                    take(j, s, buf, (size_t)r);
                } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                    if (j->llen[s])
                        emit_line(j, s, j->line[s], j->llen[s]);
                    j->llen[s] = 0;
                    close(fds[s].fd);
                    fds[s].fd = -1;
                    open_fds--;
                }
            }
        } else {
            /* Output closed (a daemonizing child may keep running). */
            nanosleep(&(struct timespec){0, 50 * 1000000L}, NULL);
        }
        if (!exited) {
            pid_t w = waitpid(pid, &j->status, WNOHANG);
            if (w == pid) {
                exited = 1;
                exited_at = now_ms();
            } else if (w < 0 && errno == ECHILD) {
                exited = 1; /* reaped by someone else: status unknown */
                exited_at = now_ms();
                j->status_lost = 1;
            }
        }
        if (exited && open_fds > 0) {
            /* Background processes the command left may hold the pipes
             * open: read what comes within a short while, then stop. */
            int quiet = poll(fds, 2, 0) == 0;
            if (quiet || now_ms() - exited_at > EXIT_DRAIN_MS)
                break;
        }
    }
    for (int s = 0; s < 2; s++)
        if (fds[s].fd >= 0)
            close(fds[s].fd);
    cmd_exec_child_remove(pid);
    return 0;
}

/* A task name usable as one event segment, else "" (lines go to the log). */
static void event_names(job *j, const char *name)
{
    size_t n = strlen(name);
    int ok = n > 0 && n + 12 <= TB_EVENT_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789_-",
                    name[i]) != NULL;
    if (!ok)
        return;
    snprintf(j->ev_out, sizeof j->ev_out, "task.%s.stdout", name);
    snprintf(j->ev_err, sizeof j->ev_err, "task.%s.stderr", name);
}

static int kind_exec(tb_task *self, void *arg)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        tb_task_fail(self, "out of memory");
        return 1;
    }
    j->task = self;
    j->app = tb_task_app(self);
    j->events = tb_kind_bool(arg, "events", 1);
    j->grace_ms = (int64_t)(tb_kind_number(arg, "grace", 5) * 1000 + 0.5);
    j->buf = strdup(tb_kind_string(arg, "command"));
    int argc = 0;
    char *save = NULL;
    for (char *w = j->buf ? strtok_r(j->buf, " \t", &save) : NULL;
         w && argc < MAX_ARGS; w = strtok_r(NULL, " \t", &save))
        j->argv[argc++] = w;
    j->argv[argc] = NULL;
    if (argc == 0) {
        free(j->buf);
        free(j);
        tb_task_fail(self, "out of memory");
        return 1;
    }
    event_names(j, tb_task_name(self));
    int ret = 0;
    int rc = tb_run_blocking(self, run, j, &ret);
    int result;
    if (j->status_lost) {
        tb_task_fail(self, "%s: its exit status was lost (reaped elsewhere)",
                     j->argv[0]);
        result = 1;
    } else if (j->spawn_errno) {
        tb_task_fail(self, "cannot start %s: %s", j->argv[0],
                     strerror(j->spawn_errno));
        result = 127;
    } else if (WIFEXITED(j->status)) {
        result = WEXITSTATUS(j->status);
        if (result != 0)
            tb_task_fail(self, "%s exited with status %d", j->argv[0], result);
    } else if (WIFSIGNALED(j->status)) {
        result = 128 + WTERMSIG(j->status);
        tb_task_fail(self, "%s was killed by signal %d%s", j->argv[0],
                     WTERMSIG(j->status),
                     j->killed      ? " (SIGKILL after the grace period)"
                     : j->signalled ? " (cancelled)"
                                    : "");
    } else {
        result = 1;
    }
    if (result != 0 && !j->signalled)
        tb_log(TB_LOG_WARN, "task \"%s\" failed: %s exited with %d",
               tb_task_name(self), j->argv[0], result);
    free(j->buf);
    free(j);
    return rc == TB_ECANCELED ? rc : result;
}

static const tb_arg_spec exec_spec[] = {
    {"command", TB_ARG_STRING, 1, 0, 0},
    {"events", TB_ARG_BOOL, 0, 0, 0},
    {"grace", TB_ARG_NUMBER, 0, 0, 3600},
    {NULL, 0, 0, 0, 0},
};

int cmd_kind_exec_register(tb_app *app, const char *allow)
{
    allow_list *a = calloc(1, sizeof *a);
    if (!a)
        return TB_ENOMEM;
    char *copy = strdup(allow ? allow : "");
    if (!copy) {
        free(a);
        return TB_ENOMEM;
    }
    char *save = NULL;
    for (char *p = strtok_r(copy, ",", &save); p;
         p = strtok_r(NULL, ",", &save)) {
        p += strspn(p, " \t");
        size_t n = strlen(p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            p[--n] = '\0';
        if (!n)
            continue;
        if (p[0] != '/') {
            tb_log(TB_LOG_ERROR,
                   "exec allow-list: \"%s\" is not an absolute path", p);
            free(copy);
            allow_free(a);
            return TB_EINVAL;
        }
        char **v = realloc(a->paths, (a->n + 1) * sizeof *v);
        if (!v || !(v[a->n] = strdup(p))) {
            if (v)
                a->paths = v;
            free(copy);
            allow_free(a);
            return TB_ENOMEM;
        }
        a->paths = v;
        a->n++;
    }
    free(copy);
    int rc = tb_app_add_kind(app, "exec", kind_exec, exec_spec);
    if (rc == 0)
        rc = tb_app_add_kind_check(app, "exec", exec_check, a, allow_free);
    if (rc)
        allow_free(a);
    return rc;
}
