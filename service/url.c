/* url.c - parsing and redaction of the Redis URLs taskbus accepts. */
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "taskbus/taskbus.h"
#include "hex.h"
#include "url.h"

#define DEFAULT_PORT 6379

/* Error messages name the part of the URL that is wrong and never quote the
 * URL itself: a password with an unencoded '/', '?' or '@' can end up in
 * any part of it. */
static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return TB_EINVAL;
}

static int has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* The '@' that ends the userinfo of the part after "scheme://", or NULL if
 * there is none. redis://: the last '@' (the rest, host, port and db, has
 * none), so a password with an unencoded '@' or '/' still parses. unix://:
 * the '@' of the first "@/" (the path may hold '@'), and only when the part
 * does not start with the path. Redaction uses the same split. */
static const char *userinfo_end(const char *rest, int is_unix)
{
    if (!is_unix)
        return strrchr(rest, '@');
    if (rest[0] == '/')
        return NULL;
    return strstr(rest, "@/");
}

/* Percent-decodes the len bytes at src into dst (size bytes, NUL included).
 * Returns 0, -1 for a bad escape (or one that decodes to NUL), -2 if the
 * result does not fit. */
static int pct_decode(char *dst, size_t size, const char *src, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            if (len - i < 3)
                return -1;
            int h = tb__hex_digit(src[i + 1]), l = tb__hex_digit(src[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0))
                return -1;
            c = (char)(h << 4 | l);
            i += 2;
        }
        if (o + 1 >= size)
            return -2;
        dst[o++] = c;
    }
    dst[o] = '\0';
    return 0;
}

/* Parses the len decimal digits at s into *v, 0..max. Returns 0 or -1 (not
 * all digits, empty, or out of range). */
static int parse_uint(const char *s, size_t len, long max, long *v)
{
    if (len == 0 || len > 10)
        return -1;
    long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        n = n * 10 + (s[i] - '0');
    }
    if (n > max)
        return -1;
    *v = n;
    return 0;
}

static int parse_db(const char *s, size_t len, int *db, char *err,
                    size_t errlen)
{
    long v;
    if (parse_uint(s, len, INT_MAX, &v) != 0)
        return fail(err, errlen,
                    "the db in the Redis URL must be a number from 0 to "
                    "2147483647");
    *db = (int)v;
    return 0;
}

/* [user]:password, the len bytes at s. */
static int parse_userinfo(const char *s, size_t len, tb__redis_target *t,
                          char *err, size_t errlen)
{
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return fail(err, errlen,
                    "the Redis URL has a user name but no password: write "
                    "redis://user:password@host, or redis://:password@host "
                    "for a password alone");
    size_t ulen = (size_t)(colon - s);
    int rc = pct_decode(t->user, sizeof t->user, s, ulen);
    if (rc == -1)
        return fail(err, errlen,
                    "bad percent-escape in the user name of the Redis URL "
                    "(use %XX with two hex digits, not %00)");
    if (rc == -2)
        return fail(err, errlen,
                    "the user name in the Redis URL is longer than 127 bytes");
    rc = pct_decode(t->password, sizeof t->password, colon + 1, len - ulen - 1);
    if (rc == -1)
        return fail(err, errlen,
                    "bad percent-escape in the password of the Redis URL "
                    "(use %XX with two hex digits, not %00)");
    if (rc == -2)
        return fail(err, errlen,
                    "the password in the Redis URL is longer than 511 bytes");
    if (t->user[0] && !t->password[0])
        return fail(err, errlen,
                    "the Redis URL has a user name but an empty password");
    return 0;
}

static int host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' ||
           c == '~';
}

