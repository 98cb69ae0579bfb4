/* http_head.c - HTTP/1.x message framing for the front: head ends, the
 * framing headers of a head, chunked body ends (RFC 9112 2, 6, 7.1). */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "hex.h"
#include "http_head.h"

size_t tb__http_head_end(const char *buf, size_t len)
{
    return tb__http_head_end_from(buf, len, 0);
}

size_t tb__http_head_end_from(const char *buf, size_t len, size_t from)
{
    /* civetweb's get_http_header_len, exactly: LF LF or CR LF CR LF. A
     * head that ended here and not there (LF CR LF) would leave civetweb
     * waiting for more with a thread. An end that finishes after `from`
     * may start up to 3 bytes before it. */
    if (from > len)
        from = len;
    const char *p = buf + (from > 3 ? from - 3 : 0), *end = buf + len;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        p++;
        if (p < end && *p == '\n')
            return (size_t)(p + 1 - buf);
        if (p + 1 < end && p - 2 >= buf && p[-2] == '\r' && p[0] == '\r' &&
            p[1] == '\n')
            return (size_t)(p + 2 - buf);
    }
    return 0;
}

/* Blanks (SP, HTAB) trimmed off both ends of [*s, *e). */
static void trim(const char **s, const char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t'))
        (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
        (*e)--;
}

static int is_token(const char *s, const char *e, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(e - s) == n && strncasecmp(s, word, n) == 0;
}

/* 1 if word is one of the comma-separated items of [s, e), any case. */
static int has_item(const char *s, const char *e, const char *word)
{
    while (s < e) {
        const char *ie = memchr(s, ',', (size_t)(e - s));
        if (!ie)
            ie = e;
        const char *a = s, *b = ie;
        trim(&a, &b);
        if (is_token(a, b, word))
            return 1;
        s = ie + 1;
    }
    return 0;
}

/* 0 and *v if [s, e) is 1*DIGIT; saturates at ULLONG_MAX. */
static int digits(const char *s, const char *e, unsigned long long *v)
{
    if (s == e)
        return -1;
    unsigned long long x = 0;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        x = x > (ULLONG_MAX - d) / 10 ? ULLONG_MAX : x * 10 + d;
    }
    *v = x;
    return 0;
}

/* The first line: "METHOD SP target SP HTTP/1.x" or "HTTP/1.x SP 3DIGIT
 * [SP reason]". */
static void first_line(const char *s, const char *e, int request,
                       tb__http_head *h)
{
    if (request) {
        const char *sp1 = memchr(s, ' ', (size_t)(e - s));
        const char *sp2 =
            sp1 ? memchr(sp1 + 1, ' ', (size_t)(e - sp1 - 1)) : NULL;
        if (!sp1 || sp1 == s || !sp2 || sp2 == sp1 + 1 ||
            (size_t)(e - sp2 - 1) != 8) {
            h->bad = 1;
            return;
        }
        h->method_head = sp1 - s == 4 && memcmp(s, "HEAD", 4) == 0;
        h->method_get = sp1 - s == 3 && memcmp(s, "GET", 3) == 0;
        h->method_safe = h->method_get || h->method_head ||
                         (sp1 - s == 7 && memcmp(s, "OPTIONS", 7) == 0);
        s = sp2 + 1;
    } else if ((size_t)(e - s) < 12 || s[8] != ' ') {
        h->bad = 1;
        return;
    }
    if (memcmp(s, "HTTP/1.1", 8) == 0)
        h->http10 = 0;
    else if (memcmp(s, "HTTP/1.0", 8) == 0)
        h->http10 = 1;
    else
        h->bad = 1;
    if (!request) {
        unsigned long long st;
        if (digits(s + 9, s + 12, &st) != 0 || st < 100 ||
            ((size_t)(e - s) > 12 && s[12] != ' '))
            h->bad = 1;
        else
            h->status = (int)st;
    }
}

