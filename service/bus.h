/* bus.h - the interface between the core and an event bus adapter. */
#ifndef TASKBUS_BUS_H
#define TASKBUS_BUS_H

#include "taskbus/taskbus.h"

/* A bus carries events from tb_dispatch() to every worker of every instance
 * that shares it. The core calls publish(); the bus calls tb__app_deliver()
 * for each event it receives (from any thread), which fans the event out to
 * the workers. An event published by this instance must reach this
 * instance's workers exactly once, through the bus (no local shortcut).
 *
 * Lifecycle, all called by the core on the thread that runs tb_app_run:
 * start() before the workers start, stop() after they have stopped, free()
 * from tb_app_free(). publish() is called from any thread between start and
 * stop, concurrently. */
typedef struct tb__bus tb__bus;

/* Called once per published event that was given one: status 0 when the
 * backend has acknowledged it, or the TB_E* code it was given up with. Runs
 * on the bus's own thread (or the publisher's, for the memory bus); it must
 * not block. */
typedef void (*tb__publish_cb)(int status, void *ud);

typedef struct tb__bus_ops {
    const char *name; /* "memory", "redis" */
    int (*start)(tb__bus *bus);
    /* Borrows ev (take a reference to keep it). Returns 0 once the bus has
     * taken the event (and will deliver it, resending it after a reconnect
     * if need be), or a TB_E* code (TB_ENOTCONN when it cannot reach its
     * backend, TB_ENOSPC when its queue is full); never blocks. cb may be
     * NULL; when publish fails it is never called. */
    int (*publish)(tb__bus *bus, tb_event *ev, tb__publish_cb cb, void *ud);
    /* Fills the state and counters; any thread. */
    void (*status)(tb__bus *bus, tb_bus_info *out);
    void (*stop)(tb__bus *bus);
    void (*free)(tb__bus *bus);
} tb__bus_ops;

struct tb__bus {
    const tb__bus_ops *ops;
    tb_app *app;
};

/* adapters/bus_memory.c: in-process fan-out, the embedded default. */
tb__bus *tb__bus_memory_new(tb_app *app);

/* adapters/bus_redis.c: Redis pub/sub through hiredis on its own libevent
 * thread. Reads the app's redis_* settings. Returns NULL and sets *err
 * (TB_EINVAL with a logged reason for a bad URL, TB_ENOMEM). Connecting
 * starts in start(). */
tb__bus *tb__bus_redis_new(tb_app *app, int *err);

#endif /* TASKBUS_BUS_H */
