/* SentencePiece-style and byte-level BPE tokenizers, following llama.cpp's behaviour:
 *   1. the input is cut at the texts of special tokens (longest first), which become single ids;
 *   2. SPM: each remaining fragment gets "▁" for every space (and one in front when it starts the
 *      text or follows a special token), then adjacent pieces are merged, best vocabulary score first;
 *      characters no token covers fall back to <0xNN> byte tokens;
 *   3. BPE: each fragment is split into words by the pre-tokenizer's regex (hand-written scanners
 *      below), each word's bytes become GPT-2 alphabet symbols and are merged by merge rank.
 * Every buffer the encoder needs is sized from the input and freed before it returns. */
#include "tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"

/* A BPE merge: (left, right) -> result, lower rank first. left < 0 marks an empty slot. */
typedef struct {
    int32_t left, right, rank, result;
} merge_rule;

struct tokenizer {
    enum tok_kind kind;
    enum tok_pre pre;
    uint32_t n_tokens;
    char *texts;              /* all token texts back to back */
    uint32_t *text_off;       /* n_tokens + 1 */
    char *pieces;             /* decoded bytes of every token (the texts of control tokens) */
    uint32_t *piece_off;      /* n_tokens + 1 */
    float *scores;
    uint8_t *types;
    uint8_t *eog;
    int32_t *index;           /* text -> id, open addressing, -1 empty */
    uint32_t index_mask;
    merge_rule *merges;       /* (left, right) -> rule, open addressing */
    uint32_t merge_mask;
    int32_t *specials;        /* ids whose text is matched in the input, longest text first */
    uint32_t n_specials;
    int32_t byte_token[256];  /* the token of each byte: <0xNN> (SPM) or its GPT-2 symbol (BPE) */
    int32_t bos, eos, unk;
    int add_bos, add_eos, add_space_prefix;
    int ignore_merges;        /* a word that is a whole token is not split (llama3) */
    uint8_t alone[128];       /* SPM: ASCII characters no token of two or more characters contains */
};

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* ---- token text -> id ---- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}
#define FNV_SEED 0xcbf29ce484222325ull

static size_t text_len(const tokenizer *t, int32_t id) { return t->text_off[id + 1] - t->text_off[id]; }
static const char *text_of(const tokenizer *t, int32_t id) { return t->texts + t->text_off[id]; }

/* Looks up the concatenation a + b (either may be empty). */
static int32_t lookup2(const tokenizer *t, const char *a, size_t na, const char *b, size_t nb) {
    uint64_t h = fnv1a(fnv1a(FNV_SEED, a, na), b, nb);
    for (uint32_t i = (uint32_t)h & t->index_mask;; i = (i + 1) & t->index_mask) {
        int32_t id = t->index[i];
        if (id < 0) return -1;
        const char *s = text_of(t, id);
        if (text_len(t, id) == na + nb && memcmp(s, a, na) == 0 && memcmp(s + na, b, nb) == 0) return id;
    }
}

static int32_t lookup(const tokenizer *t, const char *s, size_t n) { return lookup2(t, s, n, "", 0); }

/* Later duplicates win, as in llama.cpp's token_to_id map. */
static void index_insert(tokenizer *t, int32_t id) {
    const char *s = text_of(t, id);
    size_t n = text_len(t, id);
    for (uint32_t i = (uint32_t)fnv1a(FNV_SEED, s, n) & t->index_mask;; i = (i + 1) & t->index_mask) {
        int32_t other = t->index[i];
        if (other < 0 || (text_len(t, other) == n && memcmp(text_of(t, other), s, n) == 0)) {
            t->index[i] = id;
            return;
        }
    }
}

/* ---- BPE merge rules ---- */

static uint32_t pair_hash(int32_t left, int32_t right) {
    uint64_t k = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(k >> 32);
}

static const merge_rule *merge_find(const tokenizer *t, int32_t left, int32_t right) {
    for (uint32_t i = pair_hash(left, right) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_rule *m = &t->merges[i];
        if (m->left < 0) return NULL;
        if (m->left == left && m->right == right) return m;
    }
}

/* The first rule for a pair wins, as in llama.cpp. Rules whose parts or result are not tokens
 * can never apply to token ids and are left out. */
static void merge_insert(tokenizer *t, const tok_str *rule, int32_t rank) {
    const char *s = rule->ptr;
    const char *space = rule->len > 1 ? memchr(s + 1, ' ', rule->len - 1) : NULL;
    if (!space) return;
    size_t nl = (size_t)(space - s), nr = rule->len - nl - 1;
    int32_t left = lookup(t, s, nl), right = lookup(t, space + 1, nr), result = lookup2(t, s, nl, space + 1, nr);
    if (left < 0 || right < 0 || result < 0) return;
    for (uint32_t i = pair_hash(left, right) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        merge_rule *m = &t->merges[i];
        if (m->left == left && m->right == right) return;
        if (m->left < 0) {
            *m = (merge_rule){left, right, rank, result};
            return;
        }
    }
}

