/* engine._native: the matching rules of engine/matching.py in C, for the hot path.
 *
 * Why: in CPython the core costs about 3 us per order (decode, validate, match, event objects,
 * encode), twice the whole consume+produce loop. This module keeps the book in C and writes each
 * event's JSON bytes directly. engine/matching.py stays the definition of the rules: this file
 * must give byte-identical events and snapshot rows, and tests/unit/test_native.py checks that
 * against it on random streams. Decoding stays msgspec's (engine/messages.OrderMessage), so the
 * wire is read exactly as the Python engine reads it; JSON msgspec refuses as an order is sorted out
 * by engine.intake.salvage_order, as in the Python core. The order's fields come from one table,
 * engine/messages.ORDER_FIELDS, handed to Core at __init__ (see "the order's fields" below).
 *
 * Amounts are scaled integers: int64 for prices and sizes (the decimal parser bounds them),
 * 128-bit for level totals and a market buy's funds in 10^-(base+quote) units.
 * Book: per side a sorted array of levels (best last), each level a FIFO linked list, and an
 * open-addressing id -> order map under a keyed hash (id_hash: where an id sits in the table differs
 * between processes, nothing the core returns does). No clock, no I/O: a pure function of the calls made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <assert.h>

typedef __int128 i128;

#define MAX_TEXT_LEN 64
enum { BUY = 0, SELL = 1 };
enum { TIF_GTC = 0, TIF_IOC, TIF_GTX, TIF_FOK, TIF_OTHER };
enum { STP_NONE = 0, STP_CO, STP_CN, STP_CB, STP_OTHER };
static const char *TIF_NAMES[] = {"GTC", "IOC", "GTX", "FOK"};
static const char *SIDE_NAMES[] = {"buy", "sell"};

/* A str field as UTF-8 bytes; p == NULL stands for None (or absent where the default is None). */
typedef struct {
    const char *p;
    Py_ssize_t n;
} View;

/* ---- the order's fields ------------------------------------------------------------------------ */
/* The field table is engine/messages.ORDER_FIELDS (OrderMessage's declaration), handed to Core at
 * __init__: names, JSON kinds, which accept null, defaults and slot offsets all come from there, so
 * the fast reader and order_from_message know a field the rules do not read without a line here.
 * The rules read the fields below (ROLE_NAMES): a rule that reads a new field adds its role. */
enum { R_NONE = -1, R_ID = 0, R_USER, R_PRODUCT, R_PRICE, R_SIZE, R_FUNDS, R_TYPE, R_SIDE, R_TIF, R_STATUS, R_STP,
       N_ROLES };
static const char *ROLE_NAMES[N_ROLES] = {"id", "user_id", "product_id", "price", "size", "funds", "type",
                                          "side", "time_in_force", "status", "stp"};
#define MAX_FIELDS 32 /* fast_read marks the keys seen in a uint32_t */
#define MAX_FIELD_NAME 48

#define KEY_BYTES 3 /* known_key narrows the candidates by the first three bytes of a key */

/* One field, as the readers use it; its name (with the closing quote) is Core.field_names[i]. */
typedef struct {
    uint64_t word[2], mask[2]; /* name and quote as two zero-padded 8-byte words, and the bytes they fill */
    int32_t key_len;           /* the name's length with the quote */
    int8_t short_key;          /* key_len <= 16: known_key compares word/mask */
    int8_t is_int, nullable, role;
    Py_ssize_t slot;           /* offset of its value in an OrderMessage */
} FieldSpec;

enum { ID_NONE = 0, ID_OK, ID_BAD };

/* The fields the rules read, as C values: from the JSON fast path (views into the record's bytes)
 * or from a decoded OrderMessage (views into its str objects). */
typedef struct {
    int id_state;
    int64_t id;
    int user_ok;         /* user_id fits int64; else user_obj holds it (echoed by the reject) */
    int64_t user_id;
    PyObject *user_obj;
    PyObject *tif_obj;   /* set when the time_in_force text must be echoed through msgspec */
    View text[N_ROLES];  /* the str fields, by role (R_PRODUCT ..); unused for R_ID and R_USER */
} OrderIn;
#define O_PRODUCT(o) ((o)->text[R_PRODUCT])
#define O_PRICE(o) ((o)->text[R_PRICE])
#define O_SIZE(o) ((o)->text[R_SIZE])
#define O_FUNDS(o) ((o)->text[R_FUNDS])
#define O_TYPE(o) ((o)->text[R_TYPE])
#define O_SIDE(o) ((o)->text[R_SIDE])
#define O_TIF(o) ((o)->text[R_TIF])
#define O_STATUS(o) ((o)->text[R_STATUS])
#define O_STP(o) ((o)->text[R_STP])

/* ---- book ------------------------------------------------------------------------------------ */

typedef struct Level Level;
typedef struct Order {
    int64_t id, user_id, remaining;
    struct Order *prev, *next;
    Level *level;
    uint8_t side, tif;
} Order;

struct Level {
    int64_t price;
    i128 size;
    int64_t live;
    Order *head, *tail;
    int text_len;
    char text[48];
};

typedef struct {
    Level **lv; /* sorted by key ascending; best level last */
    Py_ssize_t n, cap;
    int is_bid;
} Side;

typedef struct {
    int64_t key; /* 0 = empty (ids are > 0) */
    Order *val;
} IdSlot;

typedef struct {
    IdSlot *slots; /* key and value side by side: a lookup touches one cache line, not two */
    size_t mask, count;
    uint64_t k0, k1; /* the secret key of id_hash (see id_key_init) */
} IdMap;

typedef struct {
    int64_t size, max_seen;
    uint8_t *bits;
    Py_ssize_t nbytes;
    uint64_t *dirty; /* bit k of dirty[w]: block 64w+k (bits[8b .. 8b+7], ids 64b..64b+63) may hold a 1 */
    Py_ssize_t ndirty;
} IdWindow;

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

typedef struct {
    PyObject_HEAD
    /* rules */
    PyObject *product_id;      /* str */
    PyObject *product_json;    /* bytes: the product id as msgspec encodes it */
    PyObject *product_utf8;    /* bytes: the product id as UTF-8, to compare input fields with */
    int base_scale, quote_scale;
    int64_t tick, lot, min_size, min_funds;
    i128 funds_unit;
    /* state */
    int64_t sequence, trade_seq;
    Side bids, asks;
    IdMap index;
    IdWindow ids;
    /* counters (operational, not state) */
    long long orders_in, duplicates, unknown_cancels, rejected, dead_letters;
    /* helpers from Python */
    PyObject *decode;          /* msgspec decoder of OrderMessage; NULL until __init__ succeeded */
    PyObject *order_type;      /* OrderMessage */
    PyObject *validation_error; /* msgspec.ValidationError: JSON, but not an OrderMessage */
    PyObject *not_json;        /* engine.messages.NOT_JSON: what decoding bytes that are not JSON raises */
    PyObject *salvage;         /* engine.intake.salvage_order, for JSON msgspec refused as an order */
    PyObject *dead_letter;     /* DeadLetter class */
    PyObject *encode_str;      /* msgspec.json.encode, for strings that need escaping */
    PyObject *time_ns;         /* engine.messages.record_time_ns, for timestamps beyond int64 arithmetic */
    PyObject *exhausted;       /* engine.matching.SequenceExhausted */
    Py_ssize_t max_record;     /* engine.messages.MAX_RECORD_BYTES: longer input is a dead letter */
    int max_nesting, max_digits; /* engine.messages.MAX_NESTING, MAX_NUMBER_DIGITS: see shape_reason */
    FieldSpec fields[MAX_FIELDS]; /* engine/messages.ORDER_FIELDS, in declaration order */
    char field_names[MAX_FIELDS][MAX_FIELD_NAME + 2]; /* each followed by the closing quote */
    int nfields;
    uint32_t key_at[KEY_BYTES][256]; /* bit i of [k][b]: byte k of fields[i]'s name + quote is b (or is past it) */
    uint32_t short_keys;             /* bit i: fields[i].short_key */
    OrderIn order_defaults;        /* an order of only defaults (fast_read's start) */
    PyObject *field_defaults;      /* the default objects, kept alive: order_defaults views their text */
    Buf buf;
    char ts_text[24]; /* ts_text_of as decimal text, when ts_text_ok */
    int ts_text_len, ts_text_ok;
    int64_t ts_text_of;
    char zero_size[48], zero_price[48];
    int zero_size_len, zero_price_len;
} Core;

static PyObject *STR_VALUE, *STR_TIMESTAMP, *EMPTY_BYTES; /* set once at import */


/* ---- small helpers ----------------------------------------------------------------------------- */

static int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->n + extra) cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Copies of a few bytes as fixed-size moves the compiler inlines (two overlapping ones when n is not
 * a power of two): the writer makes ~20 copies per event, and a memcpy call each cost more than the copy. */
