/* test_data.c: the dataset readers, the torchvision transforms and the batch loader (data.h),
 * and the image reader (io.h: ncsn_image_read).
 *
 * Every reader is run on files this test writes into a fresh folder under /tmp, with
 * contents known to the byte, so the checks are exact equalities. Malformed inputs are
 * run in a forked child: the child must exit with status 1 after printing one line that
 * names the file and the problem. The resize is checked against bytes that Pillow 9.4
 * produced (Image.resize(BILINEAR)), the reference torchvision 0.6 used. The real
 * Fashion-MNIST files are read when Debian's package is installed.
 */
#include <ftw.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <jpeglib.h> /* after stdio.h: it needs FILE */

#include "harness.h"
#include "ncsn/common.h"
#include "ncsn/data.h"
#include "ncsn/io.h"

static char root[256]; /* the test's scratch folder */

/* ---- writing test inputs ------------------------------------------------------------------ */

static void path_in(char *out, size_t cap, const char *name) {
    int n = snprintf(out, cap, "%s/%s", root, name);
    NCSN_CHECK(n > 0 && (size_t)n < cap);
}

static void make_dir(const char *name) {
    char path[512];
    path_in(path, sizeof path, name);
    if (mkdir(path, 0755) != 0) ncsn_die("%s: mkdir failed", path);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, n, fp) != n || fclose(fp) != 0) ncsn_die("%s: cannot write test file", path);
}

static void truncate_file(const char *path, double keep_fraction) {
    struct stat st;
    NCSN_CHECK(stat(path, &st) == 0);
    if (truncate(path, (off_t)(st.st_size * keep_fraction)) != 0) ncsn_die("%s: truncate failed", path);
}

static void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An IDX image file: magic, N, rows, cols, then `pixel_bytes` of pixels (which may differ
 * from N*rows*cols to make malformed files), plain or gzip. */
static void write_idx(const char *path, int gz, uint32_t magic, uint32_t N, uint32_t rows, uint32_t cols,
                      const uint8_t *pixels, size_t pixel_bytes) {
    uint8_t header[16];
    store_be32(header, magic);
    store_be32(header + 4, N);
    store_be32(header + 8, rows);
    store_be32(header + 12, cols);
    if (!gz) {
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(header, 1, 16, fp) != 16 || fwrite(pixels, 1, pixel_bytes, fp) != pixel_bytes ||
            fclose(fp) != 0)
            ncsn_die("%s: cannot write test file", path);
        return;
    }
    gzFile g = gzopen(path, "wb");
    if (!g || gzwrite(g, header, 16) != 16 || gzwrite(g, pixels, (unsigned)pixel_bytes) != (int)pixel_bytes ||
        gzclose(g) != Z_OK)
        ncsn_die("%s: cannot write test file", path);
}

static uint8_t idx_pixel(size_t image, size_t p) {
    return (uint8_t)(image * 40 + p * 7 + 3);
}

static void write_png_file(const char *path, const uint8_t *hwc, int H, int W, int C, int interlace) {
    FILE *fp = fopen(path, "wb");
    if (!fp) ncsn_die("%s: cannot write test file", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    NCSN_CHECK(png && info);
    if (setjmp(png_jmpbuf(png))) ncsn_die("%s: libpng failed writing the test file", path);
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_bytep *rows = malloc((size_t)H * sizeof *rows);
    for (int y = 0; y < H; y++) rows[y] = (png_bytep)(hwc + (size_t)y * W * C);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    if (fclose(fp) != 0) ncsn_die("%s: close failed", path);
}

static void write_jpeg_file(const char *path, const uint8_t *rgb, int H, int W) {
    FILE *fp = fopen(path, "wb");
    if (!fp) ncsn_die("%s: cannot write test file", path);
    struct jpeg_compress_struct cinfo;
    struct jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, fp);
    cinfo.image_width = (JDIMENSION)W;
    cinfo.image_height = (JDIMENSION)H;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, 90, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)cinfo.next_scanline * W * 3);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    if (fclose(fp) != 0) ncsn_die("%s: close failed", path);
}

/* A version 1.0 .npy with the given descr and shape. */
static void write_npy_file(const char *path, const char *descr, int ndim, const long *shape, const void *data,
                           size_t bytes) {
    char dict[256], dims[128] = "";
    for (int d = 0; d < ndim; d++) {
        size_t n = strlen(dims);
        snprintf(dims + n, sizeof dims - n, "%ld%s", shape[d], ndim == 1 ? "," : d + 1 < ndim ? ", " : "");
    }
    int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int padded = (10 + len + 1 + 63) / 64 * 64 - 10; /* header text incl. '\n', total a multiple of 64 */
    uint8_t *file = malloc(10 + (size_t)padded + bytes);
    memcpy(file, "\x93NUMPY\x01\x00", 8);
    file[8] = (uint8_t)(padded & 0xFF);
    file[9] = (uint8_t)(padded >> 8);
    memset(file + 10, ' ', (size_t)padded);
    memcpy(file + 10, dict, (size_t)len);
    file[10 + padded - 1] = '\n';
    memcpy(file + 10 + padded, data, bytes);
    write_bytes(path, file, 10 + (size_t)padded + bytes);
    free(file);
}

static ncsn_data_config data_config(const char *dataset, int image_size, int channels) {
    ncsn_data_config dc;
    memset(&dc, 0, sizeof dc);
    snprintf(dc.dataset, sizeof dc.dataset, "%s", dataset);
    dc.image_size = image_size;
    dc.channels = channels;
    return dc;
}

/* ---- the death check ---------------------------------------------------------------------- */

typedef struct {
    const char *dataset;
    int image_size, channels, train;
    char path[512];
} open_request;

/* DEBUG builds link LeakSanitizer, which in a forked child still lists the parent's OpenMP
 * threads ("Running thread ... was not suspended") and may report the allocations a fatal
 * error leaves behind. The death-test child exists only to die, so leak checking is off
 * there (this is LSan's documented opt-out hook; other builds never call it). */
static int in_death_child = 0;
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) {
    return in_death_child;
}

/* Runs fn(arg) in a child; passes when the child exits with status 1 and its stderr is
 * exactly one line "ncsn: ..." that contains `names` (the file) and `problem`. */
