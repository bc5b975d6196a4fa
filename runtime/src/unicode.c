/* UTF-8 and the GPT-2 byte alphabet. The category tables are generated (unicode_tables.c). */
#include "unicode.h"

#include <string.h>

int unicode_is_space(uint32_t cp) {
    switch (cp) {
    case 0x09: case 0x0a: case 0x0b: case 0x0c: case 0x0d: case 0x20: case 0x85: case 0xa0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200a;
    }
}

/* The length of the sequence a lead byte starts, or 0 for bytes that start none (continuation bytes,
 * C0 and C1 which only start overlong forms, F5..FF beyond U+10FFFF). */
static size_t utf8_seq_len(uint8_t b0) {
    if (b0 < 0x80) return 1;
    if (b0 >= 0xc2 && b0 <= 0xdf) return 2;
    if (b0 >= 0xe0 && b0 <= 0xef) return 3;
    if (b0 >= 0xf0 && b0 <= 0xf4) return 4;
    return 0;
}

/* Whether the second byte is allowed after lead b0: excludes overlongs, surrogates, > U+10FFFF. */
static int utf8_second_ok(uint8_t b0, uint8_t b1) {
    if ((b1 & 0xc0) != 0x80) return 0;
    if (b0 == 0xe0) return b1 >= 0xa0;
    if (b0 == 0xed) return b1 <= 0x9f;
    if (b0 == 0xf0) return b1 >= 0x90;
    if (b0 == 0xf4) return b1 <= 0x8f;
    return 1;
}

size_t utf8_decode(const uint8_t *s, size_t len, uint32_t *cp) {
    size_t n = utf8_seq_len(s[0]);
    if (n == 0 || len < n) return 0;
    if (n == 1) {
        *cp = s[0];
        return 1;
    }
    if (!utf8_second_ok(s[0], s[1])) return 0;
    uint32_t c = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    *cp = c;
    return n;
}

size_t utf8_validate(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_decode(s + i, len - i, &cp);
        if (n == 0) return i;
        i += n;
    }
    return len;
}

size_t utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Whether s[0..len) can still be completed into a valid sequence (len below its length). */
static int utf8_is_valid_prefix(const uint8_t *s, size_t len) {
    size_t need = utf8_seq_len(s[0]);
    if (need <= len) return 0; /* complete, or never valid (need 0) */
    if (len >= 2 && !utf8_second_ok(s[0], s[1])) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return 1;
}

size_t utf8_incomplete_tail(const uint8_t *buf, size_t len) {
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        uint8_t b = buf[len - k];
        if ((b & 0xc0) == 0x80) continue; /* continuation byte: look further back for the lead */
        return utf8_is_valid_prefix(buf + len - k, k) ? k : 0;
    }
    return 0;
}

size_t utf8_repair(const uint8_t *in, size_t len, int final, uint8_t *out, size_t *out_len) {
    size_t i = 0, o = 0;
    while (i < len) {
        size_t need = utf8_seq_len(in[i]), k = 1;
        /* the longest prefix of a valid sequence starting at i: k bytes */
        while (k < need && i + k < len && (k == 1 ? utf8_second_ok(in[i], in[i + 1]) : (in[i + k] & 0xc0) == 0x80))
            k++;
        if (k == need) { /* a whole character (or ASCII) */
            memcpy(out + o, in + i, k);
            o += k;
        } else if (i + k == len && need && !final) { /* may still complete: wait for the next piece */
            break;
        } else { /* a maximal invalid subpart, or the unfinished end: one U+FFFD; in[i + k] starts the next */
            memcpy(out + o, "\xef\xbf\xbd", 3); /* U+FFFD */
            o += 3;
        }
        i += k;
    }
    *out_len = o;
    return i;
}

/* Printable Latin-1 bytes stand for themselves in GPT-2's alphabet. */
static int byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
}

uint32_t unicode_byte_to_cp(uint8_t byte) {
    if (byte_is_printable(byte)) return byte;
    /* the n-th non-printable byte (in byte order) maps to U+0100 + n */
    uint32_t n = byte <= 0x20 ? byte : byte <= 0xa0 ? 0x21 + (byte - 0x7f) : 0x21 + 0x22;
    return 0x100 + n;
}

int unicode_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t n = cp - 0x100;
    return n <= 0x20 ? (int)n : n < 0x21 + 0x22 ? (int)(0x7f + n - 0x21) : 0xad;
}
