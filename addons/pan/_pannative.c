/*
 * Native PAN engine: the hot path of pangate.pan.engine.Masker in one pass.
 *
 * This is a transcription of the Python reference (scan.py, sad.py and
 * Masker._apply in engine.py), rule for rule, so that for every input it
 * produces the same findings in the same order, the same masked bytes and
 * the same count. The Python modules stay the source of truth: the IIN
 * table, the allowed lengths per prefix, the unknown-brand lengths, the SAD
 * field names and the finding kind strings are passed in by native.py when
 * an Engine is built; the fixed rule constants (separators, gap width, key
 * and value caps) are exported in RULES and native.py refuses to use this
 * module if they differ from the Python ones. tests/pan/test_native_diff.py
 * holds the two engines to byte-identical output.
 *
 * Where the Python code uses a regex, the comment above the C function
 * names it; the C code follows what that regex matches (with backtracking
 * worked out by hand: every pattern here is either possessive in effect or
 * has a single way to match).
 *
 * The scan and the masking run without the GIL for buffers of
 * GIL_RELEASE_BYTES or more (immutable bytes only), so a worker thread can
 * mask a large body while the event loop keeps running.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef Py_ssize_t ssz;

#define MAX_GAP 3
#define MAXKEY 48
#define MAXVAL 128
#define GIL_RELEASE_BYTES (32 * 1024)
#define SCAN_BLOCK (32 * 1024)

enum { K_PAN, K_UNK, K_CVC, K_PIN, K_TRACKF, K_TRACK1, K_TRACK2, NKINDS };

/* ---- byte classes (scan.py, sad.py) ----------------------------------- */
static unsigned char RUNCH[256], ISSEP[256], ISDIG[256], GLUE[256], HEXGLUE[256], CLS[256],
    KEYCH[256], AFTER_KEY[256], LOWER_DIGIT[256], UPPER[256], LOWER[256], KV_STOP[256],
    TRACK_LEAD[256], T1_NAME[256], T1_DISC[256], WS4[256];

static const char SEPS[] = " -._/\t\r\n\\";

static void init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        int dig = c >= '0' && c <= '9';
        int up = c >= 'A' && c <= 'Z', lo = c >= 'a' && c <= 'z';
        int sep = c && strchr(SEPS, c) != NULL;
        ISDIG[c] = dig;
        ISSEP[c] = sep;
        RUNCH[c] = dig || sep;
        GLUE[c] = dig || up || lo || c == '*';
        HEXGLUE[c] = dig || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f') || c == '*';
        CLS[c] = GLUE[c] ? 1 : c == '.' ? 2 : c == '-' ? 3 : c == '+' ? 4 : 0;
        KEYCH[c] = dig || up || lo || c == '_' || c == '-';
        AFTER_KEY[c] = c && strchr("\"']%:= \t>", c) != NULL;
        LOWER_DIGIT[c] = lo || dig;
        UPPER[c] = up;
        LOWER[c] = lo;
        /* _KV_VAL's bare value: [^\s,;&"'<>{}()\[\]] (bytes \s: space, \t\n\v\f\r) */
        KV_STOP[c] = c == ' ' || (c >= 9 && c <= 13) || (c && strchr(",;&\"'<>{}()[]", c) != NULL);
        TRACK_LEAD[c] = c == ';' || c == 'B' || c == 'b';
        T1_NAME[c] = !(c == '^' || c == '?' || c == '\r' || c == '\n');
        T1_DISC[c] = !(c == '?' || c == '\r' || c == '\n' || c == '"' || c == '\'' || c == '<' || c == '>' ||
                       c == '&' || c == ',' || c == ';');
        WS4[c] = c == ' ' || c == '\t' || c == '\r' || c == '\n';
    }
}

/* ---- SHA-256 / HMAC (mode hmac) --------------------------------------- */
typedef struct { uint32_t h[8]; uint64_t len; unsigned char buf[64]; size_t n; } Sha;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, k) (((x) >> (k)) | ((x) << (32 - (k))))

static void sha_block(uint32_t *h, const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, hh;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha_init(Sha *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->n = 0;
}

static void sha_update(Sha *s, const unsigned char *p, size_t n)
{
    s->len += n;
    while (n) {
        size_t k = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, k);
        s->n += k; p += k; n -= k;
        if (s->n == 64) { sha_block(s->h, s->buf); s->n = 0; }
    }
}

static void sha_final(Sha *s, unsigned char out[32])
{
    uint64_t bits = s->len * 8;
    unsigned char pad = 0x80, zero = 0, lenb[8];
    sha_update(s, &pad, 1);
    while (s->n != 56) sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha_update(s, lenb, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24); out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8); out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

/* ---- the engine object ------------------------------------------------- */
typedef struct { char lo[8], hi[8]; uint32_t mask; int brand; } Row;

typedef struct { char name[32]; int len; int kind; } SadName;

typedef struct {
    PyObject_HEAD
    int bin6, sad, strict, hmac;
    Sha inner, outer; /* HMAC states after the padded key block */
    uint32_t len2[100];
    uint32_t unk_lengths;
    Row *rows;
    int rowstart[101];
    int nbrands, unknown_idx, card_idx;
    PyObject **brand_str, **label1, **label2; /* per brand index; label = "<brand> track1/2" */
    SadName names[64];
    int nnames;
    PyObject *kinds[NKINDS];
    int krank[NKINDS];
} Engine;

/* A finding: (s, e, ms, me, kind, info) of the Python engine; info is
 * rebuilt from brand (an index) and the digits. */
typedef struct {
    ssz s, e, ms, me;
    int kind, brand, nd;
    char d[20];
} Find;

typedef struct { Find *v; ssz n, cap; int nsad; int oom; } Finds;

static Find *push(Finds *F)
{
    if (F->n == F->cap) {
        ssz cap = F->cap ? F->cap * 2 : 64;
        Find *v = realloc(F->v, (size_t)cap * sizeof(Find));
        if (!v) { F->oom = 1; return NULL; }
        F->v = v;
        F->cap = cap;
    }
    return &F->v[F->n++];
}

/* iin.lookup: the brand whose IIN range and allowed lengths fit the digits. */
static int lookup(const Engine *E, const char *d, ssz n)
{
    if (n < 2 || n > 31) return -1;
    int p2 = (d[0] - '0') * 10 + (d[1] - '0');
    int plen = n < 8 ? (int)n : 8;
    for (int r = E->rowstart[p2]; r < E->rowstart[p2 + 1]; r++) {
        const Row *R = &E->rows[r];
        if ((R->mask >> n) & 1 && memcmp(R->lo, d, plen) <= 0 && memcmp(d, R->hi, plen) <= 0)
            return R->brand;
    }
    return -1;
}

/* iin.unknown_brand (Luhn is the caller's check). */
static int unknown_brand(const Engine *E, const char *d, ssz n)
{
    if (n > 31 || !((E->unk_lengths >> n) & 1) || !(d[0] >= '2' && d[0] <= '6')) return 0;
    if (d[0] == '2' && (d[1] == '0' || d[1] == '1')) {
        int mm = (d[4] - '0') * 10 + (d[5] - '0'), dd = (d[6] - '0') * 10 + (d[7] - '0');
        if (mm >= 1 && mm <= 12 && dd >= 1 && dd <= 31) return 0;
    }
    return 1;
}

static int len2_ok(const Engine *E, const char *d, ssz n)
{
    if (n < 2 || n > 31) return 0;
    return (E->len2[(d[0] - '0') * 10 + (d[1] - '0')] >> n) & 1;
}

