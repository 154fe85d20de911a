"""Exact boxes of every contour at every quantised threshold, in one pass.

wsolevaluation turns a score map into boxes per threshold with
``cv2.threshold`` (pixels strictly above an integer level ``L``) and
``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``; each contour gives its
bounding rect.  The map is quantised to uint8, so only the levels
``L = -1 .. 255`` can differ.  This module computes, for all of them at once,
what those OpenCV calls would give, without calling OpenCV:

* Outer contours are the 8-connected components of ``{q > L}``; the bounding
  rect of a component's outer border is the component's bounding box.
* Hole contours are the 4-connected components of ``{q <= L}`` that do not
  touch the image border (OpenCV pads the image with zeros).  A hole border
  runs through the foreground pixels 4-adjacent to the hole, so its bounding
  rect is the hole's bounding box grown by one pixel on every side.
* ``cv2.contourArea`` of a border (a polygon through pixel centres whose
  diagonal steps cut corners) follows from 2x2 window counts.  With ``Nk``
  the number of windows holding exactly ``k`` pixels of a set: an outer
  border encloses ``N4 + N3 / 2`` of the component with its holes filled,
  which is ``(N4 + N3 / 2)`` of the component itself plus the areas of its
  hole borders; a hole border encloses ``G = 2 |H| - N3 / 2 - N4`` of the
  hole ``H`` plus the outer areas of the components inside it.

Foreground only grows as ``L`` falls and background only grows as ``L``
rises, so union-find sweeps visit each pixel once instead of once per
threshold:

1. background, ascending: holes (boxes, ``G``, raster-first pixel) and
   ``e(p)``, the level at which p's background component reaches the border
   (``{e > L}`` is ``{q > L}`` with its holes filled);
2. foreground, descending: every outer contour's box, and the single-contour
   winner.  A component is top-level when the pixel left of its raster-first
   pixel has ``e <= L`` (it lies in the outside background); a hole belongs
   to the component holding the pixel left of the hole's raster-first pixel.

When a map has too many holes to record, a sweep over the filled foreground
(``{e > L}``, descending) gives the winners instead.

Single-contour mode keeps ``max(contours, key=cv2.contourArea)``: the first
contour of largest area in OpenCV's output order.  A nested contour always
has a strictly smaller area than its top-level ancestor, so only top-level
outer contours compete, except that a hole can tie with its parent when the
parent has no 2x2 window with three or more pixels (a one-pixel-wide ring).
Where the winner is not settled by area alone (a tie between contours with
different boxes, a possible parent/hole tie, or nested components whose
share is unknown and could change the order) the level is *flagged* and the
caller asks OpenCV; results stay exact without relying on OpenCV's contour
order.

Grids are padded by one pixel so that neighbours never leave the array.
Which neighbours a sweep has already added when it reaches a pixel depends
only on the values (larger or smaller, or equal and earlier in raster
order), so both sweeps' neighbour masks come from one vectorised raster pass
(_neighbour_masks) instead of eight scattered loads per pixel.
Level index convention: ``li = L + 1`` in ``[0, 256]``; the foreground at
``li`` is ``{q >= li}``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

NUM_LEVELS = 257  # li = L + 1 for L in [-1, 255]

# Neighbour bit i of a pixel's 8-neighbourhood mask, in ring order:
# 0 NW, 1 N, 2 NE, 3 E, 4 SE, 5 S, 6 SW, 7 W.
_RING_DX = (-1, 0, 1, 1, 1, 0, -1, -1)
_RING_DY = (-1, -1, -1, 0, 1, 1, 1, 0)


def _group_representatives(members: list[int], links: list[tuple[int, int]]) -> list[int]:
    """One member per connected group, given the linked member pairs."""
    group = {i: i for i in members}

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i
    for a, b in links:
        if a in group and b in group:
            group[root(b)] = root(a)
    return sorted({root(i) for i in members})


def _build_tables():
    """Lookup tables indexed by the 8-neighbour membership mask.

    reps8[m]: count, then one neighbour per group of members that are
        8-adjacent to each other (certainly one component already), so
        adding the pixel needs one find per group (at most 4).
    reps4[m]: the same for 4-connectivity among the orthogonal members; two
        orthogonal members are linked through the diagonal between them.
    win3[m]: how many of the 4 windows around the pixel reach >= 3 members
        once the pixel is added (each such step adds 1 to 2 N4 + N3).
    """
    reps8 = np.full((256, 5), -1, np.int32)
    reps4 = np.full((256, 5), -1, np.int32)
    win3 = np.zeros(256, np.int32)
    adjacent8 = [(a, b) for a in range(8) for b in range(a + 1, 8)
                 if abs(_RING_DX[a] - _RING_DX[b]) <= 1
                 and abs(_RING_DY[a] - _RING_DY[b]) <= 1]
    windows = ((0, 1, 7), (1, 2, 3), (7, 6, 5), (3, 4, 5))
    for m in range(256):
        members = [i for i in range(8) if m >> i & 1]
        reps = _group_representatives(members, adjacent8)
        reps8[m, 0] = len(reps)
        reps8[m, 1:1 + len(reps)] = reps
        ortho = [i for i in (1, 3, 5, 7) if m >> i & 1]
        links = [(a, b) for a, diag, b in ((1, 2, 3), (3, 4, 5), (5, 6, 7), (7, 0, 1))
                 if m >> diag & 1]
        reps = _group_representatives(ortho, links)
        reps4[m, 0] = len(reps)
        reps4[m, 1:1 + len(reps)] = reps
        win3[m] = sum(1 + sum(m >> i & 1 for i in w) >= 3 for w in windows)
    return reps8, reps4, win3


_REPS8, _REPS4, _WIN3 = _build_tables()


@njit(nogil=True, cache=True)
def box_iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1):
    """wsolevaluation's IoU: inclusive pixels, non-positive union gives 0."""
    iw = min(ax1, bx1) - max(ax0, bx0) + 1
    ih = min(ay1, by1) - max(ay0, by0) + 1
    if iw < 0:
        iw = 0
    if ih < 0:
        ih = 0
    inter = iw * ih
    den = ((ax1 - ax0 + 1) * (ay1 - ay0 + 1)
           + (bx1 - bx0 + 1) * (by1 - by0 + 1) - inter)
    if den <= 0:
        return 0.0
    return inter / den


