/* envelope_scan.c - taskbus's own envelope read and written without jansson:
 * a validating scanner and a writer, byte-exact twins of the jansson path
 * for that one shape (issue 13 point 5; tests/fuzz/fuzz_envelope_diff.c
 * holds them to it). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "envelope_scan.h"
#include "hex.h"
#include "internal.h"

/* Keys of one object of data checked for duplicates, and of all the
 * objects open at once; data with more goes to jansson. */
#define KEYS_MAX 16
#define KEYS_STACK 64

/* Digits of an integer taken without overflow care (10^18 - 1 fits). */
#define DIGITS_MAX 18

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* The high bit of each of the 8 bytes in w that is '"', '\\' or a control
 * (< 0x20): the bytes a JSON string escapes. A bit may also be set above a
 * real match, never missing one: 0 means none. */
static inline uint64_t escape_bits(uint64_t w)
{
    uint64_t q = w ^ (ONES * '"');
    uint64_t b = w ^ (ONES * '\\');
    return (((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) &
           HIGHS;
}

/* 1 if none of the 8 bytes in w is to be escaped or non-ASCII: the bytes a
 * string scan must look at one by one. */
static inline int word_plain(uint64_t w)
{
    return (escape_bits(w) | (w & HIGHS)) == 0;
}

/* The first i' >= i from which s[i'..n) may hold a byte to escape, in
 * steps of 8: what an escaping loop can pass without looking. */
static size_t skip_unescaped(const char *s, size_t i, size_t n)
{
    while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (escape_bits(w))
            break;
        i += 8;
    }
    return i;
}

static inline const char *blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The 4 hex digits at p (p + 4 <= end checked by the caller), or -1. */
static long hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = tb__hex_digit((unsigned char)p[i]);
        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

/* 1 if the \u escape at p (6 bytes, value u < 0x20) is the one jansson's
 * dump writes for u: "\u00XX" in capitals, and only where it has no short
 * form. */
static int u_canonical(const char *p, long u)
{
    static const char hex[] = "0123456789ABCDEF";
    if (u >= 0x20 || u == '\b' || u == '\f' || u == '\n' || u == '\r' ||
        u == '\t')
        return 0;
    return p[2] == '0' && p[3] == '0' && p[4] == hex[u >> 4] &&
           p[5] == hex[u & 15];
}

/* How a string scanned. */
enum {
    STR_PLAIN = 1,
    STR_ESCAPED = 2,
    STR_NONCANON = 4
};

/* Scans a JSON string whose opening quote is at p[-1], as jansson's lexer
 * would accept it (JSON_ALLOW_NUL: "\u0000" is fine; raw controls, bad
 * UTF-8, bad escapes and lone surrogates are not). Returns the position of
 * the closing quote, or NULL (then the caller falls back). *how gets
 * STR_PLAIN (no escapes) or STR_ESCAPED, with STR_NONCANON when an escape
 * is not the one jansson would write back. */
static const char *scan_string(const char *p, const char *end, int *how)
{
    int h = STR_PLAIN;
    for (;;) {
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (!word_plain(w))
                break;
            p += 8;
        }
        if (p == end)
            return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *how = h;
            return p;
        }
        if (c < 0x20)
            return NULL;
        if (c < 0x80 && c != '\\') {
            p++;
            continue;
        }
        if (c >= 0x80) {
            /* One sequence: its length from the lead byte, then the check
             * every other UTF-8 input gets. */
            size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if ((size_t)(end - p) < n || !tb__utf8_valid(p, n))
                return NULL;
            p += n;
            continue;
        }
        /* An escape. */
        h = (h & ~STR_PLAIN) | STR_ESCAPED;
        if (end - p < 2)
            return NULL;
        switch (p[1]) {
        case '"':
        case '\\':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            p += 2;
            continue;
        case '/':
            h |= STR_NONCANON; /* jansson writes '/' bare */
            p += 2;
            continue;
        case 'u':
            break;
        default:
            return NULL;
        }
        if (end - p < 6)
            return NULL;
        long u = hex4(p + 2);
        if (u < 0)
            return NULL;
        if (u >= 0xDC00 && u <= 0xDFFF)
            return NULL; /* a lone low surrogate */
        if (u >= 0xD800 && u <= 0xDBFF) {
            /* jansson wants the low half right after. */
            if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
                return NULL;
            long lo = hex4(p + 8);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return NULL;
            h |= STR_NONCANON;
            p += 12;
            continue;
        }
        if (!u_canonical(p, u))
            h |= STR_NONCANON;
        p += 6;
    }
}

