/* client_token.c - client tokens (JWT): the app's keys, the checks around the
 * signature (size, form, algorithm, claims, expiry) and what the claims
 * allow. The signature itself is the verifier adapter's.
 *
 * Everything here runs before a library that parses JWTs sees the token:
 * the verifier gets only a token of bounded size whose header and payload
 * are JSON objects of bounded depth, and whose "alg" matches a key of the
 * right kind. libjwt 1.10 would otherwise verify an HS256 token with a
 * PEM public key as its HMAC secret (algorithm confusion), and parse JSON
 * nested as deep as jansson allows on a 100 KiB HTTP thread stack. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "json.h"
#include "client_token.h"
#include "log.h"
#include "pattern.h"

struct tb__jwt {
    const tb_app_config *cfg; /* the app's: leeway, size, aud, iss */
    tb__jwt_keys keys;
    char *pem; /* keys.pem, owned */
    tb__jwt_verifier *verifier;
};

/* ---------------------------------------------------------------- base64 */

static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Decodes n characters of base64 (url: the base64url alphabet, no padding,
 * nothing else allowed; else the standard one, where blanks and line ends
 * are skipped and '=' may end it) into out (room for n * 3 / 4 bytes).
 * Returns the length, or -1 if the text is not that. Leftover bits must be
 * zero, so that each byte string has one encoding. */
static long b64_decode(const char *in, size_t n, int url, unsigned char *out)
{
    unsigned acc = 0;
    int bits = 0, pad = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (!url && (c == ' ' || c == '\t' || c == '\r' || c == '\n'))
            continue;
        if (!url && c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c, url);
        if (v < 0 || pad)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (bits >= 6 || acc != 0 || pad > 2)
        return -1;
    return (long)o;
}

/* ---------------------------------------------------------------- keys */

/* A DER element at *p (before end): its tag and content, *p moved past
 * it. 0, or -1 if it does not fit. Lengths up to 3 bytes long. */
static int der_next(const unsigned char **p, const unsigned char *end, int *tag,
                    const unsigned char **content, size_t *len)
{
    const unsigned char *q = *p;
    if (end - q < 2)
        return -1;
    *tag = *q++;
    size_t n = *q++;
    if (n & 0x80) {
        int k = (int)(n & 0x7f);
        if (k < 1 || k > 3 || end - q < k)
            return -1;
        n = 0;
        while (k--)
            n = (n << 8) | *q++;
    }
    if ((size_t)(end - q) < n)
        return -1;
    *content = q;
    *len = n;
    *p = q + n;
    return 0;
}

static const unsigned char OID_RSA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7,
                                        0x0d, 0x01, 0x01, 0x01};
static const unsigned char OID_EC[] = {0x2a, 0x86, 0x48, 0xce,
                                       0x3d, 0x02, 0x01};
static const unsigned char OID_P256[] = {0x2a, 0x86, 0x48, 0xce,
                                         0x3d, 0x03, 0x01, 0x07};

static int oid_is(const unsigned char *c, size_t n, const unsigned char *oid,
                  size_t on)
{
    return n == on && memcmp(c, oid, on) == 0;
}

/* The SubjectPublicKeyInfo in der (RFC 5280): its algorithm, and for RSA
 * the modulus's size. */