@njit(nogil=True, cache=True)
def _best_iou(x0, y0, x1, y1, gt, n_gt):
    best = 0.0
    for g in range(n_gt):
        v = box_iou(x0, y0, x1, y1, gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3])
        if v > best:
            best = v
    return best


@njit(nogil=True, cache=True)
def _sort_padded(q, W, H, order, start):
    """Padded indices of the pixels by ascending value (raster order within
    a value); start[v]..start[v+1] are the pixels of value v."""
    wp = W + 2
    for v in range(257):
        start[v] = 0
    for y in range(H):
        for x in range(W):
            start[q[y, x] + 1] += 1
    for v in range(256):
        start[v + 1] += start[v]
    fill = start[:256].copy()
    for y in range(H):
        for x in range(W):
            v = q[y, x]
            order[fill[v]] = (y + 1) * wp + x + 1
            fill[v] += 1


@njit(nogil=True, cache=True, inline='always')
def _offset(bit, wp):
    """Padded-index offset of ring neighbour ``bit`` (see _RING_DX/_DY)."""
    if bit == 0:
        return -wp - 1
    if bit == 1:
        return -wp
    if bit == 2:
        return -wp + 1
    if bit == 3:
        return 1
    if bit == 4:
        return wp + 1
    if bit == 5:
        return wp
    if bit == 6:
        return wp - 1
    return -1