/* "[v6addr]" or "[v6addr%25zone]" at s (len bytes, brackets included). */
static int parse_ipv6(const char *s, size_t len, tb__redis_target *t, char *err,
                      size_t errlen)
{
    static const char bad[] = "the bracketed IPv6 address in the Redis URL is "
                              "not valid (redis://[::1]:6379, "
                              "redis://[fe80::1%25eth0])";
    const char *addr = s + 1;
    size_t alen = len - 2;
    const char *zone = NULL;
    size_t zlen = 0;
    const char *pct = memchr(addr, '%', alen);
    if (pct) {
        /* RFC 6874: a zone id is written "%25" followed by the zone. */
        size_t plen = (size_t)(pct - addr);
        if (alen - plen < 4 || pct[1] != '2' || pct[2] != '5')
            return fail(err, errlen, bad);
        zone = pct + 3;
        zlen = alen - plen - 3;
        for (size_t i = 0; i < zlen; i++)
            if (!host_char(zone[i]))
                return fail(err, errlen, bad);
        alen = plen;
    }
    char a[INET6_ADDRSTRLEN];
    struct in6_addr in6;
    if (alen == 0 || alen >= sizeof a)
        return fail(err, errlen, bad);
    memcpy(a, addr, alen);
    a[alen] = '\0';
    if (inet_pton(AF_INET6, a, &in6) != 1)
        return fail(err, errlen, bad);
    if (alen + (zone ? 1 + zlen : 0) >= sizeof t->host)
        return fail(err, errlen,
                    "the host in the Redis URL is longer than 255 bytes");
    if (zone)
        snprintf(t->host, sizeof t->host, "%s%%%.*s", a, (int)zlen, zone);
    else
        memcpy(t->host, a, alen + 1);
    return 0;
}

/* host[:port][/db] after the userinfo. */
static int parse_tcp(const char *s, tb__redis_target *t, char *err,
                     size_t errlen)
{
    if (strpbrk(s, "?#"))
        return fail(err, errlen,
                    "a redis:// URL takes no query or fragment; give the db "
                    "as its path (redis://host:6379/2)");
    const char *p;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return fail(err, errlen,
                        "the IPv6 address in the Redis URL has no closing "
                        "bracket");
        int rc = parse_ipv6(s, (size_t)(close - s) + 1, t, err, errlen);
        if (rc)
            return rc;
        p = close + 1;
        if (*p && *p != ':' && *p != '/')
            return fail(err, errlen,
                        "unexpected text after the IPv6 address in the Redis "
                        "URL");
    } else {
        size_t hlen = strcspn(s, ":/");
        if (hlen == 0)
            return fail(err, errlen, "the Redis URL has no host");
        for (size_t i = 0; i < hlen; i++)
            if (!host_char(s[i]))
                return fail(err, errlen,
                            "the host in the Redis URL has a character that "
                            "is not allowed (IPv6 addresses go in brackets: "
                            "redis://[::1]:6379)");
        if (hlen >= sizeof t->host)
            return fail(err, errlen,
                        "the host in the Redis URL is longer than 255 bytes");
        memcpy(t->host, s, hlen);
        t->host[hlen] = '\0';
        p = s + hlen;
    }
    if (*p == ':') {
        p++;
        size_t plen = strcspn(p, "/");
        long port;
        if (parse_uint(p, plen, 65535, &port) != 0 || port == 0)
            return fail(err, errlen,
                        "the port in the Redis URL must be a number from 1 "
                        "to 65535");
        t->port = (int)port;
        p += plen;
    }
    if (*p == '/') {
        p++;
        if (*p) /* "redis://host/" is db 0 */
            return parse_db(p, strlen(p), &t->db, err, errlen);
    }
    return 0;
}

