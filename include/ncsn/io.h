/* io.h: .npy arrays, PNG/JPEG images and sample grids.
 *
 * What it is: the engine's own readers and writers for the array and image files users
 * hand it (.npy in, .npy / .npz / PNG out), on top of libpng, libjpeg and zlib.
 * Conventions: images in memory are float32 CHW in [0,1] or uint8 HWC; every read error
 * is one line "ncsn: PATH: <problem>" and exit(1).
 */
#ifndef NCSN_IO_H
#define NCSN_IO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NCSN_NPY_F32 = 0, NCSN_NPY_I32 = 1, NCSN_NPY_I64 = 2, NCSN_NPY_U8 = 3, NCSN_NPY_F64 = 4 } ncsn_npy_dtype;

typedef struct {
    ncsn_npy_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t count;
    void *data; /* owned, C order */
} ncsn_npy;

/* Reads a version 1/2/3 .npy file in C order, little-endian. */
void ncsn_npy_read(ncsn_npy *a, const char *path);
/* Writes a .npy atomically (tmp + fsync + rename). */
void ncsn_npy_write(const char *path, ncsn_npy_dtype dtype, int ndim, const int64_t *shape, const void *data);
void ncsn_npy_free(ncsn_npy *a);

/* Writes one image: data is uint8 HWC with C in {1, 3}. */
void ncsn_png_write(const char *path, const uint8_t *hwc, int H, int W, int C);
/* Reads a PNG or JPEG (by signature) into uint8 HWC with the requested channel count
 * (1 = gray, 3 = RGB; converts). Caller frees *out. */
void ncsn_image_read(const char *path, int want_channels, uint8_t **out, int *H, int *W);
/* float CHW in [0,1] -> uint8 HWC as torchvision save_image: clamp(x*255 + 0.5, 0, 255). */
void ncsn_to_uint8_hwc(uint8_t *out, const float *chw, int C, int H, int W);
/* Writes N images (float NCHW in [0,1]) as a grid PNG with `nrow` per row and 2 px padding. */
void ncsn_grid_png_write(const char *path, const float *nchw, int N, int C, int H, int W, int nrow);

/* An .npz (zip, stored) writer that appends uint8 NHWC rows as they are produced, for
 * arr_0 of the OpenAI evaluator. */
typedef struct ncsn_npz_writer ncsn_npz_writer;

/* Starts PATH (written as PATH.tmp until closed) holding one array arr_0 of uint8
 * images N x H x W x C, C in {1, 3}; N grows with every append. The zip is ZIP64, so the
 * 10 GB of 50,000 FFHQ-256 samples are fine; np.load(PATH)["arr_0"] reads it. */
ncsn_npz_writer *ncsn_npz_open(const char *path, int H, int W, int C);
/* Appends n images given as uint8 NHWC. */
void ncsn_npz_append(ncsn_npz_writer *w, const uint8_t *nhwc, int n);
/* Appends n images given as float32 NCHW in [0, 1], converted as ncsn_to_uint8_hwc. */
void ncsn_npz_append_float(ncsn_npz_writer *w, const float *nchw, int n);
/* Images appended so far. */
int64_t ncsn_npz_count(const ncsn_npz_writer *w);
/* Writes the final shape into the .npy header, the CRC-32 and sizes, the central
 * directory, then renames PATH.tmp over PATH (fsynced). Frees w. */
void ncsn_npz_close(ncsn_npz_writer *w);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_IO_H */
