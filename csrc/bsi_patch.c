/* The streaming patch applier: one segment's decompressed payload in, output out.
 *
 * A caller-allocated bsi_patch_state (declared in bsi_decls_delta.h) is driven by
 * init / feed / finish. feed() takes any number of payload bytes (one at a time
 * is fine), reads the old image by offset from a buffer, and writes output into
 * the caller's buffer until it is full. The control, run and literal sections
 * are buffered in caller scratch memory (capped by the patch header's declared
 * limit); the non-zero diff bytes, last in the payload, are consumed as they
 * stream in. Memory does not depend on the image size.
 *
 * Every value read from the payload is untrusted: lengths are checked against
 * the scratch capacity and the declared output size, old offsets against the
 * old image, and at finish every section must have been consumed exactly.
 * Errors are sticky. Layout: docs/patch-format.md. No I/O, no allocation.
 */
#include "bsipatch.h"
#include "bsi_internal.h"

enum { PH_HDR = 0, PH_BUF = 1, PH_RUN = 2, PH_DONE = 3 };

static int fail(bsi_patch_state *st, int code) {
    st->error = code;
    return code;
}

BSI_API int bsi_patch_init(bsi_patch_state *st, uint64_t out_total, uint64_t old_size,
                           uint64_t scratch_cap) {
    if (!st) return BSI_E_INVAL;
    memset(st, 0, sizeof(*st));
    st->out_total = out_total;
    st->old_size = old_size;
    st->scratch_cap = scratch_cap;
    st->phase = PH_HDR;
    st->run_nonzero = 1; /* the first run read is a zero run */
    return BSI_OK;
}

/* Read a varint from scratch[*pos .. limit). */
static int get_varint(const uint8_t *buf, uint64_t *pos, uint64_t limit, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (*pos >= limit) return BSI_E_CORRUPT;
        b = buf[(*pos)++];
        if (shift == 63 && b > 1) return BSI_E_CORRUPT;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return BSI_E_CORRUPT;
}

/* Decode the next control record into the current op. */
static int next_op(bsi_patch_state *st, const uint8_t *scratch) {
    uint64_t v, len, kind;
    int rc;
    if ((rc = get_varint(scratch, &st->ctrl_pos, st->ctrl_len, &v)) < 0) return rc;
    kind = v & 3;
    len = v >> 2;
    if (len == 0) return BSI_E_CORRUPT;
    if (len > st->out_total - st->out_done) return BSI_E_OVERFLOW;
    st->cur_kind = (uint32_t)kind;
    st->cur_left = len;
    st->cur_old = 0;
    if (kind == BSI_OP_COPY || kind == BSI_OP_ADD) {
        uint64_t z, off;
        int64_t delta;
        if ((rc = get_varint(scratch, &st->ctrl_pos, st->ctrl_len, &z)) < 0) return rc;
        delta = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
        off = st->prev_old_end + (uint64_t)delta; /* wraps on purpose; range-checked below */
        if (!bsi_range_ok(off, len, st->old_size)) return BSI_E_RANGE;
        st->cur_old = off;
        st->prev_old_end = off + len;
    } else if (kind == BSI_OP_INSERT) {
        if (len > st->lit_len - st->lit_pos) return BSI_E_CORRUPT;
    }
    st->cur_active = 1;
    st->ops_done++;
    return 0;
}

/* The old bytes of the current op, cut to *n (> 0) bytes: from old, or from src (the
 * predicted old image made on demand, which may cut *n further). Called once the
 * number of bytes the step makes is known, so nothing is made twice. */
static const uint8_t *old_at(const bsi_patch_state *st, const uint8_t *old, bsi_exe_source *src,
                             uint64_t *n) {
    return src ? bsi_exe_source_at(src, st->cur_old, n, st->cur_left) : old + st->cur_old;
}

/* Ops whose old bytes are prefetched ahead of the one being applied. */
#define PF_AHEAD 16

