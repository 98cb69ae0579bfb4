/* api_post.c - POST /events/{name} and POST /events without a thread that
 * waits (the HTTP front's twins of the handlers): each event's publish
 * callback counts down, and the answer is made by the caller once the last
 * one has come, with the handlers' own checks and answers (api.c,
 * api_batch.c). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "batch.h"
#include "http.h"
#include "internal.h"

/* A publish in flight: freed by whichever lets go last, the request (its
 * answer) or the bus (a callback may come after the caller stopped
 * waiting). */
typedef struct pub {
    tb__http_work base; /* first: what the caller holds */
    atomic_int refs;    /* the request's + one per callback not yet run */
    pthread_mutex_t mu;
    void (*done)(void *ud); /* under mu; NULL once the answer has begun */
    void *ud;
    size_t n, left; /* left: callbacks not yet run, under mu */
    int batch;      /* POST /events: holds a core.batch_max_concurrent slot */
    int timeout_ms;
    const char *name;             /* POST /events/{name}: req's, the name */
    char (*ids)[TB_EVENT_ID_MAX]; /* n */
    int *status;                  /* n: 1 until its callback ran, under mu */
    int *seen; /* n: status as the answer saw it (outcome), the answer's own */
    struct slot {
        struct pub *p;
        size_t i;
    } * slots;  /* n */
    void **uds; /* n: &slots[i], the callbacks' ud */
} pub;

static void pub_free(pub *p)
{
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void pub_unref(pub *p)
{
    if (atomic_fetch_sub(&p->refs, 1) == 1)
        pub_free(p);
}

/* The bus's callback, on its thread (or the caller's, for the memory
 * bus). The last one tells the caller, unless it has stopped waiting. */
static void confirmed(int status, void *ud)
{
    struct slot *sl = ud;
    pub *p = sl->p;
    pthread_mutex_lock(&p->mu);
    p->status[sl->i] = status;
    if (--p->left == 0 && p->done) {
        p->done(p->ud);
        p->done = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    pub_unref(p);
}

static int answer(tb_http_req *req, tb__http_work *w, int why);
static void release(tb__http_work *w);

/* One block for n events: NULL on ENOMEM. */
static pub *pub_new(tb_http_req *req, size_t n, void (*done)(void *), void *ud)
{
    size_t m = n ? n : 1;
    pub *p = calloc(1, sizeof *p + m * (sizeof *p->ids + 2 * sizeof(int) +
                                        sizeof *p->slots + sizeof *p->uds));
    if (!p)
        return NULL;
    /* The arrays after it, widest alignment first. */
    p->slots = (struct slot *)(p + 1);
    p->uds = (void **)(p->slots + m);
    p->status = (int *)(p->uds + m);
    p->seen = p->status + m;
    p->ids = (char(*)[TB_EVENT_ID_MAX])(p->seen + m);
    p->base.answer = answer;
    p->base.release = release;
    atomic_init(&p->refs, 1 + (int)n);
    pthread_mutex_init(&p->mu, NULL);
    p->done = done;
    p->ud = ud;
    p->n = p->left = n;
    p->timeout_ms =
        tb_app_get_config(tb_http_app(req))->redis.command_timeout_ms;
    p->base.timeout_ms = p->timeout_ms;
    for (size_t i = 0; i < n; i++) {
        p->slots[i] = (struct slot){p, i};
        p->uds[i] = &p->slots[i];
        p->status[i] = 1;
    }
    return p;
}

/* What became of each event, copied into p->seen under the lock (a late
 * confirmation still writes p->status, on the bus thread): its
 * callback's status, or, when it has not come, TB_ETIMEDOUT. The caller
 * stopped waiting (timeout, the client gone, the front ending) and the
 * bus holds the event: it may still be published, so never
 * TB_ESHUTDOWN ("nothing dispatched"). The first failure is the rc. */
static int outcome(pub *p, int why)
{
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    if (why != TB__HTTP_GONE)
        p->done = NULL; /* never told after this */
    for (size_t i = 0; i < p->n; i++) {
        p->seen[i] = p->status[i] > 0 ? TB_ETIMEDOUT : p->status[i];
        if (p->seen[i] && !rc)
            rc = p->seen[i];
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static int answer(tb_http_req *req, tb__http_work *w, int why)
{
    pub *p = (pub *)w;
    int rc = outcome(p, why);
    if (why == TB__HTTP_GONE) {
        /* Nobody reads it, and the bus may well publish the event in a
         * moment: not a bus error to log or count as 504, but 499 as a
         * long poll whose client left (tb__http_abandon). */
        if (p->batch)
            tb__api_batch_leave(tb_http_app(req));
        tb__http_abandon(req);
        return req->status;
    }
    if (p->batch) {
        tb__api_batch_answer(req, rc, p->ids, p->seen, p->n, p->n, 0,
                             p->timeout_ms);
        tb__api_batch_leave(tb_http_app(req));
    } else {
        tb__api_event_answer(req, rc, p->ids[0], p->name, p->timeout_ms);
    }
    pub_unref(p); /* TB__HTTP_GONE returned above: release does */
    return req->status;
}

/* TB__HTTP_GONE's end: done is not told after this returns. */
static void release(tb__http_work *w)
{
    pub *p = (pub *)w;
    pthread_mutex_lock(&p->mu);
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    pub_unref(p);
}

int tb__api_post_event_start(tb_http_req *req, void (*done)(void *ud), void *ud,
                             tb__http_work **work)
{
    *work = NULL;
    const char *name;
    if (tb__api_event_check(req, &name))
        return req->status;
    pub *p = pub_new(req, 1, done, ud);
    if (!p)
        return tb_http_error(req, 500, "internal", "out of memory");
    p->name = name;
    size_t len;
    const void *data = tb_http_body(req, &len);
    int rc = tb__dispatch_cb(tb_http_app(req), name, data, len, confirmed,
                             p->uds[0], p->ids[0]);
    if (rc) { /* no callback will run */
        tb__api_event_answer(req, rc, p->ids[0], name, p->timeout_ms);
        pub_free(p);
        return req->status;
    }
    *work = &p->base;
    return 0;
}

int tb__api_post_batch_start(tb_http_req *req, void (*done)(void *ud), void *ud,
                             tb__http_work **work)
{
    *work = NULL;
    tb_app *app = tb_http_app(req);
    if (tb__api_batch_enter(req))
        return req->status;
    tb__batch b;
    if (tb__api_batch_prepare(req, &b)) {
        tb__api_batch_leave(app);
        return req->status;
    }
    size_t n = b.n, bad = n;
    pub *p = pub_new(req, n, done, ud);
    if (!p) {
        tb__batch_free(&b);
        tb__api_batch_leave(app);
        return tb_http_error(req, 500, "internal", "out of memory");
    }
    p->batch = 1;
    int rc =
        tb__dispatch_many_cb(app, b.items, n, p->ids, &bad, confirmed, p->uds);
    size_t line = tb__api_batch_line(req, &b, bad);
    tb__batch_free(&b); /* the bus has copies: not held while it confirms */
    if (rc || n == 0) { /* no callback will run */
        for (size_t i = 0; i < n; i++)
            p->status[i] = rc;
        tb__api_batch_answer(req, rc, p->ids, p->status, n, bad, line,
                             p->timeout_ms);
        tb__api_batch_leave(app);
        pub_free(p);
        return req->status;
    }
    *work = &p->base;
    return 0;
}
