/* The exact PWR path's sorts and dominance pass (pwr_tree.py's top-down tree) as C loops, for CPUs.
 *
 * Loaded with ctypes by pwr_cpu.py (no Python API, no torch API: one build serves every Python and torch
 * version); built by setup.py as an optional extension. Same items, orders, features and tie rules as
 * pwr_tree.run_tree (see pwr_fast.py's docstring): n items arranged in value order, code[i] = the item's
 * t position (shift 0: one item per relation, key and query at once) or 2 t position + key flag (shift 1: a
 * query item and a key item per relation). At a level, the items are arranged group by group (a group = 2^level
 * consecutive t positions, each in value order); the right half's queries receive the sums over the left half's
 * keys that follow them (a backward pass: clean suffix sums), the left half's keys the sums over the right half's
 * queries that precede them (a forward pass, which also writes the stable partition by the next t bit into the
 * other buffer). Levels run depth-first, so a subtree that fits the cache is finished there; one item per relation
 * with exp takes two levels a pass (the group's quarters), and groups of at most 2^DENSE_LEVELS items finish by
 * evaluating their pairs directly. Every level checks that its halves (quarters) hold exactly their positions,
 * and the last one that each position is filled once: bad codes are an error, never a write out of bounds.
 *
 * exp (k = 0): key feature F = exp(beta (a - c)), query feature G = exp(beta (c - b)) (one item per relation:
 * G = 1 / F); a counted pair adds F_q G_p to tot and 1 to cnt, beta F_q G_p to the key's gradient and minus that
 * to the query's. power (k >= 1): f = a - c for keys, b - c for queries; a pair adds (a - b)^k, by the binomial
 * expansion over power sums of the other side (directly in the last groups).
 *
 * pwr_sort_i64: a stable sort of int64 keys with their permutation (an LSD radix sort, 11-bit digits, passes
 * whose digit is the same for every key skipped). pwr_single_setup_f32 / pwr_single_finish: the whole sum for
 * float32 relations and one item per relation, around torch's exp of the features. pwr_cosine_setup_f32 /
 * pwr_cosine_finish: the same from the head's Gram matrices (cosine relations) to its loss and the matrix of the
 * loss's gradient with respect to the relations.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define MAX_K 8

/* the interface's version: pwr_cpu.py uses a library only if this matches its ABI (bump on any signature change) */
int64_t pwr_cpu_abi(void) { return 4; }

typedef struct {
    int32_t *code;
    double *f, *acc;
} buf_t;

typedef struct {
    int shift, k, single, error;
    double beta, tot, cnt;
    double ck[MAX_K + 1], ck1[MAX_K + 1]; /* binom(k, e) (-1)^(k-e), binom(k-1, e) (-1)^(k-1-e) */
} ctx_t;

/* an item's code, feature and sums into slot `at` of buffer b (the partitions' write) */
static inline void place(buf_t b, int64_t at, int32_t cd, double f, double acc) {
    b.code[at] = cd;
    b.f[at] = f;
    b.acc[at] = acc;
}

/* the first slot of each quarter of the group [gs, ge) (quarters of q positions) into o; 1 (and c->error) unless
 * each quarter held exactly its positions (`seen`: the items counted in each) */
static int quarter_slots(ctx_t *c, int64_t gs, int64_t ge, int64_t q, const int64_t seen[4], int64_t o[4]) {
    for (int d = 0; d < 4; d++) {
        const int64_t lo = gs + d * q, want = lo >= ge ? 0 : (ge - lo < q ? ge - lo : q);
        if (seen[d] != want) { c->error = 1; return 1; }
        o[d] = lo;
    }
    return 0;
}

/* exp, two levels in one: the group's quarters (digit d = the t position's bits l - 1, l - 2); a query in quarter d
 * pairs with the keys after it in the quarters below d (those in the other half at level l, the sibling quarter at
 * level l - 1), a key with the queries before it in the quarters above */
static const double EQ4[4][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}; /* d == j */
static const double GT4[4][4] = {{0, 0, 0, 0}, {1, 0, 0, 0}, {1, 1, 0, 0}, {1, 1, 1, 0}}; /* d > j */
static const double LT4[4][4] = {{0, 1, 1, 1}, {0, 0, 1, 1}, {0, 0, 0, 1}, {0, 0, 0, 0}}; /* d < j */

/* (`single`: one item per relation, F = f, G = 1 / f; else the code's bit 0 flags a key, F = f on keys, G = f on
 * queries, and the t position is the code without that bit) */
static inline __attribute__((always_inline)) void exp_quarters_k(ctx_t *c, const int single, int l, int64_t gs,
                                                                 int64_t ge, buf_t a, buf_t b) {
    /* (0/1 factors from tables: comparisons would compile to unpredictable branches; a factor masks a product
     * before it is formed: a product that does not count can overflow, and 0 x inf is NaN) */
    const double beta = c->beta;
    const int sh = l - 2, bit = sh + (single ? 0 : 1);
    const int64_t q = (int64_t)1 << sh;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, n0 = 0.0, n1 = 0.0, n2 = 0.0, tot = 0.0, cnt = 0.0;
    int64_t seen[4] = {0, 0, 0, 0};
    for (int64_t x = ge - 1; x >= gs; x--) {
        const int32_t cd = a.code[x], d = (cd >> bit) & 3;
        const double kf = single ? 1.0 : (double)(cd & 1), qf = single ? 1.0 : 1.0 - kf;
        const double *gt = GT4[d], *eq = EQ4[d], fv = a.f[x];
        const double qv = single ? (gt[0] * s0 + gt[1] * s1 + gt[2] * s2) / fv
                                 : (qf * fv) * (gt[0] * s0 + gt[1] * s1 + gt[2] * s2);
        a.acc[x] -= beta * qv;
        tot += qv;
        cnt += qf * (gt[0] * n0 + gt[1] * n1 + gt[2] * n2);
        const double kv = kf * fv;
        s0 += eq[0] * kv;
        s1 += eq[1] * kv;
        s2 += eq[2] * kv;
        n0 += eq[0] * kf;
        n1 += eq[1] * kf;
        n2 += eq[2] * kf;
        seen[d]++;
    }
    int64_t o[4]; /* each quarter's next slot */
    if (quarter_slots(c, gs, ge, q, seen, o)) return;
    double p1 = 0.0, p2 = 0.0, p3 = 0.0;
    for (int64_t x = gs; x < ge; x++) {
        const int32_t cd = a.code[x], d = (cd >> bit) & 3;
        const double kf = single ? 1.0 : (double)(cd & 1), qf = single ? 1.0 : 1.0 - kf;
        const double *lt = LT4[d], *eq = EQ4[d], fv = a.f[x];
        const double av = a.acc[x] + (kf * beta * fv) * (lt[1] * p1 + lt[2] * p2 + lt[3] * p3);
        const double gv = single ? 1.0 / fv : qf * fv;
        p1 += eq[1] * gv;
        p2 += eq[2] * gv;
        p3 += eq[3] * gv;
        place(b, o[d]++, cd, fv, av);
    }
    c->tot += tot;
    c->cnt += cnt;
}

