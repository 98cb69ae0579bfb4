/* http_front_events.c - the front answers POST /events/{name}, POST
 * /events and GET (HEAD) /healthz itself: the request it holds whole goes
 * to the core's asynchronous twin of the handler (the same checks and
 * answers), which publishes with a callback (posts probes to the
 * workers); the completion comes back to the front's thread through one
 * locked list and one event, and the answer is written as civetweb would
 * have written it (docs/HTTP_DESIGN.md, "The front"). No civetweb thread,
 * no loopback hop. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http.h"
#include "http_front_int.h"

/* One request the front answers: its bytes, the core's view of it, and
 * the answer once made. Owned by the front (f->posts); the core's work
 * (the publish) is refcounted on its own and may outlive it. */
struct fpost {
    tb__http_front *f;
    fconn *c;                  /* NULL once the client has gone */
    struct fpost *prev, *next; /* f->posts: every one not yet freed */
    struct fpost *dnext;       /* f->posts_done, under f->mu */
    int queued;                /* on f->posts_done; under f->mu */
    int finished;              /* answered while queued: freed off the list */
    tb__http_work *work;       /* NULL: answered when it began */
    tb__http_work *gone;       /* the client left: answered, work kept */
    size_t held;               /* its body's bytes, in f->body_bytes */
    char *body;                /* NUL-terminated; freed once published */
    tb_http_req req;
    struct evbuffer *out; /* the answer */
    int close;            /* the answer says Connection: close */
    int head;             /* HEAD: the answer has no body */
    int nhdr;
    struct {
        const char *name, *value;
    } hdr[TB__HTTP_HEAD_LINES_MAX + 1];
    char buf[]; /* the request's head, its lines cut apart */
};

/* civetweb's reason phrases (mg_get_response_code_text) for the statuses
 * these routes answer. */
static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Request Entity Too Large";
    case 415:
        return "Unsupported Media Type";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Time-out";
    default:
        return "";
    }
}

/* ---------------------------------------------------------------- the
 * connection as the core sees it (tb__http_conn_ops) */

static const char *post_header(void *conn, const char *name)
{
    struct fpost *p = conn;
    for (int i = 0; i < p->nhdr; i++)
        if (strcasecmp(p->hdr[i].name, name) == 0)
            return p->hdr[i].value;
    return NULL;
}

/* As the civetweb adapter's conn_send, into the answer's buffer. */
static int post_send(void *conn, int status, const char *headers,
                     const void *body, size_t len)
{
    struct fpost *p = conn;
    int none = status == 204 || status == 304;
    int nobody = none || p->head; /* HEAD: Content-Length, no body */
    if (p->f->ending)
        p->close = 1; /* the front is stopping: no next request */
    char clen[48] = "";
    if (!none)
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    char ka[40] = "";
    if (!p->close)
        tb__http_keepalive_header(ka, sizeof ka,
                                  p->f->cfg->http.keepalive_timeout_ms / 1000);
    if (evbuffer_add_printf(p->out,
                            "HTTP/1.1 %d %s\r\n%s%sConnection: %s\r\n%s\r\n",
                            status, reason(status), headers, clen,
                            p->close ? "close" : "keep-alive", ka) < 0 ||
        (!nobody && evbuffer_add(p->out, body, len) != 0))
        return TB_ENOMEM;
    return 0;
}

static void post_close(void *conn)
{
    ((struct fpost *)conn)->close = 1;
}

static const tb__http_conn_ops post_ops = {post_header, post_send, NULL,
                                           post_close, NULL};

/* ---------------------------------------------------------------- answers */

static void post_free(struct fpost *p)
{
    evbuffer_free(p->out);
    free(p->body);
    free(p);
}

/* The answer goes to the client, whose connection goes on to its next
 * request (pipelined ones are answered in order: one at a time). */
static void deliver(struct fpost *p)
{
    fconn *c = p->c;
    if (!c)
        return;
    c->post = NULL;
    p->c = NULL;
    evbuffer_add_buffer(bufferevent_get_output(c->bev), p->out);
    c->resp_keep = !p->close;
    tb__front_resp_done(c);
}

/* Answers p (why: tb__http_finish's), then frees it unless it is still on
 * the done list (then the list's reader does). */
