/* pattern.c - event name and pattern validation, matching and param capture. */
#include "pattern.h"

#include <string.h>

_Static_assert(TB_EVENT_NAME_MAX <= UINT8_MAX,
               "tb__name and tb__pattern keep offsets in uint8_t");
_Static_assert(TB_EVENT_SEGMENTS_MAX <= UINT8_MAX, "segment count in uint8_t");

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int is_param_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
}

/* Classifies the segment s[0..len) (len >= 1). Returns its tb__seg_kind, or
 * -1 with *why set if it is malformed. Wildcards are accepted only when wild
 * is set. */
static int classify(const char *s, size_t len, int wild, const char **why)
{
    if (wild && len == 1 && s[0] == '*')
        return TB__SEG_ANY;
    if (wild && len == 1 && s[0] == '>')
        return TB__SEG_TAIL;
    if (wild && s[0] == '<') {
        if (len < 3 || len - 2 > TB__PARAM_NAME_MAX || s[len - 1] != '>') {
            *why = "a \"<param>\" segment needs a name of 1..64 of "
                   "[A-Za-z0-9_] between its brackets";
            return -1;
        }
        for (size_t i = 1; i + 1 < len; i++)
            if (!is_param_char((unsigned char)s[i])) {
                *why = "a \"<param>\" name may hold only [A-Za-z0-9_]";
                return -1;
            }
        return TB__SEG_PARAM;
    }
    for (size_t i = 0; i < len; i++)
        if (!is_name_char((unsigned char)s[i])) {
            *why = !wild ? "a name's segments hold only [A-Za-z0-9_-]"
                   : s[i] == '>'
                       ? "\">\" must be a whole segment, the last one "
                         "(\"orders.>\", not \"orders>\")"
                   : s[i] == '*'
                       ? "\"*\" must be a whole segment (\"orders.*\", not "
                         "\"orders*\")"
                       : "a segment holds only [A-Za-z0-9_-], or is \"*\", "
                         "\"<param>\" or a last \">\"";
            return -1;
        }
    return TB__SEG_LITERAL;
}

/* The one parser behind names and patterns. Fills p (text, len, nseg,
 * nwild, spread, seg[]; not hash) from s. With wild == 0 only literal
 * segments are accepted, which makes s a valid event name. On error, *why
 * says what is wrong (a static phrase). */
static int parse(tb__pattern *p, const char *s, int wild, const char **why)
{
    if (s == NULL) {
        *why = "missing";
        return TB_EINVAL;
    }
    size_t len = strnlen(s, TB_EVENT_NAME_MAX + 1);
    if (len > TB_EVENT_NAME_MAX) {
        *why = "longer than 200 bytes (TB_EVENT_NAME_MAX)";
        return TB_ENAMETOOLONG;
    }
    if (len == 0) {
        *why = "empty";
        return TB_EINVAL;
    }

    size_t nseg = 0, nwild = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        size_t slen = i - start;
        if (slen == 0) {
            *why = "an empty segment (a leading, trailing or doubled \".\")";
            return TB_EINVAL;
        }
        if (nseg == TB_EVENT_SEGMENTS_MAX) {
            *why = "more than 8 segments (TB_EVENT_SEGMENTS_MAX)";
            return TB_EINVAL;
        }
        if (nseg > 0 && p->seg[nseg - 1].kind == TB__SEG_TAIL) {
            *why = "\">\" may only be the last segment (\"orders.>\", not "
                   "\"orders.>.x\")";
            return TB_EINVAL;
        }
        int kind = classify(s + start, slen, wild, why);
        if (kind < 0)
            return TB_EINVAL;
        if (kind == TB__SEG_PARAM) {
            /* Store the name inside the brackets; it must be unique. */
            start++;
            slen -= 2;
            for (size_t j = 0; j < nseg; j++)
                if (p->seg[j].kind == TB__SEG_PARAM && p->seg[j].len == slen &&
                    memcmp(s + p->seg[j].off, s + start, slen) == 0) {
                    *why = "a \"<param>\" name used twice";
                    return TB_EINVAL;
                }
        }
        if (kind != TB__SEG_LITERAL)
            nwild++;
        p->seg[nseg].kind = (uint8_t)kind;
        p->seg[nseg].off = (uint8_t)start;
        p->seg[nseg].len = (uint8_t)slen;
        nseg++;
        start = i + 1;
    }
    memcpy(p->text, s, len + 1);
    p->len = (uint8_t)len;
    p->nseg = (uint8_t)nseg;
    p->nwild = (uint8_t)nwild;
    p->spread =
        p->seg[nseg - 1].kind == TB__SEG_TAIL ? TB_EVENT_SEGMENTS_MAX : 0;
    return 0;
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3u;
    }
    return h;
}

uint64_t tb__hash_str(const char *s, size_t len)
{
    return fnv1a(0xcbf29ce484222325u, s, len);
}

uint64_t tb__hash_seeded(const char *s, size_t len, uint64_t seed)
{
    /* The start state spreads the seed over the multiplications; the
     * final mix (splitmix64's) makes every output bit depend on it, so a
     * table's slot (the low bits) does too. */
    uint64_t h = fnv1a(0xcbf29ce484222325u ^ seed, s, len) ^ (seed >> 7);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
    return h ^ (h >> 31);
}

