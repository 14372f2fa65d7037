"""scikit-learn's default ``GradientBoostingClassifier``, compiled, for DCI's reference protocol.

disentanglement_lib scores DCI with ``sklearn.ensemble.GradientBoostingClassifier()``:
100 stages of depth-3 regression trees, one tree per class and stage (one per stage for
two classes), learning rate 0.1, leaf values set by one Newton step. On dSprites that
is 100 x (3 + 6 + 40 + 32 + 32) = 11,300 trees on 10,000 codes; scikit-learn sorts
every node's samples again for every tree (~50-150 ms a tree here), about half an
hour in all. The same trees grow here in about a millisecond each, because the codes
are sorted once per feature and each split only partitions those sorted lists.

The algorithm is scikit-learn's, step for step, so the fitted model is the same:
  * X is cast to float32 (as scikit-learn's trees do), the residuals stay float64;
  * init: log class priors (binary: their log-odds);
  * residuals r = y_k - p_k at the start of each stage, p = softmax(raw);
  * a split may fall between sorted neighbours a < b only if b > a + 1e-7 (float32
    arithmetic, scikit-learn's FEATURE_THRESHOLD); the best split maximises
    sum_L^2 / n_L + sum_R^2 / n_R, ties keep the first found; threshold a/2 + b/2;
  * a node is a leaf at depth 3, below 2 samples, or when its impurity <= machine eps;
  * leaf value = mean(r) (K-1)/K / mean(p (1 - p))   (binary: without (K-1)/K);
  * importance of a tree = sum over its splits of n_t imp_t - n_L imp_L - n_R imp_R,
    over n; the model's = mean over trees with a split, normalised to sum 1.
One difference: scikit-learn visits the features of a node in a random order (its
``random_state``, None in disentanglement_lib), so two splits of exactly equal merit
go to a random one of them; here the lower feature index wins. With continuous
codes exact ties do not occur; the tests compare with scikit-learn on such data.

Compiled without fast-math reassociation (``njit_in_order``): every sum runs in the
order written, as in scikit-learn's C loops. With reassociation the sums were regrouped
for the vector width of the CPU, and on an AVX-512 machine a near tie between two
splits went the other way (a different tree, raw scores off by 4e-3).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from tinyvae._backend.numba_flags import njit_in_order as njit
from tinyvae._backend.numba_flags import njit_parallel_in_order as njit_parallel

#: scikit-learn's FEATURE_THRESHOLD (float32) and EPSILON (float64 machine epsilon)
_TIE = np.float32(1e-7)
_EPS = np.finfo(np.float64).eps
#: a complete binary tree of depth d has at most 2^(d+1) - 1 nodes
_LEAF = -1


@njit
def _grow_tree(vals, rows, ys, y, max_depth, feature, threshold, left, right, buf_v, buf_r,
               buf_y, goes_left, importance, seed):
    """One regression tree on residuals y (n,), from per-feature sorted lists.

    vals (d, n) float32 / rows (d, n) int64: row j of feature f sorted by value; ys
    (d, n) float64 the residual of each entry (so scans read memory in order). They
    are partitioned in place node by node so each node owns one slice [start, end)
    of every feature. Fills the node arrays (a leaf has left = -1) and adds this
    tree's unnormalised importances to importance (d,). Returns the node count.
    """
    d, n = vals.shape
    # stack of nodes to split: (node, start, end, depth, impurity)
    stack_node = np.empty(64, np.int64)
    stack_start = np.empty(64, np.int64)
    stack_end = np.empty(64, np.int64)
    stack_depth = np.empty(64, np.int64)
    stack_imp = np.empty(64, np.float64)
    stack_const = np.zeros(64, np.int64)
    # scikit-learn's feature order: a Fisher-Yates draw from its xorshift, features
    # found constant kept at the front for the descendants (BestSplitter.node_split)
    features = np.arange(d)
    constant = np.empty(d, np.int64)
    state = np.empty(1, np.int64)
    state[0] = seed
    for f in range(d):
        for p in range(n):
            ys[f, p] = y[rows[f, p]]
    total = 0.0
    sq_total = 0.0
    for p in range(n):
        total += y[rows[0, p]]
        sq_total += y[rows[0, p]] * y[rows[0, p]]
    stack_node[0], stack_start[0], stack_end[0], stack_depth[0] = 0, 0, n, 0
    stack_imp[0] = sq_total / n - (total / n) ** 2
    top = 1
    count = 1
    tree_importance = np.zeros(d)
    while top > 0:
        top -= 1
        node, start, end = stack_node[top], stack_start[top], stack_end[top]
        depth, imp, n_known = stack_depth[top], stack_imp[top], stack_const[top]
        size = end - start
        left[node] = _LEAF
        if depth >= max_depth or size < 2 or imp <= _EPS:
            continue
        node_sum = 0.0
        node_sq = 0.0
        for p in range(start, end):
            node_sum += ys[0, p]
            node_sq += ys[0, p] * ys[0, p]
        best = -np.inf
        best_f, best_p = -1, -1
        f_i, n_drawn, n_found, n_total = d, 0, 0, n_known
        while f_i > n_total:
            j = n_drawn + _rand_below(state, f_i - n_found - n_drawn)
            if j < n_known:                       # a feature constant in an ancestor
                features[n_drawn], features[j] = features[j], features[n_drawn]
                n_drawn += 1
                continue
            j += n_found
            f = features[j]
            if vals[f, end - 1] <= vals[f, start] + _TIE:     # constant here: no split
                features[j], features[n_total] = features[n_total], features[j]
                n_found += 1
                n_total += 1
                continue
            f_i -= 1
            features[f_i], features[j] = features[j], features[f_i]
            s_left = 0.0
            for p in range(start + 1, end):
                s_left += ys[f, p - 1]
                if vals[f, p] <= vals[f, p - 1] + _TIE:
                    continue
                n_l = p - start
                s_right = node_sum - s_left
                proxy = s_left * s_left / n_l + s_right * s_right / (size - n_l)
                if proxy > best:
                    best, best_f, best_p = proxy, f, p
        features[:n_known] = constant[:n_known]
        constant[n_known:n_total] = features[n_known:n_total]
        if best_f < 0:
            continue
        n_l = best_p - start
        n_r = size - n_l
        s_left = 0.0
        sq_left = 0.0
        for p in range(start, best_p):
            s_left += ys[best_f, p]
            sq_left += ys[best_f, p] * ys[best_f, p]
        imp_l = sq_left / n_l - (s_left / n_l) ** 2
        imp_r = (node_sq - sq_left) / n_r - ((node_sum - s_left) / n_r) ** 2
        improvement = (size / n) * (imp - n_r / size * imp_r - n_l / size * imp_l)
        if improvement + _EPS < 0.0:
            continue
        feature[node] = best_f
        threshold[node] = vals[best_f, best_p - 1] / 2.0 + vals[best_f, best_p] / 2.0
        tree_importance[best_f] += size * imp - n_l * imp_l - n_r * imp_r
        if depth + 1 < max_depth:      # children that will split need their own slices
            _partition(vals, rows, ys, start, best_p, end, best_f, buf_v, buf_r, buf_y,
                       goes_left)
        left[node], right[node] = count, count + 1
        # right is pushed first so the left child is split first, as scikit-learn does
        stack_node[top], stack_start[top], stack_end[top] = count + 1, best_p, end
        stack_depth[top], stack_imp[top], stack_const[top] = depth + 1, imp_r, n_total
        stack_node[top + 1], stack_start[top + 1], stack_end[top + 1] = count, start, best_p
        stack_depth[top + 1], stack_imp[top + 1], stack_const[top + 1] = depth + 1, imp_l, n_total
        top += 2
        count += 2
    if count > 1:
        for f in range(d):
            importance[f] += tree_importance[f] / n
    return count


@njit
def _partition(vals, rows, ys, start, split, end, by, buf_v, buf_r, buf_y, goes_left):
    """Stable partition of every feature's slice [start, end): the rows that feature
    ``by`` puts in [start, split) come first, each side keeps its sorted order."""
    for p in range(start, split):
        goes_left[rows[by, p]] = True
    for p in range(split, end):
        goes_left[rows[by, p]] = False
    for f in range(vals.shape[0]):
        a, b = start, split
        for p in range(start, end):
            r = rows[f, p]
            q = a if goes_left[r] else b
            buf_r[q], buf_v[q], buf_y[q] = r, vals[f, p], ys[f, p]
            if goes_left[r]:
                a += 1
            else:
                b += 1
        rows[f, start:end] = buf_r[start:end]
        vals[f, start:end] = buf_v[start:end]
        ys[f, start:end] = buf_y[start:end]


@njit
def _rand_below(state, high):
    """scikit-learn's rand_int(0, high): one step of its xorshift (our_rand_r) mod high."""
    x = state[0]
    if x == 0:
        x = 1
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    state[0] = x
    return (x % 2147483648) % high


