/* safetensors.c: the .safetensors reader and writer (safetensors.h).
 *
 * Reading trusts nothing in the file. The checks, in order, each a one-line error:
 *   - at least the 8-byte header length; the length fits in the file and under the
 *     100 MB limit of the reference implementation;
 *   - the header is one JSON object (a small strict parser below: strings with all JSON
 *     escapes, valid UTF-8, non-negative integers; no floats, no nesting beyond the format);
 *   - "__metadata__" maps strings to strings; every other key is a tensor with exactly
 *     dtype (F32 I32 I64 U8), shape (at most 8 non-negative dims) and data_offsets [b, e];
 *   - b <= e <= data size, and prod(shape) * sizeof(dtype) == e - b (overflow checked);
 *   - the tensors tile the data section exactly, as the format requires (no overlap, no
 *     hole, nothing after the last tensor): sorted by offset, each begins where the
 *     previous one ends;
 *   - no two tensors or metadata keys share a name.
 * Tensor data then points into one buffer holding the data section (malloc-aligned);
 * a tensor whose offset is not a multiple of its element size gets its own aligned copy.
 *
 * Writing lays the data out by element size, largest first, then in insertion order
 * (the Python `safetensors` package also sorts by alignment), so with the header padded
 * with spaces to a multiple of 8 every tensor is naturally aligned in the file. The header
 * lists tensors in insertion order. Strings are JSON-escaped ("\n", "\"", "\\", control
 * characters as \u00XX) and must be valid UTF-8. The file is replaced atomically
 * (atomic_file.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ncsn/atomic_file.h"
#include "ncsn/common.h"
#include "ncsn/safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* The reference implementation's limit on the header (safetensors MAX_HEADER_SIZE). */
#define ST_MAX_HEADER ((uint64_t)100000000)
#define ST_MAX_DIMS 8

static const char *const dtype_names[] = {"F32", "I32", "I64", "U8"};

size_t ncsn_dtype_size(ncsn_dtype dt) {
    switch (dt) {
    case NCSN_DT_F32: return 4;
    case NCSN_DT_I32: return 4;
    case NCSN_DT_I64: return 8;
    case NCSN_DT_U8: return 1;
    }
    ncsn_die("unknown dtype %d", (int)dt);
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

static int utf8_valid(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_sequence((const unsigned char *)s + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

/* ---- growable string --------------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} strbuf;

static void sb_reserve(strbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) ncsn_die("out of memory (%zu bytes) building a safetensors header", cap);
    b->s = s;
    b->cap = cap;
}

static void sb_putn(strbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) { /* short pieces: numbers, dtype names */
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    NCSN_CHECK(n >= 0 && (size_t)n < sizeof(tmp));
    sb_putn(b, tmp, (size_t)n);
}

/* A JSON string literal for s (valid UTF-8 passes through; only '"', '\\' and control
 * characters are escaped). */
static void sb_json_string(strbuf *b, const char *s) {
    sb_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (*p < 0x20)
                sb_printf(b, "\\u%04x", *p);
            else
                sb_putn(b, (const char *)p, 1);
        }
    }
    sb_putn(b, "\"", 1);
}

/* ---- JSON header parser ------------------------------------------------------------------ */

/* Names and strings from a bad file may hold control characters; an error stays one
 * line by showing them as '?'. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

typedef struct {
    const char *p, *begin, *end;
    char *err;
    size_t errlen;
    const char *path;
    int failed;
} json_cursor;

static int jfail(json_cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jfail(json_cursor *c, const char *fmt, ...) {
    if (c->failed) return 0; /* keep the first, most specific message */
    c->failed = 1;
    if (c->err && c->errlen) {
        int n = snprintf(c->err, c->errlen, "%s: ", c->path);
        if (n < 0) n = 0;
        if ((size_t)n < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
            va_end(ap);
            one_line(c->err + n);
        }
    }
    return 0;
}