static inline void copy_small(char *d, const char *s, size_t n) {
    if (n >= 16) {
        if (n > 32) { memcpy(d, s, n); return; }
        memcpy(d, s, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

/* Unchecked writes at w, which return the position after what they wrote: events use them with a
 * cursor (event_begin); the checked buf_* writers below are a reservation and one of them. */
static inline char *put_mem(char *w, const char *s, size_t n) {
    copy_small(w, s, n);
    return w + n;
}
#define PUT_LIT(w, s) put_mem((w), (s), sizeof(s) - 1)

static inline char *put_quoted(char *w, const char *s, size_t n) {
    *w++ = '"';
    copy_small(w, s, n);
    w += n;
    *w++ = '"';
    return w;
}

static inline int buf_mem(Buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    b->n = (size_t)(put_mem(b->p + b->n, s, n) - b->p);
    return 0;
}

static const char DIGIT_PAIRS[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                  "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                  "8081828384858687888990919293949596979899";

static const uint64_t POW10[20] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
                                   100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL,
                                   1000000000000ULL, 10000000000000ULL, 100000000000000ULL,
                                   1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
                                   1000000000000000000ULL, 10000000000000000000ULL};

/* Exactly `width` decimal digits of v (v < 10^width), written in place two at a time. */
static inline void write_fixed(char *out, uint64_t v, int width) {
    char *p = out + width;
    /* four digits per step: the two pairs of a step do not wait for each other, so the chain of
     * dependent divisions is half as long as with one pair per step */
    while (p - out >= 4) {
        uint64_t q = v / 10000;
        unsigned four = (unsigned)(v - q * 10000), hi = four / 100, lo = four % 100;
        v = q;
        p -= 4;
        memcpy(p, DIGIT_PAIRS + hi * 2, 2);
        memcpy(p + 2, DIGIT_PAIRS + lo * 2, 2);
    }
    if (p - out >= 2) {
        unsigned pair = (unsigned)(v % 100) * 2;
        v /= 100;
        p -= 2;
        memcpy(p, DIGIT_PAIRS + pair, 2);
    }
    if (p > out) *--p = (char)('0' + v);
}

static inline int digits_u64(uint64_t v) { /* 1 for 0..9, 2 for 10..99, ... */
    int bits = 64 - __builtin_clzll(v | 1);
    int t = (bits * 1233) >> 12; /* floor(bits * log10(2)): the length, or one less */
    return t + 1 - ((v | 1) < POW10[t]);
}

static inline int write_u64(char *out, uint64_t v) { /* decimal digits of v; returns length */
    int len = digits_u64(v);
    write_fixed(out, v, len);
    return len;
}

static int fmt_u128(char *out, unsigned __int128 v) { /* decimal digits of v; returns length */
    if (v <= UINT64_MAX) return write_u64(out, (uint64_t)v);
    char tmp[48];
    int n = 48;
    while (v > UINT64_MAX) { tmp[--n] = (char)('0' + (int)(v % 10)); v /= 10; }
    int head = write_u64(out, (uint64_t)v);
    memcpy(out + head, tmp + n, (size_t)(48 - n));
    return head + 48 - n;
}

static inline char *put_i64(char *w, int64_t v) {
    if (v < 0) {
        *w++ = '-';
        return w + write_u64(w, (uint64_t)0 - (uint64_t)v);
    }
    return w + write_u64(w, (uint64_t)v);
}

static inline int buf_i64(Buf *b, int64_t v) {
    if (buf_reserve(b, 21)) return -1;
    b->n = (size_t)(put_i64(b->p + b->n, v) - b->p);
    return 0;
}

/* format_scaled(value, scale) of engine/decimals.py: the whole part, then exactly `scale` digits */
static int fmt_scaled(char *out, int64_t value, int scale) {
    if (value < 0) { /* "-" + format_scaled(-value); values are bounded by +-(2**63 - 1) */
        out[0] = '-';
        return 1 + fmt_scaled(out + 1, -value, scale);
    }
    if (scale == 0) return write_u64(out, (uint64_t)value);
    uint64_t unit = POW10[scale];
    int len = write_u64(out, (uint64_t)value / unit);
    out[len++] = '.';
    write_fixed(out + len, (uint64_t)value % unit, scale);
    return len + scale;
}

/* PLAIN[ch]: may appear in a plain string (printable ASCII but the quote and the backslash). */
static unsigned char PLAIN[256];

static void init_plain_table(void) {
    for (int ch = 0x20; ch <= 0x7e; ch++) PLAIN[ch] = ch != '"' && ch != '\\';
}

static inline int buf_quoted(Buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n + 2)) return -1;
    b->n = (size_t)(put_quoted(b->p + b->n, s, n) - b->p);
    return 0;
}

/* A str as msgspec writes it: plain printable ASCII is copied, anything else asks msgspec. */
static int buf_json_str(Core *c, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (!u) return -1;
    Py_ssize_t plain = 0;
    while (plain < n && PLAIN[(unsigned char)u[plain]]) plain++;
    if (plain == n) return buf_quoted(&c->buf, u, (size_t)n);
    PyObject *enc = PyObject_CallOneArg(c->encode_str, s);
    if (!enc) return -1;
    int rc = buf_mem(&c->buf, PyBytes_AS_STRING(enc), (size_t)PyBytes_GET_SIZE(enc));
    Py_DECREF(enc);
    return rc;
}

/* Any Python int as JSON (ints outside int64 only occur in rejects and replayed timestamps). */
static int buf_pyint(Buf *b, PyObject *v) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (!overflow) return buf_i64(b, x);
    PyObject *s = PyObject_Str(v);
    if (!s) return -1;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    int rc = u ? buf_mem(b, u, (size_t)n) : -1;
    Py_DECREF(s);
    return rc;
}

/* ---- decimals: parse_scaled of engine/decimals.py ------------------------------------------------ */

enum { DEC_OK = 0, DEC_INVALID, DEC_TOO_PRECISE };

static inline int view_eq(View v, const char *lit, Py_ssize_t len) {
    return v.p && v.n == len && memcmp(v.p, lit, (size_t)len) == 0;
}
#define VIEW_IS(v, lit) view_eq((v), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* 0 ok; else DEC_INVALID (not a decimal, too long, too large) or DEC_TOO_PRECISE.
 * Python's length check counts code points; any non-ASCII text is invalid either way. */
static int parse_scaled(View text, int scale, int64_t *out) {
    if (!text.p || text.n > MAX_TEXT_LEN) return DEC_INVALID;
    const char *s = text.p;
    Py_ssize_t n = text.n, i = 0;
    int negative = 0;
    if (n && s[0] == '-') { negative = 1; i = 1; }
    Py_ssize_t whole_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    Py_ssize_t whole_end = i;
    if (whole_end == whole_start) return DEC_INVALID;
    Py_ssize_t frac_start = i, frac_end = i;
    if (i < n) {
        if (s[i] != '.') return DEC_INVALID;
        i++;
        frac_start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        frac_end = i;
        if (i != n || frac_end == frac_start) return DEC_INVALID;
    }
    Py_ssize_t frac_len = frac_end - frac_start;
    if (frac_len > scale) {
        for (Py_ssize_t k = frac_start + scale; k < frac_end; k++)
            if (s[k] != '0') return DEC_TOO_PRECISE;
        frac_end = frac_start + scale;
        frac_len = scale;
    }
    unsigned __int128 v = 0;
    const unsigned __int128 limit = (unsigned __int128)INT64_MAX;
    for (Py_ssize_t k = whole_start; k < whole_end; k++) {
        v = v * 10 + (unsigned)(s[k] - '0');
        if (v > limit) return DEC_INVALID;
    }
    for (Py_ssize_t k = frac_start; k < frac_end; k++) {
        v = v * 10 + (unsigned)(s[k] - '0');
        if (v > limit) return DEC_INVALID;
    }
    for (Py_ssize_t k = frac_len; k < scale; k++) {
        v *= 10;
        if (v > limit) return DEC_INVALID;
    }
    *out = negative ? -(int64_t)v : (int64_t)v;
    return DEC_OK;
}

/* ---- the duplicate-id window: engine/id_window.py ---------------------------------------------- */

enum { FRESH = 0, DUPLICATE, OUTSIDE_WINDOW };

/* Clearing is proportional to the dirty blocks it meets plus one summary word per 4,096 positions, not
 * to the positions: ids that jump by about the window each time (chosen ids, or multiples of a power of
 * two) once cost a memset of the whole bitmap per order (125 KB, ~4 us, ten times the order itself;
 * 40,000 such orders took 2.4-5.6x as long as sequential ids, `orderbook-cluster bench ids`). */
enum { IDS_BLOCK_BITS = 64 };

static void ids_block_bytes(const IdWindow *w, int64_t block, Py_ssize_t *start, Py_ssize_t *len) {
    *start = (Py_ssize_t)(block * 8);
    *len = w->nbytes - *start < 8 ? w->nbytes - *start : 8;
}

static int ids_block_empty(const IdWindow *w, int64_t block) {
    Py_ssize_t start, len;
    ids_block_bytes(w, block, &start, &len);
    for (Py_ssize_t i = 0; i < len; i++)
        if (w->bits[start + i]) return 0;
    return 1;
}

static inline void ids_mark(IdWindow *w, int64_t pos) {
    w->bits[pos >> 3] |= (uint8_t)(1u << (pos & 7));
    w->dirty[pos >> 12] |= 1ULL << ((pos >> 6) & 63);
}

/* The summary of a bitmap loaded whole (a snapshot). */
static void ids_rebuild_dirty(IdWindow *w) {
    memset(w->dirty, 0, (size_t)w->ndirty * sizeof(uint64_t));
    for (int64_t block = 0; block * 8 < w->nbytes; block++)
        if (!ids_block_empty(w, block)) w->dirty[block >> 6] |= 1ULL << (block & 63);
}

/* Clear positions a..b (0 <= a <= b < size), visiting only blocks marked dirty. */
static void ids_clear_positions(IdWindow *w, int64_t a, int64_t b) {
    int64_t first = a / IDS_BLOCK_BITS, last = b / IDS_BLOCK_BITS;
    for (int64_t word = first >> 6; word <= last >> 6; word++) {
        uint64_t d = w->dirty[word];
        if (word == first >> 6) d &= ~0ULL << (first & 63);
        if (word == last >> 6) d &= ~0ULL >> (63 - (last & 63));
        while (d) {
            int64_t block = (word << 6) + __builtin_ctzll(d);
            d &= d - 1;
            int64_t lo = block * IDS_BLOCK_BITS, hi = lo + IDS_BLOCK_BITS - 1;
            if (a <= lo && hi <= b) {
                Py_ssize_t start, len;
                ids_block_bytes(w, block, &start, &len);
                memset(w->bits + start, 0, (size_t)len);
            } else {
                for (int64_t pos = a > lo ? a : lo; pos <= (b < hi ? b : hi); pos++)
                    w->bits[pos >> 3] &= (uint8_t)~(1u << (pos & 7));
                if (!ids_block_empty(w, block)) continue;
            }
            w->dirty[word] &= ~(1ULL << (block & 63));
        }
    }
}

static void ids_clear(IdWindow *w, int64_t lo, int64_t hi) {
    int64_t size = w->size;
    if (hi - lo + 1 >= size) { ids_clear_positions(w, 0, size - 1); return; }
    int64_t a = lo % size, b = hi % size;
    if (a <= b) ids_clear_positions(w, a, b);
    else { ids_clear_positions(w, a, size - 1); ids_clear_positions(w, 0, b); }
}

static int ids_check_and_mark(IdWindow *w, int64_t id) {
    int64_t top = w->max_seen, pos = id % w->size;
    if (id > top) {
        if (id - top > 1) ids_clear(w, top + 1, id - 1);
        ids_mark(w, pos);
        w->max_seen = id;
        return FRESH;
    }
    if (id <= top - w->size) return OUTSIDE_WINDOW;
    if (w->bits[pos >> 3] & (1u << (pos & 7))) return DUPLICATE;
    ids_mark(w, pos);
    return FRESH;
}

/* ---- id -> order map (linear probing, backward-shift deletion) -------------------------------- */

/* Order ids are chosen by clients, so the map's hash must be one they cannot predict: with the former
 * unkeyed mixer (murmur3's fmix64, a public bijection) anyone could invert it and send ids that all
 * land in one slot, making each insert and cancel walk all of them (40,000 such orders: 1.8-2.0 s to
 * rest, 3.2-3.4 s to cancel, against 0.03-0.1 s for both with sequential ids; `bench ids`).
 * SipHash-1-3 (CPython's own str/bytes hash) with a secret per-Core key: colliding ids cannot be
 * computed without the key, and the engine's outputs never see the hash - only where an id sits in
 * this table (events, snapshots and export follow the book's levels, never the table's order), so
 * every replica stays byte-identical whatever its key. Cost: ~9 ns more per hash than fmix64. */
#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND                                                                               \
    do {                                                                                        \
        v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32);                      \
        v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                                              \
        v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                                              \
        v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32);                      \
    } while (0)

/* SipHash-1-3 of the id's 8 bytes, little-endian. */
static inline size_t id_hash(const IdMap *m, int64_t id) {
    uint64_t v0 = m->k0 ^ 0x736f6d6570736575ULL, v1 = m->k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = m->k0 ^ 0x6c7967656e657261ULL, v3 = m->k1 ^ 0x7465646279746573ULL;
    uint64_t word = (uint64_t)id, last = (uint64_t)8 << 56;
    v3 ^= word; SIP_ROUND; v0 ^= word;
    v3 ^= last; SIP_ROUND; v0 ^= last;
    v2 ^= 0xff; SIP_ROUND; SIP_ROUND; SIP_ROUND;
    return (size_t)(v0 ^ v1 ^ v2 ^ v3);
}

/* The key: CPython's per-process hash secret (random at start-up unless PYTHONHASHSEED pins it; it
 * keys hash() of str and bytes the same way) through hash() of two constants, mixed with this
 * Core's address and a stack address (ASLR), so a pinned PYTHONHASHSEED alone does not give the key
 * away. engine/ reads no randomness itself: the key only moves ids within the table. */
