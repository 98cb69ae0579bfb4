/* compose.c - the one place that puts an app together: the core's app and
 * the adapters its settings call for, among those this build has. */
#include "adapters.h"

/* Which adapters this build has: CMake's TB_WITH_HTTP (civetweb, wslay),
 * TB_WITH_REDIS (hiredis) and TB_WITH_JWT (libjwt) options; all on unless
 * the build says otherwise. No other file asks. */
#ifndef TB_WITH_HTTP
#define TB_WITH_HTTP 1
#endif
#ifndef TB_WITH_REDIS
#define TB_WITH_REDIS 1
#endif
#ifndef TB_WITH_JWT
#define TB_WITH_JWT 1
#endif

/* The event bus: Redis when redis.url is set, else in-process. 0, or
 * TB_EINVAL (logged) or TB_ENOMEM. */
static int compose_bus(tb_app *app, const tb_app_config *c)
{
    int rc = TB_ENOMEM;
    tb__bus *bus;
    if (c->redis.url && c->redis.url[0]) {
#if TB_WITH_REDIS
        bus = tb__bus_redis_new(app, &rc);
#else
        tb__log(TB_LOG_ERROR,
                "redis_url is set, but this taskbus was built without Redis "
                "(TB_WITH_REDIS=OFF): leave redis_url empty to use the "
                "in-process bus, or build with TB_WITH_REDIS=ON");
        return TB_EINVAL;
#endif
    } else {
        bus = tb__bus_memory_new(app);
    }
    if (!bus)
        return rc;
    if ((rc = tb__app_use_bus(app, bus)) != 0)
        bus->ops->free(bus);
    return rc;
}

/* The HTTP server and its websocket framing, when http.listen is set. 0,
 * or TB_EINVAL (logged) or TB_ENOMEM. */
static int compose_http(tb_app *app, const tb_app_config *c)
{
    if (!c->http.listen || !c->http.listen[0])
        return 0;
#if TB_WITH_HTTP
    tb__http_server *srv = tb__http_civetweb_new(app);
    if (!srv)
        return TB_ENOMEM;
    tb__app_use_http(app, srv, tb__ws_wslay_ops());
    return 0;
#else
    tb__log(TB_LOG_ERROR,
            "http_listen is set (%s), but this taskbus was built without "
            "its HTTP server (TB_WITH_HTTP=OFF): leave http_listen empty, "
            "or build with TB_WITH_HTTP=ON",
            c->http.listen);
    (void)app;
    return TB_EINVAL;
#endif
}

/* The verifier of client tokens, when http.jwt_secret or
 * http.jwt_public_key is set (the core has read the keys). 0, or TB_EINVAL
 * (logged) or TB_ENOMEM. */
static int compose_jwt(tb_app *app)
{
    const tb__jwt_keys *keys = tb__app_jwt_keys(app);
    if (!keys)
        return 0;
#if TB_WITH_JWT
    tb__jwt_verifier *v = tb__jwt_libjwt_new(keys);
    if (!v)
        return TB_ENOMEM;
    tb__app_use_jwt(app, v);
    return 0;
#else
    tb__log(TB_LOG_ERROR,
            "http.jwt_secret or http.jwt_public_key is set, but this taskbus "
            "was built without client tokens (TB_WITH_JWT=OFF, no libjwt): "
            "leave both empty, or build with TB_WITH_JWT=ON");
    return TB_EINVAL;
#endif
}

tb_app *tb_app_new(const tb_app_config *cfg, int *err)
{
    int rc = 0;
    tb_app *app = tb__app_create(cfg, &rc);
    if (app) {
        const tb_app_config *c = tb_app_get_config(app);
        if ((rc = compose_bus(app, c)) != 0 ||
            (rc = compose_http(app, c)) != 0 || (rc = compose_jwt(app)) != 0) {
            tb_app_free(app);
            app = NULL;
        }
    }
    if (err)
        *err = rc;
    return app;
}