void tb__http_head_parse(const char *buf, size_t len, int request,
                         tb__http_head *h)
{
    memset(h, 0, sizeof *h);
    const char *p = buf, *end = buf + len;
    /* A control byte other than HTAB, or a CR not before LF: civetweb
     * and the front could read the head differently (RFC 9112 2.2). */
    for (const char *q = buf; q < end; q++) {
        unsigned char ch = (unsigned char)*q;
        if ((ch < 0x20 && ch != '\t' && ch != '\n' && ch != '\r') ||
            ch == 0x7f || (ch == '\r' && (q + 1 == end || q[1] != '\n')))
            h->reject = TB__HTTP_REJECT_BYTES;
    }
    int conn_close = 0, conn_keep = 0, conn_upgrade = 0, up_ws = 0;
    int te_headers = 0, te_chunked = 0, lines = 0, ws_key = 0;
    for (int first = 1;; first = 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break; /* tb__http_head_end said it ends with LF */
        const char *le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if (le == p) {
            if (first)
                h->bad = 1;
            if (nl + 1 != end && !h->reject) /* inside civetweb's head */
                h->reject = TB__HTTP_REJECT_LINES;
            break; /* the empty line */
        }
        if (first) {
            first_line(p, le, request, h);
            p = nl + 1;
            continue;
        }
        if (++lines > TB__HTTP_HEAD_LINES_MAX) {
            h->bad = 1;
            break;
        }
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (*p == ' ' || *p == '\t' ||
            (colon && (colon[-1] == ' ' || colon[-1] == '\t'))) {
            /* obs-fold, or blanks before the colon (RFC 9112 5.1, 5.2):
             * civetweb strips them and reads "Content-Length : 5" as a
             * length the front would not see. */
            /* civetweb reads HTAB in a name as a control byte */
            if (*p == '\t' || (colon && memchr(p, '\t', (size_t)(colon - p))))
                h->reject = TB__HTTP_REJECT_BYTES;
            else if (!h->reject)
                h->reject = TB__HTTP_REJECT_LINES;
            h->bad = 1;
            p = nl + 1;
            continue;
        }
        if (!colon || colon == p) {
            h->bad = 1; /* nameless: civetweb stops reading */
            p = nl + 1;
            continue;
        }
        const char *ns = p, *ne = colon, *vs = colon + 1, *ve = le;
        trim(&vs, &ve);
        if (is_token(ns, ne, "Content-Length")) {
            unsigned long long v = 0;
            if (digits(vs, ve, &v) != 0 || (h->has_length && v != h->length))
                h->bad = 1;
            h->has_length = 1;
            h->length = v;
        } else if (is_token(ns, ne, "Transfer-Encoding")) {
            te_headers++;
            te_chunked = is_token(vs, ve, "chunked");
        } else if (is_token(ns, ne, "Connection")) {
            conn_close |= has_item(vs, ve, "close");
            conn_keep |= has_item(vs, ve, "keep-alive");
            conn_upgrade |= has_item(vs, ve, "upgrade");
        } else if (is_token(ns, ne, "Sec-WebSocket-Key")) {
            ws_key = 1;
        } else if (is_token(ns, ne, "Upgrade")) {
            up_ws |= has_item(vs, ve, "websocket");
        }
        p = nl + 1;
    }
    if (te_headers) {
        if (te_headers != 1 || !te_chunked || h->has_length || h->http10)
            h->bad = 1;
        h->chunked = 1;
    }
    h->keep_alive = h->http10 ? conn_keep && !conn_close : !conn_close;
    if (request)
        h->upgrade = h->method_get && conn_upgrade && up_ws && ws_key;
    else
        h->upgrade = h->status == 101;
    if (h->reject)
        h->bad = 1;
    if (h->bad)
        h->keep_alive = 0;
}

