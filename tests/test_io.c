/* test_io.c: .npy, .npz, PNG and grid writing (io.h), and atomic replacement.
 *
 * Checks: .npy roundtrip of every dtype (0-d, 1-d, 4-d, empty) with numpy's header
 * layout (64-byte aligned data); files numpy writes (format 1.0, 2.0, 3.0, a (5,) shape,
 * a Python 2 'L' shape) read back equal (generated at test time when /usr/bin/python3
 * has numpy, otherwise skipped with a message); fortran_order, big-endian, unsupported
 * dtypes, truncated and over-long files fail with one clear line. The uint8 conversion
 * equals torchvision's float32 mul(255).add(0.5).clamp(0, 255).to(uint8) on edge values
 * and (with numpy) on 200k random values. PNGs written for 1 and 3 channels read back
 * through libpng pixel for pixel; a grid has make_grid's geometry (2 px zero padding,
 * nrow per row, a lone image unpadded). The .npz writer, fed in batches, gives a zip that
 * `unzip -t` accepts (CRC) and np.load reads back equal (when present); our own reader
 * checks the inner .npy either way.
 */
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "ncsn/atomic_file.h"
#include "ncsn/io.h"
#include "tests/expect_die.h"
#include "tests/harness.h"

static int run_python(const char *script) {
    char path[512];
    scratch_path(path, sizeof(path), "script.py");
    write_text_file(path, script);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "cd '%s' && /usr/bin/python3 script.py", scratch_dir);
    return system(cmd);
}

/* ---- .npy -------------------------------------------------------------------------------- */

static void test_npy_roundtrip(void) {
    printf(".npy roundtrip\n");
    static const size_t esize[] = {4, 4, 8, 1, 8};
    float f32[24];
    int32_t i32[24];
    int64_t i64[24];
    uint8_t u8[24];
    double f64[24];
    for (int i = 0; i < 24; i++) {
        f32[i] = (float)i / 7.0f - 1.0f;
        i32[i] = i * 1000003 - 7;
        i64[i] = (int64_t)i * 1000000000007LL - 3;
        u8[i] = (uint8_t)(i * 11);
        f64[i] = (double)i / 3.0;
    }
    const void *data[] = {f32, i32, i64, u8, f64};
    const int64_t shapes[][4] = {{2, 3, 4, 1}, {24}, {}, {0, 5}};
    const int ndims[] = {4, 1, 0, 2};
    for (int dt = 0; dt < 5; dt++) {
        for (int s = 0; s < 4; s++) {
            char path[512];
            snprintf(path, sizeof(path), "%s/rt_%d_%d.npy", scratch_dir, dt, s);
            ncsn_npy_write(path, (ncsn_npy_dtype)dt, ndims[s], shapes[s], data[dt]);
            ncsn_npy a;
            ncsn_npy_read(&a, path);
            size_t count = 1;
            for (int d = 0; d < ndims[s]; d++) count *= (size_t)shapes[s][d];
            int ok = a.dtype == (ncsn_npy_dtype)dt && a.ndim == ndims[s] && a.count == count;
            for (int d = 0; ok && d < ndims[s]; d++) ok = a.shape[d] == shapes[s][d];
            ok = ok && (count == 0 || !memcmp(a.data, data[dt], count * esize[dt]));
            EXPECT(ok, "npy roundtrip dtype %d shape #%d", dt, s);
            size_t n;
            unsigned char *raw = file_read_all(path, &n);
            size_t hlen = raw[8] | (size_t)raw[9] << 8;
            EXPECT((10 + hlen) % 64 == 0 && raw[10 + hlen - 1] == '\n' && n == 10 + hlen + count * esize[dt],
                   "npy layout: data offset %zu not 64-aligned or size %zu wrong", 10 + hlen, n);
            free(raw);
            ncsn_npy_free(&a);
        }
    }
    printf("  ok   5 dtypes x 4 shapes (4-d, 1-d, 0-d, empty) roundtrip with numpy's header layout\n");
}