static int spki_alg(const unsigned char *der, size_t len, tb__jwt_alg *alg,
                    const char **why)
{
    const unsigned char *p = der, *end = der + len, *spki, *algid, *oid, *bits;
    size_t n_spki, n_algid, n_oid, n_bits;
    int tag;
    *why = "not a public key (SubjectPublicKeyInfo)";
    if (der_next(&p, end, &tag, &spki, &n_spki) || tag != 0x30 || p != end)
        return TB_EINVAL;
    p = spki;
    end = spki + n_spki;
    if (der_next(&p, end, &tag, &algid, &n_algid) || tag != 0x30 ||
        der_next(&p, end, &tag, &bits, &n_bits) || tag != 0x03 || p != end ||
        n_bits < 1)
        return TB_EINVAL;
    const unsigned char *a = algid, *aend = algid + n_algid;
    if (der_next(&a, aend, &tag, &oid, &n_oid) || tag != 0x06)
        return TB_EINVAL;
    if (oid_is(oid, n_oid, OID_EC, sizeof OID_EC)) {
        const unsigned char *curve;
        size_t n_curve;
        if (der_next(&a, aend, &tag, &curve, &n_curve) || tag != 0x06 ||
            !oid_is(curve, n_curve, OID_P256, sizeof OID_P256)) {
            *why = "an EC key on another curve than P-256 (prime256v1): "
                   "ES256 needs P-256";
            return TB_EINVAL;
        }
        *alg = TB__JWT_ES256;
        return 0;
    }
    if (!oid_is(oid, n_oid, OID_RSA, sizeof OID_RSA)) {
        *why = "a key of a type other than RSA or EC (P-256)";
        return TB_EINVAL;
    }
    /* BIT STRING: no unused bits, then RSAPublicKey { n, e }. */
    const unsigned char *k = bits + 1, *kend = bits + n_bits, *seq, *mod;
    size_t n_seq, n_mod;
    if (bits[0] != 0 || der_next(&k, kend, &tag, &seq, &n_seq) || tag != 0x30)
        return TB_EINVAL;
    k = seq;
    if (der_next(&k, seq + n_seq, &tag, &mod, &n_mod) || tag != 0x02)
        return TB_EINVAL;
    while (n_mod && *mod == 0) {
        mod++;
        n_mod--;
    }
    if (n_mod * 8 < TB__JWT_RSA_BITS_MIN) {
        *why = "an RSA key shorter than 2048 bits";
        return TB_EINVAL;
    }
    *alg = TB__JWT_RS256;
    return 0;
}

int tb__jwt_pem_alg(const char *pem, size_t len, tb__jwt_alg *alg,
                    const char **why)
{
    static const char begin[] = "-----BEGIN PUBLIC KEY-----";
    static const char end[] = "-----END PUBLIC KEY-----";
    const char *b = memmem(pem, len, begin, sizeof begin - 1);
    if (!b) {
        *why = memmem(pem, len, "PRIVATE KEY-----", 16)
                   ? "a private key: give the public key (openssl pkey -in "
                     "KEY -pubout)"
               : memmem(pem, len, "CERTIFICATE-----", 16)
                   ? "a certificate: give its public key (openssl x509 -in "
                     "CERT -pubkey -noout)"
                   : "no \"-----BEGIN PUBLIC KEY-----\" block (PEM)";
        return TB_EINVAL;
    }
    b += sizeof begin - 1;
    const char *e = memmem(b, len - (size_t)(b - pem), end, sizeof end - 1);
    if (!e) {
        *why = "no \"-----END PUBLIC KEY-----\" line";
        return TB_EINVAL;
    }
    unsigned char *der = malloc((size_t)(e - b) / 4 * 3 + 3);
    if (!der) {
        *why = "out of memory";
        return TB_ENOMEM;
    }
    long n = b64_decode(b, (size_t)(e - b), 0, der);
    int rc = TB_EINVAL;
    if (n <= 0)
        *why = "the PEM block is not base64";
    else
        rc = spki_alg(der, (size_t)n, alg, why);
    free(der);
    return rc;
}

