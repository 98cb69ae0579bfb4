/* blocking.c - the thread pool behind tb_run_blocking (asyncio's
 * run_in_executor). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static void *pool_main(void *arg)
{
    tb_app *app = arg;
    pthread_mutex_lock(&app->blk_mu);
    for (;;) {
        while (!app->blk_head && !app->blk_stop)
            pthread_cond_wait(&app->blk_cv, &app->blk_mu);
        tb__blocking_job *job = app->blk_head;
        if (!job)
            break; /* stopping and nothing left to run */
        app->blk_head = job->next;
        if (!app->blk_head)
            app->blk_tail = NULL;
        pthread_mutex_unlock(&app->blk_mu);

        job->ret = job->fn(job->arg);
        /* The job lives on the waiting task's stack: read what we need
         * before the wake lets the task run (and return) again. */
        tb_task *t = job->task;
        uint64_t seq = job->seq;
        if (tb__worker_post(t->w, TB__MSG_WAKE, t, seq, 0) != 0) {
            tb__log(TB_LOG_ERROR,
                    "blocking call of task %s finished but its wake-up was "
                    "lost: out of memory",
                    t->name);
            tb__task_unref(t);
        }
        pthread_mutex_lock(&app->blk_mu);
    }
    pthread_mutex_unlock(&app->blk_mu);
    return NULL;
}

/* Starts the pool's threads on first use (reg: blk_mu held). */
static int start_threads(tb_app *app)
{
    int n = app->cfg.core.blocking_threads;
    app->blk_threads = calloc((size_t)n, sizeof *app->blk_threads);
    if (!app->blk_threads)
        return TB_ENOMEM;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&app->blk_threads[i], NULL, pool_main, app) != 0)
            break;
        char name[16];
        snprintf(name, sizeof name, "tb-blk-%d", i % 1000);
        pthread_setname_np(app->blk_threads[i], name);
        app->blk_nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return app->blk_nthreads > 0 ? 0 : TB_EAGAIN;
}

int tb__blocking_submit(tb_app *app, tb__blocking_job *job)
{
    pthread_mutex_lock(&app->blk_mu);
    int rc = 0;
    if (app->blk_stop)
        rc = TB_ESHUTDOWN;
    else if (!app->blk_nthreads)
        rc = start_threads(app);
    if (rc == 0) {
        job->next = NULL;
        if (app->blk_tail)
            app->blk_tail->next = job;
        else
            app->blk_head = job;
        app->blk_tail = job;
        pthread_cond_signal(&app->blk_cv);
    }
    pthread_mutex_unlock(&app->blk_mu);
    return rc;
}

void tb__blocking_shutdown(tb_app *app)
{
    pthread_mutex_lock(&app->blk_mu);
    app->blk_stop = 1;
    pthread_cond_broadcast(&app->blk_cv);
    pthread_mutex_unlock(&app->blk_mu);
    /* Calls in flight are waited for: their jobs live on task stacks that
     * must stay mapped until they return. */
    for (int i = 0; i < app->blk_nthreads; i++)
        pthread_join(app->blk_threads[i], NULL);
    free(app->blk_threads);
    app->blk_threads = NULL;
    app->blk_nthreads = 0;
}
