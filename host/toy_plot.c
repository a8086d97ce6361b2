/* toy_plot.c: scatter plots of 2-D samples as PNG (sample.h), the seeds' Fig. 2/3 picture:
 * panels side by side (data / Langevin / annealed Langevin), drawn in plain C into an 8-bit
 * RGB buffer and written with ncsn_png_write. No plotting library: the engine has no
 * Python at run time, and a scatter plot is a few loops.
 *
 * Points are alpha-blended 3x3 dots, so where thousands of points pile up the colour
 * saturates and density is visible (the seeds compare mode WEIGHTS, which a plot of
 * opaque dots would hide). Titles and tick labels use a 5x7 bitmap font (the classic
 * column-major 5x7 glyphs: bit r of column c is pixel (row r, column c)).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/common.h"
#include "ncsn/io.h"
#include "ncsn/sample.h"

typedef struct {
    char ch;
    uint8_t col[5];
} glyph5x7;

static const glyph5x7 font[] = {
    {' ', {0x00, 0x00, 0x00, 0x00, 0x00}}, {'.', {0x00, 0x60, 0x60, 0x00, 0x00}},
    {'-', {0x08, 0x08, 0x08, 0x08, 0x08}}, {'=', {0x14, 0x14, 0x14, 0x14, 0x14}},
    {'/', {0x20, 0x10, 0x08, 0x04, 0x02}}, {':', {0x00, 0x36, 0x36, 0x00, 0x00}},
    {'(', {0x00, 0x1C, 0x22, 0x41, 0x00}}, {')', {0x00, 0x41, 0x22, 0x1C, 0x00}},
    {'+', {0x08, 0x08, 0x3E, 0x08, 0x08}}, {'%', {0x23, 0x13, 0x08, 0x64, 0x62}},
    {',', {0x00, 0x50, 0x30, 0x00, 0x00}},
    {'0', {0x3E, 0x51, 0x49, 0x45, 0x3E}}, {'1', {0x00, 0x42, 0x7F, 0x40, 0x00}},
    {'2', {0x42, 0x61, 0x51, 0x49, 0x46}}, {'3', {0x21, 0x41, 0x45, 0x4B, 0x31}},
    {'4', {0x18, 0x14, 0x12, 0x7F, 0x10}}, {'5', {0x27, 0x45, 0x45, 0x45, 0x39}},
    {'6', {0x3C, 0x4A, 0x49, 0x49, 0x30}}, {'7', {0x01, 0x71, 0x09, 0x05, 0x03}},
    {'8', {0x36, 0x49, 0x49, 0x49, 0x36}}, {'9', {0x06, 0x49, 0x49, 0x29, 0x1E}},
    {'A', {0x7E, 0x11, 0x11, 0x11, 0x7E}}, {'B', {0x7F, 0x49, 0x49, 0x49, 0x36}},
    {'C', {0x3E, 0x41, 0x41, 0x41, 0x22}}, {'D', {0x7F, 0x41, 0x41, 0x22, 0x1C}},
    {'E', {0x7F, 0x49, 0x49, 0x49, 0x41}}, {'F', {0x7F, 0x09, 0x09, 0x09, 0x01}},
    {'G', {0x3E, 0x41, 0x49, 0x49, 0x7A}}, {'H', {0x7F, 0x08, 0x08, 0x08, 0x7F}},
    {'I', {0x00, 0x41, 0x7F, 0x41, 0x00}}, {'J', {0x20, 0x40, 0x41, 0x3F, 0x01}},
    {'K', {0x7F, 0x08, 0x14, 0x22, 0x41}}, {'L', {0x7F, 0x40, 0x40, 0x40, 0x40}},
    {'M', {0x7F, 0x02, 0x0C, 0x02, 0x7F}}, {'N', {0x7F, 0x04, 0x08, 0x10, 0x7F}},
    {'O', {0x3E, 0x41, 0x41, 0x41, 0x3E}}, {'P', {0x7F, 0x09, 0x09, 0x09, 0x06}},
    {'Q', {0x3E, 0x41, 0x51, 0x21, 0x5E}}, {'R', {0x7F, 0x09, 0x19, 0x29, 0x46}},
    {'S', {0x46, 0x49, 0x49, 0x49, 0x31}}, {'T', {0x01, 0x01, 0x7F, 0x01, 0x01}},
    {'U', {0x3F, 0x40, 0x40, 0x40, 0x3F}}, {'V', {0x1F, 0x20, 0x40, 0x20, 0x1F}},
    {'W', {0x3F, 0x40, 0x38, 0x40, 0x3F}}, {'X', {0x63, 0x14, 0x08, 0x14, 0x63}},
    {'Y', {0x07, 0x08, 0x70, 0x08, 0x07}}, {'Z', {0x61, 0x51, 0x49, 0x45, 0x43}},
};

typedef struct {
    uint8_t *rgb;
    int H, W;
} canvas;

static const uint8_t *glyph_of(char c) {
    if (c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
    for (size_t i = 0; i < sizeof font / sizeof font[0]; i++)
        if (font[i].ch == c) return font[i].col;
    return font[0].col; /* unknown characters draw as a space */
}

static void put_pixel(canvas *cv, int y, int x, const uint8_t color[3]) {
    if (y < 0 || y >= cv->H || x < 0 || x >= cv->W) return;
    memcpy(cv->rgb + ((size_t)y * cv->W + x) * 3, color, 3);
}