static void jskip_ws(json_cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static long jpos(const json_cursor *c) { return (long)(c->p - c->begin); }

/* A byte as it may appear inside a one-line message: itself if printable, else 0xNN. */
static const char *char_repr(char *buf, size_t cap, char ch) {
    unsigned char u = (unsigned char)ch;
    if (u >= 0x20 && u < 0x7f) snprintf(buf, cap, "'%c'", ch);
    else snprintf(buf, cap, "byte 0x%02x", u);
    return buf;
}

static int jexpect(json_cursor *c, char ch, const char *what) {
    jskip_ws(c);
    if (c->p >= c->end) return jfail(c, "bad header: expected '%c' (%s) at byte %ld, found the end", ch, what, jpos(c));
    char seen[16];
    if (*c->p != ch)
        return jfail(c, "bad header: expected '%c' (%s) at byte %ld, found %s", ch, what, jpos(c),
                     char_repr(seen, sizeof(seen), *c->p));
    c->p++;
    return 1;
}

/* Peeks the next non-space character (0 at the end). */
static char jpeek(json_cursor *c) {
    jskip_ws(c);
    return c->p < c->end ? *c->p : 0;
}

/* Opening `open` of a list or object: 1 if it is empty (and consumed whole), 0 if items
 * follow, -1 on error. */
static int jopen(json_cursor *c, char open, const char *what) {
    if (!jexpect(c, open, what)) return -1;
    if (jpeek(c) == (open == '[' ? ']' : '}')) {
        c->p++;
        return 1;
    }
    return 0;
}

/* After an item: 1 if ',' (another item follows), 0 if `close` ended the list or object,
 * -1 (error recorded) otherwise. */
static int jnext(json_cursor *c, char close, const char *where) {
    char ch = jpeek(c);
    if (ch == ',' || ch == close) {
        c->p++;
        return ch == ',';
    }
    char seen[16];
    jfail(c, "bad header: expected ',' or '%c' in %s at byte %ld, found %s", close, where, jpos(c),
          ch ? char_repr(seen, sizeof(seen), ch) : "the end");
    return -1;
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= (uint32_t)(h - '0');
        else if (h >= 'a' && h <= 'f') v |= (uint32_t)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= (uint32_t)(h - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void utf8_encode(strbuf *b, uint32_t cp) {
    char out[4];
    size_t n;
    if (cp < 0x80) out[0] = (char)cp, n = 1;
    else if (cp < 0x800) out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        out[0] = (char)(0xE0 | (cp >> 12)), out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)),
        out[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    else
        out[0] = (char)(0xF0 | (cp >> 18)), out[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    sb_putn(b, out, n);
}

/* Parses a JSON string into a fresh malloc'd, NUL-terminated buffer (*out). A string
 * containing \u0000 is rejected: names and metadata are C strings. */
static int jstring(json_cursor *c, char **out) {
    *out = NULL;
    if (!jexpect(c, '"', "a string")) return 0;
    strbuf b = {0};
    sb_reserve(&b, 16);
    while (1) {
        if (c->p >= c->end) {
            free(b.s);
            return jfail(c, "bad header: unterminated string");
        }
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            break;
        }
        if (ch < 0x20) {
            free(b.s);
            return jfail(c, "bad header: raw control character 0x%02x in a string at byte %ld", ch, jpos(c));
        }
        if (ch == '\\') {
            if (c->end - c->p < 2) {
                free(b.s);
                return jfail(c, "bad header: unterminated escape");
            }
            char e = c->p[1];
            c->p += 2;
            switch (e) {
            case '"': sb_putn(&b, "\"", 1); break;
            case '\\': sb_putn(&b, "\\", 1); break;
            case '/': sb_putn(&b, "/", 1); break;
            case 'b': sb_putn(&b, "\b", 1); break;
            case 'f': sb_putn(&b, "\f", 1); break;
            case 'n': sb_putn(&b, "\n", 1); break;
            case 'r': sb_putn(&b, "\r", 1); break;
            case 't': sb_putn(&b, "\t", 1); break;
            case 'u': {
                uint32_t cp;
                if (c->end - c->p < 4 || !hex4(c->p, &cp)) {
                    free(b.s);
                    return jfail(c, "bad header: bad \\u escape at byte %ld", jpos(c));
                }
                c->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) { /* high surrogate: a low one must follow */
                    uint32_t lo;
                    if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' || !hex4(c->p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF) {
                        free(b.s);
                        return jfail(c, "bad header: unpaired surrogate in a \\u escape at byte %ld", jpos(c));
                    }
                    c->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    free(b.s);
                    return jfail(c, "bad header: unpaired surrogate in a \\u escape at byte %ld", jpos(c));
                }
                if (cp == 0) {
                    free(b.s);
                    return jfail(c, "bad header: \\u0000 in a string");
                }
                utf8_encode(&b, cp);
                break;
            }
            default: {
                char seen[16];
                free(b.s);
                return jfail(c, "bad header: unknown escape: backslash then %s at byte %ld",
                             char_repr(seen, sizeof(seen), e), jpos(c) - 1);
            }
            }
            continue;
        }
        size_t k = utf8_sequence((const unsigned char *)c->p, (size_t)(c->end - c->p));
        if (!k) {
            free(b.s);
            return jfail(c, "bad header: invalid UTF-8 at byte %ld", jpos(c));
        }
        sb_putn(&b, c->p, k);
        c->p += k;
    }
    *out = b.s;
    return 1;
}

