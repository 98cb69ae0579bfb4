/* pattern.h - pre-split event names and compiled patterns for the event
 * dispatcher's hot path (private). */
#ifndef TASKBUS_PATTERN_H
#define TASKBUS_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

/* Every offset and length below fits in a uint8_t because names and
 * patterns are at most TB_EVENT_NAME_MAX (200) bytes. */
#define TB__PARAM_NAME_MAX 64 /* bytes of a <param> name, without <> */

/* An event name split into segments once, so that matching it against many
 * patterns does not parse it again. Self-contained (holds a copy of the
 * name): it may be copied with memcpy or by assignment. */
typedef struct tb__name {
    uint8_t len;                           /* strlen(s) */
    uint8_t nseg;                          /* 1..TB_EVENT_SEGMENTS_MAX */
    uint8_t off[TB_EVENT_SEGMENTS_MAX];    /* segment i is s[off[i]..] */
    uint8_t seglen[TB_EVENT_SEGMENTS_MAX]; /* ... of seglen[i] bytes */
    uint64_t hash;                         /* tb__hash_str(s, len) */
    char s[TB_EVENT_NAME_MAX + 1];         /* the name, NUL-terminated */
} tb__name;

typedef enum {
    TB__SEG_LITERAL = 0, /* matches itself */
    TB__SEG_ANY,         /* "*": any one segment */
    TB__SEG_PARAM,       /* "<param>": any one segment, captured */
    TB__SEG_TAIL         /* ">", last only: one or more segments */
} tb__seg_kind;

/* The pattern syntax in one phrase, for error messages. */
#define TB__PATTERN_SYNTAX                                                     \
    "dot-separated segments of [A-Za-z0-9_-], \"*\" (any one segment), "       \
    "\"<param>\" (any one, captured) or, last, \">\" (one or more)"

/* A validated pattern. Self-contained like tb__name. For a TB__SEG_PARAM
 * segment, off/len give the param name inside the angle brackets. */
typedef struct tb__pattern {
    uint8_t len;   /* strlen(text) */
    uint8_t nseg;  /* 1..TB_EVENT_SEGMENTS_MAX */
    uint8_t nwild; /* segments that are "*", "<param>" or ">" */
    /* How many segments a name may have beyond nseg: 0, or with a last ">"
     * TB_EVENT_SEGMENTS_MAX (that ">" stands for one or more). */
    uint8_t spread;
    struct {
        uint8_t kind; /* tb__seg_kind */
        uint8_t off;
        uint8_t len;
    } seg[TB_EVENT_SEGMENTS_MAX];
    uint64_t hash;                    /* tb__hash_str(text, len) */
    char text[TB_EVENT_NAME_MAX + 1]; /* the pattern, NUL-terminated */
} tb__pattern;

/* Validates name and fills *n. Returns 0, TB_ENAMETOOLONG (more than
 * TB_EVENT_NAME_MAX bytes) or TB_EINVAL (NULL or malformed); on error *n is
 * unspecified and must not be used. Nothing is allocated. */
int tb__name_split(tb__name *n, const char *name);

/* Validates pattern and fills *p. Returns 0, TB_ENAMETOOLONG or TB_EINVAL
 * (NULL, malformed, bad or repeated param name); on error *p is unspecified.
 * Nothing is allocated. */
int tb__pattern_compile(tb__pattern *p, const char *pattern);

/* Why pattern is not valid: a short static phrase for an error message
 * ("\">\" may only be the last segment ..."), or NULL if it is valid. */
const char *tb__pattern_problem(const char *pattern);

/* 1 if p has no "*", "<param>" or ">" segment, so it matches exactly the name
 * equal to p->text (the dispatcher then indexes it by p->hash), else 0. */
int tb__pattern_is_exact(const tb__pattern *p);

/* The length of p's literal prefix, the segments before its first
 * wildcard ("a.b" of "a.b.*.c"; 0 when the first is one), and in *depth
 * how many segments that is. A name p matches has more segments than
 * *depth and begins with that prefix (then a '.'): the key by which the
 * listeners' index and the interest find the wildcard patterns a name may
 * match. */
size_t tb__pattern_prefix(const tb__pattern *p, int *depth);

/* 1 if the name n matches p, else 0. Both must come from a successful
 * tb__name_split / tb__pattern_compile. Does not allocate or parse. */
int tb__pattern_match_split(const tb__pattern *p, const tb__name *n);

/* 1 if every event name that want matches is matched by allow too (pattern
 * containment), else 0. Both from tb__pattern_compile. It holds exactly
 * when every segment count want's names can have is one allow takes (the
 * same count, or with a last ">" in allow at least its count, which a ">"
 * in want needs), and each of allow's segments is a wildcard or the same
 * literal as want's: "order.*" covers "order.<id>" and "order.created",
 * not "*.created", "order.*.x" nor "order.>"; "order.>" covers
 * "order.a.b", "order.*" and "order.>", not "order" nor ">"; ">" covers
 * every pattern. A param's name does not matter (it captures, it does not
 * restrict). */
int tb__pattern_covers(const tb__pattern *allow, const tb__pattern *want);

/* Index (0..nseg-1) of the segment of p that captures param (NUL-terminated,
 * without the angle brackets), or -1 if p has no such param. */
int tb__pattern_param_index(const tb__pattern *p, const char *param);

/* Copies the segment of n captured by p's <param> into out (outsz bytes,
 * NUL included) and returns its length. TB_ENOENT if p has no such param or
 * n does not match p; TB_ENAMETOOLONG if out is too small; TB_EINVAL if
 * param is NULL or out is NULL with outsz > 0. On any error out (when
 * outsz > 0) holds "". */
int tb__pattern_param_split(const tb__pattern *p, const tb__name *n,
                            const char *param, char *out, size_t outsz);

/* 64-bit FNV-1a of the len bytes at s. Fast and stable across runs and
 * processes; not keyed, so it is no defence against chosen collisions. */
uint64_t tb__hash_str(const char *s, size_t len);

/* FNV-1a of the len bytes at s started from a state mixed with seed, then
 * mixed with seed again: with a random seed, ids chosen to collide in one
 * process's table (or in tb__hash_str) do not collide in another's. Not
 * a cryptographic MAC; tb__hash_str is tb__hash_seeded with seed 0 before
 * the final mix. */
uint64_t tb__hash_seeded(const char *s, size_t len, uint64_t seed);

#endif /* TASKBUS_PATTERN_H */
