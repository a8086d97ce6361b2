/* test_safetensors.c: the .safetensors reader and writer (safetensors.h).
 *
 * Checks: a roundtrip of every dtype (with a scalar, an empty tensor and odd-sized U8
 * tensors that would misalign the rest) keeps names, shapes and bytes; the header is
 * 8-aligned and every tensor naturally aligned in the file; metadata with newlines,
 * quotes, backslashes, tabs, control characters and non-ASCII text survives, and
 * (with /usr/bin/python3) the header is valid JSON that Python's json module decodes
 * to the same strings; files written by another writer (JSON escapes \u, surrogate
 * pairs, extra whitespace, misaligned offsets) read correctly. Then every malformed
 * file gives a one-line "ncsn: PATH: ..." error and no crash: truncation at every byte
 * length, a header length past EOF, overlapping, out-of-range and hole-leaving offsets,
 * a shape product that disagrees with the offsets, an unknown dtype, duplicates, and
 * garbage or randomly corrupted headers.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ncsn/safetensors.h"
#include "tests/expect_die.h"
#include "tests/harness.h"

/* A file from a header string and a data section, as another writer would make it. */
static void write_raw(const char *path, const char *header, const void *data, size_t ndata) {
    size_t h = strlen(header);
    unsigned char *buf = malloc(8 + h + ndata + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(((uint64_t)h >> (8 * i)) & 0xFF);
    memcpy(buf + 8, header, h);
    if (ndata) memcpy(buf + 8 + h, data, ndata);
    file_write_all(path, buf, 8 + h + ndata);
    free(buf);
}

static const char *const tricky_values[] = {
    "training:\n  batch_size: 128\n  algo: 'dsm'\ndata:\n  dataset: \"CIFAR10\"\n",
    "quotes \" and \\ backslash \\\\ and \\n literally",
    "tab\there, CR\r, bell \x07, escape \x1b, DEL \x7f",
    "unicode: \xc3\xa9t\xc3\xa9 \xe2\x88\x87\xe2\x82\x93 log p \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
    "",
};
#define N_TRICKY ((int)(sizeof(tricky_values) / sizeof(tricky_values[0])))

static void test_roundtrip(void) {
    printf("roundtrip\n");
    char path[512];
    scratch_path(path, sizeof(path), "roundtrip.safetensors");
    ncsn_safetensors st;
    memset(&st, 0, sizeof(st));
    float f32[2 * 3 * 5];
    for (int i = 0; i < 30; i++) f32[i] = (float)i * 0.25f - 3.0f;
    f32[7] = -0.0f;
    int32_t i32[4] = {INT32_MIN, -1, 0, INT32_MAX};
    int64_t i64[3] = {INT64_MIN, 42, INT64_MAX};
    uint8_t u8a[3] = {0, 128, 255}, u8b[5] = {1, 2, 3, 4, 5};
    float scalar = 3.25f;
    int64_t s_f32[3] = {2, 3, 5}, s_i32[1] = {4}, s_i64[2] = {3, 1}, s_u8a[1] = {3}, s_u8b[2] = {5, 1}, s_empty[2] = {0, 7};
    /* Insertion order puts the odd-sized U8 tensors first: the writer must still align F32. */
    ncsn_safetensors_add(&st, "bytes.a", NCSN_DT_U8, 1, s_u8a, u8a);
    ncsn_safetensors_add(&st, "weights", NCSN_DT_F32, 3, s_f32, f32);
    ncsn_safetensors_add(&st, "labels", NCSN_DT_I32, 1, s_i32, i32);
    ncsn_safetensors_add(&st, "bytes.b", NCSN_DT_U8, 2, s_u8b, u8b);
    ncsn_safetensors_add(&st, "counters", NCSN_DT_I64, 2, s_i64, i64);
    ncsn_safetensors_add(&st, "scalar", NCSN_DT_F32, 0, NULL, &scalar);
    ncsn_safetensors_add(&st, "empty", NCSN_DT_F32, 2, s_empty, NULL);
    char key[32];
    for (int i = 0; i < N_TRICKY; i++) {
        snprintf(key, sizeof(key), "meta%d", i);
        ncsn_safetensors_set_meta(&st, key, tricky_values[i]);
    }
    ncsn_safetensors_set_meta(&st, "meta4", "replaced"); /* set_meta replaces */
    ncsn_safetensors_write(&st, path);

    ncsn_safetensors rd;
    ncsn_safetensors_read(&rd, path);
    EXPECT(rd.n_tensors == st.n_tensors, "tensor count %d want %d", rd.n_tensors, st.n_tensors);
    for (int i = 0; i < st.n_tensors; i++) {
        const ncsn_st_tensor *a = &st.tensors[i], *b = ncsn_safetensors_find(&rd, a->name);
        EXPECT(b != NULL, "tensor '%s' missing after roundtrip", a->name);
        if (!b) continue;
        int same = a->dtype == b->dtype && a->ndim == b->ndim && a->nbytes == b->nbytes;
        for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
        EXPECT(same, "tensor '%s': dtype/shape/size changed", a->name);
        EXPECT(same && (a->nbytes == 0 || !memcmp(a->data, b->data, a->nbytes)), "tensor '%s': bytes differ", a->name);
        EXPECT(((uintptr_t)b->data % ncsn_dtype_size(b->dtype)) == 0, "tensor '%s' data misaligned in memory", a->name);
    }
    for (int i = 0; i < N_TRICKY; i++) {
        snprintf(key, sizeof(key), "meta%d", i);
        const char *v = ncsn_safetensors_meta(&rd, key);
        const char *want = i == 4 ? "replaced" : tricky_values[i];
        EXPECT(v && !strcmp(v, want), "metadata %s: got \"%s\"", key, v ? v : "(missing)");
    }
    EXPECT(rd.n_meta == N_TRICKY, "metadata count %d", rd.n_meta);
    printf("  ok   %d tensors (F32 I32 I64 U8, scalar, empty) and %d metadata strings roundtrip\n", st.n_tensors,
           rd.n_meta);

    /* Layout: 8-aligned header, naturally aligned tensors, all inside the file. */
    size_t n;
    unsigned char *raw = file_read_all(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];
    EXPECT(hlen % 8 == 0 && 8 + hlen <= n, "header length %llu (file %zu) not 8-aligned",
           (unsigned long long)hlen, n);
    EXPECT(raw[8 + hlen - 1] == '}' || raw[8 + hlen - 1] == ' ', "header padding is spaces");
    /* Aligned offsets in the file mean the reader never needed an aligned copy: every
     * tensor points into the blob (Python checks the offsets themselves below). */
    for (int i = 0; i < rd.n_tensors; i++) {
        const unsigned char *d = rd.tensors[i].data, *lo = rd.blob;
        EXPECT(d >= lo && d + rd.tensors[i].nbytes <= lo + n, "tensor '%s' was copied: misaligned in the file",
               rd.tensors[i].name);
    }
    free(raw);

    if (have_python_numpy()) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/python3 - '%s' <<'EOF'\n"
                 "import json, struct, sys\n"
                 "b = open(sys.argv[1], 'rb').read()\n"
                 "n = struct.unpack('<Q', b[:8])[0]\n"
                 "h = json.loads(b[8:8+n].decode('utf-8'))\n"
                 "m = h.pop('__metadata__')\n"
                 "assert m['meta0'].startswith('training:\\n  batch_size: 128\\n  algo: \\'dsm\\''), m['meta0']\n"
                 "assert m['meta1'] == 'quotes \" and \\\\ backslash \\\\\\\\ and \\\\n literally', m['meta1']\n"
                 "assert m['meta3'].endswith('\\u4e2d\\u6587') and '\\U0001F600' in m['meta3'], m['meta3']\n"
                 "sz = {'F32': 4, 'I32': 4, 'I64': 8, 'U8': 1}\n"
                 "for k, t in h.items():\n"
                 "    b0, e0 = t['data_offsets']\n"
                 "    assert b0 %% sz[t['dtype']] == 0, k\n"
                 "assert h['weights']['shape'] == [2, 3, 5] and h['scalar']['shape'] == []\n"
                 "EOF",
                 path);
        int rc = system(cmd);
        EXPECT(rc == 0, "Python json could not decode the header or its values differ (rc %d)", rc);
        if (rc == 0) printf("  ok   Python's json decodes the header; metadata and aligned offsets confirmed\n");
    } else {
        printf("  skip Python JSON cross-check: /usr/bin/python3 not found\n");
    }
    ncsn_safetensors_free(&rd);
    ncsn_safetensors_free(&st);
}