/* ---- construction ---- */

/* Far above real vocabularies (~300k tokens), low enough that the hash tables stay below 1 GB. */
#define MAX_TOKENS (1u << 24)
#define MAX_MERGES (1u << 24)

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* Texts llama.cpp treats as end of generation (and as control tokens) in any vocabulary: end of turn
 * or text, and the fill-in-the-middle pad, repository and file separators. */
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<|fim_repo|>",
    "<|repo_name|>", "<fim-repo>", "<reponame>", "<|file_sep|>",
};

static int is_control_like(uint8_t type) {
    return type == TOK_TYPE_CONTROL || type == TOK_TYPE_UNKNOWN;
}

static int hex_digit(uint8_t c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Fills pieces: what each token prints as. */
static void build_pieces(tokenizer *t) {
    static const char SPACE_MARK[] = "\xe2\x96\x81"; /* U+2581 */
    uint32_t w = 0;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        const uint8_t *s = (const uint8_t *)text_of(t, (int32_t)id);
        size_t n = text_len(t, (int32_t)id);
        uint8_t *out = (uint8_t *)t->pieces + w;
        size_t m = 0;
        switch (t->types[id]) {
        case TOK_TYPE_NORMAL:
            for (size_t i = 0; i < n;) {
                uint32_t cp;
                size_t k = utf8_decode(s + i, n - i, &cp);
                if (k == 0) { /* not UTF-8: keep the byte */
                    out[m++] = s[i++];
                    continue;
                }
                if (t->kind == TOK_SPM && k == 3 && memcmp(s + i, SPACE_MARK, 3) == 0) {
                    out[m++] = ' ';
                } else if (t->kind == TOK_BPE && unicode_cp_to_byte(cp) >= 0) {
                    out[m++] = (uint8_t)unicode_cp_to_byte(cp);
                } else { /* no byte for it: keep the character */
                    memcpy(out + m, s + i, k);
                    m += k;
                }
                i += k;
            }
            break;
        case TOK_TYPE_BYTE: /* "<0xNN>" */
            if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0)
                out[m++] = (uint8_t)(hex_digit(s[3]) << 4 | hex_digit(s[4]));
            break;
        case TOK_TYPE_CONTROL: case TOK_TYPE_UNKNOWN: case TOK_TYPE_USER_DEFINED:
            memcpy(out, s, n);
            m = n;
            break;
        default: /* undefined and unused tokens print nothing, as in llama.cpp */
            break;
        }
        t->piece_off[id] = w;
        w += (uint32_t)m;
    }
    t->piece_off[t->n_tokens] = w;
}

static int cmp_special(const void *a, const void *b) {
    const int64_t *x = a, *y = b; /* (length << 32 | id) pairs, sorted descending length then id */
    int64_t lx = x[0] >> 32, ly = y[0] >> 32;
    if (lx != ly) return lx > ly ? -1 : 1;
    return (x[0] & 0xffffffff) < (y[0] & 0xffffffff) ? -1 : 1;
}

static int build_specials(tokenizer *t) {
    int64_t *keys = malloc(sizeof(int64_t) * t->n_tokens);
    if (!keys) return 0;
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_tokens; id++) {
        uint8_t ty = t->types[id];
        size_t len = text_len(t, (int32_t)id);
        const uint8_t *s = (const uint8_t *)text_of(t, (int32_t)id);
        /* a text that is empty or not UTF-8 could match inside a character: never match it */
        if ((is_control_like(ty) || ty == TOK_TYPE_USER_DEFINED) && len > 0 && utf8_validate(s, len) == len)
            keys[n++] = (int64_t)len << 32 | id;
    }
    qsort(keys, n, sizeof(int64_t), cmp_special);
    t->specials = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!t->specials) {
        free(keys);
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) t->specials[i] = (int32_t)(keys[i] & 0xffffffff);
    t->n_specials = n;
    free(keys);
    return 1;
}

static int check_id(const char *name, int32_t *id, uint32_t n_tokens, char *err, size_t err_len) {
    if (*id < 0) *id = -1;
    if (*id >= (int64_t)n_tokens) {
        set_err(err, err_len, "tokenizer: %s %d is outside the vocabulary of %u tokens", name, *id, n_tokens);
        return 0;
    }
    return 1;
}