@njit(nogil=True, cache=True)
def _neighbour_masks(q, qp, fmask, bmask):
    """For every pixel p of value v, the ring-bit masks of its neighbours
    already added when a sweep in value order (raster order within a value)
    adds p: ``fmask`` for the descending foreground sweep (value > v, or == v
    and earlier in raster order; never the frame), ``bmask`` for the
    ascending background sweep (value < v, or == v and earlier; always the
    frame).  One raster pass over a copy of q framed with -1 (``qp``, below
    every level) that vectorises, instead of eight scattered loads per pixel
    in each sweep."""
    H, W = q.shape
    wp = W + 2
    for i in range(wp):
        qp[i] = -1
        qp[(H + 1) * wp + i] = -1
    for y in range(H):
        row = qp[(y + 1) * wp:(y + 2) * wp]
        row[0] = -1
        row[W + 1] = -1
        for x in range(W):
            row[x + 1] = q[y, x]
    for y in range(1, H + 1):
        up = qp[(y - 1) * wp:y * wp]
        mid = qp[y * wp:(y + 1) * wp]
        down = qp[(y + 1) * wp:(y + 2) * wp]
        fout = fmask[y * wp:(y + 1) * wp]
        bout = bmask[y * wp:(y + 1) * wp]
        for x in range(1, W + 1):
            v = mid[x]
            nw = up[x - 1]
            n = up[x]
            ne = up[x + 1]
            e = mid[x + 1]
            se = down[x + 1]
            s = down[x]
            sw = down[x - 1]
            w = mid[x - 1]
            fout[x] = (np.uint8(nw >= v) | np.uint8(n >= v) << 1 | np.uint8(ne >= v) << 2
                       | np.uint8(e > v) << 3 | np.uint8(se > v) << 4 | np.uint8(s > v) << 5
                       | np.uint8(sw > v) << 6 | np.uint8(w >= v) << 7)
            bout[x] = (np.uint8(nw <= v) | np.uint8(n <= v) << 1 | np.uint8(ne <= v) << 2
                       | np.uint8(e < v) << 3 | np.uint8(se < v) << 4 | np.uint8(s < v) << 5
                       | np.uint8(sw < v) << 6 | np.uint8(w <= v) << 7)


# The sweeps below spell out find/union inline on purpose: numba passes
# arrays to helper functions with reference counting, which costs more than
# the union-find work itself in these per-pixel loops.

