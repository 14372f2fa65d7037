"""``tinyvae bench``: does the Numba backend earn its place? Ratios against the alternatives.

Two benchmarks, each printing a table:

* ``gemm``: GFLOP/s of tinyvae's three GEMM forms against ``numpy.matmul``
  (OpenBLAS) at VAE layer shapes, per dtype and thread count. For each batch
  size n and layer fan_in -> fan_out:

      forward       x @ W        (n, fan_in) @ (fan_in, fan_out)    kernels.matmul
      weight grad   x.T @ dout   (fan_in, n) @ (n, fan_out)         kernels.matmul_tn
      input grad    dout @ W.T   (n, fan_out) @ (fan_out, fan_in)   kernels.matmul_nt

  NumPy gets the same views (x.T, W.T), so both sides see the same memory layout.

* ``step``: training steps per second (forward + backward + Adam lr=1e-3 on a
  fixed batch and fixed noise, float32) of tinyvae with the Numba backend,
  tinyvae with the NumPy backend and, when it is installed, PyTorch with
  ``Adam(fused=True)``. "floor" is the time the step's matrix products alone
  would take at numpy.matmul's rate on the first layer's shape; floor/step is
  the fraction of the step spent at BLAS speed (1.0 is the limit of the design).

Every library gets the thread count explicitly (Numba, OpenBLAS through
threadpoolctl, PyTorch). Timings on a shared machine are noisy, so contenders
take turns in short blocks and tables report medians of single calls: a stall
hits every side alike and the *ratios* stay meaningful. ``--clock cpu`` times
one-thread runs in CPU time of the calling thread, which ignores time the
process spent descheduled on a loaded machine.

OpenBLAS environment variables such as OPENBLAS_CORETYPE can pin a slower
kernel; for a fair NumPy run the command without them::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE tinyvae bench all
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time

import numpy as np

#: (fan_in, fan_out) of the layers timed by the GEMM benchmark
GEMM_LAYERS = ((784, 512), (512, 256), (256, 40))
GEMM_BATCHES = (64, 128, 256)
#: tiny shapes for --quick (a smoke run: seconds, compile time aside)
QUICK_LAYERS = ((40, 24),)
QUICK_BATCHES = (8,)
#: input_dim, hidden, latent of the step benchmark's VAEs (Bernoulli, MLP decoder)
STEP_MODELS = {"canonical": (784, (400,), 20), "deep": (784, (512, 256), 10)}
QUICK_MODEL = (64, (32,), 4)
#: the main job's model and objective: tinyvae train's dSprites recipe (run.RECIPES),
#: a beta-TCVAE with the spatial broadcast decoder
MAIN_JOB = "main-job"
STEP_MODEL_NAMES = (*STEP_MODELS, MAIN_JOB)
#: recipe changes that make the main job's model tiny, for --quick
QUICK_MAIN_JOB = dict(resolution=4, hidden=[16], decoder_hidden=[8], latent=3)
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ----------------------------------------------------------------------------
# timing and tables
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def thread_limit(n: int):
    """Run the body with n threads in Numba (tinyvae's kernels), OpenBLAS and, if loaded, PyTorch."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch else None
    numba.set_num_threads(n)
    if torch:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(before)
        if torch:
            torch.set_num_threads(torch_before)


def interleaved_times(fns, min_time=0.3, min_reps=7, warmup=2, clock="wall", block=6, settle=2,
                      settle_seconds=0.0):
    """Per-call times (seconds) of each function in `fns`, taking turns in blocks.

    Each turn first runs its function untimed for `settle_seconds`, then runs it
    `block` times and keeps the times of all but the first `settle` calls: a
    library's worker threads keep spinning for a while after its last call
    (OpenBLAS ~0.1 s, PyTorch's OpenMP pool up to its 200 ms block time, tinyvae's
    ~1 ms), and on a machine with as many cores as threads the next contender would
    share its cores with those spinners. Turns alternate, so a stall of the machine
    still hits every side alike.
    clock "wall" (perf_counter) or "cpu" (thread_time: this thread's CPU time,
    meaningful for one-thread runs only). Returns one list of times per function.
    """
    tick = time.thread_time if clock == "cpu" else time.perf_counter
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times[0]) < min_reps:
        for fn, ts in zip(fns, times, strict=True):
            turn = time.perf_counter()
            while time.perf_counter() - turn < settle_seconds:
                fn()
            for i in range(block):
                t0 = tick()
                fn()
                if i >= settle:
                    ts.append(tick() - t0)
    return times


