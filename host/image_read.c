/* image_read.c: PNG and JPEG decoding into uint8 HWC (io.h: ncsn_image_read).
 *
 * The format is chosen by the file's signature, not its name. The result is what PIL gives
 * for Image.open(path).convert('RGB') or .convert('L'), which is what torchvision's
 * datasets hand to their transforms:
 *   - palette, low-bit gray and tRNS are expanded; alpha is dropped without compositing
 *     (PIL's RGBA -> RGB drops it too);
 *   - 16-bit samples keep their high byte (PIL's "RGB;16B" unpacker does the same for
 *     RGB; for 16-bit gray PIL's I;16 -> L conversion clips at 255 instead, which is not
 *     copied: the high byte is the meaningful 8-bit value);
 *   - gray -> RGB replicates; RGB -> gray is ITU-R 601-2 luma in PIL's fixed point:
 *     L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16;
 *   - a truncated JPEG is an error (PIL raises "image file is truncated"), where libjpeg
 *     alone would warn and fill the rest with gray.
 * Every error is one line "ncsn: PATH: <problem>" and exit(1). libpng and libjpeg report
 * errors through callbacks; both callbacks here record the library's message and longjmp
 * back to the reader, which then dies with it (libjpeg's default handler would exit
 * without naming the file, libpng's would abort the process).
 */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h> /* after stdio.h: it needs FILE */
#include <jerror.h>

#include "ncsn/common.h"
#include "ncsn/io.h"

/* Largest side accepted: bigger images are certainly not training data, and the limit keeps
 * H * W * 3 far from overflow. */
#define IMAGE_MAX_SIDE 32768

/* PIL's ImagingConvert RGB -> L (Convert.c, L24). */
static uint8_t rgb_to_luma(uint8_t r, uint8_t g, uint8_t b) {
    return (uint8_t)(((uint32_t)r * 19595u + (uint32_t)g * 38470u + (uint32_t)b * 7471u + 0x8000u) >> 16);
}

/* In place: pixels of 3 channels become 1 channel. */
static void rgb_to_gray_inplace(uint8_t *pixels, size_t count) {
    for (size_t i = 0; i < count; i++)
        pixels[i] = rgb_to_luma(pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2]);
}

static void check_size(const char *path, const char *format, long H, long W) {
    if (H <= 0 || W <= 0 || H > IMAGE_MAX_SIDE || W > IMAGE_MAX_SIDE)
        ncsn_die("%s: %s image of %ldx%ld pixels is outside 1..%d per side", path, format, H, W, IMAGE_MAX_SIDE);
}

/* ---- PNG ------------------------------------------------------------------------------ */

typedef struct {
    jmp_buf jump;
    char message[256];
} png_failure;

static void png_on_error(png_structp png, png_const_charp message) {
    png_failure *fail = (png_failure *)png_get_error_ptr(png);
    snprintf(fail->message, sizeof fail->message, "%s", message);
    longjmp(fail->jump, 1);
}

/* Warnings (an unknown ancillary chunk, a bad gamma value) do not make the pixels wrong. */
static void png_on_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

/* Everything the setjmp branch frees is volatile or set before setjmp, as C11 7.13.2.1
 * requires for locals read after longjmp. */
static void read_png(FILE *fp, const char *path, int want_channels, uint8_t **out, int *H, int *W) {
    png_failure fail;
    fail.message[0] = '\0';
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &fail, png_on_error, png_on_warning);
    if (!png) ncsn_die("%s: png_create_read_struct failed (out of memory?)", path);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        ncsn_die("%s: png_create_info_struct failed (out of memory?)", path);
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(fail.jump)) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        fclose(fp);
        ncsn_die("%s: bad PNG: %s", path, fail.message);
    }
    png_init_io(png, fp);
    png_read_info(png, info);
    png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    check_size(path, "PNG", (long)height, (long)width);
    int color = png_get_color_type(png, info);

    png_set_expand(png); /* palette -> RGB, gray < 8 bits -> 8 bits, tRNS -> alpha */
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    if (!(color & PNG_COLOR_MASK_COLOR) && want_channels == 3) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int channels = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    /* Palette images expand to RGB, so a gray request takes the RGB -> luma path below. */
    NCSN_CHECKF(channels == 1 || channels == 3, "%s: PNG decodes to %d channels after conversion", path, channels);
    NCSN_CHECK(rowbytes == (size_t)width * (size_t)channels);

    pixels = ncsn_xmalloc((size_t)height * rowbytes);
    rows = ncsn_xmalloc((size_t)height * sizeof *rows);
    for (png_uint_32 y = 0; y < height; y++) rows[y] = pixels + (size_t)y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);

    if (channels == 3 && want_channels == 1) rgb_to_gray_inplace(pixels, (size_t)height * width);
    *out = pixels;
    *H = (int)height;
    *W = (int)width;
}