tokenizer *tokenizer_new(const tok_vocab_desc *d, char *err, size_t err_len) {
    if (!d || !d->tokens || d->n_tokens == 0 || d->n_tokens > MAX_TOKENS || d->n_merges > MAX_MERGES) {
        set_err(err, err_len, "tokenizer: no vocabulary, or more than %u tokens or %u merges", MAX_TOKENS, MAX_MERGES);
        return NULL;
    }
    if (d->kind != TOK_SPM && d->kind != TOK_BPE) {
        set_err(err, err_len, "tokenizer: unknown tokenizer kind %d", (int)d->kind);
        return NULL;
    }
    if (d->kind == TOK_BPE && (d->pre < TOK_PRE_DEFAULT || d->pre > TOK_PRE_QWEN2)) {
        set_err(err, err_len, "tokenizer: BPE pre-tokenizer %d is not supported "
                              "(supported: default, gpt-2, llama-bpe, smollm, qwen2)", (int)d->pre);
        return NULL;
    }
    if (d->n_merges > 0 && !d->merges) {
        set_err(err, err_len, "tokenizer: %u merges announced but none given", d->n_merges);
        return NULL;
    }
    int32_t bos = d->bos_id, eos = d->eos_id, unk = d->unk_id; /* pad_id plays no part in tokenizing */
    if (!check_id("bos_id", &bos, d->n_tokens, err, err_len) || !check_id("eos_id", &eos, d->n_tokens, err, err_len) ||
        !check_id("unk_id", &unk, d->n_tokens, err, err_len))
        return NULL;
    if ((d->add_bos && bos < 0) || (d->add_eos && eos < 0)) {
        set_err(err, err_len, "tokenizer: the vocabulary asks to add %s but has no such token",
                d->add_bos && bos < 0 ? "BOS" : "EOS");
        return NULL;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < d->n_tokens; i++) {
        if (d->tokens[i].len > 0 && !d->tokens[i].ptr) {
            set_err(err, err_len, "tokenizer: token %u has no text", i);
            return NULL;
        }
        total += d->tokens[i].len;
    }
    for (uint32_t i = 0; i < d->n_merges; i++) {
        if (d->merges[i].len > 0 && !d->merges[i].ptr) {
            set_err(err, err_len, "tokenizer: merge %u has no text", i);
            return NULL;
        }
    }
    if (total >= (1u << 31)) {
        set_err(err, err_len, "tokenizer: token texts too large (%llu bytes)", (unsigned long long)total);
        return NULL;
    }

    tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    uint32_t n = d->n_tokens;
    t->kind = d->kind;
    t->pre = d->pre;
    t->n_tokens = n;
    t->bos = bos, t->eos = eos, t->unk = unk;
    t->add_bos = !!d->add_bos, t->add_eos = !!d->add_eos, t->add_space_prefix = !!d->add_space_prefix;
    t->ignore_merges = d->kind == TOK_BPE && d->pre == TOK_PRE_LLAMA_BPE;
    t->index_mask = pow2_at_least(2ull * n) - 1;
    t->texts = malloc(total ? total : 1);
    t->pieces = malloc(total ? total : 1);
    t->text_off = malloc(sizeof(uint32_t) * (n + 1));
    t->piece_off = malloc(sizeof(uint32_t) * (n + 1));
    t->scores = calloc(n, sizeof(float));
    t->types = malloc(n);
    t->eog = calloc(n, 1);
    t->index = malloc(sizeof(int32_t) * (t->index_mask + 1ull));
    if (!t->texts || !t->pieces || !t->text_off || !t->piece_off || !t->scores || !t->types || !t->eog || !t->index)
        goto oom;

    uint32_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        t->text_off[i] = off;
        if (d->tokens[i].len) memcpy(t->texts + off, d->tokens[i].ptr, d->tokens[i].len);
        off += (uint32_t)d->tokens[i].len;
        int32_t ty = d->types ? d->types[i] : TOK_TYPE_NORMAL;
        t->types[i] = (uint8_t)(ty >= TOK_TYPE_UNDEFINED && ty <= TOK_TYPE_BYTE ? ty : TOK_TYPE_UNDEFINED);
        if (d->scores) t->scores[i] = d->scores[i];
    }
    t->text_off[n] = off;
    memset(t->index, 0xff, sizeof(int32_t) * (t->index_mask + 1ull));
    for (uint32_t i = 0; i < n; i++)
        if (text_len(t, (int32_t)i) > 0) index_insert(t, (int32_t)i);

    if (eos >= 0) t->eog[eos] = 1;
    for (size_t k = 0; k < sizeof EOG_TEXTS / sizeof EOG_TEXTS[0]; k++) {
        int32_t id = lookup(t, EOG_TEXTS[k], strlen(EOG_TEXTS[k]));
        if (id >= 0) {
            t->eog[id] = 1;
            if (!is_control_like(t->types[id])) t->types[id] = TOK_TYPE_CONTROL;
        }
    }

    for (int b = 0; b < 256; b++) {
        if (t->kind == TOK_SPM) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            int32_t id = lookup(t, hex, 6);
            char c = (char)b;
            t->byte_token[b] = id >= 0 ? id : lookup(t, &c, 1);
        } else {
            uint8_t sym[4];
            size_t k = utf8_encode(unicode_byte_to_cp((uint8_t)b), sym);
            t->byte_token[b] = lookup(t, (const char *)sym, k);
        }
    }

    if (t->kind == TOK_BPE) {
        t->merge_mask = pow2_at_least(2ull * d->n_merges) - 1;
        t->merges = malloc(sizeof(merge_rule) * (t->merge_mask + 1ull));
        if (!t->merges) goto oom;
        memset(t->merges, 0xff, sizeof(merge_rule) * (t->merge_mask + 1ull));
        for (uint32_t i = 0; i < d->n_merges; i++) merge_insert(t, &d->merges[i], (int32_t)i);
    }
    if (t->kind == TOK_SPM) {
        memset(t->alone, 1, sizeof t->alone);
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *s = (const uint8_t *)text_of(t, (int32_t)i);
            size_t len = text_len(t, (int32_t)i);
            for (size_t k = 0; k < len && len > 1; k++)
                if (s[k] < 128) t->alone[s[k]] = 0;
        }
    }
    if (!build_specials(t)) goto oom;
    build_pieces(t);
    return t;