@njit(nogil=True, cache=True)
def _sweep_background(q, M, order, start, needed, gt, n_gt, nrep4, off4,
                      win3, colx, rowy, bmask, parent, size, bx0, by0, bx1,
                      by1, first, score, dirty, iou, live, nxt, emap,
                      order_e, start_e, rec_first, rec_score, rec_start,
                      hole_best):
    """Background {q <= L}, ascending, 4-connected.

    All padding pixels belong to the frame component rooted at index 0, which
    always stays the root; every other component is a hole.  Per needed
    level: hole_best[li] = best IoU of a hole box (-1 when no hole), and one
    record per hole (raster-first pixel, twice its G term: 4|H| - N3 - 2 N4
    over the hole's own 2x2 windows) in rec_* from rec_start[li] to
    rec_start[li + 1]; when the records overflow, rec_start[0] is set to -1.

    When a component joins the frame at value v its pixels get e = v (emap;
    the padding has e = -1), and they are appended to order_e (ascending e,
    start_e[v] .. start_e[v + 1]), found through circular member lists.
    """
    H, W = q.shape
    wp = W + 2
    n_pad = (H + 2) * wp
    cap = rec_first.shape[0]
    FRAME = 0
    for i in range(n_pad):
        parent[i] = FRAME
        emap[i] = -1
    size[FRAME] = n_pad + 1
    ne = 0
    nrec = 0
    for li in range(258):
        rec_start[li] = 0
    nlive = 0
    for v in range(0, M + 1):
        start_e[v] = ne
        for j in range(start[v], start[v + 1]):
            p = order[j]
            m = bmask[p]
            r = -1
            for k in range(nrep4[m]):
                n = p + off4[m * 4 + k]
                while parent[n] != n:
                    parent[n] = parent[parent[n]]
                    n = parent[n]
                if r < 0:
                    r = n
                elif n != r:
                    if n == FRAME or r == FRAME:
                        # A component reaches the border: its pixels' e is v.
                        c0 = r if n == FRAME else n
                        c = c0
                        while True:
                            emap[c] = v
                            order_e[ne] = c
                            ne += 1
                            c = nxt[c]
                            if c == c0:
                                break
                    else:
                        # Splice the two circular member lists.
                        t = nxt[r]
                        nxt[r] = nxt[n]
                        nxt[n] = t
                    a = r
                    b = n
                    if size[a] < size[b]:
                        a = n
                        b = r
                    parent[b] = a
                    size[a] += size[b]
                    if bx0[b] < bx0[a]:
                        bx0[a] = bx0[b]
                    if by0[b] < by0[a]:
                        by0[a] = by0[b]
                    if bx1[b] > bx1[a]:
                        bx1[a] = bx1[b]
                    if by1[b] > by1[a]:
                        by1[a] = by1[b]
                    if first[b] < first[a]:
                        first[a] = first[b]
                    score[a] += score[b]
                    dirty[a] = 1
                    r = a
            x = colx[p]
            y = rowy[p]
            if r < 0:
                parent[p] = p
                size[p] = 1
                bx0[p] = x
                bx1[p] = x
                by0[p] = y
                by1[p] = y
                first[p] = p
                score[p] = 4 - win3[m]
                dirty[p] = 1
                nxt[p] = p
                live[nlive] = p
                nlive += 1
            elif r == FRAME:
                parent[p] = r
                emap[p] = v
                order_e[ne] = p
                ne += 1
            else:
                parent[p] = r
                size[r] += 1
                nxt[p] = nxt[r]
                nxt[r] = p
                # Windows reaching 3 or 4 background pixels are all in p's
                # (4-connected) component.
                score[r] += 4 - win3[m]
                if p < first[r]:
                    first[r] = p
                if x < bx0[r]:
                    bx0[r] = x
                    dirty[r] = 1
                elif x > bx1[r]:
                    bx1[r] = x
                    dirty[r] = 1
                if y < by0[r]:
                    by0[r] = y
                    dirty[r] = 1
                elif y > by1[r]:
                    by1[r] = y
                    dirty[r] = 1
        li = v + 1
        if rec_start[0] >= 0:
            rec_start[li] = nrec
        if li > M or not needed[li]:
            continue
        k = 0
        best_iou = -1.0
        for i in range(nlive):
            r = live[i]
            if parent[r] != r:
                # Absorbed (maybe by the frame): never a hole root again.
                continue
            live[k] = r
            k += 1
            if dirty[r]:
                # Hole box = bbox grown by one pixel, clipped like
                # boundingRect's x + w; padded coordinates are image + 1.
                x1 = bx1[r] + 1
                y1 = by1[r] + 1
                if x1 > W - 1:
                    x1 = W - 1
                if y1 > H - 1:
                    y1 = H - 1
                iou[r] = _best_iou(bx0[r] - 2, by0[r] - 2, x1, y1, gt, n_gt)
                dirty[r] = 0
            if iou[r] > best_iou:
                best_iou = iou[r]
            if rec_start[0] >= 0:
                if nrec < cap:
                    rec_first[nrec] = first[r]
                    rec_score[nrec] = score[r]
                    nrec += 1
                else:
                    rec_start[0] = -1
        nlive = k
        hole_best[li] = best_iou
        if rec_start[0] >= 0:
            rec_start[li + 1] = nrec
    start_e[M + 1] = ne


# Modes of _sweep_foreground.
_FILLED = 0
_CHECK = 1
_DERIVE = 2


