/* npy.c: .npy arrays in and out, and the streaming .npz writer for sample sets (io.h).
 *
 * .npy (numpy/lib/format.py): the magic "\x93NUMPY", a version byte pair (1.0, 2.0 or
 * 3.0), a little-endian header length (u16 for 1.0, u32 for 2.0/3.0), then a Python dict
 * literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces
 * and '\n' so the data starts at a multiple of 64, then the raw data.
 * We read C-order little-endian arrays of <f4 <i4 <i8 |u1 <f8 and reject the rest with a
 * message that says how to convert (fortran_order, big-endian, other dtypes), and data
 * that is shorter or longer than the header's shape.
 *
 * .npz (numpy.savez): a zip whose member "arr_0.npy" is a .npy file. The writer here
 * streams images into one "stored" (uncompressed) member without knowing N in advance:
 * the .npy header is reserved at its final size (the shape field padded with spaces),
 * the CRC-32 of the image bytes is kept running, and at close the shape, the CRC
 * (crc32_combine of header and data) and the sizes are patched in and the central
 * directory written. Sizes are ZIP64 from the start, so no 4 GB limit.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zlib.h>

#include "ncsn/atomic_file.h"
#include "ncsn/common.h"
#include "ncsn/io.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c assumes a little-endian host"
#endif

#define NPY_MAX_DIMS 8
#define NPY_ALIGN 64 /* numpy's ARRAY_ALIGN: data offset is a multiple of it */

static const struct {
    const char *descr;
    size_t size;
} npy_types[] = {
    [NCSN_NPY_F32] = {"<f4", 4}, [NCSN_NPY_I32] = {"<i4", 4}, [NCSN_NPY_I64] = {"<i8", 8},
    [NCSN_NPY_U8] = {"|u1", 1},  [NCSN_NPY_F64] = {"<f8", 8},
};
#define NPY_NTYPES ((int)(sizeof(npy_types) / sizeof(npy_types[0])))

/* ---- header text ------------------------------------------------------------------------- */

/* Writes the full preamble (magic, version, length, dict, padding, '\n') into out and
 * returns its length, a multiple of 64. With `total` > 0 the preamble is padded to exactly
 * that many bytes (the .npz writer reserves its header this way). */
static size_t npy_preamble(char *out, size_t cap, const char *descr, int ndim, const int64_t *shape, size_t total) {
    char dict[512];
    int n = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof(dict) - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    n += snprintf(dict + n, sizeof(dict) - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    NCSN_CHECK(n > 0 && (size_t)n < sizeof(dict));
    /* Version 1.0 (u16 length) unless the header needs more; ours never does. */
    const size_t prefix = 10; /* magic 6 + version 2 + u16 length */
    size_t need = prefix + (size_t)n + 1;
    size_t len = total ? total : (need + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    NCSN_CHECK(len >= need && len % NPY_ALIGN == 0 && len <= cap && len - prefix <= 65535);
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    uint16_t hlen = (uint16_t)(len - prefix);
    out[8] = (char)(hlen & 0xFF);
    out[9] = (char)(hlen >> 8);
    memcpy(out + prefix, dict, (size_t)n);
    memset(out + prefix + n, ' ', len - need);
    out[len - 1] = '\n';
    return len;
}

/* ---- header parsing ---------------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
    const char *path;
} dict_cursor;

static void skip_ws(dict_cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static void bad_header(const dict_cursor *c, const char *what) {
    ncsn_die("%s: bad .npy header (%s)", c->path, what);
}

static void expect_char(dict_cursor *c, char ch, const char *what) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != ch) bad_header(c, what);
    c->p++;
}

/* A Python string literal in single or double quotes, without escapes (numpy writes none
 * in the keys and descr strings we accept). */
static void read_pystring(dict_cursor *c, char *out, size_t cap) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) bad_header(c, "expected a quoted string");
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || n + 1 >= cap) bad_header(c, "unexpected string");
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) bad_header(c, "unterminated string");
    c->p++;
    out[n] = '\0';
}

