"""The tree-walking part of the ai.onnx.ml tree ensemble kernels (kernels/cpu/ml_trees.py): every
tree of a node in one set of flat arrays (feature, threshold, mode, children; leaves point to
themselves), all samples and all trees walked together, never a Python loop per sample or tree.
Mode codes: 0-5 BRANCH_LEQ, LT, GTE, GT, EQ, NEQ; 6 BRANCH_MEMBER (TreeEnsemble-5); 7 LEAF.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import Unsupported

# Whether a branch goes to its true child, by mode (rows: LEQ, LT, GTE, GT, EQ, NEQ) and by how the
# value compares to the threshold (columns: less, equal, greater, unordered i.e. NaN). NaN
# compares false everywhere except NEQ, as in C++ (missing-value tracks are applied on top).
_TRUTH = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 1],
                   [0, 0, 0, 0], [0, 0, 0, 0]], bool).reshape(-1)
_SINGLE_MODE_TEST = [np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal]


class Forest:
    """All trees of one node as flat arrays. `children[2 * i + go_true]` is node i's next node.

    Two ways to find the leaves, picked per batch by a cost estimate (element operations plus a
    fixed cost per NumPy call): walking, `depth` rounds of ~7 calls on (rows, trees) arrays; or, for
    small batches, testing every node at once and jumping pointers (next-of-next) log2(depth) times
    on (rows, nodes) arrays: one row of a 20-tree forest of depth 8 takes ~12 calls instead of ~56.
    """

    def __init__(self, feature, threshold, mode, true_next, false_next, missing_true, roots,
                 weights, has_weight, members=None):
        self.n_nodes = len(feature)
        self.feature = np.asarray(feature, np.int64)
        if self.n_nodes and self.feature.min() < 0:
            raise Unsupported(f"tree ensemble: negative feature index {self.feature.min()}")
        # walking reads x flat, where a feature past the row's end would silently read the next row
        self.max_feature = int(self.feature.max()) if self.n_nodes else 0
        self.threshold = threshold
        self.mode = np.asarray(mode, np.int64)
        self.true_next, self.false_next = np.asarray(true_next, np.int64), np.asarray(false_next, np.int64)
        children = np.empty(2 * self.n_nodes, np.int64)
        children[0::2], children[1::2] = false_next, true_next
        self.children = children
        self.missing_true = np.asarray(missing_true, bool)
        self.track_missing = bool(self.missing_true.any())
        self.roots = np.asarray(roots, np.int64)
        self.weights, self.has_weight = weights, has_weight
        self.members = members  # (sorted keys node * n_values + value rank, sorted distinct values)
        self.depth = _max_depth(self.children, self.roots, self.mode)
        self.jumps = int(np.ceil(np.log2(self.depth))) if self.depth > 1 else self.depth
        branch_modes = np.unique(self.mode[self.mode != 7])
        self.single_test = _SINGLE_MODE_TEST[branch_modes[0]] if len(branch_modes) == 1 and branch_modes[0] < 6 \
            else None
        self.truth_index = self.mode * 4  # row of _TRUTH per node
        self.all_nodes = np.arange(self.n_nodes)
        # targets that some tree scores at every one of its leaves: they always have a score
        tree_of = _tree_of_nodes(self.children, self.roots, self.mode, self.n_nodes)
        reached = tree_of >= 0
        leaf = reached & (self.mode == 7)
        always = np.zeros((len(self.roots), weights.shape[1]), bool)
        if leaf.any():
            always[:] = True
            np.logical_and.at(always, tree_of[leaf], has_weight[leaf])
        self.always_has = always.any(axis=0)
        self.never_has = ~has_weight[reached].any(axis=0)
        self.has_is_static = bool((self.always_has | self.never_has).all())
        self.weights_t = np.ascontiguousarray(weights.T)
        self.doubled = self.single_test is not None and not self.track_missing
        if self.doubled:
            self.feature2, self.threshold2 = np.repeat(self.feature, 2), np.repeat(self.threshold, 2)
            self.children2 = 2 * self.children
        self.tree_groups = self._single_target_groups(tree_of, leaf) if self.has_is_static else None

    def _single_target_groups(self, tree_of, leaf):
        """When every tree scores one target only, and several trees share targets: trees reordered
        target by target (each target's trees keep their order, so its sum adds in ORT's order),
        each leaf's one weight, and where each target's trees start; else None."""
        n_targets, trees = self.weights.shape[1], len(self.roots)
        if n_targets == 1 or (self.has_weight[leaf].sum(axis=1) != 1).any():
            return None
        leaf_target = self.has_weight.argmax(axis=1)
        tree_target = np.full(trees, -1)
        for t, c in zip(tree_of[leaf].tolist(), leaf_target[leaf].tolist()):
            if tree_target[t] not in (-1, c):
                return None
            tree_target[t] = c
        order = np.argsort(tree_target, kind="stable")
        self.roots = self.roots[order]
        targets, starts = np.unique(tree_target[order], return_index=True)
        values = self.weights[np.arange(self.n_nodes), leaf_target]
        return values, starts, targets

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """(n, n_trees) index of the leaf each sample reaches in each tree."""
        n, trees = x.shape[0], len(self.roots)
        if self.max_feature >= x.shape[1]:
            raise ValueError(f"tree ensemble tests feature {self.max_feature}, the input has {x.shape[1]} per row")
        walk = n * trees * self.depth * 7 + self.depth * 7 * _CALL_COST
        jump = n * self.n_nodes * (6 + self.jumps) + (8 + self.jumps) * _CALL_COST
        return self._leaves_by_jumps(x) if jump < walk else self._leaves_by_walking(x)

    def _leaves_by_walking(self, x):
        if self.doubled:
            return self._leaves_by_walking_doubled(x)
        n = x.shape[0]
        xflat = x.reshape(-1)
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        row_base = (np.arange(n, dtype=np.int64) * x.shape[1])[:, None]
        for _ in range(self.depth):
            at = self.feature.take(node)
            at += row_base
            go = self._go(node, xflat.take(at), self.threshold.take(node))
            node *= 2
            node += go
            node = self.children.take(node)
        return node

    def _leaves_by_walking_doubled(self, x):
        """Walking with 7 NumPy calls a level instead of 8, for one plain test mode and no missing
        tracks: node i is held as 2i, so adding the test's outcome gives the index of the next node
        in `children2` (which holds 2 * child); feature and threshold are stored twice to be read
        at 2i directly."""
        n, trees = x.shape[0], len(self.roots)
        xflat = x.reshape(-1)
        row_base = (np.arange(n, dtype=np.int64) * x.shape[1])[:, None]
        doubled = np.broadcast_to(2 * self.roots, (n, trees)).copy()
        feature2, threshold2, children2, test = self.feature2, self.threshold2, self.children2, self.single_test
        for _ in range(self.depth):
            at = feature2.take(doubled)
            at += row_base
            go = test(xflat.take(at), threshold2.take(doubled))
            doubled += go
            doubled = children2.take(doubled)
        return doubled >> 1

    def _leaves_by_jumps(self, x):
        n, nodes = x.shape[0], self.n_nodes
        if n == 1:
            v = x.reshape(-1).take(self.feature)  # every node's test
            nxt = np.where(self._go(self.all_nodes, v, self.threshold), self.true_next, self.false_next)
            if self.depth * len(self.roots) < self.jumps * nodes:  # follow the trees from their roots
                node = self.roots
                for _ in range(self.depth):
                    node = nxt.take(node)
                return node[None, :]
            for _ in range(self.jumps):
                nxt = nxt.take(nxt)
            return nxt.take(self.roots)[None, :]
        v = x.take(self.feature, axis=1)  # (n, nodes): every node's test, for every row
        nxt = np.where(self._go(self.all_nodes, v, self.threshold), self.true_next, self.false_next)
        if n > 1:
            nxt += (np.arange(n, dtype=np.int64) * nodes)[:, None]
        flat = nxt.reshape(-1)
        for _ in range(self.jumps):  # after j jumps, flat[i] is the node 2^j levels below i
            flat = flat.take(flat)
        if n == 1:
            return flat.take(self.roots)[None, :]
        offsets = (np.arange(n, dtype=np.int64) * nodes)[:, None]
        return flat.take(self.roots + offsets) - offsets

    def _go(self, node, v, t):
        """Whether each (row, node) goes to the true child; `node` indexes the nodes of v's columns."""
        if self.single_test is not None:
            go = self.single_test(v, t)
        else:
            go = self._mixed_test(node, v, t)
        if self.track_missing:
            go |= np.isnan(v) & self.missing_true.take(node)
        return go

    def _mixed_test(self, node, v, t):
        with np.errstate(invalid="ignore"):
            outcome = np.greater(v, t).astype(np.int64) * 2
            outcome += np.equal(v, t)
            outcome += np.isnan(v) * 3
        go = _TRUTH.take(self.truth_index.take(node) + outcome)
        if self.members is not None:
            node = np.broadcast_to(node, v.shape)
            is_member = self.mode.take(node) == 6
            if is_member.any():
                go[is_member] = self._member(node[is_member], v[is_member])
        return go

    def _member(self, node, v):
        keys, values = self.members
        rank = np.clip(np.searchsorted(values, v), 0, len(values) - 1)
        found = values[rank] == v
        key = node * len(values) + rank
        at = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
        return found & (keys[at] == key)

    def aggregate(self, leaves: np.ndarray, how: int):
        """(scores, has_score) per sample and target, as ORT's aggregators add them up; has_score is
        one row, self.always_has, where it is the same for every sample."""
        if self.has_is_static and how in (0, 1):
            scores = self._sums(leaves)
            if how == 0:
                scores /= self.weights.dtype.type(len(self.roots))
            return scores, self.always_has
        w, has = self.weights.take(leaves, axis=0), self.has_weight.take(leaves, axis=0)  # (n, trees, targets)
        any_has = has.any(axis=1)
        if how in (0, 1):  # in the weights' type, as ORT adds them (float32 unless given as doubles)
            scores = w.sum(axis=1, dtype=w.dtype)
            if how == 0:
                scores /= w.dtype.type(len(self.roots))
        elif how == 2:
            scores = np.where(has, w, np.inf).min(axis=1)
        else:
            scores = np.where(has, w, -np.inf).max(axis=1)
        scores[~any_has] = 0.0
        return scores, any_has

    def _sums(self, leaves):
        """Per target, the sum over trees of the leaves' weights: one gather and one sum per target
        (gathering rows of targets at once is several times slower for a few targets), or per group
        of trees where every tree scores a single target (gradient boosting: one tree per class)."""
        n, dtype = leaves.shape[0], self.weights.dtype
        if self.tree_groups is not None:
            values, starts, targets = self.tree_groups
            sums = np.add.reduceat(values.take(leaves), starts, axis=1)
            if len(targets) == self.weights_t.shape[0]:
                return sums
            scores = np.zeros((n, self.weights_t.shape[0]), dtype)
            scores[:, targets] = sums
            return scores
        if n == 1:  # one row: the leaves' weight rows, added tree after tree
            return self.weights.take(leaves[0], axis=0).sum(axis=0, dtype=dtype)[None, :]
        if self.weights_t.shape[0] == 1:
            return self.weights_t[0].take(leaves).sum(axis=1, dtype=dtype, keepdims=True)
        scores = np.empty((n, self.weights_t.shape[0]), dtype)
        for c, w in enumerate(self.weights_t):
            scores[:, c] = w.take(leaves).sum(axis=1, dtype=dtype)
        return scores


