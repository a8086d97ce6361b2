/* data.c: the datasets of data.h, read into memory and checked against the config.
 *
 * Each reader validates what it can before reading pixels (headers, file sizes, the
 * config's image size and channels) and names the file in every error. Images end up as
 * uint8 NHWC at data.image_size; the transforms (CenterCrop, Resize) reproduce
 * torchvision 0.6 on PIL images to the byte.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "kernels/rng_math.h"
#include "ncsn/common.h"
#include "ncsn/data.h"
#include "ncsn/io.h"

#define PATH_CAP 4096

typedef enum {
    DATA_MNIST,
    DATA_FASHION_MNIST,
    DATA_CIFAR10,
    DATA_CELEBA,
    DATA_LSUN,
    DATA_FFHQ,
    DATA_FOLDER,
    DATA_NPY,
    DATA_TOY
} data_kind;

static const struct {
    const char *name;
    data_kind kind;
} DATASETS[] = {
    {"MNIST", DATA_MNIST}, {"FashionMNIST", DATA_FASHION_MNIST}, {"CIFAR10", DATA_CIFAR10},
    {"CELEBA", DATA_CELEBA}, {"LSUN", DATA_LSUN}, {"FFHQ", DATA_FFHQ},
    {"FOLDER", DATA_FOLDER}, {"NPY", DATA_NPY}, {"TOY", DATA_TOY},
};
#define DATASET_COUNT (sizeof DATASETS / sizeof DATASETS[0])

static int find_dataset(const char *name) {
    for (size_t i = 0; i < DATASET_COUNT; i++)
        if (!strcasecmp(name, DATASETS[i].name)) return (int)i;
    return -1;
}

const char *ncsn_dataset_default_path(const char *dataset) {
    int i = find_dataset(dataset);
    return i >= 0 && DATASETS[i].kind == DATA_FASHION_MNIST ? NCSN_FASHION_MNIST_DIR : NULL;
}

/* ---- small file helpers ---------------------------------------------------------------- */

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void join_path(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_CAP, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_CAP) ncsn_die("%s/%s: path longer than %d bytes", dir, name, PATH_CAP - 1);
}

static int ends_with_ci(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcasecmp(s + n - m, suffix);
}

static uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void set_path(ncsn_dataset *ds, const char *path) {
    size_t n = strlen(path);
    if (n >= sizeof ds->path) ncsn_die("%s: path longer than %zu bytes", path, sizeof ds->path - 1);
    memcpy(ds->path, path, n + 1);
}

/* Formats "<what> are HxW with C channels but the config says ..." into msg when the
 * shape differs from the config's; returns whether it does. */
static int shape_mismatch(char *msg, size_t cap, const char *what, int H, int W, int C, const ncsn_data_config *dc) {
    if (H == dc->image_size && W == dc->image_size && C == dc->channels) return 0;
    snprintf(msg, cap, "%s are %dx%d with %d channel%s but the config says data.image_size %d, data.channels %d", what,
             H, W, C, C == 1 ? "" : "s", dc->image_size, dc->channels);
    return 1;
}

static void check_image_shape(const char *path, const char *what, int H, int W, int C, const ncsn_data_config *dc) {
    char msg[256];
    if (shape_mismatch(msg, sizeof msg, what, H, W, C, dc)) ncsn_die("%s: %s", path, msg);
}

static void dataset_alloc_u8(ncsn_dataset *ds, size_t N, int H, int W, int C) {
    ds->N = N;
    ds->H = H;
    ds->W = W;
    ds->C = C;
    size_t per = (size_t)H * (size_t)W * (size_t)C;
    if (N > SIZE_MAX / per) ncsn_die("%s: %zu images of %zu bytes overflow memory", ds->path, N, per);
    ds->u8 = ncsn_xmalloc(N * per);
}

/* ---- MNIST-format IDX ------------------------------------------------------------------ */

/* Dies with "PATH: <message>", adding zlib's reason when `short_read` is set: a cut gzip
 * stream is reported by zlib as "PATH: unexpected end of file" (its copy of the path is
 * dropped), a plain file that ends early as nothing at all. The stream is closed first so
 * that the leak checker of DEBUG builds sees a clean exit. */