static int id_key_init(IdMap *m) {
    Py_hash_t h[2];
    const char *labels[2] = {"engine._native id map k0", "engine._native id map k1"};
    for (int i = 0; i < 2; i++) {
        PyObject *label = PyBytes_FromString(labels[i]);
        h[i] = label ? PyObject_Hash(label) : -1;
        Py_XDECREF(label);
        if (h[i] == -1) return -1;
    }
    m->k0 = (uint64_t)h[0] ^ (uint64_t)(uintptr_t)m;
    m->k1 = (uint64_t)h[1] ^ (uint64_t)(uintptr_t)h;
    return 0;
}

static int map_init(IdMap *m, size_t cap) {
    m->slots = PyMem_Calloc(cap, sizeof(IdSlot));
    if (!m->slots) { PyErr_NoMemory(); return -1; }
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

static Order *map_get(IdMap *m, int64_t id) {
    size_t i = id_hash(m, id) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].key == id) return m->slots[i].val;
        i = (i + 1) & m->mask;
    }
    return NULL;
}

static int map_put(IdMap *m, int64_t id, Order *o);

static int map_grow(IdMap *m) {
    IdMap old = *m; /* the same key: k0, k1 stay */
    if (map_init(m, (old.mask + 1) * 2)) { *m = old; return -1; }
    for (size_t i = 0; i <= old.mask; i++)
        if (old.slots[i].key) map_put(m, old.slots[i].key, old.slots[i].val);
    PyMem_Free(old.slots);
    return 0;
}

static int map_put(IdMap *m, int64_t id, Order *o) {
    if ((m->count + 1) * 2 > m->mask + 1 && map_grow(m)) return -1;
    size_t i = id_hash(m, id) & m->mask;
    while (m->slots[i].key) i = (i + 1) & m->mask;
    m->slots[i] = (IdSlot){id, o};
    m->count++;
    return 0;
}

static void map_del(IdMap *m, int64_t id) {
    size_t i = id_hash(m, id) & m->mask;
    while (m->slots[i].key != id) {
        if (!m->slots[i].key) return;
        i = (i + 1) & m->mask;
    }
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j].key) break;
        size_t home = id_hash(m, m->slots[j].key) & m->mask;
        /* move j back to i unless its home lies cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i] = (IdSlot){0, NULL};
    m->count--;
}

/* ---- book sides --------------------------------------------------------------------------------- */

static inline int64_t level_key(const Side *s, int64_t price) { return s->is_bid ? price : -price; }

static inline Level *best_level(const Side *s) { return s->n ? s->lv[s->n - 1] : NULL; }

/* Does the best level of `s` trade with a taker limited to `price` (has_limit 0: any price)? */
static inline int crosses(const Side *s, const Level *lv, int has_limit, int64_t price) {
    if (!has_limit) return 1;
    return s->is_bid ? lv->price >= price : lv->price <= price;
}

static Py_ssize_t side_find(const Side *s, int64_t price, int *found) {
    int64_t key = level_key(s, price);
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        int64_t k = level_key(s, s->lv[mid]->price);
        if (k < key) lo = mid + 1;
        else hi = mid;
    }
    *found = lo < s->n && s->lv[lo]->price == price;
    return lo;
}

static Level *side_level_for(Core *c, Side *s, int64_t price) {
    int found;
    Py_ssize_t at = side_find(s, price, &found);
    if (found) return s->lv[at];
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 64;
        Level **lv = PyMem_Realloc(s->lv, (size_t)cap * sizeof(Level *));
        if (!lv) { PyErr_NoMemory(); return NULL; }
        s->lv = lv;
        s->cap = cap;
    }
    Level *level = PyMem_Calloc(1, sizeof(Level));
    if (!level) { PyErr_NoMemory(); return NULL; }
    level->price = price;
    level->text_len = fmt_scaled(level->text, price, c->quote_scale);
    memmove(s->lv + at + 1, s->lv + at, (size_t)(s->n - at) * sizeof(Level *));
    s->lv[at] = level;
    s->n++;
    return level;
}

static void side_remove_level(Side *s, Level *level) {
    int found;
    Py_ssize_t at = side_find(s, level->price, &found);
    if (found) {
        memmove(s->lv + at, s->lv + at + 1, (size_t)(s->n - at - 1) * sizeof(Level *));
        s->n--;
    }
    PyMem_Free(level);
}

static void level_unlink(Level *lv, Order *o) {
    if (o->prev) o->prev->next = o->next; else lv->head = o->next;
    if (o->next) o->next->prev = o->prev; else lv->tail = o->prev;
    lv->live--;
}

static int book_rest(Core *c, int64_t id, int64_t user_id, int side, int64_t price, int64_t remaining,
                     int tif, Level **level_out) {
    Side *s = side == BUY ? &c->bids : &c->asks;
    Level *lv = side_level_for(c, s, price);
    if (!lv) return -1;
    Order *o = PyMem_Malloc(sizeof(Order));
    if (!o) { PyErr_NoMemory(); return -1; }
    o->id = id; o->user_id = user_id; o->remaining = remaining;
    o->side = (uint8_t)side; o->tif = (uint8_t)tif; o->level = lv;
    o->next = NULL; o->prev = lv->tail;
    if (lv->tail) lv->tail->next = o; else lv->head = o;
    lv->tail = o;
    lv->live++;
    lv->size += remaining;
    if (map_put(&c->index, id, o)) {
        level_unlink(lv, o);
        lv->size -= remaining;
        if (!lv->live) side_remove_level(s, lv);
        PyMem_Free(o);
        return -1;
    }
    if (level_out) *level_out = lv;
    return 0;
}

/* ---- events: msgspec's bytes for engine/messages.py Open, Match, Done ----------------------------- */

/* An input record's time (ns): a C integer, or the Python int when it is outside int64 (a replayed
 * timestamp). The hot path never makes a Python int for it. */
typedef struct {
    int64_t ns;
    PyObject *big; /* borrowed; NULL: ns holds the time */
} Time;

/* A Python int as a Time; -1 with an exception when it is not an int. */
static int time_of(PyObject *v, Time *t) {
    int overflow = 0;
    long long ns = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (ns == -1 && PyErr_Occurred()) return -1;
    t->ns = overflow ? 0 : (int64_t)ns;
    t->big = overflow ? v : NULL;
    return 0;
}

typedef struct {
    int ts_len;       /* the length of Core.ts_text; -1: write ts_big instead (an int outside int64) */
    PyObject *ts_big;
    PyObject *out;    /* list of event bytes */
} Ctx;

/* Events are written with a cursor `w` into Core.buf, without a capacity check per field: event_begin
 * leaves EVENT_ROOM bytes free after the head, more than any event's fixed fields take (the longest,
 * a match, ~420 bytes: six integers, two decimals, a level's text). A field of unbounded length (a
 * Python int or str a reject echoes) goes through the checked Buf writers, then event_room makes room
 * again. Why: the cursor stays in a register; with b->n in memory every byte store (char aliases
 * everything) made the compiler reload it, and the checks were ~15% of writing an event. */
#define EVENT_ROOM 1024

static const size_t SIDE_LENS[] = {3, 4};
#define PUT_SIDE(w, side) put_quoted((w), SIDE_NAMES[side], SIDE_LENS[side])
#define PUT_TIF(w, tif) put_quoted((w), TIF_NAMES[tif], 3)

static inline char *put_scaled(char *w, int64_t v, int scale) {
    *w++ = '"';
    w += fmt_scaled(w, v, scale);
    *w++ = '"';
    return w;
}

/* The cursor after a checked write that ended at buf.n (rc its result), with EVENT_ROOM free again. */
static char *event_room(Core *c, int rc) {
    if (rc || buf_reserve(&c->buf, EVENT_ROOM)) return NULL;
    return c->buf.p + c->buf.n;
}

/* The head every event starts with; NULL on error. */
static char *event_begin(Core *c, Ctx *x, const char *head, size_t head_len) {
    Buf *b = &c->buf;
    size_t product_len = (size_t)PyBytes_GET_SIZE(c->product_json);
    b->n = 0;
    if (buf_reserve(b, 96 + product_len + sizeof(c->ts_text) + EVENT_ROOM)) return NULL;
    c->sequence++;
    char *w = put_mem(b->p, head, head_len);
    w = PUT_LIT(w, ",\"sequence\":");
    w = put_i64(w, c->sequence);
    w = PUT_LIT(w, ",\"product_id\":");
    w = put_mem(w, PyBytes_AS_STRING(c->product_json), product_len);
    w = PUT_LIT(w, ",\"time\":");
    if (x->ts_len >= 0) return put_mem(w, c->ts_text, (size_t)x->ts_len);
    b->n = (size_t)(w - b->p);
    return event_room(c, buf_pyint(b, x->ts_big));
}

/* Close the event at w and append its bytes to the batch's list. */
static int event_finish(Core *c, Ctx *x, char *w) {
    *w++ = '}';
    c->buf.n = (size_t)(w - c->buf.p);
    assert(c->buf.n <= c->buf.cap);
    PyObject *bytes = PyBytes_FromStringAndSize(c->buf.p, (Py_ssize_t)c->buf.n);
    if (!bytes) return -1;
    int rc = PyList_Append(x->out, bytes);
    Py_DECREF(bytes);
    return rc;
}

static int emit_open(Core *c, Ctx *x, int64_t id, int64_t user_id, int64_t remaining, const Level *lv, int side,
                     int tif) {
    char *w = event_begin(c, x, "{\"type\":\"open\"", 14);
    if (!w) return -1;
    w = PUT_LIT(w, ",\"order_id\":");
    w = put_i64(w, id);
    w = PUT_LIT(w, ",\"user_id\":");
    w = put_i64(w, user_id);
    w = PUT_LIT(w, ",\"remaining_size\":");
    w = put_scaled(w, remaining, c->base_scale);
    w = PUT_LIT(w, ",\"price\":");
    w = put_quoted(w, lv->text, (size_t)lv->text_len);
    w = PUT_LIT(w, ",\"side\":");
    w = PUT_SIDE(w, side);
    w = PUT_LIT(w, ",\"time_in_force\":");
    w = PUT_TIF(w, tif);
    return event_finish(c, x, w);
}

static int emit_match(Core *c, Ctx *x, int64_t taker_id, int64_t taker_user, int taker_tif, const Order *m,
                      const Level *lv, int64_t fill) {
    char *w = event_begin(c, x, "{\"type\":\"match\"", 15);
    if (!w) return -1;
    c->trade_seq++;
    w = PUT_LIT(w, ",\"trade_seq\":");
    w = put_i64(w, c->trade_seq);
    w = PUT_LIT(w, ",\"taker_order_id\":");
    w = put_i64(w, taker_id);
    w = PUT_LIT(w, ",\"maker_order_id\":");
    w = put_i64(w, m->id);
    w = PUT_LIT(w, ",\"taker_user_id\":");
    w = put_i64(w, taker_user);
    w = PUT_LIT(w, ",\"maker_user_id\":");
    w = put_i64(w, m->user_id);
    w = PUT_LIT(w, ",\"side\":");
    w = PUT_SIDE(w, m->side);
    w = PUT_LIT(w, ",\"price\":");
    w = put_quoted(w, lv->text, (size_t)lv->text_len);
    w = PUT_LIT(w, ",\"size\":");
    w = put_scaled(w, fill, c->base_scale);
    w = PUT_LIT(w, ",\"taker_time_in_force\":");
    w = PUT_TIF(w, taker_tif);
    w = PUT_LIT(w, ",\"maker_time_in_force\":");
    w = PUT_TIF(w, m->tif);
    return event_finish(c, x, w);
}

/* A done event. user_obj/tif_obj, when given, replace user_id/tif (a reject echoes the input).
 * remaining and price are at most 64 bytes (fmt_scaled's buffers); reason and reject_reason are
 * this file's short constants. */
