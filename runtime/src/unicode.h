/* UTF-8 decoding and encoding, Unicode general categories, and the GPT-2 byte <-> code point map:
 * what the tokenizers need from Unicode, with no allocation. */
#ifndef PVQ_UNICODE_H
#define PVQ_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* General category, first letter only (\p{L}, \p{N}, ... in the pre-tokenizer regexes). */
enum ucat {
    UCAT_UNASSIGNED = 0, UCAT_NUMBER, UCAT_LETTER, UCAT_SEPARATOR, UCAT_MARK, UCAT_PUNCTUATION,
    UCAT_SYMBOL, UCAT_OTHER, /* Cc, Cf, Cs, Co */
};

/* Generated tables (unicode_tables.c): block number by code point >> 8, then 4 bits per code point. */
extern const uint8_t unicode_category_index[0x110000 >> 8];
extern const uint8_t unicode_category_blocks[][128];

static inline enum ucat unicode_category(uint32_t cp) {
    if (cp >= 0x110000) return UCAT_UNASSIGNED;
    uint8_t packed = unicode_category_blocks[unicode_category_index[cp >> 8]][(cp & 0xff) >> 1];
    return (enum ucat)((packed >> ((cp & 1) * 4)) & 0xf);
}

/* \s as the regex engines of the tokenizer libraries see it (Unicode White_Space). */
int unicode_is_space(uint32_t cp);

/* Decodes one strictly valid UTF-8 sequence at s (len > 0 bytes available): returns its length 1..4
 * and stores the code point, or returns 0 for an invalid sequence (overlong forms, surrogates,
 * code points above U+10FFFF, stray continuation bytes, truncation). Never reads past len. */
size_t utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);

/* Returns the offset of the first invalid byte, or len when all of s is valid UTF-8. */
size_t utf8_validate(const uint8_t *s, size_t len);

/* Writes cp (< 0x110000) as UTF-8 into out and returns the byte count (1..4). */
size_t utf8_encode(uint32_t cp, uint8_t out[4]);

/* How many bytes at the end of buf are the start of a UTF-8 sequence that is still incomplete (0..3):
 * a streaming printer holds them back until the next piece arrives. Bytes that can never become
 * valid count as complete (0), so they are not held forever. */
size_t utf8_incomplete_tail(const uint8_t *buf, size_t len);

/* Streaming repair with Unicode's "maximal subpart" rule (the same as Python's
 * bytes.decode("utf-8", errors="replace")): copies in to out with each maximal invalid subpart replaced by
 * U+FFFD (EF BF BD). A still-valid incomplete sequence at the end is left unread, unless final (then it is
 * one U+FFFD). out needs 3 * len bytes. Returns the bytes of in read (len minus 0..3 held back) and stores
 * the bytes written in *out_len. */
size_t utf8_repair(const uint8_t *in, size_t len, int final, uint8_t *out, size_t *out_len);

/* GPT-2's byte-level alphabet: each byte is shown as a printable code point (printable Latin-1 bytes
 * as themselves, the others as U+0100 + n in byte order). */
uint32_t unicode_byte_to_cp(uint8_t byte);
/* The inverse: the byte for a code point of that alphabet, or -1. */
int unicode_cp_to_byte(uint32_t cp);

#endif
