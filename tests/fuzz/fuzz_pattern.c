/* fuzz_pattern.c - event names and patterns (service/pattern.c): the input
 * is "pattern\nname"; both are validated, split, matched and their params
 * captured, a name built from a valid pattern must match it, and pattern
 * containment (tb__pattern_covers) must agree with matching. */
#include "fuzz.h"
#include "pattern.h"

/* The name that p matches with every "*", "<param>" or ">" segment
 * replaced by "x" (never longer than p), and with `more` further segments
 * "x" after a last ">" (more = 0 for none). Returns 0, or -1 when it does
 * not fit in outsz bytes or has too many segments. */
static int name_from(const tb__pattern *p, int more, char *out, size_t outsz)
{
    size_t o = 0;
    int tail = p->seg[p->nseg - 1].kind == TB__SEG_TAIL;
    int total = p->nseg + (tail ? more : 0);
    if (total > TB_EVENT_SEGMENTS_MAX)
        return -1;
    for (int i = 0; i < total; i++) {
        const char *s = "x";
        size_t len = 1;
        if (i < p->nseg && p->seg[i].kind == TB__SEG_LITERAL) {
            s = p->text + p->seg[i].off;
            len = p->seg[i].len;
        }
        if (o + (i > 0) + len + 1 > outsz)
            return -1;
        if (i)
            out[o++] = '.';
        memcpy(out + o, s, len);
        o += len;
    }
    out[o] = '\0';
    return 0;
}

static void check_params(const tb__pattern *p, const tb__name *n, int matches)
{
    for (int i = 0; i < p->nseg; i++) {
        if (p->seg[i].kind != TB__SEG_PARAM)
            continue;
        char param[TB__PARAM_NAME_MAX + 1], out[TB_EVENT_NAME_MAX + 1];
        FUZZ_CHECK(p->seg[i].len <= TB__PARAM_NAME_MAX);
        memcpy(param, p->text + p->seg[i].off, p->seg[i].len);
        param[p->seg[i].len] = '\0';
        FUZZ_CHECK(tb__pattern_param_index(p, param) == i);
        int rc = tb__pattern_param_split(p, n, param, out, sizeof out);
        if (!matches) {
            FUZZ_CHECK(rc == TB_ENOENT && out[0] == '\0');
            continue;
        }
        FUZZ_CHECK(rc == n->seglen[i] && (size_t)rc == strlen(out));
        FUZZ_CHECK(memcmp(out, n->s + n->off[i], (size_t)rc) == 0);
        /* Too small by one: refused, and out left empty. */
        rc = tb__pattern_param_split(p, n, param, out, n->seglen[i]);
        FUZZ_CHECK(rc == TB_ENAMETOOLONG && out[0] == '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *pattern = fuzz_cstr(data, size);
    char *name = fuzz_split_line(pattern);

    tb__pattern p;
    tb__name n;
    int prc = tb__pattern_compile(&p, pattern);
    int nrc = tb__name_split(&n, name);
    FUZZ_CHECK(prc == tb_pattern_valid(pattern));
    FUZZ_CHECK(nrc == tb_event_name_valid(name));
    FUZZ_CHECK(prc == 0 || prc == TB_EINVAL || prc == TB_ENAMETOOLONG);
    FUZZ_CHECK(nrc == 0 || nrc == TB_EINVAL || nrc == TB_ENAMETOOLONG);

    if (nrc == 0) {
        /* A name is a pattern that matches itself and nothing else. */
        tb__pattern self;
        FUZZ_CHECK(tb__pattern_compile(&self, name) == 0);
        FUZZ_CHECK(tb__pattern_is_exact(&self));
        FUZZ_CHECK(tb__pattern_match_split(&self, &n));
        FUZZ_CHECK(n.len == strlen(name) && strcmp(n.s, name) == 0);
        FUZZ_CHECK(n.nseg >= 1 && n.nseg <= TB_EVENT_SEGMENTS_MAX);
        FUZZ_CHECK(n.hash == tb__hash_str(name, n.len));
    }
    if (prc == 0) {
        FUZZ_CHECK(p.len == strlen(pattern) && strcmp(p.text, pattern) == 0);
        FUZZ_CHECK(p.nseg >= 1 && p.nseg <= TB_EVENT_SEGMENTS_MAX);
        FUZZ_CHECK(tb__pattern_is_exact(&p) == (p.nwild == 0));
        /* ">" only as the whole last segment, and then the spread. */
        for (int i = 0; i + 1 < p.nseg; i++)
            FUZZ_CHECK(p.seg[i].kind != TB__SEG_TAIL);
        int tail = p.seg[p.nseg - 1].kind == TB__SEG_TAIL;
        FUZZ_CHECK(p.spread == (tail ? TB_EVENT_SEGMENTS_MAX : 0));
        FUZZ_CHECK(tail == (p.text[p.len - 1] == '>' &&
                            (p.len == 1 || p.text[p.len - 2] == '.')));
        FUZZ_CHECK(tb__pattern_covers(&p, &p));

        char built[TB_EVENT_NAME_MAX + 1];
        tb__name bn;
        FUZZ_CHECK(name_from(&p, 0, built, sizeof built) == 0);
        FUZZ_CHECK(tb__name_split(&bn, built) == 0);
        FUZZ_CHECK(tb__pattern_match_split(&p, &bn));
        FUZZ_CHECK(tb_pattern_match(pattern, built));
        check_params(&p, &bn, 1);
        /* A ">" takes more segments too, up to the limit. */
        for (int more = 1; tail && more <= TB_EVENT_SEGMENTS_MAX; more++) {
            if (name_from(&p, more, built, sizeof built) != 0)
                break;
            FUZZ_CHECK(tb__name_split(&bn, built) == 0);
            FUZZ_CHECK(tb__pattern_match_split(&p, &bn));
            check_params(&p, &bn, 1);
        }
    }
    if (prc == 0 && nrc == 0) {
        int m = tb__pattern_match_split(&p, &n);
        FUZZ_CHECK(m == tb_pattern_match(pattern, name));
        if (tb__pattern_is_exact(&p))
            FUZZ_CHECK(m == (strcmp(pattern, name) == 0));
        if (m && p.spread == 0)
            FUZZ_CHECK(p.nseg == n.nseg);
        if (m)
            FUZZ_CHECK(n.nseg >= p.nseg);
        check_params(&p, &n, m);
        /* A name is the pattern of itself: p covers it exactly when p
         * matches it. */
        tb__pattern self;
        FUZZ_CHECK(tb__pattern_compile(&self, name) == 0);
        FUZZ_CHECK(tb__pattern_covers(&p, &self) == m);
    } else {
        FUZZ_CHECK(tb_pattern_match(pattern, name) == 0);
    }
    free(pattern);
    return 0;
}