/* /absolute/path[?db=N] after the userinfo. */
static int parse_unix(const char *s, tb__redis_target *t, char *err,
                      size_t errlen)
{
    if (s[0] != '/')
        return fail(err, errlen,
                    "the unix socket path in the Redis URL must be absolute "
                    "(unix:///run/redis/redis-server.sock)");
    size_t plen = strcspn(s, "?");
    if (plen >= sizeof t->path)
        return fail(err, errlen,
                    "the unix socket path in the Redis URL is longer than "
                    "107 bytes");
    for (size_t i = 0; i < plen; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return fail(err, errlen,
                        "the unix socket path in the Redis URL has a control "
                        "character");
    memcpy(t->path, s, plen);
    t->path[plen] = '\0';
    t->is_unix = 1;

    if (s[plen] != '?')
        return 0;
    const char *q = s + plen + 1;
    int have_db = 0;
    while (*q) {
        size_t n = strcspn(q, "&");
        if (n > 0) {
            if (n < 3 || memcmp(q, "db=", 3) != 0)
                return fail(err, errlen,
                            "unknown query parameter in the Redis URL: only "
                            "db=N is supported");
            if (have_db)
                return fail(err, errlen, "the Redis URL gives db twice");
            int rc = parse_db(q + 3, n - 3, &t->db, err, errlen);
            if (rc)
                return rc;
            have_db = 1;
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

static int parse(const char *url, tb__redis_target *t, char *err, size_t errlen)
{
    if (!url || !url[0])
        return fail(err, errlen, "the Redis URL is empty");
    const char *rest;
    int is_unix;
    if (has_prefix_ci(url, "redis://")) {
        rest = url + strlen("redis://");
        is_unix = 0;
    } else if (has_prefix_ci(url, "unix://")) {
        rest = url + strlen("unix://");
        is_unix = 1;
    } else if (has_prefix_ci(url, "rediss://")) {
        return fail(err, errlen,
                    "rediss:// (Redis over TLS) is refused: TLS is not "
                    "supported by Debian's hiredis 0.14; use a TLS proxy "
                    "such as stunnel and point a redis:// URL at it");
    } else {
        return fail(err, errlen,
                    "the Redis URL must start with redis:// or unix://");
    }
    const char *at = userinfo_end(rest, is_unix);
    if (at) {
        int rc = parse_userinfo(rest, (size_t)(at - rest), t, err, errlen);
        if (rc)
            return rc;
        rest = at + 1;
    }
    return is_unix ? parse_unix(rest, t, err, errlen)
                   : parse_tcp(rest, t, err, errlen);
}

int tb__redis_url_parse(const char *url, tb__redis_target *out, char *err,
                        size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!out)
        return fail(err, errlen, "no place to store the parsed Redis URL");
    memset(out, 0, sizeof *out);
    out->port = DEFAULT_PORT;
    int rc = parse(url, out, err, errlen);
    if (rc) {
        /* Leave no half-decoded password behind. */
        memset(out, 0, sizeof *out);
        out->port = DEFAULT_PORT;
    }
    return rc;
}

/* ---------------------------------------------------------------- redact */

typedef struct outbuf {
    char *buf;
    size_t size, len;
} outbuf;

static void put(outbuf *o, const char *s, size_t n)
{
    if (o->len + 1 >= o->size)
        return;
    size_t room = o->size - 1 - o->len;
    if (n > room)
        n = room;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

void tb__redis_url_redact(const char *url, char *buf, size_t buflen)
{
    if (!buf || buflen == 0)
        return;
    buf[0] = '\0';
    if (!url)
        return;
    outbuf o = {buf, buflen, 0};
    const char *sep = strstr(url, "://");
    const char *rest = sep ? sep + 3 : url;
    int is_unix = sep && sep - url == 4 && strncasecmp(url, "unix", 4) == 0;
    const char *at = userinfo_end(rest, is_unix);
    if (!at) {
        put(&o, url, strlen(url));
        return;
    }
    const char *colon = memchr(rest, ':', (size_t)(at - rest));
    if (colon && colon + 1 == at) { /* empty password: nothing to hide */
        put(&o, url, strlen(url));
        return;
    }
    /* Without a ':' the userinfo may well be a password written without
     * its colon ("redis://secret@host"): hide all of it. */
    const char *keep = colon ? colon + 1 : rest;
    put(&o, url, (size_t)(keep - url));
    put(&o, "***", 3);
    put(&o, at, strlen(at));
}
