"""`check_vjp`: is the hand-derived backward right, entry by entry?

It compares, on one batch,

* gradients: the custom VJP (`jax.grad` of `make_loss(propagate)`) against
  `jax.grad` of `autodiff_loss`, which has no custom rule, for every
  parameter and both inputs;
* finite differences: the custom gradient along seeded random unit
  directions against central differences of the loss, in float64;
* r-vectors: each of r3, r2_L, r2_R, r2_LR, r1_L, r1_R against `jax.grad` of
  the summed error with respect to that pre-activation, so each block of the
  seed is checked on its own;
* structure: cotangent shapes and dtypes equal the primals', the value of the
  fwd rule equals the primal value, and the backward is linear in its
  cotangent (zero gives zero, scaling scales, sums add).

Errors are relative to the scale of the reference: max |a - b| / max |b| for
arrays, |fd - g.v| / (|g| |v|) for a directional derivative. This stays
meaningful where single elements are near zero.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gated_jax import backprop
from gated_jax.model import Params
from gated_jax.model import autodiff_loss
from gated_jax.model import error
from gated_jax.model import forward
from gated_jax.model import init_params
from gated_jax.model import layer2
from gated_jax.model import layer3
from gated_jax.vjp import Propagate
from gated_jax.vjp import make_logits
from gated_jax.vjp import make_loss

DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 5e-2, "float16": 5e-3}


@dataclasses.dataclass(frozen=True)
class CheckEntry:
    """One comparison: an error against its tolerance."""

    name: str
    max_abs_err: float
    max_rel_err: float
    tol: float
    worst_index: tuple[int, ...] = ()
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_rel_err) and self.max_rel_err <= self.tol)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Every comparison of one `check_vjp` call; `print(report)` shows the table."""

    entries: tuple[CheckEntry, ...]
    description: str = ""

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def failures(self) -> tuple[CheckEntry, ...]:
        return tuple(e for e in self.entries if not e.ok)

    @property
    def worst(self) -> CheckEntry:
        """The entry furthest over (or closest to) its tolerance."""

        def badness(e: CheckEntry) -> float:
            if not np.isfinite(e.max_rel_err):
                return np.inf
            return e.max_rel_err / e.tol if e.tol > 0 else (np.inf if e.max_rel_err else 0.0)

        return max(self.entries, key=badness)

    def __getitem__(self, name: str) -> CheckEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"no entry {name!r}; entries: {[e.name for e in self.entries]}")

    def summary(self) -> str:
        n = len(self.entries)
        if self.ok:
            return f"all {n} checks ok"
        w = self.worst
        where = f" at index {w.worst_index}" if w.worst_index else ""
        detail = f" ({w.detail})" if w.detail else ""
        return (
            f"{len(self.failures)} of {n} checks FAILED; worst: {w.name}{where}: "
            f"rel err {w.max_rel_err:.3g} > tol {w.tol:.3g}{detail}"
        )

    def table(self) -> str:
        width = max(len("entry"), *(len(e.name) for e in self.entries))
        head = f"{'entry':<{width}}  {'max abs err':>11}  {'max rel err':>11}  {'tolerance':>9}  ok"
        lines = [self.description, head, "-" * len(head)] if self.description else [head]
        for e in self.entries:
            lines.append(
                f"{e.name:<{width}}  {e.max_abs_err:>11.2e}  {e.max_rel_err:>11.2e}  "
                f"{e.tol:>9.0e}  {'ok' if e.ok else 'FAIL'}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n{self.summary()}"


def compare(name: str, actual: ArrayLike, expected: ArrayLike, tol: float) -> CheckEntry:
    """max |actual - expected| relative to max |expected|, with the worst index."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return CheckEntry(name, np.inf, np.inf, tol, detail=f"shape {a.shape} != {b.shape}")
    if a.size == 0:
        return CheckEntry(name, 0.0, 0.0, tol)
    diff = np.abs(a - b)
    diff = np.where(np.isnan(diff), np.inf, diff)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    abs_err = float(diff[index])
    scale = float(np.max(np.abs(b)))
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else np.inf)
    return CheckEntry(name, abs_err, rel_err, tol, tuple(int(i) for i in index))


def _float_dtype(params: Params) -> str:
    return jnp.result_type(*params).name


LINEARITY_SCALE = 2.5


def _float_argnums(x_left, x_right) -> tuple[int, ...]:
    """Params always; an input only when it is floating (jax.grad rejects integers)."""
    inexact = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in (x_left, x_right)]
    return (0, *(i + 1 for i, ok in enumerate(inexact) if ok))


def _r_vectors_and_reference(propagate, params, x_left, x_right, t):
    """The r-vectors of `propagate`, and jax.grad of the summed E by pre-activation."""
    acts = forward(params, x_left, x_right)
    t = jnp.asarray(t).astype(acts.a3.dtype)
    got = propagate(params, acts, backprop.r3_logistic(acts.a3, t))

    def E_from_a3(a3):
        return jnp.sum(error(a3, t))

    def E_from_a2(a2_L, a2_R, a2_LR):
        return E_from_a3(layer3(params, a2_L, a2_R, a2_LR))

    def E_from_a1(a1_L, a1_R):
        return E_from_a2(*layer2(params, a1_L, a1_R))

    want = backprop.RVectors(
        jax.grad(E_from_a3)(acts.a3),
        *jax.grad(E_from_a2, (0, 1, 2))(acts.a2_L, acts.a2_R, acts.a2_LR),
        *jax.grad(E_from_a1, (0, 1))(acts.a1_L, acts.a1_R),
    )
    return got, want


def _flat_float(tree, dtype) -> jax.Array:
    leaves = [
        jnp.ravel(c).astype(dtype) for c in jax.tree.leaves(tree) if c.dtype != jax.dtypes.float0
    ]
    return jnp.concatenate(leaves)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _measure(propagate, argnums, params, x_left, x_right, t, g1, g2):
    """Everything compared in the params' dtype, computed in one compiled program."""
    logits_fn, loss_fn = make_logits(propagate), make_loss(propagate)
    args = (params, x_left, x_right, t)
    out = {
        "grad": jax.grad(loss_fn, argnums)(*args),
        "grad_ref": jax.grad(autodiff_loss, argnums)(*args),
        "r_vectors": _r_vectors_and_reference(propagate, params, x_left, x_right, t),
        "loss_fwd": jax.vjp(loss_fn, *args)[0],
        "loss_primal": loss_fn(*args),
        "loss_ref": autodiff_loss(*args),
        "logits_primal": logits_fn(params, x_left, x_right),
        "logits_ref": forward(params, x_left, x_right).a3,
    }
    out["logits_fwd"], vjp_logits = jax.vjp(logits_fn, params, x_left, x_right)

    def vjp(g):
        return _flat_float(vjp_logits(g), g.dtype)

    c = LINEARITY_SCALE
    out["linearity"] = {
        "zero": vjp(jnp.zeros_like(g1)),
        "scaled": (vjp(c * g1), c * vjp(g1)),
        "additive": (vjp(g1 + g2), vjp(g1) + vjp(g2)),
    }
    return out


def _cotangent_structure(name, primals, cotangents) -> CheckEntry:
    """Compares shapes and dtypes only (ShapeDtypeStructs from jax.eval_shape)."""
    problems = []
    p_leaves, c_leaves = jax.tree.leaves(primals), jax.tree.leaves(cotangents)
    if len(p_leaves) != len(c_leaves):
        problems.append(f"{len(c_leaves)} cotangents for {len(p_leaves)} primals")
    for i, (p, c) in enumerate(zip(p_leaves, c_leaves, strict=False)):  # counted above
        p_dtype = jnp.result_type(p)
        want_dtype = p_dtype if jnp.issubdtype(p_dtype, jnp.inexact) else jax.dtypes.float0
        if tuple(c.shape) != tuple(jnp.shape(p)) or c.dtype != want_dtype:
            problems.append(f"leaf {i}: {tuple(c.shape)} {c.dtype} != {jnp.shape(p)} {want_dtype}")
    n = float(len(problems))
    return CheckEntry(name, n, n, 0.0, detail="; ".join(problems[:3]))


def _structure_checks(propagate, params, x_left, x_right, t) -> list[CheckEntry]:
    logits_fn, loss_fn = make_logits(propagate), make_loss(propagate)
    a3 = jax.eval_shape(logits_fn, params, x_left, x_right)
    ct_logits = jax.eval_shape(lambda g: jax.vjp(logits_fn, params, x_left, x_right)[1](g), a3)
    ct_loss = jax.eval_shape(
        lambda: jax.vjp(loss_fn, params, x_left, x_right, t)[1](jnp.ones((), a3.dtype))
    )
    return [
        _cotangent_structure(
            "cotangent shapes/dtypes  logits", (params, x_left, x_right), ct_logits
        ),
        _cotangent_structure(
            "cotangent shapes/dtypes  loss", (params, x_left, x_right, t), ct_loss
        ),
    ]


def _measured_checks(propagate, params, x_left, x_right, t, tol, seed) -> list[CheckEntry]:
    argnums = _float_argnums(x_left, x_right)
    a3 = jax.eval_shape(forward, params, x_left, x_right).a3
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    g1, g2 = (jax.random.normal(k, a3.shape, a3.dtype) for k in (k1, k2))
    m = jax.device_get(_measure(propagate, argnums, params, x_left, x_right, t, g1, g2))

    entries = [
        compare(f"grad vs autodiff  {name}", g, w, tol)
        for name, g, w in zip(Params._fields, m["grad"][0], m["grad_ref"][0], strict=True)
    ]
    for j, i in enumerate(argnums[1:], start=1):
        name = ("x_left", "x_right")[i - 1]
        entries.append(compare(f"grad vs autodiff  {name}", m["grad"][j], m["grad_ref"][j], tol))
    got, want = m["r_vectors"]
    entries += [
        compare(f"r-vector  {name}", g, w, tol)
        for name, g, w in zip(backprop.RVectors._fields, got, want, strict=True)
    ]
    entries += [
        compare("fwd value = primal  logits", m["logits_fwd"], m["logits_primal"], tol),
        compare("primal = forward  logits", m["logits_primal"], m["logits_ref"], tol),
        compare("fwd value = primal  loss", m["loss_fwd"], m["loss_primal"], tol),
        compare("primal = autodiff  loss", m["loss_primal"], m["loss_ref"], tol),
    ]
    lin = m["linearity"]
    zero_err = float(np.max(np.abs(lin["zero"])))
    entries += [
        CheckEntry("linear: vjp(0) = 0", zero_err, zero_err, 0.0),
        compare("linear: vjp(c g) = c vjp(g)", *lin["scaled"], tol),
        compare("linear: vjp(g1 + g2) = vjp(g1) + vjp(g2)", *lin["additive"], tol),
    ]
    return entries


def _finite_difference_checks(
    propagate, params, x_left, x_right, t, tol, n_directions, step, seed
) -> list[CheckEntry]:
    """Custom gradient . v against (L(p + h v) - L(p - h v)) / 2h, per leaf, in float64.

    One compiled loss is evaluated at every perturbed point: a single small
    program, where tracing one per direction would compile for long.
    """
    names = (*Params._fields, "x_left", "x_right")
    rng = np.random.default_rng(seed)
    entries = []
    primals = [np.asarray(a, np.float64) for a in (*params, x_left, x_right)]
    t64 = np.asarray(t, np.float64)
    with jax.enable_x64(True):
        params64 = Params(*primals[:12])
        grad_fn = jax.jit(jax.grad(make_loss(propagate), (0, 1, 2)))
        grad = grad_fn(params64, primals[12], primals[13], t64)
        flat_grad = [np.asarray(g) for g in (*grad[0], grad[1], grad[2])]
        loss_fn = jax.jit(lambda args: autodiff_loss(Params(*args[:12]), args[12], args[13], t64))

        def loss_at(i, value):
            return float(loss_fn([*primals[:i], value, *primals[i + 1 :]]))

        for i, (name, p, g) in enumerate(zip(names, primals, flat_grad, strict=True)):
            if p.size == 0:
                continue
            errs = []
            for _ in range(n_directions):
                v = rng.standard_normal(p.shape)
                v /= np.linalg.norm(v)
                fd = (loss_at(i, p + step * v) - loss_at(i, p - step * v)) / (2 * step)
                errs.append(abs(fd - float(np.vdot(v, g))))
            errs = np.where(np.isnan(errs), np.inf, errs)
            worst = int(np.argmax(errs))
            scale = float(np.linalg.norm(g))  # |g| |v| with |v| = 1
            abs_err = float(errs[worst])
            rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else np.inf)
            entries.append(
                CheckEntry(
                    f"finite diff (f64)  {name}",
                    abs_err,
                    rel,
                    tol,
                    (worst,),
                    detail=f"direction {worst} of {n_directions}",
                )
            )
    return entries