@njit(nogil=True, cache=True)
def _sweep_foreground(mode, q, M, order, start, needed, gt, n_gt, nrep8, off8,
                      win3, colx, rowy, member, fmask, parent, size, bx0, by0,
                      bx1, by1, first, score, dirty, iou, live, emap, acc,
                      rec_first, rec_score, rec_start, win_box, win_a2, flag,
                      fg_best):
    """Foreground, descending, 8-connected; pixels of value v added at li = v.

    A component's score is 2 * N4 + N3 over its 2x2 windows (twice its
    contourArea when it has no hole).

    _FILLED (order = ascending e): components are the filled outer contours;
        record the largest per level (win_box, win_a2) and flag ties between
        different boxes.
    _CHECK (order = ascending q, after _FILLED): every outer contour's best
        IoU (fg_best); flag levels where a component with score 0 (one pixel
        wide) has the winner's bbox: it may enclose a hole of equal area.
    _DERIVE (order = ascending q, with the hole records): every outer
        contour's best IoU, and the winner without a filled sweep.  A
        component is top-level when the pixel left of its raster-first pixel
        is outside every hole (e <= L); a hole belongs to the component
        holding the pixel left of its raster-first pixel.  Twice the area of
        a top-level component's outer contour is its score plus the 2G of its
        holes plus twice the areas of what its holes contain; nested
        components only enter through bounds, and levels they leave
        undecided are flagged.
    """
    H, W = q.shape
    wp = W + 2
    n_pad = (H + 2) * wp
    filled = mode == _FILLED
    for i in range(n_pad):
        member[i] = 0
        acc[i] = 0
    nlive = 0
    for v in range(M, -1, -1):
        for j in range(start[v], start[v + 1]):
            p = order[j]
            if filled:  # e order: membership as the sweep goes
                m = (member[p - wp - 1] | member[p - wp] << 1
                     | member[p - wp + 1] << 2 | member[p + 1] << 3
                     | member[p + wp + 1] << 4 | member[p + wp] << 5
                     | member[p + wp - 1] << 6 | member[p - 1] << 7)
                member[p] = 1
            else:  # q order: precomputed (_neighbour_masks)
                m = fmask[p]
            r = -1
            for k in range(nrep8[m]):
                n = p + off8[m * 4 + k]
                while parent[n] != n:
                    parent[n] = parent[parent[n]]
                    n = parent[n]
                if r < 0:
                    r = n
                elif n != r:
                    a = r
                    b = n
                    if size[a] < size[b]:
                        a = n
                        b = r
                    parent[b] = a
                    size[a] += size[b]
                    if bx0[b] < bx0[a]:
                        bx0[a] = bx0[b]
                    if by0[b] < by0[a]:
                        by0[a] = by0[b]
                    if bx1[b] > bx1[a]:
                        bx1[a] = bx1[b]
                    if by1[b] > by1[a]:
                        by1[a] = by1[b]
                    if first[b] < first[a]:
                        first[a] = first[b]
                    score[a] += score[b]
                    dirty[a] = 1
                    r = a
            x = colx[p]
            y = rowy[p]
            if r < 0:
                parent[p] = p
                size[p] = 1
                bx0[p] = x
                bx1[p] = x
                by0[p] = y
                by1[p] = y
                first[p] = p
                score[p] = 0
                dirty[p] = 1
                live[nlive] = p
                nlive += 1
            else:
                parent[p] = r
                size[r] += 1
                # The 4 windows around p are all in p's component.
                score[r] += win3[m]
                if p < first[r]:
                    first[r] = p
                if x < bx0[r]:
                    bx0[r] = x
                    dirty[r] = 1
                elif x > bx1[r]:
                    bx1[r] = x
                    dirty[r] = 1
                if y < by0[r]:
                    by0[r] = y
                    dirty[r] = 1
                elif y > by1[r]:
                    by1[r] = y
                    dirty[r] = 1
        li = v
        if not needed[li]:
            continue
        k = 0
        if mode == _FILLED:
            best = -1
            w = -1
            tie = False
            for i in range(nlive):
                r = live[i]
                if parent[r] != r:
                    continue
                live[k] = r
                k += 1
                a = score[r]
                if a > best:
                    best = a
                    w = r
                    tie = False
                elif a == best and (bx0[r] != bx0[w] or by0[r] != by0[w]
                                    or bx1[r] != bx1[w] or by1[r] != by1[w]):
                    tie = True
            nlive = k
            win_a2[li] = best
            win_box[li, 0] = bx0[w]
            win_box[li, 1] = by0[w]
            win_box[li, 2] = bx1[w]
            win_box[li, 3] = by1[w]
            flag[li] = tie
            continue

        if mode == _DERIVE:
            # Add each hole's 2G to the component around it.
            for i in range(rec_start[li], rec_start[li + 1]):
                n = rec_first[i] - 1
                while parent[n] != n:
                    parent[n] = parent[parent[n]]
                    n = parent[n]
                acc[n] += rec_score[i]
        check = mode == _CHECK and win_a2[li] > 0 and not flag[li]
        best_iou = 0.0
        best = -1
        second = -1
        w = -1
        tie = False
        nested = 0
        nested_area = 0
        for i in range(nlive):
            r = live[i]
            if parent[r] != r:
                continue
            live[k] = r
            k += 1
            if dirty[r]:
                # Padded coordinates are image + 1; the box's far corner
                # (x + w of boundingRect) is bbox max + 1, clipped.
                x1 = bx1[r]
                y1 = by1[r]
                if x1 > W - 1:
                    x1 = W - 1
                if y1 > H - 1:
                    y1 = H - 1
                iou[r] = _best_iou(bx0[r] - 1, by0[r] - 1, x1, y1, gt, n_gt)
                dirty[r] = 0
            if iou[r] > best_iou:
                best_iou = iou[r]
            if check:
                if (score[r] == 0 and bx0[r] == win_box[li, 0]
                        and by0[r] == win_box[li, 1]
                        and bx1[r] == win_box[li, 2]
                        and by1[r] == win_box[li, 3]):
                    flag[li] = True
            elif mode == _DERIVE:
                a = score[r] + acc[r]
                if emap[first[r] - 1] > li - 1:
                    # Nested: its area belongs to some top-level contour.
                    nested += 1
                    nested_area += a
                    continue
                if a > best:
                    second = best
                    best = a
                    w = r
                    tie = False
                elif a == best:
                    second = a
                    if (bx0[r] != bx0[w] or by0[r] != by0[w]
                            or bx1[r] != bx1[w] or by1[r] != by1[w]):
                        tie = True
                elif a > second:
                    second = a
        nlive = k
        fg_best[li] = best_iou
        if mode == _DERIVE:
            win_a2[li] = best
            win_box[li, 0] = bx0[w]
            win_box[li, 1] = by0[w]
            win_box[li, 2] = bx1[w]
            win_box[li, 3] = by1[w]
            # Nested components add their (non-negative) area to unknown
            # top-level contours: the leader wins only if it beats every
            # other contour given all of it.  A one-pixel-wide winner
            # (score 0) with holes may tie with its only hole.
            undecided = nested > 0 and second + nested_area >= best
            flag[li] = tie or undecided or (score[w] == 0 and acc[w] > 0)
            for i in range(rec_start[li], rec_start[li + 1]):
                n = rec_first[i] - 1
                while parent[n] != n:
                    n = parent[n]
                acc[n] = 0


