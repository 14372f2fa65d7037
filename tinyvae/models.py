"""Autoencoder, VAE and beta-VAE with hand-written backward passes.

Parameters live in ``model.params`` (name -> array; W is (fan_in, fan_out)):

    "enc1.W" "enc1.b" ... "encK.*"   input -> hidden[0] -> ... -> hidden[-1]
    "mu.*" "logvar.*"                hidden[-1] -> latent          (VAE)
    "code.*"                         hidden[-1] -> latent          (Autoencoder)
    "dec1.W" ... "decK.*"            latent -> hidden[-1] -> ... -> hidden[0]
    "out.W" "out.b"                  hidden[0] -> input
    "obs.logvar"                     (input_dim,) learned Gaussian log-variance, if asked for

With ``decoder="broadcast"`` (the spatial broadcast decoder, Watters et al. 2019) the
decoder is one small network run at every pixel p on the joined row [z, x_p, y_p]:

    "dec1.W" "dec1.Wxy" "dec1.b"     z rows and (x, y) rows of its first layer -> dh[0]
    "dec2.W" ... "decK.*"            dh[0] -> ... -> dh[-1]     (dh = decoder_hidden)
    "out.W" "out.b"                  dh[-1] -> 1: that pixel's logit (or mean)

It has to draw a sprite at (x, y) by comparing its own coordinates with the code, which
an axis-aligned code makes easy and a rotated one does not: the inductive bias that
lets x and y take a latent each.

``loss(x, eps) -> (loss, grads)`` runs the forward pass step by step, keeps each
step's cache, and walks the caches back in reverse. The VAE objective per batch:

    loss = mean_i [ -log p(x_i | z_i) + beta * sum_j KL(q(z_ij | x_i) || N(0, 1)) ]
    z = mu + exp(0.5 logvar) * eps,   eps ~ N(0, I)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from tinyvae import _checks, io, layers, losses, training

LIKELIHOODS = ("bernoulli", "gaussian")
#: "mlp": a dense decoder mirroring the encoder; "broadcast": the spatial broadcast
#: decoder (Watters et al. 2019), a small network run at every pixel on [z, x, y]
DECODERS = ("mlp", "broadcast")


def _image_shape(image_shape, input_dim, decoder):
    """(H, W) with H W = input_dim; None is a square image for the broadcast decoder."""
    if image_shape is None:
        if decoder == "mlp":
            return None
        side = int(round(np.sqrt(input_dim)))
        if side * side != input_dim:
            raise ValueError(f"image_shape: the broadcast decoder needs (height, width) "
                             f"for input_dim {input_dim}, which is not a square; got None")
        return (side, side)
    shape = tuple(_checks.sizes("image_shape", image_shape))
    if len(shape) != 2 or shape[0] * shape[1] != input_dim:
        raise ValueError(f"image_shape: expected (height, width) with height * width = "
                         f"input_dim {input_dim}, got {image_shape!r}")
    return shape


def _init_weight(rng, fan_in, fan_out, activation):
    # He initialisation keeps the activation variance constant through ReLU-like
    # layers; Glorot suits the saturating and linear ones. Drawn in float64 so
    # float32 and float64 models start from the same numbers.
    if activation in ("relu", "leaky_relu"):
        std = np.sqrt(2.0 / fan_in)
    else:
        std = np.sqrt(2.0 / (fan_in + fan_out))
    return rng.standard_normal((fan_in, fan_out)) * std


class _BaseModel:
    """What the Autoencoder and the VAE share: layers, decoder, likelihood, fit."""

    #: True when the loss takes reparameterization noise eps (the VAE family)
    latent_noise = False
    #: the model's name on the command line (tinyvae train --model NAME)
    short_name = None
    #: the constructor argument that holds the leaky_relu slope (BetaTCVAE's alpha is
    #: the weight of its MI term, so its slope is called leaky_slope)
    leaky_slope_name = "alpha"

    def __init__(self, input_dim, hidden=(400,), latent_dim=20, likelihood="bernoulli",
                 activation="relu", dtype=np.float32, seed=0, obs_std=0.1, alpha=0.01,
                 decoder="mlp", decoder_hidden=(32, 32), image_shape=None):
        self.input_dim = _checks.positive_int("input_dim", input_dim)
        self.hidden = _checks.sizes("hidden", hidden)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.decoder = _checks.one_of("decoder", decoder, DECODERS)
        self.decoder_hidden = _checks.sizes("decoder_hidden", decoder_hidden)
        if self.decoder == "broadcast" and not self.decoder_hidden:
            raise ValueError("decoder_hidden: the broadcast decoder needs at least one "
                             "hidden layer, got ()")
        self.image_shape = _image_shape(image_shape, self.input_dim, self.decoder)
        self.likelihood = _checks.one_of("likelihood", likelihood, LIKELIHOODS)
        self.activation = _checks.one_of("activation", activation, layers.ACTIVATIONS)
        name = self.leaky_slope_name
        if not 0 < _checks.number(name, alpha) < 1:
            raise ValueError(f"{name}: expected 0 < {name} < 1, got {alpha!r}")
        self.leaky_slope = float(alpha)
        setattr(self, name, self.leaky_slope)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        if not (isinstance(obs_std, str) and obs_std == "learned"):
            try:
                obs_std = _checks.number("obs_std", obs_std, 0, strict=True)
            except ValueError:
                raise ValueError(f"obs_std: expected a positive number or 'learned', "
                                 f"got {obs_std!r}") from None
        if obs_std == "learned" and self.likelihood != "gaussian":
            # a Bernoulli likelihood has no observation noise to learn
            raise ValueError(f"obs_std: 'learned' needs likelihood='gaussian', got "
                             f"likelihood={self.likelihood!r}")
        self.obs_std = obs_std
        self.seed = _checks.seed("seed", seed)
        self.step_ = 0
        self.history_ = _empty_history()
        self.train_state_ = None
        self.optimizer_ = None
        self._rng = np.random.default_rng(seed)
        self.params = self._init_params(np.random.default_rng(seed))
        self._coords = (None if self.decoder == "mlp" else
                        layers.pixel_coordinates(self.image_shape, self.dtype))

    # -- construction -------------------------------------------------------

    def _head_names(self):
        raise NotImplementedError

    def _init_params(self, rng):
        params = {}
        act = self.activation
        enc_dims = (self.input_dim, *self.hidden)
        for i in range(len(self.hidden)):
            params[f"enc{i + 1}.W"] = _init_weight(rng, enc_dims[i], enc_dims[i + 1], act)
            params[f"enc{i + 1}.b"] = np.zeros(enc_dims[i + 1])
        for head in self._head_names():
            params[f"{head}.W"] = _init_weight(rng, enc_dims[-1], self.latent_dim, "identity")
            params[f"{head}.b"] = np.zeros(self.latent_dim)
        if self.decoder == "broadcast":
            params.update(self._init_broadcast_decoder(rng))
        else:
            params.update(self._init_dense_layers(rng, (self.latent_dim, *self.hidden[::-1]), 1,
                                                  self.input_dim))
        if self.obs_std == "learned":
            params["obs.logvar"] = np.full(self.input_dim, 2 * np.log(0.1))
        return {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in params.items()}

    def _init_broadcast_decoder(self, rng):
        """The per-pixel network: [z, x, y] -> decoder_hidden -> 1 logit (or mean).

        Its first layer is one dense layer on the joined row [z_i, x_p, y_p], drawn as one
        (d + 2, h) matrix and kept as its z rows "dec1.W" and coordinate rows "dec1.Wxy".
        """
        d, sizes = self.latent_dim, self.decoder_hidden
        first = _init_weight(rng, d + 2, sizes[0], self.activation)
        params = {"dec1.W": first[:d], "dec1.Wxy": first[d:], "dec1.b": np.zeros(sizes[0])}
        params.update(self._init_dense_layers(rng, sizes, 2, 1))
        return params

    def _init_dense_layers(self, rng, dims, first, out_dim):
        """dec{first}, dec{first + 1}, ...: dims[0] -> dims[1] -> ... -> dims[-1], then the
        linear "out" layer dims[-1] -> out_dim (the layers _dense_layers_forward runs)."""
        params = {}
        for i in range(len(dims) - 1):
            params[f"dec{first + i}.W"] = _init_weight(rng, dims[i], dims[i + 1], self.activation)
            params[f"dec{first + i}.b"] = np.zeros(dims[i + 1])
        params["out.W"] = _init_weight(rng, dims[-1], out_dim, "identity")
        params["out.b"] = np.zeros(out_dim)
        return params

    def get_config(self) -> dict:
        """Constructor arguments as a JSON-able dict: ``type(m)(**m.get_config())`` rebuilds it."""
        config = {
            "input_dim": self.input_dim, "hidden": list(self.hidden),
            "latent_dim": self.latent_dim, "likelihood": self.likelihood,
            "activation": self.activation, "dtype": self.dtype.name, "seed": self.seed,
            "obs_std": self.obs_std, self.leaky_slope_name: self.leaky_slope,
        }
        if self.decoder != "mlp":     # an MLP model's config stays as it always was
            config.update(decoder=self.decoder, decoder_hidden=list(self.decoder_hidden),
                          image_shape=list(self.image_shape))
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params.values())

    # -- encoder and decoder trunks -------------------------------------------

    def _encoder_forward(self, x):
        h, caches = x, []
        for i in range(1, len(self.hidden) + 1):
            p = self.params
            h, cache = layers.dense_forward(h, p[f"enc{i}.W"], p[f"enc{i}.b"], self.activation,
                                            self.leaky_slope)
            caches.append(cache)
        return h, caches

    def _encoder_backward(self, dh, caches, grads):
        for i in range(len(caches), 0, -1):
            # the first layer's input is data: no one needs its gradient
            dh, grads[f"enc{i}.W"], grads[f"enc{i}.b"] = layers.dense_backward(
                dh, caches[i - 1], need_dx=i > 1)

    def _decoder_forward(self, z):
        """z (n, latent) -> decoder output (n, input): logits (Bernoulli) or mean (Gaussian)."""
        if self.decoder == "broadcast":
            return self._broadcast_decoder_forward(z)
        caches = []
        return self._dense_layers_forward(z, 1, len(self.hidden), caches), caches

    def _decoder_backward(self, dout, caches, grads):
        if self.decoder == "broadcast":
            return self._broadcast_decoder_backward(dout, caches, grads)
        return self._dense_layers_backward(dout, 1, caches, grads)

    def _dense_layers_forward(self, h, first, last, caches):
        """Layers dec{first} .. dec{last} (each with the activation), then the linear "out"
        layer; appends their caches, so that caches[i - 1] is dec{i}'s."""
        p = self.params
        for i in range(first, last + 1):
            h, cache = layers.dense_forward(h, p[f"dec{i}.W"], p[f"dec{i}.b"], self.activation,
                                            self.leaky_slope)
            caches.append(cache)
        out, cache = layers.dense_forward(h, p["out.W"], p["out.b"], "identity")
        caches.append(cache)
        return out

    def _dense_layers_backward(self, dout, first, caches, grads):
        """Backward of _dense_layers_forward: "out", then dec{last} .. dec{first}; returns dh."""
        dh, grads["out.W"], grads["out.b"] = layers.dense_backward(dout, caches[-1])
        for i in range(len(caches) - 1, first - 1, -1):
            dh, grads[f"dec{i}.W"], grads[f"dec{i}.b"] = layers.dense_backward(dh, caches[i - 1])
        return dh

    def _broadcast_decoder_weights(self):
        """(first, hidden, out) as layers.pixel_decoder_forward takes them."""
        p, K = self.params, len(self.decoder_hidden)
        return ((p["dec1.W"], p["dec1.Wxy"], p["dec1.b"]),
                [(p[f"dec{i}.W"], p[f"dec{i}.b"]) for i in range(2, K + 1)],
                (p["out.W"], p["out.b"]))

    def _broadcast_decoder_forward(self, z):
        """The spatial broadcast decoder: one small network per pixel, shared by all pixels.

        pixel p of image i = out(dec_K(... dec_2(act(z_i @ W + coords_p @ Wxy + b)))):
        layers.pixel_decoder_forward runs it (every (image, pixel) pair is a row).
        """
        return layers.pixel_decoder_forward(z, self._coords, *self._broadcast_decoder_weights(),
                                            self.activation, self.leaky_slope)

    def _broadcast_decoder_backward(self, dout, cache, grads):
        if isinstance(cache, _DecoderGradients):   # the backward already ran, fused
            dz, first, hidden, out = cache.grads
        else:
            dz, first, hidden, out = layers.pixel_decoder_backward(dout, cache)
        grads["dec1.W"], grads["dec1.Wxy"], grads["dec1.b"] = first
        for i, (dW, db) in enumerate(hidden, start=2):
            grads[f"dec{i}.W"], grads[f"dec{i}.b"] = dW, db
        grads["out.W"], grads["out.b"] = out
        return dz

    # -- likelihood --------------------------------------------------------------

    def _reconstruction(self, out, target, grad_scale):
        """-log p(target | decoder output) per row and its gradient(s), from losses.py.

        Returns nll (n,), dout (n, D) = grad_scale * d nll_i / d out_i, and a dict of
        extra gradients (the learned observation log-variance, if any).
        """
        if self.likelihood == "bernoulli":
            nll, dout = losses.bernoulli_nll_logits(out, target, grad_scale)
            return nll, dout, {}
        if self.obs_std == "learned":
            nll, dout, dlogvar = losses.gaussian_nll_learned_rows(
                out, self.params["obs.logvar"], target, grad_scale)
            return nll, dout, {"obs.logvar": dlogvar.astype(self.dtype)}
        nll, dout = losses.gaussian_nll_rows(out, target, self.obs_std, grad_scale)
        return nll, dout, {}

    def _decode_and_reconstruct(self, z, target, grad_scale, need_grads):
        """Decoder forward and reconstruction term: out = decoder(z), nll_i = -log p(target_i
        | out_i), dout = grad_scale * d nll_i / d out_i.

        Returns nll (n,), dout (n, D), extra gradients (see _reconstruction) and the
        decoder caches for _decoder_backward. A broadcast decoder with a Bernoulli
        likelihood runs all three and the decoder's backward in one call
        (losses.pixel_decoder_bernoulli_nll) when gradients are wanted: its "caches" are
        then the decoder's gradients, which _decoder_backward hands on.
        """
        if need_grads and self.decoder == "broadcast" and self.likelihood == "bernoulli":
            nll, dout, grads = losses.pixel_decoder_bernoulli_nll(
                z, self._coords, *self._broadcast_decoder_weights(), target, grad_scale,
                self.activation, self.leaky_slope)
            return nll, dout, {}, _DecoderGradients(grads)
        out, caches = self._decoder_forward(z)
        nll, dout, extra = self._reconstruction(out, target, grad_scale)
        return nll, dout, extra, caches

    def _mean_from_output(self, out):
        return layers.sigmoid_forward(out)[0] if self.likelihood == "bernoulli" else out

    def reconstruction_nll(self, x, z):
        """-log p(x | z) summed over features, per row.   x (n, D), z (n, latent) -> (n,)"""
        x = self._check_x(x)
        z = _checks.as_batch("z", z, self.latent_dim, self.dtype)
        out, _ = self._decoder_forward(z)
        return self._reconstruction(out, x, 1.0)[0]

    def decode(self, z):
        """Decoder mean for latents z (n, latent_dim) -> (n, input_dim).

        Bernoulli: the pixel probabilities sigmoid(logits); Gaussian: the mean.
        """
        z = _checks.as_batch("z", z, self.latent_dim, self.dtype)
        return self._mean_from_output(self._decoder_forward(z)[0])

    def _check_x(self, x, name="x"):
        return _checks.as_batch(name, x, self.input_dim, self.dtype,
                                unit_interval=self.likelihood == "bernoulli")

    # -- the objective ---------------------------------------------------------------

    def loss(self, x, eps=None, *, target=None, compute_grads=True):
        """Loss on a batch and its gradient for every parameter.

        Inputs:  x (n, input_dim) floats (in [0, 1] for a Bernoulli decoder);
                 eps (n, latent_dim) fixed reparameterization noise (VAE only; None
                 draws it from the model's generator); target (n, input_dim) to
                 reconstruct instead of x (denoising).
        Returns: loss (float), grads {name: array like params[name]} (None if
                 compute_grads=False). The parts of the loss are left in
                 ``self.last_loss_parts_``. A loss that is not finite (data so large it
                 overflows the dtype) raises FloatingPointError.
        """
        bernoulli = self.likelihood == "bernoulli"
        x = _checks.as_batch("x", x, self.input_dim, self.dtype, unit_interval=bernoulli and target is None)
        target = x if target is None else self._check_x(target, "target")
        if target.shape != x.shape:
            raise ValueError(f"target: expected shape {x.shape} like x, got {target.shape}")
        if self.latent_noise and eps is not None:
            eps = _checks.as_batch("eps", eps, self.latent_dim, self.dtype)
            if eps.shape[0] != x.shape[0]:
                raise ValueError(f"eps: expected {x.shape[0]} rows like x, got shape {eps.shape}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, grads = self._loss(x, target, eps, compute_grads)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"x: the loss is {loss} for this batch (largest |x| = "
                f"{float(np.abs(x).max()):.3g}): the computation overflows {self.dtype.name}; "
                "rescale the data (e.g. to unit variance)"
                + (" or use a float64 model" if self.dtype == np.float32 else ""))
        return loss, grads

    def _loss(self, x, target, eps, compute_grads):
        raise NotImplementedError

    # -- training --------------------------------------------------------------------

    def fit(self, X, epochs=10, batch_size=None, optimizer=None, seed=None, progress=True,
            kl_warmup_steps=None, corrupt=None, resume=False, log_every=None, callback=None,
            steps=None, checkpoint=None):
        """Train with minibatch gradient descent. Returns self.

        Inputs:  X (n, input_dim) training data; epochs: total epochs of this run;
                 steps: a step budget instead: train until this run has taken
                 ``steps`` steps in all (then epochs is ignored; resume continues
                 up to it; a log entry falls on the last step);
                 batch_size >= 1 (default 128); optimizer (default Adam(lr=1e-3));
                 seed (default 0) for the shuffle and the noise; progress: tqdm bar;
                 kl_warmup_steps: raise the KL weight linearly from 0 over this many
                 steps (VAE, default 0); with resume=True, batch_size, seed and
                 kl_warmup_steps may only repeat the run's own and optimizer is refused;
                 corrupt(x, rng) -> noisy x to train a denoising model (the target
                 stays the clean x); resume: continue the run held in
                 ``self.train_state_`` (e.g. from ``tv.load``) up to ``epochs`` / ``steps``;
                 log_every: also log every that many steps (default: once an epoch);
                 callback(model, entry) after each log entry; checkpoint: a
                 training.Checkpointer that saves the run between steps.
        A NaN or inf loss or gradient stops training with FloatingPointError and
        leaves the parameters at their last finite values. Ctrl-C finishes the
        current step, records the position, and raises KeyboardInterrupt (SIGTERM too:
        training.Interrupted names the signal), so a checkpoint saved then resumes exactly.
        """
        return training.train(self, X, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                              seed=seed, progress=progress, kl_warmup_steps=kl_warmup_steps,
                              corrupt=corrupt, resume=resume, log_every=log_every,
                              callback=callback, steps=steps, checkpoint=checkpoint)

    def save(self, path):
        """Write parameters, config and training state to ``path`` (.npz, atomic, no pickle)."""
        return io.save(self, path)


class _DecoderGradients(NamedTuple):
    """The decoder's gradients (dz, first, hidden, out), from a forward that ran its
    backward too (_decode_and_reconstruct), where _decoder_backward expects caches."""

    grads: tuple


def _empty_history():
    return {"epoch": [], "step": [], "loss": [], "recon": [], "kl": [], "kl_per_latent": []}


class Autoencoder(_BaseModel):
    """A deterministic autoencoder: x -> code z -> reconstruction.

    Same layer naming as the VAE with one linear code layer "code.*"
    (hidden[-1] -> latent) in place of the mu / logvar heads.
    loss = mean_i -log p(x_i | decoder(encoder(x_i)))  (Bernoulli: binary
    cross-entropy; Gaussian: squared error / 2 obs_std^2 + const).
    """

    short_name = "ae"

    def __init__(self, input_dim, hidden=(400,), latent_dim=20, likelihood="bernoulli",
                 activation="relu", dtype=np.float32, seed=0, obs_std=0.1, alpha=0.01,
                 decoder="mlp", decoder_hidden=(32, 32), image_shape=None):
        super().__init__(input_dim, hidden, latent_dim, likelihood, activation, dtype, seed,
                         obs_std, alpha, decoder, decoder_hidden, image_shape)

    def _head_names(self):
        return ("code",)

    def _encode_batch(self, x):
        h, caches = self._encoder_forward(x)
        z, code_cache = layers.dense_forward(h, self.params["code.W"], self.params["code.b"])
        return z, caches, code_cache

    def encode(self, x):
        """The code z (n, latent_dim) of x (n, input_dim)."""
        return self._encode_batch(self._check_x(x))[0]

    def reconstruct(self, x):
        """decode(encode(x)): (n, input_dim) -> (n, input_dim)."""
        return self.decode(self.encode(x))

    def _loss(self, x, target, eps, compute_grads):
        n = x.shape[0]
        z, enc_caches, code_cache = self._encode_batch(x)
        nll, dout, extra, dec_caches = self._decode_and_reconstruct(z, target, 1.0 / n,
                                                                    compute_grads)
        recon = float(nll.mean())
        self.last_loss_parts_ = {"loss": recon, "recon": recon, "kl": 0.0,
                                 "kl_per_latent": np.zeros(self.latent_dim)}
        if not compute_grads:
            return recon, None
        grads = dict(extra)
        dz = self._decoder_backward(dout, dec_caches, grads)
        dh, grads["code.W"], grads["code.b"] = layers.dense_backward(
            dz, code_cache, need_dx=bool(enc_caches))
        self._encoder_backward(dh, enc_caches, grads)
        return recon, {k: grads[k] for k in self.params}


class VAE(_BaseModel):
    """Variational autoencoder (Kingma & Welling 2014) with a diagonal Gaussian posterior.

    Encoder: x -> (mu, logvar); z = mu + exp(0.5 logvar) * eps; decoder: z -> p(x | z).
    loss = mean_i [ -log p(x_i | z_i) + beta * sum_j KL_ij ]  (the negative ELBO when
    beta = 1). beta = 0 leaves plain likelihood; beta > 1 is the beta-VAE.
    """

    latent_noise = True
    short_name = "vae"

    def __init__(self, input_dim, hidden=(400,), latent_dim=20, likelihood="bernoulli",
                 beta=1.0, activation="relu", dtype=np.float32, seed=0, obs_std=0.1,
                 alpha=0.01, decoder="mlp", decoder_hidden=(32, 32), image_shape=None):
        self.beta = _checks.number("beta", beta, 0)
        self.capacity_max = None
        self.capacity_steps = 0
        self.gamma = 0.0
        self.kl_warmup_steps = 0
        super().__init__(input_dim, hidden, latent_dim, likelihood, activation, dtype, seed,
                         obs_std, alpha, decoder, decoder_hidden, image_shape)

    def _head_names(self):
        return ("mu", "logvar")

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}

    # -- the pieces of the forward and backward pass a VAE-family objective reuses --

    def _encode_batch(self, x):
        """x (n, input) -> mu, logvar (n, latent), encoder caches, head cache.

        h = encoder(x);  mu = h @ W_mu + b_mu;  logvar = h @ W_logvar + b_logvar
        (the two heads share one GEMM: layers.two_heads_forward).
        """
        h, caches = self._encoder_forward(x)
        p = self.params
        mu, logvar, head_cache = layers.two_heads_forward(h, p["mu.W"], p["mu.b"],
                                                          p["logvar.W"], p["logvar.b"])
        return mu, logvar, caches, head_cache

    def _encode_backward(self, dmu, dlogvar, enc_caches, head_cache, grads):
        """Backward of _encode_batch: dmu, dlogvar (n, latent) -> grads of heads and encoder."""
        need_dh = bool(enc_caches)  # with no hidden layer, h is the data
        dh, grads["mu.W"], grads["mu.b"], grads["logvar.W"], grads["logvar.b"] = (
            layers.two_heads_backward(dmu, dlogvar, head_cache, need_dh))
        if need_dh:
            self._encoder_backward(dh, enc_caches, grads)

    def encode(self, x):
        """Posterior parameters (mu, logvar), each (n, latent_dim), of x (n, input_dim)."""
        mu, logvar = self._encode_batch(self._check_x(x))[:2]
        return np.ascontiguousarray(mu), np.ascontiguousarray(logvar)

    def reconstruct(self, x):
        """Decoder mean at the posterior mean: decode(mu(x))."""
        return self.decode(self.encode(x)[0])

    def sample(self, n, rng=None):
        """Decoder means for n latents drawn from the prior N(0, I) -> (n, input_dim)."""
        n = _checks.positive_int("n", n)
        rng = np.random.default_rng(rng)
        return self.decode(rng.standard_normal((n, self.latent_dim)).astype(self.dtype))

    def kl_weight(self, step=None):
        """The KL weight at a training step: beta, ramped up linearly during KL warm-up."""
        step = self.step_ if step is None else step
        if self.kl_warmup_steps and step < self.kl_warmup_steps:
            return self.beta * step / self.kl_warmup_steps
        return self.beta

    def capacity(self, step=None):
        """Target KL C(step) of the capacity objective (None when it is off)."""
        if self.capacity_max is None:
            return None
        step = self.step_ if step is None else step
        return self.capacity_max * min(1.0, step / self.capacity_steps)

    def _kl_term(self, kl, n):
        """The KL part of the loss and d(loss)/d(kl_ij), given the batch-mean KL."""
        c = self.capacity()
        if c is None:
            weight = self.kl_weight()
            return weight * kl, weight / n
        # Burgess et al. 2018: gamma |KL - C|; its subgradient is gamma sign(KL - C)
        return self.gamma * abs(kl - c), self.gamma * np.sign(kl - c) / n

    def _forward(self, x, target, eps, need_grads):
        """Forward steps 1-3 and the reconstruction term, which every VAE-family loss shares.

        x, target (n, input); eps (n, latent) or None (drawn from the model's generator);
        need_grads: the backward will follow (see _decode_and_reconstruct).
        Returns a namespace: mu, logvar, eps, z, sigma, kl (n, latent); nll (n,) and
        dout = (1/n) d nll / d out (n, input); extra (learned-variance gradients);
        enc_caches, head_cache, dec_caches for the backward.
        """
        mu, logvar, enc_caches, head_cache = self._encode_batch(x)
        if eps is None:
            eps = self._rng.standard_normal(mu.shape, dtype=self.dtype)
        z, sigma, kl = losses.reparam_kl_forward(mu, logvar, eps)
        nll, dout, extra, dec_caches = self._decode_and_reconstruct(z, target, 1.0 / x.shape[0],
                                                                    need_grads)
        return SimpleNamespace(mu=mu, logvar=logvar, eps=eps, z=z, sigma=sigma, kl=kl, nll=nll,
                               dout=dout, extra=extra, enc_caches=enc_caches,
                               head_cache=head_cache, dec_caches=dec_caches)

    def _loss(self, x, target, eps, compute_grads):
        """The objective on a batch and its gradient, as the derivation goes.

        Forward (n rows; w = the KL weight beta, or the capacity term's slope; steps 1-3
        and the nll run in _forward, one call a step):
          1. mu, logvar = heads(encoder(x))                          _encode_batch
          2. z = mu + sigma * eps,  sigma = exp(0.5 logvar)          losses.reparam_kl_forward
             kl_ij = 0.5 (mu^2 + sigma^2 - 1 - logvar)              (the same fused call)
          3. out = decoder(z)          logits (Bernoulli) or mean    _decode_and_reconstruct
          4. loss = mean_i nll_i + w * mean_i sum_j kl_ij           _reconstruction, _kl_term
        Backward, each line the reverse of the forward step with its number:
          4. dout = (1/n) d nll_i / d out_i;   dkl_ij = w / n
          3. dz = decoder backward of dout                           _decoder_backward
             (the broadcast decoder with a Bernoulli likelihood ran it in step 3's call)
          2. dmu = dz + dkl * mu                                     losses.reparam_kl_backward
             dlogvar = 0.5 dz * eps * sigma + dkl * 0.5 (sigma^2 - 1)
             (= reparameterize_backward + gaussian_kl_backward, the pairs above it)
          1. dh = dmu @ W_mu.T + dlogvar @ W_logvar.T, then the
             encoder backward of dh; every dW, db on the way          _encode_backward
        """
        n = x.shape[0]
        f = self._forward(x, target, eps, compute_grads)
        mu, eps, sigma = f.mu, f.eps, f.sigma
        recon, dout, extra = float(f.nll.mean()), f.dout, f.extra
        kl_per_latent = f.kl.mean(axis=0)
        kl_total = float(kl_per_latent.sum())
        kl_term, dkl = self._kl_term(kl_total, n)
        loss = recon + kl_term
        self.last_loss_parts_ = {"loss": loss, "recon": recon, "kl": kl_total,
                                 "kl_per_latent": kl_per_latent}
        if not compute_grads:
            return loss, None
        grads = dict(extra)
        dz = self._decoder_backward(dout, f.dec_caches, grads)
        dmu, dlogvar = losses.reparam_kl_backward(dz, mu, eps, sigma, dkl)
        self._encode_backward(dmu, dlogvar, f.enc_caches, f.head_cache, grads)
        return loss, {k: grads[k] for k in self.params}