static void exp_quarters(ctx_t *c, int l, int64_t gs, int64_t ge, buf_t a, buf_t b) {
    if (c->single)
        exp_quarters_k(c, 1, l, gs, ge, a, b);
    else
        exp_quarters_k(c, 0, l, gs, ge, a, b);
}

/* the stable partition's write: an item to the next slot of its half (`r`: the right one) in buffer b */
static inline void put(buf_t b, int32_t r, int64_t *lp, int64_t *rp, int32_t cd, double f, double acc) {
    const int64_t d = r ? *rp : *lp;
    *rp += r;
    *lp += 1 - r;
    place(b, d, cd, f, acc);
}

/* exp, one level: one item per relation (`single`: key and query at once, F = f, G = 1 / f), or a key item and a
 * query item per relation (the code's bit 0 flags a key; F = f on keys, G = f on queries) */
static inline void exp_level(ctx_t *c, const int single, int bit, int64_t gs, int64_t ge, int64_t mid, buf_t a,
                             buf_t b) {
    const double beta = c->beta;
    double suf = 0.0, sufn = 0.0, tot = 0.0, cnt = 0.0;
    int64_t nright = 0;
    for (int64_t x = ge - 1; x >= gs; x--) { /* right queries: the left keys' F after them (clean suffix sums) */
        const int32_t cd = a.code[x], r = (cd >> bit) & 1, key = single ? 1 : cd & 1;
        const double rq = (double)(r & (single ? 1 : 1 - key)), lk = (double)((1 - r) & key), fv = a.f[x];
        /* (masked before the product: a key's fv * suf or a left item's suf / fv can overflow, and 0 * inf is NaN) */
        const double q = single ? (rq * suf) / fv : (rq * fv) * suf;
        a.acc[x] -= beta * q;
        tot += q;
        cnt += rq * sufn;
        suf += lk * fv;
        sufn += lk;
        nright += r;
    }
    if (nright != ge - mid) { c->error = 1; return; }
    double pre = 0.0;
    int64_t lp = gs, rp = mid;
    for (int64_t x = gs; x < ge; x++) { /* left keys: the right queries' G before them; the stable partition */
        const int32_t cd = a.code[x], r = (cd >> bit) & 1, key = single ? 1 : cd & 1;
        const double rq = (double)(r & (single ? 1 : 1 - key)), lk = (double)((1 - r) & key), fv = a.f[x];
        const double av = a.acc[x] + lk * beta * fv * pre;
        pre += rq * (single ? 1.0 / fv : fv);
        put(b, r, &lp, &rp, cd, fv, av);
    }
    c->tot += tot;
    c->cnt += cnt;
}

/* power k: (a - b)^k = sum_e binom(k, e) a^e (-b)^(k-e); its derivatives by a and b likewise with k - 1 */
static inline __attribute__((always_inline)) void power_level_k(ctx_t *c, const int k, int bit, int64_t gs, int64_t ge,
                                                                int64_t mid, buf_t a, buf_t b) {
    const int single = c->single;
    double S[MAX_K + 1], T[MAX_K + 1], pw[MAX_K + 1];
    double tot = 0.0;
    int64_t nright = 0;
    for (int e = 0; e <= k; e++) S[e] = 0.0;
    for (int64_t x = ge - 1; x >= gs; x--) { /* right queries: power sums S_e of the left keys after them */
        const int32_t cd = a.code[x], r = (cd >> bit) & 1, key = single ? 1 : cd & 1;
        const int32_t query = single ? 1 : 1 - key;
        const double rq = (double)(r & query), lk = (double)((1 - r) & key), v = a.f[x];
        pw[0] = 1.0;
        for (int e = 1; e <= k; e++) pw[e] = pw[e - 1] * v;
        double val = 0.0, der = 0.0;
        for (int e = 0; e <= k; e++) val += c->ck[e] * S[e] * pw[k - e];
        for (int e = 0; e < k; e++) der += c->ck1[e] * S[e] * pw[k - 1 - e];
        a.acc[x] -= rq * (double)k * der;
        tot += rq * val;
        for (int e = 0; e <= k; e++) S[e] += lk * pw[e];
        nright += r;
    }
    if (nright != ge - mid) { c->error = 1; return; }
    for (int e = 0; e < k; e++) T[e] = 0.0;
    int64_t lp = gs, rp = mid;
    for (int64_t x = gs; x < ge; x++) { /* left keys: power sums T_e of the right queries before them */
        const int32_t cd = a.code[x], r = (cd >> bit) & 1, key = single ? 1 : cd & 1;
        const int32_t query = single ? 1 : 1 - key;
        const double rq = (double)(r & query), lk = (double)((1 - r) & key), v = a.f[x];
        pw[0] = 1.0;
        for (int e = 1; e <= k; e++) pw[e] = pw[e - 1] * v;
        /* d/da sum_p (a - b_p)^k = k sum_e binom(k-1, e) a^(k-1-e) (-1)^e T_e; ck1[e] carries (-1)^(k-1-e) */
        double der = 0.0;
        for (int e = 0; e < k; e++) der += c->ck1[k - 1 - e] * pw[k - 1 - e] * T[e];
        const double av = a.acc[x] + lk * (double)k * der;
        for (int e = 0; e < k; e++) T[e] += rq * pw[e];
        put(b, r, &lp, &rp, cd, v, av);
    }
    c->tot += tot;
}

/* power k, two levels in one (the quarters, as exp_quarters_k): a query in quarter d takes the power sums of the
 * keys after it in the quarters below d, a key those of the queries before it in the quarters above */
