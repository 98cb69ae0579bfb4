/* resp.c - a strict, bounded reader and writer of Redis protocol (RESP2)
 * replies, for the links the Redis bus speaks without hiredis. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "resp.h"

/* Why not hiredis for these links: hiredis 0.14 asserts on some replies it
 * does not expect (a reply no command asked for on a link that is not
 * subscribed, a short array on one that is), which aborts the process,
 * and it buffers a bulk string of any size. A sentinel is a server we
 * only ask for an address, so its links get this reader, which refuses
 * anything outside a few kilobytes instead. */

/* The line at p (end: one past the last byte): its length up to "\r\n", -2
 * when a byte other than '\n' follows a '\r' or the line has a control
 * byte (simple strings, errors and headers never do), -1 when it is not
 * complete yet. */
static long line_len(const char *p, const char *end)
{
    for (const char *q = p; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c == '\r') {
            if (q + 1 == end)
                return -1;
            return q[1] == '\n' ? (long)(q - p) : -2;
        }
        if (c < 0x20 && c != '\t')
            return -2;
    }
    return -1;
}

/* A decimal integer, optionally negative, of the n bytes at p. 0, or -1. */
static int parse_int(const char *p, long n, long long *out)
{
    int neg = n > 0 && p[0] == '-';
    long i = neg;
    if (n - neg < 1 || n - neg > 18)
        return -1;
    long long v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* One value at *pp (not an array). 1 with *pp past it, 0 incomplete, -1
 * malformed or out of bounds. */
static int parse_val(const char **pp, const char *end, tb__resp_val *v)
{
    const char *p = *pp;
    if (p >= end)
        return 0;
    char type = *p++;
    long n = line_len(p, end);
    if (n == -1)
        return (end - p) > TB__RESP_STRING_MAX + 32 ? -1 : 0;
    if (n < 0)
        return -1;
    memset(v, 0, sizeof *v);
    v->type = type;
    switch (type) {
    case '+':
    case '-':
        if (n > TB__RESP_STRING_MAX)
            return -1;
        v->str = p;
        v->len = (size_t)n;
        *pp = p + n + 2;
        return 1;
    case ':':
        if (parse_int(p, n, &v->num) != 0)
            return -1;
        *pp = p + n + 2;
        return 1;
    case '$': {
        long long blen;
        if (parse_int(p, n, &blen) != 0 || blen < -1 ||
            blen > TB__RESP_STRING_MAX)
            return -1;
        p += n + 2;
        if (blen == -1) {
            v->type = '_';
            *pp = p;
            return 1;
        }
        if (end - p < blen + 2)
            return 0;
        if (p[blen] != '\r' || p[blen + 1] != '\n')
            return -1;
        v->str = p;
        v->len = (size_t)blen;
        *pp = p + blen + 2;
        return 1;
    }
    default:
        return -1;
    }
}

int tb__resp_parse(const char *buf, size_t len, tb__resp *out)
{
    if (!buf || !out)
        return -1;
    if (len > TB__RESP_REPLY_MAX)
        len = TB__RESP_REPLY_MAX;
    const char *p = buf, *end = buf + len;
    memset(out, 0, sizeof *out);
    int rc = 1;
    if (len > 0 && buf[0] == '*') {
        long n = line_len(p + 1, end);
        long long count;
        if (n == -1)
            return len >= 32 ? -1 : 0;
        if (n < 0 || parse_int(p + 1, n, &count) != 0 || count < -1 ||
            count > TB__RESP_ELEMS_MAX)
            return -1;
        p += 1 + n + 2;
        out->v.type = count == -1 ? '_' : '*';
        out->n = count == -1 ? 0 : (int)count;
        for (int i = 0; i < out->n; i++) {
            if (p < end && *p == '*')
                return -1; /* nested: nothing we read has them */
            if ((rc = parse_val(&p, end, &out->el[i])) <= 0)
                break;
        }
        if (out->n && rc <= 0)
            goto short_or_bad;
    } else if ((rc = parse_val(&p, end, &out->v)) <= 0) {
        goto short_or_bad;
    }
    return (int)(p - buf);
short_or_bad:
    /* Incomplete is only believable below the bound. */
    return rc < 0 || len >= TB__RESP_REPLY_MAX ? -1 : 0;
}

int tb__resp_is(const tb__resp_val *v, const char *s)
{
    size_t n = strlen(s);
    return (v->type == '+' || v->type == '$') && v->len == n &&
           strncasecmp(v->str, s, n) == 0;
}

int tb__resp_command(char *buf, size_t size, int argc, const char *const *argv,
                     const size_t *lens)
{
    size_t o = 0;
    int n = snprintf(buf, size, "*%d\r\n", argc);
    if (n < 0 || (size_t)n >= size)
        return -1;
    o = (size_t)n;
    for (int i = 0; i < argc; i++) {
        n = snprintf(buf + o, size - o, "$%zu\r\n", lens[i]);
        if (n < 0 || (size_t)n >= size - o ||
            size - o - (size_t)n < lens[i] + 3)
            return -1;
        o += (size_t)n;
        memcpy(buf + o, argv[i], lens[i]);
        o += lens[i];
        memcpy(buf + o, "\r\n", 3);
        o += 2;
    }
    return (int)o;
}