oom:
    tokenizer_free(t);
    set_err(err, err_len, "tokenizer: out of memory");
    return NULL;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    free(t->texts);
    free(t->text_off);
    free(t->pieces);
    free(t->piece_off);
    free(t->scores);
    free(t->types);
    free(t->eog);
    free(t->index);
    free(t->merges);
    free(t->specials);
    free(t);
}

/* ---- scratch memory of one encode call ---- */

/* Output ids: counts past max so the caller learns how many are needed. */
typedef struct {
    int32_t *out;
    int32_t max, n;
} emitter;

static void emit(emitter *e, int32_t id) {
    if (e->n < e->max) e->out[e->n] = id;
    e->n++;
}

/* A piece of text in the merge loops: a doubly linked list over the input. */
typedef struct {
    int32_t prev, next;
    uint32_t start, len; /* bytes; len 0 once merged into its left neighbour */
    int32_t id;          /* BPE: the token of the piece */
} symbol;

/* A code point of a BPE fragment, with its class for the pre-tokenizer scanners. */
typedef struct {
    uint32_t cp, off; /* off: byte offset in the fragment */
    uint8_t cls;
} codepoint;

/* A candidate merge of two adjacent symbols. key orders the heap: smaller first; its low 32 bits are
 * the left index, so equal priorities go left to right as in llama.cpp. */
typedef struct {
    uint64_t key;
    int32_t left, right;
    int32_t check_a, check_b; /* SPM: merged length; BPE: the two token ids, to spot stale entries */
} candidate;

typedef struct {
    symbol *sym;
    size_t sym_cap;
    candidate *heap;
    size_t heap_n, heap_cap;
    uint8_t *bytes;       /* SPM: the escaped fragment; BPE: a word in GPT-2 symbols */
    size_t bytes_cap;
    codepoint *cps;       /* BPE: the fragment's code points, one more for the end offset */
    size_t cps_cap;
    int oom;
} scratch;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q) return 0;
    *p = q;
    *cap = n;
    return 1;
}

static void scratch_free(scratch *s) {
    free(s->sym);
    free(s->heap);
    free(s->bytes);
    free(s->cps);
}

