/* safetensors.h: reading and writing .safetensors files (the engine's checkpoint format).
 *
 * Format: u64 little-endian header length, a JSON header
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the raw little-endian tensor bytes. Only the dtypes the engine uses are supported
 * (F32, I32, I64, U8). What it is not: a general JSON library; it parses what
 * safetensors writers produce (Python `safetensors`, our tools/) and rejects the rest.
 *
 * Writing is atomic: PATH.tmp is written, fsynced, renamed over PATH, and the directory
 * is fsynced, so a crash leaves either the old file or the new one, never half of one.
 */
#ifndef NCSN_SAFETENSORS_H
#define NCSN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NCSN_DT_F32 = 0, NCSN_DT_I32 = 1, NCSN_DT_I64 = 2, NCSN_DT_U8 = 3 } ncsn_dtype;

typedef struct {
    char name[160];
    ncsn_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t nbytes;
    void *data; /* host memory; owned by the file struct when read */
} ncsn_st_tensor;

typedef struct {
    char key[64];
    char *value; /* owned */
} ncsn_st_meta;

typedef struct {
    ncsn_st_tensor *tensors;
    int n_tensors, cap_tensors;
    ncsn_st_meta *meta;
    int n_meta, cap_meta;
    void *blob; /* data of a read file */
} ncsn_safetensors;

/* Reads the whole file. On any problem (truncated, bad header, overlapping or
 * out-of-range offsets, unknown dtype) prints "ncsn: PATH: <problem>" and exits(1). */
void ncsn_safetensors_read(ncsn_safetensors *st, const char *path);
/* Same, but returns 0 and fills err instead of exiting. */
int ncsn_safetensors_try_read(ncsn_safetensors *st, const char *path, char *err, size_t errlen);
/* Adds a tensor (data is copied) / a metadata string (copied). */
void ncsn_safetensors_add(ncsn_safetensors *st, const char *name, ncsn_dtype dtype, int ndim,
                          const int64_t *shape, const void *data);
void ncsn_safetensors_set_meta(ncsn_safetensors *st, const char *key, const char *value);
const ncsn_st_tensor *ncsn_safetensors_find(const ncsn_safetensors *st, const char *name);
const char *ncsn_safetensors_meta(const ncsn_safetensors *st, const char *key);
/* Atomic write (tmp + fsync + rename + dir fsync). Exits with a one-line error on failure. */
void ncsn_safetensors_write(const ncsn_safetensors *st, const char *path);
void ncsn_safetensors_free(ncsn_safetensors *st);
size_t ncsn_dtype_size(ncsn_dtype dt);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_SAFETENSORS_H */