@njit
def _leaves(X, feature, threshold, left, right):
    """(n,) leaf node of each row of X (n, d) float32 in one tree."""
    out = np.empty(X.shape[0], np.int64)
    for i in range(X.shape[0]):
        node = 0
        while left[node] != _LEAF:
            node = left[node] if X[i, feature[node]] <= threshold[node] else right[node]
        out[i] = node
    return out


@njit
def _residuals(raw, y, binary):
    """Negative gradient of the log loss, r = y_k - p_k, (n, T); p = softmax(raw)."""
    n, t = raw.shape
    out = np.empty((n, t))
    for i in range(n):
        if binary:
            out[i, 0] = (1.0 if y[i] == 1 else 0.0) - 1.0 / (1.0 + np.exp(-raw[i, 0]))
            continue
        m = raw[i, 0]
        for k in range(1, t):
            m = max(m, raw[i, k])
        s = 0.0
        for k in range(t):
            s += np.exp(raw[i, k] - m)
        for k in range(t):
            out[i, k] = (1.0 if y[i] == k else 0.0) - np.exp(raw[i, k] - m) / s
    return out


@njit
def _newton_leaves(leaf, r, y, k, binary, n_classes, value):
    """Leaf value = mean(r) (K-1)/K / mean(p (1 - p)) with p = y_k - r: one Newton step."""
    count = np.zeros(value.shape[0])
    num = np.zeros(value.shape[0])
    den = np.zeros(value.shape[0])
    for i in range(leaf.shape[0]):
        # the one tree of a binary model predicts class 1; tree k of K predicts class k
        target = 1.0 if y[i] == (1 if binary else k) else 0.0
        p = target - r[i]
        count[leaf[i]] += 1.0
        num[leaf[i]] += r[i]
        den[leaf[i]] += p * (1.0 - p)
    for j in range(value.shape[0]):
        if count[j] == 0:
            continue
        numerator = num[j] / count[j]
        if not binary:
            numerator *= (n_classes - 1) / n_classes
        denominator = den[j] / count[j]
        value[j] = 0.0 if abs(denominator) < 1e-150 else numerator / denominator


