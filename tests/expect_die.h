/* expect_die.h: checking fatal errors, and what the file-format tests share.
 *
 * - expect_die: errors in ncsn print "ncsn: <where>: <what>" and exit(1). To test one
 *   without ending the test binary, the failing call runs in a forked child with its
 *   stderr on a pipe; the exit status and the text are then checked.
 * - a scratch directory per test binary (scratch_dir_create / scratch_dir_remove, scratch_path),
 *   and whole-file read / write helpers for building malformed files;
 * - whether /usr/bin/python3 with numpy is there for the optional cross-checks.
 * Include after harness.h.
 */
#ifndef NCSN_TEST_EXPECT_DIE_H
#define NCSN_TEST_EXPECT_DIE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness.h"

/* Child output kept for the checks (errors are single lines; checkpoint mismatches list
 * one line per tensor). */
#define EXPECT_DIE_CAPTURE 65536

static char expect_die_output[EXPECT_DIE_CAPTURE];

/* Runs fn(arg) in a child. Passes when the child exits with status 1, its stderr contains
 * every non-NULL string of `want` (a NULL-terminated list), and, if max_lines > 0, it wrote
 * at most max_lines lines. The captured stderr stays in expect_die_output. */
static inline int expect_die(const char *what, void (*fn)(void *), void *arg, const char *const *want, int max_lines) {
    harness_checks++;
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        fn(arg);
        fflush(stderr);
        _exit(0); /* fn returned: no error was raised */
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t k;
    while ((k = read(fds[0], expect_die_output + len, sizeof(expect_die_output) - 1 - len)) > 0) len += (size_t)k;
    expect_die_output[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);

    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 1;
    const char *missing = NULL;
    for (int i = 0; want && want[i]; i++)
        if (!strstr(expect_die_output, want[i])) {
            ok = 0;
            missing = want[i];
            break;
        }
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += expect_die_output[i] == '\n';
    if (max_lines > 0 && lines > max_lines) ok = 0;
    if (!ok) {
        harness_failures++;
        printf("  FAIL %s: ", what);
        if (!WIFEXITED(status))
            printf("child did not exit normally (signal %d)", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        else
            printf("exit status %d (want 1)", WEXITSTATUS(status));
        if (missing) printf(", stderr lacks \"%s\"", missing);
        if (max_lines > 0 && lines > max_lines) printf(", %d lines (want <= %d)", lines, max_lines);
        printf("\n    stderr: %s%s", expect_die_output, len && expect_die_output[len - 1] == '\n' ? "" : "\n");
        return 0;
    }
    /* Show the message: the tests double as a catalogue of the engine's error texts. */
    const char *nl = strchr(expect_die_output, '\n');
    printf("  ok   %s: %.*s%s\n", what, nl ? (int)(nl - expect_die_output) : (int)len, expect_die_output,
           lines > 1 ? " [...]" : "");
    return 1;
}

/* Shorthand for the common case: one line containing one or two strings. */
#define EXPECT_DIE1(what, fn, arg, s1) \
    do { const char *w_[] = {(s1), NULL}; expect_die((what), (fn), (arg), w_, 1); } while (0)
#define EXPECT_DIE2(what, fn, arg, s1, s2) \
    do { const char *w_[] = {(s1), (s2), NULL}; expect_die((what), (fn), (arg), w_, 1); } while (0)

/* ---- scratch directory and files ---------------------------------------------------------- */

static char scratch_dir[256];

/* mkdtemp("/tmp/ncsn_<name>_XXXXXX"); exits 2 (set-up failure) if it cannot. */
static inline void scratch_dir_create(const char *name) {
    snprintf(scratch_dir, sizeof(scratch_dir), "/tmp/ncsn_%s_XXXXXX", name);
    if (!mkdtemp(scratch_dir)) {
        perror("mkdtemp");
        exit(2);
    }
}

static inline void scratch_dir_remove(void) {
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch_dir);
    if (system(cmd) != 0) printf("  note: could not remove %s\n", scratch_dir);
}

/* scratch_dir/name into out. */
static inline void scratch_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", scratch_dir, name); }

/* Writes n bytes to path (test set-up; exits 2 on failure). */
static inline void file_write_all(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "test setup: cannot write %s\n", path);
        exit(2);
    }
}

static inline void write_text_file(const char *path, const char *text) { file_write_all(path, text, strlen(text)); }

/* The whole file, NUL-terminated (malloc'd; NULL if it cannot be read); *n = its size. */
static inline unsigned char *file_read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *b = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        b = malloc((size_t)len + 1);
        if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
            free(b);
            b = NULL;
        }
    }
    fclose(f);
    if (b) {
        b[len] = '\0';
        if (n) *n = (size_t)len;
    }
    return b;
}

/* Prints a text file (a child process's log) indented under a title line; nothing when the
 * file does not exist. */
static inline void print_file_indented(const char *path, const char *title) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    printf("    --- %s:\n", title);
    char line[512];
    while (fgets(line, sizeof line, f)) printf("    %s", line);
    fclose(f);
}

/* Whether /usr/bin/python3 can import numpy (the optional cross-checks need it). */
static inline int have_python_numpy(void) {
    static int cached = -1;
    if (cached < 0) cached = system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
    return cached;
}

#endif /* NCSN_TEST_EXPECT_DIE_H */