static inline __attribute__((always_inline)) void power_quarters_k(ctx_t *c, const int k, const int single, int l,
                                                                   int64_t gs, int64_t ge, buf_t a, buf_t b) {
    const int sh = l - 2, bit = sh + (single ? 0 : 1);
    const int64_t q = (int64_t)1 << sh;
    double S[3][MAX_K + 1], T[4][MAX_K + 1], pw[MAX_K + 1], U[MAX_K + 1];
    double tot = 0.0;
    int64_t seen[4] = {0, 0, 0, 0};
    for (int j = 0; j < 3; j++)
        for (int e = 0; e <= k; e++) S[j][e] = 0.0;
    for (int64_t x = ge - 1; x >= gs; x--) { /* queries: power sums of the keys after them in the quarters below */
        const int32_t cd = a.code[x], d = (cd >> bit) & 3;
        const double kf = single ? 1.0 : (double)(cd & 1), qf = single ? 1.0 : 1.0 - kf;
        const double *gt = GT4[d], *eq = EQ4[d], v = a.f[x];
        pw[0] = 1.0;
        for (int e = 1; e <= k; e++) pw[e] = pw[e - 1] * v;
        for (int e = 0; e <= k; e++) U[e] = gt[0] * S[0][e] + gt[1] * S[1][e] + gt[2] * S[2][e];
        double val = 0.0, der = 0.0;
        for (int e = 0; e <= k; e++) val += c->ck[e] * U[e] * pw[k - e];
        for (int e = 0; e < k; e++) der += c->ck1[e] * U[e] * pw[k - 1 - e];
        a.acc[x] -= qf * (double)k * der;
        tot += qf * val;
        for (int j = 0; j < 3; j++)
            for (int e = 0; e <= k; e++) S[j][e] += eq[j] * kf * pw[e];
        seen[d]++;
    }
    int64_t o[4]; /* each quarter's next slot */
    if (quarter_slots(c, gs, ge, q, seen, o)) return;
    for (int j = 1; j < 4; j++)
        for (int e = 0; e < k; e++) T[j][e] = 0.0;
    for (int64_t x = gs; x < ge; x++) { /* keys: power sums of the queries before them in the quarters above */
        const int32_t cd = a.code[x], d = (cd >> bit) & 3;
        const double kf = single ? 1.0 : (double)(cd & 1), qf = single ? 1.0 : 1.0 - kf;
        const double *lt = LT4[d], *eq = EQ4[d], v = a.f[x];
        pw[0] = 1.0;
        for (int e = 1; e <= k; e++) pw[e] = pw[e - 1] * v;
        double der = 0.0;
        for (int e = 0; e < k; e++)
            der += c->ck1[k - 1 - e] * pw[k - 1 - e] * (lt[1] * T[1][e] + lt[2] * T[2][e] + lt[3] * T[3][e]);
        const double av = a.acc[x] + kf * (double)k * der;
        for (int j = 1; j < 4; j++)
            for (int e = 0; e < k; e++) T[j][e] += eq[j] * qf * pw[e];
        place(b, o[d]++, cd, v, av);
    }
    c->tot += tot;
}

#define POWER_QUARTERS(K) (c->single ? power_quarters_k(c, K, 1, l, gs, ge, a, b) \
                                     : power_quarters_k(c, K, 0, l, gs, ge, a, b))

/* power_quarters_k with k and the item kind constants */
static void power_quarters(ctx_t *c, int l, int64_t gs, int64_t ge, buf_t a, buf_t b) {
    switch (c->k) {
    case 1: POWER_QUARTERS(1); break;
    case 2: POWER_QUARTERS(2); break;
    case 3: POWER_QUARTERS(3); break;
    case 4: POWER_QUARTERS(4); break;
    case 5: POWER_QUARTERS(5); break;
    case 6: POWER_QUARTERS(6); break;
    case 7: POWER_QUARTERS(7); break;
    case 8: POWER_QUARTERS(8); break;
    default: POWER_QUARTERS(c->k); break;
    }
}

/* power_level_k with k a constant (its loops over the powers unrolled): 2-3x faster than with k read at run time */
static void power_level(ctx_t *c, int bit, int64_t gs, int64_t ge, int64_t mid, buf_t a, buf_t b) {
    switch (c->k) {
    case 1: power_level_k(c, 1, bit, gs, ge, mid, a, b); break;
    case 2: power_level_k(c, 2, bit, gs, ge, mid, a, b); break;
    case 3: power_level_k(c, 3, bit, gs, ge, mid, a, b); break;
    case 4: power_level_k(c, 4, bit, gs, ge, mid, a, b); break;
    case 5: power_level_k(c, 5, bit, gs, ge, mid, a, b); break;
    case 6: power_level_k(c, 6, bit, gs, ge, mid, a, b); break;
    case 7: power_level_k(c, 7, bit, gs, ge, mid, a, b); break;
    case 8: power_level_k(c, 8, bit, gs, ge, mid, a, b); break;
    default: power_level_k(c, c->k, bit, gs, ge, mid, a, b); break;
    }
}

#ifndef DENSE_LEVELS
#define DENSE_LEVELS 3 /* groups of up to 2^3 items (at most 5: a 32-bit mask checks them): all pairs directly */
#endif

/* the remaining levels of a group of at most 2^DENSE_LEVELS items at once: every pair (p before q in value order, q's
 * code below p's) directly, then the items in t order into `out` (which may be `a`) */