static int emit_done(Core *c, Ctx *x, int64_t id, int64_t user_id, PyObject *user_obj, const char *remaining,
                     size_t remaining_len, const char *price, size_t price_len, const char *reason, int side,
                     int tif, PyObject *tif_obj, const char *reject_reason, PyObject *reject_obj) {
    char *w = event_begin(c, x, "{\"type\":\"done\"", 14);
    if (!w) return -1;
    w = PUT_LIT(w, ",\"order_id\":");
    w = put_i64(w, id);
    w = PUT_LIT(w, ",\"user_id\":");
    if (user_obj) {
        c->buf.n = (size_t)(w - c->buf.p);
        if (!(w = event_room(c, buf_pyint(&c->buf, user_obj)))) return -1;
    } else {
        w = put_i64(w, user_id);
    }
    w = PUT_LIT(w, ",\"remaining_size\":");
    w = put_quoted(w, remaining, remaining_len);
    w = PUT_LIT(w, ",\"price\":");
    w = put_quoted(w, price, price_len);
    w = PUT_LIT(w, ",\"reason\":");
    w = put_quoted(w, reason, strlen(reason));
    w = PUT_LIT(w, ",\"side\":");
    w = PUT_SIDE(w, side);
    w = PUT_LIT(w, ",\"time_in_force\":");
    if (tif_obj) {
        c->buf.n = (size_t)(w - c->buf.p);
        if (!(w = event_room(c, buf_json_str(c, tif_obj)))) return -1;
    } else {
        w = PUT_TIF(w, tif);
    }
    if (reject_reason) {
        w = PUT_LIT(w, ",\"reject_reason\":");
        w = put_quoted(w, reject_reason, strlen(reject_reason));
    }
    if (reject_obj) {
        w = PUT_LIT(w, ",\"reject_reason\":");
        c->buf.n = (size_t)(w - c->buf.p);
        if (!(w = event_room(c, buf_json_str(c, reject_obj)))) return -1;
    }
    return event_finish(c, x, w);
}

/* done of a taker (or a resting order) with amounts as scaled integers */
static int emit_done_amounts(Core *c, Ctx *x, int64_t id, int64_t user_id, int64_t remaining, int64_t price,
                             const char *reason, int side, int tif) {
    char rem[64], pr[64];
    int rn = fmt_scaled(rem, remaining, c->base_scale), pn = fmt_scaled(pr, price, c->quote_scale);
    return emit_done(c, x, id, user_id, NULL, rem, (size_t)rn, pr, (size_t)pn, reason, side, tif, NULL, NULL,
                     NULL);
}

/* ---- matching: engine/matching.py ---------------------------------------------------------------- */

typedef struct {
    int64_t id, user_id;
    int side, tif, stp;
} Taker;

/* Take the front maker off the book for self-trade prevention, with its done event. */
static int stp_cancel(Core *c, Ctx *x, Order *m) {
    Level *lv = m->level;
    int64_t resting = m->remaining;
    level_unlink(lv, m);
    lv->size -= resting;
    map_del(&c->index, m->id);
    char rem[64];
    int rn = fmt_scaled(rem, resting, c->base_scale);
    int rc = emit_done(c, x, m->id, m->user_id, NULL, rem, (size_t)rn, lv->text, (size_t)lv->text_len,
                       "cancelled", m->side, m->tif, NULL, NULL, NULL);
    PyMem_Free(m);
    return rc;
}

/* One fill: the match, then the maker's done if it is used up (freed, and unlinked from its level). */
static int fill_maker(Core *c, Ctx *x, const Taker *t, Order *m, Level *lv, int64_t fill) {
    if (emit_match(c, x, t->id, t->user_id, t->tif, m, lv, fill)) return -1;
    lv->size -= fill;
    if (fill == m->remaining) {
        m->remaining = 0;
        level_unlink(lv, m);
        map_del(&c->index, m->id);
        int rc = emit_done(c, x, m->id, m->user_id, NULL, c->zero_size, (size_t)c->zero_size_len, lv->text,
                           (size_t)lv->text_len, "filled", m->side, m->tif, NULL, NULL, NULL);
        PyMem_Free(m);
        return rc;
    }
    m->remaining -= fill;
    return 0;
}

/* Fill *remaining against `opp` up to the limit; *stopped when STP ended the taker. */
static int take(Core *c, Ctx *x, const Taker *t, Side *opp, int has_limit, int64_t limit, int64_t *remaining,
                int *stopped) {
    *stopped = 0;
    while (*remaining) {
        Level *lv = best_level(opp);
        if (!lv || !crosses(opp, lv, has_limit, limit)) break;
        while (lv->head) {
            Order *m = lv->head;
            if (t->stp != STP_NONE && m->user_id == t->user_id) {
                if (t->stp != STP_CN && stp_cancel(c, x, m)) return -1;
                if (t->stp != STP_CO) { *stopped = 1; break; }
                continue;
            }
            int64_t fill = m->remaining < *remaining ? m->remaining : *remaining;
            *remaining -= fill;
            if (fill_maker(c, x, t, m, lv, fill)) return -1;
            if (!*remaining) break;
        }
        if (!lv->live) side_remove_level(opp, lv);
        if (*stopped) break;
    }
    return 0;
}

static int do_limit(Core *c, Ctx *x, const Taker *t, int64_t price, int64_t size) {
    Side *opp = t->side == BUY ? &c->asks : &c->bids;
    if (t->tif == TIF_GTX || t->tif == TIF_FOK) {
        int refuse;
        if (t->tif == TIF_GTX) {
            Level *best = best_level(opp);
            refuse = best && crosses(opp, best, 1, price);
        } else {
            i128 available = 0;
            for (Py_ssize_t i = opp->n - 1; i >= 0; i--) {
                Level *lv = opp->lv[i];
                if (!crosses(opp, lv, 1, price)) break;
                available += lv->size;
                if (available >= size) break;
            }
            refuse = available < size;
        }
        if (refuse) return emit_done_amounts(c, x, t->id, t->user_id, size, price, "cancelled", t->side, t->tif);
    }
    int64_t remaining = size;
    int stopped = 0;
    Level *best = best_level(opp);
    if (best && crosses(opp, best, 1, price) && take(c, x, t, opp, 1, price, &remaining, &stopped)) return -1;
    if (!remaining) return emit_done_amounts(c, x, t->id, t->user_id, 0, price, "filled", t->side, t->tif);
    if (stopped || t->tif == TIF_IOC || t->tif == TIF_FOK)
        return emit_done_amounts(c, x, t->id, t->user_id, remaining, price, "cancelled", t->side, t->tif);
    Level *lv;
    if (book_rest(c, t->id, t->user_id, t->side, price, remaining, t->tif, &lv)) return -1;
    return emit_open(c, x, t->id, t->user_id, remaining, lv, t->side, t->tif);
}

static int market_done(Core *c, Ctx *x, const Taker *t, int cancelled) {
    return emit_done(c, x, t->id, t->user_id, NULL, c->zero_size, (size_t)c->zero_size_len, c->zero_price,
                     (size_t)c->zero_price_len, cancelled ? "cancelled" : "filled", t->side, t->tif, NULL, NULL,
                     NULL);
}

static int do_market_sell(Core *c, Ctx *x, const Taker *t, int64_t size) {
    int64_t remaining = size;
    int stopped;
    if (take(c, x, t, &c->bids, 0, 0, &remaining, &stopped)) return -1;
    return market_done(c, x, t, remaining != 0);
}

/* Spend funds on asks best-first; funds_left is in 10^-(base+quote) units so it stays exact. */
static int do_market_buy(Core *c, Ctx *x, const Taker *t, int64_t funds) {
    Side *asks = &c->asks;
    i128 funds_left = (i128)funds * c->funds_unit;
    int stopped = 0;
    while (funds_left && !stopped) {
        Level *lv = best_level(asks);
        if (!lv) break;
        i128 price = lv->price, affordable = 0;
        while (lv->head) {
            Order *m = lv->head;
            affordable = funds_left / price;
            affordable -= affordable % c->lot;
            if (!affordable) break;
            if (t->stp != STP_NONE && m->user_id == t->user_id) {
                if (t->stp != STP_CN && stp_cancel(c, x, m)) return -1;
                if (t->stp != STP_CO) { stopped = 1; break; }
                continue;
            }
            int64_t fill = (i128)m->remaining < affordable ? m->remaining : (int64_t)affordable;
            funds_left -= (i128)fill * price;
            if (fill_maker(c, x, t, m, lv, fill)) return -1;
            if (!funds_left) break;
        }
        if (!lv->live) side_remove_level(asks, lv);
        else if (!affordable) break;
    }
    return market_done(c, x, t, funds_left != 0);
}

static int do_cancel(Core *c, Ctx *x, int64_t id) {
    Order *o = map_get(&c->index, id);
    if (!o) { c->unknown_cancels++; return 0; }
    Level *lv = o->level;
    Side *s = o->side == BUY ? &c->bids : &c->asks;
    int64_t size = o->remaining;
    level_unlink(lv, o);
    lv->size -= size;
    map_del(&c->index, id);
    char rem[64];
    int rn = fmt_scaled(rem, size, c->base_scale);
    int rc = emit_done(c, x, o->id, o->user_id, NULL, rem, (size_t)rn, lv->text, (size_t)lv->text_len,
                       "cancelled", o->side, o->tif, NULL, NULL, NULL);
    PyMem_Free(o);
    if (!lv->live) side_remove_level(s, lv);
    return rc;
}

/* ---- an input order, from either reader --------------------------------------------------------- */


/* ---- validation: engine/validation.py, same checks in the same order ------------------------------ */

static int tif_code(View s) {
    if (s.n != 3 || !s.p) return TIF_OTHER;
    for (int i = 0; i < 4; i++)
        if (memcmp(s.p, TIF_NAMES[i], 3) == 0) return i;
    return TIF_OTHER;
}

static int stp_code(View s) {
    if (!s.p) return STP_NONE;
    if (VIEW_IS(s, "co")) return STP_CO;
    if (VIEW_IS(s, "cn")) return STP_CN;
    if (VIEW_IS(s, "cb")) return STP_CB;
    return STP_OTHER;
}

/* engine/validation._amount: a positive amount at `scale` in *value (else 0), or its reject reason. */
static const char *positive_amount(View text, int scale, const char *too_precise, const char *invalid,
                                   int64_t *value) {
    int64_t v = 0;
    int rc = parse_scaled(text, scale, &v);
    *value = 0;
    if (rc == DEC_TOO_PRECISE) return too_precise;
    if (rc != DEC_OK || v <= 0) return invalid;
    *value = v;
    return NULL;
}

static const char *check_price(Core *c, View text, int64_t *price) {
    const char *reason = positive_amount(text, c->quote_scale, "price_too_precise", "invalid_price", price);
    if (reason) return reason;
    if (*price % c->tick) return "price_not_on_tick";
    return NULL;
}

static const char *check_size(Core *c, View text, int64_t *size) {
    const char *reason = positive_amount(text, c->base_scale, "size_too_precise", "invalid_size", size);
    if (reason) return reason;
    if (*size % c->lot) return "size_not_on_lot";
    if (*size < c->min_size) return "size_below_minimum";
    return NULL;
}

static inline int is_product(Core *c, View v) {
    return v.p && v.n == PyBytes_GET_SIZE(c->product_utf8) &&
           memcmp(v.p, PyBytes_AS_STRING(c->product_utf8), (size_t)v.n) == 0;
}

