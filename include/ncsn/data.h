/* data.h: training data in memory, and the batch loader that feeds the trainer.
 *
 * What it is: readers for the datasets of the official configs, each turned into one
 * in-memory array at the configured image size, and a loader that draws shuffled batches
 * from that array on a host thread, one batch ahead of the consumer.
 * What it is not: augmentation. Random flips, dequantisation, the logit transform and the
 * rescale to [-1, 1] belong to the trainer (on the device, with the engine RNG).
 *
 * Conventions:
 *   - images are uint8 NHWC (0..255) in the dataset, as decoded; the loader writes float32
 *     NCHW with x = k / 255.0f, bit-identical to torchvision's ToTensor;
 *   - the toy data set is float32 (N, 2, 1, 1): it has no uint8 form;
 *   - the dataset owns its arrays; the loader only reads the dataset, which must outlive it;
 *   - every input error is one line "ncsn: PATH: <problem>" and exit(1), raised before any
 *     training work: wrong magic, short file, trailing data, image size or channel count
 *     different from the config (both values named).
 *
 * Datasets by data.dataset (case-insensitive) and what --data points at:
 *   MNIST, FashionMNIST  IDX files train-images-idx3-ubyte[.gz] (test: t10k-images-...) in
 *                        the folder, its raw/ or <name>/raw/ (torchvision's layout), or the
 *                        IDX file itself. FashionMNIST defaults to Debian's
 *                        dataset-fashion-mnist (NCSN_FASHION_MNIST_DIR).
 *   CIFAR10              binary batches data_batch_1..5.bin (test: test_batch.bin) in the
 *                        folder or its cifar-10-batches-bin/, or one batch file.
 *   CELEBA               a folder of JPEGs (img_align_celeba/, also found as a subfolder or
 *                        celeba/img_align_celeba/); list_eval_partition.txt beside or inside
 *                        it selects the split (train 0, test 2) as torchvision's CelebA does;
 *                        without it both splits are every image. CenterCrop(140) then
 *                        Resize(image_size).
 *   FOLDER, LSUN, FFHQ   every .png/.jpg/.jpeg under the folder (recursive, sorted by path),
 *                        Resize(image_size) of the shorter side then CenterCrop(image_size)
 *                        (the official LSUN transform; a no-op on pre-resized FFHQ). LSUN
 *                        uses <folder>/<category>_train (_val for test) when that exists.
 *                        Both splits are the whole folder.
 *   NPY                  a .npy uint8 array (N, H, W, C), or (N, H, W) for one channel. Any
 *                        image dataset whose --data is a .npy file is read this way too.
 *   TOY                  no file: a fixed set of toy_size points of
 *                        p N(mean1 (1,1), I) + (1-p) N(mean2 (1,1), I), p = toy_weight, drawn
 *                        with the engine RNG (see ncsn_dataset_open); a float32 .npy of shape
 *                        (N, 2) given as --data replaces them.
 * Resize is Pillow's Image.resize(BILINEAR) reproduced to the byte (fixed-point separable
 * triangle filter whose support widens when downsampling), which is what torchvision 0.6's
 * Resize did. Folder images are decoded in parallel (OpenMP) once, at open.
 */
#ifndef NCSN_DATA_H
#define NCSN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where Debian's dataset-fashion-mnist package installs its four .gz IDX files. */
#define NCSN_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

typedef struct {
    char dataset[32];  /* canonical data.dataset name of what was read */
    char path[1024];   /* the file or folder read; "" for generated toy data */
    int train;         /* 1 = training split, 0 = test split */
    size_t N;          /* examples */
    int C, H, W;
    uint8_t *u8;       /* N*H*W*C bytes, example-major HWC; NULL for float data */
    float *f32;        /* N*C*H*W floats (toy data); NULL for images */
} ncsn_dataset;

/* Reads the split (`train` 1 or 0) of data.dataset from `path` (NULL: the dataset's
 * default, see ncsn_dataset_default_path) and checks it against dc->image_size and
 * dc->channels. `seed` keys the toy data: point i of split s (0 train, 1 test) takes its
 * component from ncsn_rng_uniform(seed, NCSN_RNG_TOY, s, 0, i) < toy_weight (mean1 if so)
 * and its coordinates d = 0, 1 from mean + ncsn_rng_normal(seed, NCSN_RNG_TOY, s, 1, 2i+d). */
void ncsn_dataset_open(ncsn_dataset *ds, const ncsn_data_config *dc, const char *path, int train, uint64_t seed);
void ncsn_dataset_free(ncsn_dataset *ds);
/* Does `path` hold a test split distinct from the training split (the t10k IDX file,
 * test_batch.bin, CelebA's list_eval_partition.txt, LSUN's <category>_val, generated toy
 * data)? 0 for a single file, a folder of images or an .npy array, whose "test split" would
 * be the training data again. Never fails: a missing path is 0. */
int ncsn_dataset_has_test_split(const ncsn_data_config *dc, const char *path);
/* Default --data for a dataset name, or NULL when it has none. */
const char *ncsn_dataset_default_path(const char *dataset);
/* Example i as float32 CHW (C*H*W values): k / 255.0f for images, the values for floats. */
void ncsn_dataset_example(const ncsn_dataset *ds, size_t i, float *chw);