#: seconds each multi-threaded turn runs untimed first (see interleaved_times); at one
#: thread no library starts worker threads, so none is needed there
SETTLE_SECONDS = 0.25


def _settle(n_threads, settle):
    return 0.0 if n_threads == 1 else settle


def median(xs):
    return statistics.median(xs)


def environment_report() -> str:
    """A few lines on the machine, the libraries and the load, for the head of a run."""
    import numba
    from threadpoolctl import threadpool_info

    lines = [f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}, "
             f"{os.cpu_count()} CPUs, load average {_load()}"]
    for pool in threadpool_info():
        lines.append(f"  {pool['internal_api']} {pool.get('version')} "
                     f"kernel={pool.get('architecture')} threads={pool['num_threads']}")
    for var in OPENBLAS_VARS:
        if var in os.environ:
            lines.append(f"  warning: {var}={os.environ[var]} is set; OpenBLAS may not use its "
                         f"best kernel (run: env -u {' -u '.join(OPENBLAS_VARS)} tinyvae bench ...)")
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def print_table(headers, rows, out=None):
    """Print rows (lists of already formatted strings) under headers, columns aligned."""
    out = out or sys.stdout
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*headers), file=out)
    print(fmt.format(*("-" * w for w in widths)), file=out)
    for r in rows:
        print(fmt.format(*r), file=out)


# ----------------------------------------------------------------------------
# GEMM: tinyvae's kernels against numpy.matmul
# ----------------------------------------------------------------------------


def gemm_cases(batch, layers, dtype, rng):
    """(shape, form, tinyvae call, numpy call, flops) for the three GEMMs of each layer."""
    from tinyvae import kernels as K

    out = []
    for fan_in, fan_out in layers:
        x = rng.standard_normal((batch, fan_in)).astype(dtype)
        W = rng.standard_normal((fan_in, fan_out)).astype(dtype)
        dout = rng.standard_normal((batch, fan_out)).astype(dtype)
        flops = 2.0 * batch * fan_in * fan_out
        out += [
            (f"{batch}x{fan_in} @ {fan_in}x{fan_out}", "A@B",
             lambda x=x, W=W: K.matmul(x, W), lambda x=x, W=W: np.matmul(x, W), flops),
            (f"{fan_in}x{batch} @ {batch}x{fan_out}", "A.T@B",
             lambda x=x, d=dout: K.matmul_tn(x, d), lambda x=x, d=dout: np.matmul(x.T, d), flops),
            (f"{batch}x{fan_out} @ {fan_out}x{fan_in}", "A@B.T",
             lambda d=dout, W=W: K.matmul_nt(d, W), lambda d=dout, W=W: np.matmul(d, W.T), flops),
        ]
    return out