static void idx_fail(gzFile gz, const char *path, int short_read, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void idx_fail(gzFile gz, const char *path, int short_read, const char *fmt, ...) {
    char msg[512], reason[256] = "file ends early";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int errnum;
    const char *zmsg = gzerror(gz, &errnum);
    if (errnum != Z_OK && zmsg && *zmsg) {
        size_t n = strlen(path);
        int has_path = !strncmp(zmsg, path, n) && !strncmp(zmsg + n, ": ", 2);
        snprintf(reason, sizeof reason, "%s", has_path ? zmsg + n + 2 : zmsg);
    }
    gzclose_r(gz);
    if (short_read) ncsn_die("%s: %s (%s)", path, msg, reason);
    ncsn_die("%s: %s", path, msg);
}

/* gzread in pieces (its length is an unsigned int). Returns the bytes read: fewer than
 * asked when the stream ends, cut or not, which the caller reports with the counts. */
static size_t gz_read_all(gzFile gz, const char *path, void *buf, size_t bytes) {
    size_t done = 0;
    while (done < bytes) {
        size_t want = bytes - done > (1u << 30) ? (1u << 30) : bytes - done;
        int got = gzread(gz, (uint8_t *)buf + done, (unsigned)want);
        if (got < 0) {
            int errnum;
            const char *msg = gzerror(gz, &errnum);
            if (errnum == Z_BUF_ERROR) break; /* cut stream: the caller's message says so */
            idx_fail(gz, path, 0, "read error: %s", errnum == Z_ERRNO ? strerror(errno) : msg);
        }
        if (got == 0) break;
        done += (size_t)got;
    }
    return done;
}

static void read_idx(ncsn_dataset *ds, const char *path, const ncsn_data_config *dc) {
    gzFile gz = gzopen(path, "rb"); /* reads plain files transparently */
    if (!gz) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    if (gzbuffer(gz, 1u << 20) != 0) idx_fail(gz, path, 0, "gzbuffer failed");
    uint8_t header[16];
    size_t got = gz_read_all(gz, path, header, 4);
    if (got < 4) idx_fail(gz, path, 1, "truncated: %zu of 4 magic bytes", got);
    uint32_t magic = load_be32(header);
    if (magic == 0x00000801u)
        idx_fail(gz, path, 0, "this is an IDX label file (magic 0x00000801); want the images file (magic 0x00000803)");
    if (magic != 0x00000803u)
        idx_fail(gz, path, 0, "bad magic 0x%08x: not an IDX file of unsigned-byte 3-D images (0x00000803)", magic);
    got = gz_read_all(gz, path, header + 4, 12);
    if (got < 12) idx_fail(gz, path, 1, "truncated: header ends after %zu of 16 bytes", 4 + got);
    uint32_t count = load_be32(header + 4), rows = load_be32(header + 8), cols = load_be32(header + 12);
    if (count == 0 || rows == 0 || cols == 0 || rows > 65536 || cols > 65536)
        idx_fail(gz, path, 0, "IDX header says %u images of %ux%u", count, rows, cols);
    char msg[256];
    if (shape_mismatch(msg, sizeof msg, "IDX images", (int)rows, (int)cols, 1, dc)) idx_fail(gz, path, 0, "%s", msg);

    dataset_alloc_u8(ds, count, (int)rows, (int)cols, 1);
    size_t want = ds->N * rows * cols;
    got = gz_read_all(gz, path, ds->u8, want);
    if (got < want)
        idx_fail(gz, path, 1, "truncated: %zu of %zu pixel bytes (header says %u images of %ux%u)", got, want, count,
                 rows, cols);
    uint8_t extra[4096];
    size_t trailing = 0, n;
    while ((n = gz_read_all(gz, path, extra, sizeof extra)) > 0) trailing += n;
    if (trailing)
        idx_fail(gz, path, 0, "count mismatch: %zu bytes after the %u images of %ux%u the header announces", trailing,
                 count, rows, cols);
    int rc = gzclose_r(gz);
    if (rc != Z_OK) ncsn_die("%s: close failed (zlib error %d)", path, rc);
}

/* torchvision keeps the files in <root>/<Name>/raw; the Debian package and the original
 * distribution keep them flat. The plain file wins over .gz when both are present. */
/* The split's IDX file under root, in torchvision's places; 0 when there is none. */
static int locate_idx_file(char *out, const char *root, const char *dataset_name, int train) {
    const char *stem = train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte";
    char dirs[3][PATH_CAP];
    snprintf(dirs[0], PATH_CAP, "%s", root);
    join_path(dirs[1], root, "raw");
    char sub[PATH_CAP];
    join_path(sub, root, dataset_name);
    join_path(dirs[2], sub, "raw");
    for (int d = 0; d < 3; d++) {
        char gz_name[128];
        snprintf(gz_name, sizeof gz_name, "%s.gz", stem);
        join_path(out, dirs[d], stem);
        if (is_file(out)) return 1;
        join_path(out, dirs[d], gz_name);
        if (is_file(out)) return 1;
    }
    return 0;
}

static void find_idx_file(char *out, const char *root, const char *dataset_name, int train) {
    if (!locate_idx_file(out, root, dataset_name, train))
        ncsn_die("%s: no %s-images-idx3-ubyte[.gz] here, in raw/ or in %s/raw/", root, train ? "train" : "t10k",
                 dataset_name);
}

/* ---- CIFAR-10 binary batches ----------------------------------------------------------- */

enum { CIFAR_SIDE = 32, CIFAR_PIXELS = 32 * 32, CIFAR_RECORD = 1 + 3 * 32 * 32 };

static size_t cifar_record_count(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    if (st.st_size == 0) ncsn_die("%s: empty file", path);
    if (st.st_size % CIFAR_RECORD != 0)
        ncsn_die("%s: truncated or not a CIFAR-10 binary batch: %lld bytes is not a whole number of %d-byte records",
                 path, (long long)st.st_size, CIFAR_RECORD);
    return (size_t)(st.st_size / CIFAR_RECORD);
}

/* Records are a label byte and three 1024-byte planes (R, G, B); stored here as HWC. */
static void read_cifar_file(const char *path, uint8_t *hwc, size_t records) {
    FILE *fp = fopen(path, "rb");
    if (!fp) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    uint8_t record[CIFAR_RECORD];
    for (size_t r = 0; r < records; r++) {
        size_t got = fread(record, 1, CIFAR_RECORD, fp);
        if (got != CIFAR_RECORD)
            ncsn_die("%s: short read in record %zu (%s)", path, r, ferror(fp) ? strerror(errno) : "file shrank");
        if (record[0] > 9)
            ncsn_die("%s: record %zu has label %u, not 0..9: not a CIFAR-10 binary batch", path, r, record[0]);
        uint8_t *image = hwc + r * (size_t)(3 * CIFAR_PIXELS);
        for (int p = 0; p < CIFAR_PIXELS; p++)
            for (int c = 0; c < 3; c++) image[3 * p + c] = record[1 + c * CIFAR_PIXELS + p];
    }
    fclose(fp);
}

/* The folder holding the batch files: root/cifar-10-batches-bin/ or root itself. */
static void cifar_dir(char *dir, const char *root) {
    join_path(dir, root, "cifar-10-batches-bin");
    if (!is_dir(dir)) snprintf(dir, PATH_CAP, "%s", root);
}

static void read_cifar(ncsn_dataset *ds, const char *root, int train, const ncsn_data_config *dc) {
    char files[5][PATH_CAP];
    int nfiles;
    if (is_file(root)) {
        snprintf(files[0], PATH_CAP, "%s", root);
        nfiles = 1;
    } else {
        char dir[PATH_CAP];
        cifar_dir(dir, root);
        nfiles = train ? 5 : 1;
        for (int i = 0; i < nfiles; i++) {
            char name[32];
            if (train) snprintf(name, sizeof name, "data_batch_%d.bin", i + 1);
            else snprintf(name, sizeof name, "test_batch.bin");
            join_path(files[i], dir, name);
            if (!is_file(files[i])) ncsn_die("%s: missing CIFAR-10 batch file", files[i]);
        }
    }
    check_image_shape(root, "CIFAR-10 images", CIFAR_SIDE, CIFAR_SIDE, 3, dc);
    size_t counts[5], total = 0;
    for (int i = 0; i < nfiles; i++) total += counts[i] = cifar_record_count(files[i]);
    dataset_alloc_u8(ds, total, CIFAR_SIDE, CIFAR_SIDE, 3);
    size_t offset = 0;
    for (int i = 0; i < nfiles; i++) {
        read_cifar_file(files[i], ds->u8 + offset * 3 * CIFAR_PIXELS, counts[i]);
        offset += counts[i];
    }
}

/* ---- .npy --------------------------------------------------------------------------------
 * A header-first reader, so the shape is checked against the config before the data are
 * read. It accepts what the datasets need (uint8 or float32 little-endian, C order). */

typedef struct {
    int is_float; /* '<f4' (else uint8) */
    int ndim;
    int64_t shape[8];
    long data_offset;
} npy_header;

static void npy_read_header(FILE *fp, const char *path, npy_header *h) {
    uint8_t pre[10];
    if (fread(pre, 1, 8, fp) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0)
        ncsn_die("%s: not a .npy file (no \\x93NUMPY magic)", path);
    uint32_t header_len;
    int prefix;
    if (pre[6] == 1) {
        if (fread(pre + 8, 1, 2, fp) != 2) ncsn_die("%s: truncated .npy header", path);
        header_len = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
        prefix = 10;
    } else if (pre[6] == 2 || pre[6] == 3) {
        uint8_t len4[4];
        if (fread(len4, 1, 4, fp) != 4) ncsn_die("%s: truncated .npy header", path);
        header_len = (uint32_t)len4[0] | (uint32_t)len4[1] << 8 | (uint32_t)len4[2] << 16 | (uint32_t)len4[3] << 24;
        prefix = 12;
    } else {
        ncsn_die("%s: unsupported .npy format version %u", path, pre[6]);
    }
    if (header_len > (1u << 20)) ncsn_die("%s: .npy header of %u bytes is implausible", path, header_len);
    char *text = ncsn_xmalloc(header_len + 1);
    if (fread(text, 1, header_len, fp) != header_len) ncsn_die("%s: truncated .npy header", path);
    text[header_len] = '\0';

    const char *descr = strstr(text, "'descr'");
    const char *order = strstr(text, "'fortran_order'");
    const char *shape = strstr(text, "'shape'");
    if (!descr || !order || !shape) ncsn_die("%s: .npy header lacks descr, fortran_order or shape: %s", path, text);
    descr = strchr(descr + 7, '\'');
    if (!descr) ncsn_die("%s: malformed .npy descr", path);
    descr++;
    if (!strncmp(descr, "|u1'", 4) || !strncmp(descr, "<u1'", 4) || !strncmp(descr, "u1'", 3)) {
        h->is_float = 0;
    } else if (!strncmp(descr, "<f4'", 4)) {
        h->is_float = 1;
    } else {
        const char *end = strchr(descr, '\'');
        ncsn_die("%s: .npy dtype '%.*s' is not uint8 (or float32 for toy data)", path,
                 (int)(end ? end - descr : 8), descr);
    }
    order += strlen("'fortran_order'");
    while (*order == ':' || *order == ' ') order++;
    if (strncmp(order, "False", 5) != 0) ncsn_die("%s: .npy array is in Fortran order; save it in C order", path);
    shape = strchr(shape, '(');
    if (!shape) ncsn_die("%s: malformed .npy shape", path);
    shape++;
    h->ndim = 0;
    for (;;) {
        while (*shape == ' ' || *shape == ',') shape++;
        if (*shape == ')') break;
        char *end;
        errno = 0;
        long long v = strtoll(shape, &end, 10);
        if (end == shape || errno || v < 0 || h->ndim == 8) ncsn_die("%s: malformed .npy shape", path);
        h->shape[h->ndim++] = v;
        shape = end;
    }
    free(text);
    h->data_offset = prefix + (long)header_len;
}

static void read_npy(ncsn_dataset *ds, const char *path, const ncsn_data_config *dc, int toy) {
    FILE *fp = fopen(path, "rb");
    if (!fp) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    npy_header h;
    npy_read_header(fp, path, &h);
    size_t item;
    if (toy) {
        if (!h.is_float || h.ndim != 2 || h.shape[1] != 2)
            ncsn_die("%s: toy data must be a float32 array of shape (N, 2)", path);
        ds->N = (size_t)h.shape[0];
        ds->C = 2;
        ds->H = ds->W = 1;
        item = sizeof(float);
    } else {
        if (h.is_float) ncsn_die("%s: image arrays must be uint8 (0..255), this one is float32", path);
        if (h.ndim != 4 && !(h.ndim == 3 && dc->channels == 1))
            ncsn_die("%s: image arrays must be (N, H, W, C), or (N, H, W) for one channel; this one has %d dimensions",
                     path, h.ndim);
        int C = h.ndim == 4 ? (int)h.shape[3] : 1;
        if (h.shape[1] > 65536 || h.shape[2] > 65536 || C > 65536) ncsn_die("%s: implausible .npy image shape", path);
        check_image_shape(path, "images", (int)h.shape[1], (int)h.shape[2], C, dc);
        ds->N = (size_t)h.shape[0];
        ds->H = (int)h.shape[1];
        ds->W = (int)h.shape[2];
        ds->C = C;
        item = 1;
    }
    if (ds->N == 0) ncsn_die("%s: the array holds no examples", path);
    size_t per = (size_t)ds->C * (size_t)ds->H * (size_t)ds->W * item;
    if (ds->N > SIZE_MAX / per) ncsn_die("%s: a .npy of shape (%zu, ...) cannot be held in memory", path, ds->N);
    size_t elements = ds->N * (size_t)ds->C * (size_t)ds->H * (size_t)ds->W;
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) ncsn_die("%s: stat failed: %s", path, strerror(errno));
    long long want = (long long)h.data_offset + (long long)(elements * item);
    if ((long long)st.st_size < want)
        ncsn_die("%s: truncated: %lld bytes of data, the header's shape needs %zu", path,
                 (long long)st.st_size - h.data_offset, elements * item);
    if ((long long)st.st_size > want)
        ncsn_die("%s: %lld bytes after the data the header's shape describes", path, (long long)st.st_size - want);
    void *data = ncsn_xmalloc(elements * item);
    if (fread(data, item, elements, fp) != elements) ncsn_die("%s: short read: %s", path, strerror(errno));
    fclose(fp);
    if (toy) ds->f32 = data;
    else ds->u8 = data;
}

