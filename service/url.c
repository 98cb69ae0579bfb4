/* url.c - parsing and redaction of the Redis URLs taskbus accepts. */
#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "taskbus/taskbus.h"
#include "hex.h"
#include "url.h"

#define DEFAULT_PORT 6379
#define SENTINEL_PORT 26379

/* Error messages name the part of the URL that is wrong and never quote the
 * URL itself: a password with an unencoded '/', '?' or '@' can end up in
 * any part of it. */
static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return TB_EINVAL;
}

static int failf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
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

/* What follows a URL's last part at p: nothing, "/" (db 0) or "/db". */
static int parse_db_path(const char *p, int *db, char *err, size_t errlen)
{
    if (p[0] != '/' || !p[1])
        return 0;
    return parse_db(p + 1, strlen(p + 1), db, err, errlen);
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

/* "v6addr" or "v6addr%zone" (len bytes at addr, no brackets; the zone
 * already decoded) into host. 0, or -1 when it is no IPv6 address, -2 when
 * it does not fit. */
static int put_ipv6(const char *addr, size_t alen, const char *zone,
                    size_t zlen, char *host, size_t hostsz)
{
    char a[INET6_ADDRSTRLEN];
    struct in6_addr in6;
    if (alen == 0 || alen >= sizeof a)
        return -1;
    memcpy(a, addr, alen);
    a[alen] = '\0';
    if (inet_pton(AF_INET6, a, &in6) != 1)
        return -1;
    for (size_t i = 0; i < zlen; i++)
        if (!host_char(zone[i]))
            return -1;
    if (alen + (zone ? 1 + zlen : 0) >= hostsz)
        return -2;
    if (zone)
        snprintf(host, hostsz, "%s%%%.*s", a, (int)zlen, zone);
    else
        memcpy(host, a, alen + 1);
    return 0;
}

/* "[v6addr]" or "[v6addr%25zone]" at s (len bytes, brackets included). */
static int parse_ipv6(const char *s, size_t len, char *host, size_t hostsz,
                      const char *who, char *err, size_t errlen)
{
    const char *addr = s + 1;
    size_t alen = len - 2;
    const char *zone = NULL;
    size_t zlen = 0;
    const char *pct = memchr(addr, '%', alen);
    int rc = -1;
    if (pct) {
        /* RFC 6874: a zone id is written "%25" followed by the zone. */
        size_t plen = (size_t)(pct - addr);
        if (alen - plen >= 4 && pct[1] == '2' && pct[2] == '5') {
            zone = pct + 3;
            zlen = alen - plen - 3;
            rc = put_ipv6(addr, plen, zone, zlen, host, hostsz);
        }
    } else {
        rc = put_ipv6(addr, alen, NULL, 0, host, hostsz);
    }
    if (rc == -2)
        return failf(err, errlen, "the host in %s is longer than 255 bytes",
                     who);
    if (rc)
        return failf(err, errlen,
                     "the bracketed IPv6 address in %s is not valid "
                     "([::1]:6379, [fe80::1%%25eth0])",
                     who);
    return 0;
}

/* host[:port], the len bytes at s: a name or IPv4 address, or an IPv6
 * address in brackets. *port is left as it is when none is given. who
 * names the part in messages: "the Redis URL", "sentinel 2 of the Redis
 * URL". */
static int parse_hostport(const char *s, size_t len, char *host, size_t hostsz,
                          int *port, const char *who, char *err, size_t errlen)
{
    const char *end = s + len, *p;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return failf(err, errlen,
                         "the IPv6 address in %s has no closing bracket", who);
        int rc = parse_ipv6(s, (size_t)(close - s) + 1, host, hostsz, who, err,
                            errlen);
        if (rc)
            return rc;
        p = close + 1;
        if (p < end && *p != ':')
            return failf(err, errlen,
                         "unexpected text after the IPv6 address in %s", who);
    } else {
        size_t hlen = 0;
        while (hlen < len && s[hlen] != ':')
            hlen++;
        if (hlen == 0)
            return failf(err, errlen, "%s has no host", who);
        for (size_t i = 0; i < hlen; i++)
            if (!host_char(s[i]))
                return failf(err, errlen,
                             "the host in %s has a character that is not "
                             "allowed (IPv6 addresses go in brackets: "
                             "[::1]:6379)",
                             who);
        if (hlen >= hostsz)
            return failf(err, errlen, "the host in %s is longer than 255 bytes",
                         who);
        memcpy(host, s, hlen);
        host[hlen] = '\0';
        p = s + hlen;
    }
    if (p < end) { /* at the ':' */
        p++;
        long v;
        if (parse_uint(p, (size_t)(end - p), 65535, &v) != 0 || v == 0)
            return failf(err, errlen,
                         "the port in %s must be a number from 1 to 65535",
                         who);
        *port = (int)v;
    }
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
    size_t hlen = strcspn(s, "/");
    int rc = parse_hostport(s, hlen, t->host, sizeof t->host, &t->port,
                            "the Redis URL", err, errlen);
    if (rc)
        return rc;
    return parse_db_path(s + hlen, &t->db, err, errlen);
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static int master_name_ok(const char *s, size_t len)
{
    if (len < 1 || len > TB__SENTINEL_MASTER_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!name_char(s[i]))
            return 0;
    return 1;
}

/* host[:port][,host[:port]...]/master[/db] after the userinfo. */
static int parse_sentinel(const char *s, tb__redis_target *t, char *err,
                          size_t errlen)
{
    if (strpbrk(s, "?#"))
        return fail(err, errlen,
                    "a redis-sentinel:// URL takes no query or fragment; give "
                    "the master's name and the db as its path "
                    "(redis-sentinel://host:26379/mymaster/2)");
    size_t hlen = strcspn(s, "/");
    if (s[hlen] != '/')
        return fail(err, errlen,
                    "the Redis URL names no master: write "
                    "redis-sentinel://host:26379[,host2:26379...]/mastername");
    const char *p = s, *end = s + hlen;
    int n = 0;
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t len = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (n == TB__SENTINELS_MAX)
            return failf(err, errlen,
                         "the Redis URL lists more than %d sentinels",
                         TB__SENTINELS_MAX);
        if (len == 0)
            return failf(err, errlen,
                         "sentinel %d of the Redis URL is empty (a comma "
                         "too many?)",
                         n + 1);
        char who[48];
        snprintf(who, sizeof who, "sentinel %d of the Redis URL", n + 1);
        tb__redis_hostport *h = &t->sentinels[n];
        h->port = SENTINEL_PORT;
        int rc = parse_hostport(p, len, h->host, sizeof h->host, &h->port, who,
                                err, errlen);
        if (rc)
            return rc;
        n++;
        if (!comma)
            break;
        p = comma + 1;
    }
    t->nsentinels = n;
    p = end + 1;
    size_t mlen = strcspn(p, "/");
    if (!master_name_ok(p, mlen))
        return failf(err, errlen,
                     "the master's name in the Redis URL must be 1..%d "
                     "bytes of [A-Za-z0-9_.-] "
                     "(redis-sentinel://host:26379/mymaster)",
                     TB__SENTINEL_MASTER_MAX);
    memcpy(t->master, p, mlen);
    t->master[mlen] = '\0';
    return parse_db_path(p + mlen, &t->db, err, errlen);
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
    int sentinel = 0;
    if (strnlen(url, TB__REDIS_URL_MAX + 1) > TB__REDIS_URL_MAX)
        return failf(err, errlen, "the Redis URL is longer than %d bytes",
                     TB__REDIS_URL_MAX);
    if (has_prefix_ci(url, "redis://")) {
        rest = url + strlen("redis://");
        is_unix = 0;
    } else if (has_prefix_ci(url, "redis-sentinel://")) {
        rest = url + strlen("redis-sentinel://");
        is_unix = 0;
        sentinel = 1;
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
                    "the Redis URL must start with redis://, unix:// or "
                    "redis-sentinel://");
    }
    const char *at = userinfo_end(rest, is_unix);
    if (at) {
        int rc = parse_userinfo(rest, (size_t)(at - rest), t, err, errlen);
        if (rc)
            return rc;
        rest = at + 1;
    }
    if (sentinel)
        return parse_sentinel(rest, t, err, errlen);
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