static int match_word(dict_cursor *c, const char *w) {
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, w, n)) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* After an item of a tuple or dict: consumes a ',' and returns 1, or returns 0 at `close`
 * (left for the loop to consume); anything else is a bad header. */
static int list_next(dict_cursor *c, char close, const char *what) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') {
        c->p++;
        return 1;
    }
    if (c->p < c->end && *c->p == close) return 0;
    bad_header(c, what);
    return 0;
}

static void read_shape(dict_cursor *c, ncsn_npy *a) {
    expect_char(c, '(', "shape must be a tuple");
    a->ndim = 0;
    while (1) {
        skip_ws(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            return;
        }
        if (a->ndim >= NPY_MAX_DIMS) ncsn_die("%s: arrays of more than %d dimensions are not supported", c->path, NPY_MAX_DIMS);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') bad_header(c, "shape entries must be non-negative integers");
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (INT64_MAX - 9) / 10) bad_header(c, "shape entry too large");
            v = v * 10 + (*c->p++ - '0');
        }
        if (c->p < c->end && *c->p == 'L') c->p++; /* Python 2 long literal, as numpy accepts */
        a->shape[a->ndim++] = v;
        list_next(c, ')', "expected ',' or ')' in shape");
    }
}

static void parse_dict(dict_cursor *c, ncsn_npy *a, int *fortran) {
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    char descr[64] = "";
    expect_char(c, '{', "not a dict");
    while (1) {
        skip_ws(c);
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            break;
        }
        char key[32];
        read_pystring(c, key, sizeof(key));
        expect_char(c, ':', "expected ':'");
        if (!strcmp(key, "descr") && !have_descr) {
            skip_ws(c);
            if (c->p < c->end && *c->p == '[')
                ncsn_die("%s: structured dtypes are not supported (need one of <f4 <i4 <i8 |u1 <f8)", c->path);
            read_pystring(c, descr, sizeof(descr));
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order") && !have_fortran) {
            if (match_word(c, "True")) *fortran = 1;
            else if (match_word(c, "False")) *fortran = 0;
            else bad_header(c, "fortran_order must be True or False");
            have_fortran = 1;
        } else if (!strcmp(key, "shape") && !have_shape) {
            read_shape(c, a);
            have_shape = 1;
        } else {
            ncsn_die("%s: bad .npy header (unexpected or repeated key '%s')", c->path, key);
        }
        list_next(c, '}', "expected ',' or '}'");
    }
    skip_ws(c);
    if (c->p != c->end) bad_header(c, "bytes after the dict");
    if (!have_descr || !have_fortran || !have_shape)
        ncsn_die("%s: bad .npy header (needs the keys descr, fortran_order and shape)", c->path);

    if (descr[0] == '>' && strcmp(descr + 1, "u1") && strcmp(descr + 1, "i1"))
        ncsn_die("%s: big-endian dtype '%s' is not supported; convert with a.astype('<%s')", c->path, descr, descr + 1);
    for (int t = 0; t < NPY_NTYPES; t++) {
        if (!strcmp(descr, npy_types[t].descr) || (t == NCSN_NPY_U8 && (!strcmp(descr, "<u1") || !strcmp(descr, ">u1")))) {
            a->dtype = (ncsn_npy_dtype)t;
            return;
        }
    }
    ncsn_die("%s: dtype '%s' is not supported (need one of <f4 <i4 <i8 |u1 <f8; convert with a.astype(...))", c->path,
             descr);
}

/* ---- .npy read / write ------------------------------------------------------------------- */

static void read_exact(FILE *f, void *buf, size_t n, const char *path, const char *what) {
    if (n && fread(buf, 1, n, f) != n) ncsn_die("%s: truncated %s", path, what);
}