/* A header in another writer's style: \u escapes (BMP and a surrogate pair), "\/",
 * whitespace, __metadata__ last, misaligned F32 data behind a 3-byte U8 tensor. */
static void test_foreign_writer(void) {
    printf("foreign writer\n");
    char path[512];
    scratch_path(path, sizeof(path), "foreign.safetensors");
    unsigned char data[3 + 8];
    data[0] = 7, data[1] = 8, data[2] = 9;
    float v[2] = {1.5f, -2.25f};
    memcpy(data + 3, v, 8);
    write_raw(path,
              "{ \"b\\u00e9\" : {\"dtype\":\"U8\", \"shape\":[3], \"data_offsets\":[0,3]},\n"
              "  \"w\\/x\": {\"data_offsets\": [3, 11], \"shape\": [2], \"dtype\": \"F32\"},\n"
              "  \"__metadata__\": {\"emoji\": \"\\ud83d\\ude00\", \"nl\": \"a\\nb\\t\\\"c\\\"\"} }   ",
              data, sizeof(data));
    ncsn_safetensors st;
    char err[512];
    int ok = ncsn_safetensors_try_read(&st, path, err, sizeof(err));
    EXPECT(ok, "foreign file rejected: %s", err);
    if (!ok) return;
    const ncsn_st_tensor *b = ncsn_safetensors_find(&st, "b\xc3\xa9"), *w = ncsn_safetensors_find(&st, "w/x");
    EXPECT(b && b->nbytes == 3 && !memcmp(b->data, data, 3), "U8 tensor with a \\u00e9 name");
    EXPECT(w && w->nbytes == 8 && !memcmp(w->data, v, 8) && (uintptr_t)w->data % 4 == 0,
           "misaligned F32 tensor read into aligned memory");
    const char *emoji = ncsn_safetensors_meta(&st, "emoji"), *nl = ncsn_safetensors_meta(&st, "nl");
    EXPECT(emoji && !strcmp(emoji, "\xf0\x9f\x98\x80"), "surrogate pair decoded to U+1F600");
    EXPECT(nl && !strcmp(nl, "a\nb\t\"c\""), "escapes decoded");
    printf("  ok   escapes, surrogate pairs, whitespace, field order and misaligned data handled\n");
    ncsn_safetensors_free(&st);
}