static void heap_push(scratch *s, candidate c) {
    if (s->heap_n == s->heap_cap && !grow((void **)&s->heap, &s->heap_cap, s->heap_n + 1, sizeof(candidate))) {
        s->oom = 1;
        return;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (s->heap[parent].key <= c.key) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = c;
}

static candidate heap_pop(scratch *s) {
    candidate top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && s->heap[c + 1].key < s->heap[c].key) c++;
        if (last.key <= s->heap[c].key) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

/* Unlinks right from the list after merging it into left. */
static void symbol_absorb(symbol *sym, int32_t left, int32_t right) {
    sym[left].len += sym[right].len;
    sym[right].len = 0;
    sym[left].next = sym[right].next;
    if (sym[right].next >= 0) sym[sym[right].next].prev = left;
}

/* ---- SentencePiece ---- */

/* Orders scores as unsigned integers, best (highest) first. */
static uint32_t score_rank(float score) {
    uint32_t u;
    if (score == 0) score = 0; /* -0 ties with +0, as in a float comparison */
    memcpy(&u, &score, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;
}

static void spm_try_pair(const tokenizer *t, scratch *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const symbol *a = &s->sym[left], *b = &s->sym[right];
    int32_t id = lookup(t, (const char *)s->bytes + a->start, a->len + b->len);
    if (id < 0) return;
    candidate c = {(uint64_t)score_rank(t->scores[id]) << 32 | (uint32_t)left, left, right,
                   (int32_t)(a->len + b->len), 0};
    heap_push(s, c);
}

static void spm_emit_bytes(const tokenizer *t, const uint8_t *p, size_t n, emitter *em) {
    for (size_t i = 0; i < n; i++) {
        if (t->byte_token[p[i]] < 0) { /* no byte fallback in this vocabulary */
            if (t->unk >= 0) emit(em, t->unk);
            return;
        }
    }
    for (size_t i = 0; i < n; i++) emit(em, t->byte_token[p[i]]);
}

/* Merges symbols [first, end) of the list, best score first, leftmost first among equals. */
static void spm_merge(const tokenizer *t, scratch *s, int32_t first, int32_t end) {
    s->heap_n = 0;
    for (int32_t i = first + 1; i < end; i++) spm_try_pair(t, s, i - 1, i);
    while (s->heap_n > 0 && !s->oom) {
        candidate c = heap_pop(s);
        symbol *a = &s->sym[c.left], *r = &s->sym[c.right];
        if (a->len == 0 || r->len == 0 || (int32_t)(a->len + r->len) != c.check_a) continue;
        symbol_absorb(s->sym, c.left, c.right);
        spm_try_pair(t, s, s->sym[c.left].prev, c.left);
        spm_try_pair(t, s, c.left, s->sym[c.left].next);
    }
}

static void spm_fragment(const tokenizer *t, scratch *s, const uint8_t *text, size_t len, int prefix_space,
                         emitter *em) {
    size_t cap = 3 * (len + 1);
    if (!grow((void **)&s->bytes, &s->bytes_cap, cap, 1) || !grow((void **)&s->sym, &s->sym_cap, len + 1, sizeof(symbol))) {
        s->oom = 1;
        return;
    }
    uint8_t *b = s->bytes;
    size_t n = 0;
    if (prefix_space) memcpy(b, "\xe2\x96\x81", 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(b + n, "\xe2\x96\x81", 3), n += 3;
        else b[n++] = text[i];
    }
    int32_t n_sym = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode(b + i, n - i, &cp);
        if (k == 0) k = 1; /* cannot happen: the input was validated */
        s->sym[n_sym] = (symbol){n_sym - 1, n_sym + 1, (uint32_t)i, (uint32_t)k, -1};
        n_sym++;
        i += k;
    }
    if (n_sym == 0) return;
    s->sym[n_sym - 1].next = -1;

    /* No merge can cross a character that only single-character tokens contain (a newline, usually):
     * merging the runs between such characters one after the other gives the same result as one
     * pass over the fragment, with a small heap. */
    int32_t run = 0;
    for (int32_t i = 0; i < n_sym; i++) {
        uint8_t c = b[s->sym[i].start];
        if (s->sym[i].len == 1 && c < 128 && t->alone[c]) {
            spm_merge(t, s, run, i);
            run = i + 1;
        }
    }
    spm_merge(t, s, run, n_sym);
    /* every merged symbol is a token; only single characters can lack one */
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const uint8_t *p = b + s->sym[i].start;
        int32_t id = lookup(t, (const char *)p, s->sym[i].len);
        if (id >= 0) emit(em, id);
        else spm_emit_bytes(t, p, s->sym[i].len, em);
    }
}

/* ---- byte-level BPE ---- */

static void bpe_try_pair(const tokenizer *t, scratch *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    int32_t a = s->sym[left].id, b = s->sym[right].id;
    if (a < 0 || b < 0) return;
    const merge_rule *m = merge_find(t, a, b);
    if (!m) return;
    heap_push(s, (candidate){(uint64_t)(uint32_t)m->rank << 32 | (uint32_t)left, left, right, a, b});
}

static void bpe_word(const tokenizer *t, scratch *s, const uint8_t *w, size_t n, emitter *em) {
    if (n == 0) return;
    if (t->ignore_merges) {
        if (!grow((void **)&s->bytes, &s->bytes_cap, 2 * n, 1)) {
            s->oom = 1;
            return;
        }
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += utf8_encode(unicode_byte_to_cp(w[i]), s->bytes + m);
        int32_t id = lookup(t, (const char *)s->bytes, m);
        if (id >= 0) {
            emit(em, id);
            return;
        }
    }
    if (!grow((void **)&s->sym, &s->sym_cap, n, sizeof(symbol))) {
        s->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++)
        s->sym[i] = (symbol){(int32_t)i - 1, (int32_t)i + 1, (uint32_t)i, 1, t->byte_token[w[i]]};
    s->sym[n - 1].next = -1;
    s->heap_n = 0;
    for (size_t i = 1; i < n; i++) bpe_try_pair(t, s, (int32_t)i - 1, (int32_t)i);
    while (s->heap_n > 0 && !s->oom) {
        candidate c = heap_pop(s);
        symbol *a = &s->sym[c.left], *r = &s->sym[c.right];
        if (a->len == 0 || r->len == 0 || a->next != c.right || a->id != c.check_a || r->id != c.check_b) continue;
        symbol_absorb(s->sym, c.left, c.right);
        s->sym[c.left].id = merge_find(t, c.check_a, c.check_b)->result;
        bpe_try_pair(t, s, s->sym[c.left].prev, c.left);
        bpe_try_pair(t, s, c.left, s->sym[c.left].next);
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next)
        if (s->sym[i].id >= 0) emit(em, s->sym[i].id); /* a byte without a token is dropped, as in llama.cpp */
}