def random_problem(seed: int, sizes, batch_shape, dtype=jnp.float32, bias_scale: float = 0.5):
    """A random test problem: (params, x_left, x_right, t).

    Args:
      seed: an int seed.
      sizes: (D_L, D_R, H, Q).
      batch_shape: the leading shape of the batch, e.g. () or (2, 3).
      dtype: of params and inputs.
      bias_scale: std of the random biases (Glorot weights; biases non-zero so
        that the gates are not all 1/2).
    """
    D_L, D_R, H, Q = sizes
    k_init, k_bias, k_l, k_r, k_t = jax.random.split(jax.random.key(seed), 5)
    params = init_params(k_init, D_L, D_R, H, Q, dtype=dtype)
    bias_keys = iter(jax.random.split(k_bias, 12))
    params = Params(
        *(
            p + bias_scale * jax.random.normal(next(bias_keys), p.shape, dtype)
            if name.startswith("b")
            else p
            for name, p in zip(Params._fields, params, strict=True)
        )
    )
    x_left = jax.random.normal(k_l, (*batch_shape, D_L), dtype)
    x_right = jax.random.normal(k_r, (*batch_shape, D_R), dtype)
    t = jnp.where(jax.random.bernoulli(k_t, 0.5, batch_shape), 1, -1).astype(dtype)
    return params, x_left, x_right, t