/* The reject reason or NULL; fills the taker's codes and the scaled amounts (0 where unusable). */
static const char *validate(Core *c, const OrderIn *o, Taker *t, int *is_limit, int64_t *price, int64_t *size,
                            int64_t *funds) {
    *price = *size = *funds = 0;
    if (!is_product(c, O_PRODUCT(o))) return "product_mismatch";
    if (!o->user_ok) return "invalid_user_id";
    t->user_id = o->user_id;
    int limit = VIEW_IS(O_TYPE(o), "limit");
    if (!limit && !VIEW_IS(O_TYPE(o), "market")) return "invalid_type";
    t->tif = tif_code(O_TIF(o));
    if (t->tif == TIF_OTHER) return "invalid_time_in_force";
    t->stp = stp_code(O_STP(o));
    if (t->stp == STP_OTHER) return "invalid_stp";
    const char *reason;
    if (limit) {
        *is_limit = 1;
        if ((reason = check_price(c, O_PRICE(o), price))) return reason;
        if ((reason = check_size(c, O_SIZE(o), size))) return reason;
        if (t->stp != STP_NONE && t->tif == TIF_FOK) return "fok_with_stp_unsupported";
        return NULL;
    }
    if (t->side == SELL) return check_size(c, O_SIZE(o), size);
    if (!O_FUNDS(o).p) return "market_buy_requires_funds";
    int64_t v = 0;
    int rc = parse_scaled(O_FUNDS(o), c->quote_scale, &v);
    if (rc == DEC_TOO_PRECISE) return "funds_too_precise";
    if (rc != DEC_OK) return "invalid_funds";
    if (v == 0) return "market_buy_requires_funds";
    if (v < 0) return "invalid_funds";
    *funds = v;
    if (v < c->min_funds) return "funds_below_minimum";
    return NULL;
}

/* ---- intake: MatchingEngine.submit --------------------------------------------------------------- */

static PyObject *dead_letter(Core *c, const char *reason) {
    c->dead_letters++;
    PyObject *kw = Py_BuildValue("{s:s}", "reason", reason);
    if (!kw) return NULL;
    PyObject *empty = PyTuple_New(0);
    PyObject *dl = empty ? PyObject_Call(c->dead_letter, empty, kw) : NULL;
    Py_XDECREF(empty);
    Py_DECREF(kw);
    return dl;
}

/* An input record that is not an order: counted as input and as a dead letter. */
static PyObject *unreadable(Core *c, const char *reason) {
    c->orders_in++;
    return dead_letter(c, reason);
}

static int side_code(View s) {
    if (VIEW_IS(s, "buy")) return BUY;
    if (VIEW_IS(s, "sell")) return SELL;
    return -1;
}

static int ctx_init(Core *c, Ctx *x, Time ts, PyObject *out) {
    int64_t v = ts.ns;
    x->ts_big = ts.big;
    if (ts.big) x->ts_len = -1;
    else {
        /* the orders of one producer batch share a timestamp: format it once */
        if (!c->ts_text_ok || c->ts_text_of != v) {
            c->ts_text_len = (int)(put_i64(c->ts_text, v) - c->ts_text);
            c->ts_text_of = v;
            c->ts_text_ok = 1;
        }
        x->ts_len = c->ts_text_len;
    }
    x->out = out; /* borrowed: events are appended to the caller's list */
    return 0;
}

static int reject(Core *c, Ctx *x, const OrderIn *o, int side, const char *reason, PyObject *reason_obj,
                  int64_t price, int64_t size) {
    c->rejected++;
    int limit = VIEW_IS(O_TYPE(o), "limit");
    char rem[64], pr[64];
    int rn, pn;
    if (limit || side == SELL) rn = fmt_scaled(rem, size, c->base_scale);
    else { memcpy(rem, c->zero_size, (size_t)c->zero_size_len); rn = c->zero_size_len; }
    if (limit) pn = fmt_scaled(pr, price, c->quote_scale);
    else { memcpy(pr, c->zero_price, (size_t)c->zero_price_len); pn = c->zero_price_len; }
    /* A reject echoes the input's time_in_force, whatever it is; the fast path has only its view. */
    PyObject *tif = o->tif_obj ? Py_NewRef(o->tif_obj) : PyUnicode_FromStringAndSize(O_TIF(o).p, O_TIF(o).n);
    if (!tif) return -1;
    int rc = emit_done(c, x, o->id, o->user_id, o->user_ok ? NULL : o->user_obj, rem, (size_t)rn, pr, (size_t)pn,
                       "rejected", side, 0, tif, reason, reason_obj);
    Py_DECREF(tif);
    return rc;
}

/* MatchingEngine.submit's guard: an input could emit 2 events per resting order plus 1; when that could
 * take sequence past INT64_MAX, raise SequenceExhausted (its text as the Python core words it) before
 * changing anything. Below SEQUENCE_CHECK_FROM no input can (2^39 resting orders). */
#define SEQUENCE_CHECK_FROM (INT64_MAX - ((int64_t)1 << 40))

static int sequence_exhausted(Core *c) {
    int64_t resting = (int64_t)c->index.count;
    if (c->sequence <= INT64_MAX - 1 - 2 * resting) return 0;
    PyErr_Format(c->exhausted,
                 "product=%U sequence=%lld resting=%lld: the next input could take sequence past 2^63-1",
                 c->product_id, (long long)c->sequence, (long long)resting);
    return 1;
}

/* Apply one order, appending its events to `out`. Returns Py_None, a DeadLetter (both new
 * references) or NULL on error. */
static PyObject *submit_into(Core *c, const OrderIn *o, Time ts, PyObject *bad_field, PyObject *out) {
    if (c->sequence > SEQUENCE_CHECK_FROM && sequence_exhausted(c)) return NULL;
    c->orders_in++;
    if (o->id_state == ID_NONE) return dead_letter(c, "missing_id");
    if (o->id_state == ID_BAD) return dead_letter(c, "invalid_id");
    int64_t id = o->id;
    Ctx x;
    if (VIEW_IS(O_STATUS(o), "new")) {
        int side = side_code(O_SIDE(o));
        if (side < 0) return dead_letter(c, O_SIDE(o).p ? "invalid_side" : "missing_side");
        int verdict = ids_check_and_mark(&c->ids, id);
        if (verdict == DUPLICATE) { c->duplicates++; Py_RETURN_NONE; }
        if (verdict == OUTSIDE_WINDOW) return dead_letter(c, "order_id_outside_window");
        if (ctx_init(c, &x, ts, out)) return NULL;
        if (bad_field && bad_field != Py_None) {
            PyObject *reason = PyUnicode_FromFormat("invalid_%U", bad_field);
            if (!reason) return NULL;
            int rc = reject(c, &x, o, side, NULL, reason, 0, 0);
            Py_DECREF(reason);
            if (rc) return NULL;
            Py_RETURN_NONE;
        }
        Taker t = {id, 0, side, 0, STP_NONE};
        int is_limit = 0;
        int64_t price, size, funds;
        const char *reason = validate(c, o, &t, &is_limit, &price, &size, &funds);
        int rc;
        if (reason) rc = reject(c, &x, o, side, reason, NULL, price, size);
        else if (is_limit) rc = do_limit(c, &x, &t, price, size);
        else if (side == SELL) rc = do_market_sell(c, &x, &t, size);
        else rc = do_market_buy(c, &x, &t, funds);
        if (rc) return NULL;
        Py_RETURN_NONE;
    }
    if (VIEW_IS(O_STATUS(o), "cancelling")) {
        if (O_SIDE(o).p && side_code(O_SIDE(o)) < 0) return dead_letter(c, "invalid_side");
        if (O_PRODUCT(o).p && !is_product(c, O_PRODUCT(o))) { c->unknown_cancels++; Py_RETURN_NONE; }
        if (ctx_init(c, &x, ts, out)) return NULL;
        if (do_cancel(c, &x, id)) return NULL;
        Py_RETURN_NONE;
    }
    return dead_letter(c, "invalid_status");
}

/* A str-or-None field of a decoded OrderMessage as a view. A str that has no UTF-8 form (a lone
 * surrogate from a JSON escape) becomes one invalid byte: it equals nothing and parses as nothing. */
static View view_of(PyObject *v) {
    View out = {NULL, 0};
    if (v == Py_None || !PyUnicode_Check(v)) return out;
    out.p = PyUnicode_AsUTF8AndSize(v, &out.n);
    if (!out.p) {
        PyErr_Clear();
        out.p = "\xff";
        out.n = 1;
    }
    return out;
}

/* The OrderIn of a decoded OrderMessage (the fields the rules read, from their slots). */
static int order_from_message(Core *c, PyObject *order, OrderIn *o) {
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < c->nfields; i++) {
        const FieldSpec *f = &c->fields[i];
        if (f->role == R_NONE) continue;
        PyObject *v = *(PyObject **)((char *)order + f->slot);
        int overflow = 0;
        long long n;
        switch (f->role) {
        case R_ID:
            if (v == Py_None) { o->id_state = ID_NONE; break; }
            n = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (n == -1 && PyErr_Occurred()) return -1;
            o->id_state = overflow || n <= 0 ? ID_BAD : ID_OK;
            o->id = n;
            break;
        case R_USER:
            n = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (n == -1 && PyErr_Occurred()) return -1;
            o->user_ok = !overflow;
            o->user_id = n;
            o->user_obj = v;
            break;
        default:
            if (f->role == R_TIF) o->tif_obj = v;
            o->text[f->role] = view_of(v);
        }
    }
    return 0;
}

/* ---- the JSON fast path --------------------------------------------------------------------------- */
/* Reads the common shape of an order record without building Python objects: one JSON object whose
 * keys are OrderMessage fields, each at most once, with values of the field's type: strings of
 * printable ASCII without escapes, integers within int64, or null where None is allowed. Anything
 * else (escapes, other keys, floats, booleans, nesting, trailing bytes) returns 0 and msgspec reads
 * the record instead, so the fast path never decides what an unusual input means. */

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A plain string at p (p at the opening quote): its view; NULL when it is not plain. */
static const char *scan_plain_string(const char *p, const char *end, View *v) {
    const char *start = ++p;
    while (p < end && PLAIN[(unsigned char)*p]) p++;
    if (p >= end || *p != '"') return NULL;
    v->p = start;
    v->n = p - start;
    return p + 1;
}

/* A JSON integer that fits int64: -?(0|[1-9][0-9]*) not followed by a fraction or exponent. */
static const char *scan_int(const char *p, const char *end, int64_t *out) {
    int negative = 0;
    if (p < end && *p == '-') { negative = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return NULL;
    if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return NULL;
    const char *start = p;
    uint64_t v = 0; /* 19 digits always fit; a 20th (no leading zeros) is beyond int64 anyway */
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - start == 19) return NULL;
        v = v * 10 + (unsigned)(*p - '0');
        p++;
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL;
    if (v > (uint64_t)INT64_MAX + (uint64_t)negative) return NULL;
    *out = negative ? (int64_t)((uint64_t)0 - v) : (int64_t)v;
    return p;
}

/* A key of the order, with its closing quote, at p (after the opening quote): its index in the field
 * table, with *after past the quote; -1 for anything else (another key, an escape, the record's end),
 * which is not the common shape. The first three bytes narrow the candidates (to one for every key of
 * OrderMessage); with 16 bytes left, a short key is checked as two masked 8-byte words, else memcmp.
 * Why: a memcmp call per candidate made the table-driven reader ~15% slower than the switch it replaced. */
