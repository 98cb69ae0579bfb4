/* fuzz_jwt_claims.c - client tokens (service/client_token.c): everything
 * tb__jwt_check does with a token but the signature, which a verifier of
 * this target's accepts or refuses as the first byte says. Bit 0 of that
 * byte: the rest is the token as sent; else it is "header\npayload\nsig"
 * and the target base64url-encodes the header and payload (JSON, which
 * mutations then change directly). Bit 1: http.jwt_issuer and
 * http.jwt_audience are set. What is accepted holds an "exp" not yet past,
 * valid patterns within the limit, a "sub" safe to log, and grants its own
 * patterns; a refusal has a known code and never quotes the token. */
#include "client_token.h"
#include "fuzz.h"

#define NOW_US INT64_C(1800000000000000) /* 2027-01-15 */
#define MAX_PATTERNS 16

static int sig_ok; /* the verifier's answer for this input */

static int verify(tb__jwt_verifier *v, const char *token, tb__jwt_alg alg)
{
    (void)v;
    FUZZ_CHECK(token != NULL && alg == TB__JWT_HS256);
    return sig_ok ? 0 : TB_EACCES;
}

static void verifier_free(tb__jwt_verifier *v)
{
    (void)v;
}

static const tb__jwt_verifier_ops ops = {"fuzz", verify, verifier_free};

static tb__jwt *new_jwt(int with_iss_aud)
{
    static tb_app_config cfgs[2]; /* the result keeps a pointer to it */
    tb_app_config *c = &cfgs[with_iss_aud];
    tb_app_config_init(c);
    c->http.jwt_secret = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
    if (with_iss_aud) {
        c->http.jwt_issuer = "https://issuer.example";
        c->http.jwt_audience = "taskbus";
    }
    static tb__jwt_verifier v = {&ops};
    tb__jwt *j = NULL;
    FUZZ_CHECK(tb__jwt_new(c, &j) == 0 && j != NULL);
    tb__jwt_set_verifier(j, &v);
    return j;
}

/* base64url without padding of n bytes at in, appended to out at *o. */
static void b64url(const char *in, size_t n, char *out, size_t *o)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = (const unsigned char *)in;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[(*o)++] = a[v >> 18 & 63];
        out[(*o)++] = a[v >> 12 & 63];
        if (i + 1 < n)
            out[(*o)++] = a[v >> 6 & 63];
        if (i + 2 < n)
            out[(*o)++] = a[v & 63];
    }
}

/* "header\npayload\nsig" made a token: NUL-terminated, *len bytes. */
static char *build(const char *text, size_t size, size_t *len)
{
    char *out = malloc(2 * size + 8);
    FUZZ_CHECK(out != NULL);
    const char *nl1 = memchr(text, '\n', size);
    const char *nl2 =
        nl1 ? memchr(nl1 + 1, '\n', size - (size_t)(nl1 + 1 - text)) : NULL;
    size_t o = 0;
    if (!nl1 || !nl2) {
        b64url(text, size, out, &o);
    } else {
        b64url(text, (size_t)(nl1 - text), out, &o);
        out[o++] = '.';
        b64url(nl1 + 1, (size_t)(nl2 - nl1 - 1), out, &o);
        out[o++] = '.';
        size_t sl = size - (size_t)(nl2 + 1 - text);
        memcpy(out + o, nl2 + 1, sl);
        o += sl;
    }
    out[o] = '\0';
    *len = o;
    return out;
}

static int safe_sub(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f || *s == '"' || *s == '\\')
            return 0;
    return 1;
}

static void check_claims(const tb__jwt_claims *c)
{
    FUZZ_CHECK(strlen(c->sub) < sizeof c->sub && safe_sub(c->sub));
    FUZZ_CHECK(c->until_us >= NOW_US);
    for (int r = TB__JWT_SUBSCRIBE; r <= TB__JWT_DISPATCH; r++) {
        FUZZ_CHECK(c->n[r] >= 0 && c->n[r] <= MAX_PATTERNS);
        for (int i = 0; i < c->n[r]; i++) {
            FUZZ_CHECK(tb_pattern_valid(c->pat[r][i]) == 0);
            FUZZ_CHECK(tb__jwt_allows(c, (tb__jwt_right)r, c->pat[r][i]));
            char msg[TB__JWT_FORBIDDEN_MAX];
            tb__jwt_forbidden_message(c, (tb__jwt_right)r, c->pat[r][i], msg);
            FUZZ_CHECK(strlen(msg) < sizeof msg);
        }
    }
    tb__jwt_claims *copy = tb__jwt_claims_dup(c);
    FUZZ_CHECK(copy != NULL && copy->exp_s == c->exp_s);
    FUZZ_CHECK(strcmp(copy->sub, c->sub) == 0);
    for (int r = 0; r < 2; r++) {
        FUZZ_CHECK(copy->n[r] == c->n[r]);
        for (int i = 0; i < c->n[r]; i++)
            FUZZ_CHECK(strcmp(copy->pat[r][i], c->pat[r][i]) == 0);
    }
    tb__jwt_claims_free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tb__jwt *plain, *strict;
    if (!plain) {
        fuzz_quiet_logs();
        plain = new_jwt(0);
        strict = new_jwt(1);
    }
    if (size < 1)
        return 0;
    int raw = data[0] & 1;
    const tb__jwt *j = data[0] & 2 ? strict : plain;
    sig_ok = !(data[0] & 4);
    size_t len = size - 1;
    char *token = raw ? fuzz_cstr(data + 1, len)
                      : build((const char *)data + 1, len, &len);

    tb__jwt_claims *c = NULL;
    tb__jwt_refusal why;
    memset(&why, 0, sizeof why);
    int rc = tb__jwt_check(j, token, len, 64, MAX_PATTERNS, NOW_US, &c, &why);
    FUZZ_CHECK(rc == 0 || rc == TB_EACCES);
    if (rc == 0) {
        FUZZ_CHECK(c != NULL && sig_ok);
        check_claims(c);
        tb__jwt_claims_free(c);
    } else {
        FUZZ_CHECK(c == NULL && why.code != NULL);
        FUZZ_CHECK(strcmp(why.code, "invalid_token") == 0 ||
                   strcmp(why.code, "token_expired") == 0 ||
                   strcmp(why.code, "token_too_large") == 0);
        size_t ml = strnlen(why.message, sizeof why.message);
        FUZZ_CHECK(ml > 0 && ml < sizeof why.message);
        /* Never the token (a long enough piece of it would be seen). */
        if (len >= 24 && strlen(token) == len)
            FUZZ_CHECK(strstr(why.message, token) == NULL);
    }
    free(token);
    return 0;
}