def run_gemm(dtypes=("float32", "float64"), threads=(1, 2), batches=GEMM_BATCHES,
             layers=GEMM_LAYERS, min_time=0.25, clock="wall", settle=SETTLE_SECONDS, out=None):
    """Print one table per (dtype, threads) and a summary; return {(dtype, threads): ratios}."""
    from tinyvae import kernels as K

    out = out or sys.stdout
    results = {}
    with K.use_backend("numba"):
        for dt in dtypes:
            a = np.ones((30, 30), dt)
            K.matmul(a, a)  # compile (or load from the cache) before any timing
            for nt in threads:
                rng = np.random.default_rng(0)
                rows, ratios = [], []
                with thread_limit(nt):
                    for batch in batches:
                        for shape, form, ours, theirs, flops in gemm_cases(batch, layers, dt, rng):
                            t_ours, t_np = (median(t) for t in interleaved_times(
                                [ours, theirs], min_time, clock=_clock(clock, nt),
                                settle_seconds=_settle(nt, settle)))
                            ratios.append(t_np / t_ours)
                            rows.append([shape, form, f"{flops / t_ours / 1e9:.1f}",
                                         f"{flops / t_np / 1e9:.1f}", f"{t_np / t_ours:.2f}"])
                print(f"\nGEMM {np.dtype(dt).name}, {nt} thread(s): GFLOP/s (median of calls)",
                      file=out)
                print_table(["shape", "form", "tinyvae", "numpy", "ratio"], rows, out)
                print(f"ratio tinyvae/numpy.matmul: median {median(ratios):.2f}, "
                      f"min {min(ratios):.2f}", file=out)
                results[(np.dtype(dt).name, nt)] = ratios
    print("\nsummary: tinyvae / numpy.matmul speed ratio", file=out)
    print_table(["dtype", "threads", "median", "min"],
                [[dt, str(nt), f"{median(r):.2f}", f"{min(r):.2f}"] for (dt, nt), r in results.items()],
                out)
    return results


def _clock(clock, n_threads):
    # CPU time of one thread says nothing about a multi-threaded call
    return clock if n_threads == 1 else "wall"


# ----------------------------------------------------------------------------
# training step: tinyvae (Numba, NumPy backends) against PyTorch
# ----------------------------------------------------------------------------


def layer_shapes(input_dim, hidden, latent):
    """(fan_in, fan_out) of every dense layer: encoder, the two heads (as one), decoder."""
    enc = list(zip((input_dim, *hidden[:-1]), hidden, strict=True))
    dec_dims = (latent, *hidden[::-1], input_dim)
    return enc + [(hidden[-1], 2 * latent)] + list(zip(dec_dims[:-1], dec_dims[1:], strict=True))


def gemm_flops(batch, shapes):
    """Forward + weight gradients + input gradients (all layers but the first)."""
    per = [2.0 * batch * fi * fo for fi, fo in shapes]
    return 2 * sum(per) + sum(per[1:])


def run_gemm_flops(config, input_dim, batch):
    """GEMM FLOPs of one training step of a run config's model (any data set).

    The encoder and heads as gemm_flops counts them (an autoencoder has one head);
    the decoder an MLP mirroring the encoder, or the broadcast decoder's per-pixel layers.
    """
    hidden, latent = tuple(config["hidden"]), config["latent"]
    heads = latent if config["model"] == "ae" else 2 * latent
    encoder = [*zip((input_dim, *hidden[:-1]), hidden, strict=True), (hidden[-1], heads)]
    if config.get("decoder", "mlp") == "broadcast":
        return main_job_gemm_flops(batch, {**config, "resolution": math.isqrt(input_dim)},
                                   encoder)
    dec = (latent, *hidden[::-1], input_dim)
    return gemm_flops(batch, encoder + list(zip(dec[:-1], dec[1:], strict=True)))


def main_job_config(quick=False):
    """The config tinyvae train runs with no arguments (tiny with quick=True)."""
    from tinyvae import run

    return run.resolve_config(QUICK_MAIN_JOB if quick else {})


def main_job_gemm_flops(batch, config, encoder=None):
    """GEMM FLOPs of one main-job step: the encoder as gemm_flops counts it, and the
    broadcast decoder's layers, whose rows are the batch x P (image, pixel) pairs:
    forward, weight and input gradients of dec2 .. out, and of dec1's z @ Wz (its
    coords @ Wxy is one (P, 2) @ (2, h) product and its gradient, counted too)."""
    P = config["resolution"] ** 2
    hidden, latent = tuple(config["hidden"]), config["latent"]
    encoder = encoder or layer_shapes(P, hidden, latent)[:len(hidden) + 1]
    widths = (*config["decoder_hidden"], 1)
    per_pixel = [2.0 * batch * P * fi * fo for fi, fo in zip(widths[:-1], widths[1:],
                                                              strict=True)]
    first = 2.0 * batch * latent * widths[0]
    coords = 2.0 * P * 2 * widths[0]
    return gemm_flops(batch, encoder) + 3 * (sum(per_pixel) + first) + 2 * coords