void ncsn_npy_read(ncsn_npy *a, const char *path) {
    NCSN_CHECK(a != NULL && path != NULL);
    memset(a, 0, sizeof(*a));
    FILE *f = fopen(path, "rb");
    if (!f) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) ncsn_die("%s: cannot stat: %s", path, strerror(errno));
    uint64_t size = (uint64_t)sb.st_size;

    unsigned char pre[12];
    if (size < 10) ncsn_die("%s: not a .npy file (%llu bytes, too short)", path, (unsigned long long)size);
    read_exact(f, pre, 8, path, "preamble");
    if (memcmp(pre, "\x93NUMPY", 6) != 0) ncsn_die("%s: not a .npy file (bad magic)", path);
    int major = pre[6], minor = pre[7];
    if (!(major >= 1 && major <= 3) || minor != 0)
        ncsn_die("%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0 are)", path, major, minor);
    uint64_t hlen, offset;
    if (major == 1) {
        read_exact(f, pre + 8, 2, path, "preamble");
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
        offset = 10;
    } else {
        read_exact(f, pre + 8, 4, path, "preamble");
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
        offset = 12;
    }
    if (hlen > size - offset)
        ncsn_die("%s: truncated .npy header (%llu bytes announced, %llu in the file)", path, (unsigned long long)hlen,
                 (unsigned long long)(size - offset));
    char *header = ncsn_xmalloc((size_t)hlen + 1);
    read_exact(f, header, (size_t)hlen, path, "header");
    header[hlen] = '\0';
    dict_cursor c = {header, header + hlen, path};
    int fortran = 0;
    parse_dict(&c, a, &fortran);
    free(header);
    if (fortran)
        ncsn_die("%s: fortran_order True (column-major) arrays are not supported; save np.ascontiguousarray(a)", path);

    uint64_t count = 1;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] != 0 && count > UINT64_MAX / 16 / (uint64_t)a->shape[i])
            ncsn_die("%s: shape too large", path);
        count *= (uint64_t)a->shape[i];
    }
    uint64_t need = count * npy_types[a->dtype].size;
    uint64_t have = size - offset - hlen;
    if (have < need)
        ncsn_die("%s: truncated data: the header's shape needs %llu bytes of %s, the file has %llu", path,
                 (unsigned long long)need, npy_types[a->dtype].descr, (unsigned long long)have);
    if (have > need)
        ncsn_die("%s: %llu unexpected bytes after the array data (shape says %llu bytes)", path,
                 (unsigned long long)(have - need), (unsigned long long)need);
    if (need > SIZE_MAX) ncsn_die("%s: array does not fit in memory", path);
    a->count = (size_t)count;
    a->data = malloc(need ? (size_t)need : 1);
    if (!a->data) ncsn_die("%s: out of memory for %llu bytes", path, (unsigned long long)need);
    read_exact(f, a->data, (size_t)need, path, "data");
    fclose(f);
}

void ncsn_npy_write(const char *path, ncsn_npy_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    NCSN_CHECK(path != NULL);
    NCSN_CHECKF((int)dtype >= 0 && (int)dtype < NPY_NTYPES, "ncsn_npy_write: bad dtype %d", (int)dtype);
    NCSN_CHECKF(ndim >= 0 && ndim <= NPY_MAX_DIMS, "ncsn_npy_write: %d dims (0..%d)", ndim, NPY_MAX_DIMS);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        NCSN_CHECKF(shape[i] >= 0, "ncsn_npy_write: negative dim");
        NCSN_CHECKF(shape[i] == 0 || count <= SIZE_MAX / 16 / (size_t)shape[i], "ncsn_npy_write: shape too large");
        count *= (size_t)shape[i];
    }
    char pre[1024];
    size_t plen = npy_preamble(pre, sizeof(pre), npy_types[dtype].descr, ndim, shape, 0);
    ncsn_atomic_file af;
    ncsn_atomic_open(&af, path);
    ncsn_atomic_write(&af, pre, plen);
    if (count) {
        NCSN_CHECK(data != NULL);
        ncsn_atomic_write(&af, data, count * npy_types[dtype].size);
    }
    ncsn_atomic_commit(&af);
}

void ncsn_npy_free(ncsn_npy *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof(*a));
}

/* ---- .npz writer ------------------------------------------------------------------------- */

#define ZIP_NAME "arr_0.npy"
#define ZIP_NAME_LEN 9
#define ZIP_LOCAL_LEN (30 + ZIP_NAME_LEN + 20) /* fixed part + name + ZIP64 extra (2+2+8+8) */
#define ZIP_VERSION 45                          /* 4.5: ZIP64 */
#define ZIP_DOS_DATE 0x21                       /* 1980-01-01: fixed, so equal samples give equal files */
#define NPZ_HEADER_LEN 128                      /* reserved .npy preamble, fits any int64 N */