static void dense_group(ctx_t *c, int64_t gs, int64_t ge, buf_t a, buf_t out) {
    const int n = (int)(ge - gs), single = c->single, k = c->k;
    const double beta = c->beta;
    int32_t code[1 << DENSE_LEVELS];
    double f[1 << DENSE_LEVELS], acc[1 << DENSE_LEVELS];
    double tot = 0.0, cnt = 0.0;
    for (int i = 0; i < n; i++) {
        code[i] = a.code[gs + i];
        f[i] = a.f[gs + i];
        acc[i] = a.acc[gs + i];
    }
    double g[1 << DENSE_LEVELS]; /* exp: the query feature */
    for (int i = 0; i < n; i++) g[i] = (single && k == 0) ? 1.0 / f[i] : f[i];
    for (int j = 1; j < n; j++) { /* j: the key (later in value order), i < j: the query; branch-free */
        const int32_t cj = code[j];
        const double keyj = single ? 1.0 : (double)(cj & 1), fj = f[j];
        double gsum = 0.0, csum = 0.0, vsum = 0.0;
        for (int i = 0; i < j; i++) {
            const int32_t ci = code[i];
            const double on = keyj * (double)((ci > cj) & (single ? 1 : 1 - (ci & 1)));
            if (k == 0) {
                const double e = on * fj * g[i];
                gsum += e;
                csum += on;
                acc[i] -= beta * e;
            } else {
                const double x = fj - f[i];
                double p1 = on;
                for (int e = 1; e < k; e++) p1 *= x;
                vsum += p1 * x;
                gsum += p1;
                acc[i] -= (double)k * p1;
            }
        }
        if (k == 0) {
            tot += gsum;
            cnt += csum;
            acc[j] += beta * gsum;
        } else {
            tot += vsum;
            acc[j] += (double)k * gsum;
        }
    }
    const int sh = c->shift;
    int bad = 0;
    uint32_t filled = 0;
    for (int i = 0; i < n; i++) { /* the codes of the group are its positions: straight into t order */
        const int64_t d = (int64_t)(code[i] >> sh) - gs;
        if (d < 0 || d >= n || (filled >> d & 1u)) { bad = 1; continue; }
        filled |= 1u << d;
        out.code[gs + d] = code[i];
        out.f[gs + d] = f[i];
        out.acc[gs + d] = acc[i];
    }
    if (bad) c->error = 1;
    c->tot += tot;
    c->cnt += cnt;
}

/* level l on the group of positions [gs, ge) (in buffer a, written to b), then its two halves one level down;
 * `final`: the buffer the last level writes (where the result is) */
static void run(ctx_t *c, int l, int64_t gs, int64_t ge, buf_t a, buf_t b, buf_t final) {
    const int64_t mid = gs + ((int64_t)1 << (l - 1));
    if (c->error) return;
    if (l <= DENSE_LEVELS) {
        dense_group(c, gs, ge, a, final);
        return;
    }
    if (l - 2 >= DENSE_LEVELS) { /* two levels in one pass, then the quarters */
        const int64_t q = (int64_t)1 << (l - 2);
        if (c->k == 0)
            exp_quarters(c, l, gs, ge, a, b);
        else
            power_quarters(c, l, gs, ge, a, b);
        for (int64_t lo = gs; lo < ge; lo += q) run(c, l - 2, lo, lo + q < ge ? lo + q : ge, b, a, final);
        return;
    }
    if (mid >= ge) { /* no right half: the arrangement is unchanged */
        memcpy(b.code + gs, a.code + gs, (size_t)(ge - gs) * sizeof(int32_t));
        memcpy(b.f + gs, a.f + gs, (size_t)(ge - gs) * sizeof(double));
        memcpy(b.acc + gs, a.acc + gs, (size_t)(ge - gs) * sizeof(double));
    } else if (c->k > 0) {
        power_level(c, l - 1 + c->shift, gs, ge, mid, a, b); /* the t position's bit l - 1 */
    } else if (c->single) {
        exp_level(c, 1, l - 1, gs, ge, mid, a, b);
    } else {
        exp_level(c, 0, l, gs, ge, mid, a, b);
    }
    run(c, l - 1, gs, mid < ge ? mid : ge, b, a, final);
    if (mid < ge) run(c, l - 1, mid, ge, b, a, final);
}

/* the pass over n items in buffer a (acc zeros), b scratch; the result in a. 0, -1 bad arguments, -2 bad codes */
static int64_t tree_pass(int64_t n, int32_t shift, int32_t k, double beta, buf_t a, buf_t b, double *res) {
    ctx_t c;
    memset(&c, 0, sizeof c);
    if (n < 0 || n > ((int64_t)1 << 30) || (shift != 0 && shift != 1) || k < 0 || k > MAX_K) return -1;
    c.shift = shift;
    c.single = shift == 0;
    c.k = k;
    c.beta = beta;
    for (int e = 0; e <= k; e++) { /* binomials with their signs */
        double bk = 1.0, bk1 = 1.0;
        for (int i = 1; i <= e; i++) {
            bk = bk * (k - i + 1) / i;
            bk1 = bk1 * (k - i) / i;
        }
        c.ck[e] = ((k - e) % 2 ? -1.0 : 1.0) * bk;
        c.ck1[e] = e < k ? ((k - 1 - e) % 2 ? -1.0 : 1.0) * bk1 : 0.0;
    }
    int levels = 0; /* (pair items: n = 2 M positions; the key flag is the code's bit 0) */
    while (((int64_t)1 << levels) < n) levels++;
    res[0] = res[1] = 0.0;
    if (levels == 0) return 0;
    run(&c, levels, 0, n, a, b, a); /* (every group ends in dense_group, which writes buffer a) */
    if (c.error) return -2;
    res[0] = c.tot;
    res[1] = c.cnt;
    return 0;
}

/* The pass over n items (buffers 0 and 1 of n entries each; buffer 0 holds the input, acc0 zeros). Returns 0 (the
 * result, items in t order with acc the gradient sums, is in buffer 0), -1 on bad arguments, -2 when the codes
 * are not the positions 0 .. n - 1 (nothing is written outside the buffers). res = (tot, cnt). */
int64_t pwr_tree_cpu(int64_t n, int32_t shift, int32_t k, double beta, int32_t *code0, double *f0, double *acc0,
                     int32_t *code1, double *f1, double *acc1, double *res) {
    buf_t a = {code0, f0, acc0}, b = {code1, f1, acc1};
    return tree_pass(n, shift, k, beta, a, b, res);
}

#define RADIX_BITS 11
#define RADIX_SIZE (1 << RADIX_BITS)
#define RADIX_PASSES 6 /* 6 x 11 >= 64 */

/* keys (n) sorted ascending as signed integers, stably: sorted keys into out_keys, their positions in keys into
 * out_perm; tmp_keys, tmp_perm: scratch of n entries. Returns 0, -1 on bad arguments or no memory. */