/* ---- torchvision transforms on uint8 HWC ------------------------------------------------ */

void ncsn_image_center_crop(uint8_t *out, int crop_h, int crop_w, const uint8_t *in, int H, int W, int C) {
    NCSN_CHECK(crop_h > 0 && crop_w > 0 && H > 0 && W > 0 && C > 0);
    /* rint rounds half to even in the default mode, as Python's round() does. */
    int top = (int)rint((H - crop_h) / 2.0), left = (int)rint((W - crop_w) / 2.0);
    for (int y = 0; y < crop_h; y++)
        for (int x = 0; x < crop_w; x++) {
            int sy = y + top, sx = x + left;
            uint8_t *o = out + ((size_t)y * crop_w + x) * C;
            if (sy < 0 || sy >= H || sx < 0 || sx >= W) memset(o, 0, (size_t)C);
            else memcpy(o, in + ((size_t)sy * W + sx) * C, (size_t)C);
        }
}

void ncsn_resize_shorter_side(int H, int W, int size, int *out_h, int *out_w) {
    NCSN_CHECK(H > 0 && W > 0 && size > 0);
    if ((W <= H && W == size) || (H <= W && H == size)) {
        *out_h = H;
        *out_w = W;
    } else if (W < H) {
        *out_w = size;
        *out_h = (int)((double)((long long)size * H) / (double)W);
    } else {
        *out_h = size;
        *out_w = (int)((double)((long long)size * W) / (double)H);
    }
}