class BetaVAE(VAE):
    """beta-VAE (Higgins et al. 2017): a VAE whose KL weight beta defaults to 4.

    Optional capacity objective (Burgess et al. 2018): pass ``capacity_max`` (nats)
    to train on  recon + gamma * |KL - C|  with C raised linearly from 0 to
    capacity_max over ``capacity_steps`` training steps.
    """

    short_name = "beta-vae"

    def __init__(self, input_dim, hidden=(400,), latent_dim=10, likelihood="bernoulli",
                 beta=4.0, activation="relu", dtype=np.float32, seed=0, obs_std=0.1,
                 alpha=0.01, capacity_max=None, capacity_steps=10000, gamma=100.0,
                 decoder="mlp", decoder_hidden=(32, 32), image_shape=None):
        super().__init__(input_dim, hidden, latent_dim, likelihood, beta, activation, dtype,
                         seed, obs_std, alpha, decoder, decoder_hidden, image_shape)
        if capacity_max is not None:
            self.capacity_max = _checks.number("capacity_max", capacity_max, 0)
        self.capacity_steps = _checks.positive_int("capacity_steps", capacity_steps)
        self.gamma = _checks.number("gamma", gamma, 0, strict=True)

    def get_config(self):
        return {**super().get_config(), "capacity_max": self.capacity_max,
                "capacity_steps": self.capacity_steps, "gamma": self.gamma}