static inline int known_key(const Core *c, const char *p, const char *end, const char **after) {
    Py_ssize_t left = end - p;
    uint32_t candidates;
    if (left >= 16) {
        const unsigned char *u = (const unsigned char *)p;
        candidates = c->key_at[0][u[0]] & c->key_at[1][u[1]] & c->key_at[2][u[2]];
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        for (uint32_t todo = candidates & c->short_keys; todo; todo &= todo - 1) {
            int i = __builtin_ctz(todo);
            const FieldSpec *f = &c->fields[i];
            if (((a & f->mask[0]) ^ f->word[0]) | ((b & f->mask[1]) ^ f->word[1])) continue;
            *after = p + f->key_len;
            return i;
        }
        candidates &= ~c->short_keys;
    } else {
        if (left < 1) return -1;
        candidates = c->key_at[0][(unsigned char)p[0]];
        if (left > 1) candidates &= c->key_at[1][(unsigned char)p[1]];
        if (left > 2) candidates &= c->key_at[2][(unsigned char)p[2]];
    }
    for (; candidates; candidates &= candidates - 1) {
        int i = __builtin_ctz(candidates);
        Py_ssize_t n = c->fields[i].key_len;
        if (left >= n && memcmp(p, c->field_names[i], (size_t)n) == 0) {
            *after = p + n;
            return i;
        }
    }
    return -1;
}

/* 1: `o` holds the record; 0: not the common shape, let msgspec read it. */
static int fast_read(const Core *c, const char *p, Py_ssize_t len, OrderIn *o) {
    const char *end = p + len;
    *o = c->order_defaults;
    unsigned seen = 0;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return 0; /* {} is rare: msgspec's path answers it */
    for (;;) {
        if (p >= end || *p != '"') return 0;
        const char *after;
        int index = known_key(c, p + 1, end, &after);
        if (index < 0 || (seen & (1u << index))) return 0;
        const FieldSpec *f = &c->fields[index];
        p = after;
        seen |= 1u << index;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        if (p >= end) return 0;
        if (*p == 'n') { /* null: only where the field accepts None */
            if (end - p < 4 || memcmp(p, "null", 4) != 0 || !f->nullable) return 0;
            p += 4;
            if (f->role == R_ID) o->id_state = ID_NONE;
            else if (f->role > R_USER) o->text[f->role] = (View){NULL, 0};
        } else if (f->is_int) {
            int64_t v;
            if (!(p = scan_int(p, end, &v))) return 0;
            if (f->role == R_ID) { o->id_state = v > 0 ? ID_OK : ID_BAD; o->id = v; }
            else if (f->role == R_USER) o->user_id = v;
        } else if (*p == '"') {
            View v;
            if (!(p = scan_plain_string(p, end, &v))) return 0;
            if (f->role > R_USER) o->text[f->role] = v;
        } else {
            return 0;
        }
        p = skip_ws(p, end);
        if (p >= end) return 0;
        if (*p == ',') { p = skip_ws(p + 1, end); continue; }
        if (*p != '}') return 0;
        p = skip_ws(p + 1, end);
        return p == end;
    }
}

/* ---- the shape of a record that is not the common one --------------------------------------------- */
/* engine/intake.shape_reason, byte by byte: "too_deep" when brackets outside strings nest deeper than
 * max_nesting, "number_too_long" when more than max_digits digits stand in a row outside strings
 * (whichever comes first), else NULL. Strings are skipped with their escapes; a closing bracket
 * without an opening one counts for nothing. It runs before msgspec reads a record, which recursed
 * per level and raised RecursionError at ~1,000 levels. A record fast_read accepts is within both
 * bounds (depth 1, integers of at most 19 digits), so the fast path never runs it. */
static const char *shape_reason(const char *p, Py_ssize_t len, int max_nesting, int max_digits) {
    const char *end = p + len;
    int depth = 0, digits = 0;
    while (p < end) {
        unsigned char ch = (unsigned char)*p++;
        if (ch >= '0' && ch <= '9') {
            if (++digits > max_digits) return "number_too_long";
            continue;
        }
        digits = 0;
        switch (ch) {
        case '"':
            while (p < end) {
                ch = (unsigned char)*p++;
                if (ch == '"') break;
                if (ch == '\\' && p < end) p++;
            }
            break;
        case '[':
        case '{':
            if (++depth > max_nesting) return "too_deep";
            break;
        case ']':
        case '}':
            if (depth) depth--;
            break;
        default:
            break;
        }
    }
    return NULL;
}

/* ---- the Python type ------------------------------------------------------------------------------ */

static int free_side(Side *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) {
        Order *o = s->lv[i]->head;
        while (o) { Order *next = o->next; PyMem_Free(o); o = next; }
        PyMem_Free(s->lv[i]);
    }
    PyMem_Free(s->lv);
    s->lv = NULL;
    s->n = s->cap = 0;
    return 0;
}

static void Core_dealloc(Core *c) {
    free_side(&c->bids);
    free_side(&c->asks);
    PyMem_Free(c->index.slots);
    Py_XDECREF(c->field_defaults);
    PyMem_Free(c->ids.bits);
    PyMem_Free(c->ids.dirty);
    PyMem_Free(c->buf.p);
    Py_XDECREF(c->product_id);
    Py_XDECREF(c->product_json);
    Py_XDECREF(c->product_utf8);
    Py_XDECREF(c->decode);
    Py_XDECREF(c->order_type);
    Py_XDECREF(c->validation_error);
    Py_XDECREF(c->not_json);
    Py_XDECREF(c->salvage);
    Py_XDECREF(c->dead_letter);
    Py_XDECREF(c->encode_str);
    Py_XDECREF(c->time_ns);
    Py_XDECREF(c->exhausted);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* One row of the field table, (name, is_int, nullable, default), into c->fields[i] and the defaults. */
static int read_field(Core *c, PyObject *order_type, PyObject *row, int i) {
    const char *name;
    Py_ssize_t name_len;
    int is_int, nullable;
    PyObject *dflt;
    if (!PyArg_ParseTuple(row, "s#ppO", &name, &name_len, &is_int, &nullable, &dflt)) return -1;
    FieldSpec *f = &c->fields[i];
    if (name_len < 1 || name_len > MAX_FIELD_NAME) {
        PyErr_Format(PyExc_ValueError, "field name %s: 1 to %d bytes", name, MAX_FIELD_NAME);
        return -1;
    }
    char *key = c->field_names[i];
    memcpy(key, name, (size_t)name_len);
    key[name_len] = '"';
    f->key_len = (int32_t)name_len + 1;
    f->short_key = 0;
    for (int k = 0; k < KEY_BYTES; k++) {
        if (k > name_len) { /* past the quote: any byte */
            for (int b = 0; b < 256; b++) c->key_at[k][b] |= 1u << i;
        } else {
            c->key_at[k][(unsigned char)key[k]] |= 1u << i;
        }
    }
    if (name_len + 1 <= 16) {
        unsigned char word[16] = {0}, mask[16] = {0};
        memcpy(word, key, (size_t)name_len + 1);
        memset(mask, 0xff, (size_t)name_len + 1);
        memcpy(f->word, word, 16);
        memcpy(f->mask, mask, 16);
        f->short_key = 1;
        c->short_keys |= 1u << i;
    }
    f->is_int = is_int;
    f->nullable = nullable;
    f->role = R_NONE;
    for (int r = 0; r < N_ROLES; r++)
        if (strcmp(name, ROLE_NAMES[r]) == 0) f->role = r;
    PyObject *descr = PyObject_GetAttrString(order_type, name);
    if (!descr) return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
    if (ok) f->slot = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "order_type.%s is not a plain slot", name);
        return -1;
    }
    if (PyList_Append(c->field_defaults, dflt)) return -1;
    OrderIn *o = &c->order_defaults;
    if (f->role == R_ID) {
        o->id_state = dflt == Py_None ? ID_NONE : ID_BAD; /* a default id would be a bug: never usable */
    } else if (f->role == R_USER) {
        if (!PyLong_Check(dflt)) { PyErr_SetString(PyExc_TypeError, "user_id's default must be an int"); return -1; }
        o->user_id = PyLong_AsLongLong(dflt);
        if (o->user_id == -1 && PyErr_Occurred()) return -1;
        o->user_ok = 1;
    } else if (f->role != R_NONE && dflt != Py_None) {
        o->text[f->role] = view_of(dflt); /* into the default str, which field_defaults keeps */
    }
    return 0;
}

/* The field table (engine/messages.ORDER_FIELDS) into the core; every field the rules read is in it. */
static int read_fields(Core *c, PyObject *order_type, PyObject *fields) {
    if (!PyType_Check(order_type)) { PyErr_SetString(PyExc_TypeError, "order_type must be a type"); return -1; }
    PyObject *rows = PySequence_Fast(fields, "fields must be a sequence");
    if (!rows) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rows);
    int rc = -1;
    memset(c->key_at, 0, sizeof(c->key_at)); /* an __init__ that failed may run again */
    c->short_keys = 0;
    Py_XSETREF(c->field_defaults, PyList_New(0));
    if (!c->field_defaults) goto done;
    if (n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "%zd order fields, the C core reads at most %d", n, MAX_FIELDS);
        goto done;
    }
    memset(&c->order_defaults, 0, sizeof(c->order_defaults));
    int found[N_ROLES] = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (read_field(c, order_type, PySequence_Fast_GET_ITEM(rows, i), (int)i)) goto done;
        if (c->fields[i].role != R_NONE) found[c->fields[i].role] = 1;
    }
    c->nfields = (int)n;
    for (int r = 0; r < N_ROLES; r++)
        if (!found[r]) {
            PyErr_Format(PyExc_ValueError, "the C rules read the order field %s, which the table lacks", ROLE_NAMES[r]);
            goto done;
        }
    rc = 0;
done:
    Py_DECREF(rows);
    return rc;
}

static int Core_init(Core *c, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"product_id", "base_scale", "quote_scale", "tick", "lot", "min_size", "min_funds",
                             "id_window", "order_type", "decode", "validation_error", "not_json", "salvage", "dead_letter",
                             "encode_str", "time_ns", "max_record_bytes", "max_nesting", "max_number_digits",
                             "sequence_exhausted", "fields", NULL};
    PyObject *product_id, *order_type, *decode, *validation_error, *not_json, *salvage, *dead_letter_cls,
        *encode_str, *time_ns, *exhausted, *fields;
    int base_scale, quote_scale;
    long long tick, lot, min_size, min_funds, id_window;
    Py_ssize_t max_record;
    int max_nesting, max_digits;
    if (c->decode) { PyErr_SetString(PyExc_RuntimeError, "Core is initialised once"); return -1; }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UiiLLLLLOOOOOOOOniiOO", kwlist, &product_id, &base_scale,
                                     &quote_scale, &tick, &lot, &min_size, &min_funds, &id_window, &order_type,
                                     &decode, &validation_error, &not_json, &salvage, &dead_letter_cls,
                                     &encode_str, &time_ns, &max_record, &max_nesting, &max_digits, &exhausted,
                                     &fields))
        return -1;
    if (base_scale < 0 || base_scale > 18 || quote_scale < 0 || quote_scale > 18 || tick <= 0 || lot <= 0 ||
        min_size <= 0 || min_funds <= 0 || id_window <= 0 || max_record <= 0 || max_nesting <= 0 ||
        max_digits <= 0) {
        PyErr_SetString(PyExc_ValueError, "invalid product rules");
        return -1;
    }
    if (read_fields(c, order_type, fields)) return -1;
    c->product_json = PyObject_CallOneArg(encode_str, product_id);
    if (!c->product_json) return -1;
    if (!PyBytes_Check(c->product_json)) { PyErr_SetString(PyExc_TypeError, "encode_str must give bytes"); return -1; }
    c->product_utf8 = PyUnicode_AsUTF8String(product_id);
    if (!c->product_utf8) return -1;
    Py_INCREF(product_id); c->product_id = product_id;
    Py_INCREF(order_type); c->order_type = order_type;
    Py_INCREF(decode); c->decode = decode; /* last: marks the core as initialised */
    Py_INCREF(validation_error); c->validation_error = validation_error;
    Py_INCREF(not_json); c->not_json = not_json;
    Py_INCREF(salvage); c->salvage = salvage;
    Py_INCREF(dead_letter_cls); c->dead_letter = dead_letter_cls;
    Py_INCREF(encode_str); c->encode_str = encode_str;
    Py_INCREF(time_ns); c->time_ns = time_ns;
    Py_INCREF(exhausted); c->exhausted = exhausted;
    c->max_record = max_record;
    c->max_nesting = max_nesting;
    c->max_digits = max_digits;
    c->base_scale = base_scale;
    c->quote_scale = quote_scale;
    c->tick = tick; c->lot = lot; c->min_size = min_size; c->min_funds = min_funds;
    c->funds_unit = 1;
    for (int i = 0; i < base_scale; i++) c->funds_unit *= 10;
    c->bids.is_bid = 1;
    c->asks.is_bid = 0;
    if (id_key_init(&c->index) || map_init(&c->index, 1024)) return -1;
    c->ids.size = id_window;
    c->ids.nbytes = (Py_ssize_t)((id_window + 7) / 8);
    c->ids.bits = PyMem_Calloc((size_t)c->ids.nbytes, 1);
    c->ids.ndirty = (c->ids.nbytes + 511) / 512;
    c->ids.dirty = PyMem_Calloc((size_t)c->ids.ndirty, sizeof(uint64_t));
    if (!c->ids.bits || !c->ids.dirty) { PyErr_NoMemory(); return -1; }
    c->zero_size_len = fmt_scaled(c->zero_size, 0, base_scale);
    c->zero_price_len = fmt_scaled(c->zero_price, 0, quote_scale);
    return 0;
}