/* Scans an integer as jansson's lexer reads one: -?(0|[1-9][0-9]*) not
 * followed by a fraction or exponent. Returns the end, or NULL when it is
 * no such integer or has more than DIGITS_MAX digits. *neg, *val: its
 * sign and magnitude. */
static const char *scan_int(const char *p, const char *end, int *neg,
                            int64_t *val)
{
    *neg = 0;
    if (p < end && *p == '-') {
        *neg = 1;
        p++;
    }
    const char *d = p;
    int64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - d == DIGITS_MAX)
            return NULL;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (p == d || (*d == '0' && p - d > 1))
        return NULL;
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))
        return NULL;
    *val = v;
    return p;
}

/* A key of an object, for the duplicate check. */
typedef struct keyspan {
    const char *s;
    size_t n;
} keyspan;

/* What one scan of data shares across its nesting levels: the keys of the
 * objects open, innermost last. Kept out of each level's frame so that a
 * level costs less stack than TB__JSON_STACK_PER_LEVEL (json.h): the key
 * array in every frame made one 720 bytes under ASan. */
typedef struct scan_ctx {
    keyspan keys[KEYS_STACK];
    int nkeys;
} scan_ctx;

static const char *scan_value(scan_ctx *c, const char *p, const char *end,
                              int depth);

/* Scans an object in jansson's compact form, '{' at p[-1]. Its keys sit
 * on c's stack above the enclosing objects' while it is scanned. */
static const char *scan_object(scan_ctx *c, const char *p, const char *end,
                               int depth)
{
    const int base = c->nkeys;
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (p == end || *p != '"')
            return NULL;
        int how;
        const char *q = scan_string(p + 1, end, &how);
        /* Escaped keys go to jansson: it refuses "\u0000" in them. */
        if (!q || how != STR_PLAIN || c->nkeys - base == KEYS_MAX ||
            c->nkeys == KEYS_STACK)
            return NULL;
        size_t n = (size_t)(q - p - 1);
        for (int i = base; i < c->nkeys; i++)
            if (c->keys[i].n == n && memcmp(c->keys[i].s, p + 1, n) == 0)
                return NULL; /* jansson keeps the last: not verbatim */
        c->keys[c->nkeys++] = (keyspan){p + 1, n};
        p = q + 1;
        if (p == end || *p != ':')
            return NULL;
        p = scan_value(c, p + 1, end, depth);
        if (!p || p == end)
            return NULL;
        if (*p == '}') {
            c->nkeys = base;
            return p + 1;
        }
        if (*p != ',')
            return NULL;
        p++;
    }
}

/* Scans a value of data in jansson's compact form, nested at most depth
 * levels more. Returns its end or NULL. */