/* A non-negative JSON integer (no sign, fraction or exponent), at most 2^63 - 1. */
static int juint(json_cursor *c, uint64_t *out, const char *what) {
    jskip_ws(c);
    const char *start = c->p;
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        uint64_t d = (uint64_t)(*c->p - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10) return jfail(c, "bad header: %s is too large", what);
        v = v * 10 + d;
        c->p++;
    }
    if (c->p == start) return jfail(c, "bad header: %s must be a non-negative integer (byte %ld)", what, jpos(c));
    if (c->p - start > 1 && *start == '0') return jfail(c, "bad header: %s has a leading zero", what);
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
        return jfail(c, "bad header: %s must be an integer", what);
    *out = v;
    return 1;
}

/* [n, n, ...] into vals (at most maxn entries). */
static int juint_array(json_cursor *c, uint64_t *vals, int maxn, int *n, const char *what) {
    *n = 0;
    int empty = jopen(c, '[', what);
    if (empty != 0) return empty > 0;
    for (int more = 1; more;) {
        if (*n >= maxn) return jfail(c, "bad header: %s has more than %d entries", what, maxn);
        if (!juint(c, &vals[*n], what)) return 0;
        (*n)++;
        if ((more = jnext(c, ']', what)) < 0) return 0;
    }
    return 1;
}

/* Per-tensor facts the reader keeps until the layout checks are done. */
typedef struct {
    uint64_t begin, end;
    int index; /* into st->tensors */
} span;

static int parse_metadata(json_cursor *c, ncsn_safetensors *st) {
    if (jpeek(c) == 'n') { /* null: no metadata */
        if (c->end - c->p >= 4 && !memcmp(c->p, "null", 4)) {
            c->p += 4;
            return 1;
        }
    }
    int empty = jopen(c, '{', "__metadata__ must be an object of strings");
    if (empty != 0) return empty > 0;
    for (int more = 1; more;) {
        char *key = NULL, *value = NULL;
        if (!jstring(c, &key)) return 0;
        if (!jexpect(c, ':', "after a metadata key")) {
            free(key);
            return 0;
        }
        if (jpeek(c) != '"') {
            jfail(c, "bad header: __metadata__ value of '%s' must be a string", key);
            free(key);
            return 0;
        }
        if (!jstring(c, &value)) {
            free(key);
            return 0;
        }
        if (strlen(key) >= sizeof(st->meta[0].key)) {
            jfail(c, "bad header: metadata key '%.40s...' is longer than %zu bytes", key, sizeof(st->meta[0].key) - 1);
            free(key);
            free(value);
            return 0;
        }
        if (ncsn_safetensors_meta(st, key)) {
            jfail(c, "bad header: duplicate metadata key '%s'", key);
            free(key);
            free(value);
            return 0;
        }
        ncsn_safetensors_set_meta(st, key, value);
        free(key);
        free(value);
        if ((more = jnext(c, '}', "__metadata__")) < 0) return 0;
    }
    return 1;
}