static void expect_death(const char *what, void (*fn)(const void *), const void *arg, const char *names,
                         const char *problem) {
    int fds[2];
    NCSN_CHECK(pipe(fds) == 0);
    fflush(stdout);
    pid_t pid = fork();
    NCSN_CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        in_death_child = 1;
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char err[2048];
    size_t n = 0;
    ssize_t got;
    while (n < sizeof err - 1 && (got = read(fds[0], err + n, sizeof err - 1 - n)) > 0) n += (size_t)got;
    err[n] = '\0';
    close(fds[0]);
    int status;
    NCSN_CHECK(waitpid(pid, &status, 0) == pid);
    int exited_1 = WIFEXITED(status) && WEXITSTATUS(status) == 1;
    int one_line = n > 0 && err[n - 1] == '\n' && strchr(err, '\n') == err + n - 1;
    int ok = exited_1 && one_line && strstr(err, names) && strstr(err, problem) && !strncmp(err, "ncsn: ", 6);
    EXPECT(ok, "%s: want exit 1 and one line naming '%s' with '%s'; got status %d, stderr: %s", what, names, problem,
           status, err);
    if (ok) printf("  ok   %s: %s", what, err);
}

static void open_in_child(const void *arg) {
    const open_request *rq = arg;
    ncsn_data_config dc = data_config(rq->dataset, rq->image_size, rq->channels);
    ncsn_dataset ds;
    ncsn_dataset_open(&ds, &dc, rq->path, rq->train, 0);
}

