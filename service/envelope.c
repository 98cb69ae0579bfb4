/* envelope.c - the JSON envelope of events on Redis, and the UTF-8 check. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "envelope.h"
#include "envelope_scan.h"
#include "history.h"
#include "internal.h"
#include "json.h"

/* Parse flags for JSON data and messages. JSON_ALLOW_NUL: "\u0000" inside a
 * string is valid JSON, and event data may hold U+0000; where a NUL would
 * end up in an id, name or origin, the checks below refuse it with a
 * precise reason. */
#define DATA_PARSE_FLAGS (JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES)
#define MSG_PARSE_FLAGS JSON_ALLOW_NUL

/* Origin of events that came from something other than a taskbus envelope
 * with an origin of its own. */
#define ORIGIN_EXTERNAL "external"

/* ---------------------------------------------------------------- UTF-8 */

#define HIGHS UINT64_C(0x8080808080808080)

int tb__utf8_valid(const char *s, size_t len)
{
    if (len == 0)
        return 1; /* s may be NULL */
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end = p + len;
    while (p < end) {
        /* ASCII fast path, 16 bytes a step: plain text (and JSON) is mostly
         * ASCII, and a dispatch of 128 bytes then costs 8 steps. */
        while (end - p >= 16) {
            uint64_t a, b;
            memcpy(&a, p, 8);
            memcpy(&b, p + 8, 8);
            if ((a | b) & HIGHS)
                break;
            p += 16;
        }
        if (p == end)
            break;
        unsigned c = p[0];
        if (c < 0x80) {
            p++;
            continue;
        }
        /* The well-formed sequences of Unicode's table 3-7: the bounds on
         * the second byte exclude overlongs (C0, C1, E0 80..9F, F0 80..8F),
         * surrogates (ED A0..BF) and code points above U+10FFFF (F4 90..,
         * F5..FF). */
        size_t left = (size_t)(end - p);
        if (c < 0xC2)
            return 0; /* a continuation byte, or an overlong C0/C1 lead */
        if (c < 0xE0) {
            if (left < 2 || (p[1] & 0xC0) != 0x80)
                return 0;
            p += 2;
            continue;
        }
        if (c < 0xF0) {
            unsigned lo = c == 0xE0 ? 0xA0 : 0x80;
            unsigned hi = c == 0xED ? 0x9F : 0xBF;
            if (left < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
                return 0;
            p += 3;
            continue;
        }
        if (c < 0xF5) {
            unsigned lo = c == 0xF0 ? 0x90 : 0x80;
            unsigned hi = c == 0xF4 ? 0x8F : 0xBF;
            if (left < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 ||
                (p[3] & 0xC0) != 0x80)
                return 0;
            p += 4;
            continue;
        }
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- encode */

static size_t skip_blanks(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len &&
           (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The parsed object or array when data (valid UTF-8) is one in full,
 * nested at most max_depth deep, else NULL: then it travels as a string.
 * What jansson would change fails the parse and so travels as text,
 * unchanged: duplicate keys (refused here), integers beyond 64 bits, reals
 * beyond a double. Reals that parse come back in jansson's exact 17-digit
 * form (0.1 arrives as 0.10000000000000001). */
static json_t *data_json(const char *data, size_t len, int max_depth)
{
    size_t i = skip_blanks(data, len);
    if (i < len && (data[i] == '{' || data[i] == '['))
        return tb__json_loadb(data, len, DATA_PARSE_FLAGS, max_depth, NULL);
    return NULL;
}

/* A thread's envelope object, reused from one encode to the next: filling
 * five members in place costs about 70 ns where building the object (a
 * hash table, five pairs, five values) costs about 300. obj owns a
 * reference to each member; data also holds one of its own, so that
 * swapping an object or array in for the string does not free it. */
typedef struct envelope_tpl {
    json_t *obj, *id, *name, *data, *ts, *origin;
} envelope_tpl;

/* A string longer than this is dropped after each encode instead of being
 * kept until the next one. */
#define TPL_KEEP_MAX 4096

static pthread_key_t tpl_key;
static int tpl_key_ok;
static pthread_once_t tpl_once = PTHREAD_ONCE_INIT;

static void tpl_free(void *p)
{
    envelope_tpl *t = p;
    if (!t)
        return;
    json_decref(t->data);
    json_decref(t->obj);
    free(t);
}

static void tpl_key_init(void)
{
    tpl_key_ok = pthread_key_create(&tpl_key, tpl_free) == 0;
}

static envelope_tpl *tpl_new(void)
{
    envelope_tpl *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->obj = json_object();
    t->id = json_string_nocheck("");
    t->name = json_string_nocheck("");
    t->data = json_string_nocheck("");
    t->ts = json_integer(0);
    t->origin = json_string_nocheck("");
    /* The _new setters take each reference even when they fail. */
    int bad = !t->obj || !t->data;
    bad |= json_object_set_new_nocheck(t->obj, "id", t->id);
    bad |= json_object_set_new_nocheck(t->obj, "name", t->name);
    bad |= json_object_set_nocheck(t->obj, "data", t->data);
    bad |= json_object_set_new_nocheck(t->obj, "ts", t->ts);
    bad |= json_object_set_new_nocheck(t->obj, "origin", t->origin);
    if (bad) {
        tpl_free(t);
        return NULL;
    }
    return t;
}

/* This thread's template, or a new one that *owned says the caller frees
 * (no thread-specific slot). NULL on ENOMEM. */
static envelope_tpl *tpl_get(int *owned)
{
    pthread_once(&tpl_once, tpl_key_init);
    envelope_tpl *t = tpl_key_ok ? pthread_getspecific(tpl_key) : NULL;
    *owned = 0;
    if (t)
        return t;
    t = tpl_new();
    if (t && (!tpl_key_ok || pthread_setspecific(tpl_key, t) != 0))
        *owned = 1;
    return t;
}

/* Dumps obj compactly into a new buffer (*out, NUL-terminated). hint: the
 * likely size. Returns the length or 0 on ENOMEM. */
static size_t dump_alloc(json_t *obj, size_t hint, char **out)
{
    /* Dump straight into the caller's buffer, sized so that it is nearly
     * always enough; json_dumpb reports the size it needed, so a second
     * dump fixes the rare miss. */
    size_t cap = hint;
    char *buf = malloc(cap + 1);
    size_t n = buf ? json_dumpb(obj, buf, cap, JSON_COMPACT) : 0;
    if (n > cap) {
        free(buf);
        cap = n;
        buf = malloc(cap + 1);
        n = buf ? json_dumpb(obj, buf, cap, JSON_COMPACT) : 0;
    }
    if (n == 0 || n > cap) {
        free(buf);
        return 0;
    }
    buf[n] = '\0';
    *out = buf;
    return n;
}

/* 1 if ev's strings are valid UTF-8, as both encoders need. */
static int event_utf8(const tb_event *ev)
{
    return tb__utf8_valid(ev->data, ev->len) &&
           tb__utf8_valid(ev->id, strlen(ev->id)) &&
           tb__utf8_valid(ev->name, strlen(ev->name)) &&
           tb__utf8_valid(ev->origin, strlen(ev->origin));
}

int tb__envelope_encode(const tb_event *ev, char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (!event_utf8(ev))
        return TB_EINVAL;
    int rc = tb__envelope_write(ev, out, outlen);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return rc;
    return tb__envelope_encode_jansson(ev, out, outlen);
}

int tb__envelope_encode_jansson(const tb_event *ev, char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    /* json_*_nocheck below trusts this check. */
    if (!event_utf8(ev))
        return TB_EINVAL;
    size_t idlen = strlen(ev->id);
    size_t namelen = strlen(ev->name);
    size_t originlen = strlen(ev->origin);

    int owned;
    envelope_tpl *t = tpl_get(&owned);
    if (!t)
        return TB_ENOMEM;
    /* The envelope is one level more: what it holds must leave room. */
    json_t *jdata = data_json(ev->data, ev->len, ev->max_depth - 1);
    int bad = json_string_setn_nocheck(t->id, ev->id, idlen);
    bad |= json_string_setn_nocheck(t->name, ev->name, namelen);
    bad |= json_integer_set(t->ts, ev->ts_us);
    bad |= json_string_setn_nocheck(t->origin, ev->origin, originlen);
    if (jdata) /* replaces a pair's value: cannot fail */
        bad |= json_object_set_nocheck(t->obj, "data", jdata);
    else
        bad |= json_string_setn_nocheck(t->data, ev->data, ev->len);
    if (ev->hops) /* only relayed events carry it */
        bad |=
            json_object_set_new_nocheck(t->obj, "hops", json_integer(ev->hops));
    if (ev->pos[0]) /* last: the publish script appends it the same way */
        bad |= json_object_set_new_nocheck(t->obj, "pos",
                                           json_string_nocheck(ev->pos));

    size_t n = 0;
    if (!bad)
        n = dump_alloc(t->obj,
                       ev->len + ev->len / 4 + idlen + namelen + originlen + 96,
                       out);

    if (ev->hops)
        bad |= json_object_del(t->obj, "hops");
    if (ev->pos[0])
        bad |= json_object_del(t->obj, "pos");
    if (jdata) {
        bad |= json_object_set_nocheck(t->obj, "data", t->data);
        json_decref(jdata);
    } else if (ev->len > TPL_KEEP_MAX) {
        bad |= json_string_setn_nocheck(t->data, "", 0);
    }
    if (owned || bad) { /* a template in doubt is not kept */
        if (!owned)
            pthread_setspecific(tpl_key, NULL);
        tpl_free(t);
    }
    if (n == 0)
        return TB_ENOMEM;
    *outlen = n;
    return 0;
}

/* ---------------------------------------------------------------- decode */

/* Delivers the whole message as the data of a fresh event. */
static int decode_raw(tb_app *app, const char *name, const char *msg,
                      size_t len, size_t max_size, tb_event **out,
                      const char **why)
{
    if (len > max_size) {
        *why = "message is larger than max_event_size";
        return TB_EMSGSIZE;
    }
    if (!tb__utf8_valid(msg, len)) {
        *why = "message is not UTF-8 text";
        return TB_EPROTO;
    }
    *out = tb__event_new(app, name, msg, len, NULL, ORIGIN_EXTERNAL, 0);
    return *out ? 0 : TB_ENOMEM;
}

int tb__envelope_id_valid(const char *s, size_t len)
{
    if (len == 0 || len >= TB_EVENT_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7E)
            return 0;
    return 1;
}

/* Checks the envelope root's members and builds the event from them. */
static int decode_envelope(tb_app *app, const char *name, json_t *root,
                           json_t *jid, json_t *jname, json_t *jdata,
                           size_t max_size, tb_event **out, const char **why)
{
    const char *id = NULL;
    if (jid) {
        if (!json_is_string(jid)) {
            *why = "id is not a string";
            return TB_EPROTO;
        }
        id = json_string_value(jid);
        if (!tb__envelope_id_valid(id, json_string_length(jid))) {
            *why = "id is not 1 to 39 printable ASCII characters";
            return TB_EPROTO;
        }
    }
    if (jname) {
        if (!json_is_string(jname)) {
            *why = "name is not a string";
            return TB_EPROTO;
        }
        size_t nlen = strlen(name);
        if (json_string_length(jname) != nlen ||
            memcmp(json_string_value(jname), name, nlen) != 0) {
            *why = "name does not match the channel";
            return TB_EPROTO;
        }
    }
    int64_t ts = 0; /* tb__event_new: the time of receipt */
    json_t *jts = json_object_get(root, "ts");
    if (jts) {
        if (!json_is_integer(jts)) {
            *why = "ts is not an integer";
            return TB_EPROTO;
        }
        if (json_integer_value(jts) < 0) {
            *why = "ts is negative";
            return TB_EPROTO;
        }
        ts = json_integer_value(jts);
    }
    const char *origin = ORIGIN_EXTERNAL;
    json_t *jorigin = json_object_get(root, "origin");
    if (jorigin) {
        if (!json_is_string(jorigin)) {
            *why = "origin is not a string";
            return TB_EPROTO;
        }
        origin = json_string_value(jorigin);
        size_t olen = json_string_length(jorigin);
        if (olen >= sizeof((tb_event *)0)->origin) {
            *why = "origin is longer than 47 bytes";
            return TB_EPROTO;
        }
        if (memchr(origin, '\0', olen)) {
            *why = "origin contains a NUL byte";
            return TB_EPROTO;
        }
    }

    const char *data;
    size_t dlen;
    char small[1024];
    char *big = NULL;
    if (json_is_string(jdata)) {
        /* jansson has checked the UTF-8; "\u0000" is U+0000, kept. */
        data = json_string_value(jdata);
        dlen = json_string_length(jdata);
    } else if (json_is_object(jdata) || json_is_array(jdata)) {
        dlen = json_dumpb(jdata, small, sizeof small, JSON_COMPACT);
        if (dlen == 0)
            return TB_ENOMEM; /* an object or array dumps to 2+ bytes */
        data = small;
        if (dlen > sizeof small && dlen <= max_size) {
            big = malloc(dlen);
            if (!big)
                return TB_ENOMEM;
            if (json_dumpb(jdata, big, dlen, JSON_COMPACT) != dlen) {
                free(big);
                return TB_ENOMEM;
            }
            data = big;
        }
    } else if (json_is_null(jdata)) {
        data = "";
        dlen = 0;
    } else {
        *why = "data has the wrong type";
        return TB_EPROTO;
    }
    if (dlen > max_size) {
        *why = "data is larger than max_event_size";
        return TB_EMSGSIZE;
    }
    int hops = 0;
    json_t *jhops = json_object_get(root, "hops");
    if (jhops) {
        if (!json_is_integer(jhops) || json_integer_value(jhops) < 0 ||
            json_integer_value(jhops) > 255) {
            free(big);
            *why = "hops is not an integer in 0..255";
            return TB_EPROTO;
        }
        hops = (int)json_integer_value(jhops);
    }
    tb__pos pos = {{0}, 0};
    json_t *jpos = json_object_get(root, "pos");
    if (jpos && (!json_is_string(jpos) ||
                 tb__pos_parse(json_string_value(jpos),
                               json_string_length(jpos), &pos) != 0 ||
                 pos.seq == 0)) {
        free(big);
        *why = "pos is not a position (<epoch>-<seq>)";
        return TB_EPROTO;
    }
    *out = tb__event_new(app, name, data, dlen, id, origin, ts);
    free(big);
    if (*out) {
        (*out)->hops = hops;
        if (pos.seq)
            tb__event_set_pos(*out, pos.epoch, pos.seq);
    }
    return *out ? 0 : TB_ENOMEM;
}

/* Makes the event of an envelope tb__envelope_scan accepted. */
static int decode_view(tb_app *app, const char *name,
                       const tb__envelope_view *v, size_t max_size,
                       tb_event **out, const char **why)
{
    char id[TB_EVENT_ID_MAX], origin[sizeof((tb_event *)0)->origin];
    memcpy(id, v->id, v->idlen);
    id[v->idlen] = '\0';
    if (v->origin) {
        memcpy(origin, v->origin, v->originlen);
        origin[v->originlen] = '\0';
    } else {
        memcpy(origin, ORIGIN_EXTERNAL, sizeof ORIGIN_EXTERNAL);
    }
    const char *data = v->data;
    size_t dlen = v->datalen;
    char small[1024];
    char *big = NULL;
    if (v->kind == TB__SCAN_DATA_ESCAPED) {
        /* Decoded, the string is at most as long as it was escaped. */
        char *buf = small;
        if (v->datalen > sizeof small && !(buf = big = malloc(v->datalen)))
            return TB_ENOMEM;
        dlen = tb__scan_unescape(v, buf);
        data = buf;
        if (dlen > max_size) {
            free(big);
            *why = "data is larger than max_event_size";
            return TB_EMSGSIZE;
        }
    }
    *out = tb__event_new(app, name, data, dlen, id, origin, v->ts);
    free(big);
    if (!*out)
        return TB_ENOMEM;
    (*out)->hops = v->hops;
    if (v->pos.seq)
        tb__event_set_pos(*out, v->pos.epoch, v->pos.seq);
    return 0;
}

int tb__envelope_decode(tb_app *app, const char *name, const char *msg,
                        size_t len, size_t max_size, tb_event **out,
                        const char **why)
{
    const char *ignored;
    if (!why)
        why = &ignored;
    *why = NULL;
    *out = NULL;
    tb__envelope_view v;
    if (tb__envelope_scan(msg, len, name, max_size,
                          app->cfg.core.json_max_depth, &v))
        return decode_view(app, name, &v, max_size, out, why);
    return tb__envelope_decode_jansson(app, name, msg, len, max_size, out, why);
}

int tb__envelope_decode_jansson(tb_app *app, const char *name, const char *msg,
                                size_t len, size_t max_size, tb_event **out,
                                const char **why)
{
    const char *ignored;
    if (!why)
        why = &ignored;
    *why = NULL;
    *out = NULL;
    size_t i = skip_blanks(msg, len);
    if (i == len || msg[i] != '{')
        return decode_raw(app, name, msg, len, max_size, out, why);

    json_t *root = tb__json_loadb(msg, len, MSG_PARSE_FLAGS,
                                  app->cfg.core.json_max_depth, NULL);
    if (!root) {
        *why = tb__json_too_deep(msg, len, app->cfg.core.json_max_depth)
                   ? "JSON nested deeper than json_max_depth"
                   : "invalid JSON";
        return TB_EPROTO;
    }
    json_t *jdata = json_object_get(root, "data");
    json_t *jid = json_object_get(root, "id");
    json_t *jname = json_object_get(root, "name");
    int rc;
    if (jdata && (jid || jname))
        rc = decode_envelope(app, name, root, jid, jname, jdata, max_size, out,
                             why);
    else /* JSON, but not an envelope */
        rc = decode_raw(app, name, msg, len, max_size, out, why);
    json_decref(root);
    return rc;
}
