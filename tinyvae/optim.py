"""Optimizers: small update rules with their state.

Usable from ``fit`` and by hand::

    opt = tv.Adam(lr=1e-3)
    loss, grads = model.loss(x)
    opt.step(model.params, grads)      # updates the arrays in place

Each rule runs as one fused kernel per parameter array (see tinyvae.kernels).
State is kept per parameter name, so one optimizer serves one model.
"""

from __future__ import annotations

import numpy as np

from tinyvae import _checks, kernels


class Optimizer:
    """Base class: per-parameter state arrays, a step counter and hyperparameters."""

    #: names of the per-parameter state arrays, e.g. ("m", "v") for Adam
    slots: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay=0.0):
        try:
            self.lr = _checks.number("lr", lr, 0, strict=True)
        except ValueError:
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}") from None
        try:
            self.weight_decay = _checks.number("weight_decay", weight_decay, 0)
        except ValueError:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}") from None
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict, grads: dict) -> None:
        """Apply one update to every array in ``params`` in place."""
        if params.keys() != grads.keys():
            raise ValueError(
                f"grads: expected the keys of params {sorted(params)}, got {sorted(grads)}"
            )
        # every array is checked before any is updated: a bad entry leaves the model and
        # the optimizer as they were
        arrays = []
        for name, p in params.items():
            g = grads[name]
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(
                    f"grads[{name!r}]: expected shape {p.shape} dtype {p.dtype}, "
                    f"got {g.shape} {g.dtype}"
                )
            if not p.flags.c_contiguous:
                raise ValueError(f"params[{name!r}]: expected a C-contiguous array")
            arrays.append((name, p, np.ascontiguousarray(g)))
        self.t += 1
        for name, p, g in arrays:
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = self._init_state(p)
            self._update(p, g, state)

    def _init_state(self, p):
        return {slot: np.zeros_like(p) for slot in self.slots}

    def _update(self, p, g, state):
        raise NotImplementedError

    # -- serialisation (JSON-able config + arrays), used by tinyvae.io

    def config(self) -> dict:
        """Hyperparameters as a JSON-able dict (class name included)."""
        return {"class": type(self).__name__, "lr": self.lr, "weight_decay": self.weight_decay}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Flat {"<param>/<slot>": array} of the optimizer's state."""
        return {f"{name}/{slot}": arr for name, st in self.state.items() for slot, arr in st.items()}

    def load_state(self, t: int, arrays: dict[str, np.ndarray]) -> None:
        """Restore the step counter and state arrays written by state_arrays()."""
        self.t = int(t)
        self.state = {}
        for key, arr in arrays.items():
            name, slot = key.rsplit("/", 1)
            # C order: the update kernels change the state in place through flat views
            self.state.setdefault(name, {})[slot] = np.array(arr, order="C")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with heavy-ball or Nesterov momentum.

    v <- momentum v + g;   p <- p - lr v      (Nesterov: p <- p - lr (g + momentum v))
    A velocity that decays below the smallest normal float is stored as 0, as Adam's
    moments are.
    """

    slots = ("velocity",)

    def __init__(self, lr=0.01, momentum=0.9, nesterov=False, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected 0 <= momentum < 1, got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, p, g, state):
        kernels.sgd_update(p, g, state["velocity"], self.lr, self.momentum, self.nesterov,
                           self.weight_decay)

    def config(self):
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction and optional decoupled weight decay.

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    A moment that decays below the smallest normal float (a weight whose gradient stays
    0) is stored as 0: an operation on a subnormal takes ~100 cycles on Intel cores, and
    with eps above ~2e-12 what is dropped moves no parameter (_backend.updates._adam).
    """

    slots = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        b1, b2 = betas
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0 <= b < 1:
                raise ValueError(f"{name}: expected 0 <= beta < 1, got {b}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)

    def _update(self, p, g, state):
        kernels.adam_update(p, g, state["m"], state["v"], self.lr, self.betas[0], self.betas[1],
                            self.eps, self.t, self.weight_decay)

    def config(self):
        return {**super().config(), "betas": list(self.betas), "eps": self.eps}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), the optimizer of the beta-VAE paper's dSprites MLP.

    a <- a + g^2;   p <- p - lr g / (sqrt(a) + eps)
    """

    slots = ("accum",)

    def __init__(self, lr=1e-2, eps=1e-10, initial_accumulator=0.0, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps}")
        if initial_accumulator < 0:
            raise ValueError(f"initial_accumulator: expected >= 0, got {initial_accumulator}")
        self.eps = float(eps)
        self.initial_accumulator = float(initial_accumulator)

    def _init_state(self, p):
        return {"accum": np.full_like(p, self.initial_accumulator)}

    def _update(self, p, g, state):
        kernels.adagrad_update(p, g, state["accum"], self.lr, self.eps, self.weight_decay)

    def config(self):
        return {**super().config(), "eps": self.eps,
                "initial_accumulator": self.initial_accumulator}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adagrad": Adagrad}


def make_optimizer(name_or_config, **kwargs) -> Optimizer:
    """Build an optimizer from a name ("adam") or a config() dict."""
    if isinstance(name_or_config, dict):
        cfg = dict(name_or_config)
        cls_name = cfg.pop("class")
        cls = {c.__name__: c for c in OPTIMIZERS.values()}.get(cls_name)
        if cls is None:
            raise ValueError(f"optimizer class: expected one of {list(OPTIMIZERS)}, got {cls_name!r}")
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return cls(**cfg)
    key = str(name_or_config).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {name_or_config!r}")
    return OPTIMIZERS[key](**kwargs)