static void expect_open_fails(const char *what, const open_request *rq, const char *names, const char *problem) {
    expect_death(what, open_in_child, rq, names, problem);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_idx(void) {
    enum { N = 5, S = 4, NT = 2 };
    uint8_t pixels[N * S * S], test_pixels[NT * S * S];
    for (size_t i = 0; i < N; i++)
        for (size_t p = 0; p < S * S; p++) pixels[i * S * S + p] = idx_pixel(i, p);
    for (size_t i = 0; i < NT; i++)
        for (size_t p = 0; p < S * S; p++) test_pixels[i * S * S + p] = idx_pixel(i + 100, p);

    /* Flat plain files, and torchvision's <root>/MNIST/raw/ layout with .gz files. */
    char path[512];
    make_dir("idx_plain");
    make_dir("idx_gz");
    make_dir("idx_gz/MNIST");
    make_dir("idx_gz/MNIST/raw");
    path_in(path, sizeof path, "idx_plain/train-images-idx3-ubyte");
    write_idx(path, 0, 0x803, N, S, S, pixels, sizeof pixels);
    path_in(path, sizeof path, "idx_plain/t10k-images-idx3-ubyte");
    write_idx(path, 0, 0x803, NT, S, S, test_pixels, sizeof test_pixels);
    path_in(path, sizeof path, "idx_gz/MNIST/raw/train-images-idx3-ubyte.gz");
    write_idx(path, 1, 0x803, N, S, S, pixels, sizeof pixels);

    const char *folders[2] = {"idx_plain", "idx_gz"};
    for (int f = 0; f < 2; f++) {
        ncsn_data_config dc = data_config("MNIST", S, 1);
        ncsn_dataset ds;
        path_in(path, sizeof path, folders[f]);
        ncsn_dataset_open(&ds, &dc, path, 1, 0);
        EXPECT(ds.N == N && ds.H == S && ds.W == S && ds.C == 1 && ds.u8 && !ds.f32, "%s: N %zu H %d W %d C %d",
               folders[f], ds.N, ds.H, ds.W, ds.C);
        EXPECT(ds.N == N && !memcmp(ds.u8, pixels, sizeof pixels), "%s: pixels differ from the file's", folders[f]);
        printf("  ok   IDX %s: %zu images %dx%d from %s\n", f ? "gzip" : "plain", ds.N, ds.H, ds.W, ds.path);
        /* ToTensor's k / 255 in float32, CHW (one plane here). */
        float chw[S * S];
        ncsn_dataset_example(&ds, 3, chw);
        int exact = 1;
        for (int p = 0; p < S * S; p++) exact &= chw[p] == (float)idx_pixel(3, (size_t)p) / 255.0f;
        EXPECT(exact, "%s: example 3 is not k/255", folders[f]);
        ncsn_dataset_free(&ds);
    }
    ncsn_data_config dc = data_config("FashionMNIST", S, 1);
    ncsn_dataset ds;
    path_in(path, sizeof path, "idx_plain");
    ncsn_dataset_open(&ds, &dc, path, 0, 0);
    EXPECT(ds.N == NT && !memcmp(ds.u8, test_pixels, sizeof test_pixels), "test split: N %zu", ds.N);
    ncsn_dataset_free(&ds);

    /* Malformed files, one problem each. */
    make_dir("idx_bad");
    struct {
        const char *name;
        int gz;
        uint32_t magic, count;
        size_t bytes;
        const char *problem;
    } bad[] = {
        {"magic", 0, 0x00000804, N, sizeof pixels, "bad magic 0x00000804"},
        {"labels", 0, 0x00000801, N, sizeof pixels, "label file"},
        {"short", 0, 0x803, N, sizeof pixels - 9, "truncated: 71 of 80 pixel bytes"},
        {"extra", 0, 0x803, N - 1, sizeof pixels, "count mismatch: 16 bytes after"},
        {"extra_gz", 1, 0x803, N - 2, sizeof pixels, "count mismatch: 32 bytes after"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        open_request rq = {"MNIST", S, 1, 1, ""};
        char name[64];
        snprintf(name, sizeof name, "idx_bad/%s", bad[i].name);
        path_in(rq.path, sizeof rq.path, name);
        write_idx(rq.path, bad[i].gz, bad[i].magic, bad[i].count, S, S, pixels, bad[i].bytes);
        expect_open_fails(name, &rq, rq.path, bad[i].problem);
    }
    /* A gzip stream cut in the middle: zlib's own complaint is part of the message. */
    open_request rq = {"MNIST", S, 1, 1, ""};
    path_in(rq.path, sizeof rq.path, "idx_bad/cut.gz");
    uint8_t big[2000 * S * S];
    for (size_t p = 0; p < sizeof big; p++) big[p] = (uint8_t)(p * 2654435761u >> 24); /* poorly compressible */
    write_idx(rq.path, 1, 0x803, 2000, S, S, big, sizeof big);
    truncate_file(rq.path, 0.5);
    expect_open_fails("gzip cut in half", &rq, rq.path, "truncated");
    path_in(rq.path, sizeof rq.path, "idx_bad/header");
    write_bytes(rq.path, "\x00\x00\x08\x03\x00\x00", 6);
    expect_open_fails("header cut short", &rq, rq.path, "truncated: header ends after 6 of 16 bytes");

    /* The config disagrees with the files: both sizes are named. */
    open_request size_rq = {"MNIST", 28, 1, 1, ""};
    path_in(size_rq.path, sizeof size_rq.path, "idx_plain");
    expect_open_fails("image size vs config", &size_rq, "idx_plain/train-images-idx3-ubyte",
                      "are 4x4 with 1 channel but the config says data.image_size 28, data.channels 1");
    open_request channel_rq = {"MNIST", S, 3, 1, ""};
    path_in(channel_rq.path, sizeof channel_rq.path, "idx_plain");
    expect_open_fails("channels vs config", &channel_rq, "idx_plain/train-images-idx3-ubyte", "data.channels 3");
    open_request missing_rq = {"MNIST", S, 1, 1, ""};
    path_in(missing_rq.path, sizeof missing_rq.path, "idx_bad");
    expect_open_fails("no IDX file in the folder", &missing_rq, missing_rq.path, "no train-images-idx3-ubyte[.gz]");
}

static void test_cifar(void) {
    enum { PIXELS = 1024, RECORD = 3073 };
    make_dir("cifar");
    make_dir("cifar/cifar-10-batches-bin");
    /* Batch b holds 2 records (the real files hold 10000); record r of batch b has label
     * (b + r) % 10 and plane byte (c, p) = value(b, r, c, p). */
#define CIFAR_VALUE(b, r, c, p) ((uint8_t)((b) * 50 + (r) * 20 + (c) * 80 + (p) * 3))
    uint8_t batch[2 * RECORD];
    char path[512];
    for (int b = 0; b < 6; b++) {
        for (int r = 0; r < 2; r++) {
            uint8_t *rec = batch + r * RECORD;
            rec[0] = (uint8_t)((b + r) % 10);
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < PIXELS; p++) rec[1 + c * PIXELS + p] = CIFAR_VALUE(b, r, c, p);
        }
        char name[96];
        if (b < 5) snprintf(name, sizeof name, "cifar/cifar-10-batches-bin/data_batch_%d.bin", b + 1);
        else snprintf(name, sizeof name, "cifar/cifar-10-batches-bin/test_batch.bin");
        path_in(path, sizeof path, name);
        write_bytes(path, batch, sizeof batch);
    }
    ncsn_data_config dc = data_config("CIFAR10", 32, 3);
    ncsn_dataset ds;
    path_in(path, sizeof path, "cifar");
    ncsn_dataset_open(&ds, &dc, path, 1, 0);
    EXPECT(ds.N == 10 && ds.H == 32 && ds.W == 32 && ds.C == 3, "train: N %zu %dx%dx%d", ds.N, ds.H, ds.W, ds.C);
    int mismatches = 0;
    for (int i = 0; i < 10 && ds.N == 10; i++)
        for (int p = 0; p < PIXELS; p++)
            for (int c = 0; c < 3; c++)
                mismatches += ds.u8[((size_t)i * PIXELS + p) * 3 + c] != CIFAR_VALUE(i / 2, i % 2, c, p);
    EXPECT(mismatches == 0, "%d pixel bytes differ from the CHW planes moved to HWC", mismatches);
    if (!mismatches) printf("  ok   CIFAR-10: 5 batch files -> %zu images, planes moved to HWC exactly\n", ds.N);
    ncsn_dataset_free(&ds);
    ncsn_dataset_open(&ds, &dc, path, 0, 0);
    EXPECT(ds.N == 2 && ds.u8[0] == CIFAR_VALUE(5, 0, 0, 0), "test split: N %zu", ds.N);
    ncsn_dataset_free(&ds);

    make_dir("cifar_bad");
    open_request rq = {"CIFAR10", 32, 3, 1, ""};
    path_in(rq.path, sizeof rq.path, "cifar_bad/short.bin");
    write_bytes(rq.path, batch, sizeof batch - 100);
    expect_open_fails("CIFAR record cut short", &rq, rq.path, "6046 bytes is not a whole number of 3073-byte records");
    batch[RECORD] = 10;
    path_in(rq.path, sizeof rq.path, "cifar_bad/label.bin");
    write_bytes(rq.path, batch, sizeof batch);
    expect_open_fails("CIFAR label byte out of range", &rq, rq.path, "record 1 has label 10, not 0..9");
    path_in(rq.path, sizeof rq.path, "cifar_bad");
    expect_open_fails("CIFAR folder without batches", &rq, "cifar_bad/data_batch_1.bin", "missing");
    open_request size_rq = {"CIFAR10", 64, 3, 1, ""};
    path_in(size_rq.path, sizeof size_rq.path, "cifar");
    expect_open_fails("CIFAR vs a 64x64 config", &size_rq, size_rq.path, "data.image_size 64");
#undef CIFAR_VALUE
}

static void test_npy(void) {
    enum { N = 3, S = 5, C = 3 };
    uint8_t data[N * S * S * C];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 13 + 1);
    char path[512];
    make_dir("npy");
    path_in(path, sizeof path, "npy/rgb.npy");
    long shape4[4] = {N, S, S, C};
    write_npy_file(path, "|u1", 4, shape4, data, sizeof data);
    ncsn_data_config dc = data_config("NPY", S, C);
    ncsn_dataset ds;
    ncsn_dataset_open(&ds, &dc, path, 1, 0);
    EXPECT(ds.N == N && ds.C == C && !memcmp(ds.u8, data, sizeof data), "NHWC .npy: N %zu C %d", ds.N, ds.C);
    float chw[S * S * C];
    ncsn_dataset_example(&ds, 2, chw);
    /* NHWC in the file, CHW out: element (c, y, x) of example 2 is byte ((2*S + y)*S + x)*C + c. */
    EXPECT(chw[1 * S * S + 4 * S + 3] == (float)data[((2 * S + 4) * S + 3) * C + 1] / 255.0f,
           "CHW element (1,4,3) = %g", chw[1 * S * S + 4 * S + 3]);
    ncsn_dataset_free(&ds);

    /* (N, H, W) is one channel; any image dataset reads a .npy --data. */
    path_in(path, sizeof path, "npy/gray.npy");
    long shape3[3] = {N * C, S, S};
    write_npy_file(path, "|u1", 3, shape3, data, sizeof data);
    dc = data_config("MNIST", S, 1);
    ncsn_dataset_open(&ds, &dc, path, 1, 0);
    EXPECT(ds.N == N * C && ds.C == 1 && !memcmp(ds.u8, data, sizeof data), "(N,H,W) .npy as MNIST: N %zu", ds.N);
    printf("  ok   .npy: NHWC and NHW uint8 arrays, read as NPY and as MNIST\n");
    ncsn_dataset_free(&ds);

    open_request rq = {"NPY", S, C, 1, ""};
    path_in(rq.path, sizeof rq.path, "npy/float.npy");
    write_npy_file(rq.path, "<f4", 4, shape4, data, sizeof data);
    expect_open_fails(".npy of float32 images", &rq, rq.path, "must be uint8");
    path_in(rq.path, sizeof rq.path, "npy/short.npy");
    write_npy_file(rq.path, "|u1", 4, shape4, data, sizeof data - 10);
    expect_open_fails(".npy with missing data", &rq, rq.path,
                      "truncated: 215 bytes of data, the header's shape needs 225");
    path_in(rq.path, sizeof rq.path, "npy/rgb.npy");
    rq.image_size = 6;
    expect_open_fails(".npy vs the config's size", &rq, rq.path,
                      "are 5x5 with 3 channels but the config says data.image_size 6, data.channels 3");
    path_in(rq.path, sizeof rq.path, "npy/junk.npy");
    write_bytes(rq.path, "NUMPY not really", 16);
    expect_open_fails("not a .npy", &rq, rq.path, "not a .npy file");
}