struct ncsn_npz_writer {
    ncsn_atomic_file af;
    int H, W, C;
    int64_t count;       /* images written */
    uint64_t data_bytes; /* image bytes written */
    uLong crc_data;      /* CRC-32 of the image bytes */
    uint8_t *scratch;    /* one converted image (append_float) */
};

static void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v & 0xFF);
    p[1] = (unsigned char)((v >> 8) & 0xFF);
}
static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)((v >> (8 * i)) & 0xFF);
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)((v >> (8 * i)) & 0xFF);
}

/* The local file header of the single member; sizes live in its ZIP64 extra field. */
static void zip_local_header(unsigned char *h, uint32_t crc, uint64_t size) {
    memset(h, 0, ZIP_LOCAL_LEN);
    put32(h + 0, 0x04034b50);
    put16(h + 4, ZIP_VERSION);
    put16(h + 6, 0);              /* flags */
    put16(h + 8, 0);              /* method: stored */
    put16(h + 10, 0);             /* time */
    put16(h + 12, ZIP_DOS_DATE);  /* date */
    put32(h + 14, crc);
    put32(h + 18, 0xFFFFFFFFu);   /* compressed size: see ZIP64 extra */
    put32(h + 22, 0xFFFFFFFFu);   /* uncompressed size: see ZIP64 extra */
    put16(h + 26, ZIP_NAME_LEN);
    put16(h + 28, 20);            /* extra length */
    memcpy(h + 30, ZIP_NAME, ZIP_NAME_LEN);
    unsigned char *x = h + 30 + ZIP_NAME_LEN;
    put16(x + 0, 0x0001);         /* ZIP64 extended information */
    put16(x + 2, 16);
    put64(x + 4, size);           /* uncompressed */
    put64(x + 12, size);          /* compressed (stored: same) */
}

ncsn_npz_writer *ncsn_npz_open(const char *path, int H, int W, int C) {
    NCSN_CHECK(path != NULL);
    NCSN_CHECKF(H >= 1 && W >= 1 && (C == 1 || C == 3), "ncsn_npz_open: bad image shape %dx%dx%d", H, W, C);
    ncsn_npz_writer *w = ncsn_xcalloc(1, sizeof(*w));
    w->H = H, w->W = W, w->C = C;
    w->crc_data = crc32(0L, Z_NULL, 0);
    w->scratch = ncsn_xmalloc((size_t)H * W * C);
    ncsn_atomic_open(&w->af, path);
    /* Placeholders: both headers are rewritten at close with the final values. */
    unsigned char local[ZIP_LOCAL_LEN];
    zip_local_header(local, 0, 0);
    ncsn_atomic_write(&w->af, local, sizeof(local));
    char npy[NPZ_HEADER_LEN];
    int64_t shape[4] = {0, H, W, C};
    npy_preamble(npy, sizeof(npy), "|u1", 4, shape, NPZ_HEADER_LEN);
    ncsn_atomic_write(&w->af, npy, sizeof(npy));
    return w;
}

void ncsn_npz_append(ncsn_npz_writer *w, const uint8_t *nhwc, int n) {
    NCSN_CHECK(w != NULL && n >= 0);
    size_t bytes = (size_t)n * w->H * w->W * w->C;
    if (!bytes) return;
    NCSN_CHECK(nhwc != NULL);
    /* crc32 takes a uInt length: feed it in chunks below 4 GiB. */
    for (size_t off = 0; off < bytes;) {
        size_t chunk = bytes - off < ((size_t)1 << 30) ? bytes - off : ((size_t)1 << 30);
        w->crc_data = crc32(w->crc_data, nhwc + off, (uInt)chunk);
        off += chunk;
    }
    ncsn_atomic_write(&w->af, nhwc, bytes);
    w->data_bytes += bytes;
    w->count += n;
}