/* The image transforms, exposed for tests and for the sampler's reference images.
 * Images are uint8 HWC with C channels. */
/* torchvision CenterCrop: top = round((H - crop_h) / 2) with Python's round-half-even,
 * same for left; outside the image (crop larger than it) is 0, like PIL's crop. */
void ncsn_image_center_crop(uint8_t *out, int crop_h, int crop_w, const uint8_t *in, int H, int W, int C);
/* PIL Image.resize((out_w, out_h), BILINEAR) on a full-image box. */
void ncsn_image_resize_bilinear(uint8_t *out, int out_h, int out_w, const uint8_t *in, int H, int W, int C);
/* torchvision Resize(size) with an int: the output size that makes the shorter side `size`
 * and keeps the aspect ratio (the longer side truncated, as int() does). */
void ncsn_resize_shorter_side(int H, int W, int size, int *out_h, int *out_w);

/* ---- batch loader ----------------------------------------------------------------------
 * The order of examples is one continuous stream over epochs: epoch e is the permutation
 * ncsn_loader_permutation(N, seed, stream, e) (or 0..N-1 when shuffle is off), and batch b
 * takes stream positions [b*B, (b+1)*B), crossing into the next epoch where one ends. So
 * every batch is full, and (epoch, position) of the next example is the whole state:
 * a run resumed from it sees exactly the examples the uninterrupted run would have seen.
 * (torch's DataLoader with drop_last=False instead ends each epoch with a short batch of
 * N mod B examples; a documented deviation that keeps the step's shapes fixed.)
 * A worker thread fills `depth` rotating buffers ahead of the consumer. Buffers come from
 * the optional provider (e.g. cudaHostAlloc for pinned memory) so the trainer can copy from
 * them asynchronously: a buffer is reused only after the consumer releases it. A CUDA
 * step: b = acquire; cudaMemcpyAsync(dev, b.x) on the copy stream; record an event; ...
 * once the event has completed (e.g. checked at the next step), release(&b). The CPU
 * trainer just calls ncsn_loader_next. One consumer thread per loader. */

typedef struct {
    uint64_t epoch;    /* current epoch, from 0 */
    uint64_t position; /* next stream position inside it, 0 <= position < N */
} ncsn_loader_state;

typedef struct {
    int batch_size;     /* global batch B */
    uint64_t seed;
    uint32_t stream;    /* separates orders drawn from one seed: 0 = training, 1 = test loss */
    int shuffle;        /* 1: per-epoch permutation; 0: dataset order */
    /* Data-parallel shards: this process receives rows [shard_index * B/K, (shard_index+1) * B/K)
     * of every global batch, K = shard_count (0 means 1); B must be a multiple of K. */
    int shard_index, shard_count;
    int depth;          /* buffers in rotation, >= 2 (0 means 2: double buffering) */
    /* Buffer provider; NULL means malloc/free. buffer_alloc must return memory or die. */
    void *(*buffer_alloc)(void *ctx, size_t bytes);
    void (*buffer_free)(void *ctx, void *ptr);
    void *buffer_ctx;
} ncsn_loader_options;

/* A batch the consumer holds: rows x[n][C][H][W] float32. */
typedef struct {
    float *x;
    int n;                   /* rows: B / shard_count */
    ncsn_loader_state begin; /* stream state at the batch's first example */
    ncsn_loader_state end;   /* stream state after its last example (the next batch's begin) */
    int slot;                /* the buffer it occupies (pass back to release) */
} ncsn_batch;

typedef struct ncsn_loader ncsn_loader;

/* Starts the worker at `start` ({0, 0} for a fresh run). */
ncsn_loader *ncsn_loader_create(const ncsn_dataset *ds, const ncsn_loader_options *opt, ncsn_loader_state start);
/* Stops the worker and frees the buffers (no batch may still be held). */
void ncsn_loader_destroy(ncsn_loader *ld);
/* Blocks until the next batch in stream order is ready; the consumer owns it until release. */
ncsn_batch ncsn_loader_acquire(ncsn_loader *ld);
void ncsn_loader_release(ncsn_loader *ld, const ncsn_batch *b);
/* acquire + copy n * C*H*W floats into dst + release, for consumers without pinned memory. */
void ncsn_loader_next(ncsn_loader *ld, float *dst);
/* The state after the last batch the consumer acquired (or the start state): what a
 * checkpoint stores. */
ncsn_loader_state ncsn_loader_get_state(const ncsn_loader *ld);
/* Drops the batches prepared ahead and continues from `s` (no batch may be held). */
void ncsn_loader_set_state(ncsn_loader *ld, ncsn_loader_state s);

/* perm[0..N) = the order of epoch `epoch`: Fisher-Yates from the top (i = N-1 .. 1 swaps
 * perm[i] with perm[j], j uniform in 0..i by Lemire's unbiased multiply-and-reject), the
 * k-th 32-bit draw being ncsn_rng_u32(seed, NCSN_RNG_SHUFFLE, stream, epoch, k). */
void ncsn_loader_permutation(uint32_t *perm, size_t N, uint64_t seed, uint32_t stream, uint64_t epoch);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_DATA_H */