int tb__http_body_kind(const tb__http_head *h, int req_head)
{
    if (h->status) { /* a response */
        if (req_head || h->status < 200 || h->status == 204 || h->status == 304)
            return TB__HTTP_BODY_NONE;
        if (h->chunked && !h->bad)
            return TB__HTTP_BODY_CHUNKED;
        if (h->has_length && !h->bad)
            return h->length ? TB__HTTP_BODY_LENGTH : TB__HTTP_BODY_NONE;
        return TB__HTTP_BODY_CLOSE;
    }
    if (h->bad)
        return TB__HTTP_BODY_NONE;
    if (h->chunked)
        return TB__HTTP_BODY_CHUNKED;
    return h->has_length && h->length ? TB__HTTP_BODY_LENGTH
                                      : TB__HTTP_BODY_NONE;
}

/* The chunked body's states (RFC 9112 7.1): a size line (hex digits, then
 * extensions to its end), data, the CRLF after data, trailer lines, and
 * the end. Bare LF is taken for CRLF, as civetweb does. */
enum {
    SIZE,
    SIZE_EXT,
    DATA,
    DATA_END,
    TRAILER,
    TRAILER_LINE,
    END
};

long tb__http_chunks_feed(tb__http_chunks *c, const char *p, size_t len,
                          int *done)
{
    size_t i = 0;
    *done = 0;
    while (i < len && c->state != END) {
        char ch = p[i];
        switch (c->state) {
        case SIZE: {
            int v = tb__hex_digit((unsigned char)ch);
            if (v >= 0) {
                if (c->left >> 56)
                    return -1; /* over 2^60 */
                c->left = c->left * 16 + (unsigned)v;
                if (++c->line > TB__HTTP_CHUNK_LINE_MAX)
                    return -1;
            } else if (c->line && (ch == ';' || ch == ' ' || ch == '\t' ||
                                   ch == '\r' || ch == '\n')) {
                c->state = SIZE_EXT;
                continue; /* the same byte, in SIZE_EXT */
            } else {
                return -1;
            }
            i++;
            break;
        }
        case SIZE_EXT:
            i++;
            if (++c->line > TB__HTTP_CHUNK_LINE_MAX)
                return -1;
            if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
                c->extras = 1;
            if (ch != '\n')
                break;
            c->line = 0;
            c->state = c->left ? DATA : TRAILER;
            break;
        case DATA: {
            size_t n = len - i;
            if ((unsigned long long)n > c->left)
                n = (size_t)c->left;
            c->left -= n;
            c->data += n;
            i += n;
            if (!c->left)
                c->state = DATA_END;
            break;
        }
        case DATA_END:
            i++;
            if (ch == '\n') {
                c->line = 0;
                c->state = SIZE;
            } else if (ch != '\r' || c->line++) {
                return -1;
            }
            break;
        case TRAILER: /* at the start of a line */
        case TRAILER_LINE:
            i++;
            if (++c->trailer > TB__HTTP_TRAILER_MAX)
                return -1;
            if (ch == '\n') {
                if (c->state == TRAILER)
                    c->state = END; /* an empty line */
                else
                    c->state = TRAILER;
                c->line = 0;
            } else if (ch == '\r' && c->state == TRAILER && !c->line) {
                c->line = 1; /* CR of an empty line */
            } else {
                c->state = TRAILER_LINE;
                c->extras = 1;
            }
            break;
        }
    }
    *done = c->state == END;
    return (long)i;
}

int tb__http_wants_continue(const char *head, size_t len)
{
    /* Rare: a linear scan is enough. */
    static const char h[] = "\nexpect:";
    for (size_t i = 0; i + sizeof h - 1 <= len; i++)
        if (strncasecmp(head + i, h, sizeof h - 1) == 0) {
            const char *v = head + i + sizeof h - 1;
            while (v < head + len && (*v == ' ' || *v == '\t'))
                v++;
            return head + len - v >= 12 &&
                   strncasecmp(v, "100-continue", 12) == 0;
        }
    return 0;
}

int tb__http_has_token(const char *list, const char *token)
{
    size_t tn = strlen(token);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == tn && strncasecmp(p, token, n) == 0)
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

void tb__http_keepalive_header(char *buf, size_t size, int secs)
{
    snprintf(buf, size, "Keep-Alive: timeout=%d\r\n", secs < 0 ? 0 : secs);
}