/* ---- pre-tokenizers: the regexes of llama.cpp's unicode.cpp as scanners over code point classes ---- */

enum {
    C_LETTER = 1, C_NUMBER = 2, C_SPACE = 4,
    C_ANY = 8,    /* every code point inside the range */
    C_PUNCT = 16, /* \p{P} and $+<=>^~| (the default pre-tokenizer's first regex) */
};
#define NO_CP 0xffffffffu

/* One piece of a fragment being cut into words; outside [lo, hi) nothing matches. */
typedef struct {
    const tokenizer *t;
    scratch *s;
    const uint8_t *text;
    emitter *em;
    size_t lo, hi, done; /* code point indices; done: end of the last word */
} splitter;

static uint8_t cls(const splitter *p, size_t i) { return i >= p->lo && i < p->hi ? p->s->cps[i].cls : 0; }
static uint32_t cp_at(const splitter *p, size_t i) { return i >= p->lo && i < p->hi ? p->s->cps[i].cp : NO_CP; }

static void tokenize_span(splitter *p, size_t from, size_t to) {
    if (to > from) {
        uint32_t a = p->s->cps[from].off, b = p->s->cps[to].off;
        bpe_word(p->t, p->s, p->text + a, b - a, p->em);
    }
}

static int is_ascii_digit(const splitter *p, size_t i) { return p->s->cps[i].cp - '0' < 10; }

/* The default pre-tokenizer's last regexes on a word: \p{N}+ runs apart, and in them [0-9]{3} apart. */
static void split_numbers(splitter *p, size_t from, size_t to) {
    size_t i = from, gap = from;
    while (i < to) {
        if (!(p->s->cps[i].cls & C_NUMBER)) {
            i++;
            continue;
        }
        size_t end = i;
        while (end < to && (p->s->cps[end].cls & C_NUMBER)) end++;
        tokenize_span(p, gap, i);
        size_t rest = i;
        for (size_t j = i; j < end;) {
            if (j + 3 <= end && is_ascii_digit(p, j) && is_ascii_digit(p, j + 1) && is_ascii_digit(p, j + 2)) {
                tokenize_span(p, rest, j);
                tokenize_span(p, j, j + 3);
                rest = j += 3;
            } else {
                j++;
            }
        }
        tokenize_span(p, rest, end);
        i = gap = end;
    }
    tokenize_span(p, gap, to);
}

/* Ends the current word at code point index end and tokenizes it. */
static void cut(splitter *p, size_t end) {
    if (p->t->pre == TOK_PRE_DEFAULT) split_numbers(p, p->done, end);
    else tokenize_span(p, p->done, end);
    p->done = end;
}