_CALL_COST = 1500  # a NumPy call's fixed cost, in element operations (~1 us on this machine)


def _tree_of_nodes(children, roots, mode, n):
    """Index of the tree each node belongs to (-1: unreachable from any root)."""
    tree_of = np.full(n, -1, np.int64)
    tree_of[roots] = np.arange(len(roots))
    frontier = roots[mode[roots] != 7]
    while len(frontier):
        for side in (0, 1):
            child = children[2 * frontier + side]
            tree_of[child] = tree_of[frontier]
        frontier = np.concatenate([children[2 * frontier], children[2 * frontier + 1]])
        frontier = np.unique(frontier[mode[frontier] != 7])
    return tree_of


def _max_depth(children, roots, mode) -> int:
    """Levels to walk until every tree's every path has reached a leaf (leaves loop onto themselves)."""
    frontier, depth, n = np.unique(roots), 0, len(mode)
    while True:
        frontier = frontier[mode[frontier] != 7]
        if not len(frontier):
            return depth
        depth += 1
        if depth > n:
            raise Unsupported("tree ensemble: the trees have a cycle")
        frontier = np.unique(np.concatenate([children[2 * frontier], children[2 * frontier + 1]]))


# --- TreeEnsembleClassifier / TreeEnsembleRegressor (ml opsets 1 and 3) ------------------------
