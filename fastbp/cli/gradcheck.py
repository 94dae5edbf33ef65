"""``fastbp gradcheck``: a seeded net's backprop against numerical gradients."""

from __future__ import annotations

from fastbp.backends import BACKEND_NAMES
from fastbp.checks import FLOAT_DTYPES
from fastbp.cli.arguments import non_negative_int, positive_float, positive_int


def add_gradcheck_command(commands):
    """Register ``fastbp gradcheck`` on the ``commands`` sub-parsers."""
    check = commands.add_parser("gradcheck", help="backprop against numerical gradients")
    check.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    check.add_argument("--dtype", choices=FLOAT_DTYPES, default="float64")
    check.add_argument("--input", type=positive_int, default=20)
    check.add_argument("--hidden", type=positive_int, nargs="+", default=[10])
    check.add_argument("--output", type=positive_int, default=5)
    check.add_argument("--activation", choices=("relu", "sigmoid"), default="relu")
    check.add_argument("--batch", type=positive_int, default=8)
    check.add_argument("--seed", type=non_negative_int, default=0)
    check.add_argument("--tol", type=positive_float, default=None,
                       help="largest relative error that passes (default 1e-6 in float64, "
                            "1e-4 in float32)")
    check.set_defaults(run=cmd_gradcheck)


def cmd_gradcheck(args):
    from fastbp.gradcheck import directional_check, gradient_check
    from fastbp.nets import MultiLayerNet

    def seeded_net(dtype):
        return MultiLayerNet(args.input, args.hidden, args.output, activation=args.activation,
                             weight_init_std=1.0, seed=args.seed, backend=args.backend,
                             dtype=dtype)

    net = seeded_net(args.dtype)
    rng = net.backend.rng(args.seed + 1)
    x = net.backend.asarray(rng.standard_normal((args.batch, args.input)), dtype=net.dtype)
    t = rng.integers(0, args.output, args.batch)
    sizes = "-".join(map(str, [args.input, *args.hidden, args.output]))
    print(f"gradient check: {sizes} {args.activation} net, batch {args.batch}, "
          f"backend {net.backend.name}, {net.dtype}")
    reference = None
    if net.dtype != "float64":  # its own central differences would be rounding noise
        reference = seeded_net("float64")
        for key, value in net.params.items():
            reference.params[key] = value
        print("  numerical gradients: of a float64 copy at the same weights and batch")
    errors = gradient_check(net, x, t, numerical_net=reference)
    for key, err in errors.items():
        print(f"  {key:4} relative error {err:.3e}")
    directional = directional_check(net, x, t, numerical_net=reference)
    print(f"  directional check ({len(directional)} random directions): "
          f"max relative error {max(directional):.3e}")
    worst = max([*errors.values(), *directional])
    tol = args.tol if args.tol is not None else (1e-4 if reference else 1e-6)
    passed = worst <= tol
    print(f"{'PASS' if passed else 'FAIL'}: worst {worst:.3e} (tolerance {tol:g})")
    return 0 if passed else 1