@njit(nogil=True, cache=True)
def _score_one(q, gt, n_gt, needed, nrep8, nrep4, win3, off8, off4, colx,
               rowy, order, start, order_e, start_e, member, qp, fmask, bmask,
               parent, size, bx0, by0, bx1, by1, first, score, dirty, iou, live,
               nxt, emap, acc, rec_first, rec_score, rec_start, win_box, win_a2,
               fg_best, hole_best, out_multi, out_box, out_flag, out_v1_best,
               out_v1_first):
    """All per-level results of one quantised map q (H x W uint8)."""
    H, W = q.shape
    M = 0
    for y in range(H):
        for x in range(W):
            if q[y, x] > M:
                M = q[y, x]
    for li in range(257):
        out_flag[li] = False
        win_a2[li] = -1
        fg_best[li] = -1.0
        hole_best[li] = -1.0
    _sort_padded(q, W, H, order, start)
    _neighbour_masks(q, qp, fmask, bmask)
    _sweep_background(q, M, order, start, needed, gt, n_gt, nrep4, off4,
                      win3, colx, rowy, bmask, parent, size, bx0, by0, bx1,
                      by1, first, score, dirty, iou, live, nxt, emap,
                      order_e, start_e, rec_first, rec_score, rec_start,
                      hole_best)
    if rec_start[0] >= 0:
        _sweep_foreground(_DERIVE, q, M, order, start, needed, gt, n_gt,
                          nrep8, off8, win3, colx, rowy, member, fmask, parent,
                          size, bx0, by0, bx1, by1, first, score, dirty, iou, live,
                          emap, acc, rec_first, rec_score, rec_start, win_box,
                          win_a2, out_flag, fg_best)
    else:
        # Too many holes to record: filled sweep, then every component.
        _sweep_foreground(_FILLED, q, M, order_e, start_e, needed, gt, n_gt,
                          nrep8, off8, win3, colx, rowy, member, fmask, parent,
                          size, bx0, by0, bx1, by1, first, score, dirty, iou, live,
                          emap, acc, rec_first, rec_score, rec_start, win_box,
                          win_a2, out_flag, fg_best)
        _sweep_foreground(_CHECK, q, M, order, start, needed, gt, n_gt,
                          nrep8, off8, win3, colx, rowy, member, fmask, parent,
                          size, bx0, by0, bx1, by1, first, score, dirty, iou, live,
                          emap, acc, rec_first, rec_score, rec_start, win_box,
                          win_a2, out_flag, fg_best)

    # Combine per level (padded coordinates are image + 1).
    zero_best = _best_iou(0, 0, 0, 0, gt, n_gt)
    zero_first = _best_iou(0, 0, 0, 0, gt, min(n_gt, 1))
    for li in range(257):
        if not needed[li]:
            continue
        if li > M:
            # No foreground, no contour: wsolevaluation's box [0, 0, 0, 0].
            out_multi[li] = zero_best
            out_box[li, 0] = 0
            out_box[li, 1] = 0
            out_box[li, 2] = 0
            out_box[li, 3] = 0
            out_v1_best[li] = zero_best
            out_v1_first[li] = zero_first
            out_flag[li] = False
            continue
        m = fg_best[li]
        if hole_best[li] > m:
            m = hole_best[li]
        out_multi[li] = m
        x0 = win_box[li, 0] - 1
        y0 = win_box[li, 1] - 1
        x1 = win_box[li, 2]
        y1 = win_box[li, 3]
        if x1 > W - 1:
            x1 = W - 1
        if y1 > H - 1:
            y1 = H - 1
        out_box[li, 0] = x0
        out_box[li, 1] = y0
        out_box[li, 2] = x1
        out_box[li, 3] = y1
        out_v1_best[li] = _best_iou(x0, y0, x1, y1, gt, n_gt)
        out_v1_first[li] = _best_iou(x0, y0, x1, y1, gt, min(n_gt, 1))


