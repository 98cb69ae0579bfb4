/* http_head.h - HTTP/1.x framing as the front needs it (private): where a
 * message head ends, what a head says about the body after it, and where a
 * chunked body ends. Nothing here copies or decodes: the front relays bytes
 * as they came and only needs to know where each message stops. */
#ifndef TASKBUS_HTTP_HEAD_H
#define TASKBUS_HTTP_HEAD_H

#include <stddef.h>

/* The longest request head (request line and headers) the front and
 * civetweb read: civetweb's max_request_size. Longer is 431. */
#define TB__HTTP_HEAD_MAX 8192
/* Header lines civetweb reads (its MG_MAX_HEADERS is 64; at 64 the
 * adapter answers 431): the front flags more as bad framing. */
#define TB__HTTP_HEAD_LINES_MAX 63
/* Longest chunk-size line (size, extensions) and trailer section. */
#define TB__HTTP_CHUNK_LINE_MAX 1024
#define TB__HTTP_TRAILER_MAX TB__HTTP_HEAD_MAX

/* What a head says. */
typedef struct tb__http_head {
    int status;      /* a response's status; 0 for a request */
    int http10;      /* HTTP/1.0 (else 1.1) */
    int method_head; /* a request with method HEAD */
    int method_get;  /* a request with method GET */
    int method_safe; /* GET, HEAD or OPTIONS: may be sent twice (not PUT
                        or DELETE: a DELETE cancels a task) */
    int keep_alive;  /* the connection may carry another message after
                        this one (Connection and the version) */
    int upgrade;     /* a request: a websocket handshake (GET,
                        Upgrade: websocket, Connection: upgrade, a
                        Sec-WebSocket-Key, as the server sees one); a
                        response: 101 */
    int chunked;     /* Transfer-Encoding: chunked, alone */
    int has_length;  /* Content-Length given (then length) */
    unsigned long long length;
    /* Framing this side cannot trust (two different lengths, a length
     * that is not 1*DIGIT, a length and a coding, a coding other than
     * chunked alone, a folded or nameless line, too many lines, a bad
     * request or status line): the front relays the head without a
     * body and closes after the answer, which the server refuses. */
    int bad;
    /* Worse: a head civetweb may frame differently from the front (a
     * control byte, blanks before a colon, obs-fold, an empty line
     * before the end): the front answers 400 itself and relays nothing.
     * Implies bad. One of: */
    int reject;
} tb__http_head;
enum {
    TB__HTTP_REJECT_LINES = 1, /* the lines' shape: civetweb's bad_header */
    TB__HTTP_REJECT_BYTES = 2  /* a control byte or HTAB where civetweb
                                  takes it for one: its bad_request */
};

/* The length of the head at the start of buf (up to and including the
 * empty line that ends it: CRLF CRLF, or LF LF, exactly as civetweb), or
 * 0 when buf holds no complete head yet. Reads at most len bytes. */
size_t tb__http_head_end(const char *buf, size_t len);

/* The same, for a buffer whose first `from` bytes were searched before
 * (a head that grows a read at a time): only what came since is
 * scanned, so a head sent a byte at a time costs O(n), not O(n^2). */
size_t tb__http_head_end_from(const char *buf, size_t len, size_t from);

/* Reads the head of len bytes (as tb__http_head_end measured it) into *h;
 * request: a request head, else a response head. Never fails: what it
 * cannot make sense of sets h->bad. */
void tb__http_head_parse(const char *buf, size_t len, int request,
                         tb__http_head *h);

/* 1 if a message with head h has a body whose end is known before the
 * connection closes; for a response, req_head says the request was HEAD.
 * Returns one of: */
enum {
    TB__HTTP_BODY_NONE,    /* no body */
    TB__HTTP_BODY_LENGTH,  /* h->length bytes */
    TB__HTTP_BODY_CHUNKED, /* chunked: see tb__http_chunks */
    TB__HTTP_BODY_CLOSE    /* a response that ends with the connection */
};
int tb__http_body_kind(const tb__http_head *h, int req_head);

/* Where a chunked body ends, fed in pieces. */
typedef struct tb__http_chunks {
    int state;
    unsigned long long left; /* data bytes left in the current chunk */
    size_t line;             /* bytes of the current size or trailer line */
    size_t trailer;          /* bytes of the trailer section so far */
    unsigned long long data; /* data bytes so far (decoded size) */
    int extras;              /* a chunk extension or a trailer came: civetweb
                                closes its connection after such a body */
} tb__http_chunks;

/* Feeds len bytes of a chunked body to c. Returns how many of them belong
 * to the body (all of them, or fewer when it ended inside p: *done is then
 * 1), or -1 when the body is malformed (a bad size line, a size over 2^60,
 * a line over TB__HTTP_CHUNK_LINE_MAX or trailers over
 * TB__HTTP_TRAILER_MAX). */
long tb__http_chunks_feed(tb__http_chunks *c, const char *p, size_t len,
                          int *done);

/* 1 if the request head (len bytes) has "Expect: 100-continue". */
int tb__http_wants_continue(const char *head, size_t len);

#endif