/* ---- malformed files --------------------------------------------------------------------- */

typedef struct {
    const char *name, *header;
    size_t ndata;
    const char *want; /* substring of the error */
} bad_case;

static const bad_case bad_cases[] = {
    {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, "overlap"},
    {"same_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     8, "overlap"},
    {"wrong_shape_product", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20,
     "shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20"},
    {"offsets_past_end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}}", 8,
     "run past the end of the data section (8 bytes); is the file truncated?"},
    {"offsets_reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "end before they begin"},
    {"hole", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
     12, "no tensor covers data bytes 4..8"},
    {"trailing_data", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 9, "5 bytes after the last tensor"},
    {"unknown_dtype", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "unsupported dtype 'BF16'"},
    {"duplicate_tensor", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, "duplicate tensor 'a'"},
    {"newline_in_name", "{\"a\\nb\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                        "\"a\\nb\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, "duplicate tensor 'a?b'"},
    {"missing_field", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "lacks its shape"},
    {"unknown_field", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1, "unknown field 'x'"},
    {"negative_dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "non-negative integer"},
    {"float_dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1, "must be an integer"},
    {"too_many_dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     "more than 8 entries"},
    {"huge_shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,1]}}", 1,
     "too large"},
    {"metadata_not_string", "{\"__metadata__\":{\"step\":5}}", 0, "__metadata__ value of 'step' must be a string"},
    {"bad_escape", "{\"__metadata__\":{\"k\":\"\\q\"}}", 0, "unknown escape: backslash then 'q'"},
    {"bad_escape_newline", "{\"__metadata__\":{\"k\":\"\\\n\"}}", 0, "unknown escape: backslash then byte 0x0a"},
    {"lone_surrogate", "{\"__metadata__\":{\"k\":\"\\ud800x\"}}", 0, "unpaired surrogate"},
    {"raw_newline", "{\"__metadata__\":{\"k\":\"a\nb\"}}", 0, "raw control character"},
    {"bad_utf8", "{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", 0, "invalid UTF-8"},
    {"not_object", "[1, 2, 3]", 0, "not a JSON object"},
    {"garbage", "\x01\x02garbage\xff\xfe not json at all", 0, "not a JSON object"},
    {"trailing_json", "{}{}", 0, "unexpected bytes after the JSON object"},
    {"unterminated", "{\"a\":{\"dtype\":\"U8", 0, "unterminated string"},
    {"missing_comma", "{\"a\":{\"dtype\":\"U8\" \"shape\":[1]}}", 0, "expected ',' or '}'"},
};
#define N_BAD ((int)(sizeof(bad_cases) / sizeof(bad_cases[0])))

static void read_path(void *arg) {
    ncsn_safetensors st;
    ncsn_safetensors_read(&st, (const char *)arg);
}

static void test_malformed(void) {
    printf("malformed files\n");
    static char path[N_BAD][512];
    unsigned char zeros[64] = {0};
    for (int i = 0; i < N_BAD; i++) {
        scratch_path(path[i], sizeof(path[i]), bad_cases[i].name);
        write_raw(path[i], bad_cases[i].header, zeros, bad_cases[i].ndata);
        ncsn_safetensors st;
        char err[512];
        int ok = ncsn_safetensors_try_read(&st, path[i], err, sizeof(err));
        int good = !ok && strstr(err, bad_cases[i].want) && !strncmp(err, path[i], strlen(path[i])) &&
                   !strchr(err, '\n') && st.n_tensors == 0 && st.blob == NULL;
        EXPECT(good, "%s: try_read returned %d, err \"%s\" (want \"%s\")", bad_cases[i].name, ok, err,
               bad_cases[i].want);
        if (good) printf("  ok   %-20s %s\n", bad_cases[i].name, err + strlen(scratch_dir) + 1);
        if (ok) ncsn_safetensors_free(&st);
    }
    /* The exiting reader says the same in one "ncsn: PATH: ..." line. */
    char want_prefix[600];
    snprintf(want_prefix, sizeof(want_prefix), "ncsn: %s: ", path[0]);
    EXPECT_DIE2("read() exits with the message", read_path, path[0], want_prefix, "overlap");

    char p[512];
    scratch_path(p, sizeof(p), "short");
    file_write_all(p, "\x10\x00\x00", 3);
    EXPECT_DIE1("3-byte file", read_path, p, "too short for a safetensors file");
    scratch_path(p, sizeof(p), "len_past_eof");
    file_write_all(p, "\x00\x01\x00\x00\x00\x00\x00\x00{}", 10);
    EXPECT_DIE1("header length past EOF", read_path, p, "header length 256 runs past the end of the file (10 bytes)");
    scratch_path(p, sizeof(p), "len_huge");
    file_write_all(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    EXPECT_DIE1("header length 2^64-1", read_path, p, "runs past the end of the file");
    scratch_path(p, sizeof(p), "empty_header");
    file_write_all(p, "\x00\x00\x00\x00\x00\x00\x00\x00", 8);
    EXPECT_DIE1("empty header", read_path, p, "not a JSON object");
    EXPECT_DIE1("missing file", read_path, "/nonexistent/x.safetensors", "cannot open");
    EXPECT_DIE1("a directory", read_path, scratch_dir, "not a regular file");
}

/* Every truncation of a valid file, and random corruption of its header, must give an
 * error (truncations) or a clean result (corruption), never a crash or a hang. */
static void test_fuzz(void) {
    printf("truncation and corruption\n");
    char src[512], p[512];
    scratch_path(src, sizeof(src), "fuzz_src.safetensors");
    scratch_path(p, sizeof(p), "fuzz.safetensors");
    ncsn_safetensors st;
    memset(&st, 0, sizeof(st));
    float w[6] = {1, 2, 3, 4, 5, 6};
    int64_t sh[2] = {2, 3}, sb[1] = {3};
    uint8_t b[3] = {9, 8, 7};
    ncsn_safetensors_add(&st, "w", NCSN_DT_F32, 2, sh, w);
    ncsn_safetensors_add(&st, "b", NCSN_DT_U8, 1, sb, b);
    ncsn_safetensors_set_meta(&st, "config", "a: 1\nb: \"two\"\n");
    ncsn_safetensors_write(&st, src);
    ncsn_safetensors_free(&st);
    size_t n;
    unsigned char *raw = file_read_all(src, &n);

    int truncation_errors = 0;
    for (size_t len = 0; len < n; len++) {
        file_write_all(p, raw, len);
        char err[512];
        if (!ncsn_safetensors_try_read(&st, p, err, sizeof(err))) truncation_errors++;
        else ncsn_safetensors_free(&st);
    }
    EXPECT(truncation_errors == (int)n, "%d of %zu truncated files were accepted", (int)n - truncation_errors, n);
    if (truncation_errors == (int)n) printf("  ok   all %zu truncations (0..%zu bytes) rejected\n", n, n - 1);

    /* Corruption: flip random header bytes; the reader must return (accept or reject). */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];
    uint32_t rng = 12345;
    int accepted = 0, rejected = 0;
    unsigned char *mut = malloc(n);
    for (int trial = 0; trial < 2000; trial++) {
        memcpy(mut, raw, n);
        int flips = 1 + trial % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 1664525u + 1013904223u;
            size_t pos = 8 + (rng >> 8) % hlen;
            rng = rng * 1664525u + 1013904223u;
            mut[pos] = (unsigned char)(rng >> 24);
        }
        file_write_all(p, mut, n);
        char err[512];
        if (ncsn_safetensors_try_read(&st, p, err, sizeof(err))) {
            accepted++;
            ncsn_safetensors_free(&st);
        } else {
            rejected++;
            EXPECT(err[0] && !strchr(err, '\n'), "corruption %d: empty or multi-line error \"%s\"", trial, err);
        }
    }
    printf("  ok   2000 corrupted headers: %d rejected, %d still valid (e.g. a changed name), no crash\n", rejected,
           accepted);
    free(mut);
    free(raw);
}

int main(void) {
    scratch_dir_create("test_safetensors");
    test_roundtrip();
    test_foreign_writer();
    test_malformed();
    test_fuzz();
    scratch_dir_remove();
    return harness_finish("test_safetensors");
}
