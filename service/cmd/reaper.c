/* reaper.c - child processes: the exec kind's children are waited for by
 * their own task; when taskbus runs as PID 1 (a container's init), a
 * reaper thread also collects every other exited process re-parented to
 * it, so that no zombies pile up. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "taskbus/taskbus.h"

#include "cmd.h"

#define MAX_CHILDREN 4096

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int children[MAX_CHILDREN];
static int nchildren;

void cmd_exec_children_lock(void)
{
    pthread_mutex_lock(&mu);
}

void cmd_exec_children_unlock(void)
{
    pthread_mutex_unlock(&mu);
}

void cmd_exec_child_add(int pid)
{
    if (nchildren < MAX_CHILDREN)
        children[nchildren++] = pid;
}

void cmd_exec_child_remove(int pid)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < nchildren; i++) {
        if (children[i] == pid) {
            children[i] = children[--nchildren];
            break;
        }
    }
    pthread_mutex_unlock(&mu);
}

/* Under mu. */
static int is_exec_child(int pid)
{
    int found = 0;
    for (int i = 0; i < nchildren && !found; i++)
        found = children[i] == pid;
    return found;
}

static void *reaper(void *arg)
{
    (void)arg;
    for (;;) {
        /* Peek (WNOWAIT) so that an exec child's status stays for its
         * task; reap anything else. */
        siginfo_t si;
        memset(&si, 0, sizeof si);
        /* Under mu: an exec child is spawned and registered under it, so
         * one that exits at once is never taken for an orphan. */
        pthread_mutex_lock(&mu);
        int reaped = 0;
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid != 0 && !is_exec_child(si.si_pid))
            reaped = waitpid(si.si_pid, NULL, WNOHANG) > 0;
        pthread_mutex_unlock(&mu);
        if (reaped)
            continue; /* maybe more */
        nanosleep(&(struct timespec){0, 200 * 1000000L}, NULL);
    }
    return NULL;
}

static int start_rc;

static void start_once(void)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    /* Signals stay with the threads that handle them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    start_rc = pthread_create(&t, &a, reaper, NULL) == 0 ? 0 : TB_EAGAIN;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
}

int cmd_reaper_start(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, start_once);
    return start_rc;
}