int64_t pwr_sort_i64(int64_t n, const int64_t *keys, int64_t *out_keys, int64_t *out_perm, int64_t *tmp_keys,
                     int64_t *tmp_perm) {
    const uint64_t sign = (uint64_t)1 << 63;
    if (n < 0 || n > 0xFFFFFFFFLL) return -1; /* (32-bit counts) */
    uint32_t *hist = calloc((size_t)RADIX_PASSES * RADIX_SIZE, sizeof(uint32_t));
    if (!hist) return -1;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t u = (uint64_t)keys[i] ^ sign;
        for (int p = 0; p < RADIX_PASSES; p++) hist[p * RADIX_SIZE + ((u >> (p * RADIX_BITS)) & (RADIX_SIZE - 1))]++;
    }
    int active[RADIX_PASSES], np = 0;
    for (int p = 0; p < RADIX_PASSES; p++) {
        const uint32_t first = (uint32_t)(((uint64_t)(n ? keys[0] : 0) ^ sign) >> (p * RADIX_BITS) & (RADIX_SIZE - 1));
        if (n > 0 && hist[p * RADIX_SIZE + first] != (uint32_t)n) active[np++] = p;
    }
    if (np == 0) { /* all digits equal (or n < 2): already sorted */
        for (int64_t i = 0; i < n; i++) { out_keys[i] = keys[i]; out_perm[i] = i; }
        free(hist);
        return 0;
    }
    /* ping-pong so that the last pass writes out_keys / out_perm */
    int64_t *dk = (np % 2) ? out_keys : tmp_keys, *dp = (np % 2) ? out_perm : tmp_perm;
    int64_t *ok = (np % 2) ? tmp_keys : out_keys, *op = (np % 2) ? tmp_perm : out_perm;
    const int64_t *sk = keys, *sp = NULL;
    for (int a = 0; a < np; a++) {
        const int p = active[a];
        uint32_t *h = hist + p * RADIX_SIZE, run = 0;
        for (int d = 0; d < RADIX_SIZE; d++) { const uint32_t c = h[d]; h[d] = run; run += c; }
        for (int64_t i = 0; i < n; i++) {
            const int64_t key = sk[i];
            const uint32_t d = (uint32_t)((((uint64_t)key ^ sign) >> (p * RADIX_BITS)) & (RADIX_SIZE - 1));
            const uint32_t at = h[d]++;
            dk[at] = key;
            dp[at] = sp ? sp[i] : i;
        }
        sk = dk; sp = dp;
        int64_t *t = dk; dk = ok; ok = t;
        t = dp; dp = op; op = t;
    }
    free(hist);
    return 0;
}

/* order-preserving 32-bit word of a float's bits (negative: magnitude bits flipped), as pwr_math.ts_order_keys */
static inline uint32_t f32_word(float x, int low) {
    x += 0.0f; /* -0.0 -> +0.0 */
    int32_t w;
    memcpy(&w, &x, sizeof w);
    w ^= (w >> 31) & 0x7FFFFFFF;
    return (uint32_t)w ^ (low ? 0x80000000u : 0u);
}

/* order-preserving int64 key of a double (the order of pwr_math.order_key; a negative value's key is minus its
 * magnitude bits rather than their complement, so that the low zero bits of values with short mantissas, such as
 * differences of two floats, stay zero for every key and the sort skips those digits) */
static inline int64_t f64_key(double x) {
    x += 0.0;
    int64_t b;
    memcpy(&b, &x, sizeof b);
    const int64_t neg = b >> 63; /* 0 or -1: a conditional negation, without a branch */
    return ((b & INT64_MAX) ^ neg) - neg;
}

#define U32_DIGIT_BITS 12

/* the float of an f32_word(x, 1) (-0.0 comes back as +0.0) */
static inline float f32_of_word(uint32_t u) {
    int32_t w = (int32_t)(u ^ 0x80000000u);
    w ^= (w >> 31) & 0x7FFFFFFF;
    float x;
    memcpy(&x, &w, sizeof x);
    return x;
}

/* the double of an f64_key(x) (-0.0 comes back as +0.0) */
static inline double f64_of_key(int64_t key) {
    const int64_t neg = key >> 63;
    const int64_t b = (((key ^ neg) - neg) | (neg & INT64_MIN));
    double x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* keys (n uint32) sorted ascending, stably, by an LSD radix sort of the keys minus their minimum (as few passes of
 * at most U32_DIGIT_BITS bits as their range needs, constant digits skipped): the reduced sorted keys into out_keys
 * (the minimum into *lo_out), each with its payload (in_pay[position]; in_pay NULL: position << 32) into out_pay:
 * what the caller reads next travels with the keys instead of being gathered at random afterwards (at M = 8.4
 * million, 0.7 s instead of 1.3-1.5); tmp_keys, tmp_pay: scratch of n entries. Returns 0, -1 when out of memory. */
static int64_t sort_u32(int64_t n, const uint32_t *keys, const uint64_t *in_pay, uint32_t *out_keys,
                        uint64_t *out_pay, uint32_t *tmp_keys, uint64_t *tmp_pay, uint32_t *lo_out) {
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = keys[i] < lo ? keys[i] : lo;
        hi = keys[i] > hi ? keys[i] : hi;
    }
    *lo_out = lo;
    int bits = 0;
    while (bits < 32 && ((hi - lo) >> bits) != 0) bits++;
    const int passes = (bits + U32_DIGIT_BITS - 1) / U32_DIGIT_BITS;
    const int width = passes ? (bits + passes - 1) / passes : 0;
    const uint32_t mask = ((uint32_t)1 << width) - 1;
    uint32_t *hist = passes ? calloc((size_t)passes << width, sizeof(uint32_t)) : NULL;
    if (passes && !hist) return -1;
    for (int64_t i = 0; i < n; i++) {
        const uint32_t u = keys[i] - lo;
        for (int p = 0; p < passes; p++) hist[((size_t)p << width) + ((u >> (p * width)) & mask)]++;
    }
    int active[32], np = 0;
    for (int p = 0; p < passes; p++)
        if (hist[((size_t)p << width) + (((keys[0] - lo) >> (p * width)) & mask)] != (uint32_t)n) active[np++] = p;
#define PAYLOAD(i) (in_pay ? in_pay[i] : (uint64_t)(i) << 32)
    if (np == 0) { /* all keys equal */
        for (int64_t i = 0; i < n; i++) { out_keys[i] = 0; out_pay[i] = PAYLOAD(i); }
        free(hist);
        return 0;
    }
    uint32_t *dk = (np % 2) ? out_keys : tmp_keys, *ok = (np % 2) ? tmp_keys : out_keys;
    uint64_t *dp = (np % 2) ? out_pay : tmp_pay, *op = (np % 2) ? tmp_pay : out_pay;
    const uint32_t *sk = NULL;
    const uint64_t *sp = NULL;
    for (int a = 0; a < np; a++) {
        const int p = active[a];
        uint32_t *h = hist + ((size_t)p << width), run = 0;
        for (uint32_t d = 0; d <= mask; d++) { const uint32_t c = h[d]; h[d] = run; run += c; }
        for (int64_t i = 0; i < n; i++) {
            const uint32_t u = sk ? sk[i] : keys[i] - lo;
            const uint32_t at = h[(u >> (p * width)) & mask]++;
            dk[at] = u;
            dp[at] = sp ? sp[i] : PAYLOAD(i);
        }
        sk = dk; sp = dp;
        uint32_t *tk = dk; dk = ok; ok = tk;
        uint64_t *tp = dp; dp = op; op = tp;
    }
#undef PAYLOAD
    free(hist);
    return 0;
}