static const char *scan_value(scan_ctx *c, const char *p, const char *end,
                              int depth)
{
    if (p == end)
        return NULL;
    switch (*p) {
    case '{':
        return depth > 0 ? scan_object(c, p + 1, end, depth - 1) : NULL;
    case '[':
        if (depth <= 0)
            return NULL;
        p++;
        if (p < end && *p == ']')
            return p + 1;
        for (;;) {
            p = scan_value(c, p, end, depth - 1);
            if (!p || p == end)
                return NULL;
            if (*p == ']')
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    case '"': {
        int how;
        const char *q = scan_string(p + 1, end, &how);
        return q && !(how & STR_NONCANON) ? q + 1 : NULL;
    }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default: {
        int neg;
        int64_t v;
        const char *q = scan_int(p, end, &neg, &v);
        return q && !(neg && v == 0) ? q : NULL; /* -0 dumps as 0 */
    }
    }
}

/* A member's value is followed by blanks and a ',' or the final '}'. */
static int member_end(const char **pp, const char *end, int *last)
{
    const char *p = blanks(*pp, end);
    if (p == end)
        return 0;
    if (*p == '}')
        *last = 1;
    else if (*p != ',')
        return 0;
    *pp = p + 1;
    return 1;
}

/* The members scanned, one bit each. */
enum {
    M_ID = 1,
    M_NAME = 2,
    M_DATA = 4,
    M_TS = 8,
    M_ORIGIN = 16,
    M_HOPS = 32,
    M_POS = 64
};

static int member_bit(const char *k, size_t n)
{
    switch (n) {
    case 2:
        return memcmp(k, "id", 2) == 0   ? M_ID
               : memcmp(k, "ts", 2) == 0 ? M_TS
                                         : 0;
    case 4:
        return memcmp(k, "name", 4) == 0   ? M_NAME
               : memcmp(k, "data", 4) == 0 ? M_DATA
               : memcmp(k, "hops", 4) == 0 ? M_HOPS
                                           : 0;
    case 3:
        return memcmp(k, "pos", 3) == 0 ? M_POS : 0;
    case 6:
        return memcmp(k, "origin", 6) == 0 ? M_ORIGIN : 0;
    default:
        return 0;
    }
}

/* A plain string member's value: sets *s, *n and moves *pp past it. */
static int plain_string(const char **pp, const char *end, const char **s,
                        size_t *n)
{
    const char *p = *pp;
    if (p == end || *p != '"')
        return 0;
    const char *q = tb__scan_plain_string(p + 1, end);
    if (!q)
        return 0;
    *s = p + 1;
    *n = (size_t)(q - p - 1);
    *pp = q + 1;
    return 1;
}

const char *tb__scan_value(const char *p, const char *end, int depth)
{
    scan_ctx c;
    c.nkeys = 0;
    return scan_value(&c, p, end, depth);
}

const char *tb__scan_plain_string(const char *p, const char *end)
{
    int how;
    const char *q = scan_string(p, end, &how);
    return q && how == STR_PLAIN ? q : NULL;
}

/* The data member's value: null, a string, or compact JSON. */
static int scan_data(const char **pp, const char *end, size_t max_size,
                     int max_depth, tb__envelope_view *v)
{
    const char *p = *pp;
    if (p == end)
        return 0;
    if (*p == '"') {
        int how;
        const char *q = scan_string(p + 1, end, &how);
        if (!q)
            return 0;
        v->data = p + 1;
        v->datalen = (size_t)(q - p - 1);
        v->kind = how & STR_PLAIN ? TB__SCAN_DATA_RAW : TB__SCAN_DATA_ESCAPED;
        /* An escaped string shrinks when decoded: its caller checks the
         * size it ends up with. */
        if (v->kind == TB__SCAN_DATA_RAW && v->datalen > max_size)
            return 0;
        *pp = q + 1;
        return 1;
    }
    if (*p == 'n') {
        if (end - p < 4 || memcmp(p, "null", 4) != 0)
            return 0;
        v->data = p;
        v->datalen = 0;
        v->kind = TB__SCAN_DATA_NULL;
        *pp = p + 4;
        return 1;
    }
    if (*p != '{' && *p != '[')
        return 0;
    /* The envelope is one level: data may nest max_depth - 1 more. */
    const char *q = tb__scan_value(p, end, max_depth - 1);
    if (!q || (size_t)(q - p) > max_size)
        return 0;
    v->data = p;
    v->datalen = (size_t)(q - p);
    v->kind = TB__SCAN_DATA_RAW;
    *pp = q;
    return 1;
}

/* One member's value, by its bit. */
static int scan_member(int bit, const char **pp, const char *end,
                       const char *name, size_t max_size, int max_depth,
                       tb__envelope_view *v)
{
    const char *s;
    size_t n;
    int neg;
    int64_t val;
    const char *q;
    switch (bit) {
    case M_ID:
        /* A plain string has no controls and is valid UTF-8: printable
         * ASCII is all that is left to check. */
        if (!plain_string(pp, end, &s, &n) || !tb__envelope_id_valid(s, n))
            return 0;
        v->id = s;
        v->idlen = n;
        return 1;
    case M_NAME:
        return plain_string(pp, end, &s, &n) && strlen(name) == n &&
               memcmp(s, name, n) == 0;
    case M_ORIGIN:
        if (!plain_string(pp, end, &s, &n) ||
            n >= sizeof((tb_event *)0)->origin)
            return 0;
        v->origin = s;
        v->originlen = n;
        return 1;
    case M_POS:
        if (!plain_string(pp, end, &s, &n) ||
            tb__pos_parse(s, n, &v->pos) != 0 || v->pos.seq == 0)
            return 0;
        return 1;
    case M_TS:
        q = scan_int(*pp, end, &neg, &val);
        if (!q || neg || val == 0)
            return 0; /* ts 0 means "time of receipt": jansson's path */
        v->ts = val;
        *pp = q;
        return 1;
    case M_HOPS:
        q = scan_int(*pp, end, &neg, &val);
        if (!q || (neg && val != 0) || val > 255)
            return 0;
        v->hops = (int)val;
        *pp = q;
        return 1;
    case M_DATA:
        return scan_data(pp, end, max_size, max_depth, v);
    default:
        return 0;
    }
}

int tb__envelope_scan(const char *msg, size_t len, const char *name,
                      size_t max_size, int max_depth, tb__envelope_view *v)
{
    const char *p = msg, *end = msg + len;
    memset(v, 0, sizeof *v);
    if (max_depth < 1)
        return 0;
    p = blanks(p, end);
    if (p == end || *p != '{')
        return 0;
    p++;
    int seen = 0, last = 0;
    while (!last) {
        p = blanks(p, end);
        const char *k;
        size_t kn;
        if (!plain_string(&p, end, &k, &kn))
            return 0;
        int bit = member_bit(k, kn);
        if (!bit || (seen & bit))
            return 0; /* others are ignored, repeats overwrite: jansson */
        seen |= bit;
        p = blanks(p, end);
        if (p == end || *p != ':')
            return 0;
        p = blanks(p + 1, end);
        if (!scan_member(bit, &p, end, name, max_size, max_depth, v) ||
            !member_end(&p, end, &last))
            return 0;
    }
    if (blanks(p, end) != end)
        return 0;
    return (seen & (M_ID | M_DATA | M_TS)) == (M_ID | M_DATA | M_TS);
}

/* The UTF-8 bytes of code point u into out; returns their count. */
static size_t put_utf8(char *out, long u)
{
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xC0 | u >> 6);
        out[1] = (char)(0x80 | (u & 0x3F));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | u >> 12);
        out[1] = (char)(0x80 | (u >> 6 & 0x3F));
        out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | u >> 18);
    out[1] = (char)(0x80 | (u >> 12 & 0x3F));
    out[2] = (char)(0x80 | (u >> 6 & 0x3F));
    out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