static void finish(struct fpost *p, int why)
{
    tb__http_front *f = p->f;
    if (p->work)
        tb__http_finish(&p->req, p->work, why); /* done() never runs after */
    if (p->gone)
        p->gone->release(p->gone); /* nor after this */
    p->work = p->gone = NULL;
    if (p->prev)
        p->prev->next = p->next;
    else
        f->posts = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    f->nposts--;
    f->body_bytes -= p->held;
    p->held = 0;
    deliver(p);
    pthread_mutex_lock(&f->mu);
    int queued = p->queued;
    p->finished = queued;
    pthread_mutex_unlock(&f->mu);
    if (!queued)
        post_free(p);
}

/* The core's done(): any thread (the bus's; the front's for the memory
 * bus, or when answered at once). One event_active per wake, not per
 * request. */
static void on_done(void *ud)
{
    struct fpost *p = ud;
    tb__http_front *f = p->f;
    pthread_mutex_lock(&f->mu);
    int wake = !f->posts_done;
    p->queued = 1;
    p->dnext = f->posts_done;
    f->posts_done = p;
    pthread_mutex_unlock(&f->mu);
    if (wake)
        event_active(f->posts_ev, 0, 0);
}

void tb__front_on_posts(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tb__http_front *f = arg;
    pthread_mutex_lock(&f->mu);
    struct fpost *list = f->posts_done, *rev = NULL;
    f->posts_done = NULL;
    for (struct fpost *p = list, *next; p; p = next) {
        next = p->dnext;
        p->queued = 0;
        p->dnext = rev; /* oldest first */
        rev = p;
    }
    pthread_mutex_unlock(&f->mu);
    for (struct fpost *p = rev, *next; p; p = next) {
        next = p->dnext;
        if (p->finished)
            post_free(p);
        else
            finish(p, 0);
    }
}

void tb__front_local_timeout(fconn *c)
{
    finish(c->post, TB_ETIMEDOUT);
}

/* The client has gone: its request ends now, counted 499 in the
 * metrics and not logged (the bus may still publish it), which frees
 * its batch slot;
 * its body bytes and its place among the front's requests stay taken
 * until the bus is done with the publish (done(), then finish), since
 * the bus holds a copy of the data until then. */
void tb__front_local_detach(fconn *c)
{
    struct fpost *p = c->post;
    p->c = NULL;
    c->post = NULL;
    if (p->work)
        tb__http_finish(&p->req, p->work, TB__HTTP_GONE);
    p->gone = p->work;
    p->work = NULL;
}

int64_t tb__front_local_stop_ms(const tb__http_front *f)
{
    int64_t ms = 0;
    for (const struct fpost *p = f->posts; p; p = p->next)
        if (p->c && p->work && p->work->timeout_ms > ms)
            ms = p->work->timeout_ms;
    return ms;
}

/* The front's very end (the bus outlives it): what the bus has not
 * confirmed may still be published, so 504 publish_timeout, never 503
 * shutting_down ("nothing dispatched"). */
void tb__front_local_end(tb__http_front *f)
{
    while (f->posts)
        finish(f->posts, TB_ETIMEDOUT);
    tb__front_on_posts(-1, 0, f); /* what is left on the list */
}

/* ---------------------------------------------------------------- requests */

/* The line at s (before end), NUL-terminated in place where its CRLF
 * was; the next line's start, or NULL when it does not end with CRLF (a
 * bare LF: civetweb refuses those before a body, and answers them). */
static char *cut_line(char *s, char *end)
{
    char *eol = memchr(s, '\n', (size_t)(end - s));
    if (!eol || eol == s || eol[-1] != '\r')
        return NULL;
    eol[-1] = '\0';
    return eol + 1;
}

/* Cuts p's head (len bytes at p->buf) into its request line's target and
 * its header lines, each NUL-terminated in place. 0, or -1 when the front
 * should not answer it (the server will, as before). */
static int split_head(struct fpost *p, size_t len, char **target, int *http11)
{
    char *s = p->buf, *end = p->buf + len;
    char *next = cut_line(s, end);
    if (!next)
        return -1;
    char *t = strchr(s, ' '); /* the method checked by the caller */
    char *v = t ? strchr(t + 1, ' ') : NULL;
    if (!t || !v || t[1] != '/')
        return -1;
    *v = '\0';
    *target = t + 1;
    *http11 = strcmp(v + 1, "HTTP/1.1") == 0;
    if (!*http11 && strcmp(v + 1, "HTTP/1.0") != 0)
        return -1;
    for (s = next; s < end && *s != '\r';) {
        if (p->nhdr > TB__HTTP_HEAD_LINES_MAX || !(next = cut_line(s, end)))
            return -1;
        char *colon = strchr(s, ':');
        if (!colon || colon == s)
            return -1;
        *colon = '\0';
        char *val = colon + 1;
        val += strspn(val, " \t");
        p->hdr[p->nhdr].name = s;
        p->hdr[p->nhdr++].value = val;
        s = next;
    }
    return s + 2 == end ? 0 : -1; /* CRLF ends it */
}