#define RUN_FIX 32 /* teacher ties: runs of up to this many equal words are ordered by insertion */

/* The fast-path sum for one item per relation (margin teacher_diff: lam = 1, or a zero constant: lam = 0) and
 * float32 relations s, t (m of each), as pwr_fast.pwr_sum_and_grad_fast composes it, in two calls around the
 * features' exp (left to torch's vectorised exp): pwr_single_setup_f32, then (exp only) f = exp(f) in place, then
 * pwr_single_finish. Scratch: i64 (4 m), f64 (2 m), i32 (2 m), shared by the steps as follows (8 bytes an entry):
 *   t order:      teacher words, sorted words and scratch in f64 (32-bit), payloads (position, student word) in
 *                 i64[2], sorted in i64[0] with scratch i64[1]; then the permutation in i64[2] (kept to the end)
 *                 (a run of more than RUN_FIX equal teacher words: (t, s) keys i64[0], sorted i64[1], scratch i64[3],
 *                 f64[0])
 *   value order:  keys of v i64[0]; sorted keys f64[0] (v is read back from them), t positions i64[3], scratch
 *                 f64[1], i32
 *   the pass:     buffer a = (i32[0], f64[0], f64[1]), buffer b = (i32[1], i64[0], i64[1])
 * Setup: the t order (by t, ties by s, then by position), the pair count C from the teacher words, v = s - lam t in
 * float64 in value order (ties by t position), f = beta (v - c) (exp) or v - c (power) with c the middle of v's
 * range. res[1] = C, res[2] = max v - min v. Finish: the pass, d sum / d s into grad (m), res[0] = the sum. Each
 * returns 0, -1 on bad arguments, -3 when out of memory, or the pass's error. */
static int64_t single_setup(int64_t m, const float *s, const float *t, int32_t lam, int32_t k, double beta,
                            int64_t *i64, double *f64, int32_t *i32, double *res) {
    /* (s and t may lie in i32: they are read before the second sort, the first use of i32) */
    int64_t *keys = i64, *sorted = i64 + m, *perm = i64 + 2 * m, *tmp = i64 + 3 * m;
    /* the t order (ties by s, then by position): the teacher words sorted alone (32-bit), each carrying its position
     * and student word, each run of equal words then ordered by the student words by insertion; a run longer than
     * RUN_FIX: the (t, s) keys sorted instead */
    uint32_t *tw = (uint32_t *)f64, *tw_sorted = tw + m, *tw_tmp = tw + 2 * m, t_lo;
    uint64_t *pay = (uint64_t *)keys, *pay_tmp = (uint64_t *)sorted, *pay_in = (uint64_t *)perm;
    for (int64_t i = 0; i < m; i++) {
        tw[i] = f32_word(t[i], 1);
        pay_in[i] = ((uint64_t)i << 32) | f32_word(s[i], 1); /* (position, student word) */
    }
    if (sort_u32(m, tw, pay_in, tw_sorted, pay, tw_tmp, pay_tmp, &t_lo)) return -3;
    double count = 0.0; /* C = sum over the sorted teacher words of the start of their run (exact below 2^53) */
    int64_t start = 0, longest = 1;
    for (int64_t i = 0; i < m; i++) {
        if (i > 0 && tw_sorted[i] != tw_sorted[i - 1]) start = i;
        count += (double)start;
        longest = i - start + 1 > longest ? i - start + 1 : longest;
    }
    const int fallback = longest > RUN_FIX;
    if (fallback) {
        for (int64_t i = 0; i < m; i++) /* (t, s) keys: t's word high, s's low */
            keys[i] = (int64_t)(((uint64_t)f32_word(t[i], 0) << 32) | f32_word(s[i], 1));
        if (pwr_sort_i64(m, keys, sorted, perm, tmp, (int64_t *)f64)) return -3;
    } else if (longest > 1) {
        for (int64_t i = 1, run = 0; i <= m; i++) {
            if (i < m && tw_sorted[i] == tw_sorted[run]) continue;
            for (int64_t j = run + 1; j < i; j++) { /* (stable: a later position moves only past larger words) */
                const uint64_t p = pay[j];
                int64_t x = j;
                for (; x > run && (uint32_t)pay[x - 1] > (uint32_t)p; x--) pay[x] = pay[x - 1];
                pay[x] = p;
            }
            run = i;
        }
    }
    for (int64_t i = 0; i < m; i++) { /* v in t order (the payloads, or s and t at random), its keys */
        float sv, tv;
        if (fallback) {
            sv = s[perm[i]];
            tv = t[perm[i]];
        } else {
            const uint64_t p = pay[i]; /* (read before keys[i], in the same place, is written) */
            perm[i] = (int64_t)(p >> 32);
            sv = f32_of_word((uint32_t)p);
            tv = f32_of_word(tw_sorted[i] + t_lo);
        }
        keys[i] = f64_key(lam ? (double)sv - (double)tv : (double)sv);
    }
    int64_t *v_sorted = (int64_t *)f64; /* (the keys of v, in value order: v is read back from them) */
    if (pwr_sort_i64(m, keys, v_sorted, tmp, (int64_t *)(f64 + m), (int64_t *)i32)) return -3;
    const double lo = f64_of_key(v_sorted[0]), hi = f64_of_key(v_sorted[m - 1]), twice_c = hi + lo;
    for (int64_t i = 0; i < m; i++) {
        const double z = f64_of_key(v_sorted[i]) - 0.5 * twice_c; /* (read before f64[i], in its place, is written) */
        i32[i] = (int32_t)tmp[i];
        f64[i] = k == 0 ? beta * z : z;
        f64[m + i] = 0.0;
    }
    res[1] = count;
    res[2] = hi - lo;
    return 0;
}

