/* json.h - JSON parsing of outside input, bounded in nesting depth. */
#ifndef TASKBUS_JSON_H
#define TASKBUS_JSON_H

#include <stddef.h>

#include <jansson.h>

/* Stack that one level of nesting may take in jansson's recursive parser,
 * encoder and destructor together (measured on Debian 12's jansson 2.14:
 * about 80 bytes to parse a level and 340 to dump one; rounded up for
 * sanitizer builds and the caller's frames). json_max_depth levels must
 * fit in half a task's stack (see config_check in app.c). */
#define TB__JSON_STACK_PER_LEVEL 512

/* 1 if the JSON text nests arrays and objects deeper than max_depth (a
 * scalar is depth 0, "[]" depth 1, "[{}]" depth 2), else 0. Brackets inside
 * strings do not count. The text need not be valid JSON: this only bounds
 * what a parser would recurse into, before it does. O(len), no allocation. */
int tb__json_too_deep(const char *text, size_t len, int max_depth);

/* json_loadb() that first refuses text nested deeper than max_depth: then
 * it returns NULL with err->text saying so (and err->position at the first
 * bracket past the limit). Every parse of input from outside the process
 * (HTTP bodies, websocket messages, Redis messages, event data) goes
 * through here, so that jansson's recursion never runs deeper than the
 * stack was sized for. err may be NULL. */
json_t *tb__json_loadb(const char *text, size_t len, size_t flags,
                       int max_depth, json_error_t *err);

/* The event data a JSON value stands for (a websocket dispatch's or a
 * batch item's "data"): a string's text (U+0000 kept), "" for null or
 * NULL, else the value's compact JSON in *owned (the caller frees it; else
 * *owned is NULL). *d stays valid as long as v and *owned. 0, or -1 when
 * out of memory. */
int tb__json_event_data(const json_t *v, const char **d, size_t *len,
                        char **owned);

#endif /* TASKBUS_JSON_H */