/* Pillow 9.4: Image.fromarray(a).resize((ow, oh), Image.BILINEAR). */
static void test_resize_against_pillow(void) {
    /* RGB 7x5 -> 3x2 (downsampling: the filter support widens), a[y,x,c] = (37y + 91x + 53c) % 256 */
    uint8_t rgb[7 * 5 * 3], out_rgb[3 * 2 * 3];
    for (int y = 0; y < 7; y++)
        for (int x = 0; x < 5; x++)
            for (int c = 0; c < 3; c++) rgb[(y * 5 + x) * 3 + c] = (uint8_t)((y * 37 + x * 91 + c * 53) % 256);
    static const uint8_t pillow_rgb[18] = {98, 126, 136, 106, 134, 147, 129, 154, 131,
                                           119, 132, 128, 129, 126, 137, 129, 142, 127};
    ncsn_image_resize_bilinear(out_rgb, 3, 2, rgb, 7, 5, 3);
    int bad = 0;
    for (int i = 0; i < 18; i++) bad += out_rgb[i] != pillow_rgb[i];
    EXPECT(bad == 0, "RGB 7x5 -> 3x2: %d of 18 bytes differ from Pillow (first: got %u want %u)", bad, out_rgb[0],
           pillow_rgb[0]);
    /* gray 6x9 -> 4x13 (down vertically, up horizontally), g[y,x] = (11y^2 + 29x) % 256 */
    uint8_t gray[6 * 9], out_gray[4 * 13];
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 9; x++) gray[y * 9 + x] = (uint8_t)((y * y * 11 + x * 29) % 256);
    static const uint8_t pillow_gray[52] = {
        4,   20,  40,  60,  80,  100, 120, 140, 160, 180, 200, 220, 236, 39, 55, 75,  95,  115,
        135, 155, 175, 184, 187, 207, 161, 100, 119, 135, 155, 175, 142, 129, 149, 169, 135, 67,
        87,  94,  95,  78,  94,  114, 134, 95,  78,  98,  118, 138, 158, 178, 198, 214};
    ncsn_image_resize_bilinear(out_gray, 4, 13, gray, 6, 9, 1);
    int bad_gray = 0, first = -1;
    for (int i = 0; i < 52; i++)
        if (out_gray[i] != pillow_gray[i] && bad_gray++ == 0) first = i;
    EXPECT(bad_gray == 0, "gray 6x9 -> 4x13: %d of 52 bytes differ from Pillow (first at %d: got %u want %u)",
           bad_gray, first, first >= 0 ? out_gray[first] : 0, first >= 0 ? pillow_gray[first] : 0);
    if (!bad && !bad_gray) printf("  ok   resize: RGB 7x5->3x2 and gray 6x9->4x13 equal Pillow 9.4's bytes\n");

    /* A ramp 10x halved: each output is the mean of its two inputs' neighbourhood with
     * weights 1/8, 3/8, 3/8, 1/8 (support 2), which on a linear ramp is the midpoint. */
    uint8_t ramp[8], half[4];
    for (int x = 0; x < 8; x++) ramp[x] = (uint8_t)(10 * x + 10);
    ncsn_image_resize_bilinear(half, 1, 4, ramp, 1, 8, 1);
    /* Interior outputs are 10 * (2xx + 0.5) + 10; the edges renormalise over the taps that
     * exist: output 0 = (3*10 + 3*20 + 1*30) / 7 = 17.14 -> 17. */
    EXPECT(half[0] == 17 && half[1] == 35 && half[2] == 55 && half[3] == 73, "ramp halved: %u %u %u %u", half[0],
           half[1], half[2], half[3]);
}

static void test_center_crop(void) {
    /* value = 10y + x on a 6x7 image */
    uint8_t img[6 * 7], out[9];
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 7; x++) img[y * 7 + x] = (uint8_t)(10 * y + x);
    /* H: (6-3)/2 = 1.5 rounds half to even -> 2; W: (7-3)/2 = 2. */
    ncsn_image_center_crop(out, 3, 3, img, 6, 7, 1);
    EXPECT(out[0] == 22 && out[8] == 44, "3x3 crop of 6x7 starts at (2,2): got %u .. %u", out[0], out[8]);
    /* W: (7-4)/2 = 1.5 -> 2 as well; (6-5)/2 = 0.5 -> 0. */
    uint8_t out2[5 * 4];
    ncsn_image_center_crop(out2, 5, 4, img, 6, 7, 1);
    EXPECT(out2[0] == 2 && out2[19] == 45, "5x4 crop starts at (0,2): got %u .. %u", out2[0], out2[19]);
    /* Larger than the image: PIL pads with zeros; (2-4)/2 = -1. */
    uint8_t small[4] = {1, 2, 3, 4}, padded[16];
    ncsn_image_center_crop(padded, 4, 4, small, 2, 2, 1);
    static const uint8_t want[16] = {0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0};
    EXPECT(!memcmp(padded, want, 16), "padded crop: row 1 = %u %u %u %u", padded[4], padded[5], padded[6], padded[7]);
    int h, w;
    ncsn_resize_shorter_side(218, 178, 64, &h, &w);
    EXPECT(h == 78 && w == 64, "shorter side of 218x178 to 64: %dx%d (int(64*218/178) = 78)", h, w);
    ncsn_resize_shorter_side(32, 32, 32, &h, &w);
    EXPECT(h == 32 && w == 32, "already 32: %dx%d", h, w);
}