/* Methods of a Core whose __init__ did not run (Core.__new__ alone) raise instead of crashing. */
#define REQUIRE_INIT(c)                                                                    \
    if (!(c)->decode) {                                                                    \
        PyErr_SetString(PyExc_RuntimeError, "engine._native.Core used before __init__");   \
        return NULL;                                                                       \
    }

/* JSON that is not an OrderMessage, sorted out by engine.intake.salvage_order as the Python core does:
 * its DeadLetter (counted as an unreadable input), or the order it salvaged, applied. */
static PyObject *salvaged_into(Core *c, PyObject *raw, Time ts, PyObject *out) {
    PyObject *salvaged = PyObject_CallOneArg(c->salvage, raw);
    if (!salvaged) return NULL;
    if (Py_TYPE(salvaged) == (PyTypeObject *)c->dead_letter) {
        c->orders_in++;
        c->dead_letters++;
        return salvaged;
    }
    PyObject *order, *bad_field;
    OrderIn o;
    PyObject *r = NULL;
    if (!PyArg_ParseTuple(salvaged, "OO", &order, &bad_field)) goto done;
    if ((PyObject *)Py_TYPE(order) != c->order_type || (bad_field != Py_None && !PyUnicode_Check(bad_field))) {
        PyErr_SetString(PyExc_TypeError, "salvage must give a DeadLetter or (OrderMessage, str | None)");
        goto done;
    }
    if (!order_from_message(c, order, &o)) r = submit_into(c, &o, ts, bad_field, out);
done:
    Py_DECREF(salvaged); /* after submit: the views point into the order's strings */
    return r;
}

/* Read one record's bytes and apply it, appending events to `out`; as submit_into returns. */
static PyObject *raw_into(Core *c, PyObject *raw, Time ts, PyObject *out) {
    OrderIn o;
    Py_ssize_t size = PyBytes_CheckExact(raw) ? PyBytes_GET_SIZE(raw) : PyObject_Length(raw);
    if (size < 0) return NULL; /* no length: as len(raw) in the Python core */
    if (size > c->max_record) return unreadable(c, "record_too_large");
    const char *shape;
    if (PyBytes_CheckExact(raw)) {
        if (fast_read(c, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), &o)) return submit_into(c, &o, ts, NULL, out);
        shape = shape_reason(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), c->max_nesting, c->max_digits);
    } else { /* another bytes-like object: as bytes(raw) in the Python core */
        Py_buffer view;
        if (PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)) return NULL;
        shape = shape_reason(view.buf, view.len, c->max_nesting, c->max_digits);
        PyBuffer_Release(&view);
    }
    if (shape) return unreadable(c, shape);
    PyObject *order = PyObject_CallOneArg(c->decode, raw);
    if (!order) {
        if (PyErr_ExceptionMatches(c->validation_error)) { /* JSON of the wrong shape: salvage it */
            PyErr_Clear();
            return salvaged_into(c, raw, ts, out);
        }
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) { /* not within max_nesting: never escapes */
            PyErr_Clear();
            return unreadable(c, "too_deep");
        }
        if (!PyErr_ExceptionMatches(c->not_json)) return NULL;
        PyErr_Clear();
        return unreadable(c, "not_json");
    }
    PyObject *r = order_from_message(c, order, &o) ? NULL : submit_into(c, &o, ts, NULL, out);
    Py_DECREF(order); /* after submit: the views point into its strings */
    return r;
}

/* A record type's value() and timestamp() as C method descriptors, looked up once per batch: a
 * method call by name walks the type's MRO for every record. NULL (call by name) when the type
 * could shadow them per instance or they are not C methods (duck-typed records in tests). */
typedef struct {
    PyTypeObject *type;
    PyObject *value, *timestamp;
} RecordMethods;

static PyObject *c_method_of(PyTypeObject *type, PyObject *name) {
    if (type->tp_dictoffset != 0) return NULL;
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (!d) { PyErr_Clear(); return NULL; }
    if (!Py_IS_TYPE(d, &PyMethodDescr_Type)) Py_CLEAR(d);
    return d;
}

static void record_methods(RecordMethods *m, PyTypeObject *type) {
    m->type = type;
    Py_XSETREF(m->value, c_method_of(type, STR_VALUE));
    Py_XSETREF(m->timestamp, c_method_of(type, STR_TIMESTAMP));
}

static inline PyObject *call_record_method(PyObject *record, PyObject *method, PyObject *name) {
    if (method) return PyObject_Vectorcall(method, &record, 1, NULL);
    return PyObject_CallMethodNoArgs(record, name);
}

/* The ms of a record.timestamp() answer, with *overflow set when it is not an int that fits long
 * long (record_time then asks record_time_ns); -1 with an exception when it is not a (type, ms) pair. */
static int stamp_ms(PyObject *stamp, long long *ms, int *overflow) {
    if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 2) {
        PyErr_SetString(PyExc_TypeError, "record.timestamp() must return (type, ms)");
        return -1;
    }
    PyObject *v = PyTuple_GET_ITEM(stamp, 1);
    *ms = 0;
    *overflow = 1;
    if (!PyLong_Check(v)) return 0;
    *ms = PyLong_AsLongLongAndOverflow(v, overflow);
    return *ms == -1 && PyErr_Occurred() ? -1 : 0;
}

#define NS_PER_MS 1000000LL

/* A record's time from its timestamp (ms): computed here when ms * 10^6 fits int64 (every real Kafka
 * timestamp), by engine.messages.record_time_ns otherwise; *big keeps that answer alive. `ms_obj` is
 * the timestamp as the record gave it (NULL: make it from ms). 0 ok, -1 error. */
static int record_time(Core *c, long long ms, int overflow, PyObject *ms_obj, Time *ts, PyObject **big) {
    if (!overflow && ms <= INT64_MAX / NS_PER_MS) {
        *ts = (Time){ms > 0 ? ms * NS_PER_MS : 0, NULL};
        return 0;
    }
    PyObject *arg = ms_obj ? Py_NewRef(ms_obj) : PyLong_FromLongLong(ms);
    if (!arg) return -1;
    Py_XSETREF(*big, PyObject_CallOneArg(c->time_ns, arg));
    Py_DECREF(arg);
    if (!*big) return -1;
    if (!PyLong_Check(*big)) {
        PyErr_SetString(PyExc_TypeError, "time_ns must return an int");
        return -1;
    }
    return time_of(*big, ts);
}

/* One record's value and time: a (value, time_ns) pair as it is, else (a consumed Kafka Message)
 * through its value() and timestamp(), with time = record_time_ns(ms). */
static int read_record(Core *c, PyObject *record, RecordMethods *methods, PyObject **raw, Time *ts, PyObject **big) {
    if (PyTuple_CheckExact(record)) {
        if (PyTuple_GET_SIZE(record) != 2 || !PyLong_Check(PyTuple_GET_ITEM(record, 1))) {
            PyErr_SetString(PyExc_TypeError, "a record pair is (value: bytes | None, time_ns: int)");
            return -1;
        }
        if (time_of(PyTuple_GET_ITEM(record, 1), ts)) return -1;
        *raw = Py_NewRef(PyTuple_GET_ITEM(record, 0));
        return 0;
    }
    PyObject *stamp = call_record_method(record, methods->timestamp, STR_TIMESTAMP);
    if (!stamp) return -1;
    long long ms;
    int overflow;
    int rc = stamp_ms(stamp, &ms, &overflow) || record_time(c, ms, overflow, PyTuple_GET_ITEM(stamp, 1), ts, big);
    Py_DECREF(stamp);
    if (rc) return -1;
    *raw = call_record_method(record, methods->value, STR_VALUE);
    return *raw ? 0 : -1;
}

/* apply(records): engine/api.py Engine.apply. Events go into one list, dead letters with their index. */
static PyObject *Core_apply(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    REQUIRE_INIT(c);
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "apply(records)");
        return NULL;
    }
    PyObject *big = NULL; /* time_ns's answer for the current record, when it gave one */
    RecordMethods methods = {NULL, NULL, NULL}; /* before the first goto: `done` releases them */
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (!records) return NULL;
    PyObject *events = PyList_New(0), *dead = PyList_New(0), *result = NULL;
    if (!events || !dead) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, i);
        PyTypeObject *type = Py_TYPE(record);
        if (type != methods.type && type != &PyTuple_Type) record_methods(&methods, type);
        PyObject *raw;
        Time ts;
        if (read_record(c, record, &methods, &raw, &ts, &big)) goto done;
        if (raw == Py_None) Py_SETREF(raw, Py_NewRef(EMPTY_BYTES)); /* a record without a value */
        PyObject *outcome = raw_into(c, raw, ts, events);
        Py_DECREF(raw);
        if (!outcome) goto done;
        if (outcome != Py_None) {
            PyObject *item = Py_BuildValue("(nN)", i, outcome);
            if (!item || PyList_Append(dead, item)) { Py_XDECREF(item); goto done; }
            Py_DECREF(item);
        } else {
            Py_DECREF(outcome);
        }
    }
    result = PyTuple_Pack(2, events, dead);
done:
    Py_XDECREF(events);
    Py_XDECREF(dead);
    Py_XDECREF(big);
    Py_XDECREF(methods.value);
    Py_XDECREF(methods.timestamp);
    Py_DECREF(records);
    return result;
}

static PyObject *level_rows(Side *s, PyObject *rows) {
    for (Py_ssize_t i = s->n - 1; i >= 0; i--)
        for (Order *o = s->lv[i]->head; o; o = o->next) {
            PyObject *row = Py_BuildValue("(LLsLLs)", (long long)o->id, (long long)o->user_id, SIDE_NAMES[o->side],
                                          (long long)s->lv[i]->price, (long long)o->remaining, TIF_NAMES[o->tif]);
            if (!row || PyList_Append(rows, row)) { Py_XDECREF(row); return NULL; }
            Py_DECREF(row);
        }
    return rows;
}

