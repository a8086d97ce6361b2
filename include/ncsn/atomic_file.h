/* atomic_file.h: replacing a file so that a crash never leaves half of it.
 *
 * What it is: the one write path of every file writer of the engine (safetensors
 * checkpoints, .npy, .npz, PNG). ncsn_atomic_open creates PATH.tmp beside PATH; writes go
 * there; ncsn_atomic_commit flushes, fsyncs, closes, renames PATH.tmp over PATH and fsyncs
 * the directory. Until the commit, PATH is untouched (the old file, or no file).
 * What it is not: a locking scheme; two processes writing one PATH race on PATH.tmp.
 * Errors: every failed call is fatal ("ncsn: PATH: <what>: <strerror>", exit 1) and
 * removes PATH.tmp first.
 */
#ifndef NCSN_ATOMIC_FILE_H
#define NCSN_ATOMIC_FILE_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    FILE *f;         /* the open PATH.tmp (NULL once committed or aborted) */
    char path[1024]; /* final name */
    char tmp[1032];  /* PATH.tmp */
} ncsn_atomic_file;

void ncsn_atomic_open(ncsn_atomic_file *af, const char *path);
/* fwrite with a check: a short write (disk full, I/O error) is fatal. */
void ncsn_atomic_write(ncsn_atomic_file *af, const void *data, size_t n);
/* Absolute position in PATH.tmp (for writers that patch a header at the end). */
void ncsn_atomic_seek(ncsn_atomic_file *af, uint64_t offset);
uint64_t ncsn_atomic_tell(ncsn_atomic_file *af);
/* fflush + fsync + fclose, rename PATH.tmp -> PATH, fsync of PATH's directory. */
void ncsn_atomic_commit(ncsn_atomic_file *af);
/* Closes and removes PATH.tmp, leaving PATH as it was. Safe to call twice. */
void ncsn_atomic_abort(ncsn_atomic_file *af);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_ATOMIC_FILE_H */