/* Room for element n of a growable array of capacity *cap (doubling). */
static void *grow(void *arr, int n, int *cap, size_t elem, const char *what) {
    if (n < *cap) return arr;
    int bigger = *cap ? 2 * *cap : 16;
    void *g = realloc(arr, (size_t)bigger * elem);
    if (!g) ncsn_die("out of memory growing the %s", what);
    *cap = bigger;
    return g;
}

/* Appends an (empty-data) tensor entry for a name from the header. */
static ncsn_st_tensor *push_tensor(ncsn_safetensors *st) {
    st->tensors = grow(st->tensors, st->n_tensors, &st->cap_tensors, sizeof(*st->tensors), "tensor list");
    ncsn_st_tensor *t = &st->tensors[st->n_tensors++];
    memset(t, 0, sizeof(*t));
    return t;
}

static int parse_tensor(json_cursor *c, ncsn_safetensors *st, const char *name, span *sp, uint64_t data_size) {
    if (strlen(name) >= sizeof(st->tensors[0].name))
        return jfail(c, "bad header: tensor name '%.40s...' is longer than %zu bytes", name,
                     sizeof(st->tensors[0].name) - 1);
    if (!name[0]) return jfail(c, "bad header: a tensor has an empty name");
    if (ncsn_safetensors_find(st, name)) return jfail(c, "bad header: duplicate tensor '%s'", name);
    if (jopen(c, '{', "a tensor entry") != 0) return jfail(c, "bad header: tensor '%s' is not an object with fields", name);
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    ncsn_dtype dtype = NCSN_DT_F32;
    uint64_t shape[ST_MAX_DIMS], offsets[2];
    int ndim = 0, noff = 0;
    for (int more = 1; more;) {
        char *field = NULL;
        if (!jstring(c, &field)) return 0;
        if (!jexpect(c, ':', "after a tensor field")) {
            free(field);
            return 0;
        }
        int ok = 1;
        if (!strcmp(field, "dtype")) {
            char *dt = NULL;
            ok = !have_dtype || jfail(c, "bad header: tensor '%s' has two dtype fields", name);
            if (ok) ok = jstring(c, &dt);
            if (ok) {
                int found = -1;
                for (int i = 0; i < 4; i++)
                    if (!strcmp(dt, dtype_names[i])) found = i;
                if (found < 0)
                    ok = jfail(c, "tensor '%s': unsupported dtype '%s' (this engine reads F32, I32, I64, U8)", name, dt);
                else
                    dtype = (ncsn_dtype)found, have_dtype = 1;
            }
            free(dt);
        } else if (!strcmp(field, "shape")) {
            ok = !have_shape || jfail(c, "bad header: tensor '%s' has two shape fields", name);
            if (ok) ok = juint_array(c, shape, ST_MAX_DIMS, &ndim, "shape");
            have_shape = ok;
        } else if (!strcmp(field, "data_offsets")) {
            ok = !have_offsets || jfail(c, "bad header: tensor '%s' has two data_offsets fields", name);
            if (ok) ok = juint_array(c, offsets, 2, &noff, "data_offsets");
            if (ok && noff != 2) ok = jfail(c, "tensor '%s': data_offsets must be [begin, end]", name);
            have_offsets = ok;
        } else {
            ok = jfail(c, "bad header: tensor '%s' has an unknown field '%s'", name, field);
        }
        free(field);
        if (!ok) return 0;
        char where[200];
        snprintf(where, sizeof(where), "tensor '%s'", name);
        if ((more = jnext(c, '}', where)) < 0) return 0;
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return jfail(c, "bad header: tensor '%s' lacks %s", name,
                     !have_dtype ? "its dtype" : !have_shape ? "its shape" : "its data_offsets");

    /* Sizes: prod(shape) * element size must be the byte span, with no overflow. */
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && count > (uint64_t)INT64_MAX / shape[i])
            return jfail(c, "tensor '%s': shape is too large", name);
        count *= shape[i];
    }
    uint64_t esize = ncsn_dtype_size(dtype);
    if (count > (uint64_t)INT64_MAX / esize) return jfail(c, "tensor '%s': shape is too large", name);
    uint64_t nbytes = count * esize;
    if (offsets[0] > offsets[1])
        return jfail(c, "tensor '%s': data_offsets [%llu, %llu] end before they begin", name,
                     (unsigned long long)offsets[0], (unsigned long long)offsets[1]);
    if (offsets[1] > data_size)
        return jfail(c,
                     "tensor '%s': data_offsets [%llu, %llu] run past the end of the data section (%llu bytes); "
                     "is the file truncated?",
                     name, (unsigned long long)offsets[0], (unsigned long long)offsets[1],
                     (unsigned long long)data_size);
    if (offsets[1] - offsets[0] != nbytes) {
        char dims[160] = "";
        for (int i = 0; i < ndim; i++) {
            size_t l = strlen(dims);
            snprintf(dims + l, sizeof(dims) - l, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
        }
        return jfail(c, "tensor '%s': shape [%s] of %s needs %llu bytes but data_offsets [%llu, %llu] span %llu", name,
                     dims, dtype_names[dtype], (unsigned long long)nbytes, (unsigned long long)offsets[0],
                     (unsigned long long)offsets[1], (unsigned long long)(offsets[1] - offsets[0]));
    }
    if (nbytes > SIZE_MAX) return jfail(c, "tensor '%s' does not fit in memory", name);

    ncsn_st_tensor *t = push_tensor(st);
    memcpy(t->name, name, strlen(name) + 1);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = (int64_t)shape[i];
    t->nbytes = (size_t)nbytes;
    sp->begin = offsets[0];
    sp->end = offsets[1];
    sp->index = st->n_tensors - 1;
    return 1;
}

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index - y->index;
}