/* Pillow's Resample.c, bilinear on 8-bit images: a triangle filter of support 1 scaled by
 * the reduction factor (so downsampling averages, i.e. antialiases), weights normalised in
 * double and then turned into fixed point with 22 fractional bits; a horizontal pass into
 * an 8-bit intermediate (rounded and clipped) followed by a vertical pass. Identical
 * integer arithmetic gives identical bytes. */
enum { RESAMPLE_BITS = 22 };

typedef struct {
    int ksize;      /* taps per output pixel */
    int *bounds;    /* per output pixel: first input index, tap count */
    int32_t *taps;  /* per output pixel: ksize fixed-point weights */
} resample_coeffs;

static double triangle(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static resample_coeffs resample_precompute(int in_size, int out_size) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;
    resample_coeffs rc;
    rc.ksize = (int)ceil(support) * 2 + 1;
    rc.bounds = ncsn_xmalloc((size_t)out_size * 2 * sizeof(int));
    rc.taps = ncsn_xcalloc((size_t)out_size * (size_t)rc.ksize, sizeof(int32_t));
    double *k = ncsn_xmalloc((size_t)rc.ksize * sizeof(double));
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            k[x] = triangle((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; x++) {
            double w = ww != 0.0 ? k[x] / ww : k[x];
            double fixed = w * (1 << RESAMPLE_BITS);
            rc.taps[(size_t)xx * rc.ksize + x] = (int32_t)(w < 0 ? -0.5 + fixed : 0.5 + fixed);
        }
        rc.bounds[2 * xx] = xmin;
        rc.bounds[2 * xx + 1] = xmax;
    }
    free(k);
    return rc;
}