static int luhn(const char *d, ssz n)
{
    static const int dbl[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
    int sum = 0;
    for (ssz k = 0; k < n; k++) {
        int v = d[k] - '0';
        sum += ((n - k) % 2 == 0) ? dbl[v] : v;
    }
    return sum % 10 == 0;
}

/* scan._bounded */
static int bounded(const unsigned char *b, ssz n, ssz s, ssz e, ssz ndig)
{
    if (s) {
        int k = CLS[b[s - 1]];
        if (k) {
            if (k == 1 || (k == 4 && ndig <= 15)) return 0;
            if (k != 4 && s >= 2 && (k == 2 ? GLUE : HEXGLUE)[b[s - 2]]) return 0;
        }
    }
    if (e < n) {
        int k = CLS[b[e]];
        if (k == 1) return 0;
        if ((k == 2 || k == 3) && e + 1 < n && (k == 2 ? GLUE : HEXGLUE)[b[e + 1]]) return 0;
    }
    return 1;
}

static ssz digit_run(const unsigned char *b, ssz n, ssz i, ssz cap)
{
    ssz k = 0;
    while (i + k < n && k < cap && ISDIG[b[i + k]]) k++;
    return k;
}

/* sad.track_at, with _TRACK1 = %[Bb][0-9]{12,19}\^[^^?\r\n]{2,26}\^[0-9]{4}[^?\r\n"'<>&,;]{0,60}\??
 * and _TRACK2 = ;[0-9]{12,19}=[0-9]{4}[0-9]{0,24}\?? matched at the track lead. */
static int track_at(const Engine *E, const unsigned char *b, ssz n, ssz s, ssz base, ssz stop, Finds *F)
{
    int c = b[s - 1];
    ssz st, q, d1 = digit_run(b, n, s, 20);
    if (d1 < 12 || d1 > 19) return 0;
    if (c == ';') {
        st = s - 1;
        q = s + d1;
        if (q >= n || b[q] != '=') return 0;
        q++;
        ssz d2 = digit_run(b, n, q, 28);
        if (d2 < 4) return 0;
        q += d2;
    } else if ((c == 'B' || c == 'b') && s >= 2 && b[s - 2] == '%') {
        st = s - 2;
        q = s + d1;
        if (q >= n || b[q] != '^') return 0;
        q++;
        ssz l = 0;
        while (q + l < n && l < 27 && T1_NAME[b[q + l]]) l++;
        if (l < 2 || l > 26 || q + l >= n || b[q + l] != '^') return 0;
        q += l + 1;
        if (digit_run(b, n, q, 4) < 4) return 0;
        q += 4;
        l = 0;
        while (q + l < n && l < 60 && T1_DISC[b[q + l]]) l++;
        q += l;
    } else {
        return 0;
    }
    if (q < n && b[q] == '?') q++;
    if (!(base <= st && st < stop)) return 0;
    Find *f = push(F);
    if (!f) return 1;
    int br = lookup(E, (const char *)b + s, d1);
    f->s = st; f->e = q; f->ms = st + 1; f->me = q - (b[q - 1] == '?');
    f->kind = c == ';' ? K_TRACK2 : K_TRACK1;
    f->brand = br >= 0 ? br : E->card_idx;
    f->nd = 0;
    return 1;
}

/* scan.Scanner._window: one candidate window s:e with these digits. */
static void window(const Engine *E, const unsigned char *b, ssz n, ssz s, ssz e, const char *d, ssz nd,
                   ssz first6, ssz last4, ssz base, ssz stop, Finds *F)
{
    if (s && TRACK_LEAD[b[s - 1]] && nd == e - s && E->sad) {
        if (track_at(E, b, n, s, base, stop, F)) return;
    }
    if (!(base <= s && s < stop)) return;
    /* No brand row and no unknown-brand length outside 12-19 (checked at init). */
    if (nd < 12 || nd > 19) return;
    if (!luhn(d, nd)) return;
    if (((s && CLS[b[s - 1]]) || (e < n && CLS[b[e]])) && !bounded(b, n, s, e, nd)) return;
    int br = lookup(E, d, nd), kind = K_PAN;
    if (br < 0) {
        if (E->strict || !unknown_brand(E, d, nd)) return;
        br = E->unknown_idx;
        kind = K_UNK;
    }
    Find *f;
    if (nd == e - s) {
        /* TRACK2_EQ = =[0-9]{7,32}(?![0-9]) */
        if (E->sad && e < n && b[e] == '=') {
            ssz k = digit_run(b, n, e + 1, 33);
            if (k >= 7 && k <= 32) {
                if (!(f = push(F))) return;
                f->s = s; f->e = e + 1 + k; f->ms = s; f->me = e + 1 + k;
                f->kind = K_TRACK2; f->brand = br; f->nd = 0;
                return;
            }
        }
        if (!(f = push(F))) return;
        f->s = s; f->e = e; f->ms = E->bin6 ? s + 6 : s; f->me = e - 4;
    } else {
        if (!(f = push(F))) return;
        f->s = s; f->e = e; f->ms = E->bin6 ? first6 : s; f->me = last4;
    }
    f->kind = kind; f->brand = br; f->nd = (int)nd;
    memcpy(f->d, d, nd);
}

/* scan.Scanner._sep_region + scan._layout: the windows of a run with
 * separators, s:e from its first to its last digit. */
static void sep_region(const Engine *E, const unsigned char *b, ssz n, ssz s, ssz e, ssz base, ssz stop,
                       Finds *F)
{
    ssz sgs[64], sge[64], scum[65];
    ssz *gs = sgs, *ge = sge, *cum = scum, ng = 0, cap = 64;
    for (ssz x = s; x < e;) {
        if (!ISDIG[b[x]]) { x++; continue; }
        ssz y = x;
        while (y < e && ISDIG[b[y]]) y++;
        if (ng == cap) {
            ssz nc = cap * 4;
            ssz *a1 = malloc(nc * sizeof(ssz)), *a2 = malloc(nc * sizeof(ssz)), *a3 = malloc((nc + 1) * sizeof(ssz));
            if (!a1 || !a2 || !a3) { free(a1); free(a2); free(a3); F->oom = 1; goto done; }
            memcpy(a1, gs, ng * sizeof(ssz)); memcpy(a2, ge, ng * sizeof(ssz)); memcpy(a3, cum, (ng + 1) * sizeof(ssz));
            if (gs != sgs) { free(gs); free(ge); free(cum); }
            gs = a1; ge = a2; cum = a3; cap = nc;
        }
        if (ng == 0) cum[0] = 0;
        gs[ng] = x; ge[ng] = y; cum[ng + 1] = cum[ng] + (y - x);
        ng++;
        x = y;
    }
    for (ssz a = 0; a < ng; a++) {
        ssz ca = cum[a];
        if (cum[ng] - ca < 12) break;
        int dots = 0, lines = 0;
        for (ssz bb = a; bb < ng; bb++) {
            if (bb > a) {
                ssz g0 = ge[bb - 1], g1 = gs[bb], glen = g1 - g0;
                if (glen > MAX_GAP) break;
                int has_dot = 0, has_line = 0;
                for (ssz x = g0; x < g1; x++) {
                    if (b[x] == '.') has_dot = 1;
                    else if (b[x] == '\n' || b[x] == '\r') has_line = 1;
                }
                if (has_dot) dots = (dots < 0 || glen != 1) ? -1 : dots + 1;
                else if (dots > 0) dots = -1;
                if (has_line) lines = 1;
            }
            ssz cb = cum[bb + 1];
            if (cb - ca > 19) break;
            if (cb - ca < 12) continue;
            if (dots < 0 || dots == 1 || (dots && bb - a < 2) || (lines && bb - a < 2)) continue;
            if (dots && bb - a != dots) continue;
            char d[20];
            ssz nd = 0, f6 = -1, l4 = -1;
            for (ssz g = a; g <= bb; g++) {
                for (ssz x = gs[g]; x < ge[g]; x++) {
                    if (nd == 5) f6 = x + 1;
                    if (nd == cb - ca - 4) l4 = x;
                    d[nd++] = (char)b[x];
                }
            }
            if (len2_ok(E, d, nd))
                window(E, b, n, gs[a], ge[bb], d, nd, f6, l4, base, stop, F);
            if (F->oom) goto done;
        }
    }
done:
    if (gs != sgs) { free(gs); free(ge); free(cum); }
}

/* One maximal run i:j of >= 12 digits/separators: scan._run_general (what
 * the _RUN regex decides), then the candidate windows. */
static void run(const Engine *E, const unsigned char *b, ssz n, ssz i, ssz j, ssz base, ssz stop, Finds *F)
{
    ssz s = i, e = j, nd = 0;
    while (s < e && ISSEP[b[s]]) s++;
    if (s == e) return;
    while (ISSEP[b[e - 1]]) e--;
    int all = 1;
    for (ssz x = s; x < e; x++) {
        if (ISDIG[b[x]]) nd++;
        else all = 0;
    }
    if (all) {
        ssz l = e - s;
        if (l >= 12 && l <= 19 && len2_ok(E, (const char *)b + s, l))
            window(E, b, n, s, e, (const char *)b + s, l, 0, 0, base, stop, F);
        else if (s == i && s && TRACK_LEAD[b[s - 1]])
            window(E, b, n, s, e, (const char *)b + s, l, 0, 0, base, stop, F);
        return;
    }
    if (nd < 12) return;
    sep_region(E, b, n, s, e, base, stop, F);
}

/* ---- SAD fields (sad.py) ----------------------------------------------- */
/* sad.sad_kind: the kind the last 1-3 words of an identifier name, or -1.
 * Words: [A-Z]+(?![a-z]) | [A-Z]?[a-z]+ | [0-9]+, lower-cased. */
static int sad_kind(const Engine *E, const unsigned char *k, ssz len)
{
    ssz ws[3] = {0}, we[3] = {0};
    int nw = 0;
    ssz i = 0;
    while (i < len) {
        ssz st = i, en;
        unsigned char c = k[i];
        if (UPPER[c]) {
            ssz u = 0;
            while (i + u < len && UPPER[k[i + u]]) u++;
            if (i + u < len && LOWER[k[i + u]]) {
                if (u >= 2) en = i + u - 1;
                else {
                    en = i + 1;
                    while (en < len && LOWER[k[en]]) en++;
                }
            } else {
                en = i + u;
            }
        } else if (LOWER[c]) {
            en = i;
            while (en < len && LOWER[k[en]]) en++;
        } else if (ISDIG[c]) {
            en = i;
            while (en < len && ISDIG[k[en]]) en++;
        } else {
            i++;
            continue;
        }
        if (nw == 3) {
            ws[0] = ws[1]; we[0] = we[1]; ws[1] = ws[2]; we[1] = we[2]; nw = 2;
        }
        ws[nw] = st; we[nw] = en; nw++;
        i = en;
    }
    if (!nw) return -1;
    for (int take = 1; take <= 3; take++) {
        char joined[MAXKEY + 8];
        ssz jl = 0;
        int from = nw - take < 0 ? 0 : nw - take;
        for (int w = from; w < nw; w++) {
            for (ssz x = ws[w]; x < we[w]; x++) {
                if (jl >= (ssz)sizeof joined) return -1;
                unsigned char c = k[x];
                joined[jl++] = (char)(UPPER[c] ? c + 32 : c);
            }
        }
        for (int m = 0; m < E->nnames; m++)
            if (E->names[m].len == jl && memcmp(E->names[m].name, joined, jl) == 0) return E->names[m].kind;
    }
    return -1;
}

static int xml_ns_open(const unsigned char *b, ssz colon)
{
    ssz k = colon;
    while (k && KEYCH[b[k - 1]] && colon - k < 32) k--;
    return k > 0 && k < colon && b[k - 1] == '<';
}

static int lower_eq(const unsigned char *p, const char *lit, ssz len)
{
    for (ssz i = 0; i < len; i++) {
        unsigned char c = p[i];
        if ((UPPER[c] ? c + 32 : c) != (unsigned char)lit[i]) return 0;
    }
    return 1;
}

/* sad._sad_at: the SAD finding whose key holds the anchor at p, or 0. */
static int sad_at(const Engine *E, const unsigned char *b, ssz n, ssz p, ssz alen, Find *out)
{
    ssz kr = p + alen, cnt = 0;
    while (kr + cnt < n && cnt < MAXKEY && KEYCH[b[kr + cnt]]) cnt++;
    ssz ke = kr + cnt;
    if (cnt >= MAXKEY || ke >= n || !AFTER_KEY[b[ke]]) return 0;
    ssz ks = p;
    while (ks && KEYCH[b[ks - 1]]) {
        ks--;
        if (ke - ks > MAXKEY) return 0;
    }
    if (b[ks] == '5' && (b[ks + 1] == 'B' || b[ks + 1] == 'b') && ks && b[ks - 1] == '%') ks += 2;
    int kind = sad_kind(E, b + ks, ke - ks);
    if (kind < 0) return 0;
    ssz vs, ve;
    if (ks && (b[ks - 1] == '<' || (b[ks - 1] == ':' && xml_ns_open(b, ks - 1)))) {
        /* _XML_VAL = (?:[ \t\r\n][^<>]{0,32})?>([^<]{1,128}) */
        ssz k;
        if (WS4[b[ke]]) {
            ssz l = 0;
            while (ke + 1 + l < n && l < 33 && b[ke + 1 + l] != '<' && b[ke + 1 + l] != '>') l++;
            if (l > 32 || ke + 1 + l >= n || b[ke + 1 + l] != '>') return 0;
            k = ke + 1 + l + 1;
        } else if (b[ke] == '>') {
            k = ke + 1;
        } else {
            return 0;
        }
        ssz l = 0;
        while (k + l < n && l < MAXVAL && b[k + l] != '<') l++;
        if (!l) return 0;
        vs = k; ve = k + l;
    } else {
        /* _KV_VAL = (?:["'\]]|%5[Dd])?[ \t]{0,8}[:=][ \t]{0,8}(?:\r?\n[ \t]{0,16})?
         *           (?:"((?:[^"\\\r\n]|\\.){0,128})|'([^'\r\n]{0,128})|([^\s,;&"'<>{}()\[\]]{1,128})) */
        ssz k = ke, l;
        if (b[k] == '"' || b[k] == '\'' || b[k] == ']') k++;
        else if (k + 2 < n && b[k] == '%' && b[k + 1] == '5' && (b[k + 2] == 'D' || b[k + 2] == 'd')) k += 3;
        for (l = 0; k + l < n && (b[k + l] == ' ' || b[k + l] == '\t'); l++) ;
        if (l > 8) return 0;
        k += l;
        if (k >= n || (b[k] != ':' && b[k] != '=')) return 0;
        k++;
        for (l = 0; k + l < n && (b[k + l] == ' ' || b[k + l] == '\t'); l++) ;
        if (l > 8) return 0;
        k += l;
        ssz nl = 0;
        if (k < n && b[k] == '\n') nl = 1;
        else if (k + 1 < n && b[k] == '\r' && b[k + 1] == '\n') nl = 2;
        if (nl) {
            for (l = 0; k + nl + l < n && (b[k + nl + l] == ' ' || b[k + nl + l] == '\t'); l++) ;
            if (l > 16) return 0;
            k += nl + l;
        }
        if (k >= n) return 0;
        if (b[k] == '"') {
            ssz j = k + 1, units = 0;
            while (j < n && units < MAXVAL) {
                unsigned char c = b[j];
                if (c != '"' && c != '\\' && c != '\r' && c != '\n') { j++; units++; }
                else if (c == '\\' && j + 1 < n && b[j + 1] != '\n') { j += 2; units++; }
                else break;
            }
            vs = k + 1; ve = j;
        } else if (b[k] == '\'') {
            ssz j = k + 1;
            while (j < n && j - k - 1 < MAXVAL && b[j] != '\'' && b[j] != '\r' && b[j] != '\n') j++;
            vs = k + 1; ve = j;
        } else {
            ssz j = k;
            while (j < n && j - k < MAXVAL && !KV_STOP[b[j]]) j++;
            if (j == k) return 0;
            vs = k; ve = j;
            ssz vl = ve - vs;
            if ((vl == 4 && (lower_eq(b + vs, "null", 4) || lower_eq(b + vs, "true", 4))) ||
                (vl == 5 && lower_eq(b + vs, "false", 5)))
                return 0;
        }
    }
    if (ve <= vs) return 0;
    out->s = ks; out->e = ve; out->ms = vs; out->me = ve;
    out->kind = kind; out->brand = -1; out->nd = 0;
    return 1;
}

/* sad.scan_sad over anchors at base <= p < hi: cvv/cvc/cid/csc, pin, track,
 * security (case-insensitive) at a word start or camelCase boundary. */
static inline void sad_try(const Engine *E, const unsigned char *b, ssz n, ssz p, ssz base, ssz stop,
                           ssz *last, Finds *F)
{
    unsigned char c0 = b[p] | 0x20;
    ssz alen;
    if (c0 == 'c') {
        if (p + 3 > n) return;
        if (!(lower_eq(b + p, "cvv", 3) || lower_eq(b + p, "cvc", 3) || lower_eq(b + p, "cid", 3) ||
              lower_eq(b + p, "csc", 3)))
            return;
        alen = 3;
    } else if (c0 == 'p') {
        if (p + 3 > n || !lower_eq(b + p, "pin", 3)) return;
        alen = 3;
    } else if (c0 == 't') {
        if (p + 5 > n || !lower_eq(b + p, "track", 5)) return;
        alen = 5;
    } else if (c0 == 's') {
        if (p + 8 > n || !lower_eq(b + p, "security", 8)) return;
        alen = 8;
    } else {
        return;
    }
    unsigned char pc = p ? b[p - 1] : ' ';
    if (GLUE[pc] && !(LOWER_DIGIT[pc] && UPPER[b[p]])) return;
    Find f;
    if (!sad_at(E, b, n, p, alen, &f)) return;
    if (!(base <= f.s && f.s < stop) || f.s == *last) return;
    /* Every anchor of one key yields this same finding, and keys come in
     * order: comparing with the last start is the Python `seen` set. */
    Find *g = push(F);
    if (!g) return;
    *g = f;
    *last = f.s;
    F->nsad++;
}

/* Anchors at lo <= p < hi (hi <= n); *last is the start of the last SAD
 * finding taken, across calls. */
static void scan_sad(const Engine *E, const unsigned char *b, ssz n, ssz lo, ssz hi, ssz base, ssz stop,
                     ssz *lastp, Finds *F)
{
    ssz last = *lastp, p = lo;
#ifdef __SSE2__
    /* 16 positions at a time: the first two letters of an anchor (cv, ci,
     * cs, pi, tr, se, case-folded with | 0x20); hits are checked in full. */
    const __m128i c20 = _mm_set1_epi8(0x20), cc = _mm_set1_epi8('c'), cv = _mm_set1_epi8('v'),
                  ci = _mm_set1_epi8('i'), cs = _mm_set1_epi8('s'), cp = _mm_set1_epi8('p'),
                  ct = _mm_set1_epi8('t'), cr = _mm_set1_epi8('r'), ce = _mm_set1_epi8('e');
    while (p + 17 <= hi) {
        __m128i x0 = _mm_or_si128(_mm_loadu_si128((const __m128i *)(b + p)), c20);
        __m128i x1 = _mm_or_si128(_mm_loadu_si128((const __m128i *)(b + p + 1)), c20);
        __m128i m = _mm_and_si128(_mm_cmpeq_epi8(x0, cc),
                                  _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x1, cv), _mm_cmpeq_epi8(x1, ci)),
                                               _mm_cmpeq_epi8(x1, cs)));
        m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x0, cp), _mm_cmpeq_epi8(x1, ci)));
        m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x0, ct), _mm_cmpeq_epi8(x1, cr)));
        m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x0, cs), _mm_cmpeq_epi8(x1, ce)));
        unsigned mask = (unsigned)_mm_movemask_epi8(m);
        while (mask) {
            int k = __builtin_ctz(mask);
            sad_try(E, b, n, p + k, base, stop, &last, F);
            mask &= mask - 1;
        }
        p += 16;
    }
