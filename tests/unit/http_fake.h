/* http_fake.h - a fake HTTP connection for unit tests of tb__http_handle. */
#ifndef TASKBUS_TESTS_HTTP_FAKE_H
#define TASKBUS_TESTS_HTTP_FAKE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

/* One request's connection: the request headers it serves (NULL: absent)
 * and what the core sent back. Zero it before use; the caller frees body.
 * Setting gone (any thread) makes the client leave. */
typedef struct fake_conn {
    const char *request_id; /* X-Request-ID header, or NULL */
    const char *auth;       /* Authorization header, or NULL */
    const char *inm;        /* If-None-Match header, or NULL */
    atomic_int gone;        /* the gone op's answer */
    int status;
    int sends;
    char headers[1024];
    char *body; /* NUL-terminated copy of the last body sent */
    size_t len;
} fake_conn;

static inline const char *fake_header(void *conn, const char *name)
{
    fake_conn *c = conn;
    if (strcasecmp(name, "X-Request-ID") == 0)
        return c->request_id;
    if (strcasecmp(name, "Authorization") == 0)
        return c->auth;
    if (strcasecmp(name, "If-None-Match") == 0)
        return c->inm;
    return NULL;
}

static inline int fake_send(void *conn, int status, const char *headers,
                            const void *body, size_t len)
{
    fake_conn *c = conn;
    c->sends++;
    c->status = status;
    snprintf(c->headers, sizeof c->headers, "%s", headers);
    free(c->body);
    c->body = malloc(len + 1);
    memcpy(c->body, body, len);
    c->body[len] = '\0';
    c->len = len;
    return 0;
}

static inline int fake_gone(void *conn)
{
    return atomic_load(&((fake_conn *)conn)->gone);
}

/* Runs one request on c through tb__http_handle, as an adapter would fill
 * it; returns the status it was answered with. query may be NULL; body
 * must be NUL-terminated (the adapter's contract). Checks nothing. */
static inline int fake_handle(fake_conn *c, tb_app *app, const char *method,
                              const char *path, const char *query,
                              const char *body, size_t body_len)
{
    static const tb__http_conn_ops ops = {fake_header, fake_send, fake_gone,
                                          NULL, NULL};
    tb__http_in in = {
        .ops = &ops,
        .conn = c,
        .method = method,
        .path = path,
        .query = query,
        .body = body,
        .body_len = body_len,
    };
    return tb__http_handle(app, &in);
}

#endif /* TASKBUS_TESTS_HTTP_FAKE_H */