/* The file at path, NUL-terminated, at most TB__JWT_KEY_FILE_MAX bytes. */
static char *read_key_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tb__log(TB_LOG_ERROR,
                "invalid app config: http.jwt_public_key: cannot open %s: %s",
                path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(TB__JWT_KEY_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, TB__JWT_KEY_FILE_MAX + 1, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (!buf || err || n > TB__JWT_KEY_FILE_MAX) {
        tb__log(TB_LOG_ERROR, "invalid app config: http.jwt_public_key: %s: %s",
                path,
                !buf  ? "out of memory"
                : err ? "read error"
                      : "over 64 KiB: not a public key");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int tb__jwt_new(const tb_app_config *cfg, tb__jwt **out)
{
    *out = NULL;
    const char *secret = cfg->http.jwt_secret;
    const char *path = cfg->http.jwt_public_key;
    int has_secret = secret && secret[0], has_key = path && path[0];
    if (!has_secret && !has_key)
        return 0;
    tb__jwt *j = calloc(1, sizeof *j);
    if (!j)
        return TB_ENOMEM;
    j->cfg = cfg;
    if (has_secret) {
        j->keys.secret = (const unsigned char *)secret;
        j->keys.secret_len = strlen(secret);
    }
    if (has_key) {
        size_t len;
        const char *why;
        if (!(j->pem = read_key_file(path, &len))) {
            free(j);
            return TB_EINVAL;
        }
        int rc = tb__jwt_pem_alg(j->pem, len, &j->keys.pem_alg, &why);
        if (rc) {
            tb__log(TB_LOG_ERROR,
                    "invalid app config: http.jwt_public_key: %s: %s (want a "
                    "PEM \"PUBLIC KEY\": RSA of 2048 bits or more for RS256, "
                    "or EC P-256 for ES256)",
                    path, why);
            free(j->pem);
            free(j);
            return rc;
        }
        j->keys.pem = j->pem;
        j->keys.pem_len = len;
    }
    *out = j;
    return 0;
}

void tb__jwt_free(tb__jwt *j)
{
    if (!j)
        return;
    if (j->verifier)
        j->verifier->ops->free(j->verifier);
    free(j->pem);
    free(j);
}

const tb__jwt_keys *tb__jwt_keys_of(const tb__jwt *j)
{
    return &j->keys;
}

void tb__jwt_set_verifier(tb__jwt *j, tb__jwt_verifier *v)
{
    j->verifier = v;
}

/* ---------------------------------------------------------------- check */

static int refuse(tb__jwt_refusal *why, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(tb__jwt_refusal *why, const char *code, const char *fmt, ...)
{
    why->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    return TB_EACCES;
}

static const char *alg_name(tb__jwt_alg a)
{
    return a == TB__JWT_HS256   ? "HS256"
           : a == TB__JWT_RS256 ? "RS256"
                                : "ES256";
}

/* The algorithms j has keys for, for messages: "HS256 and RS256". */
static void accepted_algs(const tb__jwt *j, char *out, size_t outsz)
{
    snprintf(out, outsz, "%s%s%s", j->keys.secret ? "HS256" : "",
             j->keys.secret && j->keys.pem ? " and " : "",
             j->keys.pem ? alg_name(j->keys.pem_alg) : "");
}

/* Decodes the base64url part in[0..n) and parses it as a JSON object. NULL
 * with *why filled when it is not one. */
static json_t *part_json(const char *in, size_t n, int max_depth,
                         const char *what, tb__jwt_refusal *why)
{
    unsigned char *raw = malloc(n / 4 * 3 + 3);
    if (!raw) {
        refuse(why, "internal", "out of memory");
        return NULL;
    }
    long len = b64_decode(in, n, 1, raw);
    json_t *o = NULL;
    json_error_t jerr;
    if (len < 0)
        refuse(why, "invalid_token",
               "the token's %s is not base64url (a JWT is three base64url "
               "parts joined by '.', without padding)",
               what);
    else if (!(o = tb__json_loadb((const char *)raw, (size_t)len,
                                  JSON_REJECT_DUPLICATES, max_depth, &jerr)))
        refuse(why, "invalid_token", "the token's %s is not JSON: %s", what,
               jerr.text);
    else if (!json_is_object(o)) {
        refuse(why, "invalid_token", "the token's %s is not a JSON object",
               what);
        json_decref(o);
        o = NULL;
    }
    free(raw);
    return o;
}

/* The header's "alg", if j has a key for it. */
static int check_header(const tb__jwt *j, json_t *h, tb__jwt_alg *alg,
                        tb__jwt_refusal *why)
{
    char accepted[32];
    accepted_algs(j, accepted, sizeof accepted);
    json_t *a = json_object_get(h, "alg");
    if (!json_is_string(a))
        return refuse(why, "invalid_token",
                      "the token's header has no \"alg\" string");
    const char *s = json_string_value(a);
    if (strcasecmp(s, "none") == 0)
        return refuse(why, "invalid_token",
                      "unsigned tokens (alg \"none\") are never accepted; "
                      "this server accepts %s",
                      accepted);
    if (strcmp(s, "HS256") == 0 && j->keys.secret)
        *alg = TB__JWT_HS256;
    else if (j->keys.pem && strcmp(s, alg_name(j->keys.pem_alg)) == 0)
        *alg = j->keys.pem_alg;
    else
        return refuse(why, "invalid_token",
                      "the token's algorithm \"%.16s\" is not accepted: this "
                      "server accepts %s",
                      s, accepted);
    json_t *typ = json_object_get(h, "typ");
    if (typ && (!json_is_string(typ) ||
                strcasecmp(json_string_value(typ), "JWT") != 0))
        return refuse(why, "invalid_token",
                      "the token's header has a \"typ\" other than \"JWT\"");
    if (json_object_get(h, "crit"))
        return refuse(why, "invalid_token",
                      "the token's header has \"crit\" extensions, which "
                      "this server does not know");
    return 0;
}

/* Seconds since the epoch that a NumericDate is clamped to, so that it
 * may be turned into microseconds: the year 33658. */
#define DATE_MAX 1000000000000LL

/* A NumericDate claim as whole seconds (a fraction is cut), within
 * +-DATE_MAX; 0 with *v, 1 when absent, -1 when not a number. */
static int numeric_date(json_t *claims, const char *name, int64_t *v)
{
    json_t *c = json_object_get(claims, name);
    double d;
    if (!c)
        return 1;
    if (json_is_integer(c))
        d = (double)json_integer_value(c);
    else if (json_is_real(c))
        d = json_real_value(c);
    else
        return -1;
    *v = d > DATE_MAX ? DATE_MAX : d < -DATE_MAX ? -DATE_MAX : (int64_t)d;
    return 0;
}

/* "aud": a string or an array of strings, one of which must be want. */
static int audience_ok(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return 1;
    }
    return 0;
}

/* The claim right (absent: none) as valid patterns, at most max. */
static int check_patterns(json_t *claims, tb__jwt_right right, int max,
                          size_t *bytes, tb__jwt_refusal *why)
{
    const char *name = tb__jwt_right_name(right);
    json_t *a = json_object_get(claims, name);
    if (!a)
        return 0;
    if (!json_is_array(a))
        return refuse(why, "invalid_token",
                      "the token's \"%s\" claim is not an array of event "
                      "patterns",
                      name);
    if (json_array_size(a) > (size_t)max)
        return refuse(why, "invalid_token",
                      "the token's \"%s\" claim has %zu patterns, over %d "
                      "(ws.max_patterns)",
                      name, json_array_size(a), max);
    size_t i;
    json_t *p;
    json_array_foreach(a, i, p)
    {
        const char *s = json_string_value(p);
        const char *bad = !s ? "not a string"
                          : strlen(s) != json_string_length(p)
                              ? "a NUL character (\\u0000) in it"
                              : tb__pattern_problem(s);
        if (bad)
            return refuse(why, "invalid_token",
                          "the token's \"%s\"[%zu] is not a valid event "
                          "pattern: %s; a pattern is " TB__PATTERN_SYNTAX,
                          name, i, bad);
        *bytes += sizeof(char *) + strlen(s) + 1;
    }
    return 0;
}

/* The checks of the claims, past the signature. */
static int check_claims(const tb__jwt *j, json_t *claims, int max_patterns,
                        int64_t now_us, int64_t *exp, size_t *bytes,
                        tb__jwt_refusal *why)
{
    const tb_http_config *h = &j->cfg->http;
    int64_t now_ms = now_us / 1000, leeway = h->jwt_leeway_ms, nbf;
    int rc = numeric_date(claims, "exp", exp);
    if (rc)
        return refuse(why, "invalid_token",
                      rc > 0 ? "the token has no \"exp\" claim: client tokens "
                               "must expire"
                             : "the token's \"exp\" is not a number (seconds "
                               "since the epoch)");
    if (now_ms > *exp * 1000 + leeway)
        return refuse(why, "token_expired",
                      "the token expired %lld s ago (leeway %lld ms): get a "
                      "new one",
                      (long long)(now_ms / 1000 - *exp), (long long)leeway);
    rc = numeric_date(claims, "nbf", &nbf);
    if (rc < 0)
        return refuse(why, "invalid_token",
                      "the token's \"nbf\" is not a number");
    if (rc == 0 && now_ms + leeway < nbf * 1000)
        return refuse(why, "invalid_token",
                      "the token is not valid for another %lld s (nbf; "
                      "leeway %lld ms)",
                      (long long)(nbf - now_ms / 1000), (long long)leeway);
    json_t *iss = json_object_get(claims, "iss");
    if (h->jwt_issuer && h->jwt_issuer[0] &&
        (!json_is_string(iss) ||
         strcmp(json_string_value(iss), h->jwt_issuer) != 0))
        return refuse(why, "invalid_token",
                      "the token's issuer (\"iss\") is not the one this "
                      "server accepts (http.jwt_issuer)");
    json_t *aud = json_object_get(claims, "aud");
    if (aud && !(h->jwt_audience && h->jwt_audience[0]))
        return refuse(why, "invalid_token",
                      "the token names an audience (\"aud\") and this server "
                      "has none (http.jwt_audience): it is meant for "
                      "another service");
    if (h->jwt_audience && h->jwt_audience[0] &&
        !audience_ok(aud, h->jwt_audience))
        return refuse(why, "invalid_token",
                      "the token's audience (\"aud\") does not name this "
                      "server (http.jwt_audience)");
    json_t *sub = json_object_get(claims, "sub");
    if (sub && !json_is_string(sub))
        return refuse(why, "invalid_token",
                      "the token's \"sub\" is not a string");
    if ((rc = check_patterns(claims, TB__JWT_SUBSCRIBE, max_patterns, bytes,
                             why)) ||
        (rc = check_patterns(claims, TB__JWT_DISPATCH, max_patterns, bytes,
                             why)))
        return rc;
    return 0;
}

/* "sub" for log lines: controls, quotes and backslashes as '?', cut. */
static void safe_sub(char *out, json_t *sub)
{
    const char *s = json_is_string(sub) ? json_string_value(sub) : "";
    size_t n = json_is_string(sub) ? json_string_length(sub) : 0, o = 0;
    for (size_t i = 0; i < n && o < TB__JWT_SUB_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] =
            c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    if (n > TB__JWT_SUB_MAX) {
        /* Not inside a UTF-8 sequence: back to where the next one
         * starts. */
        while (o && ((unsigned char)s[o] & 0xc0) == 0x80)
            o--;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static tb__jwt_claims *claims_new(json_t *claims, int64_t exp, int64_t until,
                                  size_t bytes)
{
    tb__jwt_claims *c = malloc(sizeof *c + bytes);
    if (!c)
        return NULL;
    safe_sub(c->sub, json_object_get(claims, "sub"));
    c->exp_s = exp;
    c->until_us = until;
    char *p = (char *)(c + 1);
    for (int r = 0; r < 2; r++) {
        json_t *a = json_object_get(claims, tb__jwt_right_name(r));
        c->n[r] = (int)json_array_size(a);
        c->pat[r] = (const char **)(void *)p;
        p += (size_t)c->n[r] * sizeof(char *);
    }
    for (int r = 0; r < 2; r++) {
        json_t *a = json_object_get(claims, tb__jwt_right_name(r));
        for (int i = 0; i < c->n[r]; i++) {
            const char *s = json_string_value(json_array_get(a, (size_t)i));
            size_t n = strlen(s) + 1;
            memcpy(p, s, n);
            c->pat[r][i] = p;
            p += n;
        }
    }
    return c;
}

int tb__jwt_check(const tb__jwt *j, const char *token, size_t len,
                  int max_depth, int max_patterns, int64_t now_us,
                  tb__jwt_claims **out, tb__jwt_refusal *why)
{
    *out = NULL;
    int max = j->cfg->http.jwt_max_size;
    if (len > (size_t)max)
        return refuse(why, "token_too_large",
                      "the token is %zu bytes, over %d (http.jwt_max_size)",
                      len, max);
    const char *d1 = memchr(token, '.', len);
    const char *d2 =
        d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) ||
        d1 == token || d2 == d1 + 1)
        return refuse(why, "invalid_token",
                      "not a JWT: a JWT is three base64url parts joined by "
                      "'.' (header.payload.signature)");
    json_t *header =
        part_json(token, (size_t)(d1 - token), max_depth, "header", why);
    if (!header)
        return strcmp(why->code, "internal") ? TB_EACCES : TB_ENOMEM;
    tb__jwt_alg alg = 0;
    int rc = check_header(j, header, &alg, why);
    json_decref(header);
    if (rc)
        return rc;
    if (d2 + 1 == token + len)
        return refuse(why, "invalid_token", "the token has no signature");
    json_t *claims =
        part_json(d1 + 1, (size_t)(d2 - d1 - 1), max_depth, "payload", why);
    if (!claims)
        return strcmp(why->code, "internal") ? TB_EACCES : TB_ENOMEM;
    if (!j->verifier) {
        json_decref(claims);
        return refuse(why, "invalid_token", "no verifier for client tokens");
    }
    rc = j->verifier->ops->verify(j->verifier, token, alg);
    if (rc) {
        json_decref(claims);
        if (rc == TB_ENOMEM)
            return rc;
        return refuse(why, "invalid_token",
                      "the token's %s signature is not valid for this "
                      "server's key",
                      alg_name(alg));
    }
    int64_t exp = 0;
    size_t bytes = 0;
    rc = check_claims(j, claims, max_patterns, now_us, &exp, &bytes, why);
    if (rc == 0) {
        int64_t until =
            exp * 1000000 + (int64_t)j->cfg->http.jwt_leeway_ms * 1000;
        if (!(*out = claims_new(claims, exp, until, bytes)))
            rc = TB_ENOMEM;
    }
    json_decref(claims);
    return rc;
}

/* ---------------------------------------------------------------- claims */

void tb__jwt_claims_free(tb__jwt_claims *c)
{
    free(c);
}

tb__jwt_claims *tb__jwt_claims_dup(const tb__jwt_claims *c)
{
    if (!c)
        return NULL;
    size_t bytes = 0;
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < c->n[r]; i++)
            bytes += sizeof(char *) + strlen(c->pat[r][i]) + 1;
    tb__jwt_claims *d = malloc(sizeof *d + bytes);
    if (!d)
        return NULL;
    memcpy(d, c, sizeof *d);
    char *p = (char *)(d + 1);
    for (int r = 0; r < 2; r++) {
        d->pat[r] = (const char **)(void *)p;
        p += (size_t)c->n[r] * sizeof(char *);
    }
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < c->n[r]; i++) {
            size_t n = strlen(c->pat[r][i]) + 1;
            memcpy(p, c->pat[r][i], n);
            d->pat[r][i] = p;
            p += n;
        }
    return d;
}

const char *tb__jwt_right_name(tb__jwt_right right)
{
    return right == TB__JWT_SUBSCRIBE ? "subscribe" : "dispatch";
}

void tb__jwt_forbidden_message(const tb__jwt_claims *c, tb__jwt_right right,
                               const char *pattern, char *out)
{
    snprintf(out, TB__JWT_FORBIDDEN_MAX,
             "the client token (sub \"%s\") does not allow %s \"%.200s\": "
             "its \"%s\" claim has no pattern that covers it",
             c ? c->sub : "",
             right == TB__JWT_SUBSCRIBE ? "subscribing to" : "dispatching",
             pattern, tb__jwt_right_name(right));
}

int tb__jwt_allows(const tb__jwt_claims *c, tb__jwt_right right,
                   const char *pattern)
{
    if (!c)
        return 1;
    tb__pattern want, allow;
    if (tb__pattern_compile(&want, pattern) != 0)
        return 0;
    for (int i = 0; i < c->n[right]; i++)
        if (tb__pattern_compile(&allow, c->pat[right][i]) == 0 &&
            tb__pattern_covers(&allow, &want))
            return 1;
    return 0;
}