/* Blends color over the pixel with opacity alpha in [0, 1]. */
static void blend_pixel(canvas *cv, int y, int x, const uint8_t color[3], float alpha) {
    if (y < 0 || y >= cv->H || x < 0 || x >= cv->W) return;
    uint8_t *p = cv->rgb + ((size_t)y * cv->W + x) * 3;
    for (int c = 0; c < 3; c++) p[c] = (uint8_t)lrintf((1.0f - alpha) * (float)p[c] + alpha * (float)color[c]);
}

static void fill_rect(canvas *cv, int y0, int x0, int h, int w, const uint8_t color[3]) {
    for (int y = y0; y < y0 + h; y++)
        for (int x = x0; x < x0 + w; x++) put_pixel(cv, y, x, color);
}

static int text_width(const char *s, int scale) { return (int)strlen(s) * 6 * scale - scale; }

/* Draws s with its top-left corner at (y, x); each font pixel is scale x scale. */
static void draw_text(canvas *cv, int y, int x, const char *s, int scale, const uint8_t color[3]) {
    for (; *s; s++, x += 6 * scale) {
        const uint8_t *g = glyph_of(*s);
        for (int c = 0; c < 5; c++)
            for (int r = 0; r < 7; r++)
                if (g[c] >> r & 1) fill_rect(cv, y + r * scale, x + c * scale, scale, scale, color);
    }
}

void ncsn_toy_plot_png(const char *path, const ncsn_toy_panel *panels, int n_panels, float lo, float hi,
                       float tick, int panel_px) {
    NCSN_CHECKF(n_panels >= 1 && panel_px >= 32, "toy plot: %d panels of %d px", n_panels, panel_px);
    NCSN_CHECKF(hi > lo && tick > 0.0f, "toy plot: bad box [%g, %g] or tick %g", (double)lo, (double)hi,
                (double)tick);
    const int margin = 36, title_h = 30, gap = 24;
    const uint8_t white[3] = {255, 255, 255}, frame[3] = {60, 60, 60}, axis[3] = {190, 190, 190},
                  ink[3] = {20, 20, 20}, dot[3] = {31, 119, 180};
    canvas cv;
    cv.W = margin + n_panels * panel_px + (n_panels - 1) * gap + margin / 2;
    cv.H = title_h + panel_px + margin;
    cv.rgb = ncsn_xmalloc((size_t)cv.H * cv.W * 3);
    memset(cv.rgb, 255, (size_t)cv.H * cv.W * 3);

    const float px_per_unit = (float)(panel_px - 1) / (hi - lo);
    /* A dot's opacity: dense enough that a mode of a few thousand points saturates, light
     * enough that a few hundred stray points still show as a haze. */
    const float alpha = 0.18f;
    for (int p = 0; p < n_panels; p++) {
        const int x0 = margin + p * (panel_px + gap), y0 = title_h;
        fill_rect(&cv, y0, x0, panel_px, panel_px, white);
        /* grid at every tick, axes through 0 drawn darker */
        long k_first = (long)ceilf(lo / tick), k_last = (long)floorf(hi / tick);
        for (long k = k_first; k <= k_last; k++) {
            float v = (float)k * tick;
            int gx = x0 + (int)lrintf((v - lo) * px_per_unit);
            int gy = y0 + (panel_px - 1) - (int)lrintf((v - lo) * px_per_unit);
            const uint8_t light[3] = {232, 232, 232};
            const uint8_t *c = k == 0 ? axis : light;
            for (int t = 0; t < panel_px; t++) {
                put_pixel(&cv, y0 + t, gx, c);
                put_pixel(&cv, gy, x0 + t, c);
            }
            char label[24];
            snprintf(label, sizeof label, "%g", (double)v);
            draw_text(&cv, y0 + panel_px + 5, gx - text_width(label, 1) / 2, label, 1, ink); /* x ticks */
            if (p == 0) draw_text(&cv, gy - 3, x0 - 6 - text_width(label, 1), label, 1, ink); /* y ticks */
        }
        /* points */
        const ncsn_toy_panel *pn = &panels[p];
        int outside = 0;
        for (int i = 0; i < pn->N; i++) {
            float u = pn->xy[2 * i], v = pn->xy[2 * i + 1];
            if (!(u >= lo && u <= hi && v >= lo && v <= hi)) {
                outside++;
                continue;
            }
            int cx = x0 + (int)lrintf((u - lo) * px_per_unit);
            int cy = y0 + (panel_px - 1) - (int)lrintf((v - lo) * px_per_unit);
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int inside = cx + dx >= x0 && cx + dx < x0 + panel_px && cy + dy >= y0 && cy + dy < y0 + panel_px;
                    if (inside) blend_pixel(&cv, cy + dy, cx + dx, dot, (dx == 0 && dy == 0) ? alpha : alpha * 0.5f);
                }
        }
        /* frame */
        for (int t = 0; t < panel_px; t++) {
            put_pixel(&cv, y0, x0 + t, frame);
            put_pixel(&cv, y0 + panel_px - 1, x0 + t, frame);
            put_pixel(&cv, y0 + t, x0, frame);
            put_pixel(&cv, y0 + t, x0 + panel_px - 1, frame);
        }
        if (pn->title) {
            int scale = text_width(pn->title, 2) <= panel_px ? 2 : 1;
            draw_text(&cv, (title_h - 7 * scale) / 2, x0 + (panel_px - text_width(pn->title, scale)) / 2, pn->title,
                      scale, ink);
        }
        if (outside) {
            char note[48];
            snprintf(note, sizeof note, "%d OUTSIDE", outside);
            draw_text(&cv, y0 + panel_px - 12, x0 + panel_px - 6 - text_width(note, 1), note, 1, ink);
        }
    }
    ncsn_png_write(path, cv.rgb, cv.H, cv.W, 3);
    free(cv.rgb);
}