def check_vjp(
    params: Params,
    x_left: ArrayLike,
    x_right: ArrayLike,
    t: ArrayLike,
    *,
    propagate: Propagate = backprop.propagate,
    rtol: float | None = None,
    fd_rtol: float = 1e-6,
    n_directions: int = 3,
    fd_step: float = 1e-5,
    seed: int = 0,
) -> CheckReport:
    """Verifies the explicit backward on one batch; see the module docstring.

    Args:
      params: Params (float32 or float64).
      x_left: (..., D_L).
      x_right: (..., D_R).
      t: (...) labels -1 or +1.
      propagate: the r-vector pass to check, `(params, acts, r3) -> RVectors`;
        default the library's own. Pass `gated_jax.errata.propagate_seed_sigma_form`
        to watch the seed's literal text fail.
      rtol: tolerance of the comparisons made in the params' dtype; default
        1e-10 for float64 and 1e-5 for float32.
      fd_rtol: tolerance of the finite-difference comparisons (always float64).
      n_directions: random directions per parameter and input.
      fd_step: central-difference step along a unit direction.
      seed: seeds the directions and cotangents.

    Returns:
      A CheckReport: `.ok`, `.worst`, `.failures`, `print(report)`.
    """
    x_left, x_right, t = jnp.asarray(x_left), jnp.asarray(x_right), jnp.asarray(t)
    dtype = _float_dtype(params)
    tol = DEFAULT_RTOL.get(dtype, 1e-5) if rtol is None else rtol
    entries = [
        *_measured_checks(propagate, params, x_left, x_right, t, tol, seed),
        *_finite_difference_checks(
            propagate, params, x_left, x_right, t, fd_rtol, n_directions, fd_step, seed
        ),
        *_structure_checks(propagate, params, x_left, x_right, t),
    ]
    D_L, D_R = x_left.shape[-1], x_right.shape[-1]
    H, Q = params.W2_L.shape[1], params.W2_L.shape[0]
    description = (
        f"check_vjp: {dtype}, batch {tuple(x_left.shape[:-1])}, "
        f"D_L={D_L} D_R={D_R} H={H} Q={Q}, propagate={getattr(propagate, '__name__', propagate)}"
    )
    return CheckReport(tuple(entries), description)