#endif
    for (; p < hi; p++) {
        unsigned char c0 = b[p] | 0x20;
        if (c0 == 'c' || c0 == 'p' || c0 == 't' || c0 == 's') sad_try(E, b, n, p, base, stop, &last, F);
    }
    *lastp = last;
}

/* ---- the scan: scan.Scanner.scan --------------------------------------- */
static int cmp_rank[NKINDS];

static int find_cmp(const void *x, const void *y)
{
    const Find *a = x, *b = y;
    if (a->s != b->s) return a->s < b->s ? -1 : 1;
    if (a->e != b->e) return a->e < b->e ? -1 : 1;
    if (a->ms != b->ms) return a->ms < b->ms ? -1 : 1;
    if (a->me != b->me) return a->me < b->me ? -1 : 1;
    if (a->kind != b->kind) return cmp_rank[a->kind] < cmp_rank[b->kind] ? -1 : 1;
    return 0;
}

#ifdef __SSE2__
/* 16 flags: byte is a digit or separator (scan.SEPS). */
static inline unsigned runch16(const unsigned char *p)
{
    __m128i x = _mm_loadu_si128((const __m128i *)p);
    /* "-./0123456789" is 0x2D..0x39: one signed range compare after a bias */
    __m128i r = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - 0x2D))), _mm_set1_epi8((char)(0x80 - 0x2D + 13)));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8(' ')));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8('_')));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8('\t')));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8('\n')));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8('\r')));
    r = _mm_or_si128(r, _mm_cmpeq_epi8(x, _mm_set1_epi8('\\')));
    return (unsigned)_mm_movemask_epi8(r);
}
#endif