@njit
def _presort(X):
    """Each feature's row order and sorted values, (d, n) int64 and (d, n) float32."""
    n, d = X.shape
    rows = np.empty((d, n), np.int64)
    vals = np.empty((d, n), np.float32)
    for f in range(d):
        order = np.argsort(X[:, f], kind="mergesort")
        rows[f] = order
        vals[f] = X[order, f]
    return rows, vals


@njit_parallel
def _fit_stage(X, y, r, rows0, vals0, n_classes, max_depth, seeds, feature, threshold, left,
               right, value, importance, nodes):
    """The T trees of one stage, all on the stage's residuals r (n, T): independent, so
    they grow in parallel, each with its own workspace (same result on any thread count)."""
    n, d = X.shape
    binary = n_classes == 2
    for k in prange(r.shape[1]):
        rows = rows0.copy()
        vals = vals0.copy()
        ys = np.empty((d, n))
        nodes[k] = _grow_tree(vals, rows, ys, r[:, k], max_depth, feature[k], threshold[k],
                              left[k], right[k], np.empty(n, np.float32),
                              np.empty(n, np.int64), np.empty(n), np.zeros(n, np.bool_),
                              importance[k], seeds[k])
        leaf = _leaves(X, feature[k], threshold[k], left[k], right[k])
        _newton_leaves(leaf, r[:, k], y, k, binary, n_classes, value[k])