/* ---- JPEG ----------------------------------------------------------------------------- */

typedef struct {
    struct jpeg_error_mgr base; /* first: libjpeg hands back a pointer to it */
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} jpeg_failure;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_failure *fail = (jpeg_failure *)cinfo->err;
    cinfo->err->format_message(cinfo, fail->message);
    longjmp(fail->jump, 1);
}

/* libjpeg reports a truncated file only as a warning and pads with gray; a training image
 * that is half gray is corrupt data, so that one warning is fatal. Other warnings (e.g.
 * extraneous bytes between markers) leave the pixels intact and are ignored, like PIL. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_on_error(cinfo);
}

static void read_jpeg(FILE *fp, const char *path, int want_channels, uint8_t **out, int *H, int *W) {
    struct jpeg_decompress_struct cinfo;
    jpeg_failure fail;
    cinfo.err = jpeg_std_error(&fail.base);
    fail.base.error_exit = jpeg_on_error;
    fail.base.emit_message = jpeg_on_message;
    fail.message[0] = '\0';
    uint8_t *volatile pixels = NULL;
    if (setjmp(fail.jump)) {
        free(pixels);
        jpeg_destroy_decompress(&cinfo);
        fclose(fp);
        ncsn_die("%s: bad JPEG: %s", path, fail.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, fp);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        fclose(fp);
        ncsn_die("%s: CMYK JPEG is not supported (convert it to RGB first)", path);
    }
    /* A gray file read as gray is exact; a color file wanted as gray goes through RGB and
     * PIL's luma so that it matches Image.convert('L') rather than libjpeg's Y channel. */
    int gray_file = cinfo.jpeg_color_space == JCS_GRAYSCALE;
    cinfo.out_color_space = (gray_file && want_channels == 1) ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    check_size(path, "JPEG", (long)cinfo.output_height, (long)cinfo.output_width);
    int channels = cinfo.output_components;
    NCSN_CHECKF(channels == 1 || channels == 3, "%s: JPEG decodes to %d channels", path, channels);
    size_t rowbytes = (size_t)cinfo.output_width * (size_t)channels;
    pixels = ncsn_xmalloc((size_t)cinfo.output_height * rowbytes);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * rowbytes;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    int height = (int)cinfo.output_height, width = (int)cinfo.output_width;
    jpeg_destroy_decompress(&cinfo);

    if (channels == 3 && want_channels == 1) rgb_to_gray_inplace(pixels, (size_t)height * (size_t)width);
    *out = pixels;
    *H = height;
    *W = width;
}

/* ---- dispatch ------------------------------------------------------------------------- */

void ncsn_image_read(const char *path, int want_channels, uint8_t **out, int *H, int *W) {
    NCSN_CHECKF(want_channels == 1 || want_channels == 3, "ncsn_image_read(%s): want_channels is %d, not 1 or 3",
                path, want_channels);
    FILE *fp = fopen(path, "rb");
    if (!fp) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    unsigned char signature[8];
    size_t got = fread(signature, 1, sizeof signature, fp);
    if (ferror(fp)) ncsn_die("%s: read error: %s", path, strerror(errno));
    if (fseek(fp, 0, SEEK_SET) != 0) ncsn_die("%s: cannot seek: %s", path, strerror(errno));

    if (got == 8 && png_sig_cmp(signature, 0, 8) == 0) {
        read_png(fp, path, want_channels, out, H, W);
    } else if (got >= 3 && signature[0] == 0xFF && signature[1] == 0xD8 && signature[2] == 0xFF) {
        read_jpeg(fp, path, want_channels, out, H, W);
    } else {
        fclose(fp);
        ncsn_die("%s: not a PNG or JPEG file (%s)", path, got < 3 ? "file too short" : "unknown signature");
    }
    if (fclose(fp) != 0) ncsn_die("%s: close failed: %s", path, strerror(errno));
}