static int scan(const Engine *E, const unsigned char *b, ssz n, ssz base, ssz stop, Finds *F)
{
    if (base < 0) base = 0;
    if (stop > n) stop = n;
    ssz pos = base;
    if (base && RUNCH[b[base - 1]]) {  /* a run straddles base: start at its head */
        pos = base - 1;
        while (pos && RUNCH[b[pos - 1]]) pos--;
    }
    ssz endr = stop + 2;  /* a track finding starts 2 bytes before its PAN */
    ssz sadhi = stop + MAXKEY < n ? stop + MAXKEY : n, sadlast = -1;
    /* Every maximal run of >= 12 digits/separators starting in [pos, endr),
     * and the SAD anchors in [base, sadhi), walked in cache-sized blocks so
     * both read each block from cache. k is always at a run head or right
     * after a byte that is not in a run; a run of 12 covers k + 11 if it
     * starts in [k, k + 11]. */
    ssz k = pos;
    for (ssz blk = pos; blk < endr || (E->sad && blk < sadhi); blk += SCAN_BLOCK) {
        ssz lim = blk + SCAN_BLOCK < endr ? blk + SCAN_BLOCK : endr;
        while (k < lim && k + 12 <= n) {
#ifdef __SSE2__
            /* 16 positions at a time while no 12 flags in a row: r has bit i
             * for a run at k + i. */
            if (k + 32 <= n) {
                unsigned m = runch16(b + k) | (runch16(b + k + 16) << 16);
                unsigned r = m & (m >> 1);
                r &= r >> 2;
                r &= r >> 4;
                r &= (m >> 8) & (m >> 9) & (m >> 10) & (m >> 11);
                if (!(r & 0xFFFF)) {
                    /* No run starts in k..k+15. k + 16 may sit inside a
                     * sequence of digits/separators that started there, but
                     * that one is shorter than 12 (or a run would start in
                     * k..k+15), so it cannot be taken for a run's head. */
                    k += 16;
                    continue;
                }
            }
#endif
            if (!RUNCH[b[k + 11]]) { k += 12; continue; }
            ssz j = k + 11;
            while (j > k && RUNCH[b[j - 1]]) j--;
            ssz e = k + 12;
            while (e < n && RUNCH[b[e]]) e++;
            if (e - j >= 12) {
                if (j >= lim) {  /* the next block's (or past the range) */
                    k = j;
                    break;
                }
                run(E, b, n, j, e, base, stop, F);
                if (F->oom) return -1;
            }
            k = e + 1;
        }
        if (E->sad) {
            ssz lo = blk > base ? blk : base, hi = blk + SCAN_BLOCK < sadhi ? blk + SCAN_BLOCK : sadhi;
            if (lo < hi) scan_sad(E, b, n, lo, hi, base, stop, &sadlast, F);
        }
        if (F->oom) return -1;
    }
    if (F->oom) return -1;
    if (F->nsad) qsort(F->v, F->n, sizeof(Find), find_cmp);
    return 0;
}