/* (id_window_max, id_window_bits, rows): resting orders bids best-first then asks, FIFO per level. */
static PyObject *Core_export(Core *c, PyObject *Py_UNUSED(ignored)) {
    REQUIRE_INIT(c);
    PyObject *rows = PyList_New(0);
    if (!rows || !level_rows(&c->bids, rows) || !level_rows(&c->asks, rows)) { Py_XDECREF(rows); return NULL; }
    PyObject *r = Py_BuildValue("(Ly#N)", (long long)c->ids.max_seen, (const char *)c->ids.bits, c->ids.nbytes, rows);
    return r;
}

/* (id_window_max, id_window_bits): the duplicate-id window, the part of a snapshot before the book. */
static PyObject *Core_id_window(Core *c, PyObject *Py_UNUSED(ignored)) {
    REQUIRE_INIT(c);
    return Py_BuildValue("(Ly#)", (long long)c->ids.max_seen, (const char *)c->ids.bits, c->ids.nbytes);
}

/* ---- snapshot bytes, written here: no Python object per resting order ------------------------- */

/* msgpack as msgspec writes it: the smallest form of each integer, fixstr for the short names. */
static char *mp_int(char *p, int64_t v) {
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128) { *p++ = (char)u; return p; }
        int n;
        if (u < 256) { *p++ = (char)0xcc; n = 1; }
        else if (u < 65536) { *p++ = (char)0xcd; n = 2; }
        else if (u < 4294967296ULL) { *p++ = (char)0xce; n = 4; }
        else { *p++ = (char)0xcf; n = 8; }
        for (int i = n - 1; i >= 0; i--) *p++ = (char)(u >> (8 * i));
        return p;
    }
    if (v >= -32) { *p++ = (char)(int8_t)v; return p; }
    int n;
    if (v >= -128) { *p++ = (char)0xd0; n = 1; }
    else if (v >= -32768) { *p++ = (char)0xd1; n = 2; }
    else if (v >= -2147483648LL) { *p++ = (char)0xd2; n = 4; }
    else { *p++ = (char)0xd3; n = 8; }
    uint64_t u = (uint64_t)v;
    for (int i = n - 1; i >= 0; i--) *p++ = (char)(u >> (8 * i));
    return p;
}

static char *mp_fixstr(char *p, const char *text) {
    size_t n = strlen(text);
    *p++ = (char)(0xa0 | n);
    memcpy(p, text, n);
    return p + n;
}

static char *mp_side_rows(Side *s, char *p) {
    for (Py_ssize_t i = s->n - 1; i >= 0; i--)
        for (Order *o = s->lv[i]->head; o; o = o->next) {
            *p++ = (char)0x96;
            p = mp_int(p, o->id);
            p = mp_int(p, o->user_id);
            p = mp_fixstr(p, SIDE_NAMES[o->side]);
            p = mp_int(p, s->lv[i]->price);
            p = mp_int(p, o->remaining);
            p = mp_fixstr(p, TIF_NAMES[o->tif]);
        }
    return p;
}

#define MP_ROW_MAX (1 + 9 + 9 + 5 + 9 + 9 + 4)

/* snapshot_bytes(head) -> head + the resting orders as a msgpack array (bids best first, then asks,
   FIFO per level), where head is msgspec's encoding of the snapshot up to its `orders` value: the
   bytes engine/snapshot.py's encode_snapshot writes for the same state. The rows are written with
   the GIL released (only this call's thread touches the core), so a large book's snapshot does not
   hold up the process's other threads, e.g. the lease renewal. */
static PyObject *Core_snapshot_bytes(Core *c, PyObject *head) {
    REQUIRE_INIT(c);
    if (!PyBytes_Check(head)) { PyErr_SetString(PyExc_TypeError, "head must be bytes"); return NULL; }
    size_t count = c->index.count, head_len = (size_t)PyBytes_GET_SIZE(head);
    if (count > ((size_t)PY_SSIZE_T_MAX - head_len - 5) / MP_ROW_MAX) return PyErr_NoMemory();
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head_len + 5 + count * MP_ROW_MAX));
    if (!out) return NULL;
    char *start = PyBytes_AS_STRING(out), *p = start;
    memcpy(p, PyBytes_AS_STRING(head), head_len);
    p += head_len;
    Py_BEGIN_ALLOW_THREADS
    if (count < 16) *p++ = (char)(0x90 | count);
    else if (count < 65536) { *p++ = (char)0xdc; *p++ = (char)(count >> 8); *p++ = (char)count; }
    else { *p++ = (char)0xdd; for (int i = 3; i >= 0; i--) *p++ = (char)(count >> (8 * i)); }
    p = mp_side_rows(&c->bids, p);
    p = mp_side_rows(&c->asks, p);
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&out, p - start)) return NULL;
    return out;
}

/* Put a fresh core into a snapshot's state; ValueError when a row or the bitmap does not fit. */
static PyObject *Core_load(Core *c, PyObject *args) {
    long long sequence, trade_seq, id_max;
    Py_buffer bits;
    PyObject *rows;
    REQUIRE_INIT(c);
    if (!PyArg_ParseTuple(args, "LLLy*O", &sequence, &trade_seq, &id_max, &bits, &rows)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    if (c->sequence || c->index.count) { PyErr_SetString(PyExc_ValueError, "load needs a fresh core"); goto done; }
    /* engine/snapshot.py refuses every impossible snapshot first; these are the checks the C state relies on */
    if (sequence < 0 || trade_seq < 0 || trade_seq > sequence || id_max < 0) {
        PyErr_SetString(PyExc_ValueError, "sequence, trade_seq or id_window_max out of range");
        goto done;
    }
    if (bits.len != c->ids.nbytes) {
        PyErr_Format(PyExc_ValueError, "id window bitmap has %zd bytes, expected %zd", bits.len, c->ids.nbytes);
        goto done;
    }
    seq = PySequence_Fast(rows, "rows must be a sequence");
    if (!seq) goto done;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long long id, user_id, price, remaining;
        const char *side, *tif;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "LLsLLs", &id, &user_id, &side, &price, &remaining,
                              &tif)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "bad resting order row %zd", i);
            goto done;
        }
        int side_c = strcmp(side, "buy") == 0 ? BUY : strcmp(side, "sell") == 0 ? SELL : -1;
        int tif_c = strcmp(tif, "GTC") == 0 ? TIF_GTC : strcmp(tif, "GTX") == 0 ? TIF_GTX : -1; /* what rests */
        if (side_c < 0 || tif_c < 0 || remaining <= 0 || remaining % c->lot || price <= 0 || price % c->tick ||
            id <= 0 || id > id_max || map_get(&c->index, id)) {
            PyErr_Format(PyExc_ValueError, "bad resting order id=%lld", id);
            goto done;
        }
        if (book_rest(c, id, user_id, side_c, price, remaining, tif_c, NULL)) goto done;
    }
    memcpy(c->ids.bits, bits.buf, (size_t)bits.len);
    ids_rebuild_dirty(&c->ids);
    c->ids.max_seen = id_max;
    c->sequence = sequence;
    c->trade_seq = trade_seq;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&bits);
    return result;
}

static PyObject *i128_to_py(i128 v) {
    if (v >= INT64_MIN && v <= INT64_MAX) return PyLong_FromLongLong((long long)v);
    char tmp[64];
    int n = v < 0 ? (tmp[0] = '-', 1 + fmt_u128(tmp + 1, (unsigned __int128)(-v))) : fmt_u128(tmp, (unsigned __int128)v);
    tmp[n] = 0;
    return PyLong_FromString(tmp, NULL, 10);
}

static PyObject *side_depth(Side *s, Py_ssize_t n) {
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = s->n - 1; out && i >= 0 && s->n - 1 - i < n; i--) {
        PyObject *size = i128_to_py(s->lv[i]->size);
        PyObject *row = size ? Py_BuildValue("(LN)", (long long)s->lv[i]->price, size) : NULL;
        if (!row || PyList_Append(out, row)) { Py_XDECREF(row); Py_CLEAR(out); break; }
        Py_DECREF(row);
    }
    return out;
}

static PyObject *Core_depth(Core *c, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "depth(n) needs n >= 0"); return NULL; }
    return Py_BuildValue("(NN)", side_depth(&c->bids, n), side_depth(&c->asks, n));
}

static PyObject *best_price(Side *s) {
    Level *lv = best_level(s);
    if (!lv) Py_RETURN_NONE;
    return PyLong_FromLongLong((long long)lv->price);
}

static PyObject *Core_best_bid(Core *c, PyObject *Py_UNUSED(ignored)) { return best_price(&c->bids); }
static PyObject *Core_best_ask(Core *c, PyObject *Py_UNUSED(ignored)) { return best_price(&c->asks); }

static Py_ssize_t Core_len(Core *c) { return (Py_ssize_t)c->index.count; }

static PyMethodDef Core_methods[] = {
    {"apply", (PyCFunction)(void (*)(void))Core_apply, METH_FASTCALL,
     "apply(records) -> (event bytes, [(index, DeadLetter)]): a batch of (value, time_ns) pairs or Kafka records."},
    {"export", (PyCFunction)Core_export, METH_NOARGS, "export() -> (id_window_max, id_window_bits, rows)."},
    {"id_window", (PyCFunction)Core_id_window, METH_NOARGS, "id_window() -> (id_window_max, id_window_bits)."},
    {"snapshot_bytes", (PyCFunction)Core_snapshot_bytes, METH_O,
     "snapshot_bytes(head) -> head + the resting orders as msgpack rows, as encode_snapshot writes them."},
    {"load", (PyCFunction)Core_load, METH_VARARGS, "load(sequence, trade_seq, id_window_max, bits, rows)."},
    {"depth", (PyCFunction)Core_depth, METH_O, "depth(n) -> (bids, asks) of (price, size), best first."},
    {"best_bid", (PyCFunction)Core_best_bid, METH_NOARGS, "Highest bid price (scaled) or None."},
    {"best_ask", (PyCFunction)Core_best_ask, METH_NOARGS, "Lowest ask price (scaled) or None."},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Core_members[] = {
    {"sequence", T_LONGLONG, offsetof(Core, sequence), READONLY, "last event sequence"},
    {"trade_seq", T_LONGLONG, offsetof(Core, trade_seq), READONLY, "last trade sequence"},
    {"orders_in", T_LONGLONG, offsetof(Core, orders_in), READONLY, NULL},
    {"duplicates", T_LONGLONG, offsetof(Core, duplicates), READONLY, NULL},
    {"unknown_cancels", T_LONGLONG, offsetof(Core, unknown_cancels), READONLY, NULL},
    {"rejected", T_LONGLONG, offsetof(Core, rejected), READONLY, NULL},
    {"dead_letters", T_LONGLONG, offsetof(Core, dead_letters), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PySequenceMethods Core_as_sequence = {.sq_length = (lenfunc)Core_len};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine._native.Core",
    .tp_doc = "One product's book and matching rules (engine/matching.py) in C; events as JSON bytes.",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
    .tp_as_sequence = &Core_as_sequence,
};

static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "engine._native",
                                           "The matching core in C (see engine/native.py).", -1, NULL,
                                           NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    STR_VALUE = PyUnicode_InternFromString("value");
    STR_TIMESTAMP = PyUnicode_InternFromString("timestamp");
    EMPTY_BYTES = PyBytes_FromStringAndSize(NULL, 0);
    init_plain_table();
    if (!STR_VALUE || !STR_TIMESTAMP || !EMPTY_BYTES) return NULL;
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