class BetaTCVAE(VAE):
    """beta-TCVAE (Chen et al. 2018): the KL term split into three parts, each weighted.

    loss = mean_i [ -log p(x_i | z_i)
                    + alpha (log q(z_i|x_i) - log q(z_i))          index-code MI
                    + beta  (log q(z_i) - sum_k log q(z_ik))       total correlation
                    + gamma (sum_k log q(z_ik) - log p(z_i)) ]     dimension-wise KL
    with z_i = mu_i + exp(logvar_i / 2) eps_i and q(z) = (1/N) sum_n q(z | x_n), the
    aggregate posterior over the N = dataset_size training points, estimated from
    the minibatch (estimator "mss" or "mws": losses.log_importance_weights).
    alpha = beta = gamma = 1 is the VAE's single-sample negative ELBO. A large beta
    penalises only the dependence between latents, which is what a rotated (x, y)
    code has and an axis-aligned one has not.

    dataset_size=None takes len(X) at the first ``fit``. ``leaky_slope`` is the
    leaky_relu slope (the other models call it alpha: see leaky_slope_name). Warm-up: ``fit(...,
    kl_warmup_steps=S)`` raises the whole penalty's weight linearly from 0 over S steps.
    The analytic KL is still computed for the history, the KL bars and active units.
    """

    short_name = "beta-tcvae"
    leaky_slope_name = "leaky_slope"

    def __init__(self, input_dim, hidden=(400,), latent_dim=10, likelihood="bernoulli",
                 alpha=1.0, beta=6.0, gamma=1.0, dataset_size=None, estimator="mss",
                 activation="relu", dtype=np.float32, seed=0, obs_std=0.1, leaky_slope=0.01,
                 decoder="mlp", decoder_hidden=(32, 32), image_shape=None):
        super().__init__(input_dim, hidden, latent_dim, likelihood, beta, activation, dtype,
                         seed, obs_std, leaky_slope, decoder, decoder_hidden, image_shape)
        self.alpha = _checks.number("alpha", alpha, 0)
        self.gamma = _checks.number("gamma", gamma, 0)
        self.estimator = _checks.one_of("estimator", estimator, losses.TC_ESTIMATORS)
        self.dataset_size = (None if dataset_size is None
                             else _checks.positive_int("dataset_size", dataset_size))
        self._log_weights = {}

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "dataset_size": self.dataset_size, "estimator": self.estimator}

    def fit(self, X, *args, **kwargs):
        """As VAE.fit; a model built with dataset_size=None takes N = len(X) here."""
        if self.dataset_size is None and hasattr(X, "__len__"):
            self.dataset_size = _checks.positive_int("dataset_size", len(X))
        return super().fit(X, *args, **kwargs)

    def penalty_weight(self, step=None):
        """The weight of the whole penalty at a training step: 1, ramped up during warm-up."""
        step = self.step_ if step is None else step
        if self.kl_warmup_steps and step < self.kl_warmup_steps:
            return step / self.kl_warmup_steps
        return 1.0

    def log_weights(self, batch_size):
        """log w (B, B) of the estimator for a batch of this size (cached per size)."""
        if self.dataset_size is None:
            raise ValueError("dataset_size: expected the number of training points N (the "
                             "estimators of log q(z) need it), got None; pass dataset_size= "
                             "or call fit first")
        if batch_size not in self._log_weights:
            self._log_weights[batch_size] = losses.log_importance_weights(
                batch_size, self.dataset_size, self.estimator).astype(self.dtype)
        return self._log_weights[batch_size]

    def _loss(self, x, target, eps, compute_grads):
        """The objective on a batch and its gradient, as the derivation goes.

        Forward (n rows; w = the warm-up weight, 1 after it; steps 1-3 and the nll run
        in _forward, one call a step):
          1. mu, logvar = heads(encoder(x))                          _encode_batch
          2. z = mu + sigma * eps (and the analytic KL, for the history)
                                                                     losses.reparam_kl_forward
          3. out = decoder(z)                                        _decode_and_reconstruct
          4. penalty = w [alpha MI + beta TC + gamma dim-wise KL], from the (n, n, d)
             matrix log q(z_ik | x_j)                                losses.tc_penalty_forward
          5. loss = mean_i nll_i + penalty                           _reconstruction
        Backward:
          5. dout = (1/n) d nll_i / d out_i
          3. dz = decoder backward of dout                           _decoder_backward
          4. the penalty's own dz, dmu, dlogvar: through each logsumexp (its softmax
             weights) to log q(z_ik | x_j), then to z_i, mu_j, logvar_j
                                                                     losses.tc_penalty_backward
             (on the Numba backend made in forward 4's walk over the pairs)
          2. dmu = dz_total + dmu_penalty,
             dlogvar = 0.5 dz_total * eps * sigma + dlogvar_penalty  losses.reparam_kl_backward
             (with the analytic KL's weight 0: the penalty replaces it)
          1. heads and encoder backward                              _encode_backward
        """
        n = x.shape[0]
        f = self._forward(x, target, eps, compute_grads)
        mu, eps, sigma = f.mu, f.eps, f.sigma
        recon, dout, extra = float(f.nll.mean()), f.dout, f.extra
        w = self.penalty_weight()
        penalty, parts, tc_cache = losses.tc_penalty_forward(
            f.z, mu, f.logvar, self.log_weights(n), w * self.alpha, w * self.beta, w * self.gamma,
            compute_grads)
        loss = recon + penalty
        kl_per_latent = f.kl.mean(axis=0)
        self.last_loss_parts_ = {"loss": loss, "recon": recon, "kl": float(kl_per_latent.sum()),
                                 "kl_per_latent": kl_per_latent, **parts}
        if not compute_grads:
            return loss, None
        grads = dict(extra)
        dz = self._decoder_backward(dout, f.dec_caches, grads)
        dz_penalty, dmu_penalty, dlogvar_penalty = losses.tc_penalty_backward(1.0, tc_cache)
        dmu, dlogvar = losses.reparam_kl_backward(dz + dz_penalty, mu, eps, sigma, 0.0)
        self._encode_backward(dmu + dmu_penalty, dlogvar + dlogvar_penalty, f.enc_caches,
                              f.head_cache, grads)
        return loss, {k: grads[k] for k in self.params}


#: every model class by class name: checkpoints (io.load) and the CLI (run.MODELS) read it
MODELS = {"Autoencoder": Autoencoder, "VAE": VAE, "BetaVAE": BetaVAE, "BetaTCVAE": BetaTCVAE}


def load(path):
    """Load a model saved by ``model.save`` / ``tv.save``, training state included.

    Raises FileNotFoundError for a missing file and ValueError for a truncated,
    corrupted, foreign or newer-format file, naming what is wrong.
    """
    return io.load(path, MODELS)


__all__ = ["Autoencoder", "VAE", "BetaVAE", "BetaTCVAE", "MODELS", "load"]