/* ---- masking: Masker._apply --------------------------------------------- */
static const char TOKEN_ALPHABET[] = "abcdefABCDEF";

static void token(const Engine *E, const unsigned char *src, ssz len, const Find *f, unsigned char *dst)
{
    static const char prefix[] = "pangate-pan-v1:";
    unsigned char dig[32];
    Sha s = E->inner;
    sha_update(&s, (const unsigned char *)prefix, sizeof prefix - 1);
    sha_update(&s, (const unsigned char *)f->d, f->nd);
    sha_final(&s, dig);
    Sha o = E->outer;
    sha_update(&o, dig, 32);
    sha_final(&o, dig);
    /* num = int.from_bytes(digest, "big"); each digit: num, r = divmod(num, 12) */
    for (ssz k = 0; k < len; k++) {
        unsigned char ch = src[k];
        if (ch >= '0' && ch <= '9') {
            unsigned rem = 0;
            for (int i = 0; i < 32; i++) {
                unsigned cur = rem * 256 + dig[i];
                dig[i] = (unsigned char)(cur / 12);
                rem = cur % 12;
            }
            dst[k] = (unsigned char)TOKEN_ALPHABET[rem];
        } else {
            dst[k] = ch;
        }
    }
}

typedef struct { ssz s, e; } Span;

static int span_cmp(const void *x, const void *y)
{
    const Span *a = x, *b = y;
    return a->s < b->s ? -1 : a->s > b->s ? 1 : 0;
}

static int is_pan(int kind) { return kind == K_PAN || kind == K_UNK; }

/* The count of Masker._apply: _counted(finds) plus the SAD spans that hold
 * something other than "*" (those also in *sad). Returns -1 on memory exhaustion. */
static ssz count_finds(const unsigned char *b, const Finds *F, ssz *sad)
{
    ssz nz = 0, count = 0, last_end = -1;
    *sad = 0;
    for (ssz i = 0; i < F->n; i++)
        if (!is_pan(F->v[i].kind)) nz++;
    if (!nz) {
        for (ssz i = 0; i < F->n; i++)
            if (F->v[i].s >= last_end) { count++; last_end = F->v[i].e; }
        return count;
    }
    Span *z = malloc((size_t)nz * sizeof(Span));
    ssz *pmax = malloc((size_t)nz * sizeof(ssz));
    if (!z || !pmax) { free(z); free(pmax); return -1; }
    ssz m = 0;
    for (ssz i = 0; i < F->n; i++) {
        const Find *f = &F->v[i];
        if (is_pan(f->kind)) continue;
        z[m].s = f->s; z[m].e = f->e; m++;
        for (ssz x = f->ms; x < f->me; x++)
            if (b[x] != '*') { count++; break; }
    }
    *sad = count;
    qsort(z, nz, sizeof(Span), span_cmp);
    for (ssz i = 0; i < nz; i++) pmax[i] = i && pmax[i - 1] > z[i].e ? pmax[i - 1] : z[i].e;
    for (ssz i = 0; i < F->n; i++) {
        const Find *f = &F->v[i];
        if (!is_pan(f->kind) || f->s < last_end) continue;
        /* inside a SAD/track span: some zs <= s with ze >= e */
        ssz lo = 0, hi = nz;
        while (lo < hi) {
            ssz mid = (lo + hi) / 2;
            if (z[mid].s <= f->s) lo = mid + 1;
            else hi = mid;
        }
        if (lo && pmax[lo - 1] >= f->e) continue;
        count++;
        last_end = f->e;
    }
    free(z);
    free(pmax);
    return count;
}

/* Masked bytes of b[base:c] into out (c - base bytes). */
static void apply(const Engine *E, const unsigned char *b, ssz base, ssz c, const Finds *F, unsigned char *out)
{
    memcpy(out, b + base, c - base);
    for (ssz i = 0; i < F->n; i++) {
        const Find *f = &F->v[i];
        if (!is_pan(f->kind)) continue;
        if (E->hmac) {
            token(E, b + f->ms, f->me - f->ms, f, out + (f->ms - base));
        } else {
            for (ssz x = f->ms; x < f->me; x++)
                if (ISDIG[b[x]]) out[x - base] = '*';
        }
    }
    for (ssz i = 0; i < F->n; i++) {
        const Find *f = &F->v[i];
        if (!is_pan(f->kind)) memset(out + (f->ms - base), '*', f->me - f->ms);
    }
}

/* ---- Python glue ---------------------------------------------------------- */
static PyObject *info_of(const Engine *E, const Find *f)
{
    if (is_pan(f->kind))
        return Py_BuildValue("(Oy#)", E->brand_str[f->brand], f->d, (Py_ssize_t)f->nd);
    if (f->kind == K_TRACK1 || f->kind == K_TRACK2)
        return Py_BuildValue("(OO)", (f->kind == K_TRACK1 ? E->label1 : E->label2)[f->brand], Py_None);
    Py_RETURN_NONE;
}

static PyObject *finds_list(const Engine *E, const Finds *F)
{
    PyObject *list = PyList_New(F->n);
    if (!list) return NULL;
    for (ssz i = 0; i < F->n; i++) {
        const Find *f = &F->v[i];
        PyObject *info = info_of(E, f);
        if (!info) { Py_DECREF(list); return NULL; }
        PyObject *t = Py_BuildValue("(nnnnON)", f->s, f->e, f->ms, f->me, E->kinds[f->kind], info);
        if (!t) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

static int run_scan(const Engine *E, Py_buffer *v, int nogil, ssz base, ssz stop, Finds *F)
{
    int rc;
    if (nogil) {
        Py_BEGIN_ALLOW_THREADS
        rc = scan(E, v->buf, v->len, base, stop, F);
        Py_END_ALLOW_THREADS
    } else {
        rc = scan(E, v->buf, v->len, base, stop, F);
    }
    if (rc < 0) PyErr_NoMemory();
    return rc;
}

static int check_range(Py_buffer *v, ssz base, ssz stop)
{
    if (base < 0 || stop < base || stop > v->len) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= base <= stop <= len(buf)");
        return -1;
    }
    return 0;
}

/* (bytes of buf[base:c] masked, count, the SAD values among count) for the findings in F. */
static PyObject *masked(const Engine *E, PyObject *obj, Py_buffer *v, int nogil, ssz base, ssz c, Finds *F)
{
    if (!F->n) {
        if (base == 0 && c == v->len && PyBytes_CheckExact(obj)) return Py_BuildValue("(Oii)", obj, 0, 0);
        return Py_BuildValue("(y#ii)", (const char *)v->buf + base, c - base, 0, 0);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, c - base);
    if (!out) return NULL;
    ssz count, sad;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    if (nogil) {
        Py_BEGIN_ALLOW_THREADS
        apply(E, v->buf, base, c, F, o);
        count = count_finds(v->buf, F, &sad);
        Py_END_ALLOW_THREADS
    } else {
        apply(E, v->buf, base, c, F, o);
        count = count_finds(v->buf, F, &sad);
    }
    if (count < 0) { Py_DECREF(out); return PyErr_NoMemory(); }
    return Py_BuildValue("(Nnn)", out, count, sad);
}

static PyObject *Engine_scan(Engine *E, PyObject *args)
{
    PyObject *obj;
    ssz base, stop;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "Onn", &obj, &base, &stop)) return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    Finds F = {0};
    if (check_range(&v, base, stop) == 0 &&
        run_scan(E, &v, PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES, base, stop, &F) == 0)
        res = finds_list(E, &F);
    free(F.v);
    PyBuffer_Release(&v);
    return res;
}