size_t tb__scan_unescape(const tb__envelope_view *v, char *out)
{
    /* The scan has validated every escape: no checks here. */
    const char *p = v->data, *end = v->data + v->datalen;
    char *o = out;
    while (p < end) {
        const char *bs = memchr(p, '\\', (size_t)(end - p));
        size_t run = bs ? (size_t)(bs - p) : (size_t)(end - p);
        memcpy(o, p, run);
        o += run;
        p += run;
        if (!bs)
            break;
        char c = p[1];
        p += 2;
        switch (c) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            long u = hex4(p);
            p += 4;
            if (u >= 0xD800 && u <= 0xDBFF) {
                long lo = hex4(p + 2);
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += put_utf8(o, u);
            break;
        }
        default: /* '"', '\\', '/' */
            *o++ = c;
            break;
        }
    }
    return (size_t)(o - out);
}

/* ---------------------------------------------------------------- writer */

/* Bytes that s takes as a JSON string's inside, escaped as jansson does. */
static size_t escaped_len(const char *s, size_t n)
{
    size_t extra = 0;
    size_t i = 0;
    while (i < n) {
        i = skip_unescaped(s, i, n); /* UTF-8 needs no escape */
        if (i == n)
            break;
        unsigned char c = (unsigned char)s[i++];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' ||
            c == '\r' || c == '\t')
            extra += 1;
        else if (c < 0x20)
            extra += 5;
    }
    return n + extra;
}