static void test_image_read(void) {
    make_dir("images");
    char path[512];
    enum { H = 9, W = 11 };
    uint8_t rgb[H * W * 3];
    for (int i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)(i * 7 + 5);
    /* An interlaced RGB PNG read as RGB is exact; read as gray it is PIL's 601 luma. */
    path_in(path, sizeof path, "images/adam7.png");
    write_png_file(path, rgb, H, W, 3, 1);
    uint8_t *px;
    int h, w;
    ncsn_image_read(path, 3, &px, &h, &w);
    EXPECT(h == H && w == W && !memcmp(px, rgb, sizeof rgb), "interlaced PNG round trip: %dx%d", h, w);
    free(px);
    ncsn_image_read(path, 1, &px, &h, &w);
    int luma_bad = 0;
    for (int p = 0; p < H * W; p++) {
        uint32_t r = rgb[3 * p], g = rgb[3 * p + 1], b = rgb[3 * p + 2];
        luma_bad += px[p] != (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
    }
    EXPECT(luma_bad == 0, "RGB -> L: %d pixels differ from PIL's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16",
           luma_bad);
    free(px);
    /* gray PNG wanted as RGB replicates the channel */
    path_in(path, sizeof path, "images/gray.png");
    write_png_file(path, rgb, H, W, 1, 0);
    ncsn_image_read(path, 3, &px, &h, &w);
    int replicate_bad = 0;
    for (int p = 0; p < H * W; p++) replicate_bad += px[3 * p] != rgb[p] || px[3 * p + 2] != rgb[p];
    EXPECT(replicate_bad == 0, "gray -> RGB: %d pixels not replicated", replicate_bad);
    free(px);
    /* JPEG is lossy: a smooth image comes back within a few levels. */
    uint8_t smooth[16 * 16 * 3];
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            for (int c = 0; c < 3; c++) smooth[(y * 16 + x) * 3 + c] = (uint8_t)(60 + 4 * x + 3 * y + 30 * c);
    path_in(path, sizeof path, "images/smooth.jpg");
    write_jpeg_file(path, smooth, 16, 16);
    ncsn_image_read(path, 3, &px, &h, &w);
    int max_err = 0;
    for (int i = 0; i < 16 * 16 * 3; i++) {
        int e = abs((int)px[i] - (int)smooth[i]);
        if (e > max_err) max_err = e;
    }
    /* Quality 90 on a smooth gradient: chroma subsampling and quantisation leave a few levels. */
    EXPECT(h == 16 && w == 16 && max_err <= 6, "JPEG q90 round trip: %dx%d, max error %d levels (allowed 6)", h, w,
           max_err);
    printf("  ok   image read: Adam7 PNG exact, PIL luma, gray replication, JPEG within %d levels\n", max_err);
    free(px);

    /* Broken images fail with the file named. */
    make_dir("images_bad");
    open_request rq = {"FOLDER", 4, 3, 1, ""};
    path_in(path, sizeof path, "images_bad/fake.png");
    write_bytes(path, "this is text, not pixels", 24);
    path_in(rq.path, sizeof rq.path, "images_bad");
    expect_open_fails("text named .png", &rq, "images_bad/fake.png", "not a PNG or JPEG file");
    unlink(path);
    path_in(path, sizeof path, "images_bad/cut.png");
    write_png_file(path, rgb, H, W, 3, 0);
    truncate_file(path, 0.6);
    expect_open_fails("PNG cut short", &rq, "images_bad/cut.png", "bad PNG");
    unlink(path);
    uint8_t noisy[64 * 64 * 3];
    for (size_t i = 0; i < sizeof noisy; i++) noisy[i] = (uint8_t)(i * 2654435761u >> 24);
    path_in(path, sizeof path, "images_bad/cut.jpg");
    write_jpeg_file(path, noisy, 64, 64);
    truncate_file(path, 0.5);
    expect_open_fails("JPEG cut short", &rq, "images_bad/cut.jpg", "bad JPEG: Premature end of JPEG file");
}

static void test_folder_and_celeba(void) {
    /* FOLDER: Resize(4) of the shorter side, then CenterCrop(4); files sorted by path,
     * subfolders included, other files ignored. */
    make_dir("folder");
    make_dir("folder/sub");
    char path[512];
    uint8_t a[6 * 10 * 3], b[10 * 6], c[4 * 4 * 3];
    for (size_t i = 0; i < sizeof a; i++) a[i] = (uint8_t)(i * 5);
    for (size_t i = 0; i < sizeof b; i++) b[i] = (uint8_t)(255 - i * 3);
    for (size_t i = 0; i < sizeof c; i++) c[i] = (uint8_t)(i * 11);
    path_in(path, sizeof path, "folder/b_wide.png");
    write_png_file(path, a, 6, 10, 3, 0);
    path_in(path, sizeof path, "folder/a_tall_gray.png");
    write_png_file(path, b, 10, 6, 1, 0);
    path_in(path, sizeof path, "folder/sub/c_exact.png");
    write_png_file(path, c, 4, 4, 3, 0);
    path_in(path, sizeof path, "folder/notes.txt");
    write_bytes(path, "not an image", 12);

    ncsn_data_config dc = data_config("FOLDER", 4, 3);
    ncsn_dataset ds;
    path_in(path, sizeof path, "folder");
    ncsn_dataset_open(&ds, &dc, path, 1, 0);
    EXPECT(ds.N == 3 && ds.H == 4 && ds.W == 4 && ds.C == 3, "folder: N %zu %dx%dx%d", ds.N, ds.H, ds.W, ds.C);
    if (ds.N == 3) {
        /* Expected: the same transforms applied by hand. a_tall_gray: 10x6 -> 6x4 -> crop rows 1..4. */
        uint8_t gray_rgb[10 * 6 * 3], mid[6 * 6 * 3], want[4 * 4 * 3];
        for (int p = 0; p < 60; p++) gray_rgb[3 * p] = gray_rgb[3 * p + 1] = gray_rgb[3 * p + 2] = b[p];
        int h, w;
        ncsn_resize_shorter_side(10, 6, 4, &h, &w);
        EXPECT(h == 6 && w == 4, "10x6 -> %dx%d", h, w);
        ncsn_image_resize_bilinear(mid, h, w, gray_rgb, 10, 6, 3);
        ncsn_image_center_crop(want, 4, 4, mid, h, w, 3);
        EXPECT(!memcmp(ds.u8, want, sizeof want), "a_tall_gray.png differs from Resize(4) + CenterCrop(4)");
        ncsn_resize_shorter_side(6, 10, 4, &h, &w);
        ncsn_image_resize_bilinear(mid, h, w, a, 6, 10, 3);
        ncsn_image_center_crop(want, 4, 4, mid, h, w, 3);
        EXPECT(!memcmp(ds.u8 + 48, want, sizeof want), "b_wide.png differs from Resize(4) + CenterCrop(4)");
        EXPECT(!memcmp(ds.u8 + 96, c, sizeof c), "sub/c_exact.png (already 4x4) is not unchanged");
        printf("  ok   folder: 3 images (sorted, recursive, .txt ignored) at 4x4x3\n");
    }
    ncsn_dataset_free(&ds);

    /* CELEBA: torchvision layout root/celeba/img_align_celeba + list_eval_partition.txt. */
    make_dir("celeba_root");
    make_dir("celeba_root/celeba");
    make_dir("celeba_root/celeba/img_align_celeba");
    enum { CH = 150, CW = 144, S = 8 };
    uint8_t *face = malloc(CH * CW * 3);
    const char *names[4] = {"000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"};
    for (int i = 0; i < 4; i++) {
        for (int p = 0; p < CH * CW * 3; p++) face[p] = (uint8_t)(40 * i + (p / 3) % CW + (p / 3) / CW / 2 + p % 3);
        char name[128];
        snprintf(name, sizeof name, "celeba_root/celeba/img_align_celeba/%s", names[i]);
        path_in(path, sizeof path, name);
        write_jpeg_file(path, face, CH, CW);
    }
    free(face);
    path_in(path, sizeof path, "celeba_root/celeba/list_eval_partition.txt");
    const char *partition = "000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n";
    write_bytes(path, partition, strlen(partition));
    dc = data_config("CELEBA", S, 3);
    path_in(path, sizeof path, "celeba_root");
    ncsn_dataset_open(&ds, &dc, path, 1, 0);
    EXPECT(ds.N == 2 && ds.H == S && ds.C == 3, "CelebA train split: N %zu (want 2: partition 0)", ds.N);
    if (ds.N == 2) {
        char file[512];
        path_in(file, sizeof file, "celeba_root/celeba/img_align_celeba/000002.jpg");
        uint8_t *px, crop[140 * 140 * 3], want[S * S * 3];
        int h, w;
        ncsn_image_read(file, 3, &px, &h, &w);
        ncsn_image_center_crop(crop, 140, 140, px, h, w, 3);
        ncsn_image_resize_bilinear(want, S, S, crop, 140, 140, 3);
        EXPECT(!memcmp(ds.u8 + S * S * 3, want, sizeof want), "CelebA image 2 != CenterCrop(140) + Resize(8)");
        free(px);
    }
    ncsn_dataset_free(&ds);
    ncsn_dataset_open(&ds, &dc, path, 0, 0);
    EXPECT(ds.N == 1, "CelebA test split: N %zu (want 1: partition 2)", ds.N);
    printf("  ok   CelebA: partition file picks 2 train / 1 test images, CenterCrop(140) + Resize(8)\n");
    ncsn_dataset_free(&ds);
}

static void test_toy(void) {
    ncsn_data_config dc = data_config("TOY", 0, 0);
    dc.toy_size = 4000;
    dc.toy_weight = 0.2;
    dc.toy_mean1 = 5.0;
    dc.toy_mean2 = -5.0;
    ncsn_dataset train, again, test;
    ncsn_dataset_open(&train, &dc, NULL, 1, 42);
    ncsn_dataset_open(&again, &dc, NULL, 1, 42);
    ncsn_dataset_open(&test, &dc, NULL, 0, 42);
    EXPECT(train.N == 4000 && train.C == 2 && train.H == 1 && train.W == 1 && train.f32 && !train.u8,
           "toy shape N %zu C %d", train.N, train.C);
    EXPECT(!memcmp(train.f32, again.f32, 4000 * 2 * sizeof(float)), "same seed, different toy data");
    EXPECT(memcmp(train.f32, test.f32, 4000 * 2 * sizeof(float)) != 0, "train and test toy splits are identical");
    /* The components are 10 apart with unit variance: the sign of x0 + x1 tells them apart
     * except with probability Phi(-5 sqrt 2) ~ 1e-12. */
    size_t first = 0;
    double sum1 = 0, sq1 = 0;
    for (size_t i = 0; i < train.N; i++) {
        float x0 = train.f32[2 * i], x1 = train.f32[2 * i + 1];
        if (x0 + x1 > 0) {
            first++;
            sum1 += x0;
            sq1 += (double)x0 * x0;
        }
    }
    double frac = (double)first / train.N, mean1 = sum1 / first, sd1 = sqrt(sq1 / first - mean1 * mean1);
    /* 4 standard errors: weight sqrt(.2*.8/4000) = 0.0063; mean 1/sqrt(800) = 0.035; sd ~0.025. */
    EXPECT(fabs(frac - 0.2) < 0.025, "fraction in the first component %.4f (want 0.2 +- 0.025)", frac);
    EXPECT(fabs(mean1 - 5.0) < 0.15 && fabs(sd1 - 1.0) < 0.1, "first component mean %.3f sd %.3f", mean1, sd1);
    printf("  ok   toy: weight %.4f, component mean %.3f sd %.3f (want 0.2, 5, 1)\n", frac, mean1, sd1);
    ncsn_dataset_free(&train);
    ncsn_dataset_free(&again);
    ncsn_dataset_free(&test);
}

/* ---- loader ------------------------------------------------------------------------------- */

/* A dataset whose example i is the single float i, so a batch spells out the order. */
static ncsn_dataset index_dataset(size_t N) {
    ncsn_dataset ds;
    memset(&ds, 0, sizeof ds);
    snprintf(ds.path, sizeof ds.path, "index dataset");
    ds.N = N;
    ds.C = ds.H = ds.W = 1;
    ds.f32 = malloc(N * sizeof(float));
    for (size_t i = 0; i < N; i++) ds.f32[i] = (float)i;
    return ds;
}

static ncsn_loader_options loader_options(int batch_size, uint64_t seed) {
    ncsn_loader_options opt;
    memset(&opt, 0, sizeof opt);
    opt.batch_size = batch_size;
    opt.seed = seed;
    opt.shuffle = 1;
    return opt;
}

typedef struct {
    int allocs, frees;
} provider_counts;

static void *counting_alloc(void *ctx, size_t bytes) {
    ((provider_counts *)ctx)->allocs++;
    return ncsn_xmalloc(bytes);
}

static void counting_free(void *ctx, void *ptr) {
    ((provider_counts *)ctx)->frees++;
    free(ptr);
}

/* A checkpoint's data state from a larger dataset: position 10 of a 10-example dataset. */
static void loader_from_bad_state(const void *arg) {
    (void)arg;
    ncsn_dataset ds = index_dataset(10);
    ncsn_loader_options opt = loader_options(4, 1);
    ncsn_loader_state state = {0, 10};
    ncsn_loader_create(&ds, &opt, state);
}

static void test_permutation(void) {
    enum { N = 1000 };
    uint32_t *perm = malloc(N * sizeof *perm), *other = malloc(N * sizeof *other);
    int all_perms = 1;
    for (uint64_t epoch = 0; epoch < 20; epoch++) {
        ncsn_loader_permutation(perm, N, 7, 0, epoch);
        uint8_t seen[N] = {0};
        for (int i = 0; i < N; i++)
            if (perm[i] < N) seen[perm[i]]++;
        for (int i = 0; i < N; i++) all_perms &= seen[i] == 1;
    }
    EXPECT(all_perms, "an epoch order is not a permutation of 0..N-1");
    ncsn_loader_permutation(perm, N, 7, 0, 3);
    ncsn_loader_permutation(other, N, 7, 0, 3);
    EXPECT(!memcmp(perm, other, N * sizeof *perm), "same (seed, stream, epoch) gave two orders");
    ncsn_loader_permutation(other, N, 7, 0, 4);
    EXPECT(memcmp(perm, other, N * sizeof *perm) != 0, "epochs 3 and 4 have the same order");
    ncsn_loader_permutation(other, N, 8, 0, 3);
    EXPECT(memcmp(perm, other, N * sizeof *perm) != 0, "seeds 7 and 8 have the same order");
    ncsn_loader_permutation(other, N, 7, 1, 3);
    EXPECT(memcmp(perm, other, N * sizeof *perm) != 0, "streams 0 and 1 have the same order");
    /* Unbiased: over 5000 epochs of N = 10, each value lands first ~500 times (binomial sd
     * 21.2); allow 5 sd. A modulo shuffle or an off-by-one in the range fails this. */
    int counts[10] = {0}, worst = 0;
    for (uint64_t epoch = 0; epoch < 5000; epoch++) {
        ncsn_loader_permutation(perm, 10, 1234, 0, epoch);
        counts[perm[0]]++;
    }
    for (int k = 0; k < 10; k++)
        if (abs(counts[k] - 500) > worst) worst = abs(counts[k] - 500);
    EXPECT(worst <= 106, "first element counts deviate by %d from 500 (allowed 106 = 5 sd)", worst);
    printf("  ok   permutation: one per epoch, keyed by seed/stream/epoch, first-slot counts within %d of 500\n",
           worst);
    free(perm);
    free(other);
}

static void test_loader(void) {
    enum { N = 10, B = 4, BATCHES = 12 };
    ncsn_dataset ds = index_dataset(N);
    ncsn_loader_options opt = loader_options(B, 99);
    ncsn_loader_state start = {0, 0};

    /* The stream: concatenated epoch permutations, cut into full batches of 4. */
    float want[BATCHES * B];
    uint32_t perm[N];
    for (int k = 0; k < BATCHES * B; k++) {
        if (k % N == 0) ncsn_loader_permutation(perm, N, 99, 0, (uint64_t)(k / N));
        want[k] = (float)perm[k % N];
    }
    ncsn_loader *ld = ncsn_loader_create(&ds, &opt, start);
    float got[BATCHES * B];
    ncsn_loader_state after3 = {0, 0};
    for (int b = 0; b < BATCHES; b++) {
        ncsn_loader_next(ld, got + b * B);
        if (b == 2) after3 = ncsn_loader_get_state(ld);
    }
    ncsn_loader_state end = ncsn_loader_get_state(ld);
    ncsn_loader_destroy(ld);
    int stream_ok = !memcmp(got, want, sizeof want);
    EXPECT(stream_ok, "batches are not the concatenated epoch permutations: first %g %g %g %g want %g %g %g %g",
           got[0], got[1], got[2], got[3], want[0], want[1], want[2], want[3]);
    /* 12 examples in: epoch 1, position 2 (mid-epoch); 48 in: epoch 4, position 8. */
    EXPECT(after3.epoch == 1 && after3.position == 2, "state after 3 batches: (%llu, %llu)",
           (unsigned long long)after3.epoch, (unsigned long long)after3.position);
    EXPECT(end.epoch == 4 && end.position == 8, "state after 12 batches: (%llu, %llu)", (unsigned long long)end.epoch,
           (unsigned long long)end.position);
    if (stream_ok) printf("  ok   loader: 12 full batches of 4 over N=10 follow the epoch permutations\n");

    /* Resume from the mid-epoch state: a fresh loader continues the identical stream. */
    ld = ncsn_loader_create(&ds, &opt, after3);
    float resumed[(BATCHES - 3) * B];
    for (int b = 0; b < BATCHES - 3; b++) ncsn_loader_next(ld, resumed + b * B);
    ncsn_loader_destroy(ld);
    EXPECT(!memcmp(resumed, want + 3 * B, sizeof resumed), "resume from (1, 2) diverges: got %g %g want %g %g",
           resumed[0], resumed[1], want[12], want[13]);

    /* set_state on a running loader discards what was prepared ahead. */
    provider_counts counts = {0, 0};
    opt.depth = 3;
    opt.buffer_alloc = counting_alloc;
    opt.buffer_free = counting_free;
    opt.buffer_ctx = &counts;
    ld = ncsn_loader_create(&ds, &opt, start);
    ncsn_batch held[2];
    held[0] = ncsn_loader_acquire(ld);
    held[1] = ncsn_loader_acquire(ld); /* two held at once with depth 3 */
    EXPECT(held[0].n == B && held[1].x[0] == want[4] && held[1].begin.position == 4 && held[1].end.position == 8,
           "second held batch: first %g (want %g), begin %llu end %llu", held[1].x[0], want[4],
           (unsigned long long)held[1].begin.position, (unsigned long long)held[1].end.position);
    ncsn_loader_release(ld, &held[0]);
    ncsn_loader_release(ld, &held[1]);
    ncsn_loader_set_state(ld, after3);
    ncsn_loader_next(ld, resumed);
    EXPECT(!memcmp(resumed, want + 3 * B, B * sizeof(float)), "after set_state: %g %g %g %g want %g %g %g %g",
           resumed[0], resumed[1], resumed[2], resumed[3], want[12], want[13], want[14], want[15]);
    ncsn_loader_destroy(ld);
    EXPECT(counts.allocs == 3 && counts.frees == 3, "buffer provider: %d allocs, %d frees (want 3, 3)",
           counts.allocs, counts.frees);
    printf("  ok   loader: resume from (epoch 1, position 2) and set_state continue the same stream; provider 3/3\n");

    /* Two data-parallel shards split every global batch into halves. */
    opt = loader_options(B, 99);
    opt.shard_count = 2;
    float shard_rows[2][2 * 3];
    for (int s = 0; s < 2; s++) {
        opt.shard_index = s;
        ld = ncsn_loader_create(&ds, &opt, start);
        for (int b = 0; b < 3; b++) ncsn_loader_next(ld, shard_rows[s] + 2 * b);
        ncsn_loader_destroy(ld);
    }
    int shard_bad = 0;
    for (int b = 0; b < 3; b++)
        for (int r = 0; r < 2; r++)
            shard_bad += shard_rows[0][2 * b + r] != want[b * B + r] || shard_rows[1][2 * b + r] != want[b * B + 2 + r];
    EXPECT(shard_bad == 0, "%d shard rows are not the halves of the global batches", shard_bad);

    /* Different seeds give different streams; no shuffle is dataset order. */
    opt = loader_options(B, 100);
    ld = ncsn_loader_create(&ds, &opt, start);
    ncsn_loader_next(ld, got);
    ncsn_loader_next(ld, got + B);
    ncsn_loader_destroy(ld);
    EXPECT(memcmp(got, want, 2 * B * sizeof(float)) != 0, "seeds 99 and 100 gave the same first batches");
    opt.shuffle = 0;
    ld = ncsn_loader_create(&ds, &opt, start);
    for (int b = 0; b < 3; b++) ncsn_loader_next(ld, got + b * B);
    ncsn_loader_destroy(ld);
    int ordered = 1;
    for (int k = 0; k < 3 * B; k++) ordered &= got[k] == (float)(k % N);
    EXPECT(ordered, "shuffle off is not 0, 1, ..., 9, 0, 1: %g %g ... %g", got[0], got[1], got[11]);
    free(ds.f32);

    /* uint8 images come out NCHW as k / 255. */
    ncsn_dataset img;
    memset(&img, 0, sizeof img);
    img.N = 3;
    img.C = 3;
    img.H = 2;
    img.W = 2;
    img.u8 = malloc(3 * 12);
    for (int i = 0; i < 36; i++) img.u8[i] = (uint8_t)(i * 7);
    opt = loader_options(3, 5);
    opt.shuffle = 0;
    ld = ncsn_loader_create(&img, &opt, start);
    float batch[36];
    ncsn_loader_next(ld, batch);
    ncsn_loader_destroy(ld);
    /* example 1, channel 2, pixel (1, 0): HWC byte 12 + (1*2 + 0)*3 + 2 = 20 */
    EXPECT(batch[12 + 2 * 4 + 2] == (float)(20 * 7) / 255.0f, "NCHW element (1,2,1,0) = %g want %g",
           batch[12 + 2 * 4 + 2], (float)(20 * 7) / 255.0f);
    free(img.u8);

    expect_death("loader state past the dataset's end", loader_from_bad_state, NULL, "index dataset",
                 "data order state (epoch 0, position 10) does not fit a dataset of 10 examples");
}

static void test_fashion_mnist(void) {
    char file[512];
    snprintf(file, sizeof file, "%s/train-images-idx3-ubyte.gz", NCSN_FASHION_MNIST_DIR);
    if (access(file, R_OK) != 0) {
        printf("  skipped: dataset-fashion-mnist not installed (%s)\n", file);
        return;
    }
    ncsn_data_config dc = data_config("FashionMNIST", 28, 1);
    ncsn_dataset ds;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ncsn_dataset_open(&ds, &dc, NULL, 1, 0); /* no --data: the Debian package */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    EXPECT(ds.N == 60000 && ds.H == 28 && ds.W == 28 && ds.C == 1, "Fashion-MNIST train: N %zu %dx%d", ds.N, ds.H,
           ds.W);
    double sum = 0;
    size_t bytes = ds.N * 28 * 28;
    for (size_t i = 0; i < bytes; i++) sum += ds.u8[i];
    double mean = sum / (double)bytes / 255.0;
    /* The published training-set mean of Fashion-MNIST is 0.2860. */
    EXPECT(mean > 0.25 && mean < 0.35, "Fashion-MNIST pixel mean %.4f outside 0.25..0.35", mean);
    printf("  ok   Fashion-MNIST: %zu images 28x28 from %s in %.2f s, pixel mean %.4f\n", ds.N, ds.path, seconds,
           mean);

    /* One epoch-crossing pass of the loader at the official batch size. */
    ncsn_loader_options opt = loader_options(128, 1234);
    ncsn_loader_state start = {0, 59900};
    ncsn_loader *ld = ncsn_loader_create(&ds, &opt, start);
    float *batch = malloc(128 * 28 * 28 * sizeof(float));
    double bsum = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int b = 0; b < 50; b++) {
        ncsn_loader_next(ld, batch);
        for (int i = 0; i < 128 * 28 * 28; i++) bsum += batch[i];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ncsn_loader_state end = ncsn_loader_get_state(ld);
    ncsn_loader_destroy(ld);
    double bmean = bsum / (50.0 * 128 * 28 * 28);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    EXPECT(end.epoch == 1 && end.position == 6300, "state after 50 batches from (0, 59900): (%llu, %llu)",
           (unsigned long long)end.epoch, (unsigned long long)end.position);
    EXPECT(bmean > 0.25 && bmean < 0.35, "loader batch mean %.4f outside 0.25..0.35", bmean);
    printf("  ok   Fashion-MNIST loader: 50 batches of 128 across the epoch end, mean %.4f, %.0f batches/s\n", bmean,
           50 / seconds);
    free(batch);
    ncsn_dataset_free(&ds);
    ncsn_dataset_open(&ds, &dc, NULL, 0, 0);
    EXPECT(ds.N == 10000, "Fashion-MNIST test: N %zu", ds.N);
    ncsn_dataset_free(&ds);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Which data has a test split of its own (the trainer's test loss is off otherwise); uses
 * the files the tests above left in the scratch folder. */
static void test_has_test_split(void) {
    struct {
        const char *dataset, *rel; /* rel NULL: no --data */
        int want;
    } cases[] = {
        {"MNIST", "idx_plain", 1},                          /* train + t10k files */
        {"MNIST", "idx_gz", 0},                             /* train file only */
        {"MNIST", "idx_plain/train-images-idx3-ubyte", 0}, /* one file is one split */
        {"CIFAR10", "cifar", 1},                            /* test_batch.bin */
        {"FOLDER", "folder", 0},
        {"TOY", NULL, 1},                                   /* generated: split 1 is its own draw */
        {"CIFAR10", "no_such_folder", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ncsn_data_config dc = data_config(cases[i].dataset, 4, 1);
        char path[512];
        if (cases[i].rel) path_in(path, sizeof path, cases[i].rel);
        int got = ncsn_dataset_has_test_split(&dc, cases[i].rel ? path : NULL);
        EXPECT(got == cases[i].want, "has_test_split(%s, %s) = %d, want %d", cases[i].dataset,
               cases[i].rel ? cases[i].rel : "(none)", got, cases[i].want);
    }
    printf("  ok   test splits: %zu cases (IDX with and without t10k, one file, CIFAR-10, folder, toy, missing)\n",
           sizeof cases / sizeof cases[0]);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/ncsn_test_data_XXXXXX");
    if (!mkdtemp(root)) ncsn_die("mkdtemp failed");
    printf("test_data (scratch folder %s)\n", root);
    test_idx();
    test_cifar();
    test_npy();
    test_resize_against_pillow();
    test_center_crop();
    test_image_read();
    test_folder_and_celeba();
    test_has_test_split();
    test_toy();
    test_permutation();
    test_loader();
    test_fashion_mnist();
    if (nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) printf("  note: could not remove %s\n", root);
    return harness_finish("test_data");
}