/* -------------------------------------------------------------- sentinel */

int tb__sentinel_addr_parse(const char *host, size_t hlen, const char *port,
                            size_t plen, tb__redis_hostport *out)
{
    long v;
    if (!host || !port || !out || hlen == 0 || hlen >= sizeof out->host ||
        parse_uint(port, plen, 65535, &v) != 0 || v == 0)
        return TB_EINVAL;
    if (memchr(host, ':', hlen)) {
        /* Sentinel writes IPv6 addresses bare, a zone after a '%'. */
        const char *pct = memchr(host, '%', hlen);
        size_t alen = pct ? (size_t)(pct - host) : hlen;
        if (put_ipv6(host, alen, pct ? pct + 1 : NULL,
                     pct ? hlen - alen - 1 : 0, out->host,
                     sizeof out->host) != 0 ||
            (pct && hlen - alen - 1 == 0))
            return TB_EINVAL;
    } else {
        for (size_t i = 0; i < hlen; i++)
            if (!host_char(host[i]))
                return TB_EINVAL;
        memcpy(out->host, host, hlen);
        out->host[hlen] = '\0';
    }
    out->port = (int)v;
    return 0;
}

/* The next word of the len bytes at *s, up to a single space: its start
 * and length; *s moves past the space. NULL when there is none. */
static const char *word(const char **s, const char *end, size_t *len)
{
    const char *w = *s;
    if (w >= end)
        return NULL;
    const char *sp = memchr(w, ' ', (size_t)(end - w));
    *len = sp ? (size_t)(sp - w) : (size_t)(end - w);
    *s = sp ? sp + 1 : end;
    return w;
}

int tb__sentinel_switch_parse(const char *msg, size_t len,
                              char name[TB__SENTINEL_MASTER_MAX + 1],
                              tb__redis_hostport *from, tb__redis_hostport *to)
{
    if (!msg || !name || !from || !to || len == 0 || len > 1024 ||
        msg[len - 1] == ' ')
        return TB_EINVAL;
    const char *p = msg, *end = msg + len, *w[5];
    size_t wl[5];
    for (int i = 0; i < 5; i++)
        if (!(w[i] = word(&p, end, &wl[i])) || wl[i] == 0)
            return TB_EINVAL;
    if (p != end || !master_name_ok(w[0], wl[0]) ||
        tb__sentinel_addr_parse(w[1], wl[1], w[2], wl[2], from) != 0 ||
        tb__sentinel_addr_parse(w[3], wl[3], w[4], wl[4], to) != 0)
        return TB_EINVAL;
    memcpy(name, w[0], wl[0]);
    name[wl[0]] = '\0';
    return 0;
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