/* The tensors must tile [0, data_size) exactly. */
static int check_layout(json_cursor *c, const ncsn_safetensors *st, span *spans, int n, uint64_t data_size) {
    qsort(spans, (size_t)n, sizeof(*spans), span_cmp);
    uint64_t pos = 0;
    int prev = -1;
    for (int i = 0; i < n; i++) {
        if (spans[i].begin < pos)
            return jfail(c, "tensors '%s' (bytes %llu..%llu) and '%s' (bytes %llu..%llu) overlap",
                         st->tensors[spans[prev].index].name, (unsigned long long)spans[prev].begin,
                         (unsigned long long)spans[prev].end, st->tensors[spans[i].index].name,
                         (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end);
        if (spans[i].begin > pos)
            return jfail(c, "no tensor covers data bytes %llu..%llu (the format allows no holes)",
                         (unsigned long long)pos, (unsigned long long)spans[i].begin);
        if (spans[i].end > pos || prev < 0) prev = i;
        if (spans[i].end > pos) pos = spans[i].end;
    }
    if (pos != data_size)
        return jfail(c, "%llu bytes after the last tensor (data section is %llu bytes, tensors end at %llu)",
                     (unsigned long long)(data_size - pos), (unsigned long long)data_size, (unsigned long long)pos);
    return 1;
}

static int parse_header(json_cursor *c, ncsn_safetensors *st, uint64_t data_size, span **spans_out) {
    span *spans = NULL;
    int n_spans = 0, cap_spans = 0;
    *spans_out = NULL;
    if (jpeek(c) != '{') return jfail(c, "bad header: not a JSON object (does not start with '{')");
    int ok = 1;
    if (jopen(c, '{', "the header") == 0) {
        for (int more = 1; more;) {
            char *key = NULL;
            ok = jstring(c, &key) && jexpect(c, ':', "after a key");
            if (ok) {
                if (!strcmp(key, "__metadata__")) {
                    ok = parse_metadata(c, st);
                } else {
                    spans = grow(spans, n_spans, &cap_spans, sizeof(*spans), "tensor list");
                    ok = parse_tensor(c, st, key, &spans[n_spans], data_size);
                    if (ok) n_spans++;
                }
            }
            free(key);
            if (!ok) break;
            if ((more = jnext(c, '}', "the header")) < 0) ok = 0;
        }
    }
    if (ok) {
        jskip_ws(c); /* writers pad the header with spaces */
        if (c->p != c->end) ok = jfail(c, "bad header: unexpected bytes after the JSON object (byte %ld)", jpos(c));
    }
    if (ok) ok = check_layout(c, st, spans, n_spans, data_size);
    *spans_out = spans;
    return ok;
}

/* ---- reading ----------------------------------------------------------------------------- */

/* The blob of a read file: a 16-byte prefix holding the data section's size (so free()
 * can tell tensors inside it from aligned copies), then the data section, 16-aligned. */
#define BLOB_PREFIX 16
static char *blob_data(void *blob) { return (char *)blob + BLOB_PREFIX; }

static int read_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int read_fail(char *err, size_t errlen, const char *path, const char *fmt, ...) {
    if (err && errlen) {
        int n = snprintf(err, errlen, "%s: ", path);
        if (n < 0) n = 0;
        if ((size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return 0;
}

static int read_exact(FILE *f, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t k = fread((char *)buf + got, 1, n - got, f);
        if (k == 0) return 0;
        got += k;
    }
    return 1;
}

int ncsn_safetensors_try_read(ncsn_safetensors *st, const char *path, char *err, size_t errlen) {
    NCSN_CHECK(st != NULL && path != NULL);
    memset(st, 0, sizeof(*st));
    if (err && errlen) err[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return read_fail(err, errlen, path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return read_fail(err, errlen, path, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        fclose(f);
        return read_fail(err, errlen, path, "not a regular file");
    }
    uint64_t size = (uint64_t)sb.st_size;
    unsigned char len8[8];
    if (size < 8 || !read_exact(f, len8, 8)) {
        fclose(f);
        return read_fail(err, errlen, path, "file is %llu bytes, too short for a safetensors file (8-byte header length)",
                         (unsigned long long)size);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
    if (hlen > size - 8) {
        fclose(f);
        return read_fail(err, errlen, path,
                         "header length %llu runs past the end of the file (%llu bytes); truncated, or not a "
                         "safetensors file",
                         (unsigned long long)hlen, (unsigned long long)size);
    }
    if (hlen > ST_MAX_HEADER) {
        fclose(f);
        return read_fail(err, errlen, path, "header length %llu exceeds the format's limit of %llu bytes",
                         (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    }
    char *header = malloc((size_t)hlen + 1);
    if (!header) {
        fclose(f);
        return read_fail(err, errlen, path, "out of memory for a %llu-byte header", (unsigned long long)hlen);
    }
    if (!read_exact(f, header, (size_t)hlen)) {
        free(header);
        fclose(f);
        return read_fail(err, errlen, path, "read error in the header");
    }
    header[hlen] = '\0';

    uint64_t data_size = size - 8 - hlen;
    json_cursor c = {header, header, header + hlen, err, errlen, path, 0};
    span *spans = NULL;
    int ok = parse_header(&c, st, data_size, &spans);
    free(header);
    if (ok && data_size > SIZE_MAX) ok = read_fail(err, errlen, path, "data section does not fit in memory");
    if (ok) {
        st->blob = data_size <= SIZE_MAX - BLOB_PREFIX ? malloc(BLOB_PREFIX + (size_t)data_size) : NULL;
        if (!st->blob) {
            ok = read_fail(err, errlen, path, "out of memory for %llu bytes of tensor data",
                           (unsigned long long)data_size);
        } else {
            memcpy(st->blob, &data_size, sizeof(data_size));
            if (!read_exact(f, blob_data(st->blob), (size_t)data_size))
                ok = read_fail(err, errlen, path, "read error in the tensor data (file changed while reading?)");
        }
    }
    fclose(f);
    if (ok) {
        /* spans are sorted by offset now; find each tensor's begin through them. */
        for (int i = 0; i < st->n_tensors; i++) {
            ncsn_st_tensor *t = &st->tensors[spans[i].index];
            char *src = blob_data(st->blob) + spans[i].begin;
            if (spans[i].begin % ncsn_dtype_size(t->dtype) == 0 || t->nbytes == 0) {
                t->data = src;
            } else { /* misaligned for its element type: an own, aligned copy */
                t->data = ncsn_xmalloc(t->nbytes);
                memcpy(t->data, src, t->nbytes);
            }
        }
    }
    free(spans);
    if (!ok) ncsn_safetensors_free(st);
    return ok;
}

void ncsn_safetensors_read(ncsn_safetensors *st, const char *path) {
    char err[1024];
    if (!ncsn_safetensors_try_read(st, path, err, sizeof(err))) ncsn_die("%s", err);
}

/* ---- building and writing ---------------------------------------------------------------- */

void ncsn_safetensors_add(ncsn_safetensors *st, const char *name, ncsn_dtype dtype, int ndim, const int64_t *shape,
                          const void *data) {
    NCSN_CHECK(st != NULL && name != NULL);
    NCSN_CHECKF(name[0] && strlen(name) < sizeof(st->tensors[0].name), "safetensors: bad tensor name '%s'", name);
    NCSN_CHECKF(ndim >= 0 && ndim <= ST_MAX_DIMS, "safetensors: tensor '%s' has %d dims (0..8)", name, ndim);
    NCSN_CHECKF((int)dtype >= 0 && (int)dtype < 4, "safetensors: tensor '%s' has an unknown dtype", name);
    NCSN_CHECKF(!ncsn_safetensors_find(st, name), "safetensors: duplicate tensor name '%s'", name);
    NCSN_CHECKF(utf8_valid(name), "safetensors: tensor name is not valid UTF-8");
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        NCSN_CHECKF(shape[i] >= 0, "safetensors: tensor '%s' has a negative dim", name);
        NCSN_CHECKF(shape[i] == 0 || count <= SIZE_MAX / 8 / (size_t)shape[i], "safetensors: tensor '%s' too large",
                    name);
        count *= (size_t)shape[i];
    }
    ncsn_st_tensor *t = push_tensor(st);
    memcpy(t->name, name, strlen(name) + 1);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = count * ncsn_dtype_size(dtype);
    t->data = ncsn_xmalloc(t->nbytes);
    if (t->nbytes) {
        NCSN_CHECK(data != NULL);
        memcpy(t->data, data, t->nbytes);
    }
}

void ncsn_safetensors_set_meta(ncsn_safetensors *st, const char *key, const char *value) {
    NCSN_CHECK(st != NULL && key != NULL && value != NULL);
    NCSN_CHECKF(strlen(key) < sizeof(st->meta[0].key), "safetensors: metadata key '%s' is too long", key);
    size_t vlen = strlen(value);
    char *copy = ncsn_xmalloc(vlen + 1);
    memcpy(copy, value, vlen + 1);
    for (int i = 0; i < st->n_meta; i++) {
        if (!strcmp(st->meta[i].key, key)) {
            free(st->meta[i].value);
            st->meta[i].value = copy;
            return;
        }
    }
    st->meta = grow(st->meta, st->n_meta, &st->cap_meta, sizeof(*st->meta), "metadata list");
    ncsn_st_meta *m = &st->meta[st->n_meta++];
    memcpy(m->key, key, strlen(key) + 1);
    m->value = copy;
}

const ncsn_st_tensor *ncsn_safetensors_find(const ncsn_safetensors *st, const char *name) {
    for (int i = 0; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
    return NULL;
}

const char *ncsn_safetensors_meta(const ncsn_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta[i].key, key)) return st->meta[i].value;
    return NULL;
}

/* Data order: element size descending, then insertion order (stable). */
typedef struct {
    size_t esize;
    int index;
} layout_item;

static int layout_cmp(const void *a, const void *b) {
    const layout_item *x = a, *y = b;
    if (x->esize != y->esize) return x->esize > y->esize ? -1 : 1;
    return x->index - y->index;
}

void ncsn_safetensors_write(const ncsn_safetensors *st, const char *path) {
    NCSN_CHECK(st != NULL && path != NULL);
    const int n = st->n_tensors;
    layout_item *order = ncsn_xmalloc((size_t)(n ? n : 1) * sizeof(*order));
    uint64_t *begin = ncsn_xmalloc((size_t)(n ? n : 1) * sizeof(*begin));
    for (int i = 0; i < n; i++) order[i] = (layout_item){ncsn_dtype_size(st->tensors[i].dtype), i};
    qsort(order, (size_t)n, sizeof(*order), layout_cmp);
    uint64_t pos = 0;
    for (int k = 0; k < n; k++) {
        begin[order[k].index] = pos;
        pos += st->tensors[order[k].index].nbytes;
    }

    strbuf h = {0};
    sb_putn(&h, "{", 1);
    int first = 1;
    if (st->n_meta > 0) {
        sb_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < st->n_meta; i++) {
            if (!utf8_valid(st->meta[i].key) || !utf8_valid(st->meta[i].value))
                ncsn_die("%s: metadata '%s' is not valid UTF-8", path, st->meta[i].key);
            if (i) sb_putn(&h, ",", 1);
            sb_json_string(&h, st->meta[i].key);
            sb_putn(&h, ":", 1);
            sb_json_string(&h, st->meta[i].value);
        }
        sb_putn(&h, "}", 1);
        first = 0;
    }
    for (int i = 0; i < n; i++) {
        const ncsn_st_tensor *t = &st->tensors[i];
        if (!first) sb_putn(&h, ",", 1);
        first = 0;
        sb_json_string(&h, t->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype_names[t->dtype]);
        for (int d = 0; d < t->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)begin[i],
                  (unsigned long long)(begin[i] + t->nbytes));
    }
    sb_putn(&h, "}", 1);
    while (h.len % 8 != 0) sb_putn(&h, " ", 1); /* 8 + len stays 8-aligned: so does every tensor */
    if ((uint64_t)h.len > ST_MAX_HEADER) ncsn_die("%s: header of %zu bytes exceeds the format's limit", path, h.len);

    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(((uint64_t)h.len >> (8 * i)) & 0xFF);
    ncsn_atomic_file af;
    ncsn_atomic_open(&af, path);
    ncsn_atomic_write(&af, len8, 8);
    ncsn_atomic_write(&af, h.s, h.len);
    for (int k = 0; k < n; k++) {
        const ncsn_st_tensor *t = &st->tensors[order[k].index];
        ncsn_atomic_write(&af, t->data, t->nbytes);
    }
    ncsn_atomic_commit(&af);
    free(h.s);
    free(order);
    free(begin);
}

void ncsn_safetensors_free(ncsn_safetensors *st) {
    if (!st) return;
    /* A read tensor's data lies inside the blob's data section unless it needed an
     * aligned copy of its own; the blob's prefix says how long that section is. */
    uintptr_t lo = 0, hi = 0;
    if (st->blob) {
        uint64_t data_size;
        memcpy(&data_size, st->blob, sizeof(data_size));
        lo = (uintptr_t)blob_data(st->blob);
        hi = lo + (uintptr_t)data_size;
    }
    for (int i = 0; i < st->n_tensors; i++) {
        uintptr_t p = (uintptr_t)st->tensors[i].data;
        if (!(st->blob && p >= lo && p <= hi)) free(st->tensors[i].data);
    }
    for (int i = 0; i < st->n_meta; i++) free(st->meta[i].value);
    free(st->tensors);
    free(st->meta);
    free(st->blob);
    memset(st, 0, sizeof(*st));
}