def tinyvae_step(dims, x, eps, backend, config=None):
    """A closure running one tinyvae training step (loss + grads + Adam) with `backend`:
    the VAE of dims = (input_dim, hidden, latent), or the model of a run config."""
    import tinyvae as tv
    from tinyvae import run

    if config is not None:
        side = config["resolution"]
        model = run.build_model(config, side * side, (side, side))
    else:
        input_dim, hidden, latent = dims
        model = tv.VAE(input_dim=input_dim, hidden=hidden, latent_dim=latent,
                       likelihood="bernoulli", dtype=np.float32, seed=0)
    opt = tv.Adam(lr=1e-3)

    def step():
        with tv.use_backend(backend):
            loss, grads = model.loss(x, eps=eps)
            opt.step(model.params, grads)
        return loss

    return step


def torch_step(dims, x, eps):
    """The same VAE and step in PyTorch with Adam(fused=True)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    input_dim, hidden, latent = dims
    torch.manual_seed(0)

    def mlp(sizes):
        mods = []
        for fi, fo in zip(sizes[:-1], sizes[1:], strict=True):
            mods += [nn.Linear(fi, fo), nn.ReLU()]
        return nn.Sequential(*mods)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = mlp((input_dim, *hidden))
            self.mu = nn.Linear(hidden[-1], latent)
            self.logvar = nn.Linear(hidden[-1], latent)
            self.dec = nn.Sequential(mlp((latent, *hidden[::-1])), nn.Linear(hidden[0], input_dim))

        def loss(self, x, eps):
            h = self.enc(x)
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = self.dec(z)
            n = x.shape[0]
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum() / n
            return rec + kl

    return _torch_adam_step(VAE(), x, eps)


def _torch_adam_step(model, x, eps):
    """A closure running one PyTorch step of model.loss(x, eps) with Adam(fused=True)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tx, teps)
        loss.backward()
        opt.step()
        return loss

    return step