/* The method of the request in `in` (its body blen bytes) if it is one
 * the front answers: POST /events, POST /events/..., or GET or HEAD
 * /healthz without a body; else NULL. The router decides the rest. */
static const char *front_route(struct evbuffer *in, size_t blen)
{
    char m[14];
    if (evbuffer_copyout(in, m, sizeof m) != (ev_ssize_t)sizeof m)
        return NULL;
    if (memcmp(m, "POST /events", 12) == 0)
        return m[12] == ' ' || m[12] == '/' || m[12] == '?' ? "POST" : NULL;
    if (blen)
        return NULL;
    if (memcmp(m, "GET /healthz", 12) == 0)
        return m[12] == ' ' || m[12] == '?' ? "GET" : NULL;
    if (memcmp(m, "HEAD /healthz", 13) == 0)
        return m[13] == ' ' || m[13] == '?' ? "HEAD" : NULL;
    return NULL;
}

int tb__front_local(fconn *c, size_t n)
{
    tb__http_front *f = c->f;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    /* At most http.threads in flight, as many as civetweb would hold:
     * the bus holds a copy of each one's data until it gives up. Beyond,
     * relayed (waiting for a thread, counted in body_bytes). */
    size_t blen = n - c->head_len;
    const char *method;
    if (!f->cfg->http.front_answers || f->nposts >= f->cfg->http.threads ||
        c->req.upgrade || c->req.bad ||
        (c->req_kind != TB__HTTP_BODY_NONE &&
         c->req_kind != TB__HTTP_BODY_LENGTH) ||
        !(method = front_route(in, blen)))
        return 0;
    struct fpost *p = calloc(1, sizeof *p + c->head_len + 1);
    if (!p || !(p->out = evbuffer_new())) {
        free(p);
        return 0; /* the server answers it */
    }
    p->f = f;
    p->head = method[0] == 'H';
    evbuffer_copyout(in, p->buf, c->head_len);
    char *target;
    const char *conn;
    int http11;
    if (split_head(p, c->head_len, &target, &http11) != 0 ||
        ((conn = post_header(p, "Connection")) != NULL &&
         strcasestr(conn, "upgrade"))) {
        post_free(p);
        return 0;
    }
    /* civetweb's keep-alive decision (the adapter's keeps_alive) for a
     * request that is no upgrade. */
    p->close = conn ? !tb__http_has_token(conn, "keep-alive") : !http11;
    char *query = strchr(target, '?');
    if (query)
        *query++ = '\0';
    struct evbuffer_ptr at;
    if ((blen > f->cfg->http.front_batch_max_body &&
         strcmp(target, "/events") == 0) || /* a long parse (docs) */
        !(p->body = malloc(blen + 1)) ||
        evbuffer_ptr_set(in, &at, c->head_len, EVBUFFER_PTR_SET) != 0) {
        post_free(p);
        return 0;
    }
    evbuffer_copyout_from(in, &at, p->body, blen);
    p->body[blen] = '\0';
    tb__http_in req = {
        .ops = &post_ops,
        .conn = p,
        .method = method,
        .path = target,
        .query = query,
        .body = blen ? p->body : NULL,
        .body_len = blen,
    };
    int st = tb__http_start(f->app, &req, &p->req, on_done, p, &p->work);
    if (st == TB__HTTP_RELAY) {
        post_free(p);
        return 0;
    }
    atomic_fetch_add(&f->app->http_front_answered, 1);
    /* The bus has its copy of the data; the answer needs the head only
     * (body_len names a size in a 413, made at once). */
    free(p->body);
    p->body = NULL;
    p->req.body = NULL;
    evbuffer_drain(in, n);
    p->held = c->held; /* still counted, until answered */
    c->held = 0;
    p->c = c;
    c->post = p;
    f->nposts++;
    p->next = f->posts;
    if (f->posts)
        f->posts->prev = p;
    f->posts = p;
    c->state = C_LOCAL;
    evtimer_del(c->timer);
    if (st != 0)
        on_done(p); /* answered: written on the next turn, as the others */
    else
        tb__front_arm(c, p->work->timeout_ms);
    return 1;
}
