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

typedef struct tb__bus_ops {
    const char *name; /* "memory", "redis" */
    int (*start)(tb__bus *bus);
    /* Borrows ev (take a reference to keep it). 0 once the bus has taken
     * the event (and will deliver it), or a TB_E* code (TB_ENOTCONN when it
     * cannot reach its backend); never blocks for long. */
    int (*publish)(tb__bus *bus, tb_event *ev);
    void (*stop)(tb__bus *bus);
    void (*free)(tb__bus *bus);
} tb__bus_ops;

struct tb__bus {
    const tb__bus_ops *ops;
    tb_app *app;
};

/* adapters/bus_memory.c: in-process fan-out, the embedded default. */
tb__bus *tb__bus_memory_new(tb_app *app);

#endif /* TASKBUS_BUS_H */