/* Read the buffered control section PF_AHEAD ops ahead of next_op and prefetch where
 * each COPY/ADD op will read the old image: the ops of a large update jump around a
 * large old image, and the first read of each was a cache miss that dominated the
 * apply. Only hints: this decoder keeps its own position and changes nothing next_op
 * decides or checks (a malformed record just stops it). */
static void prefetch_ahead(bsi_patch_state *st, const uint8_t *scratch, const uint8_t *old) {
    while (st->pf_ops < st->ops_done + PF_AHEAD && st->pf_pos < st->ctrl_len) {
        uint64_t v, z, off, len, kind;
        if (get_varint(scratch, &st->pf_pos, st->ctrl_len, &v) < 0) break;
        kind = v & 3, len = v >> 2;
        st->pf_ops++;
        if (kind != BSI_OP_COPY && kind != BSI_OP_ADD) continue;
        if (get_varint(scratch, &st->pf_pos, st->ctrl_len, &z) < 0) break;
        off = st->pf_prev_end + (uint64_t)((int64_t)(z >> 1) ^ -(int64_t)(z & 1));
        st->pf_prev_end = off + len;
        if (len && bsi_range_ok(off, len, st->old_size)) {
            __builtin_prefetch(old + off);
            if (len > 64) __builtin_prefetch(old + off + 64);
        }
    }
    if (st->pf_ops < st->ops_done + PF_AHEAD) st->pf_pos = st->ctrl_len; /* stop for good */
}

BSI_API int bsi_patch_feed(bsi_patch_state *st, const uint8_t *old, uint64_t old_size,
                           uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in,
                           bsi_outbuf *out) {
    return bsi_patch_feed_prov(st, old, old_size, scratch, scratch_cap, in, out, NULL, 0, 0);
}

static int feed(bsi_patch_state *st, const uint8_t *old, uint64_t old_size, bsi_exe_source *src,
                uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out,
                uint64_t *prov, uint64_t prov_cap, uint32_t flags);

BSI_API int bsi_patch_feed_prov(bsi_patch_state *st, const uint8_t *old, uint64_t old_size,
                                uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in,
                                bsi_outbuf *out, uint64_t *prov, uint64_t prov_cap,
                                uint32_t flags) {
    return feed(st, old, old_size, NULL, scratch, scratch_cap, in, out, prov, prov_cap, flags);
}

BSI_API int bsi_patch_feed_src(bsi_patch_state *st, bsi_exe_source *src, uint8_t *scratch,
                               uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out) {
    if (!src) return BSI_E_INVAL;
    return feed(st, src->base, src->size, src, scratch, scratch_cap, in, out, NULL, 0, 0);
}

/* The applier; src (or NULL) gives the old bytes of COPY and ADD ops (old is then its
 * base: prefetch hints only). */