int64_t pwr_single_setup_f32(int64_t m, const float *s, const float *t, int32_t lam, int32_t k, double beta,
                             int64_t *i64, double *f64, int32_t *i32, double *res) {
    if (m < 2 || m > ((int64_t)1 << 30) || k < 0 || k > MAX_K || (lam != 0 && lam != 1)) return -1;
    return single_setup(m, s, t, lam, k, beta, i64, f64, i32, res);
}

/* the pass; d sum / d s (relation order) into grad (m, NULL: none), res[0] = the sum */
static int64_t single_finish(int64_t m, int32_t k, double beta, int64_t *i64, double *f64, int32_t *i32,
                             double *grad, double *res) {
    buf_t a = {i32, f64, f64 + m}, b = {i32 + m, (double *)i64, (double *)(i64 + m)};
    double sums[2];
    const int64_t rc = tree_pass(m, 0, k, beta, a, b, sums);
    if (rc) return rc;
    const int64_t *perm = i64 + 2 * m;
    if (grad)
        for (int64_t i = 0; i < m; i++) grad[perm[i]] = a.acc[i];
    res[0] = k == 0 ? sums[0] - sums[1] : sums[0];
    return 0;
}

int64_t pwr_single_finish(int64_t m, int32_t k, double beta, int64_t *i64, double *f64, int32_t *i32,
                          double *grad, double *res) {
    if (m < 2 || m > ((int64_t)1 << 30) || k < 0 || k > MAX_K || !grad) return -1;
    return single_finish(m, k, beta, i64, f64, i32, grad, res);
}

/* The fast-path sum for a query and a key item per relation (a constant margin other than 0, or teacher_std: lam = 0,
 * query b = s, key a = s + const) and float32 relations s, t (m of each), as pwr_fast.pwr_sum_and_grad_fast composes
 * it, in two calls around torch's exp of the features: pwr_pair_setup_f32, then (exp only) f = exp(f) in place on
 * scratch[m .. 3 m), then pwr_pair_finish. Scratch: 11 m doubles (88 bytes per relation): the pass's buffer a (codes,
 * features, sums of 2 m items) in [0, 5 m), buffer b in [5 m, 10 m), the t positions of each relation's query and
 * key (int32) in [10 m, 11 m); the sorts work in buffer b before the pass.
 * Setup: the t order (a run of g equal teacher values from sorted rank r0 puts its queries at t positions 2 r0 ..
 * 2 r0 + g - 1 and its keys after them: no pair within a run counts) and the pair count C; the value order of the
 * 2 m items (s sorted once: a = s + const keeps its order), a key before a query at equal value (x = a - b = 0 adds
 * nothing); code = 2 t position + key flag; features beta (a - c) and -beta (b - c) (exp) or a - c and b - c
 * (power) with c the middle of the range of all a and b. res[1] = C, res[2] = the range. Finish: the pass, d sum /
 * d s (the query's sums plus the key's) into grad (m), res[0] = the sum. Each returns 0, -1 on bad arguments, -3
 * when out of memory, or the pass's error. */
static int64_t pair_setup(int64_t m, const float *s, const float *t, double c0, int32_t k, double beta,
                          double *scratch, double *res) {
    /* (s and t may lie in [8 m, 9 m): nothing before the pass writes there) */
    int32_t *code = (int32_t *)scratch, *tq = (int32_t *)(scratch + 10 * m), *tk = tq + m;
    double *f = scratch + m, *acc = scratch + 3 * m;
    uint64_t *pay = (uint64_t *)(scratch + 5 * m), *pay_tmp = (uint64_t *)(scratch + 9 * m);
    uint64_t *pay_in = (uint64_t *)scratch; /* (buffer a: free until the merge) */
    uint32_t *w = (uint32_t *)(scratch + 6 * m), *w_sorted = w + m, *w_tmp = w + 2 * m, lo_w;
    for (int64_t i = 0; i < m; i++) w[i] = f32_word(t[i], 1);
    if (sort_u32(m, w, NULL, w_sorted, pay, w_tmp, pay_tmp, &lo_w)) return -3; /* (payload: the positions) */
    double count = 0.0;
    for (int64_t r0 = 0; r0 < m;) {
        int64_t e = r0 + 1;
        while (e < m && w_sorted[e] == w_sorted[r0]) e++;
        for (int64_t x = r0; x < e; x++) {
            tq[pay[x] >> 32] = (int32_t)(x + r0);
            tk[pay[x] >> 32] = (int32_t)(x + e);
        }
        count += (double)r0 * (double)(e - r0); /* (C = the sum over the relations of their run's start) */
        r0 = e;
    }
    for (int64_t i = 0; i < m; i++) {
        w[i] = f32_word(s[i], 1);
        pay_in[i] = ((uint64_t)(uint32_t)tq[i] << 32) | (uint32_t)tk[i]; /* (the t positions of query and key) */
    }
    if (sort_u32(m, w, pay_in, w_sorted, pay, w_tmp, pay_tmp, &lo_w)) return -3; /* (s in order: its words) */
    const double b_lo = (double)f32_of_word(w_sorted[0] + lo_w), b_hi = (double)f32_of_word(w_sorted[m - 1] + lo_w);
    const double a_lo = b_lo + c0, a_hi = b_hi + c0; /* (a = b + const rounds monotonically: its ends are these) */
    const double lo = a_lo < b_lo ? a_lo : b_lo, hi = a_hi > b_hi ? a_hi : b_hi, twice_c = hi + lo;
    int64_t i = 0, j = 0;
    for (int64_t x = 0; x < 2 * m; x++) { /* merge: keys i, queries j */
        const double a = i < m ? (double)f32_of_word(w_sorted[i] + lo_w) + c0 : 0.0;
        const double b = j < m ? (double)f32_of_word(w_sorted[j] + lo_w) : 0.0;
        if (j >= m || (i < m && a <= b)) {
            const double z = a - 0.5 * twice_c;
            code[x] = 2 * (int32_t)(uint32_t)pay[i++] + 1;
            f[x] = k == 0 ? beta * z : z;
        } else {
            const double z = b - 0.5 * twice_c;
            code[x] = 2 * (int32_t)(pay[j++] >> 32);
            f[x] = k == 0 ? -beta * z : z;
        }
        acc[x] = 0.0;
    }
    res[1] = count;
    res[2] = hi - lo;
    return 0;
}