static void resample_free(resample_coeffs *rc) {
    free(rc->bounds);
    free(rc->taps);
}

static uint8_t resample_clip8(int32_t acc) {
    int32_t v = acc >> RESAMPLE_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

void ncsn_image_resize_bilinear(uint8_t *out, int out_h, int out_w, const uint8_t *in, int H, int W, int C) {
    NCSN_CHECK(out_h > 0 && out_w > 0 && H > 0 && W > 0 && C > 0);
    int need_h = out_w != W, need_v = out_h != H;
    if (!need_h && !need_v) {
        memcpy(out, in, (size_t)H * W * C);
        return;
    }
    resample_coeffs horiz = resample_precompute(W, out_w), vert = resample_precompute(H, out_h);
    const uint8_t *src = in; /* what the vertical pass reads: the input or the intermediate */
    uint8_t *temp = NULL;
    if (need_h) {
        /* Only the input rows the vertical pass will touch go through the horizontal pass. */
        int row_first = vert.bounds[0];
        int row_last = vert.bounds[2 * out_h - 2] + vert.bounds[2 * out_h - 1];
        int rows = need_v ? row_last - row_first : H;
        if (!need_v) row_first = 0;
        else
            for (int i = 0; i < out_h; i++) vert.bounds[2 * i] -= row_first;
        uint8_t *dst = need_v ? (temp = ncsn_xmalloc((size_t)rows * out_w * C)) : out;
        for (int y = 0; y < rows; y++) {
            const uint8_t *row = in + (size_t)(y + row_first) * W * C;
            for (int xx = 0; xx < out_w; xx++) {
                int xmin = horiz.bounds[2 * xx], taps = horiz.bounds[2 * xx + 1];
                const int32_t *k = horiz.taps + (size_t)xx * horiz.ksize;
                for (int c = 0; c < C; c++) {
                    int32_t acc = 1 << (RESAMPLE_BITS - 1);
                    for (int x = 0; x < taps; x++) acc += row[(size_t)(x + xmin) * C + c] * k[x];
                    dst[((size_t)y * out_w + xx) * C + c] = resample_clip8(acc);
                }
            }
        }
        src = temp;
    }
    if (need_v) {
        size_t stride = (size_t)out_w * C; /* the vertical pass runs at the output width */
        for (int yy = 0; yy < out_h; yy++) {
            int ymin = vert.bounds[2 * yy], taps = vert.bounds[2 * yy + 1];
            const int32_t *k = vert.taps + (size_t)yy * vert.ksize;
            for (size_t i = 0; i < stride; i++) {
                int32_t acc = 1 << (RESAMPLE_BITS - 1);
                for (int y = 0; y < taps; y++) acc += src[(size_t)(y + ymin) * stride + i] * k[y];
                out[(size_t)yy * stride + i] = resample_clip8(acc);
            }
        }
    }
    free(temp);
    resample_free(&horiz);
    resample_free(&vert);
}

/* ---- image folders ------------------------------------------------------------------------ */

typedef struct {
    char **paths;
    size_t count, cap;
} path_list;

static void path_list_add(path_list *list, const char *path) {
    if (list->count == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 256;
        char **grown = realloc(list->paths, list->cap * sizeof *grown);
        if (!grown) ncsn_die("%s: out of memory listing images", path);
        list->paths = grown;
    }
    size_t n = strlen(path) + 1;
    list->paths[list->count] = ncsn_xmalloc(n);
    memcpy(list->paths[list->count++], path, n);
}

static void path_list_free(path_list *list) {
    for (size_t i = 0; i < list->count; i++) free(list->paths[i]);
    free(list->paths);
}

static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_image_name(const char *name) {
    return ends_with_ci(name, ".png") || ends_with_ci(name, ".jpg") || ends_with_ci(name, ".jpeg");
}

/* Hidden entries are skipped; the depth limit stops symlink cycles. */
static void list_images(path_list *list, const char *dir, int depth) {
    if (depth > 16) ncsn_die("%s: folders nested deeper than 16 levels (a symlink loop?)", dir);
    DIR *d = opendir(dir);
    if (!d) ncsn_die("%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[PATH_CAP];
        join_path(path, dir, e->d_name);
        if (is_dir(path)) list_images(list, path, depth + 1);
        else if (is_image_name(e->d_name) && is_file(path)) path_list_add(list, path);
    }
    closedir(d);
}

/* Decodes every listed image, in parallel, into ds->u8 at S x S. CELEBA: CenterCrop(140) then
 * Resize(S); the others: Resize(S) of the shorter side then CenterCrop(S). */
static void decode_images(ncsn_dataset *ds, const path_list *list, int celeba, const ncsn_data_config *dc) {
    int S = dc->image_size, C = dc->channels;
    if (S <= 0 || S > 4096) ncsn_die("%s: data.image_size %d is outside 1..4096", ds->path, S);
    if (C != 1 && C != 3)
        ncsn_die("%s: image folders give 1 or 3 channels, the config says data.channels %d", ds->path, C);
    dataset_alloc_u8(ds, list->count, S, S, C);
    size_t per = (size_t)S * S * C;
#pragma omp parallel for schedule(dynamic, 8)
    for (long i = 0; i < (long)list->count; i++) {
        uint8_t *pixels, *mid;
        int H, W, h, w;
        ncsn_image_read(list->paths[i], C, &pixels, &H, &W);
        uint8_t *dst = ds->u8 + (size_t)i * per;
        if (celeba) {
            const int crop = 140;
            mid = ncsn_xmalloc((size_t)crop * crop * C);
            ncsn_image_center_crop(mid, crop, crop, pixels, H, W, C);
            ncsn_resize_shorter_side(crop, crop, S, &h, &w);
            ncsn_image_resize_bilinear(dst, h, w, mid, crop, crop, C);
        } else {
            ncsn_resize_shorter_side(H, W, S, &h, &w);
            mid = ncsn_xmalloc((size_t)h * w * C);
            ncsn_image_resize_bilinear(mid, h, w, pixels, H, W, C);
            ncsn_image_center_crop(dst, S, S, mid, h, w, C);
        }
        free(mid);
        free(pixels);
    }
}

static void read_folder(ncsn_dataset *ds, const char *dir, const ncsn_data_config *dc) {
    if (!is_dir(dir)) ncsn_die("%s: not a folder of images", dir);
    path_list list = {0};
    list_images(&list, dir, 0);
    if (list.count == 0) ncsn_die("%s: no .png, .jpg or .jpeg images in this folder", dir);
    qsort(list.paths, list.count, sizeof *list.paths, compare_paths);
    decode_images(ds, &list, 0, dc);
    path_list_free(&list);
}

/* torchvision's CelebA: root/celeba/img_align_celeba/<name>.jpg and root/celeba/list_eval_partition.txt
 * with lines "000001.jpg 0" (0 train, 1 valid, 2 test). */
/* The image folder and the partition file's path (which may not exist) under root. */
static void celeba_locate(const char *root, char *images, char *partition) {
    char parent[PATH_CAP];
    join_path(images, root, "img_align_celeba");
    if (!is_dir(images)) {
        join_path(parent, root, "celeba");
        join_path(images, parent, "img_align_celeba");
        if (!is_dir(images)) snprintf(images, PATH_CAP, "%s", root);
    }
    join_path(parent, images, "..");
    join_path(partition, parent, "list_eval_partition.txt");
    if (!is_file(partition)) join_path(partition, images, "list_eval_partition.txt");
}

static void read_celeba(ncsn_dataset *ds, const char *root, int train, const ncsn_data_config *dc) {
    char images[PATH_CAP], partition[PATH_CAP];
    celeba_locate(root, images, partition);
    if (!is_dir(images)) ncsn_die("%s: not a folder of CelebA images", root);
    set_path(ds, images);

    path_list list = {0};
    if (is_file(partition)) {
        FILE *fp = fopen(partition, "r");
        if (!fp) ncsn_die("%s: cannot open: %s", partition, strerror(errno));
        char line[512], name[256];
        int split, want = train ? 0 : 2;
        for (long lineno = 1; fgets(line, sizeof line, fp); lineno++) {
            if (line[0] == '\n' || line[0] == '\r') continue;
            if (sscanf(line, "%255s %d", name, &split) != 2 || split < 0 || split > 2)
                ncsn_die("%s: line %ld is not \"<image> <0|1|2>\"", partition, lineno);
            if (split != want) continue;
            char path[PATH_CAP];
            join_path(path, images, name);
            if (!is_file(path)) ncsn_die("%s: listed in %s but missing", path, partition);
            path_list_add(&list, path);
        }
        if (ferror(fp)) ncsn_die("%s: read error: %s", partition, strerror(errno));
        fclose(fp);
        if (list.count == 0) ncsn_die("%s: no image is in the %s split", partition, train ? "train" : "test");
    } else {
        list_images(&list, images, 0);
        if (list.count == 0) ncsn_die("%s: no .png, .jpg or .jpeg images in this folder", images);
        qsort(list.paths, list.count, sizeof *list.paths, compare_paths);
    }
    decode_images(ds, &list, 1, dc);
    path_list_free(&list);
}

/* ---- toy 2-D mixture ---------------------------------------------------------------------- */

static void make_toy(ncsn_dataset *ds, const ncsn_data_config *dc, int train, uint64_t seed) {
    if (dc->toy_size <= 0) ncsn_die("data.toy_size is %d: the toy data set needs at least one point", dc->toy_size);
    if (!(dc->toy_weight >= 0.0 && dc->toy_weight <= 1.0))
        ncsn_die("data.toy_weight is %g, not a probability in [0, 1]", dc->toy_weight);
    ds->N = (size_t)dc->toy_size;
    ds->C = 2;
    ds->H = ds->W = 1;
    ds->f32 = ncsn_xmalloc(ds->N * 2 * sizeof(float));
    uint32_t split = train ? 0 : 1;
    for (size_t i = 0; i < ds->N; i++) {
        int first = ncsn_rng_uniform(seed, NCSN_RNG_TOY, split, 0, i) < dc->toy_weight;
        double mean = first ? dc->toy_mean1 : dc->toy_mean2;
        for (int d = 0; d < 2; d++)
            ds->f32[2 * i + d] = (float)(mean + (double)ncsn_rng_normal(seed, NCSN_RNG_TOY, split, 1, 2 * i + d));
    }
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int ncsn_dataset_has_test_split(const ncsn_data_config *dc, const char *path) {
    int which = find_dataset(dc->dataset);
    if (which < 0) return 0;
    data_kind kind = DATASETS[which].kind;
    if (!path || !*path) path = ncsn_dataset_default_path(dc->dataset);
    if (kind == DATA_TOY) return path == NULL; /* generated: split 1 is its own draw */
    if (!path || !is_dir(path)) return 0;      /* one file (.npy, IDX, batch) is one split */
    char a[PATH_CAP], b[PATH_CAP];
    switch (kind) {
    case DATA_MNIST:
    case DATA_FASHION_MNIST: return locate_idx_file(a, path, DATASETS[which].name, 0);
    case DATA_CIFAR10:
        cifar_dir(a, path);
        join_path(b, a, "test_batch.bin");
        return is_file(b);
    case DATA_CELEBA:
        celeba_locate(path, a, b);
        return is_file(b);
    case DATA_LSUN: {
        char name[96];
        snprintf(name, sizeof name, "%s_val", dc->category);
        join_path(a, path, name);
        return dc->category[0] && is_dir(a);
    }
    default: return 0; /* FOLDER, FFHQ, NPY: one set of images */
    }
}

void ncsn_dataset_open(ncsn_dataset *ds, const ncsn_data_config *dc, const char *path, int train, uint64_t seed) {
    memset(ds, 0, sizeof *ds);
    ds->train = train ? 1 : 0;
    int which = find_dataset(dc->dataset);
    if (which < 0)
        ncsn_die("data.dataset '%s' is not one of MNIST FashionMNIST CIFAR10 CELEBA LSUN FFHQ FOLDER NPY TOY",
                 dc->dataset);
    data_kind kind = DATASETS[which].kind;
    snprintf(ds->dataset, sizeof ds->dataset, "%s", DATASETS[which].name);
    int defaulted = !path || !*path;
    if (defaulted) path = ncsn_dataset_default_path(dc->dataset);

    if (kind == DATA_TOY) {
        if (path) {
            set_path(ds, path);
            read_npy(ds, path, dc, 1);
        } else {
            make_toy(ds, dc, train, seed);
        }
        return;
    }
    if (!path) ncsn_die("data.dataset %s needs --data (the folder or file to read)", DATASETS[which].name);
    if (defaulted && !is_dir(path))
        ncsn_die("%s: not found; install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                 "or pass --data",
                 path);
    set_path(ds, path);
    if (!is_dir(path) && !is_file(path)) ncsn_die("%s: no such file or folder", path);
    if (kind == DATA_NPY && !is_file(path)) ncsn_die("%s: data.dataset NPY needs a .npy file, this is a folder", path);
    if (kind == DATA_NPY || (is_file(path) && ends_with_ci(path, ".npy"))) {
        read_npy(ds, path, dc, 0);
        return;
    }
    switch (kind) {
    case DATA_MNIST:
    case DATA_FASHION_MNIST: {
        char file[PATH_CAP];
        if (is_file(path)) snprintf(file, PATH_CAP, "%s", path);
        else find_idx_file(file, path, DATASETS[which].name, train);
        set_path(ds, file);
        read_idx(ds, file, dc);
        break;
    }
    case DATA_CIFAR10: read_cifar(ds, path, train, dc); break;
    case DATA_CELEBA: read_celeba(ds, path, train, dc); break;
    case DATA_LSUN: {
        char sub[PATH_CAP], name[96];
        snprintf(name, sizeof name, "%s_%s", dc->category, train ? "train" : "val");
        join_path(sub, path, name);
        const char *dir = dc->category[0] && is_dir(sub) ? sub : path;
        set_path(ds, dir);
        read_folder(ds, dir, dc);
        break;
    }
    case DATA_FFHQ:
    case DATA_FOLDER: read_folder(ds, path, dc); break;
    case DATA_NPY:
    case DATA_TOY: break; /* handled above */
    }
}

void ncsn_dataset_free(ncsn_dataset *ds) {
    free(ds->u8);
    free(ds->f32);
    memset(ds, 0, sizeof *ds);
}

/* ToTensor divides in float32: k / 255.0f, correctly rounded, bit-identical to torch. */
void ncsn_dataset_example(const ncsn_dataset *ds, size_t i, float *chw) {
    NCSN_CHECKF(i < ds->N, "%s: example %zu of %zu", ds->path, i, ds->N);
    size_t plane = (size_t)ds->H * ds->W, per = plane * ds->C;
    if (ds->f32) {
        memcpy(chw, ds->f32 + i * per, per * sizeof(float));
        return;
    }
    const uint8_t *hwc = ds->u8 + i * per;
    for (int c = 0; c < ds->C; c++)
        for (size_t p = 0; p < plane; p++) chw[c * plane + p] = (float)hwc[p * ds->C + c] / 255.0f;
}
