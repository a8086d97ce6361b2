/* progress.h: what a long-running command shows while it works (training, sampling).
 *
 * What it is: on a terminal, ONE line redrawn in place ("train 1200/300000  loss 31.52
 * 12.3 steps/s  1574 img/s  ETA 6h45m"); when stderr is not a terminal (a log file, CI),
 * plain lines printed only when the caller says a log point is reached. Rates are measured
 * from ncsn_progress_begin, so a resumed run reports its own speed, and the ETA is the
 * remaining units at that rate.
 * What it is not: a logger. Everything goes to stderr; nothing here buffers or allocates.
 *
 * Set NCSN_PROGRESS=plain (or =tty) to override the terminal detection (tests use it).
 */
#ifndef NCSN_PROGRESS_H
#define NCSN_PROGRESS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char what[32];        /* label at the start of the line: "train", "sample" */
    char unit[16];        /* what a unit is: "steps", "batches" */
    long start, total;    /* unit count at begin, and the count at which the job is done */
    long items_per_unit;  /* images per unit, for the images/s rate (0: not shown) */
    int tty;              /* redraw one line in place */
    int line_open;        /* a TTY line is on screen and has no newline yet */
    double t_begin;       /* ncsn_now() at begin */
    double t_last_draw;   /* TTY redraws are throttled to 10 per second */
    long done;            /* last count reported */
    char status[160];     /* caller's text, e.g. "loss 31.52" */
} ncsn_progress;

/* Monotonic wall-clock seconds. */
double ncsn_now(void);

void ncsn_progress_begin(ncsn_progress *p, const char *what, const char *unit, long start, long total,
                         long items_per_unit);
/* Sets the caller's status text shown after the counts (printf format). */
void ncsn_progress_status(ncsn_progress *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* `done` units are complete. On a TTY redraws the line (at most every 0.1 s, always when
 * done == total); otherwise prints nothing. Cheap enough to call every unit. */
void ncsn_progress_update(ncsn_progress *p, long done);
/* A log point: on a TTY the same as ncsn_progress_update without throttling; otherwise one
 * plain line with the counts, the status, the rates and the ETA. */
void ncsn_progress_log(ncsn_progress *p, long done);
/* Prints a message line (printf format) without breaking the progress line: on a TTY the
 * line is cleared first and redrawn at the next update. */
void ncsn_progress_message(ncsn_progress *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Ends the TTY line with a newline (a no-op otherwise). */
void ncsn_progress_end(ncsn_progress *p);

/* Formats seconds as "42s", "3m07s", "5h12m", "2d03h" into buf. Returns buf. */
char *ncsn_format_duration(char *buf, size_t bufsize, double seconds);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_PROGRESS_H */