int64_t pwr_pair_setup_f32(int64_t m, const float *s, const float *t, const double *cst, int32_t k, double beta,
                           double *scratch, double *res) {
    if (m < 2 || m > ((int64_t)1 << 29) || k < 0 || k > MAX_K) return -1;
    return pair_setup(m, s, t, *cst, k, beta, scratch, res);
}

/* the pass; d sum / d s (relation order) into grad (m, NULL: none; the sums stay in buffer a), res[0] = the sum */
static int64_t pair_finish(int64_t m, int32_t k, double beta, double *scratch, double *grad, double *res) {
    buf_t a = {(int32_t *)scratch, scratch + m, scratch + 3 * m};
    buf_t b = {(int32_t *)(scratch + 5 * m), scratch + 6 * m, scratch + 8 * m};
    const int32_t *tq = (int32_t *)(scratch + 10 * m), *tk = tq + m;
    double sums[2];
    const int64_t rc = tree_pass(2 * m, 1, k, beta, a, b, sums);
    if (rc) return rc;
    if (grad)
        for (int64_t r = 0; r < m; r++) grad[r] = a.acc[tq[r]] + a.acc[tk[r]];
    res[0] = k == 0 ? sums[0] - sums[1] : sums[0];
    return 0;
}

int64_t pwr_pair_finish(int64_t m, int32_t k, double beta, double *scratch, double *grad, double *res) {
    if (m < 2 || m > ((int64_t)1 << 29) || k < 0 || k > MAX_K || !grad) return -1;
    return pair_finish(m, k, beta, scratch, grad, res);
}

/* The head's step for the cosine relation of float32 embeddings (pwr.py), in two calls around the features' exp as
 * above. Setup: the relations of the pairs i < j (row-major) from the n x n Gram matrices gs (student) and gt
 * (teacher) of the normalised rows, s = 1 - gs[i n + j] in float32 as relations.py's relation_vector computes them,
 * then as pwr_single_setup_f32 (kind 0, lam 0 or 1; scratch of 7 m doubles: i64, f64, i32 at 0, 4 m, 6 m; the
 * relations in i32, free until the second sort) or as pwr_pair_setup_f32 (scratch of 11 m doubles; the relations
 * in [8 m, 10 m)) with the margin cst (kind 1) or the population standard deviation of t (kind 2, two passes in
 * float64; torch's std may differ in the last bits). Finish: the pass, the loss = sum / max(C, 1) rounded to
 * float32 into loss[0], and, unless kmat is NULL, the n x n float32 matrix of the loss's gradient with respect to
 * the relations, d loss / d s_p = (d sum / d s_p) / max(C, 1) rounded to float32, at (i, j) and (j, i) for the
 * pair p = (i, j), zero on the diagonal (relations.py's relation_vector_backward builds the same matrix). res as
 * above. */
#define K_TILE 64

int64_t pwr_cosine_setup_f32(int64_t n, const float *gs, const float *gt, int32_t kind, int32_t lam, double cst,
                             int32_t k, double beta, double *scratch, double *res) {
    if (n < 3 || n > 46341 || k < 0 || k > MAX_K || kind < 0 || kind > 2 || (lam != 0 && lam != 1)) return -1;
    const int64_t m = n * (n - 1) / 2; /* (M <= 2^30; pair items: 2 M <= 2^31 codes, checked below) */
    if (kind && m > ((int64_t)1 << 29)) return -1;
    float *s = kind ? (float *)(scratch + 8 * m) : (float *)(scratch + 6 * m), *t = s + m;
    int64_t p = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i + 1; j < n; j++, p++) {
            s[p] = 1.0f - gs[i * n + j];
            t[p] = 1.0f - gt[i * n + j];
        }
    if (kind == 0) return single_setup(m, s, t, lam, k, beta, (int64_t *)scratch, scratch + 4 * m,
                                       (int32_t *)(scratch + 6 * m), res);
    if (kind == 2) { /* teacher_std: sqrt(mean((t - mean t)^2)) */
        double sum = 0.0, sq = 0.0;
        for (int64_t i = 0; i < m; i++) sum += (double)t[i];
        const double mean = sum / (double)m;
        for (int64_t i = 0; i < m; i++) sq += ((double)t[i] - mean) * ((double)t[i] - mean);
        cst = sqrt(sq / (double)m);
    }
    return pair_setup(m, s, t, cst, k, beta, scratch, res);
}

int64_t pwr_cosine_finish(int64_t n, int32_t kind, int32_t k, double beta, double *scratch, float *kmat, float *loss,
                          double *res) {
    if (n < 3 || n > 46341 || k < 0 || k > MAX_K || kind < 0 || kind > 2) return -1;
    const int64_t m = n * (n - 1) / 2;
    if (kind && m > ((int64_t)1 << 29)) return -1;
    double *grad = kmat && !kind ? scratch + 3 * m : NULL; /* (single: i64[3], free during the pass) */
    const int64_t rc = kind ? pair_finish(m, k, beta, scratch, NULL, res)
                            : single_finish(m, k, beta, (int64_t *)scratch, scratch + 4 * m,
                                            (int32_t *)(scratch + 6 * m), grad, res);
    if (rc) return rc;
    const double denom = res[1] > 0.0 ? res[1] : 1.0; /* C = 0: every sum is 0, so is the loss */
    loss[0] = (float)(res[0] / denom);
    if (!kmat) return 0;
    const double *acc = scratch + 3 * m; /* pair items: buffer a's sums, in t order */
    const int32_t *tq = (int32_t *)(scratch + 10 * m), *tk = tq + m;
    for (int64_t i = 0; i < n; i++) kmat[i * n + i] = 0.0f;
    for (int64_t i0 = 0; i0 < n; i0 += K_TILE) /* by tiles: the mirrored writes stay in cache */
        for (int64_t j0 = i0; j0 < n; j0 += K_TILE)
            for (int64_t i = i0; i < i0 + K_TILE && i < n; i++) {
                const int64_t base = i * (n - 1) - i * (i - 1) / 2 - i - 1; /* the pair (i, j) is p = base + j */
                for (int64_t j = j0 > i ? j0 : i + 1; j < j0 + K_TILE && j < n; j++) {
                    const int64_t p = base + j;
                    const float g = (float)((kind ? acc[tq[p]] + acc[tk[p]] : grad[p]) / denom);
                    kmat[i * n + j] = g;
                    kmat[j * n + i] = g;
                }
            }
    return 0;
}

