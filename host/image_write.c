/* image_write.c: PNG output, the float -> uint8 conversion and sample grids (io.h).
 *
 * Pixels are converted exactly as torchvision.utils.save_image does:
 *   grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
 * i.e. in float32, x * 255 rounded to float32, + 0.5 rounded to float32, clamped, then
 * truncated. NaN becomes 0 (torch leaves it to the hardware's conversion).
 *
 * Grids follow torchvision.utils.make_grid(tensor, nrow, padding=2, pad_value=0):
 * min(nrow, N) images per row, ceil(N / that) rows, every image framed by 2 pixels of 0,
 * so a grid is (rows * (H + 2) + 2) x (cols * (W + 2) + 2). A single image (N = 1) is
 * written without padding, as make_grid returns it unchanged. One difference: make_grid
 * repeats a 1-channel image into 3 identical channels (an RGB PNG); we write a grayscale
 * PNG, which shows the same pixels at a third of the size.
 *
 * PNGs are written through libpng with its error callback long-jumping back here, so
 * every libpng failure (and every short write) is reported with the file name; the file
 * appears atomically (atomic_file.h).
 */
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "ncsn/atomic_file.h"
#include "ncsn/common.h"
#include "ncsn/io.h"

/* One pixel as save_image converts it. The product goes through double, where
 * x * 255 is exact (24 + 8 significant bits), and is then rounded once to float32: the
 * same value as torch's float32 multiply, and no compiler can fuse it with the add. */
static inline uint8_t pixel_to_uint8(float x) {
    float scaled = (float)((double)x * 255.0);
    float v = scaled + 0.5f;
    if (!(v >= 0.0f)) return 0; /* negative, or NaN */
    if (v >= 255.0f) return 255;
    return (uint8_t)v; /* truncation toward zero, as .to(torch.uint8) */
}

void ncsn_to_uint8_hwc(uint8_t *out, const float *chw, int C, int H, int W) {
    NCSN_CHECK(out != NULL && chw != NULL && C >= 1 && H >= 1 && W >= 1);
    const size_t plane = (size_t)H * W;
    for (int c = 0; c < C; c++)
        for (size_t i = 0; i < plane; i++) out[i * C + c] = pixel_to_uint8(chw[c * plane + i]);
}

typedef struct {
    const char *path;
    char message[256];
} png_error_ctx;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_error_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->message, sizeof(ctx->message), "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    png_error_ctx *ctx = png_get_error_ptr(png);
    fprintf(stderr, "ncsn: %s: libpng warning: %s\n", ctx->path, msg ? msg : "");
}

void ncsn_png_write(const char *path, const uint8_t *hwc, int H, int W, int C) {
    NCSN_CHECK(path != NULL && hwc != NULL);
    NCSN_CHECKF(H >= 1 && W >= 1 && (C == 1 || C == 3), "ncsn_png_write: %s: bad image shape %dx%dx%d", path, H, W, C);
    NCSN_CHECKF(H <= PNG_USER_HEIGHT_MAX && W <= PNG_USER_WIDTH_MAX, "ncsn_png_write: %s: %dx%d is too large for PNG", path,
                H, W);
    png_bytep *rows = ncsn_xmalloc((size_t)H * sizeof(*rows));
    for (int y = 0; y < H; y++) rows[y] = (png_bytep)(hwc + (size_t)y * W * C);

    png_error_ctx ctx = {path, ""};
    ncsn_atomic_file af;
    ncsn_atomic_open(&af, path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, on_png_error, on_png_warning);
    if (!png) {
        ncsn_atomic_abort(&af);
        ncsn_die("%s: cannot create a libpng writer (out of memory)", path);
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        ncsn_atomic_abort(&af);
        ncsn_die("%s: cannot create libpng info (out of memory)", path);
    }
    /* png, info, rows and af are not modified after this point, so they keep their
     * values across the longjmp. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        ncsn_atomic_abort(&af);
        ncsn_die("%s: PNG write failed: %s", path, ctx.message);
    }
    png_init_io(png, af.f);
    png_set_IHDR(png, info, (png_uint_32)W, (png_uint_32)H, 8, C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    ncsn_atomic_commit(&af);
}

void ncsn_grid_png_write(const char *path, const float *nchw, int N, int C, int H, int W, int nrow) {
    NCSN_CHECK(path != NULL && nchw != NULL);
    NCSN_CHECKF(N >= 1 && nrow >= 1 && (C == 1 || C == 3) && H >= 1 && W >= 1,
                "ncsn_grid_png_write: %s: bad grid N=%d nrow=%d C=%d H=%d W=%d", path, N, nrow, C, H, W);
    if (N == 1) { /* make_grid returns a lone image as it is, without padding */
        uint8_t *img = ncsn_xmalloc((size_t)H * W * C);
        ncsn_to_uint8_hwc(img, nchw, C, H, W);
        ncsn_png_write(path, img, H, W, C);
        free(img);
        return;
    }
    const int pad = 2;
    const int cols = nrow < N ? nrow : N;
    const int rows = (N + cols - 1) / cols;
    const int GH = rows * (H + pad) + pad, GW = cols * (W + pad) + pad;
    uint8_t *grid = ncsn_xcalloc((size_t)GH * GW * C, 1); /* pad_value 0 -> byte 0 */
    uint8_t *img = ncsn_xmalloc((size_t)H * W * C);
    const size_t per = (size_t)C * H * W;
    for (int k = 0; k < N; k++) {
        ncsn_to_uint8_hwc(img, nchw + (size_t)k * per, C, H, W);
        const int top = (k / cols) * (H + pad) + pad, left = (k % cols) * (W + pad) + pad;
        for (int y = 0; y < H; y++)
            memcpy(grid + ((size_t)(top + y) * GW + left) * C, img + (size_t)y * W * C, (size_t)W * C);
    }
    ncsn_png_write(path, grid, GH, GW, C);
    free(img);
    free(grid);
}
