/* Test driver for the tokenizer under AddressSanitizer/UBSan (built by tests/tok_harness.py):
 *   tok_fuzz VOCAB INPUTS
 * VOCAB: a tok_vocab_desc dumped by tok_harness.dump_vocab; INPUTS: records (u32 length, u8 flags, bytes),
 * flags bit 0 add_special, bit 1 parse_special. Encodes every input with a large and with a too small
 * output buffer, renders every id with exact and too small buffers, and prints one line per input:
 * the token count or the error code. Any inconsistency exits with status 3; a tokenizer_new failure
 * prints its message and exits with status 2. Everything is freed, so LeakSanitizer sees no leak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

typedef struct {
    unsigned char *p, *end;
    int bad;
} reader;

static void take(reader *r, void *dst, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, r->p, n);
    r->p += n;
}

static uint32_t u32(reader *r) {
    uint32_t v;
    take(r, &v, 4);
    return v;
}

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Reads n strings (u32 length, bytes) pointing into the file. */
static tok_str *strings(reader *r, uint32_t n) {
    tok_str *v = calloc(n ? n : 1, sizeof *v);
    for (uint32_t i = 0; v && i < n && !r->bad; i++) {
        v[i].len = u32(r);
        if ((size_t)(r->end - r->p) < v[i].len) {
            r->bad = 1;
            break;
        }
        v[i].ptr = (const char *)r->p;
        r->p += v[i].len;
    }
    return v;
}

static int check_input(const tokenizer *t, const unsigned char *text, uint32_t len, unsigned flags) {
    int add = flags & 1, parse = (flags >> 1) & 1;
    int32_t cap = (int32_t)(3 * (size_t)len + 8);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    if (!ids) return 0;
    int32_t n = tokenizer_encode(t, (const char *)text, len, add, parse, ids, cap);
    printf("%d\n", n);
    int ok = 1;
    if (n >= 0) {
        int32_t small = n / 2;
        int32_t *part = malloc(sizeof(int32_t) * (size_t)(small + 1));
        int32_t m = part ? tokenizer_encode(t, (const char *)text, len, add, parse, part, small) : 0;
        if (part && (n > small ? m != -n : m != n)) ok = 0;
        if (part && memcmp(part, ids, sizeof(int32_t) * (size_t)(small < n ? small : n)) != 0) ok = 0;
        free(part);
        if (tokenizer_encode(t, (const char *)text, len, add, parse, NULL, 0) != (n ? -n : 0)) ok = 0;
        char piece[512];
        for (int32_t i = 0; i < n; i++) {
            int32_t k = tokenizer_piece(t, ids[i], piece, sizeof piece, 1);
            if (k == TOK_ERR_ID || (k < 0 && -k <= (int32_t)sizeof piece)) ok = 0;
            if (k > 0 && tokenizer_piece(t, ids[i], piece, k - 1, 1) != -k) ok = 0;
            if (k > 0 && tokenizer_utf8_incomplete(piece, (size_t)k) > 3) ok = 0;
        }
    }
    if (tokenizer_utf8_incomplete((const char *)text, len) > 3) ok = 0;
    free(ids);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s VOCAB INPUTS\n", argv[0]);
        return 1;
    }
    size_t vlen, ilen;
    unsigned char *vbuf = slurp(argv[1], &vlen), *ibuf = slurp(argv[2], &ilen);
    if (!vbuf || !ibuf) {
        fprintf(stderr, "cannot read the input files\n");
        free(vbuf);
        free(ibuf);
        return 1;
    }
    reader r = {vbuf, vbuf + vlen, 0};
    tok_vocab_desc d;
    memset(&d, 0, sizeof d);
    d.kind = (enum tok_kind)u32(&r);
    d.pre = (enum tok_pre)u32(&r);
    d.n_tokens = u32(&r);
    d.n_merges = u32(&r);
    d.bos_id = (int32_t)u32(&r), d.eos_id = (int32_t)u32(&r), d.unk_id = (int32_t)u32(&r), d.pad_id = (int32_t)u32(&r);
    d.add_bos = (int)u32(&r), d.add_eos = (int)u32(&r), d.add_space_prefix = (int)u32(&r);
    uint32_t has_scores = u32(&r), has_types = u32(&r);
    tok_str *tokens = strings(&r, d.n_tokens);
    float *scores = has_scores ? calloc(d.n_tokens ? d.n_tokens : 1, sizeof(float)) : NULL;
    int32_t *types = has_types ? calloc(d.n_tokens ? d.n_tokens : 1, sizeof(int32_t)) : NULL;
    if (scores) take(&r, scores, sizeof(float) * d.n_tokens);
    if (types) take(&r, types, sizeof(int32_t) * d.n_tokens);
    tok_str *merges = strings(&r, d.n_merges);
    if (r.bad || !tokens || !merges) {
        fprintf(stderr, "bad vocabulary file\n");
        return 1;
    }
    d.tokens = tokens, d.scores = scores, d.types = types, d.merges = merges;
    char err[256] = "";
    tokenizer *t = tokenizer_new(&d, err, sizeof err);
    free(tokens);
    free(scores);
    free(types);
    free(merges);
    free(vbuf); /* the tokenizer keeps copies of everything */
    int status = 0;
    if (t && (tokenizer_piece(t, -1, err, 1, 1) != TOK_ERR_ID ||
              tokenizer_piece(t, (int32_t)tokenizer_n_tokens(t), err, 1, 1) != TOK_ERR_ID)) {
        printf("bad ids accepted\n");
        status = 3;
    }
    if (!t) {
        printf("error: %s\n", err);
        status = 2;
    }
    reader in = {ibuf, ibuf + ilen, 0};
    while (t && in.p < in.end && !in.bad) {
        uint32_t len = u32(&in);
        unsigned char flags;
        take(&in, &flags, 1);
        if (in.bad || (size_t)(in.end - in.p) < len) break;
        /* a copy of exactly len bytes, so that ASan sees any read past the input */
        unsigned char *text = malloc(len ? len : 1);
        if (!text) break;
        memcpy(text, in.p, len);
        if (!check_input(t, text, len, flags)) {
            printf("inconsistent result\n");
            status = 3;
        }
        free(text);
        in.p += len;
    }
    tokenizer_free(t);
    free(ibuf);
    return status;
}