void ncsn_npz_append_float(ncsn_npz_writer *w, const float *nchw, int n) {
    NCSN_CHECK(w != NULL && n >= 0);
    size_t per = (size_t)w->C * w->H * w->W;
    for (int i = 0; i < n; i++) {
        ncsn_to_uint8_hwc(w->scratch, nchw + (size_t)i * per, w->C, w->H, w->W);
        ncsn_npz_append(w, w->scratch, 1);
    }
}

int64_t ncsn_npz_count(const ncsn_npz_writer *w) { return w->count; }

void ncsn_npz_close(ncsn_npz_writer *w) {
    NCSN_CHECK(w != NULL);
    char npy[NPZ_HEADER_LEN];
    int64_t shape[4] = {w->count, w->H, w->W, w->C};
    npy_preamble(npy, sizeof(npy), "|u1", 4, shape, NPZ_HEADER_LEN);
    const uint64_t member = NPZ_HEADER_LEN + w->data_bytes;
    uLong crc = crc32(0L, (const Bytef *)npy, NPZ_HEADER_LEN);
    crc = crc32_combine64(crc, w->crc_data, (z_off64_t)w->data_bytes);

    unsigned char local[ZIP_LOCAL_LEN];
    zip_local_header(local, (uint32_t)crc, member);
    ncsn_atomic_seek(&w->af, 0);
    ncsn_atomic_write(&w->af, local, sizeof(local));
    ncsn_atomic_write(&w->af, npy, sizeof(npy));
    const uint64_t cd_offset = ZIP_LOCAL_LEN + member;
    ncsn_atomic_seek(&w->af, cd_offset);

    /* Central directory: one entry, sizes and the local header offset in ZIP64 extra. */
    unsigned char cd[46 + ZIP_NAME_LEN + 28];
    memset(cd, 0, sizeof(cd));
    put32(cd + 0, 0x02014b50);
    put16(cd + 4, ZIP_VERSION); /* made by */
    put16(cd + 6, ZIP_VERSION); /* needed */
    put16(cd + 12, 0);          /* time */
    put16(cd + 14, ZIP_DOS_DATE);
    put32(cd + 16, (uint32_t)crc);
    put32(cd + 20, 0xFFFFFFFFu);
    put32(cd + 24, 0xFFFFFFFFu);
    put16(cd + 28, ZIP_NAME_LEN);
    put16(cd + 30, 28);
    put32(cd + 42, 0xFFFFFFFFu); /* local header offset: see ZIP64 extra */
    memcpy(cd + 46, ZIP_NAME, ZIP_NAME_LEN);
    unsigned char *x = cd + 46 + ZIP_NAME_LEN;
    put16(x + 0, 0x0001);
    put16(x + 2, 24);
    put64(x + 4, member);  /* uncompressed */
    put64(x + 12, member); /* compressed */
    put64(x + 20, 0);      /* local header offset */
    ncsn_atomic_write(&w->af, cd, sizeof(cd));

    const uint64_t eocd64_offset = cd_offset + sizeof(cd);
    unsigned char end[56 + 20 + 22];
    memset(end, 0, sizeof(end));
    unsigned char *e = end; /* ZIP64 end of central directory record */
    put32(e + 0, 0x06064b50);
    put64(e + 4, 44); /* size of the rest of the record */
    put16(e + 12, ZIP_VERSION);
    put16(e + 14, ZIP_VERSION);
    put64(e + 24, 1); /* entries on this disk */
    put64(e + 32, 1); /* entries */
    put64(e + 40, sizeof(cd));
    put64(e + 48, cd_offset);
    unsigned char *l = end + 56; /* ZIP64 end of central directory locator */
    put32(l + 0, 0x07064b50);
    put64(l + 8, eocd64_offset);
    put32(l + 16, 1); /* disks */
    unsigned char *r = end + 76; /* classic end of central directory */
    put32(r + 0, 0x06054b50);
    put16(r + 8, 1);
    put16(r + 10, 1);
    put32(r + 12, (uint32_t)sizeof(cd));
    put32(r + 16, cd_offset >= 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)cd_offset);
    ncsn_atomic_write(&w->af, end, sizeof(end));
    ncsn_atomic_commit(&w->af);
    free(w->scratch);
    free(w);
}
