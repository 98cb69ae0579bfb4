/* test_client_token.c - unit tests for service/client_token.c: public key
 * files, every check of a token before and after its signature (at the
 * edges of the size, leeway and pattern limits), what claims allow, and,
 * in a build with libjwt, real signatures through adapters/jwt_libjwt.c
 * (algorithm confusion included). */
#include "harness.h"

#include <jansson.h>
#include <stdint.h>
#include <unistd.h>

#include "adapters.h"
#include "client_token.h"
#include "internal.h"

#if TB_WITH_JWT
#include <jwt.h>
#endif

/* Keys made with the openssl command for these tests (public halves
 * only). */
static const char RSA2048[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAoEysBinJcbyJjNWuVMp1\n"
    "CemtkZ2ff9zUw/dTAFOyw3pDjlgNR+QO/10mYNBcuDHm0DJYo+Syvuc3i6En3EGb\n"
    "b5ltT99ce7FeWXYA03MykGCb++1bNhpnCqjqqRFNBdLXA9q3y7moAdKbFsVMBHV6\n"
    "eFdf0i3I1pgA0pukTiDpSktdwle0Y7a/UwsArBcx9uXgA/zaZYi1R6JNF/4BaPBK\n"
    "hEgcnPU+AENgmYMNHS4HvbTRTc8ORHCOgR+z6xrC0IJui/PM5wEStrdD6+C235uj\n"
    "iEqThj1yauDUsO3pIKxMreBkaEXkYvNwaVCxhRvPAkq8xTHpG2+w7APcr2wEkW6l\n"
    "owIDAQAB\n"
    "-----END PUBLIC KEY-----\n";
static const char EC_P256[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE18/2Jft7tuaO8Bp3WE6Om+F4ROX6\n"
    "ZZBXFUu/0Y2lFDump6tPeyRIk+j497AhT447hB9vmlL7YbhijNq7Kw8uXw==\n"
    "-----END PUBLIC KEY-----\n";
static const char RSA1024[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDUQCx7Pi9Gj3B9w0lxP+DvYrnw\n"
    "zOfUFAn7h7xO3plGa/98Y6Eq3NUnxykjF2h34f80qs/1mD0OsYt5zcNpNi586658\n"
    "cMpvW7zvyux5VwE1XgHPSy1XBmttsxxCYFZQP+kAknflTVDET6xFqdMBULlgUGQ+\n"
    "QF9dwgfZlACY4aNYCQIDAQAB\n"
    "-----END PUBLIC KEY-----\n";
static const char EC_P384[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE7IL/8XeT6NCota+YBtoD1ICgfmEc/Rb0\n"
    "/P+ElENigzFPQzyKw/91GLRdmX6p34zORoWLd+TFUm7GSk/urBUdXjVWaA0RcksF\n"
    "SsEWSRCTJktRVaHfJI05s5wJwbSzuTi+\n"
    "-----END PUBLIC KEY-----\n";
static const char ED25519[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAiBkwxN7f/CD6LzmLM9YU23JJLRd9LawUMJXHdm/46P8=\n"
    "-----END PUBLIC KEY-----\n";

#define SECRET "0123456789abcdef0123456789abcdef"
#define NOW_S 1700000000LL
#define NOW_US (NOW_S * 1000000)
#define DEPTH 16
#define MAXPAT 4

/* ---------------------------------------------------------------- helpers */

static void b64url(const void *in, size_t n, char *out)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = a[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = a[v & 63];
    }
    out[o] = '\0';
}

/* header.payload.sig from JSON texts; the caller frees it. */
static char *mint(const char *header, const char *payload, const char *sig)
{
    size_t cap = (strlen(header) + strlen(payload)) * 2 + strlen(sig) + 8;
    char *t = malloc(cap);
    assert_non_null(t);
    b64url(header, strlen(header), t);
    strcat(t, ".");
    b64url(payload, strlen(payload), t + strlen(t));
    strcat(t, ".");
    strcat(t, sig);
    return t;
}

/* The fake verifier: a signature is good when it is "good"; it records
 * the calls, so a test can see that a token never got that far. */
typedef struct fake_verifier {
    tb__jwt_verifier v;
    int calls;
    tb__jwt_alg alg;
} fake_verifier;

static int fake_verify(tb__jwt_verifier *v, const char *token, tb__jwt_alg alg)
{
    fake_verifier *f = (fake_verifier *)v;
    f->calls++;
    f->alg = alg;
    const char *sig = strrchr(token, '.');
    return strcmp(sig + 1, "good") == 0 ? 0 : TB_EACCES;
}

static void fake_free(tb__jwt_verifier *v)
{
    (void)v; /* on the test's stack */
}

static const tb__jwt_verifier_ops fake_ops = {"fake", fake_verify, fake_free};

/* A path to a file holding text; the caller unlinks and frees it. */
static char *key_file(const char *text)
{
    char *path = strdup("/tmp/tb-client-token-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* An app config's client-token settings, and the tb__jwt made from it with
 * the fake verifier. */
typedef struct env {
    tb_app_config cfg;
    tb__jwt *j;
    fake_verifier fake;
    char *path;
} env;

static void env_init(env *e, const char *secret, const char *pem)
{
    memset(e, 0, sizeof *e);
    tb_app_config_init(&e->cfg);
    e->cfg.http.jwt_secret = secret;
    if (pem)
        e->cfg.http.jwt_public_key = e->path = key_file(pem);
    e->cfg.http.jwt_leeway_ms = 30000;
    assert_int_equal(tb__jwt_new(&e->cfg, &e->j), 0);
    assert_non_null(e->j);
    e->fake.v.ops = &fake_ops;
    tb__jwt_set_verifier(e->j, &e->fake.v);
}

static void env_free(env *e)
{
    tb__jwt_free(e->j);
    if (e->path) {
        unlink(e->path);
        free(e->path);
    }
}

/* Checks token at now_us: the status and (on refusal) the code; *out gets
 * the claims when accepted (else NULL) and must be freed. */
static int check_at(env *e, const char *token, int64_t now_us,
                    tb__jwt_claims **out, const char **code)
{
    tb__jwt_refusal why = {0};
    tb__jwt_claims *c = NULL;
    int rc = tb__jwt_check(e->j, token, strlen(token), DEPTH, MAXPAT, now_us,
                           &c, &why);
    if (rc == 0)
        assert_non_null(c);
    else
        assert_null(c);
    if (code)
        *code = rc ? why.code : NULL;
    if (rc && strlen(token) >= 8)
        assert_null(strstr(why.message, token)); /* never quoted */
    if (out)
        *out = c;
    else
        tb__jwt_claims_free(c);
    return rc;
}

/* The code a token with these parts gets at NOW_US ("" when accepted). */
static const char *code_of(env *e, const char *header, const char *payload,
                           const char *sig)
{
    char *t = mint(header, payload, sig);
    const char *code;
    int rc = check_at(e, t, NOW_US, NULL, &code);
    free(t);
    return rc ? code : "";
}

#define HS "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define EXP "\"exp\":1700000060"

/* ---------------------------------------------------------------- keys */

static void test_pem_alg(void **state)
{
    (void)state;
    tb__jwt_alg alg;
    const char *why;
    assert_int_equal(tb__jwt_pem_alg(RSA2048, strlen(RSA2048), &alg, &why), 0);
    assert_int_equal(alg, TB__JWT_RS256);
    assert_int_equal(tb__jwt_pem_alg(EC_P256, strlen(EC_P256), &alg, &why), 0);
    assert_int_equal(alg, TB__JWT_ES256);
    static const struct {
        const char *pem, *why;
    } bad[] = {
        {RSA1024, "2048"},
        {EC_P384, "P-256"},
        {ED25519, "other than RSA or EC"},
        {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
         "private key"},
        {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "certificate"},
        {"hello", "no \"-----BEGIN PUBLIC KEY-----\""},
        {"-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n", "END PUBLIC KEY"},
        {"-----BEGIN PUBLIC KEY-----\nM*kw\n-----END PUBLIC KEY-----\n",
         "not base64"},
        {"-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----\n",
         "not a public key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why = NULL;
        if (tb__jwt_pem_alg(bad[i].pem, strlen(bad[i].pem), &alg, &why) !=
                TB_EINVAL ||
            !why || !strstr(why, bad[i].why))
            fail_msg("bad key %zu: %s, want one saying %s", i,
                     why ? why : "(no reason)", bad[i].why);
    }
    /* Every prefix of a good key's text is refused, never read past. */
    for (size_t n = 0; n < strlen(EC_P256) - 2; n++)
        assert_int_equal(tb__jwt_pem_alg(EC_P256, n, &alg, &why), TB_EINVAL);
}

static void test_new(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    tb__jwt *j = (tb__jwt *)1;
    assert_int_equal(tb__jwt_new(&cfg, &j), 0);
    assert_null(j); /* off */

    cfg.http.jwt_secret = SECRET;
    assert_int_equal(tb__jwt_new(&cfg, &j), 0);
    const tb__jwt_keys *k = tb__jwt_keys_of(j);
    assert_int_equal(k->secret_len, 32);
    assert_null(k->pem);
    tb__jwt_free(j);

    char *path = key_file(EC_P256);
    cfg.http.jwt_secret = NULL;
    cfg.http.jwt_public_key = path;
    assert_int_equal(tb__jwt_new(&cfg, &j), 0);
    k = tb__jwt_keys_of(j);
    assert_null(k->secret);
    assert_int_equal(k->pem_alg, TB__JWT_ES256);
    assert_int_equal(k->pem_len, strlen(EC_P256));
    tb__jwt_free(j);
    unlink(path);
    free(path);

    path = key_file(RSA1024);
    cfg.http.jwt_public_key = path;
    assert_int_equal(tb__jwt_new(&cfg, &j), TB_EINVAL);
    assert_null(j);
    unlink(path);
    assert_int_equal(tb__jwt_new(&cfg, &j), TB_EINVAL); /* no such file */
    free(path);
}

/* tb_app_new refuses what would leave the other routes open or the key
 * weak: client tokens without an API token, a short secret. */
static void test_config_rules(void **state)
{
    (void)state;
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    cfg.http.jwt_secret = SECRET;
    int err = 0;
    tb_app *app = tb_app_new(&cfg, &err);
    assert_null(app);
    assert_int_equal(err, TB_EINVAL);
    cfg.http.api_token = "admin-token";
    cfg.http.jwt_secret = "0123456789abcdef0123456789abcde"; /* 31 */
    assert_null(tb_app_new(&cfg, &err));
    assert_int_equal(err, TB_EINVAL);
    cfg.http.jwt_secret = SECRET;
    app = tb_app_new(&cfg, &err);
#if TB_WITH_JWT
    assert_non_null(app);
    tb_app_free(app);
#else
    assert_null(app); /* a build without libjwt says so */
    assert_int_equal(err, TB_EINVAL);
#endif
}

/* ---------------------------------------------------------------- form */

static void test_size_edge(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    e.cfg.http.jwt_max_size = 512;
    const char *code;
    char payload[64];
    char *t;
    /* Exactly at the limit, and one byte over it, by the signature. */
    snprintf(payload, sizeof payload, "{" EXP "}");
    t = mint(HS, payload, "");
    size_t base = strlen(t);
    char *big = malloc(600);
    snprintf(big, 600, "%s", t);
    memset(big + base, 'A', 512 - base);
    big[512] = '\0';
    e.fake.calls = 0;
    assert_int_equal(check_at(&e, big, NOW_US, NULL, &code), TB_EACCES);
    assert_string_equal(code, "invalid_token"); /* a bad signature */
    assert_int_equal(e.fake.calls, 1);
    big[512] = 'A';
    big[513] = '\0';
    assert_int_equal(check_at(&e, big, NOW_US, NULL, &code), TB_EACCES);
    assert_string_equal(code, "token_too_large");
    assert_int_equal(e.fake.calls, 1); /* never looked at */
    free(big);
    free(t);
    env_free(&e);
}

static void test_form(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    const char *code;
    static const char *const garbage[] = {
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        ".eyJ9.good",
        "eyJ9..good",
        "....",
        "eyJhbGciOiJIUzI1NiJ9=.e30.good", /* padding */
        "eyJhbGciOiJIUzI1NiJ9+.e30.good", /* not base64url */
        "eyJhbGciOiJIUzI1NiJ9.e30.",      /* no signature */
        "e.e30.good",                     /* a stray 6 bits */
        "eyJhbGciOiJIUzI1NiJ8.e30.good",  /* bits left over */
        "bnVsbA.e30.good",                /* header "null" */
        "W10.e30.good",                   /* header [] */
        "e30.e30.good",                   /* header {}: no alg */
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        e.fake.calls = 0;
        if (check_at(&e, garbage[i], NOW_US, NULL, &code) != TB_EACCES ||
            strcmp(code, "invalid_token") != 0 || e.fake.calls)
            fail_msg("garbage %zu \"%s\": %s, %d verifier calls", i, garbage[i],
                     code ? code : "accepted", e.fake.calls);
    }
    /* Payloads that are no JSON object, or duplicate a claim, or nest
     * deeper than json_max_depth: refused before the verifier. */
    static const char *const payloads[] = {
        "[]",
        "1",
        "nul",
        "{" EXP ",\"exp\":1}",
        "{" EXP ",\"x\":",
        "{" EXP ",\"x\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}", /* 18 deep */
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        e.fake.calls = 0;
        assert_string_equal(code_of(&e, HS, payloads[i], "good"),
                            "invalid_token");
        assert_int_equal(e.fake.calls, 0);
    }
    /* At the depth bound: accepted. */
    assert_string_equal(
        code_of(&e, HS, "{" EXP ",\"x\":[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}",
                "good"),
        "");
    env_free(&e);
}

/* The header's alg decides which key, and only a key of that kind: "none"
 * never, HS256 only with the secret, RS256/ES256 only with a public key
 * for that algorithm. A refused alg never reaches the verifier. */
static void test_algorithms(void **state)
{
    (void)state;
    static const struct {
        const char *secret, *pem, *header;
        int ok;
        tb__jwt_alg alg;
    } cases[] = {
        {SECRET, NULL, HS, 1, TB__JWT_HS256},
        {SECRET, NULL, "{\"alg\":\"HS256\"}", 1, TB__JWT_HS256},
        {SECRET, NULL, "{\"alg\":\"none\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"NONE\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"hs256\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"HS512\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"RS256\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":256}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"HS256\",\"typ\":\"JWS\"}", 0, 0},
        {SECRET, NULL, "{\"alg\":\"HS256\",\"typ\":\"jwt\"}", 1, TB__JWT_HS256},
        {SECRET, NULL, "{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", 0, 0},
        {NULL, RSA2048, "{\"alg\":\"RS256\"}", 1, TB__JWT_RS256},
        {NULL, RSA2048, HS, 0, 0}, /* algorithm confusion */
        {NULL, RSA2048, "{\"alg\":\"ES256\"}", 0, 0},
        {NULL, RSA2048, "{\"alg\":\"none\"}", 0, 0},
        {NULL, EC_P256, "{\"alg\":\"ES256\"}", 1, TB__JWT_ES256},
        {NULL, EC_P256, "{\"alg\":\"RS256\"}", 0, 0},
        {NULL, EC_P256, HS, 0, 0},
        {SECRET, EC_P256, HS, 1, TB__JWT_HS256},
        {SECRET, EC_P256, "{\"alg\":\"ES256\"}", 1, TB__JWT_ES256},
        {SECRET, EC_P256, "{\"alg\":\"RS256\"}", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env e;
        env_init(&e, cases[i].secret, cases[i].pem);
        const char *code = code_of(&e, cases[i].header, "{" EXP "}", "good");
        if (cases[i].ok != (code[0] == '\0') || e.fake.calls != cases[i].ok ||
            (cases[i].ok && e.fake.alg != cases[i].alg))
            fail_msg("case %zu (%s): %s, %d verifier calls", i, cases[i].header,
                     code[0] ? code : "accepted", e.fake.calls);
        /* A bad signature with an accepted alg: refused by the verifier. */
        if (cases[i].ok)
            assert_string_equal(
                code_of(&e, cases[i].header, "{" EXP "}", "bad"),
                "invalid_token");
        env_free(&e);
    }
}

/* ---------------------------------------------------------------- claims */

static void test_time_claims(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    const char *code;
    char *t;
    assert_string_equal(code_of(&e, HS, "{}", "good"), "invalid_token");
    assert_string_equal(code_of(&e, HS, "{\"exp\":\"soon\"}", "good"),
                        "invalid_token");
    assert_string_equal(code_of(&e, HS, "{\"exp\":null}", "good"),
                        "invalid_token");
    /* exp + leeway (30 s) is the last moment. */
    t = mint(HS, "{\"exp\":1700000000}", "good");
    int64_t last = (NOW_S + 30) * 1000000;
    tb__jwt_claims *c;
    assert_int_equal(check_at(&e, t, last + 999, &c, &code), 0);
    assert_true(c->until_us == last);
    assert_true(c->exp_s == NOW_S);
    tb__jwt_claims_free(c);
    assert_int_equal(check_at(&e, t, last + 1000, NULL, &code), TB_EACCES);
    assert_string_equal(code, "token_expired");
    e.cfg.http.jwt_leeway_ms = 0;
    assert_int_equal(check_at(&e, t, NOW_US + 999, NULL, &code), 0);
    assert_int_equal(check_at(&e, t, NOW_US + 1000, NULL, &code), TB_EACCES);
    assert_string_equal(code, "token_expired");
    free(t);
    e.cfg.http.jwt_leeway_ms = 30000;
    /* A fraction of a second is cut; huge and tiny dates do not overflow. */
    assert_string_equal(code_of(&e, HS, "{\"exp\":1700000000.9}", "good"), "");
    assert_string_equal(
        code_of(&e, HS, "{\"exp\":9223372036854775807}", "good"), "");
    assert_string_equal(code_of(&e, HS, "{\"exp\":1e300}", "good"), "");
    assert_string_equal(code_of(&e, HS, "{\"exp\":-1e300}", "good"),
                        "token_expired");
    /* nbf: the token's start, with the same leeway. */
    assert_string_equal(code_of(&e, HS, "{" EXP ",\"nbf\":1700000030}", "good"),
                        "");
    assert_string_equal(code_of(&e, HS, "{" EXP ",\"nbf\":1700000031}", "good"),
                        "invalid_token");
    assert_string_equal(code_of(&e, HS, "{" EXP ",\"nbf\":\"x\"}", "good"),
                        "invalid_token");
    env_free(&e);
}

static void test_iss_aud_sub(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    /* Without an audience set, a token meant for some audience is not
     * ours (RFC 7519 4.1.3). */
    assert_string_equal(code_of(&e, HS, "{" EXP ",\"aud\":\"x\"}", "good"),
                        "invalid_token");
    assert_string_equal(code_of(&e, HS, "{" EXP ",\"iss\":\"any\"}", "good"),
                        "");
    e.cfg.http.jwt_audience = "taskbus";
    e.cfg.http.jwt_issuer = "https://idp.example";
    const char *iss = "\"iss\":\"https://idp.example\"";
    char p[320];
    snprintf(p, sizeof p, "{" EXP ",%s,\"aud\":\"taskbus\"}", iss);
    assert_string_equal(code_of(&e, HS, p, "good"), "");
    snprintf(p, sizeof p, "{" EXP ",%s,\"aud\":[\"a\",\"taskbus\"]}", iss);
    assert_string_equal(code_of(&e, HS, p, "good"), "");
    snprintf(p, sizeof p, "{" EXP ",%s,\"aud\":[\"a\"]}", iss);
    assert_string_equal(code_of(&e, HS, p, "good"), "invalid_token");
    snprintf(p, sizeof p, "{" EXP ",%s}", iss);
    assert_string_equal(code_of(&e, HS, p, "good"), "invalid_token");
    assert_string_equal(
        code_of(&e, HS, "{" EXP ",\"aud\":\"taskbus\",\"iss\":\"x\"}", "good"),
        "invalid_token");
    assert_string_equal(
        code_of(&e, HS, "{" EXP ",\"aud\":\"taskbus\"}", "good"),
        "invalid_token");
    e.cfg.http.jwt_audience = e.cfg.http.jwt_issuer = NULL;

    assert_string_equal(code_of(&e, HS, "{" EXP ",\"sub\":7}", "good"),
                        "invalid_token");
    /* U+0000 anywhere in the claims: refused (a C string would end). */
    assert_string_equal(
        code_of(&e, HS, "{" EXP ",\"sub\":\"a\\u0000\"}", "good"),
        "invalid_token");
    /* sub for the logs: no controls, quotes or backslashes; cut. */
    char *t = mint(HS, "{" EXP ",\"sub\":\"a\\nb\\\"c\\\\d\\u007fe\"}", "good");
    tb__jwt_claims *c;
    assert_int_equal(check_at(&e, t, NOW_US, &c, NULL), 0);
    assert_string_equal(c->sub, "a?b?c?d?e");
    tb__jwt_claims_free(c);
    free(t);
    char longsub[201];
    memset(longsub, 'y', 200);
    memcpy(longsub + 127, "\xc3\xa9", 2); /* é across the cut */
    longsub[200] = '\0';
    snprintf(p, sizeof p, "{" EXP ",\"sub\":\"%s\"}", longsub);
    t = mint(HS, p, "good");
    assert_int_equal(check_at(&e, t, NOW_US, &c, NULL), 0);
    assert_int_equal(strlen(c->sub), 127 + 3);
    assert_string_equal(c->sub + 127, "...");
    tb__jwt_claims_free(c);
    free(t);
    env_free(&e);
}

static void test_pattern_claims(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    static const struct {
        const char *claims, *code;
    } cases[] = {
        {"\"subscribe\":[]", ""},
        {"\"subscribe\":[\"a.*\",\"b\",\"c.<x>\",\"*\"]", ""}, /* MAXPAT */
        {"\"subscribe\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "invalid_token"},
        {"\"dispatch\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "invalid_token"},
        {"\"subscribe\":\"a.*\"", "invalid_token"},
        {"\"subscribe\":[1]", "invalid_token"},
        {"\"subscribe\":[\"a..b\"]", "invalid_token"},
        {"\"dispatch\":[\"a\\u0000b\"]", "invalid_token"},
        {"\"dispatch\":[\"a.<x>.<x>\"]", "invalid_token"},
        {"\"dispatch\":{}", "invalid_token"},
        {"\"subscribe\":[\">\",\"orders.>\",\"a.<x>.>\"]", ""},
        {"\"subscribe\":[\"a.>.b\"]", "invalid_token"},
        {"\"dispatch\":[\"orders>\"]", "invalid_token"},
        {"\"other\":[1,2,3]", ""}, /* other claims are the issuer's */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "{" EXP ",%s}", cases[i].claims);
        const char *code = code_of(&e, HS, p, "good");
        if (strcmp(code, cases[i].code) != 0)
            fail_msg("claims %s: \"%s\", want \"%s\"", cases[i].claims, code,
                     cases[i].code);
    }
    env_free(&e);
}

static void test_allows(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, NULL);
    char *t = mint(HS,
                   "{" EXP ",\"sub\":\"u1\",\"subscribe\":[\"order.*\","
                   "\"chat.<room>.msg\"],\"dispatch\":[\"chat.lobby.msg\"]}",
                   "good");
    tb__jwt_claims *c;
    assert_int_equal(check_at(&e, t, NOW_US, &c, NULL), 0);
    free(t);
    assert_string_equal(c->sub, "u1");
    assert_int_equal(c->n[TB__JWT_SUBSCRIBE], 2);
    assert_int_equal(c->n[TB__JWT_DISPATCH], 1);
    tb__jwt_claims *d = tb__jwt_claims_dup(c);
    tb__jwt_claims_free(c);
    c = d; /* the copy stands alone */
    const tb__jwt_right S = TB__JWT_SUBSCRIBE, D = TB__JWT_DISPATCH;
    assert_true(tb__jwt_allows(c, S, "order.*"));
    assert_true(tb__jwt_allows(c, S, "order.<id>"));
    assert_true(tb__jwt_allows(c, S, "order.created"));
    assert_false(tb__jwt_allows(c, S, "*.created"));
    assert_false(tb__jwt_allows(c, S, "order.*.x"));
    assert_false(tb__jwt_allows(c, S, "order"));
    assert_true(tb__jwt_allows(c, S, "chat.x.msg"));
    assert_false(tb__jwt_allows(c, S, "chat.x.typing"));
    assert_true(tb__jwt_allows(c, D, "chat.lobby.msg"));
    assert_false(tb__jwt_allows(c, D, "chat.other.msg"));
    assert_false(tb__jwt_allows(c, D, "order.created"));
    assert_false(tb__jwt_allows(c, S, "not a pattern"));
    tb__jwt_claims_free(c);

    /* A claim "orders.>" lets the client subscribe to anything under
     * orders., at any depth and with any pattern there, but not to more:
     * not ">" (everything), not "orders" itself, not "*.>". */
    t = mint(HS, "{" EXP ",\"subscribe\":[\"orders.>\"],\"dispatch\":[\">\"]}",
             "good");
    assert_int_equal(check_at(&e, t, NOW_US, &c, NULL), 0);
    free(t);
    assert_true(tb__jwt_allows(c, S, "orders.a.b"));
    assert_true(tb__jwt_allows(c, S, "orders.a"));
    assert_true(tb__jwt_allows(c, S, "orders.>"));
    assert_true(tb__jwt_allows(c, S, "orders.*"));
    assert_true(tb__jwt_allows(c, S, "orders.<id>.>"));
    assert_false(tb__jwt_allows(c, S, ">"));
    assert_false(tb__jwt_allows(c, S, "orders"));
    assert_false(tb__jwt_allows(c, S, "*.>"));
    assert_false(tb__jwt_allows(c, S, "*.a"));
    assert_false(tb__jwt_allows(c, S, "order.a"));
    assert_false(tb__jwt_allows(c, S, "orders.>.x"));
    /* ">" as a claim: everything. */
    assert_true(tb__jwt_allows(c, D, "a"));
    assert_true(tb__jwt_allows(c, D, "a.b.c.d.e.f.g.h"));
    assert_true(tb__jwt_allows(c, D, ">"));
    tb__jwt_claims_free(c);
    /* No claims: the API token, which may do anything. */
    assert_true(tb__jwt_allows(NULL, D, "anything.at.all"));
    /* A token without the claims may do nothing. */
    t = mint(HS, "{" EXP "}", "good");
    assert_int_equal(check_at(&e, t, NOW_US, &c, NULL), 0);
    free(t);
    assert_false(tb__jwt_allows(c, S, "a"));
    assert_false(tb__jwt_allows(c, D, "a"));
    assert_string_equal(c->sub, "");
    tb__jwt_claims_free(c);
    env_free(&e);
}

/* ---------------------------------------------------------------- libjwt */

#if TB_WITH_JWT
/* A token signed by libjwt with alg and key, claims as JSON. */
static char *libjwt_mint(jwt_alg_t alg, const void *key, size_t len,
                         const char *claims)
{
    jwt_t *j;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, alg, key, (int)len), 0);
    char *t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    char *copy = strdup(t);
    free(t);
    return copy;
}

static void test_libjwt(void **state)
{
    (void)state;
    env e;
    env_init(&e, SECRET, RSA2048);
    tb__jwt_verifier *v = tb__jwt_libjwt_new(tb__jwt_keys_of(e.j));
    assert_non_null(v);
    tb__jwt_set_verifier(e.j, v);
    const char *code;
    char claims[64];
    snprintf(claims, sizeof claims, "{\"exp\":%lld}", NOW_S + 60);
    char *t = libjwt_mint(JWT_ALG_HS256, SECRET, 32, claims);
    assert_int_equal(check_at(&e, t, NOW_US, NULL, &code), 0);
    free(t);
    t = libjwt_mint(JWT_ALG_HS256, "another-secret-another-secret-xx", 32,
                    claims);
    assert_int_equal(check_at(&e, t, NOW_US, NULL, &code), TB_EACCES);
    assert_string_equal(code, "invalid_token");
    free(t);
    /* Algorithm confusion: HS256 with the public key's text as the HMAC
     * secret. libjwt alone would take it; neither the core nor the
     * adapter does. */
    env e2;
    env_init(&e2, NULL, RSA2048);
    tb__jwt_verifier *v2 = tb__jwt_libjwt_new(tb__jwt_keys_of(e2.j));
    tb__jwt_set_verifier(e2.j, v2);
    t = libjwt_mint(JWT_ALG_HS256, RSA2048, strlen(RSA2048), claims);
    assert_int_equal(check_at(&e2, t, NOW_US, NULL, &code), TB_EACCES);
    assert_string_equal(code, "invalid_token");
    assert_int_equal(v2->ops->verify(v2, t, TB__JWT_RS256), TB_EACCES);
    assert_int_equal(v2->ops->verify(v2, t, TB__JWT_HS256), TB_EACCES);
    jwt_t *j = NULL;
    assert_int_equal(
        jwt_decode(&j, t, (const unsigned char *)RSA2048, (int)strlen(RSA2048)),
        0); /* what the guards are for */
    jwt_free(j);
    free(t);
    /* The secret's HS256 token against the RS256 key: no. */
    t = libjwt_mint(JWT_ALG_HS256, SECRET, 32, claims);
    assert_int_equal(v2->ops->verify(v2, t, TB__JWT_HS256), TB_EACCES);
    free(t);
    env_free(&e2);
    env_free(&e);
}
#endif

int main(void)
{
    tb_log_set_level(TB_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pem_alg),
        cmocka_unit_test(test_new),
        cmocka_unit_test(test_config_rules),
        cmocka_unit_test(test_size_edge),
        cmocka_unit_test(test_form),
        cmocka_unit_test(test_algorithms),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_iss_aud_sub),
        cmocka_unit_test(test_pattern_claims),
        cmocka_unit_test(test_allows),
#if TB_WITH_JWT
        cmocka_unit_test(test_libjwt),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