/* mask(buf, base, stop) -> (masked buf[base:stop], count, sad): Masker.mask on a range. */
static PyObject *Engine_mask(Engine *E, PyObject *args)
{
    PyObject *obj;
    ssz base, stop;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "Onn", &obj, &base, &stop)) return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    Finds F = {0};
    int nogil = PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES;
    if (check_range(&v, base, stop) == 0 && run_scan(E, &v, nogil, base, stop, &F) == 0)
        res = masked(E, obj, &v, nogil, base, stop, &F);
    free(F.v);
    PyBuffer_Release(&v);
    return res;
}

/* stream_round(buf, base, limit, max_pending): one StreamMasker.feed round.
 * None: hold everything (no safe cut yet); False: the cut had to be forced
 * (a chain of overlapping findings longer than max_pending), which the
 * Python code handles; else (masked buf[base:c], count, c, sad). */
static PyObject *Engine_stream_round(Engine *E, PyObject *args)
{
    PyObject *obj;
    ssz base, limit, max_pending;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "Onnn", &obj, &base, &limit, &max_pending)) return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = NULL;
    Finds F = {0};
    int nogil = PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES;
    if (check_range(&v, base, limit) == 0 && run_scan(E, &v, nogil, base, limit, &F) == 0) {
        ssz c = limit;
        for (ssz i = F.n - 1; i >= 0; i--)
            if (F.v[i].s < c && c < F.v[i].e) c = F.v[i].s;
        if (c <= base) {
            res = v.len - base < max_pending ? Py_None : Py_False;
            Py_INCREF(res);
        } else {
            ssz keep = 0;
            for (ssz i = 0; i < F.n; i++)
                if (F.v[i].s < c) F.v[keep++] = F.v[i];
            F.n = keep;
            PyObject *m = masked(E, obj, &v, nogil, base, c, &F);
            if (m) {
                res = Py_BuildValue("(OOnO)", PyTuple_GET_ITEM(m, 0), PyTuple_GET_ITEM(m, 1), c,
                                    PyTuple_GET_ITEM(m, 2));
                Py_DECREF(m);
            }
        }
    }
    free(F.v);
    PyBuffer_Release(&v);
    return res;
}

/* has_pan(buf): any PAN finding (the DLP yes/no). */
static PyObject *Engine_has_pan(Engine *E, PyObject *args)
{
    PyObject *obj;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    Finds F = {0};
    PyObject *res = NULL;
    if (run_scan(E, &v, PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES, 0, v.len, &F) == 0) {
        int any = 0;
        for (ssz i = 0; i < F.n && !any; i++) any = is_pan(F.v[i].kind);
        res = PyBool_FromLong(any);
    }
    free(F.v);
    PyBuffer_Release(&v);
    return res;
}

static int digits_ok(PyObject *o, Py_ssize_t want)
{
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != want) return 0;
    for (Py_ssize_t i = 0; i < want; i++)
        if (!ISDIG[(unsigned char)PyBytes_AS_STRING(o)[i]]) return 0;
    return 1;
}

static PyObject *concat_label(PyObject *brand, const char *suffix)
{
    return PyUnicode_FromFormat("%U %s", brand, suffix);
}

/* Engine(bin6, sad, strict_brand, hmac_key, iin_index, len2, unknown_lengths,
 *        sad_kind_of, kinds): kinds = (PAN, PAN_UNKNOWN_BRAND, CVC, PIN,
 *        TRACK_FIELD, TRACK1, TRACK2), the strings of kinds.py. */
static int Engine_init(Engine *E, PyObject *args, PyObject *kw)
{
    int bin6, sad, strict;
    PyObject *key, *iin, *len2, *sadnames, *kinds;
    unsigned long long unk;
    if (!PyArg_ParseTuple(args, "pppOO!O!KO!O!", &bin6, &sad, &strict, &key, &PyDict_Type, &iin, &PyDict_Type,
                          &len2, &unk, &PyDict_Type, &sadnames, &PyTuple_Type, &kinds))
        return -1;
    E->bin6 = bin6; E->sad = sad; E->strict = strict;
    if (unk >> 20 || unk & 0xFFF) {
        PyErr_SetString(PyExc_ValueError, "unknown-brand lengths outside 12-19");
        return -1;
    }
    E->unk_lengths = (uint32_t)unk;
    /* kinds */
    if (PyTuple_GET_SIZE(kinds) != NKINDS) { PyErr_SetString(PyExc_ValueError, "kinds"); return -1; }
    for (int i = 0; i < NKINDS; i++) {
        PyObject *k = PyTuple_GET_ITEM(kinds, i);
        if (!PyUnicode_Check(k)) { PyErr_SetString(PyExc_TypeError, "kinds are str"); return -1; }
        Py_INCREF(k);
        Py_XSETREF(E->kinds[i], k);
    }
    for (int i = 0; i < NKINDS; i++) {  /* rank = position in sorted order of the strings */
        int r = 0;
        for (int j = 0; j < NKINDS; j++) {
            int c = PyUnicode_Compare(E->kinds[j], E->kinds[i]);
            if (c == -1 && PyErr_Occurred()) return -1;
            if (c < 0) r++;
        }
        E->krank[i] = r;
        cmp_rank[i] = r;  /* the same strings for every engine: kinds.py */
    }
    /* hmac key */
    if (key != Py_None) {
        char *kb;
        Py_ssize_t kl;
        if (PyBytes_AsStringAndSize(key, &kb, &kl) < 0) return -1;
        unsigned char block[64] = {0}, pad[64];
        if (kl > 64) {
            Sha s;
            sha_init(&s);
            sha_update(&s, (unsigned char *)kb, kl);
            sha_final(&s, block);
        } else {
            memcpy(block, kb, kl);
        }
        for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
        sha_init(&E->inner);
        sha_update(&E->inner, pad, 64);
        for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5c;
        sha_init(&E->outer);
        sha_update(&E->outer, pad, 64);
        E->hmac = 1;
    } else {
        E->hmac = 0;
    }
    /* len2 */
    memset(E->len2, 0, sizeof E->len2);
    PyObject *k, *val;
    Py_ssize_t pos = 0;
    while (PyDict_Next(len2, &pos, &k, &val)) {
        if (!digits_ok(k, 2)) { PyErr_SetString(PyExc_ValueError, "len2 keys are 2 digits"); return -1; }
        unsigned long long m = PyLong_AsUnsignedLongLong(val);
        if (PyErr_Occurred()) return -1;
        if (m >> 20 || m & 0xFFF) { PyErr_SetString(PyExc_ValueError, "lengths outside 12-19"); return -1; }
        const char *kb = PyBytes_AS_STRING(k);
        E->len2[(kb[0] - '0') * 10 + kb[1] - '0'] = (uint32_t)m;
    }
    /* brands and rows, in table order per prefix */
    PyObject *brands = PyDict_New(), *blist = PyList_New(0);
    if (!brands || !blist) { Py_XDECREF(brands); Py_XDECREF(blist); return -1; }
    Py_ssize_t nrows = 0;
    pos = 0;
    while (PyDict_Next(iin, &pos, &k, &val)) {
        if (!digits_ok(k, 2) || !PyList_Check(val)) { PyErr_SetString(PyExc_ValueError, "iin index"); goto fail; }
        nrows += PyList_GET_SIZE(val);
    }
    free(E->rows);
    E->rows = malloc((nrows + 1) * sizeof(Row));
    if (!E->rows) { PyErr_NoMemory(); goto fail; }
    int r = 0;
    for (int p2 = 0; p2 < 100; p2++) {
        E->rowstart[p2] = r;
        char kb[3] = {(char)('0' + p2 / 10), (char)('0' + p2 % 10), 0};
        PyObject *kk = PyBytes_FromStringAndSize(kb, 2);
        if (!kk) goto fail;
        PyObject *rows = PyDict_GetItemWithError(iin, kk);
        Py_DECREF(kk);
        if (!rows) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
            PyObject *row = PyList_GET_ITEM(rows, i), *lo, *hi, *mask, *brand;
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 4) { PyErr_SetString(PyExc_ValueError, "row"); goto fail; }
            lo = PyTuple_GET_ITEM(row, 0); hi = PyTuple_GET_ITEM(row, 1);
            mask = PyTuple_GET_ITEM(row, 2); brand = PyTuple_GET_ITEM(row, 3);
            if (!digits_ok(lo, 8) || !digits_ok(hi, 8) || !PyUnicode_Check(brand)) {
                PyErr_SetString(PyExc_ValueError, "row fields");
                goto fail;
            }
            unsigned long long m = PyLong_AsUnsignedLongLong(mask);
            if (PyErr_Occurred()) goto fail;
            if (m >> 20 || m & 0xFFF) { PyErr_SetString(PyExc_ValueError, "lengths outside 12-19"); goto fail; }
            PyObject *idx = PyDict_GetItemWithError(brands, brand);
            if (!idx) {
                if (PyErr_Occurred()) goto fail;
                idx = PyLong_FromSsize_t(PyList_GET_SIZE(blist));
                if (!idx || PyDict_SetItem(brands, brand, idx) < 0 || PyList_Append(blist, brand) < 0) {
                    Py_XDECREF(idx);
                    goto fail;
                }
                Py_DECREF(idx);
                idx = PyDict_GetItem(brands, brand);
            }
            Row *R = &E->rows[r++];
            memcpy(R->lo, PyBytes_AS_STRING(lo), 8);
            memcpy(R->hi, PyBytes_AS_STRING(hi), 8);
            R->mask = (uint32_t)m;
            R->brand = (int)PyLong_AsLong(idx);
        }
    }
    E->rowstart[100] = r;
    {
        PyObject *u = PyUnicode_FromString("unknown"), *c = PyUnicode_FromString("card");
        if (!u || !c || PyList_Append(blist, u) < 0 || PyList_Append(blist, c) < 0) {
            Py_XDECREF(u); Py_XDECREF(c);
            goto fail;
        }
        Py_DECREF(u); Py_DECREF(c);
    }
    int nb = (int)PyList_GET_SIZE(blist);
    E->nbrands = nb;
    E->unknown_idx = nb - 2;
    E->card_idx = nb - 1;
    E->brand_str = calloc(nb, sizeof(PyObject *));
    E->label1 = calloc(nb, sizeof(PyObject *));
    E->label2 = calloc(nb, sizeof(PyObject *));
    if (!E->brand_str || !E->label1 || !E->label2) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < nb; i++) {
        PyObject *bs = PyList_GET_ITEM(blist, i);
        Py_INCREF(bs);
        E->brand_str[i] = bs;
        E->label1[i] = concat_label(bs, PyUnicode_AsUTF8(E->kinds[K_TRACK1]));
        E->label2[i] = concat_label(bs, PyUnicode_AsUTF8(E->kinds[K_TRACK2]));
        if (!E->label1[i] || !E->label2[i]) goto fail;
    }
    Py_DECREF(brands);
    Py_DECREF(blist);
    brands = blist = NULL;
    /* SAD names -> kinds */
    E->nnames = 0;
    pos = 0;
    while (PyDict_Next(sadnames, &pos, &k, &val)) {
        if (!PyBytes_Check(k) || PyBytes_GET_SIZE(k) >= 32 || E->nnames >= 64) {
            PyErr_SetString(PyExc_ValueError, "SAD names");
            return -1;
        }
        int kind = -1;
        for (int i = 0; i < NKINDS; i++) {
            int c = PyObject_RichCompareBool(val, E->kinds[i], Py_EQ);
            if (c < 0) return -1;
            if (c) { kind = i; break; }
        }
        if (kind < 0 || is_pan(kind)) { PyErr_SetString(PyExc_ValueError, "SAD kind"); return -1; }
        SadName *s = &E->names[E->nnames++];
        s->len = (int)PyBytes_GET_SIZE(k);
        memcpy(s->name, PyBytes_AS_STRING(k), s->len);
        s->kind = kind;
    }
    return 0;