/* Writes s escaped as jansson's dump does (RFC 8259's mandatory escapes,
 * short forms where they exist, else \u00XX in capitals; UTF-8 as is). */
static char *put_escaped(char *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = 0;
    while (i < n) {
        size_t j = skip_unescaped(s, i, n);
        while (j < n) {
            unsigned char c = (unsigned char)s[j];
            if (c < 0x20 || c == '"' || c == '\\')
                break;
            j++;
        }
        memcpy(o, s + i, j - i);
        o += j - i;
        if (j == n)
            break;
        unsigned char c = (unsigned char)s[j];
        i = j + 1;
        *o++ = '\\';
        switch (c) {
        case '"':
        case '\\':
            *o++ = (char)c;
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
            break;
        }
    }
    return o;
}

static char *put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

/* Writes v in decimal as jansson's "%lld" does. */
static char *put_int(char *o, int64_t v)
{
    char buf[24];
    int i = sizeof buf;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        buf[--i] = '-';
    return put(o, buf + i, sizeof buf - (size_t)i);
}

int tb__envelope_write(const tb_event *ev, char **out, size_t *outlen)
{
    /* Data that starts like an object or array is sent as JSON: verbatim
     * when it is already what jansson would dump, else jansson's job. */
    const char *d = ev->data, *dend = ev->data + ev->len;
    const char *b = blanks(d, dend);
    int json = b < dend && (*b == '{' || *b == '[');
    if (json && (b != d || tb__scan_value(d, dend, ev->max_depth - 1) != dend))
        return 0;

    size_t idlen = strlen(ev->id), namelen = strlen(ev->name),
           originlen = strlen(ev->origin), poslen = strlen(ev->pos);
    size_t dlen = json ? ev->len : escaped_len(ev->data, ev->len);
    size_t cap = dlen + escaped_len(ev->id, idlen) +
                 escaped_len(ev->name, namelen) +
                 escaped_len(ev->origin, originlen) + poslen + 128;
    char *buf = malloc(cap);
    if (!buf)
        return TB_ENOMEM;
    char *o = buf;
    o = put(o, "{\"id\":\"", 7);
    o = put_escaped(o, ev->id, idlen);
    o = put(o, "\",\"name\":\"", 10);
    o = put_escaped(o, ev->name, namelen);
    o = put(o, "\",\"data\":", 9);
    if (json) {
        o = put(o, ev->data, ev->len);
    } else {
        *o++ = '"';
        o = put_escaped(o, ev->data, ev->len);
        *o++ = '"';
    }
    o = put(o, ",\"ts\":", 6);
    o = put_int(o, ev->ts_us);
    o = put(o, ",\"origin\":\"", 11);
    o = put_escaped(o, ev->origin, originlen);
    *o++ = '"';
    if (ev->hops) {
        o = put(o, ",\"hops\":", 8);
        o = put_int(o, ev->hops);
    }
    if (poslen) {
        o = put(o, ",\"pos\":\"", 8);
        o = put_escaped(o, ev->pos, poslen);
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    *out = buf;
    *outlen = (size_t)(o - buf);
    return 1;
}
