/* atomic_file.c: write-to-temporary-then-rename, the way every writer in io.h and
 * safetensors.h replaces a file (atomic_file.h).
 *
 * PATH.tmp is created next to PATH (same directory, so the rename cannot cross a
 * filesystem), written, flushed, fsynced and closed; then renamed over PATH and the
 * directory is fsynced so the rename itself survives a power cut. A crash at any point
 * leaves either the old PATH or the new one, never half of one (a stale PATH.tmp at
 * worst, which the next write truncates). Every error is fatal and names PATH.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ncsn/common.h"
#include "ncsn/atomic_file.h"

/* Removes the temporary file and dies with "ncsn: PATH: <what>: <strerror(err)>". */
static void die_errno(ncsn_atomic_file *af, const char *what, int err) {
    ncsn_atomic_abort(af);
    ncsn_die("%s: %s: %s", af->path, what, strerror(err));
}

void ncsn_atomic_open(ncsn_atomic_file *af, const char *path) {
    NCSN_CHECK(af != NULL && path != NULL);
    memset(af, 0, sizeof(*af));
    if (!path[0]) ncsn_die("an empty output path");
    size_t len = strlen(path);
    if (len + 1 > sizeof(af->path)) ncsn_die("%s: path too long (%zu bytes, limit %zu)", path, len, sizeof(af->path) - 1);
    memcpy(af->path, path, len + 1);
    memcpy(af->tmp, path, len);
    memcpy(af->tmp + len, ".tmp", sizeof(".tmp"));
    int fd = open(af->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) ncsn_die("%s: cannot create %s: %s", af->path, af->tmp, strerror(errno));
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        int err = errno;
        close(fd);
        unlink(af->tmp);
        ncsn_die("%s: fdopen: %s", af->path, strerror(err));
    }
}

void ncsn_atomic_write(ncsn_atomic_file *af, const void *data, size_t n) {
    NCSN_CHECK(af != NULL && af->f != NULL);
    if (n == 0) return;
    if (fwrite(data, 1, n, af->f) != n) die_errno(af, "write failed", errno ? errno : EIO);
}

void ncsn_atomic_seek(ncsn_atomic_file *af, uint64_t offset) {
    NCSN_CHECK(af != NULL && af->f != NULL);
    if (offset > (uint64_t)INT64_MAX) die_errno(af, "seek", EOVERFLOW);
    if (fseeko(af->f, (off_t)offset, SEEK_SET) != 0) die_errno(af, "seek failed", errno);
}

uint64_t ncsn_atomic_tell(ncsn_atomic_file *af) {
    NCSN_CHECK(af != NULL && af->f != NULL);
    off_t pos = ftello(af->f);
    if (pos < 0) die_errno(af, "ftell failed", errno);
    return (uint64_t)pos;
}

/* fsync of the directory holding `path`, so the rename is durable. Filesystems that
 * cannot fsync a directory say EINVAL (or ENOTSUP); that is not an error of ours. */
static void fsync_parent_dir(const char *path) {
    char dir[sizeof(((ncsn_atomic_file *)0)->path)];
    size_t len = strlen(path);
    NCSN_CHECK(len < sizeof(dir));
    memcpy(dir, path, len + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        memcpy(dir, ".", 2);
    else if (slash == dir)
        dir[1] = '\0'; /* "/file" lives in "/" */
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) ncsn_die("%s: cannot open its directory %s to fsync it: %s", path, dir, strerror(errno));
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP) {
        int err = errno;
        close(fd);
        ncsn_die("%s: fsync of directory %s failed: %s", path, dir, strerror(err));
    }
    close(fd);
}

void ncsn_atomic_commit(ncsn_atomic_file *af) {
    NCSN_CHECK(af != NULL && af->f != NULL);
    if (fflush(af->f) != 0) die_errno(af, "write failed (flush)", errno);
    if (fsync(fileno(af->f)) != 0) die_errno(af, "fsync failed", errno);
    FILE *f = af->f;
    af->f = NULL;
    if (fclose(f) != 0) die_errno(af, "close failed", errno);
    if (rename(af->tmp, af->path) != 0) die_errno(af, "cannot rename the temporary file over it", errno);
    fsync_parent_dir(af->path);
}

void ncsn_atomic_abort(ncsn_atomic_file *af) {
    if (!af) return;
    if (af->f) {
        fclose(af->f); /* the file is being thrown away: its close status does not matter */
        af->f = NULL;
    }
    if (af->tmp[0]) unlink(af->tmp);
}