fail:
    Py_XDECREF(brands);
    Py_XDECREF(blist);
    return -1;
}

static void Engine_dealloc(Engine *E)
{
    for (int i = 0; i < E->nbrands; i++) {
        if (E->brand_str) Py_XDECREF(E->brand_str[i]);
        if (E->label1) Py_XDECREF(E->label1[i]);
        if (E->label2) Py_XDECREF(E->label2[i]);
    }
    free(E->brand_str);
    free(E->label1);
    free(E->label2);
    free(E->rows);
    for (int i = 0; i < NKINDS; i++) Py_XDECREF(E->kinds[i]);
    Py_TYPE(E)->tp_free((PyObject *)E);
}

/* ---- The sinks' blunt pass (pangate.sinks.scrubber._card_digits, over ASCII) ----
 *
 * blunt_stars(buf, seps) -> [(start, end), ...]: the byte ranges to star. The
 * Python pass finds runs `\d(?:SEP{0,4}\d){12,}` and, in each, every sequence
 * of whole digit groups holding 13-19 digits, first digit 2-6, Luhn-valid, and
 * stars all its digits but the first six and the last four. Over ASCII a run is
 * a chain: digit groups joined by gaps of 1-4 bytes of `seps` (the scrubber's
 * ASCII separators, passed in so the two cannot drift), with 13 digits or more;
 * a shorter chain holds no match anywhere. The Python pass stays the reference
 * (tests/sinks/test_blunt_native.py holds the two equal) and the path for text
 * that is not ASCII. */
#define BLUNT_MAX_GAP 4
#define BLUNT_GROUPS 64 /* a chain is decided in windows of this many groups */

typedef struct { ssz *v; ssz n, cap; } Ssz2;

static int ssz2_push(Ssz2 *a, ssz x, ssz y)
{
    if (a->n + 2 > a->cap) {
        ssz cap = a->cap ? a->cap * 2 : 64;
        ssz *v = realloc(a->v, (size_t)cap * sizeof(ssz));
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    a->v[a->n++] = y;
    return 0;
}

#define ISD(c) ((c) >= '0' && (c) <= '9')

/* Stars of groups gs[0..ng) of one chain (each group: start, length). */
static int blunt_groups(const unsigned char *b, const ssz *gs, const ssz *gl, int ng, Ssz2 *stars)
{
    for (int i = 0; i < ng; i++) {
        if (b[gs[i]] < '2' || b[gs[i]] > '6') {
            /* the sequence's first digit is its first group's first: none from here */
            continue;
        }
        ssz total = 0;
        for (int j = i; j < ng; j++) {
            total += gl[j];
            if (total > 19) break;
            if (total < 13) continue;
            int sum = 0, odd = 1;
            for (int g = j; g >= i; g--)
                for (ssz k = gs[g] + gl[g] - 1; k >= gs[g]; k--, odd = !odd) {
                    int d = b[k] - '0';
                    sum += odd ? d : (d < 5 ? 2 * d : 2 * d - 9);
                }
            if (sum % 10) continue;
            ssz k0 = 0;
            for (int g = i; g <= j; k0 += gl[g], g++) {
                ssz lo = 6 - k0 > 0 ? 6 - k0 : 0, hi = total - 4 - k0 < gl[g] ? total - 4 - k0 : gl[g];
                if (lo < hi && ssz2_push(stars, gs[g] + lo, gs[g] + hi) < 0) return -1;
            }
        }
    }
    return 0;
}

static int blunt_run(const unsigned char *b, ssz n, const unsigned char *issep, Ssz2 *stars)
{
    ssz gs[BLUNT_GROUPS], gl[BLUNT_GROUPS];
    ssz i = 0;
    while (i < n) {
        while (i < n && !ISD(b[i])) i++;
        if (i >= n) break;
        /* One chain from b[i]: groups while the gap to the next digit is 1-4 separators. */
        int ng = 0;
        ssz digits = 0;
        for (;;) {
            ssz s = i;
            while (i < n && ISD(b[i])) i++;
            if (ng == BLUNT_GROUPS) {
                /* A window full (64 groups: 64 digits at least): decide it, keep the last
                 * groups a sequence may still span (19 digits reach back at most 19 groups)
                 * and go on. Sequences wholly inside the kept groups are found again: starred
                 * twice, harmless (the caller takes the set of positions). */
                if (blunt_groups(b, gs, gl, ng, stars) < 0) return -1;
                int keep = 19;
                memmove(gs, gs + ng - keep, keep * sizeof(ssz));
                memmove(gl, gl + ng - keep, keep * sizeof(ssz));
                ng = keep;
            }
            gs[ng] = s;
            gl[ng] = i - s;
            ng++;
            digits += i - s;
            ssz g = i;
            while (g < n && g - i < BLUNT_MAX_GAP + 1 && issep[b[g]]) g++;
            if (g < n && g > i && g - i <= BLUNT_MAX_GAP && ISD(b[g])) {
                i = g;
                continue;
            }
            break;
        }
        if (digits >= 13 && blunt_groups(b, gs, gl, ng, stars) < 0) return -1;
    }
    return 0;
}

static PyObject *pairs_list(const Ssz2 *a)
{
    PyObject *out = PyList_New(a->n / 2);
    if (!out) return NULL;
    for (ssz k = 0; k < a->n / 2; k++) {
        PyObject *t = Py_BuildValue("(nn)", a->v[2 * k], a->v[2 * k + 1]);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, t);
    }
    return out;
}