class TorchMainJob:
    """The main job's model and loss in PyTorch: an MLP encoder, the spatial broadcast
    decoder (one network per pixel on [z, x_p, y_p]) and the beta-TCVAE objective with
    the config's estimator of log q(z), as tinyvae's BetaTCVAE computes it."""

    def __init__(self, config):
        import torch
        from torch import nn

        from tinyvae import layers

        self.torch, self.config = torch, config
        side, latent = config["resolution"], config["latent"]
        torch.manual_seed(0)
        self.coords = torch.from_numpy(layers.pixel_coordinates((side, side), np.float32))
        sizes = (side * side, *config["hidden"])
        self.encoder = nn.Sequential(*(m for fi, fo in zip(sizes[:-1], sizes[1:], strict=True)
                                       for m in (nn.Linear(fi, fo), nn.ReLU())),
                                     nn.Linear(sizes[-1], 2 * latent))
        h = config["decoder_hidden"]
        self.dec_z, self.dec_xy = nn.Linear(latent, h[0]), nn.Linear(2, h[0], bias=False)
        self.dec_hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(h[:-1], h[1:],
                                                                        strict=True))
        self.dec_out = nn.Linear(h[-1], 1)
        self.modules = [self.encoder, self.dec_z, self.dec_xy, self.dec_hidden, self.dec_out]
        self._log_weights = {}

    def log_weights(self, n):
        """log w (n, n) of the config's estimator as a float32 tensor, made once per batch
        size (as tinyvae's BetaTCVAE.log_weights), not in every step."""
        if n not in self._log_weights:
            from tinyvae import losses

            c = self.config
            self._log_weights[n] = self.torch.from_numpy(losses.log_importance_weights(
                n, c["n_train"], c["estimator"]).astype(np.float32))
        return self._log_weights[n]

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()]

    def decode(self, z):
        torch = self.torch
        a = torch.relu(self.dec_z(z)[:, None, :] + self.dec_xy(self.coords)[None])
        for layer in self.dec_hidden:
            a = torch.relu(layer(a))
        return self.dec_out(a)[..., 0]

    def loss(self, x, eps):
        """Mean over the batch of -log p(x|z) + alpha MI + beta TC + gamma dimension-wise KL."""
        torch, c = self.torch, self.config
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * eps
        n = x.shape[0]
        nll = torch.nn.functional.binary_cross_entropy_with_logits(
            self.decode(z), x, reduction="sum") / n
        log_2pi = float(np.log(2 * np.pi))

        def log_density(z, mu, logvar):
            return -0.5 * (log_2pi + logvar + (z - mu) ** 2 * torch.exp(-logvar))

        L = log_density(z[:, None], mu[None], logvar[None])              # (B, B, d)
        lw = self.log_weights(n)                                          # (B, B)
        log_qz_x = log_density(z, mu, logvar).sum(1)
        log_qz = torch.logsumexp(lw + L.sum(2), 1)
        log_qz_k = torch.logsumexp(lw[:, :, None] + L, 1).sum(1)
        log_pz = (-0.5 * (log_2pi + z ** 2)).sum(1)
        penalty = (c["alpha"] * (log_qz_x - log_qz) + c["beta"] * (log_qz - log_qz_k)
                   + c["gamma"] * (log_qz_k - log_pz))
        return nll + penalty.mean()

    def load_from(self, params):
        """Copy a tinyvae BetaTCVAE's parameters (a dict of arrays) into this model."""
        torch = self.torch
        enc = [m for m in self.encoder if isinstance(m, torch.nn.Linear)]
        pairs = [(enc[i], f"enc{i + 1}") for i in range(len(enc) - 1)]
        with torch.no_grad():
            for layer, name in pairs:
                layer.weight.copy_(torch.from_numpy(params[f"{name}.W"].T))
                layer.bias.copy_(torch.from_numpy(params[f"{name}.b"]))
            enc[-1].weight.copy_(torch.from_numpy(
                np.concatenate([params["mu.W"], params["logvar.W"]], axis=1).T))
            enc[-1].bias.copy_(torch.from_numpy(np.concatenate([params["mu.b"],
                                                                params["logvar.b"]])))
            self.dec_z.weight.copy_(torch.from_numpy(params["dec1.W"].T))
            self.dec_z.bias.copy_(torch.from_numpy(params["dec1.b"]))
            self.dec_xy.weight.copy_(torch.from_numpy(params["dec1.Wxy"].T))
            for i, layer in enumerate(self.dec_hidden, start=2):
                layer.weight.copy_(torch.from_numpy(params[f"dec{i}.W"].T))
                layer.bias.copy_(torch.from_numpy(params[f"dec{i}.b"]))
            self.dec_out.weight.copy_(torch.from_numpy(params["out.W"].T))
            self.dec_out.bias.copy_(torch.from_numpy(params["out.b"]))


def torch_main_job_step(config, x, eps):
    """One PyTorch main-job training step with Adam(fused=True)."""
    return _torch_adam_step(TorchMainJob(config), x, eps)