static void read_npy_path(void *arg) {
    ncsn_npy a;
    ncsn_npy_read(&a, (const char *)arg);
}

/* A .npy from a literal header (padded to 64) and data bytes. */
static void write_npy_raw(const char *path, int major, const char *dict, const void *data, size_t n) {
    unsigned char buf[1024];
    size_t prefix = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (prefix + dl + 1 + 63) / 64 * 64;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major, buf[7] = 0;
    size_t hlen = total - prefix;
    for (size_t i = 0; i < prefix - 8; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + prefix, dict, dl);
    memset(buf + prefix + dl, ' ', total - prefix - dl - 1);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, n);
    file_write_all(path, buf, total + n);
}

static void test_npy_errors(void) {
    printf(".npy errors\n");
    static char p[8][512];
    float four[4] = {1, 2, 3, 4};
    scratch_path(p[0], 512, "fortran.npy");
    write_npy_raw(p[0], 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", four, 16);
    EXPECT_DIE2("fortran_order True", read_npy_path, p[0], p[0], "fortran_order True (column-major) arrays are not supported");
    scratch_path(p[1], 512, "bigendian.npy");
    write_npy_raw(p[1], 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", four, 16);
    EXPECT_DIE2("big-endian", read_npy_path, p[1], "big-endian dtype '>f4' is not supported", "astype('<f4')");
    scratch_path(p[2], 512, "truncated.npy");
    write_npy_raw(p[2], 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", four, 16);
    EXPECT_DIE1("truncated data", read_npy_path, p[2], "truncated data: the header's shape needs 20 bytes of <f4, the file has 16");
    scratch_path(p[3], 512, "longer.npy");
    write_npy_raw(p[3], 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", four, 16);
    EXPECT_DIE1("trailing data", read_npy_path, p[3], "4 unexpected bytes after the array data");
    scratch_path(p[4], 512, "complex.npy");
    write_npy_raw(p[4], 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", four, 16);
    EXPECT_DIE1("unsupported dtype", read_npy_path, p[4], "dtype '<c8' is not supported");
    scratch_path(p[5], 512, "magic.npy");
    file_write_all(p[5], "PK\x03\x04not npy at all", 18);
    EXPECT_DIE1("bad magic", read_npy_path, p[5], "not a .npy file (bad magic)");
    scratch_path(p[6], 512, "badheader.npy");
    write_npy_raw(p[6], 1, "{'descr': '<f4', 'shape': (4,), }", four, 16);
    EXPECT_DIE1("missing key", read_npy_path, p[6], "needs the keys descr, fortran_order and shape");
    scratch_path(p[7], 512, "hdrpast.npy");
    file_write_all(p[7], "\x93NUMPY\x01\x00\xff\x00{'descr'", 17);
    EXPECT_DIE1("header past EOF", read_npy_path, p[7], "truncated .npy header");
}

static void test_npy_from_numpy(void) {
    printf(".npy written by numpy\n");
    if (!have_python_numpy()) {
        printf("  skip: /usr/bin/python3 with numpy not found; files written by numpy not tested\n");
        return;
    }
    int rc = run_python("import numpy as np\n"
                        "from numpy.lib import format as F\n"
                        "a = (np.arange(2*3*4, dtype=np.float32).reshape(2, 3, 4) / 3 - 2)\n"
                        "np.save('np_f4.npy', a)\n"
                        "np.save('np_i8.npy', np.array([-5, 0, 2**40], dtype='<i8'))\n"
                        "np.save('np_u1.npy', np.arange(60, dtype=np.uint8).reshape(5, 4, 3))\n"
                        "np.save('np_f8_0d.npy', np.float64(2.5))\n"
                        "np.save('np_i4.npy', np.array([[1, -2], [3, -4]], dtype='<i4'))\n"
                        "for v in [(2, 0), (3, 0)]:\n"
                        "    with open('np_v%d.npy' % v[0], 'wb') as f:\n"
                        "        F.write_array(f, a, version=v)\n"
                        "np.save('np_fortran.npy', np.asfortranarray(np.ones((3, 2), np.float32)))\n"
                        "np.save('np_be.npy', np.ones(3, '>f4'))\n");
    EXPECT(rc == 0, "python failed to write the numpy files (rc %d)", rc);
    if (rc) return;
    char p[512];
    ncsn_npy a;
    const char *f4names[] = {"np_f4.npy", "np_v2.npy", "np_v3.npy"};
    for (int k = 0; k < 3; k++) {
        scratch_path(p, sizeof(p), f4names[k]);
        ncsn_npy_read(&a, p);
        int ok = a.dtype == NCSN_NPY_F32 && a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 4;
        for (int i = 0; ok && i < 24; i++) ok = ((float *)a.data)[i] == (float)i / 3.0f - 2.0f;
        EXPECT(ok, "%s: float32 (2, 3, 4) values", f4names[k]);
        ncsn_npy_free(&a);
    }
    scratch_path(p, sizeof(p), "np_i8.npy");
    ncsn_npy_read(&a, p);
    EXPECT(a.dtype == NCSN_NPY_I64 && a.ndim == 1 && a.shape[0] == 3 && ((int64_t *)a.data)[2] == (1LL << 40) &&
               ((int64_t *)a.data)[0] == -5,
           "np_i8.npy values");
    ncsn_npy_free(&a);
    scratch_path(p, sizeof(p), "np_u1.npy");
    ncsn_npy_read(&a, p);
    int ok = a.dtype == NCSN_NPY_U8 && a.ndim == 3 && a.count == 60;
    for (int i = 0; ok && i < 60; i++) ok = ((uint8_t *)a.data)[i] == i;
    EXPECT(ok, "np_u1.npy (5, 4, 3) uint8 values");
    ncsn_npy_free(&a);
    scratch_path(p, sizeof(p), "np_f8_0d.npy");
    ncsn_npy_read(&a, p);
    EXPECT(a.dtype == NCSN_NPY_F64 && a.ndim == 0 && a.count == 1 && ((double *)a.data)[0] == 2.5, "0-d float64");
    ncsn_npy_free(&a);
    scratch_path(p, sizeof(p), "np_i4.npy");
    ncsn_npy_read(&a, p);
    EXPECT(a.dtype == NCSN_NPY_I32 && a.ndim == 2 && ((int32_t *)a.data)[3] == -4, "np_i4.npy values");
    ncsn_npy_free(&a);
    printf("  ok   numpy's files (format 1.0, 2.0, 3.0; f4 i4 i8 u1 f8; 0-d) read back equal\n");
    static char pf[512], pb[512];
    scratch_path(pf, sizeof(pf), "np_fortran.npy");
    EXPECT_DIE1("numpy fortran array", read_npy_path, pf, "fortran_order True");
    scratch_path(pb, sizeof(pb), "np_be.npy");
    EXPECT_DIE1("numpy big-endian array", read_npy_path, pb, "big-endian dtype '>f4'");

    /* And numpy reads what we write. */
    float v[6] = {0.5f, -1.0f, 3.0f, 1e-30f, -0.0f, 7.25f};
    int64_t shape[2] = {2, 3};
    scratch_path(p, sizeof(p), "ours.npy");
    ncsn_npy_write(p, NCSN_NPY_F32, 2, shape, v);
    rc = run_python("import numpy as np\n"
                    "a = np.load('ours.npy')\n"
                    "assert a.dtype == np.float32 and a.shape == (2, 3), (a.dtype, a.shape)\n"
                    "assert (a.ravel() == np.array([0.5, -1, 3, 1e-30, -0.0, 7.25], np.float32)).all()\n");
    EXPECT(rc == 0, "numpy could not read our .npy (rc %d)", rc);
}

/* ---- uint8 conversion -------------------------------------------------------------------- */

static uint8_t reference_u8(float x) { /* the torch formula, written out in float32 */
    volatile float s = x * 255.0f;
    volatile float t = s + 0.5f;
    float c = t < 0.0f ? 0.0f : (t > 255.0f ? 255.0f : t);
    return (uint8_t)c;
}

static void test_to_uint8(void) {
    printf("float -> uint8 (torchvision save_image)\n");
    const float x[] = {0.0f, 1.0f, 0.5f, -0.1f, 1.5f, 0.998f, 1.0f / 255.0f, 0.5f / 255.0f, 0.49f / 255.0f,
                       127.5f / 255.0f, 254.5f / 255.0f, nextafterf(0.5f / 255.0f, 0.0f), -0.0f, INFINITY, -INFINITY, NAN};
    /* expected bytes from numpy's float32 arithmetic (the value below 0.5/255 still lands on
     * 0.5 after the float32 multiply, so it rounds up too) */
    const uint8_t want[] = {0, 255, 128, 0, 255, 254, 1, 1, 0, 128, 255, 1, 0, 255, 0, 0};
    const int n = (int)(sizeof(x) / sizeof(x[0]));
    uint8_t out[16];
    ncsn_to_uint8_hwc(out, x, 1, 1, n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (out[i] != want[i]) {
            printf("    x = %.9g: got %d want %d\n", x[i], out[i], want[i]);
            bad++;
        }
        if (!isnan(x[i])) EXPECT(out[i] == reference_u8(x[i]), "x = %.9g vs float32 formula", x[i]);
    }
    EXPECT(bad == 0, "%d edge values differ", bad);
    if (!bad) printf("  ok   %d edge values (0, 1, near k + 0.5, out of range, inf, NaN -> 0)\n", n);

    /* CHW -> HWC placement. */
    float chw[2 * 3 * 3];
    for (int i = 0; i < 18; i++) chw[i] = (float)i / 17.0f;
    uint8_t hwc[18];
    ncsn_to_uint8_hwc(hwc, chw, 3, 2, 3);
    int place_ok = 1;
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 6; p++) place_ok &= hwc[p * 3 + c] == reference_u8(chw[c * 6 + p]);
    EXPECT(place_ok, "CHW -> HWC placement");

    if (!have_python_numpy()) {
        printf("  skip numpy comparison on random values: /usr/bin/python3 with numpy not found\n");
        return;
    }
    /* 200k values around every rounding boundary, converted by numpy's float32 ops. */
    enum { N = 200000 };
    float *v = malloc(N * sizeof(float));
    uint32_t rng = 7;
    for (int i = 0; i < N; i++) {
        rng = rng * 1664525u + 1013904223u;
        int k = (int)(rng >> 8) % 258 - 1;
        rng = rng * 1664525u + 1013904223u;
        float jitter = ((float)(rng >> 8) / 16777216.0f - 0.5f) * 4e-6f;
        v[i] = ((float)k + 0.5f) / 255.0f + jitter;
    }
    char p[512];
    scratch_path(p, sizeof(p), "u8_in.npy");
    int64_t shape[1] = {N};
    ncsn_npy_write(p, NCSN_NPY_F32, 1, shape, v);
    int rc = run_python("import numpy as np\n"
                        "x = np.load('u8_in.npy')\n"
                        "y = ((x * np.float32(255)) + np.float32(0.5)).clip(0, 255).astype(np.uint8)\n"
                        "np.save('u8_out.npy', y)\n");
    EXPECT(rc == 0, "python conversion failed");
    if (!rc) {
        ncsn_npy ref;
        scratch_path(p, sizeof(p), "u8_out.npy");
        ncsn_npy_read(&ref, p);
        uint8_t *got = malloc(N);
        ncsn_to_uint8_hwc(got, v, 1, 1, N);
        int diff = 0;
        for (int i = 0; i < N; i++)
            if (got[i] != ((uint8_t *)ref.data)[i] && diff++ < 5)
                printf("    x = %.9g: got %d numpy %d\n", v[i], got[i], ((uint8_t *)ref.data)[i]);
        EXPECT(diff == 0, "%d of %d values differ from numpy's float32 conversion", diff, N);
        if (!diff) printf("  ok   %d values near rounding boundaries equal numpy's float32 conversion\n", N);
        free(got);
        ncsn_npy_free(&ref);
    }
    free(v);
}

/* ---- PNG --------------------------------------------------------------------------------- */

/* Reads a PNG with libpng's simplified API in its own format (gray or RGB, 8 bit). */
static uint8_t *read_png(const char *path, int *H, int *W, int *C) {
    png_image img;
    memset(&img, 0, sizeof(img));
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path)) {
        printf("    libpng: %s\n", img.message);
        return NULL;
    }
    *C = (img.format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1;
    img.format = *C == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(img));
    if (!png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        printf("    libpng: %s\n", img.message);
        free(buf);
        return NULL;
    }
    *H = (int)img.height, *W = (int)img.width;
    return buf;
}

static void test_png(void) {
    printf("PNG\n");
    for (int C = 1; C <= 3; C += 2) {
        const int H = 7, W = 13;
        uint8_t *img = malloc((size_t)H * W * C);
        for (int i = 0; i < H * W * C; i++) img[i] = (uint8_t)(i * 37 + 11);
        char p[512];
        snprintf(p, sizeof(p), "%s/img_c%d.png", scratch_dir, C);
        ncsn_png_write(p, img, H, W, C);
        int h, w, c;
        uint8_t *back = read_png(p, &h, &w, &c);
        EXPECT(back && h == H && w == W && c == C && !memcmp(back, img, (size_t)H * W * C),
               "PNG C=%d: read back %dx%dx%d differs", C, h, w, c);
        if (back && h == H && w == W && c == C && !memcmp(back, img, (size_t)H * W * C))
            printf("  ok   %dx%d %s PNG reads back pixel-identical\n", H, W, C == 1 ? "gray" : "RGB");
        free(back);
        free(img);
    }
}

static void test_grid(void) {
    printf("grid (torchvision make_grid geometry)\n");
    const int N = 5, C = 3, H = 4, W = 6, nrow = 3;
    float *x = malloc(sizeof(float) * N * C * H * W);
    for (int i = 0; i < N * C * H * W; i++) x[i] = (float)((i * 7919) % 256) / 255.0f;
    char p[512];
    scratch_path(p, sizeof(p), "grid.png");
    ncsn_grid_png_write(p, x, N, C, H, W, nrow);
    int gh, gw, gc;
    uint8_t *g = read_png(p, &gh, &gw, &gc);
    /* 3 per row -> 2 rows: H' = 2*(4+2)+2 = 14, W' = 3*(6+2)+2 = 26. */
    EXPECT(g && gh == 14 && gw == 26 && gc == 3, "grid size %dx%dx%d, want 14x26x3", gh, gw, gc);
    if (g && gh == 14 && gw == 26) {
        int bad = 0, covered = 0;
        uint8_t *expect = calloc((size_t)gh * gw * 3, 1);
        uint8_t tile[4 * 6 * 3];
        for (int k = 0; k < N; k++) {
            ncsn_to_uint8_hwc(tile, x + (size_t)k * C * H * W, C, H, W);
            int top = (k / 3) * 6 + 2, left = (k % 3) * 8 + 2;
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    for (int c = 0; c < 3; c++) {
                        expect[((top + y) * gw + left + xx) * 3 + c] = tile[(y * W + xx) * 3 + c];
                        covered++;
                    }
        }
        for (int i = 0; i < gh * gw * 3; i++) bad += g[i] != expect[i];
        EXPECT(bad == 0, "%d grid bytes differ from the make_grid layout", bad);
        if (!bad) printf("  ok   5 images, nrow 3: 14x26 grid, images at (k/3*6+2, k%%3*8+2), padding and the empty slot 0\n");
        (void)covered;
        free(expect);
    }
    free(g);

    /* nrow larger than N: one row of N. A lone image: no padding (make_grid returns it). */
    scratch_path(p, sizeof(p), "grid_row.png");
    ncsn_grid_png_write(p, x, 2, C, H, W, 8);
    g = read_png(p, &gh, &gw, &gc);
    EXPECT(g && gh == 8 && gw == 18, "2 images, nrow 8: %dx%d, want 8x18", gh, gw);
    free(g);
    scratch_path(p, sizeof(p), "grid_one.png");
    ncsn_grid_png_write(p, x, 1, 1, 4, 6, 8);
    g = read_png(p, &gh, &gw, &gc);
    uint8_t lone[24];
    ncsn_to_uint8_hwc(lone, x, 1, 4, 6);
    EXPECT(g && gh == 4 && gw == 6 && gc == 1 && !memcmp(g, lone, 24), "a lone gray image is written unpadded");
    free(g);
    free(x);
}

/* ---- .npz -------------------------------------------------------------------------------- */

static uint32_t get32(const unsigned char *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const unsigned char *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static void test_npz(void) {
    printf(".npz writer\n");
    const int H = 5, W = 4, C = 3, N1 = 3, N2 = 4;
    char p[512];
    scratch_path(p, sizeof(p), "samples.npz");
    ncsn_npz_writer *w = ncsn_npz_open(p, H, W, C);
    uint8_t *imgs = malloc((size_t)(N1 + N2) * H * W * C);
    for (int i = 0; i < (N1 + N2) * H * W * C; i++) imgs[i] = (uint8_t)(i * 31 + 5);
    ncsn_npz_append(w, imgs, N1);
    struct stat sb;
    EXPECT(stat(p, &sb) != 0, "the .npz appeared before close (should be PATH.tmp until then)");
    /* the second batch as floats in [0, 1] that convert back to the same bytes */
    float *f = malloc(sizeof(float) * N2 * C * H * W);
    for (int n = 0; n < N2; n++)
        for (int c = 0; c < C; c++)
            for (int q = 0; q < H * W; q++)
                f[((size_t)n * C + c) * H * W + q] = (float)imgs[((size_t)(N1 + n) * H * W + q) * C + c] / 255.0f;
    ncsn_npz_append_float(w, f, N2);
    EXPECT(ncsn_npz_count(w) == N1 + N2, "count %lld", (long long)ncsn_npz_count(w));
    ncsn_npz_close(w);

    /* Our own look inside: local header, CRC over the member, inner .npy. */
    size_t n;
    unsigned char *z = file_read_all(p, &n);
    EXPECT(z && n > 100 && get32(z) == 0x04034b50, "zip local header signature");
    size_t name_len = z[26] | (size_t)z[27] << 8, extra_len = z[28] | (size_t)z[29] << 8;
    const unsigned char *member = z + 30 + name_len + extra_len;
    uint64_t msize = get64(z + 30 + name_len + 4);
    uint32_t crc = get32(z + 14);
    EXPECT(name_len == 9 && !memcmp(z + 30, "arr_0.npy", 9), "member name arr_0.npy");
    EXPECT(msize == 128 + (uint64_t)(N1 + N2) * H * W * C, "member size %llu", (unsigned long long)msize);
    EXPECT(crc == (uint32_t)crc32(0, member, (uInt)msize), "CRC-32 of the member");
    scratch_path(p, sizeof(p), "inner.npy");
    file_write_all(p, member, (size_t)msize);
    ncsn_npy a;
    ncsn_npy_read(&a, p);
    EXPECT(a.dtype == NCSN_NPY_U8 && a.ndim == 4 && a.shape[0] == N1 + N2 && a.shape[1] == H && a.shape[2] == W &&
               a.shape[3] == C && !memcmp(a.data, imgs, (size_t)(N1 + N2) * H * W * C),
           "inner .npy: shape (%lld, %lld, %lld, %lld) and bytes", (long long)a.shape[0], (long long)a.shape[1],
           (long long)a.shape[2], (long long)a.shape[3]);
    ncsn_npy_free(&a);
    free(z);
    printf("  ok   7 images in two batches (uint8 and float): zip header, CRC and inner (7, 5, 4, 3) .npy\n");

    if (system("command -v unzip >/dev/null 2>&1") == 0) {
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "unzip -tq '%s/samples.npz' >/dev/null", scratch_dir);
        int rc = system(cmd);
        EXPECT(rc == 0, "unzip -t rejected the .npz (rc %d)", rc);
        if (!rc) printf("  ok   unzip -t: CRC and ZIP64 structure valid\n");
    } else {
        printf("  skip unzip -t: unzip not installed\n");
    }
    if (have_python_numpy()) {
        scratch_path(p, sizeof(p), "expect.npy");
        int64_t shape[4] = {N1 + N2, H, W, C};
        ncsn_npy_write(p, NCSN_NPY_U8, 4, shape, imgs);
        int rc = run_python("import numpy as np\n"
                            "z = np.load('samples.npz')\n"
                            "assert z.files == ['arr_0'], z.files\n"
                            "a = z['arr_0']\n"
                            "assert a.dtype == np.uint8 and a.shape == (7, 5, 4, 3), (a.dtype, a.shape)\n"
                            "assert (a == np.load('expect.npy')).all()\n");
        EXPECT(rc == 0, "np.load could not read the .npz (rc %d)", rc);
        if (!rc) printf("  ok   np.load(...)['arr_0'] reads (7, 5, 4, 3) uint8 equal\n");
    } else {
        printf("  skip np.load check: /usr/bin/python3 with numpy not found\n");
    }

    /* An empty set is a valid (0, H, W, C) array. */
    scratch_path(p, sizeof(p), "empty.npz");
    w = ncsn_npz_open(p, 2, 2, 1);
    ncsn_npz_close(w);
    z = file_read_all(p, &n);
    EXPECT(z && get64(z + 30 + 9 + 4) == 128, "empty .npz member is just the .npy header");
    free(z);
    free(f);
    free(imgs);
}

/* ---- atomic replacement ------------------------------------------------------------------ */

static void write_into_blocked(void *arg) {
    float v[2] = {9, 9};
    int64_t s[1] = {2};
    ncsn_npy_write((const char *)arg, NCSN_NPY_F32, 1, s, v);
}

static void test_atomic(void) {
    printf("atomic replacement\n");
    static char p[512], tmp[520];
    scratch_path(p, sizeof(p), "atomic.npy");
    float v[2] = {1, 2};
    int64_t s[1] = {2};
    ncsn_npy_write(p, NCSN_NPY_F32, 1, s, v);
    /* PATH.tmp as a directory: the writer cannot create its temporary file. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", p);
    mkdir(tmp, 0755);
    EXPECT_DIE2("write fails before touching PATH", write_into_blocked, p, p, "cannot create");
    ncsn_npy a;
    ncsn_npy_read(&a, p);
    EXPECT(a.count == 2 && ((float *)a.data)[0] == 1 && ((float *)a.data)[1] == 2, "old file intact after a failed write");
    ncsn_npy_free(&a);
    rmdir(tmp);
    ncsn_npy_write(p, NCSN_NPY_F32, 1, s, (float[2]){3, 4});
    ncsn_npy_read(&a, p);
    struct stat sb;
    EXPECT(((float *)a.data)[0] == 3 && stat(tmp, &sb) != 0, "replaced, and no PATH.tmp left behind");
    ncsn_npy_free(&a);
    static char nodir[] = "/nonexistent_dir/x.npy";
    EXPECT_DIE1("missing directory", write_into_blocked, nodir, "/nonexistent_dir/x.npy: cannot create");
}

int main(void) {
    scratch_dir_create("test_io");
    test_npy_roundtrip();
    test_npy_errors();
    test_npy_from_numpy();
    test_to_uint8();
    test_png();
    test_grid();
    test_npz();
    test_atomic();
    scratch_dir_remove();
    return harness_finish("test_io");
}