static PyObject *blunt_stars(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_buffer v;
    const char *seps;
    Py_ssize_t nseps;
    if (!PyArg_ParseTuple(args, "Oy#", &obj, &seps, &nseps)) return NULL;
    unsigned char issep[256] = {0};
    for (Py_ssize_t k = 0; k < nseps; k++) {
        if (ISD(seps[k])) {
            PyErr_SetString(PyExc_ValueError, "a digit is not a separator");
            return NULL;
        }
        issep[(unsigned char)seps[k]] = 1;
    }
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    Ssz2 stars = {0};
    int rc;
    if (PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        rc = blunt_run(v.buf, v.len, issep, &stars);
        Py_END_ALLOW_THREADS
    } else {
        rc = blunt_run(v.buf, v.len, issep, &stars);
    }
    PyBuffer_Release(&v);
    PyObject *res = rc < 0 ? PyErr_NoMemory() : pairs_list(&stars);
    free(stars.v);
    return res;
}

/* ---- Literal probes: does any of a few lower-case needles occur in buf, ASCII case folded ----
 *
 * found_folded(buf, needles) is `any(n in buf.lower() for n in needles)` in one pass and
 * without the lowered copy: the sinks' word hints and the redactors' secret probes run it
 * over every stored body. Needles are 2 bytes or longer (the caller checks; shorter raise);
 * a table of their first two bytes keeps the per-byte work to one lookup. */
#define FOLD(c) ((unsigned char)((c) >= 'A' && (c) <= 'Z' ? (c) + 32 : (c)))
#define MAX_NEEDLES 256

static int found_run(const unsigned char *b, ssz n, const unsigned char *const *nd, const ssz *nl, int nn,
                     const unsigned char *bits)
{
    for (ssz i = 0; i + 1 < n; i++) {
        unsigned key = (unsigned)FOLD(b[i]) << 8 | FOLD(b[i + 1]);
        if (!(bits[key >> 3] & (1u << (key & 7)))) continue;
        for (int k = 0; k < nn; k++) {
            if (nd[k][0] != FOLD(b[i]) || nd[k][1] != FOLD(b[i + 1]) || nl[k] > n - i) continue;
            ssz j = 2;
            while (j < nl[k] && nd[k][j] == FOLD(b[i + j])) j++;
            if (j == nl[k]) return 1;
        }
    }
    return 0;
}

static PyObject *found_folded(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj, *needles;
    if (!PyArg_ParseTuple(args, "OO!", &obj, &PyTuple_Type, &needles)) return NULL;
    Py_ssize_t nn = PyTuple_GET_SIZE(needles);
    if (nn > MAX_NEEDLES) {
        PyErr_SetString(PyExc_ValueError, "too many needles");
        return NULL;
    }
    const unsigned char *nd[MAX_NEEDLES];
    ssz nl[MAX_NEEDLES];
    unsigned char bits[8192] = {0};
    for (Py_ssize_t k = 0; k < nn; k++) {
        PyObject *o = PyTuple_GET_ITEM(needles, k);
        if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) < 2) {
            PyErr_SetString(PyExc_ValueError, "needles are bytes of 2 or more");
            return NULL;
        }
        nd[k] = (const unsigned char *)PyBytes_AS_STRING(o);
        nl[k] = PyBytes_GET_SIZE(o);
        for (ssz j = 0; j < nl[k]; j++)
            if (FOLD(nd[k][j]) != nd[k][j]) {
                PyErr_SetString(PyExc_ValueError, "needles are lower case");
                return NULL;
            }
        unsigned key = (unsigned)nd[k][0] << 8 | nd[k][1];
        bits[key >> 3] |= (unsigned char)(1u << (key & 7));
    }
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0) return NULL;
    int found;
    /* The needles stay alive: the argument tuple holds them for the call. */
    if (PyBytes_CheckExact(obj) && v.len >= GIL_RELEASE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        found = found_run(v.buf, v.len, nd, nl, (int)nn, bits);
        Py_END_ALLOW_THREADS
    } else {
        found = found_run(v.buf, v.len, nd, nl, (int)nn, bits);
    }
    PyBuffer_Release(&v);
    return PyBool_FromLong(found);
}

static PyMethodDef module_methods[] = {
    {"blunt_stars", blunt_stars, METH_VARARGS,
     "blunt_stars(ascii buf, separators) -> [(start, end)]: what the sinks' blunt pass stars"},
    {"found_folded", found_folded, METH_VARARGS,
     "found_folded(buf, lower-case needles) -> any(n in buf.lower() for n in needles)"},
    {NULL, NULL, 0, NULL}};

static PyMethodDef Engine_methods[] = {
    {"scan", (PyCFunction)Engine_scan, METH_VARARGS, "scan(buf, base, stop) -> findings, as Scanner.scan"},
    {"mask", (PyCFunction)Engine_mask, METH_VARARGS, "mask(buf, base, stop) -> (masked buf[base:stop], count, sad)"},
    {"stream_round", (PyCFunction)Engine_stream_round, METH_VARARGS,
     "stream_round(buf, base, limit, max_pending) -> None | False | (out, count, cut, sad)"},
    {"has_pan", (PyCFunction)Engine_has_pan, METH_VARARGS, "has_pan(buf) -> bool"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pangate.pan._pannative.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native PAN engine for one Masker configuration.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_pannative",
                                    "Native PAN engine (see pangate.pan.native).", -1, module_methods};

PyMODINIT_FUNC PyInit__pannative(void)
{
    init_tables();
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) return NULL;
    /* The fixed rule constants this transcription assumes; native.py
     * compares them with the Python modules before using the engine. */
    PyObject *rules = Py_BuildValue(
        "{s:y,s:i,s:i,s:i,s:y,s:y,s:(yyyyyyy),s:n,s:s}", "seps", SEPS, "max_gap", MAX_GAP, "maxkey", MAXKEY,
        "maxval", MAXVAL, "after_key", "\"']%:= \t>", "track_lead", ";Bb", "anchors", "cvv", "cvc", "cid", "csc",
        "pin", "track", "security", "gil_release_bytes", (Py_ssize_t)GIL_RELEASE_BYTES, "simd",
#ifdef __SSE2__
        "sse2"
#else
        "none"
#endif
    );
    if (!rules || PyModule_AddObject(m, "RULES", rules) < 0) return NULL;
    return m;
}
