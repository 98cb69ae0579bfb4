/* client_token.h - client tokens (private): JWTs whose claims let a client
 * subscribe to and dispatch the events they name, on the event routes only. The
 * signature is checked by a verifier adapter (adapter.h); everything before
 * and after it is here. */
#ifndef TASKBUS_CLIENT_TOKEN_H
#define TASKBUS_CLIENT_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

#include "adapter.h" /* tb__jwt_alg, tb__jwt_keys, tb__jwt_verifier */

#define TB__JWT_SUB_MAX 128              /* bytes of "sub" kept for logs */
#define TB__JWT_KEY_FILE_MAX (64 * 1024) /* http.jwt_public_key's file */
#define TB__JWT_SECRET_MIN 32            /* bytes of an HS256 secret */
#define TB__JWT_RSA_BITS_MIN 2048        /* modulus of an RS256 key */

/* What a claim grants: the two taskbus claims, "subscribe" and
 * "dispatch", each a list of event patterns. */
typedef enum {
    TB__JWT_SUBSCRIBE = 0,
    TB__JWT_DISPATCH = 1
} tb__jwt_right;

/* The app's client-token state: its keys (owned), settings and verifier. */
typedef struct tb__jwt tb__jwt;

/* The claims of one checked token, in one allocation (free it with
 * tb__jwt_claims_free). Held by the request, or by the websocket connection
 * it opened, for its whole life. */
typedef struct tb__jwt_claims {
    char sub[TB__JWT_SUB_MAX + 4]; /* "sub" made safe to log (controls,
                                      quotes and backslashes as '?', cut
                                      with "..."); "" without one */
    int64_t exp_s;                 /* "exp", seconds since the epoch */
    int64_t until_us;              /* exp + http.jwt_leeway: the rights end then
                                      (CLOCK_REALTIME, microseconds) */
    int n[2];                      /* patterns per tb__jwt_right */
    const char **pat[2];           /* valid patterns, in the same allocation */
} tb__jwt_claims;

/* Why a token was refused: a 401 with a stable code ("invalid_token",
 * "token_expired", "token_too_large") and a message that never quotes the
 * token. */
typedef struct tb__jwt_refusal {
    const char *code;
    char message[256];
} tb__jwt_refusal;

/* Reads cfg's client-token settings (cfg must outlive the result): the
 * HS256 secret and the public key file (read now: a PEM "PUBLIC KEY", RSA
 * of at least 2048 bits for RS256 or EC P-256 for ES256). Neither set:
 * *out = NULL and 0 (client tokens off). Else 0 with *out, or TB_EINVAL
 * (the reason logged: unreadable file, not a public key, an unsupported key
 * type) or TB_ENOMEM. The app owns *out; no verifier yet. */
int tb__jwt_new(const tb_app_config *cfg, tb__jwt **out);

/* Frees j (its verifier through its ops; the keys wiped first). NULL: a
 * no-op. */
void tb__jwt_free(tb__jwt *j);

/* The keys a verifier needs, valid as long as j. */
const tb__jwt_keys *tb__jwt_keys_of(const tb__jwt *j);

/* Gives j its verifier (compose.c); j owns it from then on. */
void tb__jwt_set_verifier(tb__jwt *j, tb__jwt_verifier *v);

/* Checks token (len bytes, NUL-terminated), in this order, each before
 * anything costlier: its size (http.jwt_max_size), its form (three
 * base64url parts), its header (an object with an "alg" among those j has a
 * key for: never "none", never HS256 against a public key, no "crit"), its
 * payload (a JSON object, no duplicate members, nested at most max_depth),
 * its signature (the verifier), then its claims: "exp" (required) and "nbf"
 * against now_us with http.jwt_leeway, "iss" and "aud" against
 * http.jwt_issuer and http.jwt_audience (a token with an "aud" needs
 * http.jwt_audience set), "sub" (a string, if any), "subscribe" and
 * "dispatch" (arrays of at most max_patterns valid patterns, if any).
 * Returns 0 and *out (the caller's); or TB_EACCES with *why filled and *out
 * NULL; or TB_ENOMEM. Any thread. */
int tb__jwt_check(const tb__jwt *j, const char *token, size_t len,
                  int max_depth, int max_patterns, int64_t now_us,
                  tb__jwt_claims **out, tb__jwt_refusal *why);

/* NULL is a no-op. */
void tb__jwt_claims_free(tb__jwt_claims *c);

/* A copy of c (NULL: NULL), or NULL on ENOMEM. */
tb__jwt_claims *tb__jwt_claims_dup(const tb__jwt_claims *c);

/* 1 if c grants right on pattern (a valid pattern or event name): some
 * pattern of that claim covers it (every name it matches, that pattern
 * matches too; tb__pattern_covers), else 0. c NULL (the API token, or no
 * credentials needed) grants everything. */
int tb__jwt_allows(const tb__jwt_claims *c, tb__jwt_right right,
                   const char *pattern);

/* The message of a "forbidden" answer: c (NULL: no sub) does not grant
 * right on pattern. out holds TB__JWT_FORBIDDEN_MAX bytes. */
#define TB__JWT_FORBIDDEN_MAX 640
void tb__jwt_forbidden_message(const tb__jwt_claims *c, tb__jwt_right right,
                               const char *pattern, char *out);

/* The claim's name, "subscribe" or "dispatch". */
const char *tb__jwt_right_name(tb__jwt_right right);

/* The algorithm a PEM public key (len bytes) is for: RS256 for an RSA key
 * of at least TB__JWT_RSA_BITS_MIN bits, ES256 for an EC key on P-256. 0
 * with *alg; TB_EINVAL with *why (static text) for anything else. */
int tb__jwt_pem_alg(const char *pem, size_t len, tb__jwt_alg *alg,
                    const char **why);

#endif /* TASKBUS_CLIENT_TOKEN_H */
