/* progress.c: the progress line and plain log lines (progress.h). */
#include "ncsn/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ncsn/common.h"

double ncsn_now(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) ncsn_die("clock_gettime(CLOCK_MONOTONIC) failed");
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *ncsn_format_duration(char *buf, size_t bufsize, double seconds) {
    if (!(seconds >= 0.0) || seconds > 1e9) {
        snprintf(buf, bufsize, "?");
        return buf;
    }
    long s = (long)(seconds + 0.5);
    if (s < 60)
        snprintf(buf, bufsize, "%lds", s);
    else if (s < 3600)
        snprintf(buf, bufsize, "%ldm%02lds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, bufsize, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else
        snprintf(buf, bufsize, "%ldd%02ldh", s / 86400, (s % 86400) / 3600);
    return buf;
}

void ncsn_progress_begin(ncsn_progress *p, const char *what, const char *unit, long start, long total,
                         long items_per_unit) {
    memset(p, 0, sizeof *p);
    snprintf(p->what, sizeof p->what, "%s", what);
    snprintf(p->unit, sizeof p->unit, "%s", unit);
    p->start = start;
    p->total = total;
    p->done = start;
    p->items_per_unit = items_per_unit;
    const char *mode = getenv("NCSN_PROGRESS");
    if (mode && !strcmp(mode, "plain"))
        p->tty = 0;
    else if (mode && !strcmp(mode, "tty"))
        p->tty = 1;
    else
        p->tty = isatty(STDERR_FILENO);
    p->t_begin = ncsn_now();
    p->t_last_draw = -1.0;
}

void ncsn_progress_status(ncsn_progress *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->status, sizeof p->status, fmt, ap);
    va_end(ap);
}

/* "train 1200/300000  loss 31.52  12.3 steps/s  1574 img/s  ETA 6h45m" */
static void format_line(const ncsn_progress *p, char *line, size_t size) {
    double elapsed = ncsn_now() - p->t_begin;
    long units = p->done - p->start;
    double rate = elapsed > 0.0 ? (double)units / elapsed : 0.0;
    int n = snprintf(line, size, "%s %ld/%ld", p->what, p->done, p->total);
    if (p->status[0] && n >= 0 && (size_t)n < size) n += snprintf(line + n, size - (size_t)n, "  %s", p->status);
    if (units > 0 && n >= 0 && (size_t)n < size) {
        /* Three significant digits below 100, whole numbers above: "0.463", "12.3", "1574". */
        n += snprintf(line + n, size - (size_t)n, rate < 100.0 ? "  %.3g %s/s" : "  %.0f %s/s", rate, p->unit);
        double items = rate * (double)p->items_per_unit;
        if (p->items_per_unit > 0 && n >= 0 && (size_t)n < size)
            n += snprintf(line + n, size - (size_t)n, items < 100.0 ? "  %.3g img/s" : "  %.0f img/s", items);
        char eta[32];
        if (p->done < p->total && n >= 0 && (size_t)n < size)
            snprintf(line + n, size - (size_t)n, "  ETA %s",
                     ncsn_format_duration(eta, sizeof eta, (double)(p->total - p->done) / rate));
    }
}

static void draw_tty(ncsn_progress *p) {
    char line[320];
    format_line(p, line, sizeof line);
    /* \r + erase-to-end-of-line keeps a shorter line from leaving stale characters. */
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
    p->line_open = 1;
    p->t_last_draw = ncsn_now();
}

void ncsn_progress_update(ncsn_progress *p, long done) {
    p->done = done;
    if (!p->tty) return;
    if (done < p->total && p->t_last_draw >= 0.0 && ncsn_now() - p->t_last_draw < 0.1) return;
    draw_tty(p);
}

void ncsn_progress_log(ncsn_progress *p, long done) {
    p->done = done;
    if (p->tty) {
        draw_tty(p);
        return;
    }
    char line[320];
    format_line(p, line, sizeof line);
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

void ncsn_progress_message(ncsn_progress *p, const char *fmt, ...) {
    if (p->tty && p->line_open) {
        fputs("\r\033[K", stderr);
        p->line_open = 0;
        p->t_last_draw = -1.0; /* redraw at the next update */
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

void ncsn_progress_end(ncsn_progress *p) {
    if (p->tty && p->line_open) {
        draw_tty(p);
        fputc('\n', stderr);
        fflush(stderr);
        p->line_open = 0;
    }
}