/* Advances over code points whose class has a bit of `want` and none of `reject`. */
static size_t skip(const splitter *p, size_t i, uint8_t want, uint8_t reject) {
    while ((cls(p, i) & want) && !(cls(p, i) & reject)) i++;
    return i;
}

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's 't 're 've 'm 'll 'd at i: returns the length (0 if none). */
static size_t contraction(const splitter *p, size_t i, int any_case) {
    if (cp_at(p, i) != '\'' || i + 1 >= p->hi) return 0;
    uint32_t a = cp_at(p, i + 1), b = i + 2 < p->hi ? cp_at(p, i + 2) : NO_CP;
    if (any_case) a = ascii_lower(a), b = ascii_lower(b);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at i (after the other alternatives failed): the end of the match. */
static size_t trailing_space(const splitter *p, size_t i) {
    size_t n = skip(p, i, C_SPACE, 0) - i;
    if (n > 1 && i + n < p->hi) return i + n - 1; /* leave the last space to the next word */
    return i + (n > 0 ? n : 1);                   /* n == 0: a character no alternative matches */
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(splitter *p) {
    size_t i = p->lo;
    while (i < p->hi) {
        uint32_t c = cp_at(p, i);
        size_t n = contraction(p, i, 0);
        if (n) {
            cut(p, i += n);
            continue;
        }
        size_t j = i + (c == ' ');
        uint8_t k = cls(p, j);
        if (k & C_LETTER) i = skip(p, j, C_LETTER, 0);
        else if (k & C_NUMBER) i = skip(p, j, C_NUMBER, 0);
        else if ((k & C_ANY) && !(k & C_SPACE)) i = skip(p, j, C_ANY, C_LETTER | C_NUMBER | C_SPACE);
        else i = trailing_space(p, i);
        cut(p, i);
    }
}

/* llama3 (max_digits 3) and qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static void split_llama3(splitter *p, size_t max_digits) {
    size_t i = p->lo;
    while (i < p->hi) {
        uint32_t c = cp_at(p, i);
        uint8_t k = cls(p, i);
        size_t n = contraction(p, i, 1);
        if (n) {
            cut(p, i += n);
            continue;
        }
        if (c != '\r' && c != '\n' && !(k & C_NUMBER) && ((k & C_LETTER) || (cls(p, i + 1) & C_LETTER))) {
            cut(p, skip(p, i + 1, C_LETTER, 0));
            i = p->done;
            continue;
        }
        if (k & C_NUMBER) {
            size_t end = skip(p, i, C_NUMBER, 0);
            while (i < end) cut(p, i = (end - i > max_digits ? i + max_digits : end));
            continue;
        }
        size_t j = i + (c == ' ');
        if (!(cls(p, j) & (C_LETTER | C_NUMBER | C_SPACE))) { /* c itself is in range, so this matches */
            j = skip(p, j, C_ANY, C_LETTER | C_NUMBER | C_SPACE);
            while (cp_at(p, j) == '\r' || cp_at(p, j) == '\n') j++;
            cut(p, i = j);
            continue;
        }
        size_t end = skip(p, i, C_SPACE, 0), last_newline = 0;
        for (size_t q = i; q < end; q++)
            if (p->s->cps[q].cp == '\r' || p->s->cps[q].cp == '\n') last_newline = q + 1;
        cut(p, i = last_newline ? last_newline : trailing_space(p, i));
    }
}

static void split_piece(splitter *p, size_t lo, size_t hi) {
    p->lo = lo, p->hi = hi, p->done = lo;
    switch (p->t->pre) {
    case TOK_PRE_LLAMA_BPE: split_llama3(p, 3); break;
    case TOK_PRE_QWEN2: split_llama3(p, 1); break;
    default: split_gpt2(p); break;
    }
}

static int is_math_ascii(uint32_t cp) {
    return cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' || cp == '^' || cp == '~' || cp == '|';
}

static void bpe_fragment(const tokenizer *t, scratch *s, const uint8_t *text, size_t len, emitter *em) {
    if (!grow((void **)&s->cps, &s->cps_cap, len + 1, sizeof(codepoint))) {
        s->oom = 1;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint32_t cp;
        size_t k = utf8_decode(text + i, len - i, &cp);
        if (k == 0) cp = 0xfffd, k = 1; /* cannot happen: the input was validated */
        enum ucat cat = unicode_category(cp);
        uint8_t c = C_ANY | (cat == UCAT_LETTER ? C_LETTER : 0) | (cat == UCAT_NUMBER ? C_NUMBER : 0) |
                    (unicode_is_space(cp) ? C_SPACE : 0) | (cat == UCAT_PUNCTUATION || is_math_ascii(cp) ? C_PUNCT : 0);
        s->cps[n] = (codepoint){cp, (uint32_t)i, c};
        i += k;
    }
    s->cps[n] = (codepoint){NO_CP, (uint32_t)len, 0};
    splitter p = {t, s, text, em, 0, 0, 0};
    if (t->pre == TOK_PRE_SMOLLM || t->pre == TOK_PRE_DEFAULT) {
        /* a first regex isolates single numbers (smollm: \p{N}) or punctuation runs (default) */
        uint8_t first = t->pre == TOK_PRE_SMOLLM ? C_NUMBER : C_PUNCT;
        size_t start = 0;
        for (size_t i = 0; i < n;) {
            if (!(s->cps[i].cls & first)) {
                i++;
                continue;
            }
            size_t end = i + 1;
            if (first == C_PUNCT)
                while (end < n && (s->cps[end].cls & C_PUNCT)) end++;
            if (i > start) split_piece(&p, start, i);
            split_piece(&p, i, end);
            i = start = end;
        }
        if (start < n) split_piece(&p, start, n);
    } else {
        split_piece(&p, 0, n);
    }
}

/* ---- special tokens ---- */

typedef struct {
    size_t off, len;
    int32_t id; /* >= 0: a special token; -1: text */
} fragment;

typedef struct {
    fragment *v;
    size_t n, cap;
} fragments;

static int frag_push(fragments *f, size_t off, size_t len, int32_t id) {
    if (!grow((void **)&f->v, &f->cap, f->n + 1, sizeof(fragment))) return 0;
    f->v[f->n++] = (fragment){off, len, id};
    return 1;
}

