/* adapters.h - one constructor per adapter, for the composition point
 * (compose.c) alone: the core never calls them. */
#ifndef TASKBUS_ADAPTERS_H
#define TASKBUS_ADAPTERS_H

#include "adapter.h"

/* bus_memory.c: in-process fan-out, the embedded default. NULL on
 * ENOMEM. */
tb__bus *tb__bus_memory_new(tb_app *app);

/* bus_redis.c: Redis pub/sub through hiredis on its own libevent thread.
 * Reads the app's redis settings. Returns NULL and sets *err (TB_EINVAL
 * with a logged reason for a bad URL, TB_ENOMEM). Connecting starts in
 * start(). */
tb__bus *tb__bus_redis_new(tb_app *app, int *err);

/* http_civetweb.c: the HTTP server on civetweb, for app's http.listen
 * (listening from start()). NULL on ENOMEM. */
tb__http_server *tb__http_civetweb_new(tb_app *app);

/* ws_wslay.c: websocket framing with wslay on a worker's event loop. A
 * static table. */
const tb__wsconn_ops *tb__ws_wslay_ops(void);

/* jwt_libjwt.c: client tokens' signatures checked with libjwt, with keys
 * (copied; what it points to must outlive the verifier). NULL on
 * ENOMEM. */
tb__jwt_verifier *tb__jwt_libjwt_new(const tb__jwt_keys *keys);

#endif /* TASKBUS_ADAPTERS_H */