int tb__name_split(tb__name *n, const char *name)
{
    tb__pattern p;
    const char *why;
    int rc = parse(&p, name, 0, &why);
    if (rc != 0)
        return rc;
    n->len = p.len;
    n->nseg = p.nseg;
    for (int i = 0; i < p.nseg; i++) {
        n->off[i] = p.seg[i].off;
        n->seglen[i] = p.seg[i].len;
    }
    memcpy(n->s, p.text, (size_t)p.len + 1);
    n->hash = tb__hash_str(n->s, n->len);
    return 0;
}

int tb__pattern_compile(tb__pattern *p, const char *pattern)
{
    const char *why;
    int rc = parse(p, pattern, 1, &why);
    if (rc != 0)
        return rc;
    p->hash = tb__hash_str(p->text, p->len);
    return 0;
}

int tb__pattern_is_exact(const tb__pattern *p)
{
    return p->nwild == 0;
}

size_t tb__pattern_prefix(const tb__pattern *p, int *depth)
{
    int k = 0;
    while (k < p->nseg && p->seg[k].kind == TB__SEG_LITERAL)
        k++;
    *depth = k;
    return k ? (size_t)p->seg[k - 1].off + p->seg[k - 1].len : 0;
}

int tb__pattern_match_split(const tb__pattern *p, const tb__name *n)
{
    /* One compare for both shapes: n must have exactly p->nseg segments
     * (spread 0), or with a last ">" (spread TB_EVENT_SEGMENTS_MAX) at
     * least that many: fewer wraps the difference around to >= 248. */
    if ((uint8_t)(n->nseg - p->nseg) > p->spread)
        return 0;
    if (p->nwild == 0)
        return p->len == n->len && p->hash == n->hash &&
               memcmp(p->text, n->s, n->len) == 0;
    for (int i = 0; i < p->nseg; i++) {
        if (p->seg[i].kind != TB__SEG_LITERAL)
            continue;
        if (p->seg[i].len != n->seglen[i] ||
            memcmp(p->text + p->seg[i].off, n->s + n->off[i], n->seglen[i]) !=
                0)
            return 0;
    }
    return 1;
}

int tb__pattern_covers(const tb__pattern *allow, const tb__pattern *want)
{
    /* want's names have want->nseg segments, or any number from there with
     * a last ">": allow must take all those counts. Then, segment by
     * segment up to allow's, a literal of allow must face the same literal
     * in want (a wildcard of want would let other names through; want's
     * own ">" is never faced, as want->nseg >= allow->nseg when allow ends
     * in ">", and equal otherwise with allow's segment there a literal
     * only if want's is one). */
    if (want->spread > allow->spread)
        return 0;
    if ((uint8_t)(want->nseg - allow->nseg) > allow->spread)
        return 0;
    for (int i = 0; i < allow->nseg; i++) {
        if (allow->seg[i].kind != TB__SEG_LITERAL)
            continue;
        if (want->seg[i].kind != TB__SEG_LITERAL ||
            allow->seg[i].len != want->seg[i].len ||
            memcmp(allow->text + allow->seg[i].off,
                   want->text + want->seg[i].off, want->seg[i].len) != 0)
            return 0;
    }
    return 1;
}

int tb__pattern_param_index(const tb__pattern *p, const char *param)
{
    if (param == NULL)
        return -1;
    size_t plen = strnlen(param, TB__PARAM_NAME_MAX + 1);
    for (int i = 0; i < p->nseg; i++)
        if (p->seg[i].kind == TB__SEG_PARAM && p->seg[i].len == plen &&
            memcmp(p->text + p->seg[i].off, param, plen) == 0)
            return i;
    return -1;
}

int tb__pattern_param_split(const tb__pattern *p, const tb__name *n,
                            const char *param, char *out, size_t outsz)
{
    if (param == NULL || (out == NULL && outsz > 0))
        return TB_EINVAL;
    if (outsz > 0)
        out[0] = '\0';
    int i = tb__pattern_param_index(p, param);
    if (i < 0 || !tb__pattern_match_split(p, n))
        return TB_ENOENT;
    size_t len = n->seglen[i];
    if (outsz < len + 1)
        return TB_ENAMETOOLONG;
    memcpy(out, n->s + n->off[i], len);
    out[len] = '\0';
    return (int)len;
}

/* ---- public API: the same, parsing on each call ---- */

int tb_event_name_valid(const char *name)
{
    tb__pattern p;
    const char *why;
    return parse(&p, name, 0, &why);
}

int tb_pattern_valid(const char *pattern)
{
    tb__pattern p;
    const char *why;
    return parse(&p, pattern, 1, &why);
}

const char *tb__pattern_problem(const char *pattern)
{
    tb__pattern p;
    const char *why = NULL;
    return parse(&p, pattern, 1, &why) == 0 ? NULL : why;
}

int tb_pattern_match(const char *pattern, const char *name)
{
    tb__pattern p;
    tb__name n;
    if (tb__pattern_compile(&p, pattern) != 0 || tb__name_split(&n, name) != 0)
        return 0;
    return tb__pattern_match_split(&p, &n);
}

/* An invalid pattern is the caller's bug (TB_EINVAL); an invalid name just
 * does not match (TB_ENOENT), as in tb_pattern_match. */
int tb_pattern_param(const char *pattern, const char *name, const char *param,
                     char *out, size_t outsz)
{
    tb__pattern p;
    tb__name n;
    if (param == NULL || (out == NULL && outsz > 0))
        return TB_EINVAL;
    if (outsz > 0)
        out[0] = '\0';
    if (tb__pattern_compile(&p, pattern) != 0)
        return TB_EINVAL;
    if (tb__name_split(&n, name) != 0)
        return TB_ENOENT;
    return tb__pattern_param_split(&p, &n, param, out, outsz);
}