@njit
def _fit(X, y, n_classes, n_stages, learning_rate, max_depth, raw, seeds):
    n, d = X.shape
    t = raw.shape[1]
    max_nodes = 2 ** (max_depth + 1) - 1
    feature = np.zeros((n_stages, t, max_nodes), np.int64)
    threshold = np.zeros((n_stages, t, max_nodes))
    left = np.full((n_stages, t, max_nodes), _LEAF, np.int64)
    right = np.full((n_stages, t, max_nodes), _LEAF, np.int64)
    value = np.zeros((n_stages, t, max_nodes))
    importance = np.zeros((n_stages, t, d))
    nodes = np.zeros((n_stages, t), np.int64)
    rows0, vals0 = _presort(X)
    for s in range(n_stages):
        r = _residuals(raw, y, n_classes == 2)
        _fit_stage(X, y, r, rows0, vals0, n_classes, max_depth, seeds[s], feature[s],
                   threshold[s], left[s], right[s], value[s], importance[s], nodes[s])
        for k in range(t):
            leaf = _leaves(X, feature[s, k], threshold[s, k], left[s, k], right[s, k])
            for i in range(n):
                raw[i, k] += learning_rate * value[s, k, leaf[i]]
    total = np.zeros(d)
    for s in range(n_stages):          # summed in a fixed order: deterministic
        for k in range(t):
            total += importance[s, k]
    return feature, threshold, left, right, value, total, np.sum(nodes > 1)


@njit
def _decision(X, init, learning_rate, feature, threshold, left, right, value):
    n_stages, t, _ = feature.shape
    raw = np.empty((X.shape[0], t))
    for i in range(X.shape[0]):
        raw[i] = init
    for s in range(n_stages):
        for k in range(t):
            leaf = _leaves(X, feature[s, k], threshold[s, k], left[s, k], right[s, k])
            for i in range(X.shape[0]):
                raw[i, k] += learning_rate * value[s, k, leaf[i]]
    return raw


class GradientBoosting:
    """``sklearn.ensemble.GradientBoostingClassifier()`` with its defaults, compiled.

    fit(X (n, d), y (n,) labels) -> self; predict(X) -> labels; score(X, y) -> accuracy;
    ``feature_importances_`` (d,) sums to 1 (all zeros if no tree split).
    """

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, max_depth: int = 3,
                 random_state=None):
        self.n_estimators, self.learning_rate, self.max_depth = n_estimators, learning_rate, max_depth
        self.random_state = random_state

    def fit(self, X, y):
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"y: expected at least 2 classes, got {n_classes}")
        prior = np.clip(np.bincount(encoded) / len(encoded), _EPS, 1 - _EPS)
        if n_classes == 2:
            self.init_ = np.array([np.log(prior[1] / (1 - prior[1]))])
        else:
            self.init_ = np.log(prior) - np.mean(np.log(prior))
        raw = np.tile(self.init_, (len(X), 1))
        # each tree's splitter seeds its xorshift with one draw from the shared RandomState
        rs = np.random.RandomState(self.random_state) if not isinstance(
            self.random_state, np.random.RandomState) else self.random_state
        seeds = np.array([[rs.randint(0, 2147483647) for _ in range(raw.shape[1])]
                          for _ in range(self.n_estimators)], dtype=np.int64)
        *self._trees, importance, relevant = _fit(X, encoded.astype(np.int64), n_classes,
                                                  self.n_estimators, self.learning_rate,
                                                  self.max_depth, raw, seeds)
        mean = importance / max(relevant, 1)
        self.feature_importances_ = mean / mean.sum() if mean.sum() > 0 else mean
        return self

    def decision_function(self, X):
        X = np.ascontiguousarray(X, dtype=np.float32)
        return _decision(X, self.init_, self.learning_rate, *self._trees)

    def predict(self, X):
        raw = self.decision_function(X)
        encoded = (raw[:, 0] >= 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
        return self.classes_[encoded]

    def score(self, X, y):
        return float(np.mean(self.predict(X) == np.asarray(y)))
