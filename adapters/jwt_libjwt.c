/* jwt_libjwt.c - checks client tokens' signatures with libjwt (Debian's
 * libjwt 1.10, the OpenSSL build).
 *
 * The core has checked the token before it gets here (size, form, a header
 * whose "alg" is one we hold a key of the right kind for, a payload of
 * bounded depth): libjwt 1.10 itself would take "none", and would check an
 * HS256 token against a public key's PEM text used as the HMAC secret.
 * libjwt 1.10 checks no claims; the core does. */
#include <errno.h>
#include <stdlib.h>

#include <jwt.h>

#include "adapters.h"

typedef struct libjwt_verifier {
    tb__jwt_verifier v;
    tb__jwt_keys keys; /* the core's, valid as long as the app */
} libjwt_verifier;

static jwt_alg_t libjwt_alg(tb__jwt_alg alg)
{
    switch (alg) {
    case TB__JWT_HS256:
        return JWT_ALG_HS256;
    case TB__JWT_RS256:
        return JWT_ALG_RS256;
    case TB__JWT_ES256:
        return JWT_ALG_ES256;
    }
    return JWT_ALG_INVAL;
}

static int libjwt_verify(tb__jwt_verifier *v, const char *token,
                         tb__jwt_alg alg)
{
    const libjwt_verifier *l = (const libjwt_verifier *)v;
    const unsigned char *key;
    size_t len;
    /* Each algorithm has its own key: an HS256 token is never checked
     * against the public key, nor an RS256/ES256 one against the secret. */
    if (alg == TB__JWT_HS256) {
        key = l->keys.secret;
        len = l->keys.secret_len;
    } else if (l->keys.pem && alg == l->keys.pem_alg) {
        key = (const unsigned char *)l->keys.pem;
        len = l->keys.pem_len;
    } else {
        return TB_EACCES;
    }
    if (!key)
        return TB_EACCES;
    jwt_t *j = NULL;
    int rc = jwt_decode(&j, token, key, (int)len);
    if (rc == ENOMEM)
        return TB_ENOMEM;
    /* The algorithm libjwt verified with is the header's: it must be the
     * one the core checked. */
    int ok = rc == 0 && j && jwt_get_alg(j) == libjwt_alg(alg);
    jwt_free(j);
    return ok ? 0 : TB_EACCES;
}

static void libjwt_free(tb__jwt_verifier *v)
{
    free(v);
}

static const tb__jwt_verifier_ops libjwt_ops = {
    .name = "libjwt",
    .verify = libjwt_verify,
    .free = libjwt_free,
};

tb__jwt_verifier *tb__jwt_libjwt_new(const tb__jwt_keys *keys)
{
    libjwt_verifier *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->v.ops = &libjwt_ops;
    l->keys = *keys;
    return &l->v;
}