@njit(nogil=True, cache=True)
def score_maps(qmaps, gt, n_gt, needed, out_multi, out_box, out_flag,
               out_v1_best, out_v1_first, begin, end, rec_capacity):
    """Per-level results for maps ``begin..end`` of ``qmaps`` (B x H x W uint8).

    gt: (B, G, 4) int64 GT boxes, n_gt: (B,) number of valid rows.
    needed: (B, 257) bool, the levels whose results are wanted.
    Outputs, indexed (B, 257[, 4]): best IoU over all contours (multi-contour
    mode); the single-contour box; True where OpenCV must settle the
    single-contour box; that box's IoU with the best and with the first GT
    box.  Levels not needed are left untouched.
    rec_capacity: how many (hole, level) records a map may use before the
    filled-foreground sweep replaces them (see _sweep_foreground); 2 * H * W
    is plenty for CAM-like maps, 0 forces the filled sweep.
    """
    B, H, W = qmaps.shape
    P = H * W
    n_pad = (H + 2) * (W + 2)
    order = np.empty(P, np.int32)
    start = np.empty(257, np.int32)
    order_e = np.empty(P, np.int32)
    start_e = np.empty(258, np.int32)
    member = np.empty(n_pad, np.uint8)
    qp = np.empty(n_pad, np.int16)
    fmask = np.empty(n_pad, np.uint8)
    bmask = np.empty(n_pad, np.uint8)
    parent = np.empty(n_pad, np.int32)
    size = np.empty(n_pad, np.int32)
    bx0 = np.empty(n_pad, np.int32)
    by0 = np.empty(n_pad, np.int32)
    bx1 = np.empty(n_pad, np.int32)
    by1 = np.empty(n_pad, np.int32)
    first = np.empty(n_pad, np.int32)
    score = np.empty(n_pad, np.int64)
    dirty = np.empty(n_pad, np.uint8)
    iou = np.empty(n_pad, np.float64)
    live = np.empty(P, np.int32)
    nxt = np.empty(n_pad, np.int32)
    emap = np.empty(n_pad, np.int32)
    acc = np.empty(n_pad, np.int64)
    rec_first = np.empty(rec_capacity, np.int32)
    rec_score = np.empty(rec_capacity, np.int64)
    rec_start = np.empty(258, np.int64)
    win_box = np.empty((257, 4), np.int32)
    win_a2 = np.empty(257, np.int64)
    fg_best = np.empty(257, np.float64)
    hole_best = np.empty(257, np.float64)
    # Per-size lookups: padded-index offsets of each mask's representative
    # neighbours, and the coordinates of every padded index.
    wp = W + 2
    nrep8 = _REPS8[:, 0].copy()
    nrep4 = _REPS4[:, 0].copy()
    off8 = np.zeros(256 * 4, np.int64)
    off4 = np.zeros(256 * 4, np.int64)
    for m in range(256):
        for k in range(nrep8[m]):
            off8[m * 4 + k] = _offset(_REPS8[m, 1 + k], wp)
        for k in range(nrep4[m]):
            off4[m * 4 + k] = _offset(_REPS4[m, 1 + k], wp)
    colx = np.empty(n_pad, np.int32)
    rowy = np.empty(n_pad, np.int32)
    for i in range(n_pad):
        rowy[i] = i // wp
        colx[i] = i - rowy[i] * wp
    for b in range(begin, end):
        _score_one(qmaps[b], gt[b], n_gt[b], needed[b], nrep8, nrep4, _WIN3,
                   off8, off4, colx, rowy, order, start, order_e, start_e,
                   member, qp, fmask, bmask, parent, size, bx0, by0, bx1, by1,
                   first, score, dirty, iou, live, nxt, emap, acc, rec_first, rec_score,
                   rec_start, win_box, win_a2, fg_best, hole_best,
                   out_multi[b], out_box[b], out_flag[b], out_v1_best[b],
                   out_v1_first[b])