static int feed(bsi_patch_state *st, const uint8_t *old, uint64_t old_size, bsi_exe_source *src,
                uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out,
                uint64_t *prov, uint64_t prov_cap, uint32_t flags) {
    int rc;
    const uint64_t bs = BSI_BLOCK_SIZE;
    if (!st || !in || !out || (in->size > 0 && !in->ptr) || in->pos > in->size ||
        out->pos > out->size || (out->size > 0 && !out->ptr))
        return BSI_E_INVAL;
    if (st->error) return st->error;
    if (old_size != st->old_size || (old_size > 0 && !old) || scratch_cap < st->scratch_cap ||
        (st->scratch_cap > 0 && !scratch))
        return fail(st, BSI_E_INVAL);
    if ((flags & ~(uint32_t)BSI_PATCH_SKIP_REPORTED) || (!prov && flags) ||
        (prov && prov_cap < (st->prov_phase + st->out_total) / bs))
        return fail(st, BSI_E_INVAL);

    for (;;) {
        switch (st->phase) {
        case PH_HDR: {
            size_t n = in->size - in->pos, need = BSI_SEG_HEADER_SIZE - st->hdr_have;
            if (n > need) n = need;
            if (n) memcpy(st->hdr + st->hdr_have, in->ptr + in->pos, n); /* ptr may be NULL */
            st->hdr_have += (uint32_t)n;
            in->pos += n;
            if (st->hdr_have < BSI_SEG_HEADER_SIZE) return 0;
            {
                uint64_t out_len = bsi_load64le(st->hdr), buffered;
                st->n_ops = bsi_load64le(st->hdr + 8);
                st->ctrl_len = bsi_load64le(st->hdr + 16);
                st->runs_len = bsi_load64le(st->hdr + 24);
                st->nruns_len = bsi_load64le(st->hdr + 32);
                st->lit_len = bsi_load64le(st->hdr + 40);
                st->diff_len = bsi_load64le(st->hdr + 48);
                if (out_len != st->out_total) return fail(st, BSI_E_CORRUPT);
                if (bsi_add_overflow_u64(st->ctrl_len, st->runs_len, &buffered) ||
                    bsi_add_overflow_u64(buffered, st->nruns_len, &buffered) ||
                    bsi_add_overflow_u64(buffered, st->lit_len, &buffered) ||
                    buffered > st->scratch_cap)
                    return fail(st, BSI_E_OVERFLOW);
                if (st->dense && (st->runs_len || st->nruns_len)) return fail(st, BSI_E_CORRUPT);
                if (st->lit_len > st->out_total || st->diff_len > st->out_total ||
                    st->n_ops > st->out_total || st->n_ops > st->ctrl_len)
                    return fail(st, BSI_E_CORRUPT);
            }
            st->phase = PH_BUF;
            break;
        }
        case PH_BUF: {
            uint64_t total = st->ctrl_len + st->runs_len + st->nruns_len + st->lit_len;
            size_t n = in->size - in->pos;
            if (n > total - st->buf_have) n = (size_t)(total - st->buf_have);
            if (n) memcpy(scratch + st->buf_have, in->ptr + in->pos, n);
            st->buf_have += n;
            in->pos += n;
            if (st->buf_have < total) return 0;
            st->phase = PH_RUN;
            break;
        }
        case PH_RUN: {
            const uint8_t *runs = scratch + st->ctrl_len;
            const uint8_t *nruns = runs + st->runs_len;
            const uint8_t *lit = nruns + st->nruns_len;
            if (!st->cur_active) {
                if (st->ops_done == st->n_ops) {
                    if (st->out_done != st->out_total || st->ctrl_pos != st->ctrl_len ||
                        st->runs_pos != st->runs_len || st->nruns_pos != st->nruns_len ||
                        st->lit_pos != st->lit_len ||
                        st->diff_done != st->diff_len || st->run_left != 0)
                        return fail(st, BSI_E_CORRUPT);
                    st->phase = PH_DONE;
                    break;
                }
                if (old) prefetch_ahead(st, scratch, old);
                if ((rc = next_op(st, scratch)) < 0) return fail(st, rc);
            }
            while (st->cur_left > 0) {
                size_t space = out->size - out->pos;
                uint64_t n = st->cur_left;
                uint8_t *dst = out->ptr + out->pos;
                if (space == 0) return 1;
                if (n > space) n = space;
                if (prov && (st->cur_kind == BSI_OP_COPY || st->cur_kind == BSI_OP_ZERO)) {
                    uint64_t at = st->prov_phase + st->out_done, in_blk = at % bs;
                    int copy = st->cur_kind == BSI_OP_COPY;
                    if (in_blk == 0 && n >= bs && (!copy || st->cur_old % bs == 0)) {
                        /* whole blocks made by this one op: report them */
                        uint64_t nb = n / bs, b0 = at / bs, k0 = st->cur_old / bs;
                        for (uint64_t j = 0; j < nb; j++)
                            prov[b0 + j] = copy ? BSI_PROV_COPY + k0 + j : BSI_PROV_ZERO;
                        n = nb * bs;
                        if (flags & BSI_PATCH_SKIP_REPORTED) goto produced;
                    } else if (n > bs - in_blk) {
                        n = bs - in_blk; /* stop at the block boundary: the next may be whole */
                    }
                }
                switch (st->cur_kind) {
                case BSI_OP_COPY:
                    memcpy(dst, old_at(st, old, src, &n), n);
                    break;
                case BSI_OP_ZERO:
                    memset(dst, 0, n);
                    break;
                case BSI_OP_INSERT:
                    memcpy(dst, lit + st->lit_pos, n);
                    st->lit_pos += n;
                    break;
                default: /* ADD */
                    if (st->dense) {
                        /* every byte takes the next difference byte */
                        size_t avail = in->size - in->pos;
                        const uint8_t *d = in->ptr + in->pos, *o;
                        if (n > st->diff_len - st->diff_done) return fail(st, BSI_E_CORRUPT);
                        if (avail == 0) return 0;
                        if (n > avail) n = avail;
                        o = old_at(st, old, src, &n);
                        for (uint64_t i = 0; i < n; i++) dst[i] = (uint8_t)(o[i] + d[i]);
                        in->pos += n;
                        st->diff_done += n;
                        break;
                    }
                    while (st->run_left == 0) {
                        uint64_t r;
                        /* runs alternate: zero runs from one section, non-zero runs
                         * from the other */
                        if (st->run_nonzero)
                            rc = get_varint(runs, &st->runs_pos, st->runs_len, &r);
                        else
                            rc = get_varint(nruns, &st->nruns_pos, st->nruns_len, &r);
                        if (rc < 0) return fail(st, rc);
                        st->run_nonzero ^= 1u;
                        st->run_left = r;
                    }
                    if (n > st->run_left) n = st->run_left;
                    if (!st->run_nonzero) {
                        memcpy(dst, old_at(st, old, src, &n), n);
                    } else {
                        size_t avail = in->size - in->pos;
                        const uint8_t *d = in->ptr + in->pos, *o;
                        if (n > st->diff_len - st->diff_done) return fail(st, BSI_E_CORRUPT);
                        if (avail == 0) return 0;
                        if (n > avail) n = avail;
                        o = old_at(st, old, src, &n);
                        for (uint64_t i = 0; i < n; i++) dst[i] = (uint8_t)(o[i] + d[i]);
                        in->pos += n;
                        st->diff_done += n;
                    }
                    st->run_left -= n;
                    break;
                }
            produced:
                out->pos += n;
                st->out_done += n;
                st->kind_bytes[st->cur_kind & 3] += n;
                st->cur_old += n;
                st->cur_left -= n;
            }
            st->cur_active = 0;
            break;
        }
        case PH_DONE:
            if (in->pos < in->size) return fail(st, BSI_E_CORRUPT);
            return 0;
        default:
            return fail(st, BSI_E_STATE);
        }
    }
}

BSI_API int bsi_patch_set_mode(bsi_patch_state *st, uint32_t mode) {
    if (!st || mode > BSI_PATCH_DENSE || st->phase != PH_HDR || st->hdr_have || st->out_done ||
        st->error)
        return BSI_E_INVAL;
    st->dense = mode == BSI_PATCH_DENSE;
    return BSI_OK;
}

BSI_API int bsi_patch_set_phase(bsi_patch_state *st, uint64_t phase) {
    if (!st || phase >= BSI_BLOCK_SIZE || st->phase != PH_HDR || st->hdr_have || st->out_done ||
        st->error)
        return BSI_E_INVAL;
    st->prov_phase = phase;
    return BSI_OK;
}

BSI_API int bsi_patch_finish(bsi_patch_state *st) {
    if (!st) return BSI_E_INVAL;
    if (st->error) return st->error;
    if (st->phase != PH_DONE) return BSI_E_TRUNCATED;
    return BSI_OK;
}