static const uint8_t *find(const uint8_t *hay, size_t n, const uint8_t *needle, size_t m) {
    while (n >= m) {
        const uint8_t *p = memchr(hay, needle[0], n - m + 1);
        if (!p) return NULL;
        if (memcmp(p, needle, m) == 0) return p;
        n -= (size_t)(p + 1 - hay);
        hay = p + 1;
    }
    return NULL;
}

/* Cuts the text at special token texts, one token after the other, longest first (as llama.cpp's
 * tokenizer_st_partition). Returns 0 when out of memory. */
static int partition(const tokenizer *t, const uint8_t *text, size_t len, int parse_special, fragments *cur) {
    fragments next = {0};
    if (!frag_push(cur, 0, len, -1)) return 0;
    for (uint32_t k = 0; k < t->n_specials; k++) {
        int32_t id = t->specials[k];
        if (!parse_special && t->types[id] != TOK_TYPE_USER_DEFINED) continue;
        const uint8_t *word = (const uint8_t *)text_of(t, id);
        size_t wn = text_len(t, id);
        next.n = 0;
        for (size_t i = 0; i < cur->n; i++) {
            fragment f = cur->v[i];
            const uint8_t *p = text + f.off, *end = p + f.len, *hit;
            if (f.id >= 0 || !(hit = find(p, f.len, word, wn))) {
                if (!frag_push(&next, f.off, f.len, f.id)) goto oom;
                continue;
            }
            for (; hit; hit = find(p, (size_t)(end - p), word, wn)) {
                if (hit > p && !frag_push(&next, (size_t)(p - text), (size_t)(hit - p), -1)) goto oom;
                if (!frag_push(&next, (size_t)(hit - text), wn, id)) goto oom;
                p = hit + wn;
            }
            if (p < end && !frag_push(&next, (size_t)(p - text), (size_t)(end - p), -1)) goto oom;
        }
        fragments swap = *cur;
        *cur = next;
        next = swap;
    }
    free(next.v);
    return 1;
oom:
    free(next.v);
    return 0;
}

int32_t tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                         int32_t *out, int32_t max_tokens) {
    if (!t) return TOK_ERR_ID;
    if (len > TOK_MAX_INPUT) return TOK_ERR_TOO_LONG;
    if (len > 0 && !text) return TOK_ERR_UTF8;
    const uint8_t *s = (const uint8_t *)text;
    if (len > 0 && utf8_validate(s, len) != len) return TOK_ERR_UTF8;

    emitter em = {out, out && max_tokens > 0 ? max_tokens : 0, 0};
    fragments frags = {0};
    scratch sc = {0};
    if (add_special && t->add_bos) emit(&em, t->bos);
    if (len > 0 && !partition(t, s, len, parse_special, &frags)) sc.oom = 1;
    int prev_special = 1; /* SPM: the text's start counts as following a special token */
    for (size_t i = 0; i < frags.n && !sc.oom; i++) {
        const fragment *f = &frags.v[i];
        if (f->id >= 0) {
            emit(&em, f->id);
            prev_special = 1;
        } else if (t->kind == TOK_SPM) {
            spm_fragment(t, &sc, s + f->off, f->len, t->add_space_prefix && prev_special, &em);
            prev_special = 0;
        } else {
            bpe_fragment(t, &sc, s + f->off, f->len, &em);
        }
    }
    if (add_special && t->add_eos) emit(&em, t->eos);
    free(frags.v);
    scratch_free(&sc);
    if (sc.oom) return TOK_ERR_NOMEM;
    return em.n <= em.max ? em.n : -em.n;
}

/* ---- decoding and queries ---- */

int32_t tokenizer_piece(const tokenizer *t, int32_t id, char *buf, int32_t buf_len, int special) {
    if (!t || id < 0 || (uint32_t)id >= t->n_tokens) return TOK_ERR_ID;
    if (!special && is_control_like(t->types[id])) return 0;
    int32_t n = (int32_t)(t->piece_off[id + 1] - t->piece_off[id]);
    if (!buf || buf_len < n) return -n;
    memcpy(buf, t->pieces + t->piece_off[id], (size_t)n);
    return n;
}

size_t tokenizer_utf8_incomplete(const char *buf, size_t len) {
    return buf ? utf8_incomplete_tail((const uint8_t *)buf, len) : 0;
}

uint32_t tokenizer_n_tokens(const tokenizer *t) { return t->n_tokens; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
int tokenizer_adds_bos(const tokenizer *t) { return t->add_bos; }

int tokenizer_is_eog(const tokenizer *t, int32_t id) {
    return id >= 0 && (uint32_t)id < t->n_tokens && t->eog[id];
}

const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= t->n_tokens) return NULL;
    if (len) *len = text_len(t, id);
    return text_of(t, id);
}

int tokenizer_token_type(const tokenizer *t, int32_t id) {
    return id >= 0 && (uint32_t)id < t->n_tokens ? t->types[id] : -1;
}