@njit(nogil=True, cache=True)
def accumulate_counts(maxes, level_table, loc_levels, iou_thresholds,
                      multi_iou, v1_best, v1_first,
                      correct_multi, correct_single, loc_best, loc_first):
    """Add per-threshold correctness counts of a batch.

    level_table[M, j] is the level index li of threshold j for a map whose
    quantised maximum is M; loc_levels[M] the level of the loc threshold.
    loc_best / loc_first get 1 where the single-contour box at the loc
    threshold has IoU >= 0.5 with the best / first GT box.
    """
    B = maxes.shape[0]
    n_thr = level_table.shape[1]
    n_iou = iou_thresholds.shape[0]
    for b in range(B):
        M = maxes[b]
        for j in range(n_thr):
            li = level_table[M, j]
            m = multi_iou[b, li]
            s = v1_best[b, li]
            for d in range(n_iou):
                t = iou_thresholds[d]
                if m >= t:
                    correct_multi[d, j] += 1
                if s >= t:
                    correct_single[d, j] += 1
        li = loc_levels[M]
        loc_best[b] = 1 if v1_best[b, li] >= 0.5 else 0
        loc_first[b] = 1 if v1_first[b, li] >= 0.5 else 0


@njit(nogil=True, cache=True)
def check_and_quantise(scoremap, out):
    """One pass over a 2-D float map: returns (has_nan, min, max) and writes
    ``uint8(float64(v) * 255)`` into ``out`` (wsolevaluation's quantisation,
    done in float64 whatever the input dtype).  Values outside [0, 1] are
    clamped in ``out``; the caller rejects such maps (and NaN maps) anyway.
    Branch-free on purpose: it runs for every accumulated map.
    """
    H, W = scoremap.shape
    has_nan = False
    lo = np.inf
    hi = -np.inf
    for y in range(H):
        for x in range(W):
            v = np.float64(scoremap[y, x])
            has_nan |= v != v
            lo = min(lo, v)
            hi = max(hi, v)
            s = min(max(v * 255.0, 0.0), 255.0)
            out[y, x] = np.uint8(np.int32(s))
    return has_nan, lo, hi