def _first_layer_product(batch, fan_in, fan_out):
    """(a call of numpy.matmul at (batch, fan_in) @ (fan_in, fan_out) float32, its FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, fan_in)).astype(np.float32)
    b = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
    return (lambda: np.matmul(a, b)), 2.0 * batch * fan_in * fan_out


def blas_rate(batch, fan_in, fan_out, clock="wall", settle_seconds=0.0):
    """numpy.matmul FLOP/s at (batch, fan_in) @ (fan_in, fan_out), float32, current threads."""
    product, flops = _first_layer_product(batch, fan_in, fan_out)
    (t,) = interleaved_times([product], min_time=0.2, clock=clock, settle_seconds=settle_seconds)
    return flops / median(t)


def floor_images_per_second(config, input_dim, batch, threads, rate=None):
    """(images/s, GFLOP/s): a run's training images per second if its step did nothing
    but its GEMMs at numpy.matmul's rate on the first layer's shape, on `threads` threads.

    rate: that FLOP/s as a FloorProbe timed it during the run; None times it now.
    """
    if rate is None:
        with thread_limit(threads):
            rate = blas_rate(batch, input_dim, config["hidden"][0], settle_seconds=_settle(
                threads, SETTLE_SECONDS))
    return batch * rate / run_gemm_flops(config, input_dim, batch), rate / 1e9


class FloorProbe:
    """numpy.matmul's FLOP/s on a run's first-layer shape, (batch, fan_in) @ (fan_in,
    fan_out) float32 on `threads` threads, sampled now and then while the run trains.

    The median of the samples is the rate of the run's floor, timed over the same
    minutes as the steps it is set beside: on a shared machine whose speed drifts, a
    rate timed once after training (0.2 s) moved the ratio by 1.5x between two runs.
    Each sample first runs the product untimed for `warm_seconds` (OpenBLAS's threads
    wake up), then keeps the median of `calls` timed calls.
    """

    def __init__(self, batch, fan_in, fan_out, threads, warm_seconds=0.02, calls=5):
        self._product, self._flops = _first_layer_product(batch, fan_in, fan_out)
        self.threads, self.warm_seconds, self.calls = threads, warm_seconds, calls
        self.rates = []

    def sample(self):
        with thread_limit(self.threads):
            (times,) = interleaved_times([self._product], min_time=0.0, min_reps=self.calls,
                                         warmup=0, block=self.calls, settle=0,
                                         settle_seconds=self.warm_seconds)
        self.rates.append(self._flops / median(times))

    def rate(self):
        """The median sample (FLOP/s), or None before the first."""
        return median(self.rates) if self.rates else None


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_step(models=("canonical",), batches=(64, 128), threads=(1, 2), min_time=2.0,
             use_torch=True, clock="wall", model_dims=None, settle=SETTLE_SECONDS, out=None,
             quick=False):
    """Print the steps/s table; return {(model, batch, threads): {contender: seconds}}.

    models: names in STEP_MODEL_NAMES; model_dims (input_dim, hidden, latent) times one
    custom VAE instead; quick times tiny models (QUICK_MODEL, QUICK_MAIN_JOB).
    """
    out = out or sys.stdout
    if use_torch and not torch_available():
        print("PyTorch is not installed: timing tinyvae only", file=out)
        use_torch = False
    rows, results = [], {}
    for name in ("custom",) if model_dims else models:
        config = main_job_config(quick) if name == MAIN_JOB else None
        if config is not None:
            dims = (config["resolution"] ** 2, tuple(config["hidden"]), config["latent"])
        else:
            dims = model_dims or (QUICK_MODEL if quick else STEP_MODELS[name])
        for batch in batches:
            rng = np.random.default_rng(0)
            x = (rng.random((batch, dims[0])) < 0.3).astype(np.float32)
            eps = rng.standard_normal((batch, dims[2])).astype(np.float32)
            contenders = {"numba": tinyvae_step(dims, x, eps, "numba", config),
                          "numpy": tinyvae_step(dims, x, eps, "numpy", config)}
            if use_torch:
                contenders["torch"] = (torch_main_job_step(config, x, eps) if config else
                                       torch_step(dims, x, eps))
            # the floor's rate is timed in the same turns as the steps, so that a change of
            # the machine's speed during the run moves both sides of floor/step alike
            first_layer, first_flops = _first_layer_product(batch, dims[0], dims[1][0])
            contenders["floor"] = first_layer
            for nt in threads:
                ck, wait = _clock(clock, nt), _settle(nt, settle)
                with thread_limit(nt):
                    times = interleaved_times(list(contenders.values()), min_time, warmup=5,
                                              clock=ck, settle_seconds=wait)
                t = {k: median(v) for k, v in zip(contenders, times, strict=True)}
                rate = first_flops / t.pop("floor")
                flops = (main_job_gemm_flops(batch, config) if config else
                         gemm_flops(batch, layer_shapes(*dims)))
                floor = flops / rate
                results[(name, batch, nt)] = t
                torch_t = t.get("torch")
                rows.append([name, str(batch), str(nt), f"{1 / t['numba']:.0f}",
                             f"{1 / t['numpy']:.0f}", f"{1 / torch_t:.0f}" if torch_t else "-",
                             f"{t['numpy'] / t['numba']:.2f}",
                             f"{torch_t / t['numba']:.2f}" if torch_t else "-",
                             f"{t['numba'] * 1e3:.2f}", f"{floor * 1e3:.2f}",
                             f"{floor / t['numba']:.2f}"])
    print(f"\ntraining steps/s (median step, {clock} clock at one thread), float32, Adam lr=1e-3; "
          "torch = Adam(fused=True)", file=out)
    print_table(["model", "batch", "threads", "numba", "numpy", "torch", "vs numpy", "vs torch",
                 "step ms", "floor ms", "floor/step"], rows, out)
    return results


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------


def add_subparser(subparsers) -> None:
    """Add ``tinyvae bench [gemm|step|all]`` to tinyvae's command line."""
    p = subparsers.add_parser(
        "bench", help="time the Numba kernels against numpy.matmul and PyTorch",
        description="Benchmark tinyvae's Numba backend: GEMM GFLOP/s against numpy.matmul, and "
                    "training steps/s against the NumPy backend and PyTorch (Adam fused). "
                    "For a fair NumPy, run as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "
                    "tinyvae bench ...")
    p.add_argument("what", nargs="?", default="all", choices=("gemm", "step", "all"),
                   help="which benchmark (default all)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], metavar="N",
                   help="thread counts to run at, set in every library (default 1 2)")
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                   choices=("float32", "float64"), help="GEMM dtypes (default both)")
    p.add_argument("--batch", nargs="+", type=int, metavar="N",
                   help="batch sizes (default 64 128 256 for gemm, 64 128 for step)")
    p.add_argument("--model", nargs="+", default=["canonical"], choices=list(STEP_MODEL_NAMES),
                   help="step benchmark models (default canonical: the 784-400-20 VAE; "
                        "main-job: tinyvae train's beta-TCVAE with the broadcast decoder)")
    p.add_argument("--min-time", type=float, metavar="S",
                   help="seconds of timing per configuration (default 0.25 gemm, 2 step)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="at one thread, time wall clock or this thread's CPU time (cpu ignores "
                        "time descheduled on a loaded machine); default wall")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out of the step table")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and short timings: checks the command runs, not the speed")
    p.set_defaults(func=_command, parser=p)


def _command(args) -> int:
    for n in args.threads:
        if n < 1:
            args.parser.error(f"--threads: expected positive integers, got {n}")
    print(environment_report())
    if args.what in ("gemm", "all"):
        run_gemm(dtypes=args.dtype, threads=args.threads,
                 batches=args.batch or (QUICK_BATCHES if args.quick else GEMM_BATCHES),
                 layers=QUICK_LAYERS if args.quick else GEMM_LAYERS,
                 min_time=args.min_time or (0.01 if args.quick else 0.25), clock=args.clock,
                 settle=0.0 if args.quick else SETTLE_SECONDS)
    if args.what in ("step", "all"):
        run_step(models=args.model, batches=args.batch or ((8,) if args.quick else (64, 128)),
                 threads=args.threads, min_time=args.min_time or (0.01 if args.quick else 2.0),
                 use_torch=not args.no_torch, clock=args.clock,
                 settle=0.0 if args.quick else SETTLE_SECONDS, quick=args.quick)
    return 0


__all__ = ["add_subparser", "run_gemm", "run_step", "environment_report", "interleaved_times",
           "thread_limit", "print_table", "layer_shapes", "gemm_flops", "main_job_gemm_flops",
           "TorchMainJob"]
